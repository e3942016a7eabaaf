"""Which model to serve (shared by `llasm serve` and a web demo) and how to load it."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable
from pathlib import Path


def newest_recipe_model(cache_dir: str | os.PathLike | None = None) -> Path | None:
    """The newest finished recipe model `<cache>/runs/<run>/final`, or None. A run is finished once it wrote
    `summary.json` (the recipe's last step, after saving `final/`); newest = most recent summary. `cache_dir`
    defaults to `llasm_cache_dir()`."""
    from ..cache import llasm_cache_dir

    runs = Path(cache_dir if cache_dir is not None else llasm_cache_dir()).expanduser() / "runs"
    finished = [s for s in runs.glob("*/summary.json") if (s.parent / "final" / "config.json").is_file()]
    if not finished:
        return None
    return max(finished, key=lambda summary: (summary.stat().st_mtime, str(summary))).parent / "final"


def is_loopback(host: str) -> bool:
    """Whether `host` is reachable from this machine only (the servers warn otherwise)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def default_model_dir(build: bool = True, log: Callable[[str], None] = print) -> Path:
    """The model to serve when none is named: the newest finished recipe model (`runs/*/final`), else the embedded
    base `default_base_dir()`, built first if missing (and `build`)."""
    finished = newest_recipe_model()
    if finished is not None:
        return finished
    from ..conversion.build_base import default_base_dir, embedded_base

    return embedded_base(log=log) if build else default_base_dir()


def choose_model_dir(model: str | os.PathLike | None = None, build: bool = True, log: Callable[[str], None] = print) -> Path:
    """`model` if given (it must be a directory holding a `config.json`), else `default_model_dir()`."""
    if model is None:
        return default_model_dir(build=build, log=log)
    path = Path(model).expanduser()
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} is not a model directory (no config.json).")
    return path


def load_model(directory: str | os.PathLike, device: str = "cpu", dtype: str | None = None):
    """`(model, processor)`: `LlasmForConditionalGeneration.from_pretrained(directory).eval()` and its processor."""
    import torch
    from transformers import AutoProcessor

    from ..modeling_llasm import LlasmForConditionalGeneration

    kwargs = {"dtype": getattr(torch, dtype)} if dtype else {}
    model = LlasmForConditionalGeneration.from_pretrained(directory, **kwargs).eval().to(device)
    processor = AutoProcessor.from_pretrained(directory)
    processor.check_model_config(model.config)
    return model, processor


def model_id_of(directory: str | os.PathLike) -> str:
    """The served model id: the model directory's name."""
    return Path(directory).expanduser().resolve().name


__all__ = ["choose_model_dir", "default_model_dir", "is_loopback", "load_model", "model_id_of", "newest_recipe_model"]
