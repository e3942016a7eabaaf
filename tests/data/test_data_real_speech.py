"""Real recorded speech from Debian's pocketsphinx-testdata (fetched with apt-get download when not installed)."""

import shutil

import pytest
import soundfile as sf

from modeling_llasm.data.real_speech import pocketsphinx_testdata


@pytest.mark.skipif(shutil.which("apt-get") is None, reason="needs apt-get (Debian) to fetch pocketsphinx-testdata")
def test_pocketsphinx_recordings_with_transcripts(tmp_path_factory):
    try:
        clips = pocketsphinx_testdata()
    except FileNotFoundError as e:  # no package index reachable: say so rather than fail
        pytest.skip(str(e))
    assert len(clips) == 10 and {c["set"] for c in clips} == {"cards", "librivox"}
    by_id = {c["id"]: c for c in clips}
    assert by_id["004"]["text"] == "five five"
    assert by_id["sense_and_sensibility_01_austen_64kb-0880"]["text"] == "he was not an ill disposed young man"
    for clip in clips:
        info = sf.info(clip["path"])
        assert (info.samplerate, info.channels) == (16000, 1) and 1.0 < info.duration < 8.0


def test_missing_without_download_is_a_clear_error(tmp_path, monkeypatch):
    import modeling_llasm.data.real_speech as rs

    monkeypatch.setattr(rs, "_SYSTEM_DIR", tmp_path / "not-installed")
    with pytest.raises(FileNotFoundError, match="pocketsphinx-testdata is neither installed nor in"):
        pocketsphinx_testdata(tmp_path / "cache", download=False)
