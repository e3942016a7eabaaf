"""Packaged WER/CER `evaluate` modules: hand-computed examples, normalization, Chinese CER, empty texts."""

import subprocess
import sys

import pytest

from modeling_llasm.metrics import (
    character_error_rate,
    load_cer,
    load_wer,
    metric_path,
    word_error_rate,
)
from modeling_llasm.metrics._error_rate import error_rate


@pytest.fixture(scope="module")
def wer():
    return load_wer()


@pytest.fixture(scope="module")
def cer():
    return load_cer()


def test_evaluate_load_on_directory_path_gives_named_metric(wer, cer):
    import evaluate

    assert metric_path("wer").name == "wer" and (metric_path("wer") / "wer.py").is_file()
    assert type(wer).__name__ == "WER" and type(cer).__name__ == "CER"
    # plain evaluate.load on the directory works too (no Hub access)
    module = evaluate.load(str(metric_path("wer")), keep_in_memory=True)
    assert module.compute(predictions=["a b"], references=["a c"]) == pytest.approx(0.5)


def test_one_substitution_in_four_words(wer):
    assert wer.compute(predictions=["the cat sat down"], references=["the cat sat up"]) == pytest.approx(1 / 4)


def test_deletion_and_insertion_counts(wer):
    # ref: 5 words; hyp drops "quick" (1 D) and adds "very" (1 I) -> 2 / 5
    details = wer.compute(
        predictions=["the brown fox jumps very high"],
        references=["the quick brown fox jumps high"],
        return_details=True,
    )
    assert details["deletions"] == 1 and details["insertions"] == 1 and details["substitutions"] == 0
    assert details["num_reference_units"] == 6
    assert details["wer"] == pytest.approx(2 / 6)


def test_corpus_wer_is_pooled_not_averaged(wer):
    # pair 1: 1 error / 1 word, pair 2: 0 errors / 9 words -> pooled 1/10 (the mean of rates would be 0.5)
    refs = ["yes", "one two three four five six seven eight nine"]
    hyps = ["no", "one two three four five six seven eight nine"]
    assert wer.compute(predictions=hyps, references=refs) == pytest.approx(1 / 10)


def test_normalization_option(wer):
    assert wer.compute(predictions=["hello world"], references=["Hello, World!"]) == 0.0
    assert word_error_rate(["Hello, World!"], ["hello world"]) == 0.0
    # without normalization both words differ ("Hello," vs "hello", "World!" vs "world")
    assert wer.compute(predictions=["hello world"], references=["Hello, World!"], normalize=False) == pytest.approx(1.0)
    assert word_error_rate(["Hello, World!"], ["hello world"], normalize=False) == pytest.approx(1.0)


def test_whitespace_is_not_a_word(wer):
    assert wer.compute(predictions=["  a   b  "], references=["a b"], normalize=False) == 0.0


def test_chinese_cer_ignores_spaces_and_punctuation(cer):
    # 1 substituted character out of 4
    assert cer.compute(predictions=["你好地界"], references=["你好世界"]) == pytest.approx(1 / 4)
    # spaces and full-width punctuation do not count
    assert cer.compute(predictions=["你 好 世 界"], references=["你好，世界。"]) == 0.0
    assert character_error_rate(["今天天气很好"], ["今天天气"]) == pytest.approx(2 / 6)


def test_english_cer_with_and_without_spaces(cer):
    assert cer.compute(predictions=["abcd"], references=["abce"]) == pytest.approx(1 / 4)
    assert cer.compute(predictions=["ab cd"], references=["abcd"]) == 0.0
    # keeping spaces: the inserted space is one insertion over 4 reference characters
    assert cer.compute(predictions=["ab cd"], references=["abcd"], ignore_spaces=False) == pytest.approx(1 / 4)


