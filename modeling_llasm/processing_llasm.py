"""LLaSM processor: audio loading, windowed Whisper log-mel features, placeholder expansion, tokenization."""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from typing import Any, Union

import numpy as np
import torch
from transformers import BatchFeature, ProcessorMixin

from .configuration_llasm import STACKED_ADAPTORS, audio_token_count


AudioSource = Union[str, os.PathLike, bytes, np.ndarray, torch.Tensor, dict]

TRANSCRIPTION_INSTRUCTION = "Transcribe the speech."


def _typed_demonstration(words: str) -> list[dict]:
    return [{"role": "user", "content": [{"type": "text", "text": TRANSCRIPTION_INSTRUCTION}, {"type": "text", "text": words}]},
            {"role": "assistant", "content": [{"type": "text", "text": words}]}]  # fmt: skip


# What precedes every transcription request (`LlasmProcessor.apply_transcription_request`): a system prompt and typed
# demonstrations of verbatim copying. A frozen chat LLM asked to transcribe answers or comments on the words instead;
# in-context demonstrations, a question and a word list among them, make it repeat them (docs/training.md, "Can the
# frozen LLM still transcribe?").
DEFAULT_TRANSCRIPTION_PROMPT: list[dict] = [
    {"role": "system", "content": [{"type": "text", "text": "You are a transcriber. Reply with exactly the words spoken in the audio, nothing else."}]},
    *_typed_demonstration("Set a timer for ten minutes and remind me to call Anna."),
    *_typed_demonstration("Orange window quietly seven bottle under Denver."),
    *_typed_demonstration("What is the tallest mountain in Africa?"),
]


def load_audio(source: AudioSource, sampling_rate: int | None = None, target_rate: int = 16000) -> np.ndarray:
    """Return `source` as float32 mono samples at `target_rate`.

    Accepts a file path, encoded bytes, a `{"array", "sampling_rate"}` dict (the `datasets` Audio format), or a
    numpy/torch array (float, or int16/int32 PCM; shape `(samples,)`, `(channels, samples)` or `(samples, channels)`).
    Arrays without `sampling_rate` are taken to be at `target_rate`. Stereo is mixed down; other rates resampled.
    """
    if isinstance(source, dict):
        if "array" not in source:
            raise ValueError(f"An audio dict needs an 'array' key (and 'sampling_rate'); got keys {sorted(source)}.")
        rate = source.get("sampling_rate")
        return load_audio(source["array"], sampling_rate if rate is None else rate, target_rate)
    if isinstance(source, (str, os.PathLike, bytes)):
        try:  # imported on use, so that loading a model with trust_remote_code does not require it
            import soundfile
        except ImportError as error:
            raise ImportError("Reading audio files needs `soundfile` (pip install soundfile).") from error

        if isinstance(source, bytes):
            what, handle = "audio bytes", io.BytesIO(source)
        else:
            what = handle = os.fspath(source)
            if not os.path.isfile(handle):
                raise ValueError(f"Audio file not found: {handle!r}.")
        try:
            samples, sampling_rate = soundfile.read(handle, dtype="float32", always_2d=True)
        except Exception as error:  # soundfile raises its own LibsndfileError for unreadable data
            raise ValueError(f"Could not decode {what}: {error}") from error
        samples = samples.T  # (channels, samples)
    else:
        if isinstance(source, torch.Tensor):
            source = source.detach().cpu().numpy()
        samples = np.asarray(source)
        if samples.dtype == np.int16:
            samples = samples.astype(np.float32) / 32768.0
        elif samples.dtype == np.int32:
            samples = samples.astype(np.float32) / 2147483648.0
        elif not np.issubdtype(samples.dtype, np.floating):
            raise ValueError(f"Audio arrays must be float, int16 or int32, got dtype {samples.dtype}.")
        if samples.ndim == 2 and samples.shape[0] > samples.shape[1]:
            samples = samples.T  # (samples, channels) -> (channels, samples)
        elif samples.ndim not in (1, 2):
            raise ValueError(f"Audio arrays must be 1-D or 2-D (channels x samples), got shape {samples.shape}.")
    samples = np.asarray(samples, dtype=np.float32)
    if samples.ndim == 2:
        samples = samples.mean(axis=0)
    if samples.size == 0:
        raise ValueError("Audio clip is empty (0 samples).")
    if not np.isfinite(samples).all():
        raise ValueError("Audio clip contains NaN or infinite samples.")
    rate = target_rate if sampling_rate is None else int(sampling_rate)
    if rate != target_rate:
        try:
            import soxr
        except ImportError as error:
            raise ImportError(f"Resampling {rate} Hz audio to {target_rate} Hz needs `soxr` (pip install soxr).") from error

        samples = soxr.resample(samples, rate, target_rate).astype(np.float32)
    return samples


