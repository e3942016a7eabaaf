"""The web demo's logic without a browser: conversation state, clearing, model notices, default model choice."""

import json
import os

import pytest
import soundfile

from tiny_llasm import tone

from modeling_llasm.cli import main as llasm_main
from modeling_llasm.demo import (
    EMPTY_ANSWER,
    chatbot_messages,
    default_demo_model,
    describe_model,
    stream_answer,
    user_message,
)
from modeling_llasm.serving.models import newest_recipe_model


class FakeChat:
    """Stands in for the `llasm-chat` pipeline: streams fixed pieces and records what it was asked."""

    def __init__(self, *answers: list[str]):
        self.answers = list(answers)
        self.calls = []

    def __call__(self, messages, stream=False, **generation):
        assert stream
        self.calls.append(([dict(m) for m in messages], generation))
        return iter(self.answers.pop(0))


def run_turn(chat, conversation, audio=None, text=None, **generation):
    updates = list(stream_answer(chat, conversation, audio, text, **generation))
    return updates, updates[-1][0]


def test_user_message_orders_audio_before_text_and_needs_something():
    assert user_message("q.wav", "  answer briefly ") == {
        "role": "user",
        "content": [{"type": "audio", "path": "q.wav"}, {"type": "text", "text": "answer briefly"}],
    }
    assert user_message(None, "hi")["content"] == [{"type": "text", "text": "hi"}]
    with pytest.raises(ValueError, match="Record or upload"):
        user_message(None, "   ")


def test_answer_streams_and_turns_accumulate_with_their_audio():
    chat = FakeChat(["Par", "is", "."], ["It is ", "big."])
    updates, conversation = run_turn(chat, [], audio="first.wav", max_new_tokens=7)
    # first the user turn alone, then the growing answer, then the finished conversation
    assert updates[0][1] == [{"role": "user", "content": {"path": "first.wav", "mime_type": "audio/wav"}}]
    assert [view[-1]["content"] for _, view in updates[1:4]] == ["Par", "Paris", "Paris."]
    assert conversation[-1] == {"role": "assistant", "content": "Paris."}
    assert chat.calls[0][1] == {"max_new_tokens": 7}

    _, conversation = run_turn(chat, conversation, audio="second.wav", text="and its size?")
    sent, _ = chat.calls[1]
    # the model saw the earlier clip and answer too, not just the new turn
    assert sent[0]["content"] == [{"type": "audio", "path": "first.wav"}]
    assert sent[1] == {"role": "assistant", "content": "Paris."}
    assert sent[2]["content"] == [{"type": "audio", "path": "second.wav"}, {"type": "text", "text": "and its size?"}]
    assert len(conversation) == 4 and conversation[-1]["content"] == "It is big."
    assert [m["role"] for m in chatbot_messages(conversation)] == ["user", "assistant", "user", "user", "assistant"]


def test_the_callers_conversation_is_not_changed():
    conversation = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    before = json.dumps(conversation)
    run_turn(FakeChat(["ok"]), conversation, text="again")
    assert json.dumps(conversation) == before


def test_empty_answer_is_shown_but_not_fed_back():
    _, conversation = run_turn(FakeChat([" "]), [], text="hello")
    assert conversation[-1] == {"role": "assistant", "content": ""}
    assert chatbot_messages(conversation)[-1] == {"role": "assistant", "content": EMPTY_ANSWER}


def test_system_prompt_is_not_shown():
    view = chatbot_messages([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}])
    assert view == [{"role": "user", "content": "hi"}]


def test_real_pipeline_streams_two_turns(tiny_llasm, tmp_path):
    from modeling_llasm.cli.chat import load_chat_pipeline

    model, processor = tiny_llasm
    model.save_pretrained(tmp_path / "m")
    processor.save_pretrained(tmp_path / "m")
    clip = tmp_path / "q.wav"
    soundfile.write(clip, tone(1.0), 16000)
    chat = load_chat_pipeline(str(tmp_path / "m"))
    updates, conversation = run_turn(chat, [], audio=str(clip), max_new_tokens=4, do_sample=False)
    assert len(updates) >= 3  # user turn, at least one piece, the end
    _, conversation = run_turn(chat, conversation, text="say more", max_new_tokens=4, do_sample=False)
    assert [m["role"] for m in conversation] == ["user", "assistant", "user", "assistant"]
    assert conversation[0]["content"][0] == {"type": "audio", "path": str(clip)}


