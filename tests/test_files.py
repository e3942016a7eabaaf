"""modeling_llasm.files: crash-safe writes and appendable JSONL."""

import json

import pytest

from modeling_llasm.files import atomic_write_json, read_appendable_jsonl


def test_atomic_write_json_leaves_no_temporary_file(tmp_path):
    path = atomic_write_json(tmp_path / "sub" / "done.json", {"steps": 3, "name": "é"})
    assert json.loads(path.read_text(encoding="utf-8")) == {"steps": 3, "name": "é"}
    assert [p.name for p in path.parent.iterdir()] == ["done.json"]


def test_torn_last_line_is_cut_and_corruption_elsewhere_is_an_error(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text('{"id": 1}\n{"id": 2}\n{"id": 3, "tex', encoding="utf-8")
    assert read_appendable_jsonl(path) == [{"id": 1}, {"id": 2}]
    assert path.read_text(encoding="utf-8") == '{"id": 1}\n{"id": 2}\n'  # ready to append to
    path.write_text('{"id": 1}\n{"id": \n{"id": 3}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"log.jsonl:2: corrupt line in the middle of the file"):
        read_appendable_jsonl(path)
    assert read_appendable_jsonl(tmp_path / "missing.jsonl") == []
