import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from modeling_llasm.data import asr
from modeling_llasm.data.chat import validate_record


def _tone(seconds: float = 0.3, sr: int = 16000) -> np.ndarray:
    return (0.2 * np.sin(2 * np.pi * 220 * np.arange(int(sr * seconds)) / sr)).astype(np.float32)


@pytest.fixture
def librispeech(tmp_path) -> Path:
    """train-clean-100/{19,26}/{198,495}/...: 2 chapters x 3 utterances, FLAC."""
    root = tmp_path / "LibriSpeech" / "train-clean-100"
    for speaker, chapter in (("19", "198"), ("26", "495")):
        d = root / speaker / chapter
        d.mkdir(parents=True)
        lines = []
        for k in range(3):
            utt = f"{speaker}-{chapter}-{k:04d}"
            sf.write(d / f"{utt}.flac", _tone(), 16000, format="FLAC")
            lines.append(f"{utt} NORTHANGER ABBEY NUMBER {k}")
        (d / f"{speaker}-{chapter}.trans.txt").write_text("\n".join(lines) + "\n")
    return tmp_path / "LibriSpeech"


@pytest.fixture
def aishell(tmp_path) -> Path:
    root = tmp_path / "data_aishell"
    (root / "transcript").mkdir(parents=True)
    ids = {"train": ["BAC009S0002W0122", "BAC009S0002W0123"], "dev": ["BAC009S0724W0121"]}
    for split, utts in ids.items():
        for utt in utts:
            d = root / "wav" / split / utt[6:11]
            d.mkdir(parents=True, exist_ok=True)
            sf.write(d / f"{utt}.wav", _tone(), 16000, subtype="PCM_16")
    sf.write(root / "wav" / "train" / "S0002" / "BAC009S0002W0999.wav", _tone(), 16000)  # no transcript line
    (root / "transcript" / "aishell_transcript_v0.8.txt").write_text(
        "BAC009S0002W0122 而 对 楼市 成交 抑制 作用 最 大 的 限 购\n"
        "BAC009S0002W0123 也 成为 地方 政府 的 眼中 钉\n"
        "BAC009S0724W0121 甚至 出现 交易 几乎 停滞 的 情况\n"
        "BAC009S0916W0001 这 条 没有 音频\n",
        encoding="utf-8",
    )
    return root


def _user_parts(record):
    return record["messages"][0]["content"]


def _check_asr_record(record, transcript, language):
    validate_record(record)
    assert record["task"] == "asr" and record["language"] == language
    assert [m["role"] for m in record["messages"]] == ["user", "assistant"]
    parts = _user_parts(record)
    assert sorted(p["type"] for p in parts) == ["audio", "text"]
    audio = next(p for p in parts if p["type"] == "audio")
    instruction = next(p for p in parts if p["type"] == "text")["text"]
    assert instruction in asr.ASR_INSTRUCTIONS[language]
    assert Path(audio["path"]).is_absolute() and Path(audio["path"]).is_file()
    assert audio["transcript"] == transcript
    assert record["messages"][1]["content"] == [{"type": "text", "text": transcript}]


def test_instruction_lists():
    for language in ("en", "zh"):
        assert len(set(asr.ASR_INSTRUCTIONS[language])) >= 10


def test_librispeech(librispeech):
    records = list(asr.load_librispeech(librispeech, seed=0))
    assert [r["id"] for r in records] == [f"librispeech-{s}-{c}-{k:04d}" for s, c in (("19", "198"), ("26", "495")) for k in range(3)]
    for r in records:
        k = int(r["id"][-1])
        _check_asr_record(r, f"northanger abbey number {k}", "en")
        assert next(p for p in _user_parts(r) if p["type"] == "audio")["path"].endswith(r["id"][len("librispeech-"):] + ".flac")
    upper = next(asr.load_librispeech(librispeech, lowercase=False))
    assert upper["messages"][1]["content"][0]["text"] == "NORTHANGER ABBEY NUMBER 0"


def test_librispeech_missing_audio_is_an_error(librispeech):
    next(librispeech.rglob("*.flac")).unlink()
    with pytest.raises(FileNotFoundError, match=r"\.trans\.txt:\d+: audio file .*\.flac not found"):
        list(asr.load_librispeech(librispeech))
    empty = librispeech.parent / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no LibriSpeech transcripts"):
        list(asr.load_librispeech(empty))


def test_aishell(aishell):
    records = list(asr.load_aishell(aishell))
    by_id = {r["id"]: r for r in records}
    assert sorted(by_id) == ["aishell-BAC009S0002W0122", "aishell-BAC009S0002W0123", "aishell-BAC009S0724W0121"]
    _check_asr_record(by_id["aishell-BAC009S0002W0122"], "而对楼市成交抑制作用最大的限购", "zh")
    _check_asr_record(by_id["aishell-BAC009S0724W0121"], "甚至出现交易几乎停滞的情况", "zh")
    dev = list(asr.load_aishell(aishell, split="dev"))
    assert [r["id"] for r in dev] == ["aishell-BAC009S0724W0121"]
    with pytest.raises(ValueError, match="matches a transcript line"):
        list(asr.load_aishell(aishell, split="test"))


def test_jsonl_manifest(tmp_path):
    (tmp_path / "clips").mkdir()
    sf.write(tmp_path / "clips" / "a.wav", _tone(), 16000)
    sf.write(tmp_path / "clips" / "b.wav", _tone(sr=8000), 8000)
    rows = [{"audio": "clips/a.wav", "text": "hello there"}, {"audio": str(tmp_path / "clips" / "b.wav"), "text": "你好", "id": "b"}]
    manifest = tmp_path / "asr.jsonl"
    manifest.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    records = list(asr.load_jsonl_manifest(manifest))
    assert [r["id"] for r in records] == ["asr-0000001", "b"]
    _check_asr_record(records[0], "hello there", "en")
    _check_asr_record(records[1], "你好", "zh")
    manifest.write_text('{"audio": "clips/a.wav"}\n')
    with pytest.raises(ValueError, match=r"asr\.jsonl:1: expected an object with string fields 'audio' and 'text'"):
        list(asr.load_jsonl_manifest(manifest))
    manifest.write_text('{"audio": "clips/missing.wav", "text": "x"}\n')
    with pytest.raises(FileNotFoundError, match="missing.wav not found"):
        list(asr.load_jsonl_manifest(manifest))


def test_instruction_placement_is_seeded_and_varied():
    audio = {"type": "audio", "path": "/x.wav", "transcript": "hi"}
    records = [asr.asr_record(f"id-{i}", audio, "hi", "en", seed=0) for i in range(200)]
    first_is_audio = [r["messages"][0]["content"][0]["type"] == "audio" for r in records]
    assert 60 < sum(first_is_audio) < 140  # both placements occur
    instructions = {next(p["text"] for p in r["messages"][0]["content"] if p["type"] == "text") for r in records}
    assert len(instructions) >= 8
    assert [asr.asr_record(f"id-{i}", audio, "hi", "en", seed=0) for i in range(200)] == records
    assert [asr.asr_record(f"id-{i}", audio, "hi", "en", seed=1) for i in range(200)] != records
    with pytest.raises(ValueError, match="no ASR instructions for language 'fr'"):
        asr.asr_record("x", audio, "salut", "fr")