def write_run(cache, name, finished=True, mtime=None, **summary):
    run = cache / "runs" / name
    (run / "final").mkdir(parents=True)
    (run / "final" / "config.json").write_text("{}")
    if finished:
        (run / "summary.json").write_text(json.dumps(summary))
        if mtime is not None:
            os.utime(run / "summary.json", (mtime, mtime))
    return run / "final"


def test_newest_finished_run_is_the_default(tmp_path, monkeypatch):
    monkeypatch.setenv("LLASM_CACHE", str(tmp_path))
    assert newest_recipe_model() is None
    older = write_run(tmp_path, "older", mtime=1_000_000)
    write_run(tmp_path, "unfinished", finished=False)  # final/ saved, summary not written yet
    assert newest_recipe_model() == older
    newer = write_run(tmp_path, "newer", mtime=2_000_000)
    assert newest_recipe_model() == newer
    assert default_demo_model() == newer


def test_without_a_finished_run_the_default_is_the_embedded_base(tmp_path, monkeypatch):
    monkeypatch.setenv("LLASM_CACHE", str(tmp_path))
    write_run(tmp_path, "unfinished", finished=False)
    # the embedded base, as `llasm serve` chooses it (built when missing: here it counts as built)
    monkeypatch.setattr("modeling_llasm.conversion.build_base.default_base_dir", lambda: tmp_path / "llasm-tiny-base")
    monkeypatch.setattr("modeling_llasm.conversion.build_base.is_built", lambda path, *recipe: True)
    assert default_demo_model() == tmp_path / "llasm-tiny-base"


def test_notices_tell_base_trained_and_unknown_apart(tmp_path):
    from modeling_llasm.conversion.build_base import BUILD_MANIFEST

    base = tmp_path / "my-base"
    base.mkdir()
    (base / BUILD_MANIFEST).write_text("{}")
    (base / "config.json").write_text('{"adaptor_type": "stack_mlp"}')
    for directory in (base, tmp_path / "llasm-tiny-base-stack_mlp-s8"):
        info = describe_model(directory)
        assert info.kind == "base"
        assert "untrained base" in info.notice and "llasm train" in info.notice
    reader = tmp_path / "llasm-tiny-base"
    reader.mkdir()
    (reader / BUILD_MANIFEST).write_text("{}")
    (reader / "config.json").write_text('{"adaptor_type": "whisper_reader"}')
    info = describe_model(reader)
    assert info.kind == "base" and "needs no training" in info.notice and "untrained" not in info.notice

    final = write_run(tmp_path, "tiny", adaptor_type="whisper_reader", final_heldout_wer=0.6543)
    info = describe_model(final)
    assert (info.kind, info.name) == ("trained", "tiny/final")
    assert "held-out WER 0.65" in info.notice and "whisper_reader" in info.notice and "untrained" not in info.notice

    info = describe_model(tmp_path / "someone-elses-model")
    assert info.kind == "unknown" and "No training summary" in info.notice


