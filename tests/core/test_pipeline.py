import json
import os
import subprocess
import sys
import textwrap

import pytest
import soundfile
from transformers import TextIteratorStreamer, pipeline

import modeling_llasm  # noqa: F401  (registers llasm-chat)
from modeling_llasm import LlasmChatPipeline
from tiny_llasm import tone


@pytest.fixture
def chat(tiny_llasm, tmp_path):
    model, processor = tiny_llasm
    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    return pipeline("llasm-chat", model=str(tmp_path / "model"), device="cpu", dtype="float32")


def greedy(**extra):
    return {"max_new_tokens": 8, "min_new_tokens": 8, "do_sample": False, **extra}


def test_registered_task_loads_our_pipeline(chat):
    assert isinstance(chat, LlasmChatPipeline)


def test_input_forms_agree(chat, tmp_path):
    path = tmp_path / "q.wav"
    soundfile.write(path, tone(1.2), 16000)
    by_path = chat(str(path), text="transcribe the speech", **greedy())
    by_array = chat({"audio": {"array": tone(1.2), "sampling_rate": 16000}, "text": "transcribe the speech"}, **greedy())
    by_bytes = chat(path.read_bytes(), text="transcribe the speech", **greedy())
    messages = [{"role": "user", "content": [{"type": "audio", "path": str(path)}, {"type": "text", "text": "transcribe the speech"}]}]
    by_chat = chat(messages, **greedy())
    assert by_path["generated_text"] == by_array["generated_text"] == by_bytes["generated_text"] == by_chat["generated_text"]
    assert by_chat["conversation"][:-1] == messages
    assert by_chat["conversation"][-1] == {"role": "assistant", "content": by_chat["generated_text"]}


def test_audio_as_a_keyword_and_unknown_keywords(chat, tmp_path):
    path = tmp_path / "q.wav"
    soundfile.write(path, tone(1.1), 16000)
    positional = chat(str(path), text="what is this", **greedy())
    keyword = chat(audio=str(path), text="what is this", **greedy())
    assert keyword["generated_text"] == positional["generated_text"]
    assert chat(audio=str(path), **greedy())["conversation"][0]["content"] == [{"type": "audio", "audio": str(path)}]
    with pytest.raises(ValueError, match=r"unknown keyword argument\(s\) \['audios', 'max_toks'\].*audio=, text="):
        chat(str(path), audios=[str(path)], max_toks=3)
    with pytest.raises(ValueError, match="either as the first argument or as audio="):
        chat(str(path), audio=str(path))


def test_generation_kwargs_pass_through(chat):
    short = chat({"text": "hello"}, max_new_tokens=2, do_sample=False)
    longer = chat({"text": "hello"}, **greedy(max_new_tokens=12, min_new_tokens=12))
    assert len(chat.processor.tokenizer(short["generated_text"])["input_ids"]) <= 3
    assert len(longer["generated_text"]) > len(short["generated_text"])


def test_streaming_yields_the_same_answer(chat):
    expected = chat(tone(0.8), **greedy())["generated_text"]
    pieces = list(chat(tone(0.8), stream=True, **greedy()))
    assert len(pieces) > 1 and "".join(pieces).strip() == expected
    streamer = TextIteratorStreamer(chat.processor.tokenizer, skip_prompt=True, skip_special_tokens=True)
    chat(tone(0.8), streamer=streamer, **greedy())
    assert "".join(streamer).strip() == expected


def test_streaming_surfaces_errors(chat):
    with pytest.raises(ValueError, match="empty"):
        list(chat({"audio": {"array": tone(0.0), "sampling_rate": 16000}}, stream=True, **greedy()))


def test_bad_input_is_a_clear_error(chat):
    with pytest.raises(ValueError, match="llasm-chat takes audio"):
        chat(42)
    with pytest.raises(ValueError, match="needs audio, text, or both"):
        chat({"audio": None, "text": None})


