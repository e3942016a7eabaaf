"""Argument dataclasses of `examples/train_stage1.py` / `train_stage2.py` (parsed with `HfArgumentParser` together
with `TrainingArguments`), and the model / data loading they share."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch


logger = logging.getLogger(__name__)


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Local LLaSM checkpoint (stage 1: the composed base; stage 2: the stage-1 output). "
                          "Default: the trainable `stack_mlp` base (`build_base.trainable_base()`), built if missing."},  # fmt: skip
    )
    llm_mode: str | None = field(
        default=None, metadata={"help": "full | lora | frozen (default: frozen in stage 1, full in stage 2)"}
    )
    train_encoder: bool = field(default=False, metadata={"help": "Also train the Whisper encoder (not LLaSM)."})
    train_encoder_layers: int = field(default=0, metadata={"help": "Also train the top N Whisper encoder layers and its final layer norm."})
    qlora: bool = field(default=False, metadata={"help": "Load the LLM in 4-bit NF4 and train LoRA (implies llm_mode=lora)."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout."})
    merge_lora: bool = field(default=True, metadata={"help": "After LoRA training, also save a merged plain checkpoint to OUTPUT_DIR/merged."})


@dataclass
class DataArguments:
    train_manifest: str = field(metadata={"help": "JSONL manifest of chat records (or a dataset directory holding manifest.jsonl)."})
    eval_manifest: str | None = field(default=None, metadata={"help": "Held-out manifest (eval loss; WER with --eval_wer)."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only the first N training records."})
    max_eval_samples: int | None = field(default=100, metadata={"help": "Use only the first N held-out records."})
    max_length: int | None = field(default=None, metadata={"help": "Refuse (never truncate) longer samples."})
    encoder_cache: bool = field(default=True, metadata={"help": "Cache the frozen encoder outputs per clip (safetensors)."})
    encoder_cache_dir: str | None = field(default=None, metadata={"help": "Cache root (default ~/.cache/llasm/encoder_cache)."})
    asr_prompt: str = field(default="Transcribe the speech.", metadata={"help": "Instruction of ASR turns built in stage 1."})
    ctc_steps: int = field(default=0, metadata={"help": "Stage 1: CTC pre-alignment steps before the LM loss (0: none)."})
    ctc_learning_rate: float = field(default=2e-3, metadata={"help": "Learning rate of the CTC pre-alignment."})
    distill_weight: float = field(default=0.0, metadata={"help": "Weight of the KL to the text teacher (the LLM reading the transcript)."})
    ce_weight: float = field(default=1.0, metadata={"help": "Weight of the cross-entropy on the labels."})
    distill_temperature: float = field(default=1.0, metadata={"help": "Distillation softmax temperature."})
    eval_wer: bool = field(default=False, metadata={"help": "After training, greedy-transcribe the held-out set and report WER."})
    generate_responses: bool = field(
        default=False,
        metadata={"help": "Stage 2: complete records without an assistant turn with the LLM's own answer to the "
                          "transcript (cached next to OUTPUT_DIR)."},  # fmt: skip
    )


def resolve_model_dir(model_args: ModelArguments, training_args) -> Path:
    """The checkpoint to start from; builds the trainable `stack_mlp` base (main process first) when none is given."""
    if model_args.model_name_or_path:
        path = Path(model_args.model_name_or_path).expanduser()
        if not path.is_dir():
            raise ValueError(f"--model_name_or_path must be a local checkpoint directory (no hub downloads); got {path}.")
        return path
    from ..conversion.build_base import trainable_base

    with training_args.main_process_first(desc="build base"):
        return Path(trainable_base(log=logger.info))


def load_model(model_args: ModelArguments, model_dir: Path, stage: str):
    """`(model, processor, llm_mode)`: plain fp32, LoRA-wrapped, or 4-bit QLoRA."""
    from ..processing_llasm import LlasmProcessor
    from .qlora import load_qlora_model
    from .loading import load_llasm
    from .stages import default_lora_config, prepare_stage, resolve_llm_mode

    processor = LlasmProcessor.from_pretrained(model_dir)
    lora = default_lora_config(r=model_args.lora_r, lora_alpha=model_args.lora_alpha, lora_dropout=model_args.lora_dropout)
    if model_args.qlora:
        # QLoRA trains LoRA on the 4-bit LLM: say so instead of ignoring a conflicting choice
        if stage != "instruct" or model_args.llm_mode not in (None, "lora") or model_args.train_encoder or model_args.train_encoder_layers:
            raise ValueError(
                f"--qlora trains LoRA adapters on the 4-bit LLM in stage 'instruct' only; got stage={stage!r}, "
                f"llm_mode={model_args.llm_mode!r}, train_encoder={model_args.train_encoder}, "
                f"train_encoder_layers={model_args.train_encoder_layers}."
            )
        model = load_qlora_model(model_dir, lora_config=lora, device_map={"": _device()})
        return model, processor, "lora"
    llm_mode = resolve_llm_mode(stage, model_args.llm_mode)
    model = load_llasm(model_dir)
    model = prepare_stage(model, stage, llm_mode, lora_config=lora, train_encoder=model_args.train_encoder,
                          train_encoder_layers=model_args.train_encoder_layers)
    return model, processor, llm_mode


def _device() -> str:
    import os

    if torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    return "cpu"


__all__ = ["DataArguments", "ModelArguments", "load_model", "resolve_model_dir"]
