"""LLaSM model: Whisper encoder (variable-length windows) -> modal adaptor -> decoder-only causal LM."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationMixin,
    PreTrainedModel,
    WhisperConfig,
    WhisperFeatureExtractor,
)
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache
from transformers.modeling_outputs import BaseModelOutput, ModelOutput
from transformers.models.whisper.modeling_whisper import WhisperDecoder, WhisperEncoder
from transformers.utils import logging

from .configuration_llasm import LlasmConfig, encoder_frame_mask
from .processing_llasm import LlasmProcessor


logger = logging.get_logger(__name__)


@dataclass
class LlasmCausalLMOutputWithPast(ModelOutput):
    r"""
    loss (`torch.FloatTensor`, *optional*): language-modeling loss over positions whose label is not -100.
    logits (`torch.FloatTensor`): next-token scores of the LLM.
    cache (`Cache`, *optional*): the LLM key/value cache.
    audio_hidden_states (`torch.FloatTensor`, *optional*): adaptor outputs `(num_audio_tokens, hidden)` merged
        into the prompt.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    cache: Cache | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    audio_hidden_states: torch.FloatTensor | None = None


class LlasmAudioEncoder(WhisperEncoder):
    """Whisper encoder taking windows of up to 30 s without padding them to 30 s.

    Positions are sliced to the window length; padded mel frames (batches of different lengths) are zeroed
    before each convolution and masked out of self-attention, so a clip encodes the same alone or in a batch.
    """

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
            hidden = layer(hidden, additive_mask)
        hidden = self.layer_norm(hidden)
        return BaseModelOutput(last_hidden_state=hidden * frame_mask[..., None].to(hidden.dtype))


def stack_frames(hidden: torch.Tensor, stack_factor: int) -> torch.Tensor:
    """(batch, frames, dim) -> (batch, ceil(frames / k), k * dim), zero-padding the last group."""
    batch, frames, dim = hidden.shape
    remainder = (-frames) % stack_factor
    if remainder:
        hidden = nn.functional.pad(hidden, (0, 0, 0, remainder))
    return hidden.reshape(batch, (frames + remainder) // stack_factor, stack_factor * dim)


class LlasmStackMlpAdaptor(nn.Module):
    """Stack `stack_factor` encoder frames, then Linear -> activation -> Linear into the LLM embedding space."""

    def __init__(self, config: LlasmConfig):
        super().__init__()
        self.stack_factor = config.stack_factor
        inner = config.adaptor_hidden_size or config.text_config.hidden_size
        self.linear_1 = nn.Linear(config.audio_config.d_model * config.stack_factor, inner)
        self.act = ACT2FN[config.adaptor_hidden_act]
        self.linear_2 = nn.Linear(inner, config.text_config.hidden_size)

    def forward(self, encoder_hidden_states: torch.Tensor, encoder_frame_mask: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(stack_frames(encoder_hidden_states, self.stack_factor))))


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
    original stages freeze `model.multi_modal_projector.decoder` and train `model.multi_modal_projector.linear`.
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


# adaptor_type -> module. An adaptor maps (windows, frames, d_model) encoder states + frame mask to
# (windows, tokens, hidden); the first `config.num_audio_tokens(mel_frames)` tokens of each window are used.
LLASM_ADAPTORS: dict[str, type[nn.Module]] = {
    "stack_mlp": LlasmStackMlpAdaptor,
    "linear": LlasmLinearAdaptor,
    "whisper_resampler": LlasmWhisperResamplerAdaptor,
}


def audio_window_tokens(
    audio_tower: nn.Module,
    projector: nn.Module,
    config: LlasmConfig,
    input_features: torch.Tensor | None,
    input_features_mask: torch.Tensor | None = None,
    audio_encoder_hidden_states: torch.Tensor | None = None,
) -> torch.Tensor:
    """Encoder -> adaptor -> the valid audio tokens of every window, concatenated: `(total_audio_tokens, hidden)`.
    The one implementation behind `LlasmForConditionalGeneration.get_audio_features` (and the CTC aligner)."""
    if audio_encoder_hidden_states is not None:
        if input_features_mask is None:
            raise ValueError("`audio_encoder_hidden_states` need `input_features_mask` (mel frames per window).")
        encoded = audio_encoder_hidden_states.to(audio_tower.layer_norm.weight.dtype)
    else:
        if input_features_mask is None:
            input_features_mask = torch.ones(input_features.shape[0], input_features.shape[-1], dtype=torch.long, device=input_features.device)
        encoded = audio_tower(input_features, attention_mask=input_features_mask).last_hidden_state
    tokens = projector(encoded, encoder_frame_mask(input_features_mask))
    counts = window_token_counts(config, input_features_mask)
    return torch.cat([window[:count] for window, count in zip(tokens, counts)], dim=0)


