import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import soundfile as sf
from data_helpers import needs_espeak, sharegpt_conversations

from modeling_llasm.data import builder
from modeling_llasm.data.chat import read_manifest


pytestmark = [pytest.mark.tts, needs_espeak]

EN_VOICES = ["espeak-ng:en-us", "espeak-ng:en-gb+f2", "espeak-ng:en-029+m3"]
ZH_VOICES = ["espeak-ng:cmn", "espeak-ng:cmn+f2"]
VOICES = {"en": EN_VOICES, "zh": ZH_VOICES}


def _config(seed=0, **kwargs):
    return builder.BuildConfig(seed=seed, voices=VOICES, **kwargs)


def _manifest_lines(out: Path) -> list[dict]:
    path = out / "manifest.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] if path.exists() else []


def _audio_files(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted((out / "audio").rglob("*.wav"))}


def test_build_twenty_conversations(tmp_path, write_jsonl):
    src = write_jsonl("chats.jsonl", sharegpt_conversations(20))
    report = builder.build_from_files([src], tmp_path / "out", config=_config(), num_workers=2, progress=False)
    assert report.written == 20 and report.utterances == 40 and not report.skipped
    records = list(read_manifest(tmp_path / "out" / "manifest.jsonl"))
    assert [r["id"] for r in records] == [f"chats-{i:07d}" for i in range(20)]
    raw = _manifest_lines(tmp_path / "out")
    for record, line in zip(records, raw):
        assert [m["role"] for m in record["messages"]] == ["user", "assistant", "user", "assistant"]
        for k, (message, raw_message) in enumerate(zip(record["messages"], line["messages"])):
            (part,) = message["content"]
            if message["role"] == "assistant":
                assert part["type"] == "text"
                continue
            assert part["type"] == "audio" and not Path(raw_message["content"][0]["path"]).is_absolute()
            audio, sr = sf.read(part["path"], dtype="float32")
            info = sf.info(part["path"])
            assert sr == 16000 and info.channels == 1 and audio.ndim == 1 and info.subtype == "PCM_16"
            seconds = audio.size / sr
            assert seconds == pytest.approx(part["duration"], abs=1e-3)
            text = part["transcript"]
            if record["language"] == "zh":
                assert part["voice"] in ZH_VOICES
                chars = sum(1 for c in text if "\u4e00" <= c <= "\u9fff")
                assert 0.1 * chars < seconds < 0.6 * chars, (text, seconds)
            else:
                assert part["voice"] in EN_VOICES
                words = len(text.split())
                assert 0.15 * words < seconds < 1.0 * words, (text, seconds)
            assert part["rate"] in builder.DEFAULT_RATES
    assert {r["messages"][0]["content"][0]["voice"] for r in records} >= {*EN_VOICES[:2]}  # voices rotate
    assert sum(r["language"] == "zh" for r in records) == 4


def test_bad_text_is_skipped_with_a_reason_never_a_crash(tmp_path, write_jsonl):
    humans = {
        "ok": "What is the tallest mountain in the world?",
        "dash": "-v en-us --help",  # would be options if passed on a command line
        "empty": "   ",
        "punctuation": "?!...!!",
        "long": "word " * 300,
        "code": "Fix this:\n```\nx = 1\n```",
    }
    records = [{"conversations": [{"from": "human", "value": v}, {"from": "gpt", "value": "ok"}]} for v in humans.values()]
    # a punctuation-only turn inside an English chat passes the filters and reaches the TTS guard
    records[3]["conversations"][:0] = [{"from": "human", "value": "Hello there, my friend."}, {"from": "gpt", "value": "Hi"}]
    src = write_jsonl("bad.jsonl", records)
    report = builder.build_from_files([src], tmp_path / "out", config=_config(), num_workers=1, progress=False)
    built = {r["id"]: r for r in _manifest_lines(tmp_path / "out")}
    assert sorted(built) == ["bad-0000000", "bad-0000001"]  # "ok" and the leading-dash text are spoken
    assert built["bad-0000001"]["messages"][0]["content"][0]["duration"] > 0.5
    skipped = {r["id"]: r["reason"] for r in map(json.loads, (tmp_path / "out" / "skipped.jsonl").read_text().splitlines())}
    assert skipped["bad-0000002"].startswith("bad_format: turn 0 (user) is empty")
    assert skipped["bad-0000003"].startswith("tts_no_speakable_characters")
    assert skipped["bad-0000004"].startswith("human_turn_too_long")
    assert skipped["bad-0000005"].startswith("code_in_user_turn")
    assert sum(report.skipped.values()) == 4
    assert len(_audio_files(tmp_path / "out")) == 2  # no audio file for anything skipped (not even bad-3's first turn)

    # without filters the long text reaches the engine and the audio-length guard
    report = builder.build_from_files(
        [src], tmp_path / "nofilter", config=_config(filters=None, max_audio_seconds=20.0), num_workers=1, progress=False
    )
    skipped = {r["id"]: r["reason"] for r in map(json.loads, (tmp_path / "nofilter" / "skipped.jsonl").read_text().splitlines())}
    assert skipped["bad-0000004"].startswith("audio_too_long")
    assert "bad-0000005" not in skipped


