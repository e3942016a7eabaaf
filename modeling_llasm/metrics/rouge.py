"""ROUGE-L agreement between two answers, computed with Google's `rouge-score` package (offline).

Text is normalized like the WER metric (Whisper `BasicTextNormalizer`: lower-case, punctuation removed) and
split into words; CJK characters count as one token each, so Chinese answers are scored too (the default
`rouge-score` tokenizer drops every non-ASCII character).
"""

from __future__ import annotations

import re
from functools import lru_cache

from ._error_rate import normalize_text

_CJK = re.compile(r"([\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af])")


class _Tokenizer:
    """`rouge_score` tokenizer interface: `tokenize(text) -> list[str]`."""

    def tokenize(self, text: str) -> list[str]:
        return _CJK.sub(r" \1 ", normalize_text(text)).split()


def tokenize(text: str) -> list[str]:
    return _Tokenizer().tokenize(text)


@lru_cache(maxsize=1)
def _scorer():
    try:
        from rouge_score import rouge_scorer
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError("ROUGE-L needs the `rouge-score` package: pip install rouge-score") from error
    return rouge_scorer.RougeScorer(["rougeL"], tokenizer=_Tokenizer())


def rouge_l(reference: str, prediction: str) -> dict[str, float]:
    """ROUGE-L precision, recall and F1 of `prediction` against `reference` (token LCS).

    Two answers that are both empty after normalization agree perfectly (1.0); one empty answer scores 0.0.
    """
    if not tokenize(reference) and not tokenize(prediction):
        return {"precision": 1.0, "recall": 1.0, "f1": 1.0}
    score = _scorer().score(reference, prediction)["rougeL"]
    return {"precision": float(score.precision), "recall": float(score.recall), "f1": float(score.fmeasure)}


def mean_rouge_l(references: list[str], predictions: list[str]) -> float:
    """Mean per-pair ROUGE-L F1."""
    if len(references) != len(predictions):
        raise ValueError(f"{len(references)} references but {len(predictions)} predictions.")
    if not references:
        raise ValueError("ROUGE-L needs at least one pair.")
    return sum(rouge_l(r, p)["f1"] for r, p in zip(references, predictions)) / len(references)
