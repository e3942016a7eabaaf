"""vLLM on the real embedded base (Whisper tiny.en + SmolLM2-135M, the default `whisper_reader`): greedy answers and
transcripts equal `llasm serve`'s, for spoken questions voiced by espeak-ng, in several turns."""

from __future__ import annotations

import base64
import shutil
import subprocess

import openai
import pytest

from modeling_llasm.serving.vllm_server import VllmServer, vllm_environment, vllm_python

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.real_weights,
    pytest.mark.tts,
    pytest.mark.skipif(vllm_python() is None, reason="no vLLM venv: run `bash scripts/install_vllm.sh` (scripts/install.sh does)"),
    pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng voices the questions"),
]

MODEL_ID = "llasm-tiny-base"
QUESTIONS = ["What is the capital of France?", "How many days are there in a week?", "Name three colours of the rainbow.",
             "Why is the sky blue?"]  # fmt: skip


def spoken(text: str, directory) -> str:
    path = directory / f"{abs(hash(text))}.wav"
    subprocess.run(["espeak-ng", "-w", str(path), text], check=True)
    return base64.b64encode(path.read_bytes()).decode()


def audio(data: str) -> dict:
    return {"type": "input_audio", "input_audio": {"data": data, "format": "wav"}}


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    from modeling_llasm.conversion.build_base import embedded_base
    from modeling_llasm.serving.app import ServerSettings, create_app
    from modeling_llasm.serving.models import load_model
    from modeling_llasm.serving.server import BackgroundServer

    directory = embedded_base()
    model, processor = load_model(directory)
    env = {**vllm_environment(), "HF_HUB_OFFLINE": "1"}
    log = tmp_path_factory.mktemp("logs") / "vllm-base.log"
    with VllmServer(directory, model_id=MODEL_ID, max_model_len=2048, env=env, log_path=log) as vllm_server:
        with BackgroundServer(create_app(model, processor, ServerSettings(model_id=MODEL_ID))) as reference:
            yield vllm_server, reference


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    directory = tmp_path_factory.mktemp("questions")
    return [spoken(q, directory) for q in QUESTIONS]


def answer(url: str, messages: list[dict], max_tokens: int = 40) -> str:
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=600)
    reply = client.chat.completions.create(model=MODEL_ID, messages=messages, max_tokens=max_tokens, temperature=0)
    return reply.choices[0].message.content.strip()  # llasm serve strips the answer; vLLM does not


def test_spoken_questions_answered_as_llasm_serve(servers, clips):
    vllm_server, reference = servers
    for clip in clips:
        messages = [{"role": "user", "content": [audio(clip)]}]
        expected = answer(reference.url, messages)
        assert expected  # a real answer, not an empty string
        assert answer(vllm_server.url, messages) == expected


def test_several_turns(servers, clips):
    vllm_server, reference = servers
    messages = [
        {"role": "system", "content": "You are a helpful assistant. Answer briefly."},
        {"role": "user", "content": [audio(clips[0])]},
        {"role": "assistant", "content": "The capital of France is Paris."},
        {"role": "user", "content": [{"type": "text", "text": "And this one?"}, audio(clips[1])]},
    ]
    assert answer(vllm_server.url, messages) == answer(reference.url, messages)


def test_transcription(servers, clips):
    vllm_server, reference = servers
    for clip in clips[:2]:
        wav = base64.b64decode(clip)
        expected = openai.OpenAI(base_url=f"{reference.url}/v1", api_key="x").audio.transcriptions.create(
            model=MODEL_ID, file=("q.wav", wav)).text
        got = openai.OpenAI(base_url=f"{vllm_server.url}/v1", api_key="x").audio.transcriptions.create(
            model=MODEL_ID, file=("q.wav", wav), temperature=0).text
        assert got.strip() == expected.strip()
        assert "capital" in expected.lower() or "week" in expected.lower()
