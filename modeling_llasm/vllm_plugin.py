"""vLLM plugin entry point (`vllm.general_plugins` in pyproject.toml): registers LLaSM with vLLM's model registry.

vLLM calls `register()` in every process it starts (API server, engine core, workers), so it is idempotent and
cheap: the model class is registered by its import path and loaded only when a LLaSM checkpoint is served. Importing
this module does not import vLLM. The model itself: `modeling_llasm.serving.vllm_model` (docs/serving.md "vLLM").
"""

from __future__ import annotations


ARCHITECTURE = "LlasmForConditionalGeneration"
MODEL_CLASS = "modeling_llasm.serving.vllm_model:LlasmVllmForConditionalGeneration"


def register() -> None:
    """Register the `LlasmForConditionalGeneration` architecture (what `config.json` names) with vLLM, and the
    `llasm` config type with transformers' Auto classes (importing `modeling_llasm` does that)."""
    import modeling_llasm  # noqa: F401  (AutoConfig / AutoProcessor learn "llasm")
    from vllm import ModelRegistry

    if ARCHITECTURE not in ModelRegistry.get_supported_archs():
        ModelRegistry.register_model(ARCHITECTURE, MODEL_CLASS)


__all__ = ["ARCHITECTURE", "MODEL_CLASS", "register"]
