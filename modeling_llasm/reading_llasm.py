"""The `whisper_reader` adaptor: the frozen Whisper decoder reads each audio window as Whisper transcribes, and the
LLM gets its own embeddings of the words read (spelled by the LLM's tokenizer, or by the tables built here).

Part of the model (`modeling_llasm.py` imports it); travels with checkpoints for `trust_remote_code`.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import zlib
from collections.abc import Callable

import torch
from torch import nn
from transformers.cache_utils import DynamicCache, EncoderDecoderCache
from transformers.models.whisper.modeling_whisper import WhisperDecoder
from transformers.utils import logging

from .configuration_llasm import LlasmConfig, reader_language_code


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
        self._silence_projections: tuple | None = None  # see `silence_projections`
        self._text_logit_weights: tuple | None = None  # see `text_logit_weights`

    def _load_from_state_dict(self, *args, **kwargs):
        self._lookup = None  # the tables are about to change
        super()._load_from_state_dict(*args, **kwargs)

    #: Project `silence_states` into each layer's cross-attention keys/values once and reuse them (they are constant),
    #: instead of projecting the whole padded window at every read: the same numbers, a ninth of the work on a 5 s
    #: window. False: project `with_silence(...)` per read, as Whisper itself does (kept to check the two agree).
    reuse_silence_projections: bool = True

    #: Compute the logits with `text_logit_weights`, the output projection's own contiguous transposed copy. False:
    #: with the embedding's transposed view, as Whisper's output projection does (kept to check the two agree).
    contiguous_text_logits: bool = True

    def with_silence(self, encoder_hidden_states: torch.Tensor, encoder_frame_mask: torch.Tensor) -> torch.Tensor:
        """Each window's real frames followed by `silence_states` up to the full window, as Whisper reads a window
        padded to 30 s (the speech frames themselves are encoded unpadded): every frame is then attended to."""
        windows = encoder_hidden_states.shape[0]
        lengths = encoder_frame_mask.sum(-1).tolist()
        states = self.silence_states.to(encoder_hidden_states.dtype)[None].repeat(windows, 1, 1)
        for window, length in enumerate(lengths):
            states[window, :length] = encoder_hidden_states[window, :length]
        return states

    def silence_projections(self, dtype: torch.dtype, device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Every decoder layer's cross-attention keys and values of `silence_states`, `(heads, frames, head_dim)`
        each (the layout the attention reads), kept until the silence or the projections change (their tensors'
        versions and storage are checked)."""
        attentions = [layer.encoder_attn for layer in self.decoder.layers]
        tensors = [self.silence_states, *(p for a in attentions for p in (*a.k_proj.parameters(), *a.v_proj.parameters()))]
        key = (dtype, device, tuple((t.data_ptr(), t._version) for t in tensors))
        if self._silence_projections is None or self._silence_projections[0] != key:
            silence = self.silence_states.to(device=device, dtype=dtype)
            projected = [tuple(heads(projection(silence)[None], a)[0].contiguous() for projection in (a.k_proj, a.v_proj)) for a in attentions]
            self._silence_projections = (key, projected)
        return self._silence_projections[1]

    def text_logit_weights(self) -> torch.Tensor:
        """The decoder's output projection over the text tokens and end-of-text (every id a reading can choose),
        `(d_model, eos + 1)`, transposed into its own contiguous copy: a one-row product with it streams the matrix
        row by row, 2.6x faster in float32 on a 2-core EPYC than with the embedding's transposed view (measured in
        docs/inference.md). Kept until the embedding changes (its version and storage are checked)."""
        weight = self.decoder.embed_tokens.weight
        key = (weight.data_ptr(), weight._version, weight.dtype, weight.device)
        if self._text_logit_weights is None or self._text_logit_weights[0] != key:
            eos = self.config.audio_config.eos_token_id
            self._text_logit_weights = (key, weight.detach()[: eos + 1].T.contiguous())
        return self._text_logit_weights[1]

    def cross_attention_cache(self, encoder_hidden_states: torch.Tensor, encoder_frame_mask: torch.Tensor) -> EncoderDecoderCache:
        """A decoder cache holding each layer's cross-attention keys/values over every window padded with silence, as
        `with_silence` pads it: the real frames are projected here, the silence's projections are reused
        (`silence_projections`); the layers then read them from the cache instead of projecting the 30 s window."""
        windows, dtype, device = encoder_hidden_states.shape[0], encoder_hidden_states.dtype, encoder_hidden_states.device
        lengths = encoder_frame_mask.sum(-1).tolist()
        cross = DynamicCache()
        for index, (layer, silence) in enumerate(zip(self.decoder.layers, self.silence_projections(dtype, device))):
            attention = layer.encoder_attn
            projected = []
            for projection, silence_projected in zip((attention.k_proj, attention.v_proj), silence):
                real = heads(projection(encoder_hidden_states[:, : max(lengths)]), attention)
                full = silence_projected.expand(windows, *silence_projected.shape).clone()
                for window, length in enumerate(lengths):
                    full[window, :, :length] = real[window, :, :length]
                projected.append(full)
            cross.update(*projected, index)
        return EncoderDecoderCache(DynamicCache(), cross)  # cross-attention marked as computed: the layers reuse it

    @torch.no_grad()
    @without_autocast
    def read(self, encoder_hidden_states: torch.Tensor, encoder_frame_mask: torch.Tensor, max_pieces: list[int],
             language: str | None = None, drafts: list[list[int] | None] | None = None,
             ) -> tuple[list[list[int]], list[torch.Tensor], list[str | None]]:  # fmt: skip
        """Greedy Whisper decoding of every window: its Whisper token ids (no special tokens), per token the decoder
        state that chose it `(tokens, d_model)` (a window without tokens: its first state, `(1, d_model)`), and the
        language each window was read in (`None` for an English-only Whisper); a window stops at end-of-text or at
        `max_pieces` LLM tokens. `language`: read every window in it (default `config.reader_language`; `None`:
        detected per window, as Whisper does). `drafts`: per window, Whisper ids an earlier reading gave (e.g. of the
        same speech before its last chunk arrived: `LlasmAudioStream`); each is checked in one parallel decoder pass
        and greedy reading goes on from its first disagreement: the same reading in fewer sequential steps.

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
            return self._read_windows(encoder_hidden_states, encoder_frame_mask, max_pieces, language, drafts)
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
                      language: str | None, drafts: list[list[int] | None] | None = None,
                      ) -> tuple[list[list[int]], list[torch.Tensor], list[str | None]]:  # fmt: skip
        """Every window read greedily, then, as Whisper's transcription does, the windows whose reading looks wrong
        (`needs_another_reading`) read again at each next temperature of `config.reader_temperatures` until one
        reading passes; a window that never passes keeps its greedy reading. A reading that ran out of budget in a
        greedy loop keeps what came before the loop (`loop_start`)."""
        temperatures = self.config.reader_temperatures or [0.0]
        windows = encoder_hidden_states.shape[0]
        first = self._decode(encoder_hidden_states, encoder_frame_mask, max_pieces,
                             None if language is None else [language] * windows, temperatures[0], drafts=drafts)  # fmt: skip
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
                drafts: list[list[int] | None] | None = None,
                ) -> tuple[list[list[int]], list[torch.Tensor], list[str | None], list[float], list[bool]]:  # fmt: skip
        """One reading of every window: Whisper token ids, decoder states, language (`languages=None`: detected),
        mean token log-probability, and whether the window's budget ran out. Greedy at temperature 0, else sampled
        from the softmax at `temperature` with each window's generator. `drafts` (greedy, see `read`): the windows'
        earlier readings, verified in one pass; windows are then read one at a time (each from its own agreement).
        """
        decoder, config = self.decoder, self.config
        windows = encoder_hidden_states.shape[0]
        if drafts is not None and temperature == 0 and any(drafts):
            if windows > 1:  # each window verifies its own draft: the windows would stop agreeing on their positions
                readings = [self._decode(encoder_hidden_states[w : w + 1], encoder_frame_mask[w : w + 1], max_pieces[w : w + 1],
                                         None if languages is None else languages[w : w + 1], drafts=drafts[w : w + 1])
                            for w in range(windows)]  # fmt: skip
                return tuple([reading[part][0] for reading in readings] for part in range(5))
        else:
            drafts = None
        device, dtype = encoder_hidden_states.device, decoder.layer_norm.weight.dtype
        encoder_hidden_states = encoder_hidden_states.to(dtype)
        if self.reuse_silence_projections:
            cache = self.cross_attention_cache(encoder_hidden_states, encoder_frame_mask)
        else:  # the layers project the padded windows themselves
            cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
            encoder_hidden_states = self.with_silence(encoder_hidden_states, encoder_frame_mask)
        position = 0

        def step(step_input: torch.Tensor, every_position: bool = False) -> torch.Tensor:
            """Feed `(windows, length)` tokens after what the cache holds; the last position's decoder state (every
            position's: `(windows, length, d_model)`)."""
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
            return decoder.layer_norm(hidden if every_position else hidden[:, -1])

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
        # Special and timestamp tokens (all ids after end-of-text) are never text: logits are computed over the text
        # tokens and end-of-text only; among those, suppressed tokens and text the LLM could not be given never win.
        text_logits = self.text_logit_weights() if self.contiguous_text_logits else decoder.embed_tokens.weight[: eos + 1].T
        pieces_of, unspellable = self._tables()[4:]
        never = {i for i in config.reader_suppress_ids or [] if i <= eos} | {i for i in unspellable if i < eos}
        blocked = torch.tensor(sorted(never), dtype=torch.long, device=device)
        blocked_first = torch.tensor(sorted(never | {eos} | {i for i in config.reader_begin_suppress_ids or [] if i <= eos}),
                                     dtype=torch.long, device=device)  # as Whisper: no blank or end-of-text first  # fmt: skip
        tokens, states = [[] for _ in range(windows)], [[] for _ in range(windows)]
        used, done, exhausted = [0] * windows, [False] * windows, [False] * windows
        logprob_sums = [0.0] * windows
        limit = decoder.embed_positions.weight.shape[0] - position - step_input.shape[1]
        following = False  # while the reading follows the draft: states, choices and log-probs come from its pass
        if drafts is not None:
            draft = drafts[0][: limit - 1]
            read_start = position + step_input.shape[1]
            every = step(torch.cat([step_input, torch.tensor([draft], dtype=torch.long, device=device)], dim=1), every_position=True)
            verified_states = every[0, step_input.shape[1] - 1 :]  # row i: the state choosing reading token i
            logits = verified_states @ text_logits  # every position's logits in one product
            logits[1:].index_fill_(-1, blocked, torch.finfo(logits.dtype).min)
            logits[:1].index_fill_(-1, blocked_first, torch.finfo(logits.dtype).min)
            verified_choices = logits.argmax(-1)
            verified_logprobs = logits.float().log_softmax(-1).gather(-1, verified_choices[:, None])[:, 0].tolist()
            following = True
        for index in range(limit):
            if following:
                state, chosen = verified_states[index : index + 1], verified_choices[index : index + 1]
                logprobs = verified_logprobs[index : index + 1]
            else:
                state = step(step_input)
                logits = state @ text_logits
                # the logits' own dtype, whatever computed them
                logits.index_fill_(-1, blocked_first if index == 0 else blocked, torch.finfo(logits.dtype).min)
                if temperature > 0:
                    probabilities = (logits.float() / temperature).softmax(-1).cpu()
                    chosen = torch.cat([torch.multinomial(probabilities[w], 1, generator=generators[w]) for w in range(windows)]).to(device)
                else:
                    chosen = logits.argmax(-1)
                logprobs = logits.float().log_softmax(-1).gather(-1, chosen[:, None])[:, 0].tolist()
            if index == 0:
                first_states = state
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
            if following and (index == len(draft) or token != draft[index]):  # the draft ends or was wrong here
                following = False
                position = read_start + index  # the prompt and the tokens read before this one
                cache.self_attention_cache.crop(position - cache.self_attention_cache.get_seq_length())  # drop the rest
            step_input = chosen[:, None]
        mean_logprobs = [total / (len(t) + 1) for total, t in zip(logprob_sums, tokens)]  # as Whisper: end-of-text counts
        # a window with nothing to read keeps the first decoder state (see `forward`)
        states = [torch.stack(s) if s else first_states[w : w + 1] for w, s in enumerate(states)]
        return tokens, states, languages, mean_logprobs, exhausted

    def forward(
        self, encoder_hidden_states: torch.Tensor, encoder_frame_mask: torch.Tensor, token_embeddings: torch.Tensor,
        max_tokens: list[int], language: str | None = None, drafts: list[list[int] | None] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, list[list[int]], list[str | None]]:  # fmt: skip
        """`(total_tokens, hidden)` audio tokens, `(windows,)` tokens per window, their LLM token ids, and the
        language each window was read in (see `read`, then `audio_tokens`)."""
        whisper_ids, states, languages = self.read(encoder_hidden_states, encoder_frame_mask, max_tokens, language, drafts)
        tokens, counts, llm_ids = self.audio_tokens(whisper_ids, states, languages, token_embeddings, max_tokens)
        return tokens, counts, llm_ids, languages

    def audio_tokens(self, whisper_ids: list[list[int]], states: list[torch.Tensor], languages: list[str | None],
                     token_embeddings: torch.Tensor, max_tokens: list[int]) -> tuple[torch.Tensor, torch.Tensor, list[list[int]]]:  # fmt: skip
        """What the LLM gets from the windows' readings (`read`): `(total_tokens, hidden)` audio tokens (the LLM's
        embeddings of the words as it spells them, plus the projected decoder states), the tokens per window and their
        LLM token ids."""
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
        return torch.cat(tokens), torch.tensor(counts, dtype=torch.long, device=tokens[0].device), llm_ids

    def _tables(self) -> tuple:
        if self._lookup is None:  # python views of the tables, built once (reset when the tables change)
            spellings = {}
            for key, value, initial in zip(self.spelling_keys.tolist(), self.spelling_values.tolist(), self.spelling_initial.tolist()):
                spellings[(bool(initial), tuple(k for k in key if k >= 0))] = [v for v in value if v >= 0]
            pieces = [[p for p in row if p >= 0] for row in self.llm_pieces.tolist()]
            pieces_of = [len(row) for row in pieces]
            self._lookup = (pieces, spellings, self.starts_word.tolist(), self.no_space.tolist(), pieces_of,
                            frozenset(i for i, n in enumerate(pieces_of) if n == 0))  # fmt: skip
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
        pieces, spellings, starts, no_space = self._tables()[:4]
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


def heads(states: torch.Tensor, attention: nn.Module) -> torch.Tensor:
    """`(batch, frames, d_model)` projected states as an attention layer reads them: `(batch, heads, frames, head_dim)`."""
    return states.view(*states.shape[:2], attention.num_heads, attention.head_dim).transpose(1, 2)


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
        if not whisper_ids or len(whisper_ids) > SPELLING_KEY_LENGTH:  # (none: a tokenizer without this text's bytes)
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
