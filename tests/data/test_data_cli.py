import json

import pytest
from data_helpers import needs_espeak, sharegpt_conversations

from modeling_llasm.cli.build_data import main


def _lines(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _voices(records):
    return {p["voice"] for r in records for m in r["messages"] for p in m["content"] if p["type"] == "audio"}


def test_needs_inputs_or_seed_text(capsys, tmp_path):
    assert main(["-o", str(tmp_path)]) == 2
    assert "exactly one of them" in capsys.readouterr().err
    assert main([str(tmp_path / "missing.jsonl"), "-o", str(tmp_path / "o")]) == 2
    assert "missing.jsonl not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--seed-text", "--utterances", "en:10"])


@pytest.mark.tts
@needs_espeak
def test_seed_text_build(tmp_path, capsys):
    out = tmp_path / "seed"
    argv = ["--seed-text", "--utterances", "en=60,zh=20", "--heldout-fraction", "0.1", "-o", str(out), "--workers", "2", "--no-progress"]
    assert main(argv) == 0
    stage1_train, stage1_held = _lines(out / "stage1/train/manifest.jsonl"), _lines(out / "stage1/heldout/manifest.jsonl")
    stage2_train, stage2_held = _lines(out / "stage2/train/manifest.jsonl"), _lines(out / "stage2/heldout/manifest.jsonl")
    assert len(stage1_train) == 72 and len(stage1_held) == 8
    assert len(stage2_train) + len(stage2_held) >= 200 and stage2_held
    for r in stage1_train + stage1_held:
        assert r["task"] == "asr" and [m["role"] for m in r["messages"]] == ["user", "assistant"]
        audio = next(p for p in r["messages"][0]["content"] if p["type"] == "audio")
        assert r["messages"][1]["content"][0]["text"] == audio["transcript"]
    for r in stage2_train + stage2_held:
        assert r["task"] == "spoken_question" and [m["role"] for m in r["messages"]] == ["user"]
    texts = lambda rs: {p["transcript"] for r in rs for m in r["messages"] for p in m["content"] if p["type"] == "audio"}  # noqa: E731
    assert not texts(stage1_train) & texts(stage1_held) and not texts(stage2_train) & texts(stage2_held)
    assert not (_voices(stage1_train) | _voices(stage2_train)) & (_voices(stage1_held) | _voices(stage2_held))
    assert "espeak-ng:en-us+m5" not in _voices(stage1_train + stage2_train)
    assert capsys.readouterr().out.count("records written") == 4
    # rerun: everything is already done
    assert main(argv) == 0
    assert "0 records written, 72 already done" in capsys.readouterr().out


@pytest.mark.tts
@needs_espeak
def test_files_build_with_limit_and_options(tmp_path, write_jsonl, capsys):
    src = write_jsonl("chats.jsonl", sharegpt_conversations(10))
    out = tmp_path / "out"
    argv = [str(src), "-o", str(out), "--limit", "5", "--languages", "en", "--voices-en", "espeak-ng:en-us,espeak-ng:en-us+f3",
            "--rates", "1.0,1.1", "--workers", "1", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    records = _lines(out / "manifest.jsonl")
    assert [r["id"] for r in records] == [f"chats-{i:07d}" for i in range(4)]  # record 4 is Mandarin: filtered out
    assert _lines(out / "skipped.jsonl") == [{"id": "chats-0000004", "reason": "language_zh_not_in_en"}]
    assert _voices(records) <= {"espeak-ng:en-us", "espeak-ng:en-us+f3"}
    assert {p["rate"] for r in records for m in r["messages"] for p in m["content"] if p["type"] == "audio"} <= {1.0, 1.1}
    argv[argv.index("1.0,1.1")] = "1.2"
    assert main(argv) == 2
    assert "rates: was [1.0, 1.1], now [1.2]" in capsys.readouterr().err


@needs_espeak
def test_list_voices(capsys):
    assert main(["--list-voices", "--engines", "espeak-ng"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "en\tespeak-ng:en-us" in lines and "zh\tespeak-ng:cmn" in lines
