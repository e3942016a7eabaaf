"""Files split across PyPI packages (the bilingual base's Whisper and LLM) are assembled once and pinned by sha256."""

import hashlib

import pytest

from modeling_llasm.conversion.ctranslate2_whisper import assemble_split_file


def test_parts_are_assembled_once_and_checked(tmp_path):
    parts = [tmp_path / "a.part", tmp_path / "b.part"]
    parts[0].write_bytes(b"hello ")
    parts[1].write_bytes(b"world")
    whole = b"hello world"
    target = tmp_path / "out" / "model.bin"
    assert assemble_split_file(parts, target, len(whole), hashlib.sha256(whole).hexdigest(), "pkg-a pkg-b") == target
    assert target.read_bytes() == whole
    parts[0].write_bytes(b"HELLO ")  # an existing assembly of the right size is kept, not re-read
    assert assemble_split_file(parts, target, len(whole), hashlib.sha256(whole).hexdigest(), "pkg-a pkg-b").read_bytes() == whole


def test_a_wrong_or_missing_part_is_an_error_that_leaves_nothing(tmp_path):
    parts = [tmp_path / "a.part", tmp_path / "b.part"]
    parts[0].write_bytes(b"hello ")
    parts[1].write_bytes(b"there")
    target = tmp_path / "model.bin"
    expected = hashlib.sha256(b"hello world").hexdigest()
    with pytest.raises(ValueError, match=f"expected 11 bytes with sha256 {expected}, got 11 bytes with sha256"):
        assemble_split_file(parts, target, 11, expected, "pkg-a pkg-b")
    assert not target.exists() and not (tmp_path / "model.bin.partial").exists()
    parts[1].unlink()
    with pytest.raises(FileNotFoundError, match="b.part is missing; reinstall pkg-a pkg-b"):
        assemble_split_file(parts, target, 11, expected, "pkg-a pkg-b")
