"""LLaSM configuration: a Whisper audio config, any decoder-only text config, and the modal adaptor settings."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec


if TYPE_CHECKING:
    import torch


# Adaptor types and how many LLM tokens each produces for one audio window.
ADAPTOR_TYPES = ("stack_mlp", "linear", "whisper_resampler", "ctc_compress", "whisper_reader")
# Adaptors whose token count depends on what was said: `audio_token_count` is then an upper bound (see there).
VARIABLE_TOKEN_ADAPTORS = ("ctc_compress", "whisper_reader")
# Adaptors that give one slot per `stack_factor` encoder frames (the rest: a fixed number of queries).
STACKED_ADAPTORS = ("stack_mlp", "linear", *VARIABLE_TOKEN_ADAPTORS)


def encoder_frame_count(num_mel_frames: int) -> int:
    """Whisper's conv front-end: conv1 keeps the length, conv2 has stride 2."""
    return (num_mel_frames - 1) // 2 + 1


def encoder_frame_mask(mel_frame_mask: torch.Tensor) -> torch.Tensor:
    """`(windows, mel_frames)` 0/1 mask -> `(windows, encoder_frames)` bool mask; the rule of `encoder_frame_count`
    (encoder frame i sees mel frames 2i-1..2i+1, so it is real when mel frame 2i is)."""
    return mel_frame_mask[:, ::2].bool()


