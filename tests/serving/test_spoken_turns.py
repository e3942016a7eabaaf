"""`POST /v1/audio/chat`: a spoken turn streamed in as it is recorded (raw PCM, chunked), read and prefilled while it
arrives; the answer equals `/v1/chat/completions` with the same audio. A tiny `whisper_reader` behind a real server."""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="needs the serve extra: pip install 'modeling_llasm[serve]'")
pytest.importorskip("httpx", reason="needs httpx (the test extra)")

import httpx  # noqa: E402
from serving_helpers import LIMITS, MODEL_ID, Served, audio_part, encode_audio  # noqa: E402

from tiny_llasm import reader_llasm, speechlike  # noqa: E402

PCM = {"Content-Type": "audio/pcm"}


@pytest.fixture(scope="module")
def served_reader() -> Iterator[Served]:
    from modeling_llasm.serving.app import ServerSettings, create_app
    from modeling_llasm.serving.server import BackgroundServer

    model, processor = reader_llasm(seed=2)
    app = create_app(model, processor, ServerSettings(model_id=MODEL_ID, **LIMITS))
    with BackgroundServer(app) as server:
        yield Served(server.url, app, model, processor)


def pcm16(seconds: float, seed: int) -> bytes:
    return (np.clip(speechlike(seconds, seed), -1, 1) * 32767).astype("<i2").tobytes()


def recorded(data: bytes, chunk_seconds: float, pause: float = 0.0, rate: int = 16000) -> Iterator[bytes]:
    """The body as a microphone sends it: chunks of `chunk_seconds`, with `pause` seconds between them."""
    size = 2 * int(chunk_seconds * rate)
    for start in range(0, len(data), size):
        yield data[start : start + size]
        time.sleep(pause)


def spoken(served: Served, content, params: dict | None = None, headers: dict | None = None) -> httpx.Response:
    return httpx.post(f"{served.url}/v1/audio/chat", content=content, params={"model": MODEL_ID, "max_tokens": 8, **(params or {})},
                      headers=PCM if headers is None else headers, timeout=120)  # fmt: skip


def test_a_streamed_spoken_turn_is_answered_as_the_same_audio_sent_whole(served_reader):
    data = pcm16(2.5, 3)
    response = spoken(served_reader, recorded(data, 0.1, pause=0.05))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "chat.completion" and body["model"] == MODEL_ID
    samples = np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768
    whole = served_reader.post({"model": MODEL_ID, "max_tokens": 8, "messages": [
        {"role": "user", "content": [audio_part(encode_audio(samples, subtype="PCM_16"))]}]})  # fmt: skip
    assert whole.status_code == 200, whole.text
    assert body["choices"][0]["message"]["content"] == whole.json()["choices"][0]["message"]["content"]
    assert body["usage"]["completion_tokens"] == whole.json()["usage"]["completion_tokens"]
    timing = body["llasm"]
    assert timing["audio_seconds"] == pytest.approx(len(samples) / 16000, abs=1e-3)  # every sample sent was heard
    # the audio was read while it arrived and the end reused what was prefilled
    assert timing["readings_while_streaming"] >= 2 and timing["prompt_positions_reused"] > 0
    assert timing["end_of_speech_to_first_token_s"] > 0


def test_a_spoken_turn_takes_text_and_another_sample_rate(served_reader):
    data8k = (np.clip(speechlike(1.5, 1)[::2], -1, 1) * 32767).astype("<i2").tobytes()
    response = spoken(served_reader, recorded(data8k, 0.5, rate=8000), {"sample_rate": 8000, "text": "answer briefly"})
    assert response.status_code == 200, response.text
    assert response.json()["llasm"]["audio_seconds"] == pytest.approx(len(data8k) / 2 / 8000, abs=0.01)


BAD = [
    ("odd bytes", b"\x01\x02\x03", {}, PCM, 400, "invalid_audio", "odd number of bytes"),
    ("empty body", b"", {}, PCM, 400, "invalid_audio", "no audio"),
    ("not pcm", b"\x00\x00" * 100, {}, {"Content-Type": "audio/wav"}, 415, "unsupported_media_type", "16-bit"),
    ("bad rate", b"\x00\x00" * 100, {"sample_rate": 12345}, PCM, 400, "invalid_value", "sample_rate"),
    ("bad max_tokens", b"\x00\x00" * 100, {"max_tokens": 10_000}, PCM, 400, "invalid_value", "max_tokens"),
    ("not a number", b"\x00\x00" * 100, {"temperature": "hot"}, PCM, 400, "invalid_value", "temperature"),
    ("other model", b"\x00\x00" * 100, {"model": "gpt-4o"}, PCM, 404, "model_not_found", "does not exist"),
    ("unknown language", b"\x00\x00" * 100, {"language": "xx"}, PCM, 400, "unsupported_value", "language"),
    ("too long", b"\x00\x00" * 16000 * 5, {}, PCM, 400, "audio_too_long", "--max-audio-seconds"),
]


@pytest.mark.parametrize(("name", "content", "params", "headers", "status", "code", "says"), BAD, ids=[b[0] for b in BAD])
def test_bad_spoken_turns_get_clear_4xx(served_reader, name, content, params, headers, status, code, says):
    response = spoken(served_reader, content, params, headers)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and says in error["message"]


def test_a_streamed_body_over_the_size_limit_is_refused_while_it_arrives(served_reader):
    from modeling_llasm.serving.app import ServerSettings, create_app
    from modeling_llasm.serving.server import BackgroundServer

    settings = ServerSettings(model_id=MODEL_ID, **{**LIMITS, "max_body_mb": 0.1, "max_audio_seconds": 60.0})
    with BackgroundServer(create_app(served_reader.model, served_reader.processor, settings)) as server:
        response = httpx.post(f"{server.url}/v1/audio/chat", content=recorded(pcm16(4.0, 0), 0.5), headers=PCM, timeout=120)
        assert response.status_code == 400, response.text
        assert response.json()["error"]["code"] == "body_too_large"
        assert httpx.get(f"{server.url}/health", timeout=30).json()["status"] == "ok"
