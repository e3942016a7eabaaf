"""The committed Chinese / code-switched evaluation clips: what they hold, that they stay small and held out."""

import os
import re

import pytest
import soundfile as sf

from modeling_llasm.data import text_sources
from modeling_llasm.data.eval_clips import KINDS, zh_eval_clips


def test_committed_clips_are_small_held_out_16k_flac():
    rows = zh_eval_clips()
    counts = {kind: sum(r["kind"] == kind for r in rows) for kind in KINDS}
    assert counts == {"zh": 20, "zh_en": 10, "en_zh": 10}
    training = set(text_sources.load_questions("zh")) | set(text_sources.load_questions("en"))
    total = 0
    for row in rows:
        info = sf.info(row["path"])
        assert (info.format, info.samplerate, info.channels) == ("FLAC", 16000, 1), row["file"]
        assert info.frames / 16000 == pytest.approx(row["seconds"], abs=1e-3) and 0.8 < row["seconds"] < 8
        assert row["text"] not in training
        has_cjk, has_latin = bool(re.search(r"[\u4e00-\u9fff]", row["text"])), bool(re.search("[A-Za-z]", row["text"]))
        assert (has_cjk, has_latin) == {"zh": (True, False), "zh_en": (True, True), "en_zh": (True, True)}[row["kind"]]
        assert row["language"] == ("en" if row["kind"] == "en_zh" else "zh")
        # spoken by held-out voices only
        assert set(row["voices"]) <= set(text_sources.DEFAULT_HELDOUT_VOICES["zh"]) | {"flite:slt", "espeak-ng:en-us+m5"}
        total += os.path.getsize(row["path"])
    assert total < 5_000_000


def test_unknown_kind_is_an_error():
    with pytest.raises(ValueError, match="kind must be one of"):
        zh_eval_clips("fr")
    assert {r["kind"] for r in zh_eval_clips("zh_en")} == {"zh_en"}
