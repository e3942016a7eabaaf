"""vLLM's OpenAI server on LLaSM (`llasm serve --engine vllm`), against `llasm serve` on the same checkpoint.

vLLM runs in its own venv (scripts/install_vllm.sh, which scripts/install.sh calls); these tests drive it as a child
process through the official `openai` client and compare every greedy answer with the transformers path's. Without
the venv they are skipped, saying so."""

from __future__ import annotations

import base64
import concurrent.futures
import io
import subprocess

import numpy as np
import openai
import pytest
import soundfile

from modeling_llasm.serving.vllm_server import VllmServer, vllm_environment, vllm_python
from tiny_llasm import speechlike, tone
from tiny_vllm_models import build

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(vllm_python() is None, reason="no vLLM venv: run `bash scripts/install_vllm.sh` (scripts/install.sh does)"),
]

MODEL_ID = "tiny-llasm"


def encode_audio(samples: np.ndarray, sampling_rate: int = 16000) -> str:
    """base64 of `samples` as a WAV file (what an OpenAI client puts in `input_audio.data`)."""
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, sampling_rate, format="WAV")
    return base64.b64encode(buffer.getvalue()).decode()


def audio_part(data: str) -> dict:
    return {"type": "input_audio", "input_audio": {"data": data, "format": "wav"}}

MAX_AUDIO_SECONDS, MAX_BODY_MB = 4.0, 1.0
ADAPTORS = ["stack_mlp", "linear", "whisper_resampler", "ctc_compress", "whisper_reader"]  # fixed-rate: vLLM runs the audio; variable: read in the processor

# several clips (1-s windows: the 2.5 s ones have three), several turns, text around the audio
CLIPS = {"a": speechlike(1.2, 1), "b": tone(2.5, freq=300.0, seed=2), "c": speechlike(0.4, 3), "d": speechlike(2.5, 4)}


def conversations() -> dict[str, list[dict]]:
    wav = {name: encode_audio(clip) for name, clip in CLIPS.items()}
    return {
        "text": [{"role": "user", "content": "Say something about the sea."}],
        "system_and_text": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there!"}],
        **{f"audio_{name}": [{"role": "user", "content": [audio_part(wav[name]), {"type": "text", "text": "What was said?"}]}]
           for name in CLIPS},  # fmt: skip
        # 22.05 kHz stereo: resampled and mixed down as `llasm serve` does (soxr, channel mean)
        "audio_22k_stereo": [{"role": "user", "content": [audio_part(encode_audio(np.stack([speechlike(1.6, 5), tone(1.6, seed=6)], 1), 22050))]}],
        "audio_only": [{"role": "user", "content": [audio_part(wav["c"])]}],
        "text_before_audio": [{"role": "user", "content": [{"type": "text", "text": "Listen:"}, audio_part(wav["a"])]}],
        "two_clips": [{"role": "user", "content": [audio_part(wav["a"]), {"type": "text", "text": "and"}, audio_part(wav["b"])]}],
        "turns": [
            {"role": "user", "content": [audio_part(wav["d"]), {"type": "text", "text": "Answer briefly."}]},
            {"role": "assistant", "content": "I heard a question."},
            {"role": "user", "content": [{"type": "text", "text": "And this one?"}, audio_part(wav["a"])]},
            {"role": "assistant", "content": "Another."},
            {"role": "user", "content": "Thanks. Summarise both."},
        ],
    }


