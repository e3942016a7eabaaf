"""The committed Chinese and code-switched evaluation clips (`eval_clips_zh/`, made by
`scripts/make_zh_eval_clips.py`): held-out questions spoken with held-out voices, 16 kHz mono FLAC.

Kinds: `"zh"` (Chinese questions), `"zh_en"` (Chinese with English terms), `"en_zh"` (English with Chinese terms).
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any


ZH_CLIPS_DIR = "eval_clips_zh"
KINDS = ("zh", "zh_en", "en_zh")


def zh_eval_clips(kind: str | None = None) -> list[dict[str, Any]]:
    """Rows of `questions.jsonl` ({file, text, language, kind, voices, rate, seconds}) with `path` (absolute) added.

    `kind` keeps one kind only (one of `KINDS`).
    """
    if kind is not None and kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS} or None, got {kind!r}")
    root = Path(str(resources.files(__package__) / ZH_CLIPS_DIR))
    index = root / "questions.jsonl"
    if not index.is_file():
        raise FileNotFoundError(f"{index} is missing: the package was installed without its clips (package-data)")
    rows = [json.loads(line) for line in index.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [{**row, "path": str(root / row["file"])} for row in rows if kind is None or row["kind"] == kind]
