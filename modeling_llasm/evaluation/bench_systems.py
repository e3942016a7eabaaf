"""What `llasm bench` measures: its settings, sections, clip lengths and methods, and the three systems it compares."""

from __future__ import annotations

import copy
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "BATCH_SECONDS",
    "method_label",
    "METHODS",
    "METHOD_LABELS",
    "SECTIONS",
    "TTFT_SECONDS",
    "BenchSettings",
    "Systems",
    "build_systems",
    "check_dtype_sections",
    "compose_original",
    "find_stage1_script",
]

SECTIONS = ("ttft", "stream", "decode", "batch", "reuse", "dtype", "pipeline", "lookup", "stage1", "memory")
TTFT_SECONDS = (2.0, 5.0, 20.0)
BATCH_SECONDS = (1.5, 2.0, 3.0, 4.0, 5.0, 7.0, 9.0, 12.0)
METHODS = ("llasm", "original", "cascade")
METHOD_LABELS = {
    "llasm": "LLaSM (stack_mlp, unpadded)",
    "original": "original LLaSM (30 s pad + Whisper-decoder resampler, 64 q)",
    "cascade": "cascade (Whisper generate -> LLM prefill)",
}


def method_label(method: str, systems: dict | None = None) -> str:
    """A method's row name; the "llasm" row says which adaptor was benchmarked (`Systems.description`)."""
    if method == "llasm" and systems and systems.get("llasm_label"):
        return systems["llasm_label"]
    return METHOD_LABELS[method]


@dataclass
class BenchSettings:
    output_dir: Path
    smoke: bool = False
    repeats: int = 5
    warmup: int = 1
    threads: int | None = None
    sections: tuple[str, ...] = SECTIONS
    whisper_dir: str | None = None
    llm_dir: str | None = None
    model_dir: str | None = None
    decode_tokens: int = 64
    batch_new_tokens: int = 32
    stage1_batch: int = 4
    stage1_steps: int = 3
    profile: bool = True
    trainer_benchmark: bool = True  # also run benchmarks/stage1_speed.py when present
    work_dir: str | None = None
    stream_end_silence: float = 0.0  # seconds of silence after each stream clip's speech (`--stream-end-silence`)
    dtype: str = "float32"  # every system's precision: "float32", "bfloat16" or "auto" (`choose_inference_dtype`)
    log: Callable[[str], None] = field(default=lambda line: print(line, file=sys.stderr, flush=True))


# --------------------------------------------------------------------------------------------------- models


@dataclass
class Systems:
    llasm: Any
    llasm_processor: Any
    original: Any
    original_processor: Any
    transcriber: Any
    llm: Any  # the shared language model (bare)
    description: dict


def compose_original(llasm, processor, whisper_dir: str | os.PathLike, num_queries: int = 64):
    """The original LLaSM method around *the same LLM object*: Whisper encoder + Whisper decoder queried by
    `num_queries` start tokens + a linear projection; the processor pads every window to 30 s."""
    from transformers import WhisperFeatureExtractor, WhisperModel

    from ..configuration_llasm import LlasmConfig
    from ..modeling_llasm import LLASM_ADAPTORS, LlasmAudioEncoder, LlasmForConditionalGeneration
    from ..processing_llasm import LlasmProcessor

    whisper = WhisperModel.from_pretrained(whisper_dir, dtype=torch.float32)
    config = LlasmConfig(
        audio_config=whisper.config, text_config=llasm.config.text_config, adaptor_type="whisper_resampler",
        num_queries=num_queries, audio_token=llasm.config.audio_token, audio_token_id=llasm.config.audio_token_id,
    )  # fmt: skip
    with torch.device("meta"):
        model = LlasmForConditionalGeneration(config)
    model.model.audio_tower = LlasmAudioEncoder(whisper.config)
    model.model.audio_tower.load_state_dict(whisper.encoder.state_dict())
    adaptor = LLASM_ADAPTORS["whisper_resampler"](config)
    adaptor.decoder.load_state_dict(whisper.decoder.state_dict())  # the original used the pretrained decoder
    torch.nn.init.normal_(adaptor.linear.weight, std=0.02)
    torch.nn.init.zeros_(adaptor.linear.bias)
    model.model.multi_modal_projector = adaptor
    model.model.language_model, model.lm_head = llasm.model.language_model, llasm.lm_head
    model.generation_config = copy.deepcopy(llasm.generation_config)
    model.config._attn_implementation = llasm.config._attn_implementation
    original_processor = LlasmProcessor(
        feature_extractor=WhisperFeatureExtractor.from_pretrained(whisper_dir), tokenizer=processor.tokenizer,
        chat_template=processor.chat_template, audio_token=processor.audio_token, adaptor_type="whisper_resampler",
        num_queries=num_queries, pad_to_window=True,
    )  # fmt: skip
    return model.eval(), original_processor


