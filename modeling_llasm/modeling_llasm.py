"""LLaSM model: Whisper encoder (variable-length windows) -> modal adaptor -> decoder-only causal LM."""

from __future__ import annotations

import bisect
import functools
import hashlib
import os
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationMixin,
    PreTrainedModel,
    WhisperConfig,
    WhisperFeatureExtractor,
)
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, DynamicCache, EncoderDecoderCache
from transformers.conversion_mapping import register_checkpoint_conversion_mapping
from transformers.core_model_loading import WeightRenaming
from transformers.modeling_outputs import BaseModelOutput, BaseModelOutputWithPooling, ModelOutput
from transformers.models.whisper.modeling_whisper import WhisperDecoder, WhisperEncoder
from transformers.modeling_utils import slice_logits_to_keep
from transformers.utils import can_return_tuple, logging
from transformers.utils.deprecation import deprecate_kwarg
from transformers.utils.output_capturing import capture_outputs

from .configuration_llasm import LlasmConfig, encoder_frame_mask, reader_language_code
from .processing_llasm import LlasmProcessor


logger = logging.get_logger(__name__)


def without_autocast(function: Callable) -> Callable:
    """Run `function` with autocast off on the device of its first tensor argument: what it computes is then decided
    by the dtypes of its inputs and weights, not by a caller's `torch.autocast` (the Trainer's bf16/fp16, the recipe's
    bf16 where the CPU computes it fast). Used where the result is discrete: greedy read-outs, CTC best paths."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        device = next((a.device for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)), torch.device("cpu"))
        with torch.autocast(device.type, enabled=False):
            return function(*args, **kwargs)

    return wrapper


@dataclass
class LlasmCausalLMOutputWithPast(ModelOutput):
    r"""
    loss (`torch.FloatTensor`, *optional*): language-modeling loss over positions whose label is not -100.
    logits (`torch.FloatTensor`): next-token scores of the LLM.
    cache (`Cache`, *optional*): the LLM key/value cache.
    hidden_states, attentions (*optional*): the LLM's, with `output_hidden_states` / `output_attentions`.
    audio_hidden_states (`torch.FloatTensor`, *optional*): adaptor outputs `(num_audio_tokens, hidden)` merged
        into the prompt.
    encoder_hidden_states, encoder_attentions (*optional*): the audio encoder's per layer (one row per window),
        with `output_hidden_states` / `output_attentions` and audio in the inputs.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    cache: Cache | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    audio_hidden_states: torch.FloatTensor | None = None
    encoder_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    encoder_attentions: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class LlasmAudioFeaturesOutput(BaseModelOutputWithPooling):
    r"""
    last_hidden_state (`torch.FloatTensor` of shape `(windows, encoder_frames, d_model)`): the audio encoder's output.
    pooler_output (`torch.FloatTensor` of shape `(total_audio_tokens, hidden)`): the audio tokens of all windows,
        concatenated in window order: what replaces the audio placeholders in the prompt.
    audio_token_counts (`torch.LongTensor` of shape `(windows,)`): audio tokens of each window (for `ctc_compress`
        at most the window's placeholder count, see `configuration_llasm.audio_token_count`).
    audio_token_slots (`torch.LongTensor` of shape `(windows,)`): the placeholders of each window in the prompt
        (`configuration_llasm.audio_token_count`), counted from the mel mask the encoder used.
    recognized_token_ids (`list[list[int]]`, *optional*): adaptors that recognise words (`ctc_compress`: the CTC
        best path; `whisper_reader`: the Whisper decoder's reading): per window, what was recognised as LLM token ids
        (`processor.decode` reads it).
    audio_languages (`list[str | None]`, *optional*): `whisper_reader`: the language each window was read in
        (detected or given; `None` for an English-only Whisper).
    """

    audio_token_counts: torch.LongTensor | None = None
    audio_token_slots: torch.LongTensor | None = None
    recognized_token_ids: list[list[int]] | None = None
    audio_languages: list[str | None] | None = None


class LlasmAudioEncoder(WhisperEncoder):
    """Whisper encoder taking windows of up to 30 s without padding them to 30 s.

    Positions are sliced to the window length; padded mel frames (batches of different lengths) are zeroed
    before each convolution and masked out of self-attention, so a clip encodes the same alone or in a batch.
    `output_hidden_states` / `output_attentions` are recorded as by `WhisperEncoder` (transformers' output capturing;
    attention weights need `attn_implementation="eager"`).
    """

    @capture_outputs
    def forward(
        self, input_features: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs
    ) -> BaseModelOutput:
        num_frames = input_features.shape[-1]
        if num_frames > 2 * self.max_source_positions:
            raise ValueError(
                f"An audio window has {num_frames} mel frames; this encoder takes at most "
                f"{2 * self.max_source_positions}. Split long audio into windows (the processor does)."
            )
        input_features = input_features.to(self.conv1.weight.dtype)
        if attention_mask is None:
            attention_mask = torch.ones(input_features.shape[0], num_frames, dtype=torch.long, device=input_features.device)
        mel_mask = attention_mask.to(input_features.dtype)[:, None, :]
        hidden = nn.functional.gelu(self.conv1(input_features * mel_mask))
        hidden = nn.functional.gelu(self.conv2(hidden * mel_mask))
        hidden = hidden.permute(0, 2, 1)
        frame_mask = encoder_frame_mask(attention_mask)
        hidden = hidden + self.embed_positions.weight[: hidden.shape[1]].to(hidden.dtype)
        hidden = nn.functional.dropout(hidden, p=self.dropout, training=self.training)

        additive_mask = torch.zeros(frame_mask.shape, dtype=hidden.dtype, device=hidden.device)
        additive_mask = additive_mask.masked_fill(~frame_mask, torch.finfo(hidden.dtype).min)[:, None, None, :]
        for layer in self.layers:
            hidden = layer(hidden, additive_mask, **kwargs)
        hidden = self.layer_norm(hidden)
        return BaseModelOutput(last_hidden_state=hidden * frame_mask[..., None].to(hidden.dtype))


