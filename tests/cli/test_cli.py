import os
import subprocess
import sys

import pytest
import soundfile

from tiny_llasm import tone


def llasm(*args: str, stdin: str | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "modeling_llasm.cli", *args], capture_output=True, text=True, input=stdin, timeout=300,
        env={**os.environ, **(env or {})},
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


def test_interactive_turns_answer_as_a_full_prefill_would(tiny_llasm, tmp_path):
    """`llasm chat -i` keeps a conversation cache between turns; its answers equal a fresh pipeline's on the
    whole conversation with no cache at all. `--dtype bfloat16` runs the same session."""
    from modeling_llasm import LlasmChatPipeline

    model, processor = tiny_llasm
    model.save_pretrained(tmp_path / "m")
    processor.save_pretrained(tmp_path / "m")
    clip = tmp_path / "q.wav"
    soundfile.write(clip, tone(1.0), 16000)
    stdin = f"hello\n/audio {clip} what is this\nand now?\n/quit\n"
    session = llasm("chat", str(tmp_path / "m"), "--interactive", "--max-new-tokens", "5", stdin=stdin)
    assert session.returncode == 0, session.stderr[-2000:]
    answers = [part.split("\nyou> ")[0].strip() for part in session.stdout.split("llasm> ")[1:]]
    chat = LlasmChatPipeline(model=model, processor=processor)
    messages, expected = [], []
    for turn in ({"role": "user", "content": "hello"},
                 {"role": "user", "content": [{"type": "audio", "path": str(clip)}, {"type": "text", "text": "what is this"}]},
                 {"role": "user", "content": "and now?"}):  # fmt: skip
        messages.append(turn)
        expected.append(chat(messages, prefix_cache=False, max_new_tokens=5, do_sample=False)["generated_text"])
        messages.append({"role": "assistant", "content": expected[-1]})
    assert answers == expected
    bf16 = llasm("chat", str(tmp_path / "m"), "--interactive", "--max-new-tokens", "5", "--dtype", "bfloat16", stdin=stdin)
    assert bf16.returncode == 0 and bf16.stdout.count("llasm> ") == 3, bf16.stderr[-2000:]


@pytest.mark.parametrize("fast", ["1", "0"])
def test_chat_answers_in_bfloat16_by_default_where_bf16_is_faster(tiny_llasm, tmp_path, fast):
    """`--dtype auto` (the default) says what it chose and why; the answer is the pipeline's in that dtype. Both
    machines are forced (LLASM_FAST_BF16), so this test takes the same path on every CPU."""
    import torch

    from modeling_llasm import LlasmChatPipeline

    model, processor = tiny_llasm
    model.save_pretrained(tmp_path / "m")
    processor.save_pretrained(tmp_path / "m")
    result = llasm("chat", str(tmp_path / "m"), "--text", "hello", "--max-new-tokens", "5", env={"LLASM_FAST_BF16": fast})
    assert result.returncode == 0, result.stderr[-2000:]
    dtype = "bfloat16" if fast == "1" else "float32"
    assert f"dtype {dtype} (auto: bf16 is {'faster' if fast == '1' else 'not faster'} than float32 on cpu here)" in result.stderr
    chat = LlasmChatPipeline(model=model.to(getattr(torch, dtype)), processor=processor)
    expected = chat([{"role": "user", "content": "hello"}], max_new_tokens=5, do_sample=False)["generated_text"]
    assert result.stdout.strip() == expected.strip()


def test_chat_and_eval_load_straight_into_the_asked_dtype(tiny_llasm, tmp_path):
    """`--dtype bfloat16` loads the weights cast (no float32 model first): the same tensors as a float32 load cast
    afterwards, buffers included."""
    import torch

    from modeling_llasm.cli.chat import load_chat_pipeline
    from modeling_llasm.cli.eval import load_in_dtype

    model, processor = tiny_llasm
    model.save_pretrained(tmp_path / "m")
    processor.save_pretrained(tmp_path / "m")
    expected = type(model).from_pretrained(tmp_path / "m", dtype=torch.float32).to(torch.bfloat16).state_dict()
    for loaded in (load_chat_pipeline(str(tmp_path / "m"), dtype="bfloat16").model, load_in_dtype(tmp_path / "m", "bfloat16")[0]):
        state = loaded.state_dict()
        assert state.keys() == expected.keys()
        for name, tensor in expected.items():
            assert state[name].dtype == tensor.dtype and torch.equal(state[name], tensor), name
        assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}


def test_chat_transcribe_prints_each_clips_transcription_request_answer(tiny_llasm, tmp_path):
    """`llasm chat --transcribe` answers `processor.transcription_conversation(clip)` for each --audio file, in order."""
    from modeling_llasm import LlasmChatPipeline

    model, processor = tiny_llasm
    model.save_pretrained(tmp_path / "m")
    processor.save_pretrained(tmp_path / "m")
    clips = [tmp_path / "a.wav", tmp_path / "b.wav"]
    soundfile.write(clips[0], tone(1.0), 16000)
    soundfile.write(clips[1], tone(0.5, freq=700.0), 16000)
    result = llasm("chat", str(tmp_path / "m"), "--transcribe", "--audio", str(clips[0]), "--audio", str(clips[1]), "--max-new-tokens", "5")
    assert result.returncode == 0, result.stderr[-2000:]
    chat = LlasmChatPipeline(model=model, processor=processor)
    expected = [chat(processor.transcription_conversation(str(c)), max_new_tokens=5, do_sample=False)["generated_text"] for c in clips]
    assert result.stdout.splitlines() == [e.strip() for e in expected]
    refused = llasm("chat", str(tmp_path / "m"), "--transcribe", "--audio", str(clips[0]), "--text", "hi")
    assert refused.returncode != 0 and "give only --audio files" in refused.stderr


def test_eval_noise_conditions_are_checked_before_any_work(tmp_path):
    alone = llasm("eval", str(tmp_path), "--noise", "white:10")
    assert alone.returncode != 0 and "--noise goes with --understanding" in alone.stderr
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("")
    bad = llasm("eval", str(tmp_path), "--understanding", "--data", str(manifest), "--noise", "white:10,pink:0")
    assert bad.returncode != 0 and "llasm eval --noise: noise condition 'pink:0'" in bad.stderr