def build_systems(settings: BenchSettings, work_dir: Path) -> tuple[Systems, Path]:
    """Load / compose the three systems; return them and a saved copy of our model (for the memory probe)."""
    from ..modeling_llasm import LlasmForConditionalGeneration, choose_inference_dtype, set_inference_dtype, text_causal_lm
    from .cascade import WhisperTranscriber
    from .evaluator import load_llasm

    if settings.smoke:
        from .tiny import build_tiny_components

        whisper_dir, llm_dir = build_tiny_components(work_dir / "components")
    else:
        whisper_dir = settings.whisper_dir
        llm_dir = settings.llm_dir
        if whisper_dir is None:
            from .cascade import whisper_dir_for

            whisper_dir = whisper_dir_for(settings.model_dir)
        if llm_dir is None and settings.model_dir is None:
            from ..conversion.gguf_llm import default_llm_dir

            llm_dir = default_llm_dir()
    torch.manual_seed(0)
    if settings.model_dir is not None:
        llasm, processor = load_llasm(settings.model_dir)
        saved = Path(settings.model_dir)
    else:
        llasm, processor = LlasmForConditionalGeneration.from_pretrained_components(whisper_dir, llm_dir, adaptor_type="stack_mlp", stack_factor=8)
        saved = work_dir / "llasm"
        if "memory" in settings.sections or ("stage1" in settings.sections and settings.trainer_benchmark and find_stage1_script() is not None):
            llasm.save_pretrained(saved)
            processor.save_pretrained(saved)
    original, original_processor = compose_original(llasm, processor, whisper_dir)
    if settings.smoke:
        from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration

        transcriber = WhisperTranscriber(
            WhisperForConditionalGeneration.from_pretrained(whisper_dir, dtype=torch.float32),
            WhisperFeatureExtractor.from_pretrained(whisper_dir), processor.tokenizer, max_new_tokens=8,
        )  # fmt: skip
    else:
        transcriber = WhisperTranscriber.from_pretrained(whisper_dir)
    dtype = choose_inference_dtype(settings.dtype, llasm.device)[0]
    if dtype != "float32":  # all three in one precision, so that their ratios compare methods, not precisions
        for model in (llasm, original, transcriber.model):
            set_inference_dtype(model, dtype)  # llasm and original share the LLM: it is cast once
    llm = text_causal_lm(llasm)
    description = {
        "whisper": str(whisper_dir),
        "llm": str(llm_dir) if llm_dir else f"language model of {settings.model_dir}",
        "llasm_model": str(settings.model_dir) if settings.model_dir else "composed: Whisper encoder + fresh stack_mlp adaptor (x8) + LLM",
        "original_model": "composed: Whisper encoder + pretrained Whisper decoder (64 start-token queries) + fresh linear + the same LLM",
        "llm_parameters_m": round(sum(p.numel() for p in llm.parameters()) / 1e6, 1),
        "whisper_encoder_parameters_m": round(sum(p.numel() for p in llasm.model.audio_tower.parameters()) / 1e6, 1),
        "attn_implementation": llasm.config._attn_implementation,
        "dtype": dtype,
        # the "llasm" row's name: the adaptor benchmarked (the embedded base reads with the Whisper decoder)
        "llasm_label": f"LLaSM ({llasm.config.adaptor_type}, {'30 s windows' if processor.pad_to_window else 'unpadded'})",
    }
    return Systems(llasm, processor, original, original_processor, transcriber, llm, description), saved


def check_dtype_sections(settings: BenchSettings) -> None:
    """Refuse, before any model is loaded, sections that cannot run in the precision `settings.dtype` resolves to."""
    from ..modeling_llasm import choose_inference_dtype

    dtype = choose_inference_dtype(settings.dtype)[0]
    float32_only = sorted({"dtype", "stage1", "memory"} & set(settings.sections))
    if dtype != "float32" and float32_only:
        raise ValueError(f"llasm bench --dtype {dtype}: the sections {', '.join(float32_only)} start from float32 "
                         "weights (dtype compares the precisions itself; stage1 and memory train); run them "
                         "without --dtype.")  # fmt: skip


def find_stage1_script() -> Path | None:
    """The training engineer's `benchmarks/stage1_speed.py` (source checkout or current directory), if present."""
    for root in (Path(__file__).resolve().parents[2], Path.cwd()):
        script = root / "benchmarks" / "stage1_speed.py"
        if script.is_file():
            return script
    return None