def audio_token_count(num_mel_frames: int, adaptor_type: str, stack_factor: int, num_queries: int = 64) -> int:
    """Number of audio placeholder tokens one audio window of `num_mel_frames` log-mel frames becomes.

    The single source of truth for this number: the processor expands each window's placeholder to it, and the
    model uses it to find each window's tokens.

    The audio-token contract. For the fixed-rate adaptors (`stack_mlp`, `linear`, `whisper_resampler`) every
    placeholder carries one audio token. For `ctc_compress` and `whisper_reader` (`VARIABLE_TOKEN_ADAPTORS`) the
    number is an upper bound, one slot per `stack_factor` encoder frames: the adaptor gives about one token per
    spoken LLM token (CTC segments; Whisper's reading), so a window fills only its first `n` slots (1 <= n <= the
    bound; `n` is known once the encoder, and for the reader the Whisper decoder, has run). The model
    then ignores the unused slots: `forward` masks them out of attention and numbers positions as if they were
    absent (logits keep the prompt's shape; labels and the collator are unchanged), and `generate` drops them before
    prefill, then returns the caller's prompt followed by the new tokens, so slicing the output by the prompt length,
    batching, beams and streaming behave as for every other adaptor.
    """
    if num_mel_frames <= 0:
        raise ValueError(f"An audio window needs at least one mel frame, got {num_mel_frames}.")
    if adaptor_type in STACKED_ADAPTORS:
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
            of `audio_config.decoder_start_token_id`, cross-attending to the window, then one linear layer;
            `"ctc_compress"` stacks and maps frames like `"stack_mlp"` (plus `adaptor_num_layers` transformer layers),
            scores every stacked frame with a CTC head against the LLM's own input embeddings of `ctc_vocab_size`
            tokens (+ a blank), merges runs of frames with the same best label and drops blank runs: about one audio
            token per spoken LLM token, each the posterior-weighted mean of those tokens' embeddings (LegoSLM /
            CTC compression; see `audio_token_count` for how the variable count is handled); `"whisper_reader"` reads
            each window with the Whisper decoder as Whisper transcribes it and gives, per decoded token, the LLM's
            input embeddings of the same text + a learned projection of the decoder state (no CTC training needed).
        adaptor_hidden_size (`int`, *optional*): inner width of the MLP; defaults to the LLM hidden size.
        adaptor_hidden_act (`str`, defaults to `"gelu"`): MLP activation.
        stack_factor (`int`, defaults to 8): encoder frames (50 per second) per audio token (per CTC frame for
            `"ctc_compress"`).
        adaptor_num_layers (`int`, defaults to 0): transformer layers after the MLP (`"stack_mlp"`, `"ctc_compress"`).
        ctc_vocab_size (`int`, defaults to 8192): LLM tokens the `"ctc_compress"` head scores (the training recipe
            picks the most frequent ones; their ids are a buffer of the adaptor).
        ctc_temperature (`float`, defaults to 1.0): softmax temperature of the posteriors that weight the token
            embeddings (`"ctc_compress"`; lower is closer to the single best token).
        reader_prompt_ids (`list[int]`, *optional*), reader_suppress_ids, reader_begin_suppress_ids: the Whisper decoder
            prompt and the tokens it never reads (first step: `reader_begin_suppress_ids` too), as in Whisper's
            generation config (`"whisper_reader"`; `from_pretrained_components` copies them).
        reader_max_pieces (`int`, defaults to 8), reader_num_spellings (`int`, defaults to 0): sizes of the
            `"whisper_reader"` tables (most LLM tokens per Whisper token or word; whole-word respellings).
        reader_language_ids (`dict[str, int]`, *optional*), reader_task_id (`int`, *optional*): a multilingual Whisper's
            language tokens by code (`{"en": 50259, "zh": 50260, ...}`) and its `<|transcribe|>` token: the reader's
            decoder prompt is then `<|startoftranscript|><|lang|><|transcribe|><|notimestamps|>`, the language
            detected per window as Whisper does (its most likely language token) unless one is given.
        reader_language (`str`, *optional*): the language the reader reads in when a call gives none (`None`: detect).
        reader_detect_languages (`list[str]`, *optional*): the languages detection chooses among (`None`: every language
            of `reader_language_ids`). A model that answers in a few languages detects among those only: the
            bilingual base uses `["zh", "en"]`, so a Mandarin question with an English term is not read as French.
        reader_chinese_script (`str`, *optional*, defaults to `"simplified"`): Whisper often writes Mandarin in
            traditional characters; windows read as `zh` are converted (OpenCC) to `"simplified"` or `"traditional"`
            before the LLM reads them, or kept as read (`None`).
        reader_temperatures (`list[float]`, *optional*), reader_compression_ratio_threshold (`float`, defaults to 2.4),
            reader_logprob_threshold (`float`, defaults to -1.0): Whisper's safeguards for the reader. A window read at
            the first temperature (greedy at 0.0) whose text compresses more than the ratio (zlib: a loop) or whose
            mean token log-probability is below the threshold is read again at the next temperature, by sampling with
            a generator seeded from the window's audio (the same clip always reads the same). None: greedy only.
            Whisper's own: `[0.0, 0.2, 0.4, 0.6, 0.8, 1.0]`, 2.4, -1.0.
        reader_residual_ratio (`float`, *optional*): `"whisper_reader"`: the most the learned projection of the decoder
            state may add to a word's embedding, as a fraction of that embedding's norm (None: unbounded). Training
            it unbounded let the residual grow to 6-7x the embedding and drown the words (docs/training.md).
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
    adaptor_num_layers: int = 0
    ctc_vocab_size: int = 8192
    ctc_temperature: float = 1.0
    reader_prompt_ids: list[int] | None = None
    reader_suppress_ids: list[int] | None = None
    reader_begin_suppress_ids: list[int] | None = None
    reader_max_pieces: int = 8
    reader_num_spellings: int = 0
    reader_residual_ratio: float | None = None
    reader_language_ids: dict[str, int] | None = None
    reader_task_id: int | None = None
    reader_language: str | None = None
    reader_detect_languages: list[str] | None = None
    reader_chinese_script: str | None = "simplified"
    reader_temperatures: list[float] | None = None
    reader_compression_ratio_threshold: float | None = 2.4
    reader_logprob_threshold: float | None = -1.0
    num_queries: int = 64
    audio_token: str = "<|audio|>"
    audio_token_id: int | None = None
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        # The LM head sits beside the LLM (`LlasmForConditionalGeneration.lm_head`): it is tied to the input embeddings
        # when the LLM ties them, which checkpoints record in `text_config` (as `LlavaConfig` does).
        if not self.tie_word_embeddings and getattr(self.text_config, "tie_word_embeddings", False):
            self.tie_word_embeddings = True
        if self.adaptor_type not in ADAPTOR_TYPES:
            raise ValueError(f"Unknown adaptor_type {self.adaptor_type!r}; expected one of {ADAPTOR_TYPES}.")
        if self.stack_factor < 1:
            raise ValueError(f"stack_factor must be >= 1, got {self.stack_factor}.")
        if self.num_queries < 1:
            raise ValueError(f"num_queries must be >= 1, got {self.num_queries}.")
        if self.adaptor_num_layers < 0:
            raise ValueError(f"adaptor_num_layers must be >= 0, got {self.adaptor_num_layers}.")
        if self.adaptor_type == "ctc_compress" and not 1 <= self.ctc_vocab_size <= self.text_config.vocab_size:
            raise ValueError(f"ctc_vocab_size must be in [1, {self.text_config.vocab_size}], got {self.ctc_vocab_size}.")
        if self.adaptor_type == "whisper_reader" and self.reader_prompt_ids is None:
            start = self.audio_config.decoder_start_token_id
            if start is None:
                raise ValueError("The whisper_reader adaptor needs reader_prompt_ids or audio_config.decoder_start_token_id.")
            self.reader_prompt_ids = [start]
        if self.reader_residual_ratio is not None and self.reader_residual_ratio < 0:
            raise ValueError(f"reader_residual_ratio must be >= 0 or None, got {self.reader_residual_ratio}.")
        if self.reader_language_ids and self.reader_task_id is None:
            raise ValueError("reader_language_ids (a multilingual Whisper) need reader_task_id (the <|transcribe|> token).")
        if self.reader_language is not None:
            self.reader_language = reader_language_code(self.reader_language, self.reader_language_ids)
        if self.reader_detect_languages is not None:
            if not self.reader_language_ids or not self.reader_detect_languages:
                raise ValueError("reader_detect_languages needs a multilingual Whisper (reader_language_ids) and at least one "
                                 f"language, got {self.reader_detect_languages!r}.")  # fmt: skip
            self.reader_detect_languages = [reader_language_code(code, self.reader_language_ids) for code in self.reader_detect_languages]
        if self.reader_temperatures is not None and (
            not self.reader_temperatures or any(t < 0 for t in self.reader_temperatures)
        ):
            raise ValueError(f"reader_temperatures must be a non-empty list of temperatures >= 0, got {self.reader_temperatures!r}.")
        if self.reader_chinese_script not in READER_CHINESE_SCRIPTS:
            raise ValueError(f"reader_chinese_script must be one of {READER_CHINESE_SCRIPTS}, got {self.reader_chinese_script!r}.")
        if self.ctc_temperature <= 0:
            raise ValueError(f"ctc_temperature must be > 0, got {self.ctc_temperature}.")
        if self.text_config.is_encoder_decoder:
            raise ValueError(f"text_config must be a decoder-only LM, got model_type {self.text_config.model_type!r}.")

    @property
    def window_mel_frames(self) -> int:
        """Longest audio window the encoder takes (3000 mel frames = 30 s for real Whisper)."""
        return 2 * self.audio_config.max_source_positions

    @property
    def variable_audio_tokens(self) -> bool:
        """True when a window's audio-token count depends on its content (`audio_token_count` is an upper bound)."""
        return self.adaptor_type in VARIABLE_TOKEN_ADAPTORS

    def num_audio_tokens(self, num_mel_frames: int) -> int:
        """Audio placeholders for one window of `num_mel_frames` mel frames (see `audio_token_count`)."""
        return audio_token_count(num_mel_frames, self.adaptor_type, self.stack_factor, self.num_queries)