@pytest.fixture(scope="module", params=ADAPTORS)
def servers(request, tmp_path_factory):
    """(vLLM server, `llasm serve` server) on one tiny random checkpoint of each adaptor kind."""
    from modeling_llasm.serving.app import ServerSettings, create_app
    from modeling_llasm.serving.models import load_model
    from modeling_llasm.serving.server import BackgroundServer

    directory = build(request.param, tmp_path_factory.mktemp(request.param) / MODEL_ID)
    model, processor = load_model(directory)
    settings = ServerSettings(model_id=MODEL_ID, max_audio_seconds=MAX_AUDIO_SECONDS, max_tokens_limit=64, default_max_tokens=12,
                              max_body_mb=MAX_BODY_MB, max_request_audio_seconds=2 * MAX_AUDIO_SECONDS)  # fmt: skip
    env = {**vllm_environment(), "HF_HUB_OFFLINE": "1"}
    log = tmp_path_factory.mktemp("logs") / f"vllm-{request.param}.log"
    # the same limits for both: vLLM's through the request guard `llasm serve --engine vllm` puts in front of it
    with VllmServer(directory, model_id=MODEL_ID, max_model_len=1024, env=env, log_path=log, settings=settings) as vllm_server:
        with BackgroundServer(create_app(model, processor, settings)) as reference:
            yield request.param, vllm_server, reference


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=300)


def same_text(text: str) -> str:
    """An answer as compared. `llasm serve` strips the answer's surrounding whitespace, vLLM does not; and the random
    models' answers are byte soup cut at max_tokens, where vLLM's detokenizer withholds a trailing incomplete UTF-8
    sequence that transformers' `decode` writes as U+FFFD. The tokens are the same."""
    return text.strip().rstrip("\ufffd").strip()


def chat(url: str, messages: list[dict], max_tokens: int = 12) -> tuple[str, str]:
    answer = client(url).chat.completions.create(model=MODEL_ID, messages=messages, max_tokens=max_tokens, temperature=0)
    return same_text(answer.choices[0].message.content), answer.choices[0].finish_reason


def test_greedy_answers_equal_llasm_serve(servers):
    """Text, each clip, audio before and after text, two clips in one turn, audio in several turns."""
    _, vllm_server, reference = servers
    for name, messages in conversations().items():
        expected = chat(reference.url, messages)
        assert chat(vllm_server.url, messages) == expected, name


def test_concurrent_requests_answer_as_alone(servers):
    """16 requests at once (vLLM batches them) get the answers each gets alone from `llasm serve`."""
    _, vllm_server, reference = servers
    cases = list(conversations().values())
    requests = [cases[i % len(cases)] for i in range(16)]
    expected = [chat(reference.url, messages) for messages in cases]
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda messages: chat(vllm_server.url, messages), requests))
    assert answers == [expected[i % len(cases)] for i in range(16)]


def test_greedy_by_default(servers):
    """A request that names no temperature is answered greedily, as by `llasm serve` (vLLM's own default is 1)."""
    _, vllm_server, _ = servers
    messages = conversations()["audio_a"]
    reply = client(vllm_server.url).chat.completions.create(model=MODEL_ID, messages=messages, max_tokens=12)
    assert (same_text(reply.choices[0].message.content), reply.choices[0].finish_reason) == chat(vllm_server.url, messages)


def test_default_max_tokens_as_llasm_serve(servers):
    """A request that names no max_tokens gets --default-max-tokens from both (vLLM's own default: the rest of the
    context)."""
    _, vllm_server, reference = servers
    answers = []
    for url in (vllm_server.url, reference.url):
        reply = client(url).chat.completions.create(model=MODEL_ID, messages=conversations()["audio_b"], temperature=0)
        answers.append((same_text(reply.choices[0].message.content), reply.choices[0].finish_reason, reply.usage.completion_tokens))
    assert answers[0] == answers[1] and (answers[0][1] == "stop" or answers[0][2] == 12), answers


def test_streaming_equals_non_streaming(servers):
    _, vllm_server, _ = servers
    messages = conversations()["turns"]
    stream = client(vllm_server.url).chat.completions.create(model=MODEL_ID, messages=messages, max_tokens=12, temperature=0, stream=True)
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert same_text(streamed) == chat(vllm_server.url, messages)[0]


