"""Loading LLaSM checkpoints for training (imported by the runner, QLoRA and the recipe; depends on no trainer code)."""

from __future__ import annotations

import logging
import os

import torch


logger = logging.getLogger(__name__)


def training_config(path: str | os.PathLike):
    """The checkpoint's `LlasmConfig` without a stale GGUF `quantization_config`.

    A checkpoint whose LLM was converted from GGUF can carry the GGUF `quantization_config` in its text config
    although its safetensors weights are plain floats; transformers then treats the whole model as quantized (the
    Trainer refuses to fine-tune it, and a 4-bit `BitsAndBytesConfig` clashes with it). The weights are untouched.
    """
    from ..configuration_llasm import LlasmConfig

    config = LlasmConfig.from_pretrained(path)
    for sub in (config, getattr(config, "text_config", None), getattr(config, "audio_config", None)):
        quantization = getattr(sub, "quantization_config", None) if sub is not None else None
        if quantization is None:
            continue
        method = quantization.get("quant_method") if isinstance(quantization, dict) else getattr(quantization, "quant_method", None)
        if str(method).lower().endswith("gguf"):
            logger.info("%s: ignoring a stale GGUF quantization_config (the weights are plain floats)", path)
            delattr(sub, "quantization_config")
    return config


def load_llasm(path: str | os.PathLike, dtype: torch.dtype = torch.float32, **kwargs):
    """`LlasmForConditionalGeneration.from_pretrained(path)` with `training_config(path)` (see there)."""
    from ..modeling_llasm import LlasmForConditionalGeneration

    return LlasmForConditionalGeneration.from_pretrained(path, config=training_config(path), dtype=dtype, **kwargs)


__all__ = ["load_llasm", "training_config"]
