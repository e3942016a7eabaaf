"""LLaSM configuration: a Whisper audio config, any decoder-only text config, and the modal adaptor settings."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec


if TYPE_CHECKING:
    import torch


# Adaptor types and how many LLM tokens each produces for one audio window.
ADAPTOR_TYPES = ("stack_mlp", "linear", "whisper_resampler")


def encoder_frame_count(num_mel_frames: int) -> int:
    """Whisper's conv front-end: conv1 keeps the length, conv2 has stride 2."""
    return (num_mel_frames - 1) // 2 + 1


def encoder_frame_mask(mel_frame_mask: torch.Tensor) -> torch.Tensor:
    """`(windows, mel_frames)` 0/1 mask -> `(windows, encoder_frames)` bool mask; the rule of `encoder_frame_count`
    (encoder frame i sees mel frames 2i-1..2i+1, so it is real when mel frame 2i is)."""
    return mel_frame_mask[:, ::2].bool()


def audio_token_count(num_mel_frames: int, adaptor_type: str, stack_factor: int, num_queries: int = 64) -> int:
    """Number of audio tokens one audio window of `num_mel_frames` log-mel frames becomes.

    The single source of truth for this number: the processor uses it to expand placeholders and the model
    uses it to keep only the valid adaptor outputs of each window.
    """
    if num_mel_frames <= 0:
        raise ValueError(f"An audio window needs at least one mel frame, got {num_mel_frames}.")
    if adaptor_type in ("stack_mlp", "linear"):
        return math.ceil(encoder_frame_count(num_mel_frames) / stack_factor)
    if adaptor_type == "whisper_resampler":  # the original LLaSM adaptor: a fixed number of decoder queries
        return num_queries
    raise ValueError(f"Unknown adaptor_type {adaptor_type!r}; expected one of {ADAPTOR_TYPES}.")


class LlasmConfig(PreTrainedConfig):
    r"""
    Configuration of a [`LlasmForConditionalGeneration`]: Whisper encoder -> modal adaptor -> causal LM.

    Args:
        audio_config (`WhisperConfig` or `dict`): the speech encoder (the Whisper encoder; the `"whisper_resampler"`
            adaptor also builds the Whisper decoder from it).
        text_config (`PreTrainedConfig` or `dict`): any decoder-only causal-LM config known to `AutoConfig`.
        adaptor_type (`str`, defaults to `"stack_mlp"`): `"stack_mlp"` stacks `stack_factor` consecutive encoder
            frames and maps them through a 2-layer MLP; `"linear"` stacks and applies a single linear layer;
            `"whisper_resampler"` is the original LLaSM adaptor: the Whisper decoder run on `num_queries` copies
            of `audio_config.decoder_start_token_id`, cross-attending to the window, then one linear layer.
        stack_factor (`int`, defaults to 8): encoder frames (50 per second) per audio token.
        adaptor_hidden_size (`int`, *optional*): inner width of the MLP; defaults to the LLM hidden size.
        adaptor_hidden_act (`str`, defaults to `"gelu"`): MLP activation.
        num_queries (`int`, defaults to 64): audio tokens per window for query-based adaptors
            (`"whisper_resampler"`; at most `audio_config.max_target_positions`).
        audio_token (`str`), audio_token_id (`int`): the placeholder the processor expands, one per audio token.

    Example:

    ```python
    >>> from transformers import LlamaConfig, WhisperConfig
    >>> from modeling_llasm import LlasmConfig, LlasmForConditionalGeneration
    >>> config = LlasmConfig(audio_config=WhisperConfig(), text_config=LlamaConfig(vocab_size=32001), audio_token_id=32000)
    >>> model = LlasmForConditionalGeneration(config)
    ```
    """

    model_type = "llasm"
    sub_configs_defaults = {
        "audio_config": SubConfigSpec(config_class=AutoConfig, model_type="whisper"),
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="llama"),
    }

    audio_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    adaptor_type: str = "stack_mlp"
    stack_factor: int = 8
    adaptor_hidden_size: int | None = None
    adaptor_hidden_act: str = "gelu"
    num_queries: int = 64
    audio_token: str = "<|audio|>"
    audio_token_id: int | None = None
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.adaptor_type not in ADAPTOR_TYPES:
            raise ValueError(f"Unknown adaptor_type {self.adaptor_type!r}; expected one of {ADAPTOR_TYPES}.")
        if self.stack_factor < 1:
            raise ValueError(f"stack_factor must be >= 1, got {self.stack_factor}.")
        if self.num_queries < 1:
            raise ValueError(f"num_queries must be >= 1, got {self.num_queries}.")
        if self.text_config.is_encoder_decoder:
            raise ValueError(f"text_config must be a decoder-only LM, got model_type {self.text_config.model_type!r}.")

    @property
    def window_mel_frames(self) -> int:
        """Longest audio window the encoder takes (3000 mel frames = 30 s for real Whisper)."""
        return 2 * self.audio_config.max_source_positions

    def num_audio_tokens(self, num_mel_frames: int) -> int:
        """Audio tokens for one window of `num_mel_frames` mel frames (see `audio_token_count`)."""
        return audio_token_count(num_mel_frames, self.adaptor_type, self.stack_factor, self.num_queries)


__all__ = ["LlasmConfig", "audio_token_count", "encoder_frame_count", "encoder_frame_mask", "ADAPTOR_TYPES"]