def stack_frames(hidden: torch.Tensor, stack_factor: int) -> torch.Tensor:
    """(batch, frames, dim) -> (batch, ceil(frames / k), k * dim), zero-padding the last group."""
    batch, frames, dim = hidden.shape
    remainder = (-frames) % stack_factor
    if remainder:
        hidden = nn.functional.pad(hidden, (0, 0, 0, remainder))
    return hidden.reshape(batch, (frames + remainder) // stack_factor, stack_factor * dim)


def stacked_frame_mask(encoder_frame_mask: torch.Tensor, stack_factor: int) -> torch.Tensor:
    """`(windows, frames)` bool -> `(windows, ceil(frames / k))`: a stacked frame is real if any of its frames is."""
    return stack_frames(encoder_frame_mask[..., None].float(), stack_factor).amax(-1) > 0


class LlasmStackMlpAdaptor(nn.Module):
    """Stack `stack_factor` encoder frames, then Linear -> activation -> Linear into the LLM embedding space, then
    `adaptor_num_layers` pre-norm transformer layers over the window (padded frames masked)."""

    def __init__(self, config: LlasmConfig):
        super().__init__()
        self.stack_factor = config.stack_factor
        hidden = config.text_config.hidden_size
        inner = config.adaptor_hidden_size or hidden
        self.linear_1 = nn.Linear(config.audio_config.d_model * config.stack_factor, inner)
        self.act = ACT2FN[config.adaptor_hidden_act]
        self.linear_2 = nn.Linear(inner, hidden)
        heads = hidden // 64 if hidden % 64 == 0 else 1
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(hidden, heads, 4 * hidden, dropout=0.0, activation="gelu", batch_first=True, norm_first=True)
            for _ in range(config.adaptor_num_layers)
        )  # fmt: skip

    def frame_states(self, encoder_hidden_states: torch.Tensor, encoder_frame_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`(windows, T, hidden)` mapped stacked frames and their `(windows, T)` real-frame mask."""
        hidden = self.linear_2(self.act(self.linear_1(stack_frames(encoder_hidden_states, self.stack_factor))))
        valid = stacked_frame_mask(encoder_frame_mask, self.stack_factor)
        for layer in self.layers:
            hidden = layer(hidden, src_key_padding_mask=~valid)
        return hidden, valid

    def forward(self, encoder_hidden_states: torch.Tensor, encoder_frame_mask: torch.Tensor) -> torch.Tensor:
        return self.frame_states(encoder_hidden_states, encoder_frame_mask)[0]


@without_autocast
def embedding_ctc_logits(
    frames: torch.Tensor, vocab: torch.Tensor, norm: torch.Tensor, blank_embedding: torch.Tensor, blank_bias: torch.Tensor,
    log_scale: torch.Tensor,
) -> torch.Tensor:  # fmt: skip
    """CTC scores of `(..., hidden)` frames against token embeddings `vocab` `(classes, hidden)`: the frames scaled to
    `norm` (so CTC shapes only their directions), dot products, a learned blank first; `(..., 1 + classes)`. Always
    float32, autocast or not: the best path (which frames merge, which token each segment is) must not depend on it."""
    frames = frames.float()
    directions = frames / frames.norm(dim=-1, keepdim=True).clamp_min(1e-6) * norm
    blank = directions @ blank_embedding.float() + blank_bias
    return torch.cat([blank[..., None], directions @ vocab.float().T], dim=-1) * log_scale.exp()


class LlasmCtcCompressAdaptor(LlasmStackMlpAdaptor):
    """`stack_mlp` frames, scored by a CTC head against the LLM's input embeddings, compressed to one audio token per
    CTC segment (LegoSLM / CTC compression, see `LlasmConfig`).

    The head scores each frame's direction (rescaled to the mean norm of the scored embeddings) against the
    embeddings of the `ctc_vocab_size` tokens in the `ctc_token_ids` buffer, plus a learned blank. Runs of frames
    with the same best label are merged and blank runs dropped; each remaining segment becomes the
    posterior-weighted mean of the scored embeddings (posteriors over the tokens, blank excluded, at
    `ctc_temperature`, averaged over the segment's frames): inputs the frozen LLM already reads. A window whose
    frames are all blank (silence) still gives one token: its least blank-like frame. The head reads the LLM
    embeddings at call time (`token_embeddings`), so the LLM stays their one source.
    """

    def __init__(self, config: LlasmConfig):
        super().__init__(config)
        hidden = config.text_config.hidden_size
        self.temperature = config.ctc_temperature
        self.register_buffer("ctc_token_ids", torch.arange(config.ctc_vocab_size), persistent=True)
        self.blank_embedding = nn.Parameter(torch.zeros(hidden))
        self.blank_bias = nn.Parameter(torch.zeros(()))
        self.log_scale = nn.Parameter(torch.zeros(()))

    def ctc_logits(self, frames: torch.Tensor, token_embeddings: torch.Tensor) -> torch.Tensor:
        """`(..., 1 + ctc_vocab_size)` scores of `(..., hidden)` frames: index 0 the blank, i + 1 `ctc_token_ids[i]`."""
        vocab = token_embeddings[self.ctc_token_ids].float()
        return embedding_ctc_logits(frames, vocab, vocab.norm(dim=-1).mean(), self.blank_embedding, self.blank_bias, self.log_scale)

    def forward(
        self, encoder_hidden_states: torch.Tensor, encoder_frame_mask: torch.Tensor, token_embeddings: torch.Tensor,
        max_tokens: list[int] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, list[list[int]]]:  # fmt: skip
        """`(total_tokens, hidden)` audio tokens of all windows, `(windows,)` tokens per window, and the LLM token id
        of every token (the CTC best path). `max_tokens` (the reader's signature) needs no enforcing here: merged runs
        of stacked frames never outnumber the window's slots."""
        frames, valid = self.frame_states(encoder_hidden_states, encoder_frame_mask)
        logits = self.ctc_logits(frames, token_embeddings)
        posteriors = (logits[..., 1:] / self.temperature).softmax(-1)
        best = logits.argmax(-1)
        vocab = token_embeddings[self.ctc_token_ids]
        tokens, counts, token_ids = [], [], []
        for window in range(frames.shape[0]):
            length = int(valid[window].sum())
            labels = best[window, :length]
            starts = torch.ones_like(labels, dtype=torch.bool)
            starts[1:] = labels[1:] != labels[:-1]
            segment = starts.cumsum(0) - 1
            means = torch.zeros(int(starts.sum()), posteriors.shape[-1], dtype=posteriors.dtype, device=posteriors.device)
            means = means.index_add(0, segment, posteriors[window, :length]) / torch.bincount(segment)[:, None]
            keep = labels[starts] != 0
            if not bool(keep.any()):  # silence: the least blank-like frame
                frame = logits[window, :length, 1:].amax(-1).argmax()
                means, keep = posteriors[window, frame][None], torch.ones(1, dtype=torch.bool, device=labels.device)
                chosen = logits[window, frame, 1:].argmax()[None] + 1
            else:
                chosen = labels[starts][keep]
            tokens.append(means[keep] @ vocab.to(means.dtype))
            counts.append(int(keep.sum()))
            token_ids.append(self.ctc_token_ids[chosen - 1].tolist())
        hidden = torch.cat(tokens).to(frames.dtype)
        return hidden, torch.tensor(counts, dtype=torch.long, device=frames.device), token_ids


class LlasmLinearAdaptor(nn.Module):
    """Stack `stack_factor` encoder frames, then one linear map (with stack_factor=1: the original LLaSM projector)."""

    def __init__(self, config: LlasmConfig):
        super().__init__()
        self.stack_factor = config.stack_factor
        self.linear = nn.Linear(config.audio_config.d_model * config.stack_factor, config.text_config.hidden_size)

    def forward(self, encoder_hidden_states: torch.Tensor, encoder_frame_mask: torch.Tensor) -> torch.Tensor:
        return self.linear(stack_frames(encoder_hidden_states, self.stack_factor))


class LlasmWhisperResamplerAdaptor(nn.Module):
    """The original LLaSM adaptor: the Whisper *decoder* used as a `num_queries`-query resampler, then one linear.

    Every window is read by `num_queries` identical queries, the decoder start token
    (`audio_config.decoder_start_token_id`, `<|startoftranscript|>` = 50258 for multilingual Whisper), that differ
    only by their learned positions 0..N-1 and causal self-attention, and that cross-attend to the window's encoder
    frames. The decoder's final-LayerNorm output `(N, d_model)` goes through `linear` (`d_model -> LLM hidden`,
    with bias), so every window gives exactly `num_queries` audio tokens.

    `encoder_frame_mask` is the cross-attention mask, so unpadded (shorter) windows work; with the processor's
    `pad_to_window=True` every window is the full 30 s and this is exactly the original computation
    (`WhisperModel(input_features, decoder_input_ids=[start] * 64).last_hidden_state` -> `mm_projector`).

    Training note: in the original LLaSM the Whisper decoder was *frozen* in both stages (only `linear` and the
    LLM were trained). Here it belongs to the adaptor (`multi_modal_projector.decoder`), so to reproduce the
    original stages freeze `model.model.multi_modal_projector.decoder` and train `model.model.multi_modal_projector.linear`.
    Self-attention uses an explicit causal mask: use the `eager` or `sdpa` attention implementation.
    """

    def __init__(self, config: LlasmConfig):
        super().__init__()
        audio_config = config.audio_config
        if audio_config.decoder_start_token_id is None:
            raise ValueError("The whisper_resampler adaptor needs audio_config.decoder_start_token_id (the query token).")
        if config.num_queries > audio_config.max_target_positions:
            raise ValueError(
                f"num_queries={config.num_queries} exceeds the Whisper decoder's "
                f"max_target_positions={audio_config.max_target_positions}."
            )
        self.num_queries = config.num_queries
        self.query_token_id = audio_config.decoder_start_token_id
        self.decoder = WhisperDecoder(audio_config)
        self.linear = nn.Linear(audio_config.d_model, config.text_config.hidden_size)

    def forward(self, encoder_hidden_states: torch.Tensor, encoder_frame_mask: torch.Tensor) -> torch.Tensor:
        decoder = self.decoder
        windows, frames = encoder_hidden_states.shape[:2]
        dtype, device = decoder.layer_norm.weight.dtype, encoder_hidden_states.device
        encoder_hidden_states = encoder_hidden_states.to(dtype)
        # Same as WhisperDecoder.forward (which takes no cross-attention mask): token embeddings + positions.
        query_ids = torch.full((1, self.num_queries), self.query_token_id, dtype=torch.long, device=device)
        hidden = decoder.embed_tokens(query_ids) + decoder.embed_positions.weight[: self.num_queries].to(device)
        hidden = nn.functional.dropout(hidden, p=decoder.dropout, training=self.training)
        hidden = hidden.expand(windows, -1, -1)

        minimum = torch.finfo(dtype).min
        future = torch.ones(self.num_queries, self.num_queries, dtype=torch.bool, device=device).triu(1)
        causal_mask = torch.zeros(future.shape, dtype=dtype, device=device).masked_fill(future, minimum)
        causal_mask = causal_mask[None, None].expand(windows, 1, -1, -1)
        cross_mask = None
        if encoder_frame_mask is not None and not bool(encoder_frame_mask.all()):
            padding = ~encoder_frame_mask.to(device=device, dtype=torch.bool)
            cross_mask = torch.zeros(padding.shape, dtype=dtype, device=device).masked_fill(padding, minimum)
            cross_mask = cross_mask[:, None, None, :].expand(windows, 1, self.num_queries, frames)

        for layer in decoder.layers:
            if self.training and decoder.layerdrop > 0.0 and torch.rand([]) < decoder.layerdrop:
                continue
            hidden = layer(hidden, causal_mask, encoder_hidden_states, encoder_attention_mask=cross_mask, use_cache=False)
        return self.linear(decoder.layer_norm(hidden))


class LlasmWhisperReaderAdaptor(nn.Module):
    """Reads each window with the Whisper decoder, greedily, as Whisper transcribes; every decoded Whisper token becomes
    the LLM's own input embedding(s) of the same text piece, plus a learned projection of the decoder state that chose
    it (`state_proj`, zero at first).

    The Whisper decoder already knows how to read this encoder (DiVA initialises its adaptor from it for that reason);
    read out token by token it recognises speech as well as Whisper does, and the LLM receives what it reads best:
    its own token embeddings. `llm_pieces` maps each Whisper token to the LLM tokens spelling the same bytes (both
    vocabularies are byte-level BPE; most tokens map one to one), so no tokenizer is needed at run time. Decoding is
    discrete and runs without gradients; `state_proj` learns (e.g. by self-distillation through the frozen LLM) what
    the decoder states add beyond the words. A window gives at most `config.num_audio_tokens` tokens
    (`stack_factor` sets the bound: 12.5 tokens per second with 4); reading stops there, with a warning. A window
    with nothing to read gives one token, the projection of the first decoder state.
    """

    def __init__(self, config: LlasmConfig):
        super().__init__()
        audio_config = config.audio_config
        self.config = config
        self.decoder = WhisperDecoder(audio_config)
        self.state_proj = nn.Linear(audio_config.d_model, config.text_config.hidden_size)
        nn.init.zeros_(self.state_proj.weight)
        nn.init.zeros_(self.state_proj.bias)
        self.state_proj._is_hf_initialized = True  # zero on purpose: a fresh reader passes the words through unchanged
        # Whisper token -> the LLM tokens spelling it; whole words the LLM spells differently (one token for
        # " thunderstorm" where Whisper reads " thunder" "storm"; "What" without the space at the start of a turn)
        # are respelled as the LLM's tokenizer spells them, so the LLM reads what it would read typed (see
        # `whisper_reader_tables`).
        self.register_buffer("llm_pieces", torch.full((audio_config.vocab_size, config.reader_max_pieces), -1), persistent=True)
        self.register_buffer("starts_word", torch.zeros(audio_config.vocab_size, dtype=torch.bool), persistent=True)
        self.register_buffer("no_space", torch.full((config.text_config.vocab_size,), -1), persistent=True)
        self.register_buffer("spelling_keys", torch.full((config.reader_num_spellings, SPELLING_KEY_LENGTH), -1), persistent=True)
        self.register_buffer("spelling_values", torch.full((config.reader_num_spellings, config.reader_max_pieces), -1), persistent=True)
        self.register_buffer("spelling_initial", torch.zeros(config.reader_num_spellings, dtype=torch.bool), persistent=True)
        self._lookup: tuple | None = None  # see `spell`
        self.text_tokenizer = None  # the LLM's tokenizer, for spelling as typed (see `spell`); not saved with the weights
        # The encoder's output for a window of silence: Whisper's decoder was trained on 30 s windows and stops
        # reading (end-of-text) when it reaches the padding after the speech; without it, it repeats the speech.
        self.register_buffer("silence_states", torch.zeros(audio_config.max_source_positions, audio_config.d_model), persistent=True)
        self.read_cache: dict | None = None  # see `read`

    def _load_from_state_dict(self, *args, **kwargs):
        self._lookup = None  # the tables are about to change
        super()._load_from_state_dict(*args, **kwargs)

    def with_silence(self, encoder_hidden_states: torch.Tensor, encoder_frame_mask: torch.Tensor) -> torch.Tensor:
        """Each window's real frames followed by `silence_states` up to the full window, as Whisper reads a window
        padded to 30 s (the speech frames themselves are encoded unpadded): every frame is then attended to."""
        windows = encoder_hidden_states.shape[0]
        lengths = encoder_frame_mask.sum(-1).tolist()
        states = self.silence_states.to(encoder_hidden_states.dtype)[None].repeat(windows, 1, 1)
        for window, length in enumerate(lengths):
            states[window, :length] = encoder_hidden_states[window, :length]
        return states

    @torch.no_grad()
    @without_autocast
    def read(self, encoder_hidden_states: torch.Tensor, encoder_frame_mask: torch.Tensor, max_pieces: list[int],
             language: str | None = None) -> tuple[list[list[int]], list[torch.Tensor], list[str | None]]:  # fmt: skip
        """Greedy Whisper decoding of every window: its Whisper token ids (no special tokens), per token the decoder
        state that chose it `(tokens, d_model)` (a window without tokens: its first state, `(1, d_model)`), and the
        language each window was read in (`None` for an English-only Whisper); a window stops at end-of-text or at
        `max_pieces` LLM tokens. `language`: read every window in it (default `config.reader_language`; `None`:
        detected per window, as Whisper does).

        With `read_cache` set to a dict (training with a frozen decoder: every epoch reads the same clips), readings
        are memoized by the window's encoder states, so each clip is decoded once.

        Precision: reading runs with autocast off, in the decoder's own dtype (float32 unless the model was cast to
        bf16/fp16; the encoder states are cast to it first). A training or serving autocast (bf16/fp16, chosen per
        machine by the recipe) therefore never changes which words are read; a model cast to bf16/fp16 reads in that
        dtype. docs/training.md "Precision"."""
        encoder_hidden_states = encoder_hidden_states.to(self.decoder.layer_norm.weight.dtype)
        language = self.config.reader_language if language is None else language
        if language is not None:
            language = reader_language_code(language, self.config.reader_language_ids)
        if self.read_cache is None:
            return self._read_windows(encoder_hidden_states, encoder_frame_mask, max_pieces, language)
        lengths = encoder_frame_mask.sum(-1).tolist()
        keys = []
        for window, length in enumerate(lengths):
            digest = hashlib.blake2b(encoder_hidden_states[window, :length].float().cpu().numpy().tobytes(), digest_size=16)
            keys.append(f"{digest.hexdigest()}:{max_pieces[window]}:{language or self.config.reader_detect_languages}")
        missing = [w for w, key in enumerate(keys) if key not in self.read_cache]
        if missing:
            index = torch.tensor(missing, device=encoder_hidden_states.device)
            read = self._read_windows(encoder_hidden_states[index], encoder_frame_mask[index], [max_pieces[w] for w in missing], language)
            for window, window_ids, window_states, window_language in zip(missing, *read):
                self.read_cache[keys[window]] = (window_ids, window_states, window_language)
        cached = [self.read_cache[k] for k in keys]
        return [c[0] for c in cached], [c[1].to(encoder_hidden_states.device) for c in cached], [c[2] for c in cached]

    def _read_windows(self, encoder_hidden_states: torch.Tensor, encoder_frame_mask: torch.Tensor, max_pieces: list[int],
                      language: str | None) -> tuple[list[list[int]], list[torch.Tensor], list[str | None]]:  # fmt: skip
        """Every window read greedily, then, as Whisper's transcription does, the windows whose reading looks wrong
        (`needs_another_reading`) read again at each next temperature of `config.reader_temperatures` until one
        reading passes; a window that never passes keeps its greedy reading. A reading that ran out of budget in a
        greedy loop keeps what came before the loop (`loop_start`)."""
        temperatures = self.config.reader_temperatures or [0.0]
        windows = encoder_hidden_states.shape[0]
        first = self._decode(encoder_hidden_states, encoder_frame_mask, max_pieces,
                             None if language is None else [language] * windows, temperatures[0])  # fmt: skip
        tokens, states, languages, logprobs, exhausted = (list(part) for part in first)
        failing = [w for w in range(windows) if len(temperatures) > 1 and self.needs_another_reading(tokens[w], logprobs[w], exhausted[w])]
        for temperature in temperatures[1:]:
            if not failing:
                break
            index = torch.tensor(failing, device=encoder_hidden_states.device)
            again = self._decode(encoder_hidden_states[index], encoder_frame_mask[index], [max_pieces[w] for w in failing],
                                 [languages[w] for w in failing], temperature,
                                 [self._window_generator(encoder_hidden_states[w], encoder_frame_mask[w], temperature) for w in failing])  # fmt: skip
            still = []
            for window, *reading in zip(failing, *again):
                if self.needs_another_reading(reading[0], reading[3], reading[4]):
                    still.append(window)
                else:
                    tokens[window], states[window], languages[window], logprobs[window], exhausted[window] = reading
            failing = still
        for window in range(windows):
            if not exhausted[window]:
                continue
            looped = loop_start(tokens[window])
            if looped is not None:  # greedy decoding fell into a loop: keep what came before it, once
                tokens[window], states[window] = tokens[window][:looped], states[window][:looped]
            else:
                logger.warning_once(f"An audio window had more to read than its {max_pieces[window]} audio tokens; "
                                    "reading stopped there (lower stack_factor to allow more tokens per second).")  # fmt: skip
        return tokens, states, languages

    def needs_another_reading(self, whisper_ids: list[int], mean_logprob: float, exhausted: bool = False) -> bool:
        """Whisper's fallback test: the reading's text compresses more than `config.reader_compression_ratio_threshold`
        (zlib; a loop), or its mean token log-probability (end-of-text included) is below
        `config.reader_logprob_threshold`. The ratio needs the LLM's tokenizer (`text_tokenizer`) to spell the text.
        Also a reading that ran out of budget in a loop (`loop_start`): zlib's overhead hides the loops of short
        windows ("5 5 5 5 5 5 5 5 5 5" compresses only 1.7x)."""
        config = self.config
        if exhausted and loop_start(whisper_ids) is not None:
            return True
        if config.reader_logprob_threshold is not None and mean_logprob < config.reader_logprob_threshold:
            return True
        if config.reader_compression_ratio_threshold is None or self.text_tokenizer is None or not whisper_ids:
            return False
        pieces = self._tables()[0]
        text = self.text_tokenizer.decode([p for w in whisper_ids for p in pieces[w]], skip_special_tokens=False)
        return compression_ratio(text) > config.reader_compression_ratio_threshold

    @staticmethod
    def _window_generator(encoder_hidden_states: torch.Tensor, encoder_frame_mask: torch.Tensor, temperature: float) -> torch.Generator:
        """A CPU generator seeded from the window's encoder states and the temperature: sampling reads a clip the same
        way every time, whatever else is in the batch."""
        length = int(encoder_frame_mask.sum())
        data = encoder_hidden_states[:length].float().cpu().numpy().tobytes() + str(temperature).encode()
        return torch.Generator().manual_seed(int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little") >> 1)

    @torch.no_grad()
    def _decode(self, encoder_hidden_states: torch.Tensor, encoder_frame_mask: torch.Tensor, max_pieces: list[int],
                languages: list[str | None] | None, temperature: float = 0.0, generators: list[torch.Generator] | None = None,
                ) -> tuple[list[list[int]], list[torch.Tensor], list[str | None], list[float], list[bool]]:  # fmt: skip
        """One reading of every window: Whisper token ids, decoder states, language (`languages=None`: detected),
        mean token log-probability, and whether the window's budget ran out. Greedy at temperature 0, else sampled
        from the softmax at `temperature` with each window's generator."""
        decoder, config = self.decoder, self.config
        encoder_hidden_states = self.with_silence(encoder_hidden_states, encoder_frame_mask)
        windows = encoder_hidden_states.shape[0]
        device, dtype = encoder_hidden_states.device, decoder.layer_norm.weight.dtype
        encoder_hidden_states = encoder_hidden_states.to(dtype)
        cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
        position = 0

        def step(step_input: torch.Tensor) -> torch.Tensor:
            """Feed `(windows, length)` tokens after what the cache holds; the last position's decoder state."""
            nonlocal position
            length = step_input.shape[1]
            hidden = decoder.embed_tokens(step_input) + decoder.embed_positions.weight[position : position + length]
            self_mask = None
            if length > 1:  # causal over the new tokens, everything cached before them visible
                future = torch.ones(length, position + length, dtype=torch.bool, device=device).triu(position + 1)
                self_mask = torch.zeros(future.shape, dtype=hidden.dtype, device=device).masked_fill(future, torch.finfo(hidden.dtype).min)[None, None]
            for layer in decoder.layers:
                hidden = layer(hidden, self_mask, encoder_hidden_states, cache=cache, use_cache=True)
            position += length
            return decoder.layer_norm(hidden[:, -1])

        start, *rest = config.reader_prompt_ids
        language_ids = config.reader_language_ids or {}
        if language_ids:  # multilingual Whisper: <|sot|> <|lang|> <|transcribe|> <|notimestamps|>
            if languages is None:  # detect as Whisper does: its most likely language token after <|startoftranscript|>
                state = step(torch.full((windows, 1), start, dtype=torch.long, device=device))
                codes = config.reader_detect_languages or list(language_ids)
                ids = torch.tensor([language_ids[code] for code in codes], device=device)
                languages = [codes[i] for i in (state @ decoder.embed_tokens.weight[ids].T).argmax(-1).tolist()]
                prompt = [[language_ids[code], config.reader_task_id, *rest] for code in languages]
            else:
                prompt = [[start, language_ids[code], config.reader_task_id, *rest] for code in languages]
        else:
            languages = [None] * windows
            prompt = [[start, *rest]] * windows
        step_input = torch.tensor(prompt, dtype=torch.long, device=device)

        eos = config.audio_config.eos_token_id
        suppress = torch.zeros(decoder.embed_tokens.weight.shape[0], dtype=torch.bool, device=device)
        suppress[eos + 1 :] = True  # special and timestamp tokens are never text
        suppress[list(config.reader_suppress_ids or [])] = True
        pieces_of = (self.llm_pieces >= 0).sum(-1)
        suppress[: eos][pieces_of[: eos].to(device) == 0] = True  # text the LLM could not be given
        pieces_of = pieces_of.tolist()  # read per chosen token below: a python list, not a tensor lookup each time
        tokens, states = [[] for _ in range(windows)], [[] for _ in range(windows)]
        used, done, exhausted = [0] * windows, [False] * windows, [False] * windows
        logprob_sums = [0.0] * windows
        limit = decoder.embed_positions.weight.shape[0] - position - step_input.shape[1]
        for index in range(limit):
            state = step(step_input)
            if index == 0:
                first_states = state
            logits = state @ decoder.embed_tokens.weight.T
            lowest = torch.finfo(logits.dtype).min  # the logits' own dtype, whatever computed them
            logits = logits.masked_fill(suppress, lowest)
            if index == 0:  # as Whisper: no blank or end-of-text first
                logits[:, eos] = lowest
                for token in config.reader_begin_suppress_ids or []:
                    logits[:, token] = lowest
            if temperature > 0:
                probabilities = (logits.float() / temperature).softmax(-1).cpu()
                chosen = torch.cat([torch.multinomial(probabilities[w], 1, generator=generators[w]) for w in range(windows)]).to(device)
            else:
                chosen = logits.argmax(-1)
            logprobs = logits.float().log_softmax(-1).gather(-1, chosen[:, None])[:, 0].tolist()
            for window, token in enumerate(chosen.tolist()):
                if done[window]:
                    continue
                if token != eos and used[window] + pieces_of[token] > max_pieces[window]:
                    done[window] = exhausted[window] = True
                    continue
                logprob_sums[window] += logprobs[window]
                if token == eos:
                    done[window] = True
                    continue
                tokens[window].append(token)
                states[window].append(state[window])
                used[window] += pieces_of[token]
            if all(done):
                break
            step_input = chosen[:, None]
        mean_logprobs = [total / (len(t) + 1) for total, t in zip(logprob_sums, tokens)]  # as Whisper: end-of-text counts
        # a window with nothing to read keeps the first decoder state (see `forward`)
        states = [torch.stack(s) if s else first_states[w : w + 1] for w, s in enumerate(states)]
        return tokens, states, languages, mean_logprobs, exhausted

    def forward(
        self, encoder_hidden_states: torch.Tensor, encoder_frame_mask: torch.Tensor, token_embeddings: torch.Tensor,
        max_tokens: list[int], language: str | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, list[list[int]], list[str | None]]:  # fmt: skip
        """`(total_tokens, hidden)` audio tokens, `(windows,)` tokens per window, their LLM token ids, and the
        language each window was read in (see `read`)."""
        whisper_ids, states, languages = self.read(encoder_hidden_states, encoder_frame_mask, max_tokens, language)
        tokens, counts, llm_ids = [], [], []
        for ids, window_states, limit, window_language in zip(whisper_ids, states, max_tokens, languages):
            spelled, owner = self.spell(ids, language=window_language) if ids else ([], [])
            if len(spelled) > limit:  # a respelling longer than Whisper's pieces (rare): keep the pieces
                spelled, owner = self.spell(ids, respell=False)
            if not spelled:  # nothing to read (or only spaces): one token from the first decoder state
                tokens.append(self.state_proj(window_states[:1].to(self.state_proj.weight.dtype)))
                counts.append(1)
                llm_ids.append([])
                continue
            projected = self.state_proj(window_states.to(self.state_proj.weight.dtype))[torch.tensor(owner, device=window_states.device)]
            embedded = token_embeddings[torch.tensor(spelled, device=token_embeddings.device)].to(projected.dtype)
            ratio = self.config.reader_residual_ratio
            if ratio is not None:  # keep the words audible: cap the residual relative to each word's embedding
                limit = ratio * embedded.norm(dim=-1, keepdim=True)
                projected = projected * (limit / projected.norm(dim=-1, keepdim=True).clamp_min(1e-12)).clamp(max=1.0)
            tokens.append(embedded + projected)
            counts.append(len(spelled))
            llm_ids.append(spelled)
        return torch.cat(tokens), torch.tensor(counts, dtype=torch.long, device=encoder_hidden_states.device), llm_ids, languages

    def _tables(self) -> tuple:
        if self._lookup is None:  # python views of the tables, built once (reset when the tables change)
            spellings = {}
            for key, value, initial in zip(self.spelling_keys.tolist(), self.spelling_values.tolist(), self.spelling_initial.tolist()):
                spellings[(bool(initial), tuple(k for k in key if k >= 0))] = [v for v in value if v >= 0]
            pieces = [[p for p in row if p >= 0] for row in self.llm_pieces.tolist()]
            self._lookup = (pieces, spellings, self.starts_word.tolist(), self.no_space.tolist())
        return self._lookup

    def spell(self, whisper_ids: list[int], respell: bool = True, language: str | None = None) -> tuple[list[int], list[int]]:
        """LLM token ids for a window's Whisper tokens, and for each the index of the Whisper token whose decoder
        state it carries (the one holding its last byte).

        With the LLM's tokenizer (`text_tokenizer`, see `LlasmPreTrainedModel.set_reader_tokenizer`) the window's
        text is spelled exactly as the tokenizer spells it typed at the start of a turn, in any script (Chinese
        characters that Whisper splits into byte pieces, words the LLM merges), after the Chinese script conversion
        (`config.reader_chinese_script`) of windows read as `zh`. Without it, the tables: whole words found in the
        spelling table are spelled as the LLM spells them (sentence-initial form for the window's first word), the
        rest piece by piece, which matches typing for space-separated words only. `respell=False`: piece by piece."""
        pieces, spellings, starts, no_space = self._tables()
        if respell and self.text_tokenizer is not None:
            return self._spell_as_typed(whisper_ids, pieces, language)
        if respell and self.config.reader_language_ids:
            logger.warning_once("This multilingual whisper_reader has no text tokenizer (set_reader_tokenizer): words "
                                "outside space-separated scripts reach the LLM spelled differently from typed text.")  # fmt: skip
        out, owner, position = [], [], 0
        while position < len(whisper_ids):
            initial = position == 0
            length, value = 1, None
            if respell:
                for n in range(min(SPELLING_KEY_LENGTH, len(whisper_ids) - position), 0, -1):
                    key = tuple(whisper_ids[position : position + n])
                    if n > 1 and any(starts[k] for k in key[1:]):
                        continue  # a table entry is one word
                    value = spellings.get((initial, key))
                    if value is not None:
                        length = n
                        break
            if value is None:
                value = list(pieces[whisper_ids[position]])
                if initial and value and no_space[value[0]] >= 0:
                    value = [no_space[value[0]], *value[1:]]
            out.extend(value)
            owner.extend([position + length - 1] * len(value))
            position += length
        return out, owner

    def _spell_as_typed(self, whisper_ids: list[int], pieces: list[list[int]], language: str | None) -> tuple[list[int], list[int]]:
        tokenizer = self.text_tokenizer
        piece_ids = [p for w in whisper_ids for p in pieces[w]]
        # both vocabularies are byte-level BPE: a token string has one character per byte
        piece_bytes = [len(t) for t in tokenizer.convert_ids_to_tokens(piece_ids)]
        ends, total, cursor = [], 0, 0
        for w in whisper_ids:
            total += sum(piece_bytes[cursor : cursor + len(pieces[w])])
            cursor += len(pieces[w])
            ends.append(total)
        text = tokenizer.decode(piece_ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        skipped = len(text) - len(text.lstrip(" "))  # typed at the start of a turn: no leading space
        text = text[skipped:]
        if language == "zh" and self.config.reader_chinese_script is not None:
            text = chinese_script(text, self.config.reader_chinese_script)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        owner, offset = [], skipped
        for length in (len(t) for t in tokenizer.convert_ids_to_tokens(ids)):
            offset += length
            owner.append(min(bisect.bisect_left(ends, offset), len(whisper_ids) - 1))
        return ids, owner


def compression_ratio(text: str) -> float:
    """Whisper's repetition measure: UTF-8 bytes of `text` over their zlib-compressed size."""
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


def loop_start(tokens: list[int], min_repeats: int = 2) -> int | None:
    """Where a reading that ran out of budget started looping, or None: its tail is one block of tokens repeated (the
    last one maybe cut short) at least `min_repeats` times in full, covering at least half the reading. Whisper's
    greedy decoding loops on some windows ("five five" read as "5 5 5 ..."); Whisper itself catches it with a
    compression-ratio check and re-decodes at a higher temperature. Readings here stay deterministic: the loop is cut
    after its first block (`LlasmWhisperReaderAdaptor._decode`), only in a window whose budget ran out."""
    n = len(tokens)
    for period in range(1, n // min_repeats + 1):
        start = n - period
        while start > 0 and tokens[start - 1] == tokens[start - 1 + period]:
            start -= 1
        if n - start >= max(min_repeats * period, (n + 1) // 2):
            return start + period
    return None


# adaptor_type -> module. An adaptor maps (windows, frames, d_model) encoder states + frame mask to
# (windows, tokens, hidden); the first `config.num_audio_tokens(mel_frames)` tokens of each window are used.
# (`ctc_compress` also takes the LLM's input embeddings and returns its variable-length tokens, see there.)
LLASM_ADAPTORS: dict[str, type[nn.Module]] = {
    "stack_mlp": LlasmStackMlpAdaptor,
    "linear": LlasmLinearAdaptor,
    "whisper_resampler": LlasmWhisperResamplerAdaptor,
    "ctc_compress": LlasmCtcCompressAdaptor,
    "whisper_reader": LlasmWhisperReaderAdaptor,
}


def encode_audio_windows(
    audio_tower: nn.Module,
    input_features: torch.Tensor | None,
    input_features_mask: torch.Tensor | None = None,
    audio_encoder_hidden_states: torch.Tensor | None = None,
    **encoder_kwargs,
) -> tuple[BaseModelOutput, torch.Tensor]:
    """The encoder output of every window (or the cached one) and the `(windows, mel_frames)` mask."""
    if audio_encoder_hidden_states is not None:
        if input_features_mask is None:
            raise ValueError("`audio_encoder_hidden_states` need `input_features_mask` (mel frames per window).")
        return BaseModelOutput(last_hidden_state=audio_encoder_hidden_states.to(audio_tower.layer_norm.weight.dtype)), input_features_mask
    if input_features is None:
        raise ValueError("Pass `input_features` (or cached `audio_encoder_hidden_states`).")
    if input_features_mask is None:
        input_features_mask = torch.ones(input_features.shape[0], input_features.shape[-1], dtype=torch.long, device=input_features.device)
    return audio_tower(input_features, attention_mask=input_features_mask, **encoder_kwargs), input_features_mask


def audio_window_tokens(
    audio_tower: nn.Module,
    projector: nn.Module,
    config: LlasmConfig,
    input_features: torch.Tensor | None,
    input_features_mask: torch.Tensor | None = None,
    audio_encoder_hidden_states: torch.Tensor | None = None,
    token_embeddings: torch.Tensor | None = None,
    language: str | None = None,
    **encoder_kwargs,
) -> LlasmAudioFeaturesOutput:
    """Encoder -> adaptor -> the audio tokens of every window, concatenated (`pooler_output`, `(total, hidden)`),
    with the tokens per window. The one implementation behind `LlasmForConditionalGeneration.get_audio_features`
    (and the CTC aligner). `token_embeddings`: the LLM input-embedding matrix (variable-count adaptors only);
    `language`: the language the `whisper_reader` reads in (None: its config's, else detected per window)."""
    check_language_applies(config, language)
    encoded, input_features_mask = encode_audio_windows(audio_tower, input_features, input_features_mask,
                                                        audio_encoder_hidden_states, **encoder_kwargs)  # fmt: skip
    frame_mask = encoder_frame_mask(input_features_mask).to(encoded.last_hidden_state.device)
    recognized = languages = None
    window_counts = window_token_counts(config, input_features_mask)  # placeholder slots per window
    if config.variable_audio_tokens:
        if token_embeddings is None:
            raise ValueError(f"The {config.adaptor_type!r} adaptor needs the LLM's `token_embeddings`.")
        if config.adaptor_type == "whisper_reader":
            tokens, counts, recognized, languages = projector(encoded.last_hidden_state, frame_mask, token_embeddings,
                                                              window_counts, language=language)  # fmt: skip
        else:
            tokens, counts, recognized = projector(encoded.last_hidden_state, frame_mask, token_embeddings, window_counts)
    else:
        per_window = projector(encoded.last_hidden_state, frame_mask)
        tokens = torch.cat([window[:count] for window, count in zip(per_window, window_counts)], dim=0)
        counts = torch.tensor(window_counts, dtype=torch.long, device=tokens.device)
    return LlasmAudioFeaturesOutput(
        last_hidden_state=encoded.last_hidden_state, pooler_output=tokens, hidden_states=encoded.hidden_states,
        attentions=encoded.attentions, audio_token_counts=counts, recognized_token_ids=recognized,
        audio_token_slots=torch.tensor(window_counts, dtype=torch.long, device=tokens.device), audio_languages=languages,
    )  # fmt: skip


def check_language_applies(config: LlasmConfig, language: str | None) -> None:
    """A language is what the `whisper_reader` reads in; other adaptors refuse one instead of ignoring it."""
    if language is not None and config.adaptor_type != "whisper_reader":
        raise ValueError(f"language= chooses what the whisper_reader adaptor reads; this model's adaptor is {config.adaptor_type!r}.")


def window_token_counts(config: LlasmConfig, input_features_mask: torch.Tensor) -> list[int]:
    """Audio placeholders of each window, from its real mel frames (`config.num_audio_tokens`)."""
    return [config.num_audio_tokens(int(n)) for n in input_features_mask.sum(-1).tolist()]


@functools.cache
def _opencc(conversion: str):
    try:
        import opencc
    except ImportError as error:
        raise ImportError("Converting Whisper's Chinese readings between scripts needs OpenCC: pip install opencc "
                          "(or set config.reader_chinese_script = None to keep them as read).") from error  # fmt: skip
    return opencc.OpenCC(conversion)


def chinese_script(text: str, script: str) -> str:
    """`text` with its Chinese characters in `script` (`"simplified"` or `"traditional"`), converted by OpenCC."""
    return _opencc({"simplified": "t2s", "traditional": "s2t"}[script]).convert(text)


SPELLING_KEY_LENGTH = 6  # most Whisper tokens of one word in the reader's spelling table


def whisper_reader_tables(whisper_tokenizer, llm_tokenizer, max_pieces: int = 8) -> dict[str, list]:
    """The `whisper_reader` tables (`LlasmForConditionalGeneration.set_reader_tables`) from the two tokenizers:
    `pieces` (`whisper_token_pieces`), `starts_word` (Whisper ids whose token starts a word), `no_space` (LLM id of
    " word" -> id of "word", -1 if none) and `spellings`: `(initial, whisper_ids, llm_ids)` for every whole-word LLM
    token that reading piece by piece would spell differently (mid-sentence, and as the first word of a turn)."""
    pieces = whisper_token_pieces(whisper_tokenizer, llm_tokenizer, max_pieces)
    llm_vocab = llm_tokenizer.get_vocab()
    no_space = [-1] * (max(llm_vocab.values()) + 1)
    for token, i in llm_vocab.items():
        if token.startswith("Ġ") and token[1:] in llm_vocab:
            no_space[i] = llm_vocab[token[1:]]
    starts_word = [False] * len(pieces)
    for token, i in whisper_tokenizer.get_vocab().items():
        starts_word[i] = token.startswith("Ġ")

    def piecewise(ids: list[int], initial: bool) -> list[int]:
        out = [p for i in ids for p in pieces[i]]
        if initial and out and no_space[out[0]] >= 0:
            out[0] = no_space[out[0]]
        return out

    spellings = []
    special = set(llm_tokenizer.all_special_ids)
    for token, i in llm_vocab.items():
        if not token.startswith("Ġ") or len(token) < 2 or i in special:
            continue
        text = llm_tokenizer.convert_tokens_to_string([token])
        whisper_ids = whisper_tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(whisper_ids) > SPELLING_KEY_LENGTH:
            continue
        if len(whisper_ids) > 1 and piecewise(whisper_ids, False) != [i]:
            spellings.append((False, whisper_ids, [i]))
        initial = llm_tokenizer(text[1:], add_special_tokens=False)["input_ids"]
        if piecewise(whisper_ids, True) != initial and len(initial) <= max_pieces:
            spellings.append((True, whisper_ids, initial))
    return {"pieces": pieces, "starts_word": starts_word, "no_space": no_space, "spellings": spellings}


def whisper_token_pieces(whisper_tokenizer, llm_tokenizer, max_pieces: int = 8) -> list[list[int]]:
    """For every Whisper token id, the LLM token ids spelling the same bytes: the LLM token with the same string if
    there is one, else the longest LLM tokens covering it from the left (both are byte-level BPE vocabularies, so
    token strings share one alphabet). Special tokens, text the LLM cannot spell and tokens needing more than
    `max_pieces` LLM tokens (runs of symbols) map to `[]`: the reader never reads them."""
    special_llm = set(llm_tokenizer.all_special_ids)
    llm_vocab = {token: i for token, i in llm_tokenizer.get_vocab().items() if i not in special_llm}
    longest = max(len(token) for token in llm_vocab)
    whisper_vocab = whisper_tokenizer.get_vocab()
    special = set(whisper_tokenizer.all_special_ids)
    pieces: list[list[int]] = [[] for _ in range(max(whisper_vocab.values()) + 1)]
    for token, whisper_id in whisper_vocab.items():
        if whisper_id in special or token.startswith("<|"):
            continue
        row = spell_token(token, llm_vocab, longest)
        pieces[whisper_id] = row if len(row) <= max_pieces else []
    return pieces


def spell_token(token: str, vocabulary: dict[str, int], longest: int | None = None) -> list[int]:
    """Ids of the longest `vocabulary` strings spelling `token` from the left (greedy); `[]` if some character has no
    entry. `longest`: the longest string in `vocabulary` (computed if not given)."""
    longest = longest or max(len(entry) for entry in vocabulary)
    row, start = [], 0
    while start < len(token):
        for end in range(min(len(token), start + longest), start, -1):
            if token[start:end] in vocabulary:
                row.append(vocabulary[token[start:end]])
                start = end
                break
        else:
            return []
    return row


def suppressed_audio_tokens(generation_config, audio_token_id: int | None) -> list[int] | None:
    """`generation_config.suppress_tokens` plus the audio placeholder: a model must never generate it (it would
    read as a request for audio features that do not exist)."""
    suppress = list(getattr(generation_config, "suppress_tokens", None) or [])
    if audio_token_id is not None and audio_token_id not in suppress:
        suppress.append(audio_token_id)
    return suppress or None


# Per-window audio inputs (one row per 30 s window, not per sample).
AUDIO_INPUT_KEYS = ("input_features", "input_features_mask", "audio_encoder_hidden_states")


INFERENCE_DTYPES = ("float32", "bfloat16", "float16", "int8")


def set_inference_dtype(model: LlasmForConditionalGeneration, dtype: str) -> LlasmForConditionalGeneration:
    """Cast a loaded model for inference: "float32", "bfloat16", "float16", or "int8" (the LLM's linear layers with
    int8 weights and dynamically quantized activations, torch's own `quantize_dynamic` kernels; the audio side stays
    float32). int8 is for measurement, not for use: it decodes 1.7x faster on CPU, but SmolLM2-135M's greedy answers
    leave float32's within about 2 tokens and batching changes them (per-batch activation scales); such a model
    cannot be trained or saved. Numbers: docs/inference.md."""
    if dtype not in INFERENCE_DTYPES:
        raise ValueError(f"Unknown inference dtype {dtype!r}; choose from {INFERENCE_DTYPES}.")
    if dtype != "int8":
        return model.to(getattr(torch, dtype))
    if model.device.type != "cpu":
        raise ValueError(f"int8 inference runs on CPU; the model is on {model.device}.")
    import warnings

    with warnings.catch_warnings():  # torch.ao points to torchao, whose int8 CPU kernels were slower here (docs)
        warnings.simplefilter("ignore")
        model.model.language_model.float(), model.lm_head.float()
        llm_linears = {name: torch.ao.quantization.default_dynamic_qconfig for name, module in model.named_modules()
                       if isinstance(module, nn.Linear) and (name.startswith("model.language_model.") or name == "lm_head")}  # fmt: skip
        torch.ao.quantization.quantize_dynamic(model, llm_linears, dtype=torch.qint8, inplace=True)
    model.inference_dtype = "int8"
    return model


def text_causal_lm(model: LlasmForConditionalGeneration) -> PreTrainedModel:
    """The LLM of `model` as the causal LM it was built from (`AutoModelForCausalLM` of `config.text_config`), sharing
    `model`'s weights (its `model.language_model` and `lm_head`): for text-only baselines such as the bench's bare-LLM
    rows and the cascade."""
    with torch.device("meta"):
        llm = AutoModelForCausalLM.from_config(model.config.text_config)
    setattr(llm, llm.base_model_prefix, model.model.language_model)
    llm.set_output_embeddings(model.lm_head)
    llm.generation_config = model.generation_config
    return llm.train(model.training)


AudioRow = tuple[bytes, int]  # an audio token of the prompt: (its window's key, row within the window)


def common_prefix_length(a: Sequence, b: Sequence) -> int:
    """How many leading items `a` and `b` share."""
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def audio_window_key(features: torch.Tensor, frames: int) -> bytes:
    """Identity of an audio window for cache reuse: a digest of its real log-mel frames `(n_mels, frames)`."""
    return hashlib.blake2b(features[:, :frames].detach().float().cpu().numpy().tobytes(), digest_size=16).digest()


class LlasmConversationCache:
    r"""
    The LLM's key/value cache of one conversation, reused by the next `generate` call whose prompt starts the same
    way: turn N of a chat prefills only its new tokens and encodes only its new audio windows, and a cache seeded
    with the shared prompt head (`prefill`, then `copy` per request) skips the system prompt.

    Pass the *whole* conversation to `generate` each time, exactly as without the cache. The cache keeps what each
    cached position holds (a token id, or an audio window's digest and row), finds the longest common start with
    the new prompt, drops the rest (an edited or regenerated turn) and prefills from there, so answers equal those of
    a full prefill (greedy; up to float rounding of a prefill done in two parts). One conversation per cache (a
    batch of 1); beam search and several returned sequences are refused.

    Example:

    ```python
    >>> from modeling_llasm import LlasmConversationCache
    >>> conversation_cache = LlasmConversationCache()
    >>> messages = [{"role": "user", "content": [{"type": "audio", "path": "turn1.wav"}]}]
    >>> inputs = processor.apply_chat_template(messages, add_generation_prompt=True)
    >>> out = model.generate(**inputs, conversation_cache=conversation_cache, max_new_tokens=64)
    >>> answer = processor.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    >>> messages += [{"role": "assistant", "content": answer},
    ...              {"role": "user", "content": [{"type": "audio", "path": "turn2.wav"}]}]
    >>> inputs = processor.apply_chat_template(messages, add_generation_prompt=True)
    >>> out = model.generate(**inputs, conversation_cache=conversation_cache, max_new_tokens=64)  # prefills turn 2 only
    ```
    """

    def __init__(self) -> None:
        self.cache = DynamicCache()
        self.keys: list[int | AudioRow] = []  # what each cached position holds
        self.window_tokens: dict[bytes, torch.Tensor] = {}  # window key -> its audio tokens, for windows in `keys`
        self.reused_tokens = 0  # positions the last call took from the cache (for benchmarks and tests)

    def __len__(self) -> int:
        return len(self.keys)

    def copy(self) -> LlasmConversationCache:
        """An independent copy (e.g. of a prefilled shared prompt head, one per request)."""
        import copy

        return copy.deepcopy(self)

    @classmethod
    def for_prompt_head(cls, model: LlasmForConditionalGeneration, processor: LlasmProcessor) -> LlasmConversationCache:
        """A cache prefilled with the prompt head that every conversation with the default system prompt shares
        (the system prompt and the template up to the user's words): the common start of two rendered one-turn
        chats. Keep it and `copy` (or `start_from`) it per request."""
        heads = [processor.apply_chat_template([{"role": "user", "content": [{"type": "text", "text": word}]}],
                                               add_generation_prompt=True)["input_ids"][0]
                 for word in ("yes", "no")]  # fmt: skip
        length = common_prefix_length(*[head.tolist() for head in heads])
        cache = cls()
        if length:
            cache.prefill(model, heads[0][None, :length].to(model.device))
        return cache

    @staticmethod
    def unsupported(batch_size: int = 1, **generate_kwargs: Any) -> str | None:
        """Why a `generate` call with these arguments can not use a conversation cache, or None when it can. `generate`
        raises it; the pipeline's prefix cache and the server's conversation reuse ask first and do without."""
        if batch_size != 1:
            return f"A conversation cache takes one conversation (a batch of 1), got a batch of {batch_size}."
        if generate_kwargs.get("num_beams", 1) != 1 or generate_kwargs.get("num_return_sequences", 1) != 1:
            return "A conversation cache holds one conversation: it cannot be used with num_beams or num_return_sequences > 1."
        if any(generate_kwargs.get(k) is not None for k in ("inputs_embeds", "cache", "past_key_values")) or generate_kwargs.get("use_cache") is False:
            return ("With `conversation_cache`, pass `input_ids` (the whole conversation), no `inputs_embeds`, `cache`, "
                    "`past_key_values` or `use_cache=False`.")  # fmt: skip
        if generate_kwargs.get("return_dict_in_generate"):
            return "`conversation_cache` returns the sequences only (return_dict_in_generate is not supported)."
        return None

    def start_from(self, other: LlasmConversationCache) -> None:
        """Begin this (empty) conversation from a copy of what `other` holds (e.g. the shared prompt head)."""
        if self.keys:
            raise ValueError("start_from needs an empty conversation cache.")
        copied = other.copy()
        self.cache, self.keys, self.window_tokens = copied.cache, copied.keys, copied.window_tokens

    @torch.no_grad()
    def prefill(self, model: LlasmForConditionalGeneration, input_ids: torch.LongTensor, attention_mask: torch.Tensor | None = None,
                **audio) -> LlasmConversationCache:  # fmt: skip
        """Make the cache hold this prompt (e.g. the prompt head every request shares) without generating."""
        keys, ids, embeds = self.prompt(model, input_ids, attention_mask, audio)
        start = self.reuse(keys, keep_last=False)
        if start < len(keys):
            model.model.language_model(inputs_embeds=embeds[None, start:], cache=self.cache, use_cache=True)
        self.keys = keys
        return self

    @torch.no_grad()
    def generate(self, model: LlasmForConditionalGeneration, input_ids: torch.LongTensor, attention_mask: torch.Tensor | None,
                 audio: dict, **kwargs) -> torch.LongTensor:  # fmt: skip
        """`model.generate(..., conversation_cache=self)`: returns the caller's `input_ids` followed by the new tokens."""
        reason = self.unsupported(**kwargs)
        if reason:
            raise ValueError(reason)
        keys, ids, embeds = self.prompt(model, input_ids, attention_mask, audio)
        self.reuse(keys, keep_last=True)
        output = GenerationMixin.generate(model, input_ids=ids[None], inputs_embeds=embeds[None], attention_mask=torch.ones_like(ids)[None],
                                          cache=self.cache, **kwargs)  # fmt: skip
        new_tokens = output[0, len(keys) :]
        # the last new token was returned but never fed back: the cache holds the prompt and the others
        self.keys = (keys + new_tokens.tolist())[: self.cache.get_seq_length()]
        return torch.cat([input_ids.to(output.device), new_tokens[None]], dim=-1)

    def reuse(self, keys: list[int | AudioRow], keep_last: bool) -> int:
        """Crop the cache to its longest common start with `keys` (leaving one position to prefill when
        `keep_last`); return where the prefill starts."""
        common = common_prefix_length(self.keys, keys)
        if keep_last:
            common = min(common, len(keys) - 1)
        cached = self.cache.get_seq_length()
        if common == 0:
            self.cache = DynamicCache()
        elif common < cached:
            self.cache.crop(common - cached)  # a negative count removes that many positions from the end
        self.keys = self.keys[:common]
        self.reused_tokens = common
        return common

    def prompt(self, model: LlasmForConditionalGeneration, input_ids: torch.LongTensor, attention_mask: torch.Tensor | None,
               audio: dict) -> tuple[list[int | AudioRow], torch.LongTensor, torch.Tensor]:  # fmt: skip
        """The prompt as the LLM sees it: what each position holds, its token ids (audio positions keep the
        placeholder id) and its input embeddings. Windows seen before are not encoded again; the unused placeholders
        of a variable-count adaptor are left out (as `generate` does)."""
        if input_ids is None or input_ids.ndim != 2 or input_ids.shape[0] != 1:
            raise ValueError(f"A conversation cache takes one conversation: `input_ids` of shape (1, length), got "
                             f"{None if input_ids is None else tuple(input_ids.shape)}.")  # fmt: skip
        ids = input_ids[0] if attention_mask is None else input_ids[0][attention_mask[0].bool()]
        windows = self.audio_windows(model, audio)
        placeholder = model.config.audio_token_id
        keys: list[int | AudioRow] = []
        rows: list[torch.Tensor] = []  # audio token embeddings, in order
        window_iter = iter(windows)
        remaining = 0
        for token in ids.tolist():
            if token != placeholder:
                keys.append(token)
                continue
            if remaining == 0:
                window = next(window_iter, None)
                if window is None:
                    raise ValueError("The prompt has more audio placeholder tokens than the audio windows given provide.")
                key, slots, tokens = window
                remaining, row = slots, 0
            if row < tokens.shape[0]:
                keys.append((key, row))
                rows.append(tokens[row])
            remaining -= 1
            row += 1
        if remaining or next(window_iter, None) is not None:
            raise ValueError("The prompt's audio placeholder tokens do not match the audio windows given.")
        audio_positions = torch.tensor([not isinstance(k, int) for k in keys], device=ids.device)
        packed_ids = torch.tensor([k if isinstance(k, int) else placeholder for k in keys], dtype=ids.dtype, device=ids.device)
        embeds = model.get_input_embeddings()(packed_ids)
        if rows:
            embeds = embeds.masked_scatter(audio_positions[:, None], torch.stack(rows).to(embeds.dtype))
        return keys, packed_ids, embeds

    def audio_windows(self, model: LlasmForConditionalGeneration, audio: dict) -> list[tuple[bytes, int, torch.Tensor]]:
        """`(key, placeholder slots, audio tokens)` of each window, encoding only windows this cache has not seen."""
        features, mask = audio.get("input_features"), audio.get("input_features_mask")
        if audio.get("audio_encoder_hidden_states") is not None:
            raise ValueError("A conversation cache recognises windows by their `input_features`; pass those, not encoder outputs.")
        if features is None:
            return []
        if mask is None:
            mask = torch.ones(features.shape[0], features.shape[-1], dtype=torch.long, device=features.device)
        frames = mask.sum(-1).tolist()
        language = audio.get("language")  # what the reader reads depends on it: part of the window's key
        keys = [audio_window_key(window, int(n)) + (language or "").encode() for window, n in zip(features, frames)]
        missing = [i for i, key in enumerate(keys) if key not in self.window_tokens]
        if missing:
            index = torch.tensor(missing, device=features.device)
            encoded = model.get_audio_features(features.index_select(0, index), mask.index_select(0, index), language=language)
            for i, tokens in zip(missing, encoded.pooler_output.split(encoded.audio_token_counts.tolist())):
                self.window_tokens[keys[i]] = tokens
        seen = set(keys) | {k[0] for k in self.keys if not isinstance(k, int)}
        self.window_tokens = {k: v for k, v in self.window_tokens.items() if k in seen}
        slots = window_token_counts(model.config, mask)
        return [(key, count, self.window_tokens[key]) for key, count in zip(keys, slots)]


class LlasmPreTrainedModel(PreTrainedModel):
    config: LlasmConfig
    config_class = LlasmConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    input_modalities = ("audio", "text")
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    # The audio encoder and the resampler pass 4-D additive masks, which flash attention cannot read.
    _supports_flash_attn = False
    _supports_attention_backend = True
    _skip_keys_device_placement = ["cache"]

    def _init_weights(self, module: nn.Module) -> None:
        # Sub-models (Whisper encoder, LLM) initialize themselves; the adaptor (and a fresh `lm_head`) are LLaSM's own.
        # `transformers.initialization` leaves alone what a checkpoint loaded, and a model built on the meta device
        # gets the values `__init__` gives (the common tests compare both).
        if isinstance(module, nn.Linear) and not getattr(module, "_is_hf_initialized", False):
            std = getattr(self.config.text_config, "initializer_range", 0.02)
            init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, LlasmCtcCompressAdaptor):
            init.copy_(module.ctc_token_ids, torch.arange(module.ctc_token_ids.shape[0]))
            for parameter in (module.blank_embedding, module.blank_bias, module.log_scale):
                init.zeros_(parameter)
        elif isinstance(module, LlasmWhisperReaderAdaptor):
            init.zeros_(module.state_proj.weight)  # a fresh reader passes the words through unchanged
            init.zeros_(module.state_proj.bias)
            for table in (module.llm_pieces, module.no_space, module.spelling_keys, module.spelling_values):
                init.constant_(table, -1)  # -1: no entry
            for table in (module.starts_word, module.spelling_initial, module.silence_states):
                init.zeros_(table)
            module._lookup = None

    def set_reader_tokenizer(self, tokenizer) -> None:
        """Give the `whisper_reader` the LLM's tokenizer (the processor's), so that what it reads reaches the LLM
        spelled exactly as typed text, in any script. `from_pretrained` does it when the checkpoint holds the
        tokenizer; `LlasmProcessor` saves it there."""
        if self.config.adaptor_type != "whisper_reader":
            raise ValueError(f"The {self.config.adaptor_type!r} adaptor reads no text: it takes no tokenizer.")
        self.base_model.multi_modal_projector.text_tokenizer = tokenizer

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """`PreTrainedModel.from_pretrained`; a `whisper_reader` model also gets the tokenizer saved beside its weights
        (`set_reader_tokenizer`), when there is one. Checkpoints of the layout before `LlasmModel` held the towers
        (`audio_tower.*`, `multi_modal_projector.*`, `language_model.model.*`, `language_model.lm_head.*`) load through
        the checkpoint conversion mapping registered below (`save_pretrained` still writes that layout)."""
        loaded = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        model = loaded[0] if kwargs.get("output_loading_info") else loaded
        if model.config.adaptor_type == "whisper_reader" and model.base_model.multi_modal_projector.text_tokenizer is None:
            hub = {k: kwargs[k] for k in ("cache_dir", "revision", "token", "local_files_only", "subfolder") if k in kwargs}
            try:
                model.set_reader_tokenizer(AutoTokenizer.from_pretrained(pretrained_model_name_or_path, **hub))
            except (OSError, ValueError) as error:  # no tokenizer saved there: the reader spells with its tables
                logger.info(f"No tokenizer beside the weights ({error}); the whisper_reader spells with its tables.")
        return loaded

    @torch.no_grad()
    def set_ctc_vocabulary(self, token_ids) -> None:
        """Make the `ctc_compress` head score these LLM token ids (`config.ctc_vocab_size` follows); the blank starts
        at their mean embedding. The training recipe picks the most frequent English tokens
        (`modeling_llasm.training.ctc_vocabulary`)."""
        if self.config.adaptor_type != "ctc_compress":
            raise ValueError(f"The {self.config.adaptor_type!r} adaptor has no CTC vocabulary.")
        head = self.base_model.multi_modal_projector
        ids = torch.as_tensor(list(token_ids), dtype=torch.long, device=head.ctc_token_ids.device)
        vocab_size = self.get_input_embeddings().weight.shape[0]
        if ids.numel() == 0 or int(ids.min()) < 0 or int(ids.max()) >= vocab_size or ids.unique().numel() != ids.numel():
            raise ValueError(f"CTC vocabulary: expected distinct token ids in [0, {vocab_size}), got {ids.numel()} ids.")
        head.ctc_token_ids = ids
        head.blank_embedding.copy_(self.get_input_embeddings().weight[ids].mean(0).to(head.blank_embedding.dtype))
        self.config.ctc_vocab_size = ids.numel()

    @torch.no_grad()
    def set_reader_tables(self, pieces: list[list[int]], starts_word: list[bool] | None = None,
                          no_space: list[int] | None = None, spellings: list[tuple[bool, list[int], list[int]]] = ()) -> None:  # fmt: skip
        """Set the `whisper_reader` tables (`whisper_reader_tables` computes them from the two tokenizers): for every
        Whisper token id the LLM ids spelling it, which Whisper ids start a word, the LLM's space-less twin of each
        token, and whole-word respellings. `config.reader_max_pieces` / `reader_num_spellings` follow."""
        if self.config.adaptor_type != "whisper_reader":
            raise ValueError(f"The {self.config.adaptor_type!r} adaptor has no reader tables.")
        reader = self.base_model.multi_modal_projector
        rows = reader.llm_pieces.shape[0]
        vocab_size = self.get_input_embeddings().weight.shape[0]
        if len(pieces) > rows:
            raise ValueError(f"Reader tables: {len(pieces)} Whisper tokens, but the decoder has {rows}.")
        values = [i for row in pieces for i in row] + [i for _, _, value in spellings for i in value]
        if any(not 0 <= i < vocab_size for i in values):
            raise ValueError(f"Reader tables: LLM token ids must be in [0, {vocab_size}).")
        if any(not 1 <= len(key) <= SPELLING_KEY_LENGTH for _, key, _ in spellings):
            raise ValueError(f"Reader tables: a spelling key must have 1 to {SPELLING_KEY_LENGTH} Whisper tokens.")
        width = max(1, max((len(row) for row in pieces), default=1), max((len(v) for _, _, v in spellings), default=1))

        def padded(rows_: list[list[int]], columns: int, count: int) -> torch.Tensor:
            table = torch.full((count, columns), -1, dtype=torch.long)
            for index, row in enumerate(rows_):
                table[index, : len(row)] = torch.tensor(row, dtype=torch.long)
            return table

        device = reader.llm_pieces.device
        reader.llm_pieces = padded(pieces, width, rows).to(device)
        reader.starts_word = torch.tensor(list(starts_word or [False] * rows) + [False] * (rows - len(starts_word or [])), dtype=torch.bool, device=device)[:rows]
        twin = torch.full((vocab_size,), -1, dtype=torch.long)
        if no_space:
            twin[: min(len(no_space), vocab_size)] = torch.tensor(no_space[:vocab_size], dtype=torch.long)
        reader.no_space = twin.to(device)
        reader.spelling_keys = padded([key for _, key, _ in spellings], SPELLING_KEY_LENGTH, len(spellings)).to(device)
        reader.spelling_values = padded([value for _, _, value in spellings], width, len(spellings)).to(device)
        reader.spelling_initial = torch.tensor([initial for initial, _, _ in spellings], dtype=torch.bool, device=device)
        reader._lookup = None
        self.config.reader_max_pieces, self.config.reader_num_spellings = width, len(spellings)



@dataclass
class LlasmModelOutputWithPast(ModelOutput):
    r"""
    last_hidden_state (`torch.FloatTensor` of shape `(batch, sequence, hidden)`): the LLM's last hidden states.
    cache, hidden_states, attentions: the LLM's (as in `LlasmCausalLMOutputWithPast`).
    audio_hidden_states, encoder_hidden_states, encoder_attentions: as in `LlasmCausalLMOutputWithPast`.
    """

    last_hidden_state: torch.FloatTensor | None = None
    cache: Cache | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    audio_hidden_states: torch.FloatTensor | None = None
    encoder_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    encoder_attentions: tuple[torch.FloatTensor, ...] | None = None



class LlasmModel(LlasmPreTrainedModel):
    r"""
    LLaSM without the LM head: Whisper encoder (`audio_tower`) -> adaptor (`multi_modal_projector`) -> the LLM's base
    model (`language_model`), returning hidden states (for embeddings, probes or a head of your own).
    `LlasmForConditionalGeneration` holds one as `model`, with the `lm_head` beside it (transformers' v5 layout).

    `AutoModel` maps to `LlasmForConditionalGeneration`, not to this class: LLaSM checkpoints are generative and
    `AutoModel.from_pretrained(dir).generate(...)` is how people call them (README), so the Auto class keeps working
    for generation; load this class by name. It reads every LLaSM checkpoint (the `lm_head` is left out).

    Example:

    ```python
    >>> from modeling_llasm import LlasmModel
    >>> model = LlasmModel.from_pretrained("path/to/llasm")
    >>> inputs = processor.apply_chat_template(messages, add_generation_prompt=True)
    >>> model(**inputs).last_hidden_state.shape   # (batch, sequence, hidden)
    ```
    """

    def __init__(self, config: LlasmConfig):
        super().__init__(config)
        if config.adaptor_type not in LLASM_ADAPTORS:
            raise ValueError(f"Unknown adaptor_type {config.adaptor_type!r}; expected one of {sorted(LLASM_ADAPTORS)}.")
        self.audio_tower = LlasmAudioEncoder(config.audio_config)
        self.multi_modal_projector = LLASM_ADAPTORS[config.adaptor_type](config)
        self.language_model = AutoModel.from_config(config.text_config)
        self._no_split_modules = ["WhisperEncoderLayer", "WhisperDecoderLayer", *(self.language_model._no_split_modules or [])]
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    @can_return_tuple
    def get_audio_features(
        self,
        input_features: torch.Tensor | None,
        input_features_mask: torch.Tensor | None = None,
        audio_encoder_hidden_states: torch.Tensor | None = None,
        language: str | None = None,
        **kwargs,
    ) -> tuple | LlasmAudioFeaturesOutput:
        """Encode audio windows `(windows, n_mels, frames)`; `pooler_output` holds the audio tokens of all windows,
        concatenated in window order `(total_audio_tokens, hidden)`, `last_hidden_state` the encoder output,
        `audio_token_counts` the tokens of each window (see `LlasmAudioFeaturesOutput`). `audio_encoder_hidden_states`
        `(windows, ceil(frames / 2), d_model)`: precomputed `audio_tower` outputs (a frozen-encoder cache) used
        instead of running the encoder; `input_features_mask` is then required. Other keyword arguments
        (`output_hidden_states`, `output_attentions`) go to the encoder. `language` (`whisper_reader`): read every
        window in this Whisper language (`"en"`, `"zh"`, ...) instead of `config.reader_language` / detecting it."""
        token_embeddings = self.get_input_embeddings().weight if self.config.variable_audio_tokens else None
        return audio_window_tokens(self.audio_tower, self.multi_modal_projector, self.config, input_features,
                                   input_features_mask, audio_encoder_hidden_states, token_embeddings, language, **kwargs)  # fmt: skip

    def get_placeholder_mask(
        self, input_ids: torch.Tensor | None, inputs_embeds: torch.Tensor, audio_features: torch.Tensor
    ) -> torch.Tensor:
        """Boolean mask over `inputs_embeds` of the audio placeholder positions (found from `inputs_embeds` when
        `input_ids` are absent), checked against the features."""
        if self.config.audio_token_id is None:
            raise ValueError("`config.audio_token_id` is not set: the model cannot locate the audio placeholder tokens.")
        if input_ids is None:
            placeholder = self.get_input_embeddings()(torch.tensor(self.config.audio_token_id, device=inputs_embeds.device))
            mask = (inputs_embeds == placeholder.to(inputs_embeds.dtype)).all(-1)
        else:
            mask = input_ids == self.config.audio_token_id
        if int(mask.sum()) != audio_features.shape[0]:
            raise ValueError(
                f"The prompt has {int(mask.sum())} audio placeholder tokens but the audio gives {audio_features.shape[0]} "
                "audio tokens; build inputs with LlasmProcessor and do not truncate them."
            )
        return mask.unsqueeze(-1).expand_as(inputs_embeds).to(inputs_embeds.device)

    def prompt_embeddings(
        self,
        input_ids: torch.LongTensor | None,
        inputs_embeds: torch.FloatTensor | None,
        attention_mask: torch.Tensor | None,
        position_ids: torch.LongTensor | None,
        cache: Cache | None,
        input_features: torch.FloatTensor | None,
        input_features_mask: torch.LongTensor | None,
        audio_encoder_hidden_states: torch.FloatTensor | None,
        language: str | None = None,
        mm_encoder_outputs: dict[str, LlasmAudioFeaturesOutput] | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, LlasmAudioFeaturesOutput | None]:
        """The LLM's input embeddings with the audio merged in (`merge_audio_features`), the attention mask and
        positions to use, and the audio features (None without audio). Placeholder ids that come without audio are
        embedded as the ordinary tokens they are (as transformers' audio LLMs do: assisted decoding and later
        generation steps call the model with ids only); the processor refuses a placeholder typed into text.
        `mm_encoder_outputs={"audio": get_audio_features(...)}`: audio encoded before (as transformers' `generate` passes
        pre-encoded images), used instead of encoding `input_features` again."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of `input_ids` or `inputs_embeds`.")
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)

        features = (mm_encoder_outputs or {}).get("audio")
        if features is not None:
            if input_features is not None or audio_encoder_hidden_states is not None:
                raise ValueError("Pass the audio either as input_features / audio_encoder_hidden_states or as mm_encoder_outputs['audio'], not both.")
            inputs_embeds, attention_mask, position_ids = self.merge_audio_features(
                input_ids, inputs_embeds, attention_mask, position_ids, features
            )
        elif input_features is not None or audio_encoder_hidden_states is not None:
            recorded = {k: kwargs[k] for k in ("output_hidden_states", "output_attentions") if kwargs.get(k)}
            features = self.get_audio_features(input_features, input_features_mask, audio_encoder_hidden_states, language,
                                               return_dict=True, **recorded)  # fmt: skip
            inputs_embeds, attention_mask, position_ids = self.merge_audio_features(
                input_ids, inputs_embeds, attention_mask, position_ids, features
            )

        context = getattr(self.config.text_config, "max_position_embeddings", None)
        if context is not None and (cache is None or cache.get_seq_length() == 0) and inputs_embeds.shape[1] > context:
            # never truncated silently: say why quality may collapse (the default adaptor: ~6 audio tokens per second)
            logger.warning_once(
                f"The prompt has {inputs_embeds.shape[1]} tokens, more than the LLM's max_position_embeddings "
                f"({context}); its answers past that length are unreliable. Use shorter audio or split it."
            )
        return inputs_embeds, attention_mask, position_ids, features

    def merge_audio_features(
        self,
        input_ids: torch.Tensor,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor | None,
        position_ids: torch.Tensor | None,
        features: LlasmAudioFeaturesOutput,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Put the audio tokens into the placeholder positions of `inputs_embeds`.

        With a variable-count adaptor (`ctc_compress`) each window fills only the first `audio_token_counts` of its
        placeholders: the unused ones are masked out of attention and, unless `position_ids` are given, positions are
        numbered as if they were absent, so the logits at every other position equal those of the prompt without them
        (`generate` removes them instead). Returns `(inputs_embeds, attention_mask, position_ids)`."""
        audio = features.pooler_output.to(inputs_embeds.device, inputs_embeds.dtype)
        if not self.config.variable_audio_tokens:
            mask = self.get_placeholder_mask(input_ids, inputs_embeds, audio)
            return inputs_embeds.masked_scatter(mask, audio), attention_mask, position_ids
        slots = features.audio_token_slots.to(audio.device)
        used = features.audio_token_counts.to(audio.device)
        if bool((used > slots).any()) or bool((used < 1).any()):
            raise ValueError(f"Audio windows produced {used.tolist()} tokens for {slots.tolist()} placeholders.")
        filled = torch.arange(int(slots.max()), device=audio.device)[None, :] < used[:, None]
        filled = torch.cat([row[:count] for row, count in zip(filled, slots.tolist())])  # per placeholder, in order
        values = audio.new_zeros(filled.shape[0], audio.shape[-1]).masked_scatter(filled[:, None], audio)
        mask = self.get_placeholder_mask(input_ids, inputs_embeds, values)
        inputs_embeds = inputs_embeds.masked_scatter(mask, values)
        placeholders = mask[..., 0]
        attention_mask = torch.ones_like(placeholders, dtype=torch.long) if attention_mask is None else attention_mask.clone()
        attention_mask[placeholders] = filled.to(attention_mask.device, attention_mask.dtype)
        if position_ids is None:
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp_min(0)
        return inputs_embeds, attention_mask, position_ids


    @can_return_tuple
    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        input_features: torch.FloatTensor | None = None,
        input_features_mask: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        audio_encoder_hidden_states: torch.FloatTensor | None = None,
        language: str | None = None,
        mm_encoder_outputs: dict[str, LlasmAudioFeaturesOutput] | None = None,
        **kwargs,
    ) -> tuple | LlasmModelOutputWithPast:
        r"""Inputs as in `LlasmForConditionalGeneration.forward` (no labels)."""
        inputs_embeds, attention_mask, position_ids, features = self.prompt_embeddings(
            input_ids, inputs_embeds, attention_mask, position_ids, cache, input_features, input_features_mask,
            audio_encoder_hidden_states, language, mm_encoder_outputs, **kwargs,
        )  # fmt: skip
        outputs = self.language_model(inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids,
                                      cache=cache, **{**kwargs, "return_dict": True})  # fmt: skip
        return LlasmModelOutputWithPast(
            last_hidden_state=outputs.last_hidden_state,
            cache=getattr(outputs, "cache", None),
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            audio_hidden_states=features.pooler_output if features is not None else None,
            encoder_hidden_states=features.hidden_states if features is not None else None,
            encoder_attentions=features.attentions if features is not None else None,
        )


class LlasmForConditionalGeneration(LlasmPreTrainedModel, GenerationMixin):
    r"""
    LLaSM: speech windows are encoded by Whisper, mapped by the adaptor into LLM embeddings, and replace the audio
    placeholder tokens of the prompt. Text-only prompts run the LLM unchanged. `model` is the `LlasmModel` (audio
    tower, adaptor, the LLM's base model), `lm_head` the LLM's output layer (tied to its input embeddings when the
    LLM ties them).

    Example:

    ```python
    >>> from modeling_llasm import LlasmForConditionalGeneration
    >>> model, processor = LlasmForConditionalGeneration.from_pretrained_components("whisper-dir", "llm-dir")
    >>> messages = [{"role": "user", "content": [{"type": "audio", "path": "question.wav"}]}]
    >>> inputs = processor.apply_chat_template(messages, add_generation_prompt=True)
    >>> out = model.generate(**inputs, max_new_tokens=64)
    >>> processor.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    ```
    """

    _tied_weights_keys = {"lm_head.weight": "model.language_model.embed_tokens.weight"}
    _tp_plan = {"lm_head": "colwise_gather_output"}

    def __init__(self, config: LlasmConfig):
        super().__init__(config)
        self.model = LlasmModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self._no_split_modules = self.model._no_split_modules
        self.post_init()
        # the placeholder is never an answer: never generated, never a prompt-lookup or assistant candidate either
        self.generation_config.suppress_tokens = suppressed_audio_tokens(self.generation_config, config.audio_token_id)

    def get_input_embeddings(self) -> nn.Module:
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.lm_head = value

    def get_audio_features(self, *args, **kwargs) -> tuple | LlasmAudioFeaturesOutput:
        """`LlasmModel.get_audio_features`."""
        return self.model.get_audio_features(*args, **kwargs)

    @can_return_tuple
    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        input_features: torch.FloatTensor | None = None,
        input_features_mask: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        audio_encoder_hidden_states: torch.FloatTensor | None = None,
        language: str | None = None,
        mm_encoder_outputs: dict[str, LlasmAudioFeaturesOutput] | None = None,
        **kwargs,
    ) -> tuple | LlasmCausalLMOutputWithPast:
        r"""
        input_features (`torch.FloatTensor` of shape `(windows, n_mels, frames)`): log-mel windows from the processor.
        input_features_mask (`torch.LongTensor` of shape `(windows, frames)`): 1 for real frames, 0 for padding.
        labels (`torch.LongTensor`, *optional*): next-token targets aligned with `input_ids`; -100 is ignored.
        audio_encoder_hidden_states (`torch.FloatTensor`, *optional*): cached `audio_tower` outputs used instead of
            `input_features` (see `get_audio_features`).
        language (`str`, *optional*): `whisper_reader`: the Whisper language to read the audio in (`"en"`, `"zh"`);
            default `config.reader_language`, else detected per window.
        mm_encoder_outputs (`dict[str, LlasmAudioFeaturesOutput]`, *optional*): `{"audio": get_audio_features(...)}`
            computed before, instead of `input_features` (`generate` passes it for adaptors whose token count is known
            only after encoding; assisted decoding hands it to the assistant).
        """
        outputs = self.model(
            input_ids=input_ids,
            input_features=input_features,
            input_features_mask=input_features_mask,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            audio_encoder_hidden_states=audio_encoder_hidden_states,
            language=language,
            mm_encoder_outputs=mm_encoder_outputs,
            **{**kwargs, "return_dict": True},
        )
        logits = self.lm_head(slice_logits_to_keep(outputs.last_hidden_state, logits_to_keep))
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.text_config.vocab_size, **kwargs)
        return LlasmCausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            audio_hidden_states=outputs.audio_hidden_states,
            encoder_hidden_states=outputs.encoder_hidden_states,
            encoder_attentions=outputs.encoder_attentions,
        )

    @torch.no_grad()
    def generate(self, input_ids: torch.LongTensor | None = None, attention_mask: torch.Tensor | None = None, **kwargs):
        """`GenerationMixin.generate`. With a variable-count adaptor (`ctc_compress`) the audio is encoded first, the
        unused placeholders are removed from the prompt (each row re-left-padded) and the LLM generates from the
        shorter prompt's embeddings; the returned sequences are the caller's `input_ids` followed by the new tokens,
        as for every other adaptor (see `configuration_llasm.audio_token_count`).

        `conversation_cache` (`LlasmConversationCache`): reuse what an earlier call with the same prompt start
        computed (the previous turns of a chat, a shared system prompt); pass the whole conversation as usual."""
        audio = {key: kwargs.pop(key) for key in AUDIO_INPUT_KEYS if kwargs.get(key) is not None}
        language = kwargs.pop("language", None)
        conversation_cache = kwargs.pop("conversation_cache", None)
        if conversation_cache is not None:
            return conversation_cache.generate(self, input_ids, attention_mask, {**audio, "language": language}, **kwargs)
        if language is not None:
            if not audio:  # nothing to read: a text-only prompt ignores it
                language = None
            check_language_applies(self.config, language)
        if not (self.config.variable_audio_tokens and set(audio) - {"input_features_mask"}):
            cache = kwargs.get("cache", kwargs.get("past_key_values"))
            if (self.config.variable_audio_tokens and kwargs.get("mm_encoder_outputs") is None and cache is not None
                    and cache.get_seq_length() > 0 and input_ids is not None and bool((input_ids == self.config.audio_token_id).any())):  # fmt: skip
                raise ValueError(
                    f"The {self.config.adaptor_type} adaptor gives each audio window as many tokens as it reads, so a cache "
                    "returned by `generate` holds fewer positions than the returned sequences have placeholders: continue "
                    "this chat with `conversation_cache=LlasmConversationCache()` (the whole conversation each turn) instead."
                )
            return super().generate(input_ids=input_ids, attention_mask=attention_mask, **audio, **kwargs)  # no reader here
        if input_ids is None or kwargs.get("inputs_embeds") is not None:
            raise ValueError("Generation with audio needs `input_ids` with the audio placeholders (not `inputs_embeds`).")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        features = self.get_audio_features(audio.get("input_features"), audio.get("input_features_mask"),
                                           audio.get("audio_encoder_hidden_states"), language)  # fmt: skip
        # the unused placeholders of each window are left out: each window then fills all of its slots
        used = torch.cat([torch.arange(int(slots), device=input_ids.device) < int(count)
                          for slots, count in zip(features.audio_token_slots, features.audio_token_counts)])  # fmt: skip
        keep = attention_mask.bool().clone()
        placeholders = input_ids == self.config.audio_token_id
        if int(placeholders.sum()) != used.shape[0]:
            raise ValueError(f"The prompts have {int(placeholders.sum())} audio placeholder tokens but the audio windows give "
                             f"{used.shape[0]}; build inputs with LlasmProcessor and do not truncate them.")  # fmt: skip
        keep[placeholders] = used
        length = int(keep.sum(-1).max())
        # left padding is masked out of attention: any id does, the generation config's pad id reads best
        pad_id = self.generation_config.pad_token_id
        packed_ids = input_ids.new_full((input_ids.shape[0], length), pad_id if pad_id is not None else 0)
        packed_mask = attention_mask.new_zeros((input_ids.shape[0], length))
        for row in range(input_ids.shape[0]):  # left padding, as the processor pads for generation
            count = int(keep[row].sum())
            packed_ids[row, length - count :] = input_ids[row][keep[row]]
            packed_mask[row, length - count :] = 1
        features.audio_token_slots = features.audio_token_counts.clone()
        # ids, not embeddings: assisted and prompt-lookup decoding extend the ids, and the model merges the audio
        output = super().generate(input_ids=packed_ids, attention_mask=packed_mask, mm_encoder_outputs={"audio": features}, **kwargs)
        sequences = output if isinstance(output, torch.Tensor) else output.sequences
        prompt = input_ids.repeat_interleave(sequences.shape[0] // input_ids.shape[0], dim=0)
        sequences = torch.cat([prompt.to(sequences.device), sequences[:, length:]], dim=-1)
        if isinstance(output, torch.Tensor):
            return sequences
        output.sequences = sequences
        return output

    def prepare_inputs_for_generation(
        self, input_ids: torch.LongTensor, inputs_embeds: torch.Tensor | None = None, is_first_iteration: bool | None = False,
        **kwargs,
    ) -> dict:  # fmt: skip
        model_inputs = super().prepare_inputs_for_generation(
            input_ids, inputs_embeds=inputs_embeds, is_first_iteration=is_first_iteration, **kwargs
        )
        # Like `input_features`, cached encoder outputs only feed the prefill; later steps read the KV cache.
        if not is_first_iteration and kwargs.get("use_cache", True):
            model_inputs.pop("audio_encoder_hidden_states", None)
        return model_inputs

    def _expand_inputs_for_generation(
        self, expand_size: int = 1, is_encoder_decoder: bool = False, input_ids: torch.LongTensor | None = None, **model_kwargs
    ) -> tuple[torch.LongTensor | None, dict]:
        # Audio tensors have one row per window, not per sample: repeat each sample's windows as a group so that the
        # expanded rows (beams, return sequences) each get their own sample's audio, in placeholder order.
        audio = {key: model_kwargs.pop(key) for key in AUDIO_INPUT_KEYS if model_kwargs.get(key) is not None}
        encoded = dict(model_kwargs.get("mm_encoder_outputs") or {})
        if expand_size > 1 and audio:
            mask = audio.get("input_features_mask")
            if mask is None:  # as in `audio_window_tokens`: every mel frame is real
                if "input_features" not in audio:
                    raise ValueError("`audio_encoder_hidden_states` need `input_features_mask` (mel frames per window).")
                mask = audio["input_features"].new_ones(audio["input_features"].shape[0], audio["input_features"].shape[-1])
            index = self._expanded_window_index(input_ids, window_token_counts(self.config, mask), expand_size)
            audio = {key: value.index_select(0, index.to(value.device)) for key, value in audio.items()}
        if expand_size > 1 and encoded.get("audio") is not None:  # transformers expands pre-encoded images only
            features = encoded["audio"]
            index = self._expanded_window_index(input_ids, features.audio_token_slots.tolist(), expand_size)
            rows = features.pooler_output.split(features.audio_token_counts.tolist())
            encoded["audio"] = LlasmAudioFeaturesOutput(
                last_hidden_state=features.last_hidden_state.index_select(0, index.to(features.last_hidden_state.device)),
                pooler_output=torch.cat([rows[i] for i in index.tolist()]),
                audio_token_counts=features.audio_token_counts[index], audio_token_slots=features.audio_token_slots[index],
                recognized_token_ids=None if features.recognized_token_ids is None else [features.recognized_token_ids[i] for i in index.tolist()],
                audio_languages=None if features.audio_languages is None else [features.audio_languages[i] for i in index.tolist()],
            )  # fmt: skip
            model_kwargs["mm_encoder_outputs"] = encoded
        input_ids, model_kwargs = super()._expand_inputs_for_generation(expand_size, is_encoder_decoder, input_ids, **model_kwargs)
        model_kwargs.update(audio)
        return input_ids, model_kwargs

    def _expanded_window_index(self, input_ids: torch.LongTensor | None, tokens: list[int], expand_size: int) -> torch.Tensor:
        """Window indices for `expand_size` copies of every sample, each copy holding that sample's windows
        (`tokens`: the audio placeholders of each window)."""
        if input_ids is None:
            raise ValueError("Expanding audio inputs for generation needs `input_ids` to locate the audio placeholders.")
        index, window = [], 0
        for row, needed in enumerate((input_ids == self.config.audio_token_id).sum(-1).tolist()):
            first = window
            while needed > 0 and window < len(tokens):
                needed -= tokens[window]
                window += 1
            if needed != 0:
                raise ValueError(f"Sample {row}: its audio placeholder tokens do not match whole audio windows.")
            index.extend(list(range(first, window)) * expand_size)
        if window != len(tokens):
            raise ValueError(f"The prompts' audio placeholders use {window} audio windows but {len(tokens)} were given.")
        return torch.tensor(index, dtype=torch.long)

    def save_pretrained(self, save_directory: str | os.PathLike, *args, **kwargs):
        if getattr(self, "inference_dtype", None) == "int8":
            raise ValueError("This model was quantized for int8 CPU inference (set_inference_dtype); save the float model instead.")
        # every saved checkpoint's generation config forbids emitting the audio placeholder
        self.generation_config.suppress_tokens = suppressed_audio_tokens(self.generation_config, self.config.audio_token_id)
        # `register_for_auto_class` records a single Auto class; list the others too so that each of them
        # loads a saved checkpoint with trust_remote_code when the package is not installed.
        if self._auto_class is not None:
            target = f"{type(self).__module__.split('.')[-1]}.{type(self).__name__}"
            auto_map = dict(getattr(self.config, "auto_map", None) or {})
            for auto_class in ("AutoModel", "AutoModelForCausalLM", "AutoModelForMultimodalLM"):
                auto_map.setdefault(auto_class, target)
            self.config.auto_map = auto_map
        return super().save_pretrained(save_directory, *args, **kwargs)

    @classmethod
    def from_pretrained_components(
        cls,
        whisper: str | os.PathLike,
        language_model: str | os.PathLike,
        adaptor_type: str = "stack_mlp",
        stack_factor: int = 8,
        audio_token: str = "<|audio|>",
        dtype: torch.dtype = torch.float32,
        **config_kwargs,
    ) -> tuple[LlasmForConditionalGeneration, LlasmProcessor]:
        """Compose an (adaptor-untrained) LLaSM from a Whisper checkpoint and a causal-LM checkpoint.

        Adds `audio_token` to the LLM tokenizer, resizes the embeddings, and returns `(model, processor)`.
        Extra keyword arguments go to `LlasmConfig` (e.g. `adaptor_hidden_size`).
        """
        from transformers import WhisperModel

        whisper_model = WhisperModel.from_pretrained(whisper, dtype=dtype)
        encoder_state = whisper_model.encoder.state_dict()
        reads_with_decoder = adaptor_type in ("whisper_resampler", "whisper_reader")
        decoder_state = whisper_model.decoder.state_dict() if reads_with_decoder else None
        whisper_config: WhisperConfig = whisper_model.config
        del whisper_model
        if adaptor_type == "whisper_reader":  # read as Whisper's own generation config transcribes
            from transformers import GenerationConfig

            whisper_generation = GenerationConfig.from_pretrained(whisper)
            prompt = [whisper_config.decoder_start_token_id]
            if getattr(whisper_generation, "no_timestamps_token_id", None) is not None:
                prompt.append(whisper_generation.no_timestamps_token_id)
            config_kwargs.setdefault("reader_prompt_ids", prompt)
            config_kwargs.setdefault("reader_suppress_ids", list(getattr(whisper_generation, "suppress_tokens", None) or []))
            config_kwargs.setdefault("reader_begin_suppress_ids", list(getattr(whisper_generation, "begin_suppress_tokens", None) or []))
            if getattr(whisper_generation, "is_multilingual", False) and getattr(whisper_generation, "lang_to_id", None):
                config_kwargs.setdefault("reader_language_ids", {token.strip("<|>"): i for token, i in whisper_generation.lang_to_id.items()})
                config_kwargs.setdefault("reader_task_id", whisper_generation.task_to_id["transcribe"])
        llm = AutoModelForCausalLM.from_pretrained(language_model, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(language_model)
        tokenizer.add_special_tokens({"additional_special_tokens": [audio_token]}, replace_extra_special_tokens=False)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.padding_side = "left"

        config = LlasmConfig(
            audio_config=whisper_config,
            text_config=llm.config,
            adaptor_type=adaptor_type,
            stack_factor=stack_factor,
            audio_token=audio_token,
            audio_token_id=tokenizer.convert_tokens_to_ids(audio_token),
            **config_kwargs,
        )
        with torch.device("meta"):
            model = cls(config)
        base = model.model
        base.audio_tower = LlasmAudioEncoder(whisper_config).to(dtype)
        base.audio_tower.load_state_dict(encoder_state)
        base.multi_modal_projector = LLASM_ADAPTORS[adaptor_type](config).to(dtype)
        if decoder_state is not None:  # the resampler / reader run the pretrained Whisper decoder
            base.multi_modal_projector.decoder.load_state_dict(decoder_state)
        base.language_model, model.lm_head = llm.base_model, llm.get_output_embeddings()  # shared when the LLM ties them
        model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
        model.generation_config = llm.generation_config
        if model.generation_config.pad_token_id is None:
            model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.generation_config.suppress_tokens = suppressed_audio_tokens(model.generation_config, config.audio_token_id)

        feature_extractor = WhisperFeatureExtractor.from_pretrained(whisper)
        if adaptor_type == "whisper_reader":
            model.set_reader_tables(**whisper_reader_tables(AutoTokenizer.from_pretrained(whisper), tokenizer))
            model.set_reader_tokenizer(tokenizer)
            silence = feature_extractor(np.zeros(feature_extractor.n_samples, dtype=np.float32), sampling_rate=feature_extractor.sampling_rate,
                                        return_tensors="pt").input_features  # fmt: skip
            with torch.no_grad():
                states = base.audio_tower(silence.to(dtype)).last_hidden_state[0]
            base.multi_modal_projector.silence_states.copy_(states[: base.multi_modal_projector.silence_states.shape[0]])
        processor = LlasmProcessor(
            feature_extractor=feature_extractor,
            tokenizer=tokenizer,
            audio_token=audio_token,
            adaptor_type=adaptor_type,
            stack_factor=stack_factor,
            num_queries=config.num_queries,
        )
        return model.eval(), processor


# Every LLaSM checkpoint is written in the layout from before `LlasmModel` held the towers: `audio_tower.*`,
# `multi_modal_projector.*`, the causal LM's `language_model.model.*` and `language_model.lm_head.*` (checkpoints saved
# before the v5 layout, converted original LLaSM checkpoints, the embedded bases, and `save_pretrained` now, which
# reverts these renamings as it does for transformers' Qwen2-Audio and LLaVA). These are Qwen2-Audio's renamings; a
# registered mapping also applies to `trust_remote_code` copies of this file. The LLM's base model sits under `model`
# in its causal LM (Llama, Qwen2, Mistral, ... as `text_config`).
register_checkpoint_conversion_mapping(
    "llasm",
    [
        WeightRenaming(source_patterns=r"^language_model.lm_head", target_patterns="lm_head"),
        WeightRenaming(source_patterns=r"^language_model", target_patterns="model.language_model"),
        WeightRenaming(source_patterns=r"^audio_tower", target_patterns="model.audio_tower"),
        WeightRenaming(source_patterns=r"^multi_modal_projector", target_patterns="model.multi_modal_projector"),
    ],
    overwrite=True,
)
register_checkpoint_conversion_mapping(
    "LlasmModel", [WeightRenaming(source_patterns=r"^language_model.model", target_patterns="language_model")], overwrite=True
)


__all__ = [
    "INFERENCE_DTYPES",
    "LlasmConversationCache",
    "LlasmForConditionalGeneration",
    "LlasmModel",
    "LlasmModelOutputWithPast",
    "LlasmPreTrainedModel",
    "LlasmAudioEncoder",
    "LlasmCausalLMOutputWithPast",
    "LlasmAudioFeaturesOutput",
    "LlasmCtcCompressAdaptor",
    "LlasmWhisperReaderAdaptor",
    "LLASM_ADAPTORS",
    "audio_window_tokens",
    "common_prefix_length",
    "set_inference_dtype",
    "text_causal_lm",
    "suppressed_audio_tokens",
    "whisper_token_pieces",
    "whisper_reader_tables",
    "spell_token",
]
