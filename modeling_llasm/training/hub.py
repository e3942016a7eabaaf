"""Hub-ready checkpoints: safetensors + processor + remote code (auto_map) + `llasm-chat` custom pipeline + model card."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..files import atomic_write_json


PIPELINE_TASK = "llasm-chat"
DEFAULT_BASE_MODELS = ("openai/whisper-tiny.en", "HuggingFaceTB/SmolLM2-135M-Instruct")


def add_custom_pipeline(directory: str | os.PathLike) -> None:
    """Add the `llasm-chat` pipeline to a saved checkpoint: `custom_pipelines` in `config.json` + its code."""
    from transformers.dynamic_module_utils import custom_object_save
    from transformers.pipelines import PIPELINE_REGISTRY

    import modeling_llasm  # noqa: F401  (registers the task)

    directory = Path(directory)
    config_path = directory / "config.json"
    if not config_path.is_file():
        return  # an adapter-only (peft) checkpoint: the pipeline lives with its base model
    info = dict(PIPELINE_REGISTRY.supported_tasks[PIPELINE_TASK])
    impl = info["impl"]
    entry = {"impl": f"{impl.__module__.split('.')[-1]}.{impl.__name__}", "pt": [c.__name__ for c in info["pt"]]}
    if info.get("type"):
        entry["type"] = info["type"]
    config = json.loads(config_path.read_text())
    config.setdefault("custom_pipelines", {})[PIPELINE_TASK] = entry
    atomic_write_json(config_path, config, sort_keys=True)
    custom_object_save(impl, directory)


def llasm_model_card(
    model_name: str = "llasm",
    base_models: Sequence[str] = DEFAULT_BASE_MODELS,
    datasets: Sequence[str] | None = None,
    metrics: Mapping[str, float] | None = None,
    stages: Sequence[Mapping[str, Any]] | None = None,
    language: str | Sequence[str] | None = "en",
    license: str | None = "apache-2.0",
    adapter: bool = False,
    extra_text: str = "",
):
    """A huggingface_hub `ModelCard` for a LLaSM checkpoint.

    `metrics` (e.g. `{"wer": 0.41}`) go into the metadata as evaluation results on the held-out set;
    `stages` is a list of dicts (`name`, `trained`, `data`, `steps`, ...) rendered as the training-stages table.
    """
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    eval_results = [
        EvalResult(task_type="automatic-speech-recognition", dataset_type="held-out", dataset_name="held-out TTS speech",
                   metric_type=name, metric_name=name.upper(), metric_value=float(value))  # fmt: skip
        for name, value in (metrics or {}).items()
    ]
    data = ModelCardData(
        language=language,
        license=license,
        library_name="peft" if adapter else "transformers",
        base_model=list(base_models) or None,
        datasets=list(datasets) if datasets else None,
        metrics=list(metrics) if metrics else None,
        tags=["llasm", "speech", "audio", "speech-language-model", "custom_code"],
        pipeline_tag="audio-text-to-text",
        model_name=model_name,
        eval_results=eval_results or None,
    )
    stage_rows = "\n".join(
        "| " + " | ".join(str(stage.get(k, "")) for k in ("name", "trained", "data", "steps", "notes")) + " |"
        for stage in (stages or [])
    )
    text = f"""---
{data.to_yaml()}
---

# {model_name}

A [LLaSM](https://arxiv.org/abs/2308.15930) speech-language model: Whisper encoder (frozen) -> modal adaptor ->
decoder-only LLM, built with the `modeling_llasm` transformers plugin.

Base models: {", ".join(f"`{m}`" for m in base_models)}.

## Use

```python
from transformers import pipeline

chat = pipeline("llasm-chat", model="{model_name}", trust_remote_code=True)
print(chat("question.wav", max_new_tokens=64)["generated_text"])
```

## Training stages

| stage | trained | data | steps | notes |
|---|---|---|---|---|
{stage_rows}

## Evaluation

{chr(10).join(f"- {k.upper()}: {v:.4f} (held-out speech)" for k, v in (metrics or {}).items()) or "Not evaluated."}
{extra_text}
"""
    return ModelCard(text)


def make_hub_ready(directory: str | os.PathLike, card=None, **card_kwargs) -> Path:
    """Finish a saved checkpoint directory for the Hub: add the custom pipeline and write `README.md`
    (`card`, or `llasm_model_card(**card_kwargs)`, keeping an existing card when neither is given)."""
    directory = Path(directory)
    add_custom_pipeline(directory)
    readme = directory / "README.md"
    if card is None and (card_kwargs or not readme.is_file()):
        card_kwargs.setdefault("adapter", (directory / "adapter_config.json").is_file())
        card = llasm_model_card(**card_kwargs)
    if card is not None:
        card.save(readme)
    return directory


def check_hub_layout(directory: str | os.PathLike) -> list[str]:
    """Problems that would make `directory` a non-loadable Hub repo (empty list when it is hub-ready)."""
    directory = Path(directory)
    problems = []
    adapter = (directory / "adapter_config.json").is_file()
    weights = list(directory.glob("*.safetensors"))
    if not weights:
        problems.append("no .safetensors weights")
    if any(directory.glob("pytorch_model*.bin")) or any(directory.glob("adapter_model.bin")):
        problems.append("pickle .bin weights present")
    if not (directory / "README.md").is_file():
        problems.append("no README.md model card")
    if adapter:
        return problems
    config_path = directory / "config.json"
    if not config_path.is_file():
        return problems + ["no config.json"]
    config = json.loads(config_path.read_text())
    for auto in ("AutoConfig", "AutoModelForCausalLM"):
        target = (config.get("auto_map") or {}).get(auto)
        if not target:
            problems.append(f"auto_map lacks {auto}")
        elif not (directory / f"{target.split('.')[0]}.py").is_file():
            problems.append(f"code file for {target} missing")
    pipeline_entry = (config.get("custom_pipelines") or {}).get(PIPELINE_TASK)
    if not pipeline_entry:
        problems.append(f"custom_pipelines lacks {PIPELINE_TASK}")
    elif not (directory / f"{pipeline_entry['impl'].split('.')[0]}.py").is_file():
        problems.append("pipeline code file missing")
    if not (directory / "processor_config.json").is_file():
        problems.append("no processor_config.json")
    if not (directory / "tokenizer.json").is_file() and not (directory / "tokenizer_config.json").is_file():
        problems.append("no tokenizer files")
    return problems


__all__ = ["add_custom_pipeline", "check_hub_layout", "llasm_model_card", "make_hub_ready", "PIPELINE_TASK"]