def test_transcriptions_equal_llasm_serve(servers):
    """/v1/audio/transcriptions asks the checkpoint's own transcription request, with `llasm serve`'s duration-based
    token budget (16 + 10 per second; the guard sets it for vLLM, whose own budget is the rest of the context): the
    random models' transcripts run to the budget, so equal transcripts show equal budgets."""
    _, vllm_server, reference = servers
    for name, clip in CLIPS.items():
        wav = base64.b64decode(encode_audio(clip))
        language = {"language": "en"} if name == "b" else {}  # reaches the reader (English-only here: "en" is all it reads)
        expected = client(reference.url).audio.transcriptions.create(model=MODEL_ID, file=("clip.wav", wav), **language).text
        got = client(vllm_server.url).audio.transcriptions.create(model=MODEL_ID, file=("clip.wav", wav), temperature=0, **language).text
        assert same_text(got) == same_text(expected), name


@pytest.mark.parametrize("case", ["not_base64", "not_audio", "too_long", "unknown_model", "context_exceeded", "two_placeholders",
                                  "typed_placeholder", "max_tokens_over_limit", "body_too_large", "request_audio_too_long"])
def test_bad_requests_are_4xx(servers, case):
    """Requests `llasm serve` refuses are refused by vLLM too, with a 4xx (the limits' messages are `llasm serve`'s,
    from the guard; the rest are vLLM's own)."""
    _, vllm_server, reference = servers
    garbage = base64.b64encode(b"this is not a sound file at all" * 20).decode()
    body = {"model": MODEL_ID, "max_tokens": 4, "messages": [{"role": "user", "content": [audio_part(encode_audio(CLIPS["a"]))]}]}
    if case == "not_base64":
        body["messages"][0]["content"] = [audio_part("@@@not base64@@@")]
    elif case == "not_audio":
        body["messages"][0]["content"] = [audio_part(garbage)]
    elif case == "too_long":
        body["messages"][0]["content"] = [audio_part(encode_audio(tone(MAX_AUDIO_SECONDS + 1.0)))]
    elif case == "unknown_model":
        body["model"] = "another-model"
    elif case == "context_exceeded":
        body["max_tokens"] = 100_000
    elif case == "two_placeholders":
        body["messages"][0]["content"].append({"type": "text", "text": "typed <|audio|> placeholder"})
    elif case == "typed_placeholder":  # text only: vLLM alone would embed it as an ordinary token
        body["messages"][0]["content"] = "what does <|audio|> mean?"
    elif case == "max_tokens_over_limit":
        body["max_tokens"] = 65
    elif case == "body_too_large":
        body["messages"][0]["content"] = "x" * int(MAX_BODY_MB * 1024 * 1024 + 10)
    elif case == "request_audio_too_long":  # each clip within --max-audio-seconds, together over --max-request-audio-seconds
        body["messages"][0]["content"] = [audio_part(encode_audio(tone(MAX_AUDIO_SECONDS - 0.5, seed=i))) for i in range(3)]
    for url in (reference.url, vllm_server.url):
        with pytest.raises(openai.APIStatusError) as error:
            client(url).chat.completions.create(**body)
        assert 400 <= error.value.status_code < 500, (url, case, error.value)


def test_server_survives_bad_requests(servers):
    _, vllm_server, reference = servers
    messages = conversations()["audio_a"]
    assert chat(vllm_server.url, messages) == chat(reference.url, messages)


def test_plugin_registers_idempotently():
    """The entry point is found by vLLM's plugin loader and registering twice is harmless."""
    code = ("from vllm.plugins import load_general_plugins; from vllm import ModelRegistry; "
            "import modeling_llasm.vllm_plugin as p; load_general_plugins(); p.register(); p.register(); "
            "assert 'LlasmForConditionalGeneration' in ModelRegistry.get_supported_archs(); print('ok')")  # fmt: skip
    run_in_vllm_venv(code)


def run_in_vllm_venv(code: str) -> None:
    """Run `code` with the vLLM venv's python; it must succeed and print "ok" last."""
    out = subprocess.run([str(vllm_python()), "-c", code], env=vllm_environment(), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]


