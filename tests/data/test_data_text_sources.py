import re

import pytest

from modeling_llasm.data import text_sources as ts


@pytest.fixture(scope="module")
def english():
    return ts.seed_utterances("en", 12_000, seed=0)


def test_at_least_ten_thousand_distinct_english_utterances(english):
    texts = [u.text for u in english]
    assert len(texts) == 12_000
    assert len(set(texts)) == 12_000
    assert {u.source for u in english} == {"template", "lorem", "words"}
    assert all(u.language == "en" for u in english)
    # a transcript must be what the TTS says: letters and sentence punctuation only, no digits or symbols
    assert all(re.fullmatch(r"[A-Za-z][A-Za-z ,.'?!-]*", t) for t in texts)
    words = {w.strip(",.?!").lower() for t in texts for w in t.split()}
    assert len(words) > 8_000  # lexical coverage beyond a few templates


def test_mandarin_utterances():
    zh = ts.seed_utterances("zh", 2_000, seed=0)
    assert len({u.text for u in zh}) == 2_000
    assert all(re.fullmatch(r"[\u4e00-\u9fff，。？！、]+", u.text) for u in zh)


def test_deterministic_given_seed(english):
    assert ts.seed_utterances("en", 12_000, seed=0) == english
    other = ts.seed_utterances("en", 2_000, seed=1)
    assert len({u.text for u in other} & {u.text for u in english[:2000]}) < 200


def test_questions_packaged():
    en, zh = ts.load_questions("en"), ts.load_questions("zh")
    assert len(en) >= 150 and len(set(en)) == len(en)
    assert len(zh) >= 50 and len(set(zh)) == len(zh)
    assert all(q.endswith(("?", ".")) and not re.search(r"\d", q) for q in en)
    assert all(re.search(r"[\u4e00-\u9fff]", q) and not re.search(r"\d", q) for q in zh)


VOICES = {
    "en": ["espeak-ng:en-us", "espeak-ng:en-us+m5", "espeak-ng:en-gb-x-rp", "espeak-ng:en-gb+f2", "flite:slt", "flite:rms"],
    "zh": ["espeak-ng:cmn", "espeak-ng:cmn+f2", "espeak-ng:cmn+f4", "espeak-ng:cmn+m5"],
}


def test_split_is_disjoint_by_text_and_voice():
    split = ts.seed_text_split({"en": 10_000, "zh": 1_000}, heldout_fraction=0.05, seed=3, voices=VOICES)
    train, held = {u.text for u in split.train}, {u.text for u in split.heldout}
    assert len(train) + len(held) == 11_000 and not train & held
    assert len(held) == 550
    q_train, q_held = {u.text for u in split.train_questions}, {u.text for u in split.heldout_questions}
    assert q_held and not q_train & q_held and not (q_train | q_held) & (train | held)
    for language in ("en", "zh"):
        assert split.train_voices[language] and split.heldout_voices[language]
        assert not set(split.train_voices[language]) & set(split.heldout_voices[language])
        assert set(split.train_voices[language]) | set(split.heldout_voices[language]) == set(VOICES[language])
    assert split.heldout_voices["en"] == ["espeak-ng:en-gb-x-rp", "espeak-ng:en-us+m5", "flite:slt"]
    again = ts.seed_text_split({"en": 10_000, "zh": 1_000}, heldout_fraction=0.05, seed=3, voices=VOICES)
    assert again.heldout == split.heldout and again.train_voices == split.train_voices


def test_split_voices_falls_back_to_a_seeded_choice():
    voices = [f"x:v{i}" for i in range(20)]
    train, held = ts.split_voices(voices, None, language="en", seed=0)
    assert len(held) == 2 and not set(train) & set(held) and len(train) == 18
    assert ts.split_voices(voices, None, language="en", seed=0) == (train, held)
    with pytest.raises(ValueError, match=">= 2 voices"):
        ts.split_voices(["x:only"], None, language="en")


def test_bad_arguments():
    with pytest.raises(ValueError, match="language"):
        ts.seed_utterances("fr", 10)
    with pytest.raises(ValueError, match="unknown languages"):
        ts.seed_text_split({"fr": 10}, voices=VOICES)


def test_deterministic_across_processes():
    """Same text whatever the interpreter's hash seed (no set-order dependence)."""
    import hashlib
    import json
    import os
    import subprocess
    import sys

    import modeling_llasm.data.text_sources as module

    # load the data modules alone, as a bare package: importing modeling_llasm would pull in transformers (slow)
    code = (
        "import hashlib, importlib, json, sys, types\n"
        f"package = types.ModuleType('data_alone'); package.__path__ = [{os.path.dirname(module.__file__)!r}]\n"
        "sys.modules['data_alone'] = package; ts = importlib.import_module('data_alone.text_sources')\n"
        "texts = [u.text for u in ts.seed_utterances('en', 2000, seed=0)] + [u.text for u in ts.seed_utterances('zh', 500, seed=0)]\n"
        "print(hashlib.md5(json.dumps(texts).encode()).hexdigest())\n"
    )
    here = [u.text for u in ts.seed_utterances("en", 2000, seed=0)] + [u.text for u in ts.seed_utterances("zh", 500, seed=0)]
    digests = {
        subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONHASHSEED": str(s)}, check=True,
                       capture_output=True, text=True).stdout.strip()
        for s in (1, 2)
    }  # fmt: skip
    assert digests == {hashlib.md5(json.dumps(here).encode()).hexdigest()}


@pytest.mark.parametrize("language", ["en", "zh"])
def test_the_seed_text_does_not_depend_on_the_date(language, monkeypatch):
    """Months and weekdays come from fixed lists: faker's date providers draw a date up to *now*, which would change
    the seed text (and every recipe number built on it) from one day to the next."""
    from faker.providers.date_time import Provider

    def no_dates(*args, **kwargs):
        raise AssertionError("the seed text drew a date (it depends on today's date)")

    monkeypatch.setattr(Provider, "date", no_dates)
    monkeypatch.setattr(Provider, "date_time", no_dates)
    texts = [u.text for u in ts.seed_utterances(language, 400, seed=3)]
    names = ts._EN_MONTHS + ts._EN_WEEKDAYS if language == "en" else ts._ZH_MONTHS + ts._ZH_WEEKDAYS
    assert any(name in text for text in texts for name in names)  # the slots were filled, from the lists
