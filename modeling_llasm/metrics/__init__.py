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


def word_error_rate(references: Sequence[str], predictions: Sequence[str], normalize: bool | str = True) -> float:
    """Corpus WER of `predictions` against `references`, computed with the packaged `evaluate` module.

    `normalize`: True / "basic" (Whisper's `BasicTextNormalizer`), "zh" (`normalize_chinese`) or False.
    """
    return load_wer().compute(references=list(references), predictions=list(predictions), normalize=normalize)


def character_error_rate(
    references: Sequence[str], predictions: Sequence[str], normalize: bool | str = True, ignore_spaces: bool = True
) -> float:
    """Corpus CER of `predictions` against `references`, computed with the packaged `evaluate` module.

    `normalize="zh"` scores Chinese as Chinese ASR evaluation does (`normalize_chinese`: punctuation removed,
    full-width -> half-width, traditional -> simplified, Latin case-folded); True / "basic" applies Whisper's
    `BasicTextNormalizer`; False compares the texts as they are (whitespace collapsed).
    """
    return load_cer().compute(
        references=list(references), predictions=list(predictions), normalize=normalize, ignore_spaces=ignore_spaces
    )


def normalize_chinese(text: str) -> str:
    """Chinese ASR evaluation's normalisation (see `_error_rate.normalize_chinese`); imports OpenCC on first use."""
    from ._error_rate import normalize_chinese as _normalize_chinese

    return _normalize_chinese(text)


__all__ = ["metric_path", "load_wer", "load_cer", "word_error_rate", "character_error_rate", "normalize_chinese"]