def test_demo_command_is_registered(capsys):
    with pytest.raises(SystemExit) as exit_info:
        llasm_main(["demo", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--host" in out and "127.0.0.1" in out
    assert llasm_main(["--help"]) == 0
    assert "demo" in capsys.readouterr().out


def test_demo_refuses_a_directory_without_a_model(tmp_path):
    pytest.importorskip("gradio")
    with pytest.raises(SystemExit, match="not a model directory"):
        llasm_main(["demo", str(tmp_path)])


def test_app_builds_offline_with_analytics_off(monkeypatch):
    gradio = pytest.importorskip("gradio")
    from modeling_llasm.demo import build_demo, describe_model

    monkeypatch.delenv("GRADIO_ANALYTICS_ENABLED", raising=False)
    demo = build_demo(FakeChat(), describe_model("/models/llasm-tiny-base"), max_new_tokens=32)
    assert os.environ["GRADIO_ANALYTICS_ENABLED"] == "False"
    assert demo.analytics_enabled is False
    audio = next(block for block in demo.blocks.values() if isinstance(block, gradio.Audio) and block.elem_id == "audio-input")
    assert set(audio.sources) == {"microphone", "upload"}
    # issue 24: a streaming microphone, read while the user speaks
    talk = next(block for block in demo.blocks.values() if isinstance(block, gradio.Audio) and block.elem_id == "talk-input")
    assert talk.streaming and talk.sources == ["microphone"]
    notices = [block.value for block in demo.blocks.values() if isinstance(block, gradio.Markdown)]
    assert any("untrained base" in notice for notice in notices)


def test_a_multilingual_reader_offers_its_languages_and_a_turn_reads_in_the_chosen_one():
    from tiny_llasm import build_tiny_llasm, multilingual_reader, reader_llasm

    from modeling_llasm.demo import AUTO_LANGUAGE, reader_languages, turn_generation

    assert reader_languages(multilingual_reader()[0]) == ["en", "zh"]
    assert reader_languages(reader_llasm()[0]) == [] and reader_languages(build_tiny_llasm()[0]) == []
    assert turn_generation(16, 0.0, "zh") == {"max_new_tokens": 16, "do_sample": False, "language": "zh"}
    assert "language" not in turn_generation(16, 0.0, AUTO_LANGUAGE) and "language" not in turn_generation(16, 0.0, None)
    assert turn_generation(8, 0.5, "en", "Be brief.") == {"max_new_tokens": 8, "do_sample": True, "temperature": 0.5,
                                                          "language": "en", "system_prompt": "Be brief."}  # fmt: skip
    chat = FakeChat(["好"])
    run_turn(chat, [], audio="q.wav", **turn_generation(4, 0.0, "zh"))
    assert chat.calls[0][1]["language"] == "zh"  # what the pipeline is asked to read the audio in


def test_a_spoken_turn_is_read_while_it_arrives_and_answered_as_the_whole_clip(tmp_path):
    """The streaming microphone's turn: chunks (48 kHz int16, as browsers record) go to a LlasmAudioStream; at the
    end the answer streams, equals the pipeline's answer to the same clip, and says how fast its first word came."""
    import numpy as np

    from modeling_llasm.cli.chat import load_chat_pipeline
    from modeling_llasm.demo import SpokenTurn
    from tiny_llasm import reader_llasm, speechlike

    model, processor = reader_llasm(seed=2)
    model.save_pretrained(tmp_path / "m")
    processor.save_pretrained(tmp_path / "m")
    chat = load_chat_pipeline(str(tmp_path / "m"))
    history = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi"}]
    speech = (speechlike(2.0, 1) * 20000).astype(np.int16)
    recorded = np.repeat(speech, 3)  # 48 kHz, as a browser's microphone
    turn = SpokenTurn(chat, history, max_new_tokens=6, do_sample=False, system_prompt="Be brief.")
    for start in range(0, len(recorded), 24000):  # 0.5 s chunks
        turn.add(48000, recorded[start : start + 24000])
    assert turn.stream.updates == 4 and len(turn.stream.cache) > 0  # read and prefilled while "speaking"
    updates = list(turn.answer(tmp_path / "spoken.wav"))
    conversation, view, note = updates[-1]
    heard = turn.stream.audio
    np.testing.assert_allclose(soundfile.read(tmp_path / "spoken.wav", dtype="float32")[0], heard, atol=1e-4)
    assert conversation[:2] == history and conversation[2] == {"role": "user", "content": [{"type": "audio", "path": str(tmp_path / "spoken.wav")}]}
    expected = chat([*history, {"role": "user", "content": [{"type": "audio", "array": heard, "sampling_rate": 16000}]}],
                    system_prompt="Be brief.", max_new_tokens=6, do_sample=False)["generated_text"]  # fmt: skip
    assert conversation[-1] == {"role": "assistant", "content": expected.strip()}
    assert note.startswith("First word ") and "after you stopped speaking" in note
    assert view[-1]["role"] == "assistant"
    assert abs(len(heard) - len(speech)) <= 8  # resampled to 16 kHz chunk by chunk
