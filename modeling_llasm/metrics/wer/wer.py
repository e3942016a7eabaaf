"""Word error rate as an offline `evaluate` module: `evaluate.load("<path to this directory>")`.

The directory and the script share the name `wer`, which is what `evaluate.load` on a local directory requires.
See `modeling_llasm/metrics/_error_rate.py` for the exact conventions (normalization, empty texts).
"""

import datasets
import evaluate

from modeling_llasm.metrics._error_rate import error_rate


_DESCRIPTION = """\
Corpus word error rate (S + D + I) / N computed with jiwer 4 (`jiwer.process_words`), summed over all pairs.
With `normalize=True` (default) Whisper's `BasicTextNormalizer` is applied first (lower-case, punctuation removed).
A pair with an empty reference counts its hypothesis words as insertions; if every reference is empty the result is
0.0 when every prediction is empty too, and a ValueError otherwise (undefined rate).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[str]`): transcriptions to score.
    references (`list[str]`): reference transcriptions, same length as `predictions`.
    normalize (`bool` or `str`, defaults to `True`): `True` / `"basic"` applies Whisper's `BasicTextNormalizer` to
        both sides; `"zh"` applies Chinese ASR evaluation's normalisation (punctuation removed, full-width ->
        half-width, traditional -> simplified via OpenCC, Latin case-folded); `False` none.
    return_details (`bool`, defaults to `False`): return a dict with the rate and the alignment counts.
Returns:
    `float` WER (can exceed 1.0 with many insertions), or a dict when `return_details=True`.
Examples:
    >>> wer = evaluate.load("modeling_llasm/metrics/wer")
    >>> wer.compute(predictions=["the cat sat down"], references=["the cat sat up"])
    0.25
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class WER(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Value("string", id="sequence"),
                    "references": datasets.Value("string", id="sequence"),
                }
            ),
            reference_urls=["https://github.com/jitsi/jiwer/"],
        )

    def _compute(self, predictions=None, references=None, normalize=True, return_details=False):
        return error_rate(references, predictions, unit="word", normalize=normalize, return_details=return_details)
