"""4-bit QLoRA for LLaSM: NF4 double-quantized LLM, LoRA on its linears, adaptor fully trained; save, reload, merge.

```python
model = load_qlora_model("~/.cache/llasm/llasm-tiny-base")        # 4-bit LLM + LoRA, adaptor trainable
... LlasmTrainer(model=model, stage="instruct", llm_mode="lora", ...).train()
save_adapter(model, "run/adapter", processor)                       # LoRA + adaptor weights only
merge_adapter("~/.cache/llasm/llasm-tiny-base", "run/adapter", "run/merged")   # plain fp32 checkpoint
```

Only the LLM is quantized: `llm_int8_skip_modules` lists the encoder, the adaptor and the LM head (any explicit list
replaces transformers' default lm_head exclusion; `lm_head` sits beside `model.language_model`). The merge never
merges into 4-bit weights: it loads the base in full precision, applies the adapter and
folds it in (`merge_and_unload`), so the merged checkpoint equals "fp32 base + adapter" exactly; it differs from the
4-bit training model by the 4-bit quantization error of the base weights.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .stages import apply_stage, default_lora_config


QLORA_SKIP_MODULES = ["model.audio_tower", "model.multi_modal_projector", "lm_head"]


def qlora_config(compute_dtype: torch.dtype = torch.bfloat16, skip_modules: list[str] | None = None):
    """`BitsAndBytesConfig`: NF4, double quantization, LLM only."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
        llm_int8_skip_modules=list(skip_modules or QLORA_SKIP_MODULES),
    )


def load_quantized_base(model_dir: str | os.PathLike, compute_dtype: torch.dtype = torch.bfloat16, device_map="cpu"):
    """The LLaSM checkpoint with its LLM in 4-bit, loaded by the top-level `from_pretrained` (a 4-bit LLM built
    inside `__init__` would not be marked as quantized)."""
    from .loading import load_llasm

    return load_llasm(model_dir, quantization_config=qlora_config(compute_dtype), device_map=device_map)


def keep_4bit_weights_trainable(model) -> int:
    """Stop bitsandbytes from repacking 4-bit weights for CPU inference, and undo a repacking already done.

    On CPUs with AVX512-BF16, bitsandbytes 0.50 repacks a `Linear4bit` weight in place the first time it runs in
    eval mode without gradients (evaluation, generation) and then computes it with a kernel that has no autograd:
    any later training backward through it is silently wrong (measured: gradient differences as large as the
    gradients). Returns the number of layers unpacked."""
    try:
        import bitsandbytes as bnb
    except ImportError:
        return 0
    unpacked = 0
    for module in model.modules():
        if not isinstance(module, bnb.nn.Linear4bit):
            continue
        module.support_avx512bf16_for_cpu = False
        state = getattr(module.weight, "quant_state", None)
        if state is not None and getattr(state, "packing_format_for_cpu", False):
            try:  # private helper of bitsandbytes 0.50; fail loudly rather than train on repacked weights
                from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse
            except ImportError as error:
                raise RuntimeError(
                    f"{type(module).__name__} weights were repacked for CPU inference by bitsandbytes "
                    f"{getattr(bnb, '__version__', '?')} and cannot be unpacked with it: reload the model before "
                    f"training (gradients through repacked weights are wrong)."
                ) from error
            module.weight.data, module.weight.quant_state = _convert_weight_packed_for_cpu_inverse(module.weight.data, state)
            unpacked += 1
    return unpacked


def load_qlora_model(
    model_dir: str | os.PathLike,
    lora_config=None,
    adapter_dir: str | os.PathLike | None = None,
    compute_dtype: torch.dtype = torch.bfloat16,
    activation_checkpointing: bool = True,
    is_trainable: bool = True,
    device_map="cpu",
):
    """4-bit base + LoRA (new from `lora_config`, default `default_lora_config()`, or loaded from `adapter_dir`),
    prepared for k-bit training; trainable: the LoRA matrices and the adaptor copy (`modules_to_save`)."""
    from peft import PeftModel, get_peft_model, prepare_model_for_kbit_training

    model = load_quantized_base(model_dir, compute_dtype, device_map)
    if is_trainable:
        keep_4bit_weights_trainable(model)
    # use_gradient_checkpointing=False: enable it below through the non-deprecated transformers 5 API.
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    if activation_checkpointing and is_trainable:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    if adapter_dir is not None:
        model = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=is_trainable)
    else:
        model = get_peft_model(model, lora_config or default_lora_config())
    if is_trainable:
        apply_stage(model, "instruct", "lora")
    else:
        model.eval()
    return model


def save_adapter(model, output_dir: str | os.PathLike, processor=None, **card_kwargs) -> Path:
    """Save the LoRA weights and the adaptor (`modules_to_save`) as `adapter_model.safetensors` + the processor
    + a model card."""
    from .hub import make_hub_ready

    output_dir = Path(output_dir)
    model.save_pretrained(output_dir, safe_serialization=True)
    if processor is not None:
        processor.save_pretrained(output_dir)
    make_hub_ready(output_dir, **card_kwargs)
    return output_dir


def merge_adapter(
    base_dir: str | os.PathLike,
    adapter_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    processor=None,
    dtype: torch.dtype = torch.float32,
    **card_kwargs,
) -> Path:
    """Fold a (Q)LoRA adapter into a plain full-precision checkpoint for inference (hub-ready)."""
    from peft import PeftModel

    from ..processing_llasm import LlasmProcessor
    from .hub import make_hub_ready
    from .loading import load_llasm

    base = load_llasm(base_dir, dtype=dtype)
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    output_dir = Path(output_dir)
    merged.save_pretrained(output_dir)
    if processor is None:
        source = adapter_dir if (Path(adapter_dir) / "processor_config.json").is_file() else base_dir
        processor = LlasmProcessor.from_pretrained(source)
    processor.save_pretrained(output_dir)
    card_kwargs.setdefault("adapter", False)
    make_hub_ready(output_dir, **card_kwargs)
    return output_dir


__all__ = ["QLORA_SKIP_MODULES", "keep_4bit_weights_trainable", "load_qlora_model", "load_quantized_base", "merge_adapter", "qlora_config", "save_adapter"]
