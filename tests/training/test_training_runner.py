"""training.runner helpers: resumable stage-2 target generation, unfinished answers, resume arguments."""

from __future__ import annotations

import json
import logging

import pytest
import soundfile as sf
from llasm_training_fixtures import audio_item

from modeling_llasm.training import runner


def question(i: int, directory) -> dict:
    item = audio_item(0.3, i, "hello world")
    path = directory / f"q-{i}.wav"
    sf.write(path, item.pop("array"), item.pop("sampling_rate"))
    return {"id": f"q-{i}", "messages": [{"role": "user", "content": [{**item, "path": str(path)}]}]}


def answered(text: str, finished: bool) -> dict:
    return {"id": "a", "finished": finished, "messages": [{"role": "user", "content": "hi"},
                                                          {"role": "assistant", "content": [{"type": "text", "text": text}]}]}  # fmt: skip


def test_generate_responses_resumes_after_a_torn_line_and_refuses_another_model(tiny_llasm, tmp_path):
    model, processor = tiny_llasm
    out = tmp_path / "responses.jsonl"
    questions = [question(i, tmp_path) for i in range(3)]
    with pytest.raises(ValueError, match="record 'q-array': audio parts need a 'path'"):
        in_memory = {"id": "q-array", "messages": [{"role": "user", "content": [audio_item(0.3)]}]}
        runner.generate_responses(model, processor, [in_memory], tmp_path / "other.jsonl", progress=False)
    first = runner.generate_responses(model, processor, questions[:2], out, max_new_tokens=4, progress=False)
    assert [r["id"] for r in first] == ["q-0", "q-1"]
    lines = out.read_text(encoding="utf-8").splitlines(keepends=True)
    out.write_text(lines[0] + lines[1][:20], encoding="utf-8")  # killed while writing the second answer
    again = runner.generate_responses(model, processor, questions, out, max_new_tokens=4, progress=False)
    assert [r["id"] for r in again] == ["q-0", "q-1", "q-2"]
    assert [json.loads(line)["id"] for line in out.read_text(encoding="utf-8").splitlines()] == ["q-0", "q-1", "q-2"]
    assert again[1] == first[1]  # regenerated identically (greedy), not glued onto the torn fragment
    with pytest.raises(ValueError, match="answers generated with .*max_new_tokens.: 4"):
        runner.generate_responses(model, processor, questions[:1], out, max_new_tokens=8, progress=False)


def test_unfinished_answers_are_cut_at_a_sentence_or_dropped_and_counted(caplog):
    records = [answered("Paris is the capital. It has", False), answered("no full sentence here", False), answered("Done.", True)]
    with caplog.at_level(logging.WARNING, logger=runner.logger.name):
        kept = runner.usable_responses(records, where="answers.jsonl")
    assert [r["messages"][-1]["content"][0]["text"] for r in kept] == ["Paris is the capital.", "Done."]
    assert all("finished" not in r for r in kept)
    assert "answers.jsonl: 2 of 3 answers hit max_new_tokens: 1 cut at their last full sentence, 1 dropped" in caplog.text


def test_resolve_resume_arguments(tmp_path):
    (tmp_path / "checkpoint-3").mkdir()
    (tmp_path / "checkpoint-3" / "trainer_state.json").write_text("{}")
    assert runner.resolve_resume("last", tmp_path) == runner.resolve_resume(True, tmp_path) == str(tmp_path / "checkpoint-3")
    assert runner.resolve_resume("none", tmp_path) is runner.resolve_resume(None, tmp_path) is runner.resolve_resume(False, tmp_path) is None
    assert runner.resolve_resume("/some/checkpoint-9", tmp_path) == "/some/checkpoint-9"
