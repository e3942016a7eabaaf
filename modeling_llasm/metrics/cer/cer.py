"""Character error rate as an offline `evaluate` module: `evaluate.load("<path to this directory>")`.

The directory and the script share the name `cer`, which is what `evaluate.load` on a local directory requires.
See `modeling_llasm/metrics/_error_rate.py` for the exact conventions (normalization, spaces, empty texts).
"""

import datasets
import evaluate

from modeling_llasm.metrics._error_rate import error_rate


_DESCRIPTION = """\
Corpus character error rate (S + D + I) / N computed with jiwer 4 (`jiwer.process_characters`), summed over all
pairs. With `normalize=True` (default) Whisper's `BasicTextNormalizer` is applied first (lower-case, punctuation
removed; CJK characters are kept). With `ignore_spaces=True` (default) all whitespace is removed before aligning, the
usual convention for Chinese. A pair with an empty reference counts its hypothesis characters as insertions; if every
reference is empty the result is 0.0 when every prediction is empty too, and a ValueError otherwise.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[str]`): transcriptions to score.
    references (`list[str]`): reference transcriptions, same length as `predictions`.
    normalize (`bool` or `str`, defaults to `True`): `True` / `"basic"` applies Whisper's `BasicTextNormalizer` to
        both sides; `"zh"` applies Chinese ASR evaluation's normalisation (punctuation removed, full-width ->
        half-width, traditional -> simplified via OpenCC, Latin case-folded); `False` none.
    ignore_spaces (`bool`, defaults to `True`): drop all whitespace before the character alignment.
    return_details (`bool`, defaults to `False`): return a dict with the rate and the alignment counts.
Returns:
    `float` CER, or a dict when `return_details=True`.
Examples:
    >>> cer = evaluate.load("modeling_llasm/metrics/cer")
    >>> cer.compute(predictions=["你好地界"], references=["你好世界"])
    0.25
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class CER(evaluate.Metric):
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

    def _compute(self, predictions=None, references=None, normalize=True, ignore_spaces=True, return_details=False):
        return error_rate(
            references,
            predictions,
            unit="char",
            normalize=normalize,
            ignore_spaces=ignore_spaces,
            return_details=return_details,
        )
