"""Where large artifacts (converted weights, generated audio, runs) live: never inside the git tree."""

from __future__ import annotations

import os
from pathlib import Path


def llasm_cache_dir() -> Path:
    """`$LLASM_CACHE` if set, else `~/.cache/llasm`. Created on demand by the callers that write to it."""
    return Path(os.environ.get("LLASM_CACHE", Path.home() / ".cache" / "llasm")).expanduser()