def test_saved_pipeline_is_hub_ready_and_loads_with_remote_code(chat, tmp_path):
    chat.save_pretrained(tmp_path / "hub")
    config = json.loads((tmp_path / "hub" / "config.json").read_text())
    assert config["custom_pipelines"]["llasm-chat"]["impl"] == "pipeline_llasm.LlasmChatPipeline"
    for name in ("pipeline_llasm.py", "modeling_llasm.py", "reading_llasm.py", "conversation_cache_llasm.py", "processing_llasm.py",
                 "configuration_llasm.py", "processor_config.json"):
        assert (tmp_path / "hub" / name).is_file(), name
    expected = chat({"text": "hello"}, **greedy())["generated_text"]
    with pytest.raises(ValueError, match="trust_remote_code"):  # transformers' rule for custom_pipelines entries
        pipeline("llasm-chat", model=str(tmp_path / "hub"), device="cpu")
    installed = pipeline("llasm-chat", model=str(tmp_path / "hub"), pipeline_class=LlasmChatPipeline, device="cpu", dtype="float32")
    assert installed({"text": "hello"}, **greedy())["generated_text"] == expected
    script = textwrap.dedent(
        f"""
        import sys
        class BlockPackage:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] == "modeling_llasm":
                    raise ImportError("blocked")
        sys.meta_path.insert(0, BlockPackage())
        from transformers import pipeline
        chat = pipeline("llasm-chat", model={str(tmp_path / 'hub')!r}, trust_remote_code=True, device="cpu", dtype="float32")
        print("ANSWER=" + repr(chat({{"text": "hello"}}, max_new_tokens=8, min_new_tokens=8, do_sample=False)["generated_text"]))
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert f"ANSWER={expected!r}" in result.stdout, result.stderr[-3000:]


def test_several_return_sequences_and_unsupported_options(chat):
    answers = chat(tone(0.8), num_beams=2, num_return_sequences=2, max_new_tokens=6, do_sample=False)
    assert isinstance(answers, list) and len(answers) == 2
    assert all(a["conversation"][-1] == {"role": "assistant", "content": a["generated_text"]} for a in answers)
    assert answers[0]["generated_text"] == chat(tone(0.8), num_beams=2, max_new_tokens=6, do_sample=False)["generated_text"]
    with pytest.raises(ValueError, match="batch_size=1"):
        chat([tone(0.8), tone(0.5)], batch_size=2, stream=True)
    streamer = TextIteratorStreamer(chat.processor.tokenizer, skip_prompt=True)
    with pytest.raises(ValueError, match="not both"):
        chat(tone(0.8), stream=True, streamer=streamer)


def test_processor_that_does_not_match_the_model_is_refused(tiny_llasm):
    model, processor = tiny_llasm
    processor.stack_factor = model.config.stack_factor + 1
    with pytest.raises(ValueError, match=r"stack_factor: processor 3, model 2"):
        LlasmChatPipeline(model=model, processor=processor)


def test_batched_pipeline_equals_one_by_one(chat):
    """batch_size=N over a list generates N conversations per call; answers equal the one-by-one answers."""
    inputs = [{"audio": {"array": tone(0.4 + 0.3 * i, freq=300 + 90 * i), "sampling_rate": 16000}, "text": f"say {i}"} for i in range(5)]
    inputs.append({"text": "only text"})
    one_by_one = [chat(item, prefix_cache=False, **greedy()) for item in inputs]
    calls = []
    original_generate = chat.model.generate

    def counting_generate(*args, **kwargs):
        calls.append(kwargs["input_ids"].shape[0])
        return original_generate(*args, **kwargs)

    chat.model.generate = counting_generate
    try:
        batched = chat(inputs, batch_size=4, **greedy())
    finally:
        chat.model.generate = original_generate
    assert calls == [4, 2]
    assert [b["generated_text"] for b in batched] == [o["generated_text"] for o in one_by_one]
    assert [b["conversation"] for b in batched] == [o["conversation"] for o in one_by_one]


def test_batched_pipeline_with_several_sequences_per_input(chat):
    inputs = [tone(0.8), tone(0.5, freq=600)]
    batched = chat(inputs, batch_size=2, num_beams=2, num_return_sequences=2, max_new_tokens=6, do_sample=False)
    assert len(batched) == 2 and all(isinstance(per_input, list) and len(per_input) == 2 for per_input in batched)
    for item, per_input in zip(inputs, batched):
        alone = chat(item, num_beams=2, num_return_sequences=2, max_new_tokens=6, do_sample=False)
        assert [a["generated_text"] for a in per_input] == [a["generated_text"] for a in alone]
