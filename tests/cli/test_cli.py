import subprocess
import sys

import soundfile

from tiny_llasm import tone


def llasm(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "modeling_llasm.cli", *args], capture_output=True, text=True, input=stdin, timeout=300
    )


def test_help_lists_the_commands():
    result = llasm("--help")
    assert result.returncode == 0
    for command in ("build-base", "chat"):
        assert command in result.stdout


def test_unknown_command_is_an_error():
    result = llasm("fly")
    assert result.returncode != 0 and "unknown command 'fly'" in result.stderr


def test_chat_once_and_interactive(tiny_llasm, tmp_path):
    model, processor = tiny_llasm
    model.save_pretrained(tmp_path / "m")
    processor.save_pretrained(tmp_path / "m")
    clip = tmp_path / "q.wav"
    soundfile.write(clip, tone(1.0), 16000)
    once = llasm("chat", str(tmp_path / "m"), "--audio", str(clip), "--text", "transcribe the speech", "--max-new-tokens", "5")
    assert once.returncode == 0, once.stderr[-2000:]
    assert once.stdout.strip()  # the streamed answer
    session = llasm(
        "chat", str(tmp_path / "m"), "--interactive", "--max-new-tokens", "4",
        stdin=f"hello\n/audio {clip} what is this\n/audio /no/such.wav\n/quit\n",
    )
    assert session.returncode == 0, session.stderr[-2000:]
    assert session.stdout.count("llasm> ") == 2
    assert "audio file not found: /no/such.wav" in session.stderr
    missing = llasm("chat", str(tmp_path / "m"), "--audio", "/no/such.wav")
    assert missing.returncode != 0 and "audio file not found" in missing.stderr
