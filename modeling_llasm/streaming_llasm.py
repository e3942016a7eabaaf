"""`LlasmAudioStream`: a spoken turn that arrives in chunks while the user speaks. The model works on what it has
(encodes it, reads the words, prefills the LLM with what two successive readings agree on), so that at the end of
speech only the tail is left to read and prefill; the answer is the one the whole clip gets.

Part of the model's Python API (imports only the model side: configuration, modeling, the conversation cache).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .configuration_llasm import encoder_frame_mask, window_token_counts
from .conversation_cache_llasm import LlasmConversationCache, common_prefix_length
from .modeling_llasm import encode_audio_windows


if TYPE_CHECKING:
    from .modeling_llasm import LlasmForConditionalGeneration
    from .processing_llasm import LlasmProcessor


class LlasmAudioStream:
    r"""
    One spoken user turn, streamed: `append` audio chunks as they arrive (16 kHz mono float samples), then `generate`
    at the end of speech. Between chunks the model encodes the audio so far, reads it (`whisper_reader`: each reading
    checks the previous one in one decoder pass and reads on from where they differ) and prefills the LLM with the
    prompt positions that the last two readings agree on (the policy of streaming Whisper: commit what two successive
    readings agree on). When they agree on the whole prompt (the speaker has stopped, or pauses), its last position
    is prefilled too and the logits of the answer's first token are kept. `generate` then reads the whole clip once
    more and prefills only what changed; when nothing did, the first token comes from those logits
    (`LlasmComputedStep`) and only the final reading stands between the end of speech and the first token.

    The answer equals `model.generate` on the whole clip: the final reading is of the whole clip (the draft only
    saves steps; the readings are the same words), and the conversation cache keeps only prompt positions whose
    tokens and audio-token values equal the final prompt's (up to float rounding of a prefill done in parts, as with
    any `LlasmConversationCache`). Fixed-rate adaptors stream through the cache the same way; their audio tokens
    change as the encoder sees more audio, so mostly the prompt head is reused.

    Example:

    ```python
    >>> from modeling_llasm import LlasmAudioStream
    >>> stream = LlasmAudioStream(model, processor)
    >>> for chunk in microphone_chunks():  # float32 numpy arrays at 16 kHz
    ...     stream.append(chunk)
    >>> output = stream.generate(max_new_tokens=64)  # end of speech: the rest is read and prefilled
    >>> answer = processor.decode(output[0, stream.prompt_length:], skip_special_tokens=True)
    ```
    """

    def __init__(
        self,
        model: LlasmForConditionalGeneration,
        processor: LlasmProcessor,
        messages: list[dict] | None = None,
        text: str | None = None,
        language: str | None = None,
        conversation_cache: LlasmConversationCache | None = None,
        update_seconds: float = 0.5,
        sampling_rate: int = 16000,
    ) -> None:
        """`messages`: the conversation before this turn; `text`: typed text after the audio in this turn;
        `language`: the reader's language (as `generate(language=...)`); `conversation_cache`: the conversation's
        cache (continue a chat; a fresh one by default); `update_seconds`: how much new audio triggers work between
        chunks (0: after every chunk)."""
        expected = processor.feature_extractor.sampling_rate
        if sampling_rate != expected:
            raise ValueError(f"LlasmAudioStream takes {expected} Hz chunks (the feature extractor's rate), got "
                             f"sampling_rate={sampling_rate}: resample the audio first (e.g. modeling_llasm.load_audio).")  # fmt: skip
        if update_seconds < 0:
            raise ValueError(f"update_seconds must be >= 0, got {update_seconds}.")
        self.model, self.processor = model, processor
        self.messages, self.text, self.language = list(messages or []), text, language
        self.cache = conversation_cache if conversation_cache is not None else LlasmConversationCache()
        self.update_samples = int(update_seconds * sampling_rate)
        self.sampling_rate = sampling_rate
        self.chunks: list[np.ndarray] = []
        self.samples = 0
        self.updated_at = 0  # samples the last update saw
        self.readings: dict[int, list[int]] = {}  # window index -> the Whisper ids its last reading gave (a draft)
        self.previous_keys: list = []  # the prompt positions of the last update
        self.prompt_length: int | None = None  # length of the final prompt's ids (set by `generate`)
        self.updates = 0
        self.finished = False

    @property
    def audio(self) -> np.ndarray:
        """The samples received so far."""
        return np.concatenate(self.chunks) if self.chunks else np.zeros(0, dtype=np.float32)

    def conversation(self) -> list[dict]:
        """The conversation with this turn's audio so far (what `generate` answers)."""
        content: list[dict[str, Any]] = [{"type": "audio", "array": self.audio, "sampling_rate": self.sampling_rate}]
        if self.text:
            content.append({"type": "text", "text": self.text})
        return [*self.messages, {"role": "user", "content": content}]

    def append(self, chunk: np.ndarray | torch.Tensor, update: bool = True) -> None:
        """Add the next chunk of audio; works on what has arrived once `update_seconds` of new audio is in (not with
        `update=False`: e.g. the last chunk, when `generate` follows at once)."""
        if self.finished:
            raise RuntimeError("This LlasmAudioStream has ended (generate was called); start a new one for the next turn.")
        samples = np.asarray(chunk.detach().cpu() if isinstance(chunk, torch.Tensor) else chunk, dtype=np.float32)
        if samples.ndim != 1:
            raise ValueError(f"An audio chunk is 1-D mono samples, got shape {tuple(samples.shape)}.")
        self.chunks.append(samples)
        self.samples += len(samples)
        if update and self.samples - self.updated_at >= max(self.update_samples, 1):
            self.update()

    @torch.no_grad()
    def update(self) -> None:
        """Encode and read the audio so far and prefill the prompt positions the last two readings agree on (all of
        them, with the first answer token's logits, when the two prompts are the same)."""
        if not self.samples:
            return
        inputs = self._inputs()
        keys, embeds = self._prompt(inputs)
        if keys == self.previous_keys:  # the whole prompt agreed: its last position too, with the first token's logits
            self.cache.extend(self.model, keys, embeds, with_logits=True)
        else:
            agreed = min(common_prefix_length(self.previous_keys, keys), len(keys) - 1)
            if common_prefix_length(self.cache.keys, keys[:agreed]) < agreed:  # agreed positions not prefilled yet
                self.cache.extend(self.model, keys[:agreed], embeds[:agreed])
        self.previous_keys = keys
        self.updated_at = self.samples
        self.updates += 1

    def generate(self, **generate_kwargs: Any) -> torch.LongTensor:
        """End of speech: read the whole clip (from the last reading) and answer; returns the prompt ids followed by
        the new tokens, as `model.generate`. `generate_kwargs` go to `model.generate` (`max_new_tokens`, a
        `streamer`, ...)."""
        if not self.samples:
            raise ValueError("No audio was appended to this LlasmAudioStream.")
        self.finished = True
        inputs = self._inputs()
        with torch.no_grad():
            self._prompt(inputs)  # the final reading, from the last one, into the cache's windows
        self.prompt_length = int(inputs["input_ids"].shape[1])
        kwargs = {"language": self.language} if self.language is not None else {}
        return self.model.generate(**inputs, conversation_cache=self.cache, **kwargs, **generate_kwargs)

    def _inputs(self) -> dict[str, torch.Tensor]:
        return self.processor.apply_chat_template(self.conversation(), add_generation_prompt=True).to(self.model.device)

    def _prompt(self, inputs: dict[str, torch.Tensor]) -> tuple[list, torch.Tensor]:
        """The prompt's position keys and input embeddings; windows the cache has not seen are encoded (the reader's
        from its previous reading of the same window)."""
        audio = {"input_features": inputs.get("input_features"), "input_features_mask": inputs.get("input_features_mask"),
                 "language": self.language}  # fmt: skip
        encode = self._read_windows if self.model.config.adaptor_type == "whisper_reader" else None
        keys, _, embeds = self.cache.prompt(self.model, inputs["input_ids"], inputs.get("attention_mask"), audio, encode)
        return keys, embeds

    def _read_windows(self, indices: list[int], features: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
        """The reader's audio tokens of windows `indices` (features `(windows, n_mels, frames)`), each read from its
        previous reading as a draft; remembers the readings for the next update."""
        model, reader = self.model, self.model.model.multi_modal_projector
        encoded, window_mask = encode_audio_windows(model.model.audio_tower, features, mask)
        budgets = window_token_counts(model.config, window_mask)
        whisper_ids, states, languages = reader.read(encoded.last_hidden_state, encoder_frame_mask(window_mask), budgets,
                                                     self.language, drafts=[self.readings.get(i) for i in indices])  # fmt: skip
        tokens, counts, _ = reader.audio_tokens(whisper_ids, states, languages, model.get_input_embeddings().weight, budgets)
        self.readings.update(zip(indices, whisper_ids))
        return list(tokens.split(counts.tolist()))

def generate_from_audio_stream(model: LlasmForConditionalGeneration, processor: LlasmProcessor, chunks: Iterable[np.ndarray],
                               messages: list[dict] | None = None, text: str | None = None, language: str | None = None,
                               conversation_cache: LlasmConversationCache | None = None, update_seconds: float = 0.5,
                               **generate_kwargs: Any) -> tuple[torch.LongTensor, LlasmAudioStream]:  # fmt: skip
    """Feed an iterator of audio chunks to a `LlasmAudioStream` as they come, then answer at its end; returns
    `model.generate`'s output and the stream (its `prompt_length` and `conversation()`).

    ```python
    >>> output, stream = generate_from_audio_stream(model, processor, chunks, max_new_tokens=64)
    >>> processor.decode(output[0, stream.prompt_length:], skip_special_tokens=True)
    ```
    """
    stream = LlasmAudioStream(model, processor, messages, text=text, language=language,
                              conversation_cache=conversation_cache, update_seconds=update_seconds)  # fmt: skip
    pending = None
    for chunk in chunks:  # one chunk behind: the last one is only buffered, `generate` reads it
        if pending is not None:
            stream.append(pending)
        pending = chunk
    if pending is not None:
        stream.append(pending, update=False)
    return stream.generate(**generate_kwargs), stream