def window_token_counts(config: LlasmConfig, input_features_mask: torch.Tensor) -> list[int]:
    """Audio tokens of each window, from its real mel frames (`config.num_audio_tokens`)."""
    return [config.num_audio_tokens(int(n)) for n in input_features_mask.sum(-1).tolist()]


# Per-window audio inputs (one row per 30 s window, not per sample).
AUDIO_INPUT_KEYS = ("input_features", "input_features_mask", "audio_encoder_hidden_states")


class LlasmPreTrainedModel(PreTrainedModel):
    config: LlasmConfig
    config_class = LlasmConfig
    base_model_prefix = ""
    main_input_name = "input_ids"
    input_modalities = ("audio", "text")
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    # The audio encoder and the resampler pass 4-D additive masks, which flash attention cannot read.
    _supports_flash_attn = False
    _supports_attention_backend = True
    _skip_keys_device_placement = ["cache"]

    def _init_weights(self, module: nn.Module) -> None:
        # Sub-models (Whisper encoder, LLM) initialize themselves; only the adaptor is LLaSM's own.
        if isinstance(module, nn.Linear) and not getattr(module, "_is_hf_initialized", False):
            std = getattr(self.config.text_config, "initializer_range", 0.02)
            module.weight.data.normal_(mean=0.0, std=std)
            if module.bias is not None:
                module.bias.data.zero_()