READER_CHINESE_SCRIPTS = ("simplified", "traditional", None)


def reader_language_code(language: str, language_ids: dict[str, int] | None) -> str:
    """The Whisper language code (`"zh"`) for `language` given as a code or a token (`"<|zh|>"`); a clear error when
    the reader's Whisper does not know it (an English-only Whisper knows only `"en"`)."""
    if not isinstance(language, str):
        raise ValueError(f"language must be a Whisper language code such as 'en' or 'zh', got {type(language).__name__}.")
    code = language.strip().lower().removeprefix("<|").removesuffix("|>")
    known = sorted(language_ids) if language_ids else ["en"]
    if code not in known:
        hint = "" if language_ids else " (this model's Whisper is English-only; the bilingual base reads Chinese)"
        raise ValueError(f"Unknown reader language {language!r}: expected one of {known}{hint}.")
    return code


def window_token_counts(config: LlasmConfig, input_features_mask: torch.Tensor) -> list[int]:
    """Audio placeholders of each window, from its real mel frames (`config.num_audio_tokens`)."""
    return [config.num_audio_tokens(int(n)) for n in input_features_mask.sum(-1).tolist()]


__all__ = ["LlasmConfig", "window_token_counts", "READER_CHINESE_SCRIPTS", "reader_language_code", "audio_token_count", "encoder_frame_count", "encoder_frame_mask", "ADAPTOR_TYPES", "VARIABLE_TOKEN_ADAPTORS"]
