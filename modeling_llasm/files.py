"""Crash-safe file writing and reading for the long jobs (data building, training runs, conversions)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any


logger = logging.getLogger(__name__)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write `text` to `path` through a synced temporary sibling and a rename: a kill never leaves a torn file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    return path


def atomic_write_json(path: str | os.PathLike, value: Any, **dump_kwargs: Any) -> Path:
    """`atomic_write_text` of `value` as indented JSON (UTF-8, newline at the end)."""
    dump_kwargs.setdefault("indent", 2)
    dump_kwargs.setdefault("ensure_ascii", False)
    return atomic_write_text(path, json.dumps(value, **dump_kwargs) + "\n")


def read_appendable_jsonl(path: str | os.PathLike) -> list[Any]:
    """Values of a JSONL file that a job appends to, one line per finished item.

    A torn last line (no trailing newline: the job was killed mid-write) is cut off the file, so appending can
    continue; a corrupt line anywhere else raises `ValueError` naming the file and line, as something other than
    the appending job changed the file."""
    path = Path(path)
    if not path.exists():
        return []
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        logger.warning("%s: ignoring a torn last line (%d bytes) left by an interrupted run", path, len(data) - cut)
        with open(path, "r+b") as handle:
            handle.truncate(cut)
        data = data[:cut]
    values = []
    for lineno, line in enumerate(data.decode("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            values.append(json.loads(line))
        except json.JSONDecodeError as error:
            raise ValueError(
                f"{path}:{lineno}: corrupt line in the middle of the file ({error.msg}); jobs only append whole "
                "lines, so this file was changed by something else. Fix or delete it."
            ) from None
    return values


__all__ = ["atomic_write_json", "atomic_write_text", "read_appendable_jsonl"]