def test_core_files_do_not_import_vllm():
    """The checkpoint's own files (they travel with it) and the package import no vLLM."""
    code = ("import sys, modeling_llasm, modeling_llasm.vllm_plugin, modeling_llasm.serving.vllm_server; "
            "from modeling_llasm import configuration_llasm, processing_llasm, modeling_llasm as m, pipeline_llasm; "
            "assert not [k for k in sys.modules if k == 'vllm' or k.startswith('vllm.')]; print('ok')")  # fmt: skip
    run_in_vllm_venv(code)


def test_llasm_serve_engine_vllm(tmp_path):
    """`llasm serve MODEL --engine vllm` starts vLLM's server with the plugin; --model-id, --max-audio-seconds and
    --max-tokens-limit reach it."""
    import os
    import signal
    import sys
    import time
    import urllib.request

    from modeling_llasm.serving.vllm_server import free_port

    directory = build("stack_mlp", tmp_path / "model")
    port = free_port()
    command = [sys.executable, "-m", "modeling_llasm.cli", "serve", str(directory), "--engine", "vllm", "--port", str(port),
               "--model-id", "cli-model", "--max-audio-seconds", "2", "--max-tokens-limit", "8", "--vllm-args", "--max-model-len 1024"]  # fmt: skip
    log = open(tmp_path / "serve.log", "w")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                               env={**os.environ, "HF_HUB_OFFLINE": "1"})  # fmt: skip
    try:
        deadline = time.monotonic() + 600
        while True:
            assert process.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "vLLM did not start"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                    break
            except OSError:
                time.sleep(1)
        api = client(f"http://127.0.0.1:{port}")
        assert [m.id for m in api.models.list().data] == ["cli-model"]
        messages = [{"role": "user", "content": [audio_part(encode_audio(CLIPS["a"]))]}]
        assert api.chat.completions.create(model="cli-model", messages=messages, max_tokens=4).choices[0].finish_reason
        messages = [{"role": "user", "content": [audio_part(encode_audio(CLIPS["b"]))]}]  # 2.5 s > --max-audio-seconds 2
        with pytest.raises(openai.BadRequestError, match="max-audio-seconds 2"):
            api.chat.completions.create(model="cli-model", messages=messages, max_tokens=4)
        with pytest.raises(openai.BadRequestError, match="max-tokens-limit 8"):
            api.chat.completions.create(model="cli-model", messages=[{"role": "user", "content": "hi"}], max_tokens=9)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()


def test_transcription_language_reaches_the_reader(tmp_path):
    """A `whisper_reader` whose Whisper knows English and Chinese reads in the `language` asked, as in `llasm serve`:
    the transcripts are equal for each, and a language its Whisper does not know is refused by both servers (the
    random LLM's transcripts ignore the audio, so the refusal is what shows that the language reaches the reader)."""
    from modeling_llasm.serving.app import ServerSettings, create_app
    from modeling_llasm.serving.models import load_model
    from modeling_llasm.serving.server import BackgroundServer

    directory = build("multilingual_reader", tmp_path / MODEL_ID)
    model, processor = load_model(directory)
    wav = base64.b64decode(encode_audio(CLIPS["d"]))
    env = {**vllm_environment(), "HF_HUB_OFFLINE": "1"}
    settings = ServerSettings(model_id=MODEL_ID, max_tokens_limit=24)
    with VllmServer(directory, model_id=MODEL_ID, max_model_len=1024, env=env, log_path=tmp_path / "vllm.log", settings=settings) as vllm_server:
        with BackgroundServer(create_app(model, processor, settings)) as reference:
            for language in ("en", "zh"):
                expected = client(reference.url).audio.transcriptions.create(model=MODEL_ID, file=("d.wav", wav), language=language).text
                got = client(vllm_server.url).audio.transcriptions.create(model=MODEL_ID, file=("d.wav", wav), language=language,
                                                                          temperature=0).text  # fmt: skip
                assert same_text(got) == same_text(expected), language
            for url in (reference.url, vllm_server.url):
                with pytest.raises(openai.APIStatusError) as error:
                    client(url).audio.transcriptions.create(model=MODEL_ID, file=("d.wav", wav), language="fr")
                assert 400 <= error.value.status_code < 500, (url, error.value)