PAUSE_SPAN_HOPS = 10  # a pause is the quietest 100 ms (10 mel hops) of the search range


def pause_search_samples(longest: int, hop: int) -> int:
    """How far back from a window's longest end a pause is looked for: its second half, in whole hops."""
    return longest // 2 // hop * hop


def pause_cut_bounds(samples: np.ndarray, longest: int, hop: int) -> list[tuple[int, int]]:
    """`[start, end)` sample bounds of windows of at most `longest` samples (a multiple of `hop`). Each window but
    the last ends in the middle of the quietest 100 ms of its second half (the pause between two words or sentences,
    or the least loud moment when there is none). A cut depends only on the audio of its own window, so a clip read as
    it arrives (`LlasmAudioStream`) gets the same windows as the whole clip once a window's audio is complete."""
    bounds, start = [], 0
    search = pause_search_samples(longest, hop)
    while len(samples) - start > longest:
        low = start + longest - search
        frames = np.asarray(samples[low : start + longest], dtype=np.float64).reshape(-1, hop)
        energy = np.convolve((frames**2).mean(axis=1), np.ones(PAUSE_SPAN_HOPS), mode="valid")
        quietest = len(energy) - 1 - int(np.argmin(energy[::-1]))  # the latest of equally quiet spans
        cut = low + (quietest + PAUSE_SPAN_HOPS // 2) * hop
        bounds.append((start, cut))
        start = cut
    bounds.append((start, len(samples)))
    return bounds


class LlasmProcessor(ProcessorMixin):
    r"""
    Turns chat messages with audio into model inputs for [`LlasmForConditionalGeneration`].

    Each clip is split into windows of at most `feature_extractor.n_samples` samples (30 s for Whisper); every
    window gets its own unpadded log-mel matrix, and the clip's placeholder is expanded to exactly as many audio
    tokens as the model produces for those windows (`audio_token_count`). Features are padded only to the longest
    window of the batch (`input_features_mask` marks the real frames). Text is left-padded for generation.

    Example:

    ```python
    >>> processor = AutoProcessor.from_pretrained("path/to/llasm", trust_remote_code=True)
    >>> messages = [{"role": "user", "content": [{"type": "audio", "path": "question.wav"}]}]
    >>> inputs = processor.apply_chat_template(messages, add_generation_prompt=True)
    >>> answer = model.generate(**inputs, max_new_tokens=64)
    ```
    """

    def __init__(
        self,
        feature_extractor=None,
        tokenizer=None,
        chat_template: str | None = None,
        audio_token: str = "<|audio|>",
        adaptor_type: str = "stack_mlp",
        stack_factor: int = 8,
        num_queries: int = 64,
        pad_to_window: bool = False,
        transcription_prompt: list[dict] | None = None,
        max_window_seconds: float | None = None,
        **kwargs,
    ):
        self.transcription_prompt = DEFAULT_TRANSCRIPTION_PROMPT if transcription_prompt is None else transcription_prompt
        self.audio_token = audio_token
        self.adaptor_type = adaptor_type
        self.stack_factor = stack_factor
        self.num_queries = num_queries
        self.pad_to_window = pad_to_window
        self.max_window_seconds = max_window_seconds
        super().__init__(feature_extractor, tokenizer, chat_template=chat_template, **kwargs)
        if max_window_seconds is not None and feature_extractor is not None:
            rate = feature_extractor.sampling_rate
            shortest = 4 * PAUSE_SPAN_HOPS * feature_extractor.hop_length / rate  # room for a pause in the second half
            if not shortest <= max_window_seconds <= feature_extractor.n_samples / rate:
                raise ValueError(f"max_window_seconds must be between {shortest:g} and the encoder's window "
                                 f"({feature_extractor.n_samples / rate:g} s), got {max_window_seconds}.")  # fmt: skip

    @property
    def audio_token_id(self) -> int:
        token_id = self.tokenizer.convert_tokens_to_ids(self.audio_token)
        if token_id is None or token_id == self.tokenizer.unk_token_id:
            raise ValueError(f"The tokenizer has no {self.audio_token!r} token; add it (LlasmForConditionalGeneration.from_pretrained_components does).")
        return token_id

    @property
    def pad_token_id(self) -> int:
        """The id that left-pads a batch of prompts (`collate_model_inputs`, `generate`'s `pad_token_id`): the
        tokenizer's pad token, else its end-of-sequence token, as transformers' generation falls back."""
        pad = self.tokenizer.pad_token_id
        pad = pad if pad is not None else self.tokenizer.eos_token_id
        if pad is None:
            raise ValueError("The tokenizer has neither a pad token nor an end-of-sequence token to pad batches with.")
        return pad

    def check_model_config(self, config) -> None:
        """Raise `ValueError` if this processor would count audio tokens differently from a model with `config`
        (both store the adaptor settings; a mismatch would otherwise surface later as a token-count error)."""
        pairs = [("adaptor_type", self.adaptor_type, config.adaptor_type), ("audio_token", self.audio_token, config.audio_token),
                 ("audio_token_id", self.audio_token_id, config.audio_token_id)]  # fmt: skip
        if config.adaptor_type in STACKED_ADAPTORS:
            pairs.append(("stack_factor", self.stack_factor, config.stack_factor))
        else:
            pairs.append(("num_queries", self.num_queries, config.num_queries))
        wrong = [f"{name}: processor {mine!r}, model {theirs!r}" for name, mine, theirs in pairs if mine != theirs]
        if wrong:
            raise ValueError("The processor does not match the model config (" + "; ".join(wrong) + ").")

    @property
    def model_input_names(self) -> list[str]:
        return ["input_ids", "attention_mask", "input_features", "input_features_mask"]

    # ----- audio -----
    def audio_windows(self, samples: np.ndarray) -> list[np.ndarray]:
        """Split a 16 kHz clip into encoder windows; the last one is zero-padded to whole mel hops (at least two, as
        the STFT's reflect padding needs more than n_fft / 2 samples), never cut. Windows are Whisper's 30 s, or with
        `max_window_seconds` at most that long, each cut at a pause (`pause_cut_bounds`)."""
        window, hop = self.feature_extractor.n_samples, self.feature_extractor.hop_length
        if self.max_window_seconds is None:
            pieces = [samples[start : start + window] for start in range(0, len(samples), window)]
        else:
            pieces = [samples[start:end] for start, end in pause_cut_bounds(samples, self.window_samples[1], hop)]
        last = pieces[-1]
        minimum = hop * (self.feature_extractor.n_fft // 2 // hop + 1)
        padded = max(minimum, -(-len(last) // hop) * hop)
        if padded > len(last):
            pieces[-1] = np.pad(last, (0, padded - len(last)))
        if self.pad_to_window:
            pieces = [np.pad(p, (0, window - len(p))) for p in pieces]
        return pieces

    @property
    def window_samples(self) -> tuple[int, int]:
        """(fewest, most) samples of a window other than a clip's last: Whisper's fixed windows, or with
        `max_window_seconds` pause-cut ones (between half that and that)."""
        if self.max_window_seconds is None:
            return self.feature_extractor.n_samples, self.feature_extractor.n_samples
        hop = self.feature_extractor.hop_length
        longest = int(self.max_window_seconds * self.feature_extractor.sampling_rate) // hop * hop
        return longest - pause_search_samples(longest, hop), longest

    def window_features(self, window: np.ndarray) -> np.ndarray:
        """Log-mel matrix `(n_mels, frames)` of one window, computed alone so batching never changes it. Always float32:
        Whisper's extractor computes with torch, so a caller's CPU autocast (bf16/fp16) would otherwise reach it."""
        with torch.autocast("cpu", enabled=False):
            features = self.feature_extractor(
                window, sampling_rate=self.feature_extractor.sampling_rate, padding="longest", return_tensors="np"
            )["input_features"][0]
        return features.astype(np.float32)

    def num_audio_tokens(self, num_mel_frames: int) -> int:
        return audio_token_count(num_mel_frames, self.adaptor_type, self.stack_factor, self.num_queries)

    # ----- main entry -----
    def __call__(
        self,
        text: str | list[str] | None = None,
        audio: AudioSource | Sequence[AudioSource] | None = None,
        sampling_rate: int | None = None,
        return_tensors: str | None = "pt",
        padding: bool | str = True,
        padding_side: str = "left",
        language: str | None = None,
        **kwargs,
    ) -> BatchFeature:
        """Tokenize `text` (one string per sample) with one `audio_token` per clip in `audio`: one clip, or a list
        of clips in placeholder order across the batch (an array is always one clip; 2-D = channels x samples).
        Batches are left-padded for generation (`padding_side="right"` for training); nothing is ever truncated.
        `language` (a Whisper language code such as `"zh"`): the language the `whisper_reader` reads the clips in,
        passed on to the model as `inputs["language"]` (default: the model's `reader_language`, else detected)."""
        if language is not None and not isinstance(language, str):
            raise ValueError(f"language must be a language code such as 'en' or 'zh', got {type(language).__name__}.")
        if kwargs.pop("truncation", None) not in (None, False, "do_not_truncate"):
            raise ValueError("LlasmProcessor never truncates: cutting a prompt would drop audio tokens. Shorten the input.")
        if text is None:
            raise ValueError("LlasmProcessor needs `text` (use the audio token as the placeholder for each clip).")
        texts = [text] if isinstance(text, str) else list(text)
        clips = [] if audio is None else [audio] if _is_single_clip(audio) else list(audio)
        placeholders = [t.count(self.audio_token) for t in texts]
        if sum(placeholders) != len(clips):
            raise ValueError(
                f"Found {sum(placeholders)} {self.audio_token!r} placeholder(s) in the text "
                f"(per sample: {placeholders}) but {len(clips)} audio clip(s) were given."
            )

        windows, tokens_per_clip = [], []
        for index, clip in enumerate(clips):
            try:
                samples = load_audio(clip, sampling_rate, self.feature_extractor.sampling_rate)
            except ValueError as error:
                raise ValueError(f"Audio clip {index}: {error}") from error
            clip_windows = [self.window_features(w) for w in self.audio_windows(samples)]
            windows.extend(clip_windows)
            tokens_per_clip.append(sum(self.num_audio_tokens(w.shape[-1]) for w in clip_windows))

        expanded, clip_iter = [], iter(tokens_per_clip)
        for sample in texts:
            parts = sample.split(self.audio_token)
            out = parts[0]
            for part in parts[1:]:
                out += self.audio_token * next(clip_iter) + part
            expanded.append(out)

        kwargs.setdefault("add_special_tokens", False)  # chat templates already carry BOS where the LM wants it
        encoding = self.tokenizer(
            expanded,
            padding=padding,
            padding_side=padding_side,
            truncation=False,
            return_tensors=return_tensors,
            return_token_type_ids=False,
            **kwargs,
        )
        data = dict(encoding)
        if clips:
            found = int(sum((np.asarray(ids) == self.audio_token_id).sum() for ids in encoding["input_ids"]))
            if found != sum(tokens_per_clip):
                raise ValueError(
                    f"Tokenization produced {found} audio tokens but the clips need {sum(tokens_per_clip)}; "
                    f"the tokenizer must treat {self.audio_token!r} as one special token."
                )
            longest = max(w.shape[-1] for w in windows)
            features = np.zeros((len(windows), windows[0].shape[0], longest), dtype=np.float32)
            mask = np.zeros((len(windows), longest), dtype=np.int64)
            for i, w in enumerate(windows):
                features[i, :, : w.shape[-1]] = w
                mask[i, : w.shape[-1]] = 1
            data["input_features"], data["input_features_mask"] = features, mask
            if language is not None:
                data["language"] = language
        return BatchFeature(data=data, tensor_type=return_tensors)

    # ----- chat -----
    def apply_chat_template(
        self,
        conversation: list[dict] | list[list[dict]],
        chat_template: str | None = None,
        add_generation_prompt: bool = False,
        tokenize: bool = True,
        return_dict: bool = True,
        continue_final_message: bool = False,
        tools: list[dict] | None = None,
        documents: list[dict] | None = None,
        **kwargs,
    ) -> BatchFeature | torch.Tensor | str | list[str]:
        """Render chat messages whose content items are `{"type": "text", "text": ...}` or
        `{"type": "audio", "path" | "audio" | "array" (+ "sampling_rate"): ...}`.

        Audio items become the audio placeholder and the clips are collected in order. The processor's own
        chat template is used if it has one, else the LLM tokenizer's. As in transformers, pass
        `add_generation_prompt=True` to prompt the assistant's answer. With `tokenize=True` the result is the
        model inputs (as from `__call__`; only `input_ids` with `return_dict=False`); otherwise the rendered
        prompt string(s). Other keyword arguments (`sampling_rate`, `padding_side`, `return_tensors`) go to
        `__call__`.
        """
        batched = bool(conversation) and isinstance(conversation[0], (list, tuple))
        conversations = conversation if batched else [conversation]
        template_kwargs = {"continue_final_message": continue_final_message}
        if tools is not None:
            template_kwargs["tools"] = tools
        if documents is not None:
            template_kwargs["documents"] = documents
        texts, clips = [], []
        for messages in conversations:
            flat, audio = self.flatten_messages(messages)
            texts.append(
                self.tokenizer.apply_chat_template(
                    flat,
                    chat_template=chat_template or self.chat_template,
                    add_generation_prompt=add_generation_prompt,
                    tokenize=False,
                    **template_kwargs,
                )
            )
            clips.extend(audio)
        if not tokenize:
            return texts if batched else texts[0]
        sampling_rate = kwargs.pop("sampling_rate", None)
        inputs = self(text=texts, audio=clips or None, sampling_rate=sampling_rate, **kwargs)
        return inputs if return_dict else inputs["input_ids"]

    def transcription_conversation(self, audio: AudioSource, instruction: str = TRANSCRIPTION_INSTRUCTION) -> list[dict]:
        """The chat messages of a transcription request for one clip: `transcription_prompt` (saved with the
        processor), then the user turn with `instruction` and the clip."""
        item = dict(audio) if isinstance(audio, dict) and "type" in audio else {"type": "audio", "audio": audio}
        return [*self.transcription_prompt, {"role": "user", "content": [{"type": "text", "text": instruction}, item]}]

    def apply_transcription_request(
        self,
        audio: AudioSource | Sequence[AudioSource],
        sampling_rate: int | None = None,
        instruction: str = TRANSCRIPTION_INSTRUCTION,
        **kwargs,
    ) -> BatchFeature:
        """Model inputs asking for the verbatim transcript of each clip (as Voxtral's processor does); decode the
        generated tokens with `batch_decode(..., skip_special_tokens=True)`. `language="zh"` (any keyword argument
        of `__call__`) reads the clips in that language.

        ```python
        >>> inputs = processor.apply_transcription_request(["a.wav", "b.wav"])
        >>> output = model.generate(**inputs, max_new_tokens=96)
        >>> processor.batch_decode(output[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        ```
        """
        clips = [audio] if _is_single_clip(audio) else list(audio)
        if not clips:
            raise ValueError("apply_transcription_request needs at least one audio clip.")
        conversations = [self.transcription_conversation(clip, instruction) for clip in clips]
        return self.apply_chat_template(conversations, add_generation_prompt=True, sampling_rate=sampling_rate, **kwargs)

    def flatten_messages(self, messages: list[dict]) -> tuple[list[dict], list[AudioSource]]:
        """Replace audio content items by the placeholder; return string-content messages and the clips."""
        flat, clips = [], []
        for position, message in enumerate(messages):
            if "role" not in message or "content" not in message:
                raise ValueError(f"Message {position} needs 'role' and 'content' keys, got {sorted(message)}.")
            content = message["content"]
            if isinstance(content, str):
                flat.append({"role": message["role"], "content": self._typed_text(content, position)})
                continue
            pieces = []
            for item in content:
                kind = item.get("type")
                if kind == "text":
                    pieces.append(self._typed_text(item["text"], position))
                elif kind == "audio":
                    clips.append(_audio_of_item(item, position))
                    pieces.append(self.audio_token)
                else:
                    raise ValueError(f"Message {position}: content type must be 'text' or 'audio', got {kind!r}.")
            flat.append({"role": message["role"], "content": "\n".join(pieces)})
        return flat, clips

    def _typed_text(self, text: str, position: int) -> str:
        """Text of a message, refused when it holds the audio placeholder: the model would read it as an audio token
        without audio (the model embeds it as an ordinary token, as transformers' audio LLMs do)."""
        if self.audio_token in text:
            raise ValueError(f"Message {position}: its text contains the audio placeholder {self.audio_token!r}; "
                             "give audio as a {'type': 'audio', ...} content item, not as text.")  # fmt: skip
        return text

    def batch_decode(self, *args, **kwargs):
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args, **kwargs):
        return self.tokenizer.decode(*args, **kwargs)


def collate_model_inputs(items: list[dict[str, torch.Tensor]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Batch single-conversation processor outputs as `LlasmProcessor` pads a batch: token rows left-padded with
    `pad_token_id`, audio windows concatenated in order and zero-padded to the longest window. Used by the batched
    pipeline and the server, which tokenize requests one by one."""
    if len(items) == 1:
        return dict(items[0])
    length = max(item["input_ids"].shape[1] for item in items)
    ids = items[0]["input_ids"].new_full((len(items), length), pad_token_id)
    mask = items[0]["attention_mask"].new_zeros((len(items), length))
    for row, item in enumerate(items):
        n = item["input_ids"].shape[1]
        ids[row, length - n :] = item["input_ids"][0]
        mask[row, length - n :] = item["attention_mask"][0]
    batch = {"input_ids": ids, "attention_mask": mask}
    audio = [item for item in items if item.get("input_features") is not None]
    if audio:
        frames = max(item["input_features"].shape[-1] for item in audio)
        features, features_mask = [], []
        for item in audio:
            pad = frames - item["input_features"].shape[-1]
            features.append(torch.nn.functional.pad(item["input_features"], (0, pad)))
            features_mask.append(torch.nn.functional.pad(item["input_features_mask"], (0, pad)))
        batch["input_features"] = torch.cat(features)
        batch["input_features_mask"] = torch.cat(features_mask)
    return batch


def _is_single_clip(audio: Any) -> bool:
    # One array is one clip (a 2-D array is its channels); several clips come as a list.
    return isinstance(audio, (str, os.PathLike, bytes, dict, np.ndarray, torch.Tensor))


def _audio_of_item(item: dict, position: int) -> AudioSource:
    for key in ("array", "audio", "path"):  # a `datasets` Audio dict has both a decoded array and its file path
        if item.get(key) is not None:
            value = item[key]
            if key == "array" or isinstance(value, (np.ndarray, torch.Tensor)):
                return {"array": value, "sampling_rate": item.get("sampling_rate")}
            return value
    if "url" in item:
        url = str(item["url"])
        if url.startswith(("http://", "https://")):
            raise ValueError(f"Message {position}: remote audio URLs are not fetched; download {url!r} and pass its path.")
        return url
    raise ValueError(f"Message {position}: an audio item needs 'path', 'audio' or 'array', got keys {sorted(item)}.")


__all__ = ["DEFAULT_TRANSCRIPTION_PROMPT", "TRANSCRIPTION_INSTRUCTION", "LlasmProcessor", "collate_model_inputs", "load_audio"]
