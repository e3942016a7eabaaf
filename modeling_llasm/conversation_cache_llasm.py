"""`LlasmConversationCache`: the LLM's key/value cache of one conversation, reused by the next `generate` call whose
prompt starts the same (the turns before, a shared system prompt).

Part of the model (`modeling_llasm.py` imports it); travels with checkpoints for `trust_remote_code`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from transformers import GenerationMixin
from transformers.cache_utils import DynamicCache

from .configuration_llasm import window_token_counts


if TYPE_CHECKING:
    from .modeling_llasm import LlasmForConditionalGeneration
    from .processing_llasm import LlasmProcessor


AudioRow = bytes  # an audio token of the prompt: a digest of its values (`audio_token_key`)
# (window indices, their features, their mask) -> each window's audio tokens `(tokens, hidden)`
WindowEncoder = Callable[[list[int], torch.Tensor, torch.Tensor], Sequence[torch.Tensor]]


def common_prefix_length(a: Sequence, b: Sequence) -> int:
    """How many leading items `a` and `b` share."""
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def audio_window_key(features: torch.Tensor, frames: int, language: str | None = None) -> bytes:
    """Identity of an audio window for cache reuse: a digest of its real log-mel frames `(n_mels, frames)` and the
    language it is read in (what the reader reads depends on it)."""
    digest = hashlib.blake2b(features[:, :frames].detach().float().cpu().numpy().tobytes(), digest_size=16).digest()
    return digest + (language or "").encode()


def audio_token_key(token: torch.Tensor) -> AudioRow:
    """Identity of one audio token of a prompt: a digest of its values. Two prompts whose positions hold the same
    tokens and audio-token values up to some point share the LLM's keys/values up to there (e.g. the words a streamed
    reading had already read: `LlasmAudioStream`)."""
    return hashlib.blake2b(token.detach().float().cpu().numpy().tobytes(), digest_size=16).digest()


@dataclass
class LlasmComputedStep:
    """The LLM's output at a prompt's last position, computed ahead (a streamed turn whose last two readings agreed on
    the whole prompt: `LlasmAudioStream`): that position's keys/values in every layer and its logits `(1, 1, vocab)`.
    `LlasmForConditionalGeneration.forward` gives it back instead of computing it, once, when it is asked for exactly
    that position (one new position on a cache of `position` positions); decoding then goes on as usual, so the
    logits processors, the streamer and the stopping criteria see what a full computation would give them."""

    position: int
    key_values: list[tuple[torch.Tensor, torch.Tensor]]
    logits: torch.Tensor
    used: bool = field(default=False)

    def applies(self, cache, new_positions: int) -> bool:
        return not self.used and cache is not None and new_positions == 1 and cache.get_seq_length() == self.position

    def replay(self, cache) -> torch.Tensor:
        """Append the position's keys/values to `cache` (as its forward would) and return its logits."""
        for layer, (keys, values) in enumerate(self.key_values):
            cache.update(keys, values, layer)
        self.used = True
        return self.logits


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
        self.next_logits: torch.Tensor | None = None  # the LLM's logits after the last cached position, when computed
        self.computed_steps = 0  # generate calls whose first token came from `next_logits` (for benchmarks and tests)

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
        self.next_logits = copied.next_logits

    @torch.no_grad()
    def prefill(self, model: LlasmForConditionalGeneration, input_ids: torch.LongTensor, attention_mask: torch.Tensor | None = None,
                **audio) -> LlasmConversationCache:  # fmt: skip
        """Make the cache hold this prompt (e.g. the prompt head every request shares) without generating."""
        keys, ids, embeds = self.prompt(model, input_ids, attention_mask, audio)
        return self.extend(model, keys, embeds)

    @torch.no_grad()
    def extend(self, model: LlasmForConditionalGeneration, keys: list[int | AudioRow], embeds: torch.Tensor,
               with_logits: bool = False) -> LlasmConversationCache:  # fmt: skip
        """Make the cache hold the prompt whose positions hold `keys` (see `prompt`) with input embeddings `embeds`
        `(len(keys), hidden)`: keep the common start, prefill the rest. `with_logits`: also keep the logits after the
        last position, so that a `generate` on exactly this prompt takes its first token from them instead of
        computing the last position again (`LlasmComputedStep`)."""
        if len(keys) != embeds.shape[0]:
            raise ValueError(f"extend: {len(keys)} keys for {embeds.shape[0]} embeddings.")
        have_logits = self.next_logits is not None and self.keys == list(keys)
        # logits wanted but not kept: leave the last position to prefill again, so they come out of its forward
        start = self.reuse(keys, keep_last=with_logits and not have_logits and bool(keys))
        if start < len(keys):
            output = model.model.language_model(inputs_embeds=embeds[None, start:], cache=self.cache, use_cache=True)
            self.next_logits = model.lm_head(output.last_hidden_state[:, -1:]) if with_logits else None
        self.keys = list(keys)
        return self

    @torch.no_grad()
    def generate(self, model: LlasmForConditionalGeneration, input_ids: torch.LongTensor, attention_mask: torch.Tensor | None,
                 audio: dict, **kwargs) -> torch.LongTensor:  # fmt: skip
        """`model.generate(..., conversation_cache=self)`: returns the caller's `input_ids` followed by the new tokens."""
        reason = self.unsupported(**kwargs)
        if reason:
            raise ValueError(reason)
        keys, ids, embeds = self.prompt(model, input_ids, attention_mask, audio)
        step = self.computed_step(keys)
        self.reuse(keys, keep_last=True)
        if step is not None:
            kwargs["computed_step"] = step
        output = GenerationMixin.generate(model, input_ids=ids[None], inputs_embeds=embeds[None], attention_mask=torch.ones_like(ids)[None],
                                          cache=self.cache, **kwargs)  # fmt: skip
        self.computed_steps += int(step is not None and step.used)
        new_tokens = output[0, len(keys) :]
        # the last new token was returned but never fed back: the cache holds the prompt and the others
        self.keys = (keys + new_tokens.tolist())[: self.cache.get_seq_length()]
        self.next_logits = None
        return torch.cat([input_ids.to(output.device), new_tokens[None]], dim=-1)

    def computed_step(self, keys: list[int | AudioRow]) -> LlasmComputedStep | None:
        """The last position of `keys` as computed ahead, when this cache holds exactly that prompt and its logits."""
        if self.next_logits is None or self.keys != keys:
            return None
        last = [(layer.keys[..., -1:, :].clone(), layer.values[..., -1:, :].clone()) for layer in self.cache.layers]
        return LlasmComputedStep(position=len(keys) - 1, key_values=last, logits=self.next_logits)

    def reuse(self, keys: list[int | AudioRow], keep_last: bool) -> int:
        """Crop the cache to its longest common start with `keys` (leaving one position to prefill when
        `keep_last`); return where the prefill starts."""
        common = common_prefix_length(self.keys, keys)
        if keep_last:
            common = min(common, len(keys) - 1)
        cached = self.cache.get_seq_length()
        if common < len(self.keys):
            self.next_logits = None  # they follow the last position, which goes
        if common == 0:
            self.cache = DynamicCache()
        elif common < cached:
            self.cache.crop(common - cached)  # a negative count removes that many positions from the end
        self.keys = self.keys[:common]
        self.reused_tokens = common
        return common

    def prompt(self, model: LlasmForConditionalGeneration, input_ids: torch.LongTensor, attention_mask: torch.Tensor | None,
               audio: dict, encode: WindowEncoder | None = None) -> tuple[list[int | AudioRow], torch.LongTensor, torch.Tensor]:  # fmt: skip
        """The prompt as the LLM sees it: what each position holds, its token ids (audio positions keep the
        placeholder id) and its input embeddings. Windows seen before are not encoded again; the unused placeholders
        of a variable-count adaptor are left out (as `generate` does)."""
        if input_ids is None or input_ids.ndim != 2 or input_ids.shape[0] != 1:
            raise ValueError(f"A conversation cache takes one conversation: `input_ids` of shape (1, length), got "
                             f"{None if input_ids is None else tuple(input_ids.shape)}.")  # fmt: skip
        ids = input_ids[0] if attention_mask is None else input_ids[0][attention_mask[0].bool()]
        windows = self.audio_windows(model, audio, encode)
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
                keys.append(audio_token_key(tokens[row]))
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

    def audio_windows(self, model: LlasmForConditionalGeneration, audio: dict, encode: WindowEncoder | None = None,
                      ) -> list[tuple[bytes, int, torch.Tensor]]:  # fmt: skip
        """`(key, placeholder slots, audio tokens)` of each window, encoding only windows this cache has not seen
        (with `encode(indices, features, mask)` when given: the audio tokens of those windows, e.g. a streamed
        reading that starts from an earlier one; default `model.get_audio_features`)."""
        features, mask = audio.get("input_features"), audio.get("input_features_mask")
        if audio.get("audio_encoder_hidden_states") is not None:
            raise ValueError("A conversation cache recognises windows by their `input_features`; pass those, not encoder outputs.")
        if features is None:
            return []
        if mask is None:
            mask = torch.ones(features.shape[0], features.shape[-1], dtype=torch.long, device=features.device)
        frames = mask.sum(-1).tolist()
        language = audio.get("language")
        keys = [audio_window_key(window, int(n), language) for window, n in zip(features, frames)]
        missing = [i for i, key in enumerate(keys) if key not in self.window_tokens]
        if missing:
            index = torch.tensor(missing, device=features.device)
            if encode is not None:
                encoded_windows = encode(missing, features.index_select(0, index), mask.index_select(0, index))
            else:
                encoded = model.get_audio_features(features.index_select(0, index), mask.index_select(0, index), language=language)
                encoded_windows = encoded.pooler_output.split(encoded.audio_token_counts.tolist())
            for i, tokens in zip(missing, encoded_windows):
                self.window_tokens[keys[i]] = tokens
        self.window_tokens = {k: v for k, v in self.window_tokens.items() if k in keys}  # the conversation's windows
        slots = window_token_counts(model.config, mask)
        return [(key, count, self.window_tokens[key]) for key, count in zip(keys, slots)]