def test_empty_reference_counts_hypothesis_as_insertions(wer):
    # pair 1 has an empty reference: its 2 words are insertions; pair 2 is perfect with 2 words -> 2/2
    assert wer.compute(predictions=["uh huh", "a b"], references=["", "a b"]) == pytest.approx(1.0)
    # empty hypothesis: all reference words deleted
    assert wer.compute(predictions=[""], references=["a b c"]) == pytest.approx(1.0)


def test_all_empty(wer, cer):
    assert wer.compute(predictions=["", ""], references=["", ""]) == 0.0
    # normalization can empty a text: punctuation only
    assert wer.compute(predictions=["..."], references=["!"]) == 0.0
    with pytest.raises(ValueError, match="undefined"):
        wer.compute(predictions=["something"], references=[""])
    with pytest.raises(ValueError, match="undefined"):
        cer.compute(predictions=["x"], references=[" "])


def test_input_validation():
    with pytest.raises(ValueError, match="same length"):
        error_rate(["a"], ["a", "b"], unit="word")
    with pytest.raises(ValueError, match="single string"):
        error_rate("a b", "a b", unit="word")
    with pytest.raises(ValueError, match="at least one pair"):
        error_rate([], [], unit="word")
    with pytest.raises(ValueError, match="unit"):
        error_rate(["a"], ["a"], unit="phone")
    with pytest.raises(ValueError, match="Unknown packaged metric"):
        metric_path("bleu")


def test_importing_metrics_package_does_not_import_evaluate():
    code = "import sys, modeling_llasm.metrics; print('evaluate' in sys.modules, 'jiwer' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]


# ---------------------------------------------------------------------------------------------- Chinese normalisation


@pytest.mark.parametrize(
    "text, expected",
    [
        ("中国的首都是哪里？", "中国的首都是哪里"),  # Chinese punctuation
        ("你好，世界。「引号」《书名》、顿号…", "你好世界引号书名顿号"),
        ("這是臺灣的學校", "这是台湾的学校"),  # traditional -> simplified
        ("ＡＢＣ１２３！", "abc123"),  # full-width -> half-width, case-folded
        ("什么是 Machine Learning？", "什么是 machine learning"),  # spaces kept between Latin words
        ("你 好 　世界", "你好世界"),  # (ideographic) spaces between characters dropped
        ("Hello, World!", "hello world"),
        ("100% 的人", "100 的人"),  # symbols removed
        ("，。！", ""),
    ],
)  # fmt: skip
def test_normalize_chinese(text, expected):
    from modeling_llasm.metrics import normalize_chinese

    assert normalize_chinese(text) == expected


def test_normalize_chinese_rejects_non_text():
    from modeling_llasm.metrics import normalize_chinese

    with pytest.raises(TypeError, match="expects a str, got int"):
        normalize_chinese(3)


def test_cer_with_chinese_normalisation(cer):
    # Whisper's habit: traditional characters and full-width punctuation for a simplified reference
    refs, hyps = ["北京是中国的首都吗？"], ["北京是中國的首都嗎?"]
    assert cer.compute(predictions=hyps, references=refs) == pytest.approx(2 / 9)  # basic: 国/國, 吗/嗎 differ
    assert cer.compute(predictions=hyps, references=refs, normalize="zh") == 0.0
    assert character_error_rate(refs, hyps, normalize="zh") == 0.0
    # one real error out of 9 characters stays one error
    assert character_error_rate(refs, ["北京是中國的首府嗎"], normalize="zh") == pytest.approx(1 / 9)
    # mixed Chinese-English: case and full-width letters do not count; with spaces ignored, 16 reference characters
    assert character_error_rate(["什么是 machine learning？"], ["什麼是Ｍａｃｈｉｎｅ Learning"], normalize="zh") == 0.0
    assert word_error_rate(["什么是 machine learning"], ["什麼是 Machine learning!"], normalize="zh") == 0.0


def test_unknown_normalizer_is_an_error():
    with pytest.raises(ValueError, match=r"`normalize` must be True, False or one of \('basic', 'zh'\), got 'fr'"):
        character_error_rate(["a"], ["a"], normalize="fr")