class LlasmForConditionalGeneration(LlasmPreTrainedModel, GenerationMixin):
    r"""
    LLaSM: speech windows are encoded by Whisper, mapped by the adaptor into LLM embeddings, and replace the audio
    placeholder tokens of the prompt. Text-only prompts run the LLM unchanged.

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

    def __init__(self, config: LlasmConfig):
        super().__init__(config)
        if config.adaptor_type not in LLASM_ADAPTORS:
            raise ValueError(f"Unknown adaptor_type {config.adaptor_type!r}; expected one of {sorted(LLASM_ADAPTORS)}.")
        self.audio_tower = LlasmAudioEncoder(config.audio_config)
        self.multi_modal_projector = LLASM_ADAPTORS[config.adaptor_type](config)
        self.language_model = AutoModelForCausalLM.from_config(config.text_config)
        self._no_split_modules = ["WhisperEncoderLayer", "WhisperDecoderLayer", *(self.language_model._no_split_modules or [])]
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.language_model.get_output_embeddings()

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_output_embeddings(value)

    def get_audio_features(
        self,
        input_features: torch.Tensor | None,
        input_features_mask: torch.Tensor | None = None,
        audio_encoder_hidden_states: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Encode audio windows `(windows, n_mels, frames)` and return the valid audio tokens of all windows,
        concatenated in window order: `(total_audio_tokens, hidden)`. `audio_encoder_hidden_states`
        `(windows, ceil(frames / 2), d_model)`: precomputed `audio_tower` outputs (a frozen-encoder cache) used
        instead of running the encoder; `input_features_mask` is then required."""
        return audio_window_tokens(
            self.audio_tower, self.multi_modal_projector, self.config, input_features, input_features_mask, audio_encoder_hidden_states
        )

    def get_placeholder_mask(self, input_ids: torch.Tensor, inputs_embeds: torch.Tensor, audio_features: torch.Tensor) -> torch.Tensor:
        """Boolean mask over `inputs_embeds` of the audio placeholder positions, checked against the features."""
        if input_ids is None:
            raise ValueError("Audio features need `input_ids` to locate the audio placeholder tokens.")
        if self.config.audio_token_id is None:
            raise ValueError("`config.audio_token_id` is not set: the model cannot locate the audio placeholder tokens.")
        mask = input_ids == self.config.audio_token_id
        if int(mask.sum()) != audio_features.shape[0]:
            raise ValueError(
                f"The prompt has {int(mask.sum())} audio placeholder tokens but the audio gives {audio_features.shape[0]} "
                "audio tokens; build inputs with LlasmProcessor and do not truncate them."
            )
        return mask.unsqueeze(-1).expand_as(inputs_embeds).to(inputs_embeds.device)

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
        **kwargs,
    ) -> LlasmCausalLMOutputWithPast:
        r"""
        input_features (`torch.FloatTensor` of shape `(windows, n_mels, frames)`): log-mel windows from the processor.
        input_features_mask (`torch.LongTensor` of shape `(windows, frames)`): 1 for real frames, 0 for padding.
        labels (`torch.LongTensor`, *optional*): next-token targets aligned with `input_ids`; -100 is ignored.
        audio_encoder_hidden_states (`torch.FloatTensor`, *optional*): cached `audio_tower` outputs used instead of
            `input_features` (see `get_audio_features`).
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of `input_ids` or `inputs_embeds`.")
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)

        audio_features = None
        if input_features is not None or audio_encoder_hidden_states is not None:
            audio_features = self.get_audio_features(input_features, input_features_mask, audio_encoder_hidden_states)
            mask = self.get_placeholder_mask(input_ids, inputs_embeds, audio_features)
            inputs_embeds = inputs_embeds.masked_scatter(mask, audio_features.to(inputs_embeds.device, inputs_embeds.dtype))
        elif input_ids is not None and self.config.audio_token_id is not None and (cache is None or cache.get_seq_length() == 0):
            if (input_ids == self.config.audio_token_id).any():
                raise ValueError("The prompt has audio placeholder tokens but no `input_features` were given.")

        context = getattr(self.config.text_config, "max_position_embeddings", None)
        if context is not None and (cache is None or cache.get_seq_length() == 0) and inputs_embeds.shape[1] > context:
            # never truncated silently: say why quality may collapse (the default adaptor: ~6 audio tokens per second)
            logger.warning_once(
                f"The prompt has {inputs_embeds.shape[1]} tokens, more than the LLM's max_position_embeddings "
                f"({context}); its answers past that length are unreliable. Use shorter audio or split it."
            )
        outputs = self.language_model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            labels=labels,
            logits_to_keep=logits_to_keep,
            **kwargs,
        )
        return LlasmCausalLMOutputWithPast(
            loss=outputs.loss,
            logits=outputs.logits,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            audio_hidden_states=audio_features,
        )

    def prepare_inputs_for_generation(self, *args, is_first_iteration: bool | None = False, **kwargs) -> dict:
        model_inputs = super().prepare_inputs_for_generation(*args, is_first_iteration=is_first_iteration, **kwargs)
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
        if expand_size > 1 and audio:
            index = self._expanded_window_index(input_ids, audio, expand_size)
            audio = {key: value.index_select(0, index.to(value.device)) for key, value in audio.items()}
        input_ids, model_kwargs = super()._expand_inputs_for_generation(expand_size, is_encoder_decoder, input_ids, **model_kwargs)
        model_kwargs.update(audio)
        return input_ids, model_kwargs

    def _expanded_window_index(self, input_ids: torch.LongTensor | None, audio: dict, expand_size: int) -> torch.Tensor:
        """Window indices for `expand_size` copies of every sample, each copy holding that sample's windows."""
        if input_ids is None:
            raise ValueError("Expanding audio inputs for generation needs `input_ids` to locate the audio placeholders.")
        mask = audio.get("input_features_mask")
        if mask is None:  # as in `audio_window_tokens`: every mel frame is real
            if "input_features" not in audio:
                raise ValueError("`audio_encoder_hidden_states` need `input_features_mask` (mel frames per window).")
            features = audio["input_features"]
            mask = features.new_ones(features.shape[0], features.shape[-1])
        tokens = window_token_counts(self.config, mask)
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
        decoder_state = whisper_model.decoder.state_dict() if adaptor_type == "whisper_resampler" else None
        whisper_config: WhisperConfig = whisper_model.config
        del whisper_model
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
        model.audio_tower = LlasmAudioEncoder(whisper_config).to(dtype)
        model.audio_tower.load_state_dict(encoder_state)
        model.multi_modal_projector = LLASM_ADAPTORS[adaptor_type](config).to(dtype)
        if decoder_state is not None:  # the resampler's queries run through the pretrained Whisper decoder
            model.multi_modal_projector.decoder.load_state_dict(decoder_state)
        model.language_model = llm
        model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
        model.generation_config = llm.generation_config
        if model.generation_config.pad_token_id is None:
            model.generation_config.pad_token_id = tokenizer.pad_token_id

        processor = LlasmProcessor(
            feature_extractor=WhisperFeatureExtractor.from_pretrained(whisper),
            tokenizer=tokenizer,
            audio_token=audio_token,
            adaptor_type=adaptor_type,
            stack_factor=stack_factor,
            num_queries=config.num_queries,
        )
        return model.eval(), processor


__all__ = [
    "LlasmForConditionalGeneration",
    "LlasmPreTrainedModel",
    "LlasmAudioEncoder",
    "LlasmCausalLMOutputWithPast",
    "LLASM_ADAPTORS",
    "audio_window_tokens",
]