def test_deterministic_given_seed(tmp_path, write_jsonl):
    src = write_jsonl("chats.jsonl", sharegpt_conversations(8))
    builder.build_from_files([src], tmp_path / "a", config=_config(seed=5), num_workers=2, progress=False)
    builder.build_from_files([src], tmp_path / "b", config=_config(seed=5), num_workers=1, progress=False)
    builder.build_from_files([src], tmp_path / "c", config=_config(seed=6), num_workers=2, progress=False)
    a, b, c = (_manifest_lines(tmp_path / d) for d in "abc")
    assert a == b and _audio_files(tmp_path / "a") == _audio_files(tmp_path / "b")
    voices = lambda lines: [p["voice"] for r in lines for m in r["messages"] for p in m["content"] if p["type"] == "audio"]  # noqa: E731
    assert voices(a) != voices(c)


def test_resume_repairs_torn_line_and_damaged_audio(tmp_path, write_jsonl):
    src = write_jsonl("chats.jsonl", sharegpt_conversations(6))
    out = tmp_path / "out"
    builder.build_from_files([src], out, config=_config(), num_workers=1, progress=False)
    lines = (out / "manifest.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    damaged = out / lines[1].split('"path": "')[1].split('"')[0]
    damaged.write_bytes(damaged.read_bytes()[:100])  # truncated wav
    # keep 3 complete lines and half of the 4th (torn write)
    (out / "manifest.jsonl").write_text("".join(lines[:3]) + lines[3][: len(lines[3]) // 2], encoding="utf-8")
    (out / "audio" / "zz").mkdir()
    (out / "audio" / "zz" / "leftover.wav.tmp-123").write_bytes(b"partial")
    report = builder.build_from_files([src], out, config=_config(), num_workers=1, progress=False)
    assert report.already_done == 2 and report.written == 4  # record 1 (damaged) and 3..5 redone
    final = _manifest_lines(out)
    assert sorted(r["id"] for r in final) == [f"chats-{i:07d}" for i in range(6)]
    assert sf.info(str(damaged)).frames > 1000
    assert not list((out / "audio").rglob("*.tmp-*"))


def test_resume_retries_records_skipped_by_an_engine_timeout(tmp_path, write_jsonl):
    src = write_jsonl("chats.jsonl", sharegpt_conversations(4))
    out = tmp_path / "out"
    builder.build_from_files([src], out, config=_config(), num_workers=1, progress=False)
    lines = (out / "manifest.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    # as if record 1 had hit a TTS timeout and record 2 were really unspeakable
    (out / "manifest.jsonl").write_text(lines[0] + lines[3], encoding="utf-8")
    timeout = {"id": "chats-0000001", "reason": "tts_engine_timeout (espeak-ng:en-us: took more than 30 s)"}
    permanent = {"id": "chats-0000002", "reason": "tts_no_speakable_characters"}
    (out / "skipped.jsonl").write_text(json.dumps(timeout) + "\n" + json.dumps(permanent) + "\n", encoding="utf-8")
    report = builder.build_from_files([src], out, config=_config(), num_workers=1, progress=False)
    assert report.written == 1 and report.already_done == 3
    assert sorted(r["id"] for r in _manifest_lines(out)) == ["chats-0000000", "chats-0000001", "chats-0000003"]


def test_resume_refuses_other_settings(tmp_path, write_jsonl):
    src = write_jsonl("chats.jsonl", sharegpt_conversations(2))
    builder.build_from_files([src], tmp_path / "out", config=_config(seed=1), num_workers=1, progress=False)
    with pytest.raises(builder.BuildConfigMismatch, match=r"seed: was 1, now 2"):
        builder.build_from_files([src], tmp_path / "out", config=_config(seed=2), num_workers=1, progress=False)
    report = builder.build_from_files([src], tmp_path / "out", config=_config(seed=2), num_workers=1, progress=False, overwrite=True)
    assert report.written == 2


def test_unusable_voice_fails_early(tmp_path, write_jsonl):
    src = write_jsonl("chats.jsonl", sharegpt_conversations(1))
    with pytest.raises(ValueError, match="espeak-ng:xx-nowhere"):
        builder.build_from_files([src], tmp_path / "out", config=builder.BuildConfig(voices={"en": ["espeak-ng:xx-nowhere"]}))


def test_kill_and_resume(tmp_path, write_jsonl):
    """SIGKILL the CLI builder (and its workers) midway; a rerun completes without redoing finished records."""
    n = 80
    src = write_jsonl("chats.jsonl", sharegpt_conversations(n))
    out = tmp_path / "out"
    argv = [str(src), "-o", str(out), "--workers", "2", "--no-progress", "--voices-en", ",".join(EN_VOICES),
            "--voices-zh", ",".join(ZH_VOICES)]  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-m", "modeling_llasm.cli.build_data", *argv],
                            start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    manifest = out / "manifest.jsonl"
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if manifest.exists() and manifest.read_bytes().count(b"\n") >= 10:
                break
            time.sleep(0.005)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        output = proc.communicate()[0].decode(errors="replace")
    assert proc.returncode == -signal.SIGKILL, f"the builder ended by itself before the kill:\n{output[-2000:]}"
    before = [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines(keepends=True) if line.endswith("\n")]
    assert 10 <= len(before) < n, len(before)
    stamps = {}
    for record in before:
        for m in record["messages"]:
            for p in m["content"]:
                if p["type"] == "audio":
                    st = (out / p["path"]).stat()
                    stamps[p["path"]] = (st.st_mtime_ns, st.st_ino)

    from modeling_llasm.cli.build_data import main

    assert main(argv) == 0
    after = _manifest_lines(out)
    ids = [r["id"] for r in after]
    assert len(ids) == len(set(ids)) == n and set(ids) == {f"chats-{i:07d}" for i in range(n)}
    assert after[: len(before)] == before  # finished records kept as they were
    for record in after:
        for m in record["messages"]:
            for p in m["content"]:
                if p["type"] == "audio":
                    info = sf.info(str(out / p["path"]))
                    assert info.samplerate == 16000 and info.channels == 1
                    assert info.frames / 16000 == pytest.approx(p["duration"], abs=1e-3)
    for path, stamp in stamps.items():  # not redone
        st = (out / path).stat()
        assert (st.st_mtime_ns, st.st_ino) == stamp, path
    assert not list((out / "audio").rglob("*.tmp-*"))
    assert not (out / "skipped.jsonl").read_text()


def test_seed_text_voices_only_the_subsets_asked(tmp_path):
    """A recipe that trains nothing voices the held-out sets alone: the same split as a full build, nothing else."""
    from modeling_llasm.data.text_sources import seed_text_split

    reports = builder.build_seed_text(tmp_path / "out", counts={"en": 40}, heldout_fraction=0.1, subsets=("stage1/heldout",),
                                      num_workers=1, progress=False)  # fmt: skip
    assert list(reports) == ["stage1/heldout"]
    assert not (tmp_path / "out" / "stage1" / "train").exists() and not (tmp_path / "out" / "stage2").exists()
    split = seed_text_split({"en": 40}, heldout_fraction=0.1, question_heldout_fraction=0.1, seed=0)
    voiced = [r["messages"][1]["content"][0]["text"] for r in read_manifest(tmp_path / "out" / "stage1" / "heldout" / "manifest.jsonl")]
    assert voiced == [u.text for u in split.heldout] and len(voiced) == 4
    with pytest.raises(ValueError, match=r"unknown subsets \['stage3/train'\]"):
        builder.build_seed_text(tmp_path / "bad", counts={"en": 40}, subsets=("stage3/train",))
