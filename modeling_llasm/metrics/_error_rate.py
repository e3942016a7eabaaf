"""Shared word/character error-rate logic for the packaged `evaluate` modules (`wer/wer.py`, `cer/cer.py`).

Conventions (identical for WER and CER):

* Corpus-level rate: `(substitutions + deletions + insertions) / number_of_reference_units`, summed over all pairs
  (not an average of per-utterance rates).
* `normalize=True` (or `"basic"`) applies Whisper's `BasicTextNormalizer` to references and predictions (lower-case,
  drop bracketed tags, punctuation and symbols -> space, collapse whitespace). It is language agnostic, so Chinese
  text is kept, but traditional and simplified characters count as different.
* `normalize="zh"` applies `normalize_chinese`, the normalisation Chinese ASR evaluation uses: full-width -> half-width
  (NFKC), traditional -> simplified (OpenCC `t2s`), Latin case-folded, punctuation and symbols (Chinese and ASCII)
  removed. Use it for Chinese and mixed Chinese-English transcripts.
* Empty texts (after normalization): a pair whose reference is empty contributes its hypothesis units as insertions
  and no reference units. If the whole corpus has no reference units the rate is `0.0` when there are no errors
  (every hypothesis empty too) and a `ValueError` otherwise, because the rate would be a division by zero.
* CER: with `ignore_spaces=True` (default) all whitespace is removed before the character alignment, which is the
  usual convention for Chinese (where spaces carry no meaning) and makes CER insensitive to word segmentation.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from functools import lru_cache
from typing import Any, Literal


#: what `normalize=` accepts besides True / False
NORMALIZERS = ("basic", "zh")
# CJK ideographs (unified, extension A, compatibility) and the CJK symbols and kana blocks
_CJK = "\u2e80-\u9fff\uf900-\ufaff"
#: Chinese characters (CJK unified ideographs, extension A, compatibility ideographs), for a regex character class
HAN_CHARACTERS = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_SPACE_BETWEEN_CJK = re.compile(f"(?<=[{_CJK}])\\s+(?=[{_CJK}])")


@lru_cache(maxsize=1)
def _basic_normalizer():
    from transformers.models.whisper.english_normalizer import BasicTextNormalizer

    return BasicTextNormalizer()


def normalize_text(text: str) -> str:
    """Whisper `BasicTextNormalizer` followed by whitespace collapsing."""
    return " ".join(_basic_normalizer()(text).split())


@lru_cache(maxsize=1)
def _t2s():
    try:
        import opencc
    except ImportError as e:
        raise ImportError("normalize='zh' needs OpenCC for traditional -> simplified: pip install opencc") from e
    return opencc.OpenCC("t2s")


def normalize_chinese(text: str) -> str:
    """Normalise a Chinese (or mixed Chinese-English) transcript for CER, as Chinese ASR evaluation does.

    Full-width forms -> half-width (Unicode NFKC), traditional -> simplified characters (OpenCC `t2s`), Latin
    case-folded, punctuation and symbols (Chinese and ASCII) removed, whitespace collapsed to single spaces and
    removed between CJK characters: `"這是 ＡＩ！"` -> `"这是 ai"`.
    """
    if not isinstance(text, str):
        raise TypeError(f"normalize_chinese expects a str, got {type(text).__name__}")
    text = _t2s().convert(unicodedata.normalize("NFKC", text)).casefold()
    text = "".join(" " if unicodedata.category(c)[0] in "PSZC" else c for c in text)
    return _SPACE_BETWEEN_CJK.sub("", " ".join(text.split()))


def _normalizer(normalize: bool | str):
    """The text function of a `normalize=` value (True/"basic", "zh", False)."""
    if normalize is True or normalize == "basic":
        return normalize_text
    if normalize == "zh":
        return normalize_chinese
    if normalize is False or normalize is None:
        return lambda t: " ".join(t.split())
    raise ValueError(f"`normalize` must be True, False or one of {NORMALIZERS}, got {normalize!r}.")


def _check_inputs(references: Sequence[str], predictions: Sequence[str]) -> None:
    if isinstance(references, str) or isinstance(predictions, str):
        raise ValueError("`references` and `predictions` must be sequences of strings, got a single string.")
    if len(references) != len(predictions):
        raise ValueError(
            f"`references` and `predictions` must have the same length, got {len(references)} references and "
            f"{len(predictions)} predictions."
        )
    if len(references) == 0:
        raise ValueError("`references` and `predictions` are empty: an error rate needs at least one pair.")
    for name, texts in (("references", references), ("predictions", predictions)):
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise ValueError(f"`{name}[{i}]` must be a str, got {type(text).__name__}.")


def error_rate(
    references: Sequence[str],
    predictions: Sequence[str],
    unit: Literal["word", "char"],
    normalize: bool | str = True,
    ignore_spaces: bool = True,
    return_details: bool = False,
) -> float | dict[str, Any]:
    """Corpus word (`unit="word"`) or character (`unit="char"`) error rate computed with jiwer.

    `normalize`: True or "basic" (Whisper's `BasicTextNormalizer`), "zh" (`normalize_chinese`) or False.

    Returns the rate as a float, or with `return_details=True` a dict with the rate and the alignment counts
    (`substitutions`, `deletions`, `insertions`, `hits`, `num_reference_units`).
    """
    import jiwer

    if unit not in ("word", "char"):
        raise ValueError(f"`unit` must be 'word' or 'char', got {unit!r}.")
    norm = _normalizer(normalize)
    _check_inputs(references, predictions)
    refs = [norm(t) for t in references]
    hyps = [norm(t) for t in predictions]
    if unit == "char" and ignore_spaces:
        refs = ["".join(t.split()) for t in refs]
        hyps = ["".join(t.split()) for t in hyps]

    if unit == "word":
        out = jiwer.process_words(refs, hyps)
    else:
        out = jiwer.process_characters(refs, hyps)
    errors = out.substitutions + out.deletions + out.insertions
    num_ref = out.hits + out.substitutions + out.deletions
    if num_ref == 0:
        if errors:
            raise ValueError(
                f"All references are empty{' after normalization' if normalize else ''} but the predictions contain "
                f"{errors} {unit}(s): the {unit} error rate is undefined (division by zero reference {unit}s)."
            )
        rate = 0.0
    else:
        rate = errors / num_ref
    if not return_details:
        return float(rate)
    return {
        "wer" if unit == "word" else "cer": float(rate),
        "substitutions": out.substitutions,
        "deletions": out.deletions,
        "insertions": out.insertions,
        "hits": out.hits,
        "num_reference_units": num_ref,
    }
