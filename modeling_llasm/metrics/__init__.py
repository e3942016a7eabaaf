"""Speech-recognition metrics shipped as offline `evaluate` modules (no Hub access needed), and ROUGE-L between
answers (`metrics.rouge`).

`evaluate` is heavy to import, so it is only imported inside the functions below.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING


if TYPE_CHECKING:
    import evaluate

_METRICS_DIR = Path(__file__).resolve().parent


def metric_path(name: str) -> Path:
    """Directory of a packaged metric (`"wer"` or `"cer"`), suitable for `evaluate.load(str(path))`."""
    if name not in ("wer", "cer"):
        raise ValueError(f"Unknown packaged metric {name!r}: expected 'wer' or 'cer'.")
    return _METRICS_DIR / name


def load_wer(**kwargs) -> evaluate.EvaluationModule:
    """`evaluate.load` of the packaged WER module (offline). Extra kwargs go to `evaluate.load`."""
    import evaluate

    kwargs.setdefault("keep_in_memory", True)  # no Arrow cache files: safe for parallel test runs
    return evaluate.load(str(metric_path("wer")), **kwargs)


def load_cer(**kwargs) -> evaluate.EvaluationModule:
    """`evaluate.load` of the packaged CER module (offline). Extra kwargs go to `evaluate.load`."""
    import evaluate

    kwargs.setdefault("keep_in_memory", True)  # no Arrow cache files: safe for parallel test runs
    return evaluate.load(str(metric_path("cer")), **kwargs)


def word_error_rate(references: Sequence[str], predictions: Sequence[str], normalize: bool = True) -> float:
    """Corpus WER of `predictions` against `references`, computed with the packaged `evaluate` module."""
    return load_wer().compute(references=list(references), predictions=list(predictions), normalize=normalize)


def character_error_rate(
    references: Sequence[str], predictions: Sequence[str], normalize: bool = True, ignore_spaces: bool = True
) -> float:
    """Corpus CER of `predictions` against `references`, computed with the packaged `evaluate` module."""
    return load_cer().compute(
        references=list(references), predictions=list(predictions), normalize=normalize, ignore_spaces=ignore_spaces
    )


__all__ = ["metric_path", "load_wer", "load_cer", "word_error_rate", "character_error_rate"]
