"""The request guard `llasm serve --engine vllm` puts in front of vLLM's app (`serving/vllm_guard.py`), tested on a
stand-in app that records what reaches it (no vLLM needed; tests/vllm run it in front of the real server)."""

from __future__ import annotations

import asyncio
import json

import pytest
from serving_helpers import LIMITS, audio_part, encode_audio

from tiny_llasm import build_tiny_llasm, tone

httpx = pytest.importorskip("httpx")
pytest.importorskip("starlette")

from modeling_llasm.serving.app import ServerSettings  # noqa: E402
from modeling_llasm.serving.vllm_guard import SETTINGS_VARIABLE, LlasmRequestGuard, guard_environment, with_form_field  # noqa: E402

AUDIO_TOKEN = "<|audio|>"


class Recorder:
    """A stand-in for vLLM's app: answers 200 with what it received; `gate` (an asyncio.Event) holds answers back."""

    def __init__(self):
        self.received: list[tuple[str, dict[str, str], bytes]] = []
        self.gate: asyncio.Event | None = None

    async def __call__(self, scope, receive, send):
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        headers = {key.decode().lower(): value.decode() for key, value in scope["headers"]}
        self.received.append((scope["path"], headers, body))
        if self.gate is not None:
            await self.gate.wait()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"ok"})


def guarded(**overrides) -> tuple[Recorder, LlasmRequestGuard]:
    recorder = Recorder()
    settings = ServerSettings(model_id="m", **{**LIMITS, **overrides})
    return recorder, LlasmRequestGuard(recorder, settings=settings, audio_token=AUDIO_TOKEN)


def post(guard, path: str = "/v1/chat/completions", **kwargs) -> httpx.Response:
    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=guard), base_url="http://test") as client:
            return await client.post(path, **kwargs)

    return asyncio.run(go())


def chat(content, **fields) -> dict:
    return {"model": "m", "messages": [{"role": "user", "content": content}], **fields}


def error_of(response: httpx.Response) -> dict:
    assert response.status_code == 400, (response.status_code, response.text)
    return response.json()["error"]


def test_a_typed_audio_placeholder_is_refused_in_text_only_requests():
    """vLLM would embed it as an ordinary token; `llasm serve` refuses it: so does the guard, naming where it is."""
    recorder, guard = guarded()
    error = error_of(post(guard, json=chat(f"what is {AUDIO_TOKEN}?", max_tokens=4)))
    assert error["param"] == "messages.0.content" and AUDIO_TOKEN in error["message"]
    error = error_of(post(guard, json=chat([{"type": "text", "text": "fine"}, {"type": "text", "text": AUDIO_TOKEN}], max_tokens=4)))
    assert error["param"] == "messages.0.content.1.text"
    assert recorder.received == []


def test_max_tokens_limited_and_defaulted_as_llasm_serve():
    recorder, guard = guarded()
    error = error_of(post(guard, json=chat("hi", max_tokens=LIMITS["max_tokens_limit"] + 1)))
    assert error["code"] == "max_tokens_too_large" and "--max-tokens-limit" in error["message"]
    assert error_of(post(guard, json=chat("hi", max_tokens=3, max_completion_tokens=4)))["param"] == "max_completion_tokens"
    assert recorder.received == []
    # none asked: --default-max-tokens is filled in (vLLM's own default is the rest of the context)
    assert post(guard, json=chat("hi")).status_code == 200
    path, headers, body = recorder.received[-1]
    assert json.loads(body)["max_tokens"] == LIMITS["default_max_tokens"] and int(headers["content-length"]) == len(body)
    # asked within the limit: passed on byte for byte
    raw = json.dumps(chat("hi", max_completion_tokens=5)).encode()
    assert post(guard, content=raw, headers={"content-type": "application/json"}).status_code == 200
    assert recorder.received[-1][2] == raw


def test_audio_limits_per_clip_and_per_request():
    recorder, guard = guarded()
    long_clip = audio_part(encode_audio(tone(LIMITS["max_audio_seconds"] + 0.5)))
    error = error_of(post(guard, json=chat([long_clip], max_tokens=4)))
    assert error["code"] == "audio_too_long" and "--max-audio-seconds" in error["message"]
    clips = [audio_part(encode_audio(tone(3.5, seed=i))) for i in range(2)]  # 7 s in all, over the request's 6 s
    error = error_of(post(guard, json=chat(clips, max_tokens=4)))
    assert error["code"] == "audio_too_long" and "--max-request-audio-seconds" in error["message"]
    assert error_of(post(guard, json=chat([audio_part("@@not base64@@")], max_tokens=4)))["code"] == "invalid_base64"
    assert recorder.received == []
    assert post(guard, json=chat(clips[:1], max_tokens=4)).status_code == 200


def test_body_size_limit():
    recorder, guard = guarded(max_body_mb=0.01)
    error = error_of(post(guard, json=chat("x" * 20_000, max_tokens=4)))
    assert error["code"] == "body_too_large" and "--max-body-mb" in error["message"]
    assert recorder.received == []


def test_bodies_it_cannot_read_reach_vllm_unchanged():
    recorder, guard = guarded()
    for raw in (b"not json", b"[1, 2]", json.dumps(chat("hi", max_tokens="many")).encode()):
        assert post(guard, content=raw, headers={"content-type": "application/json"}).status_code == 200
        assert recorder.received[-1][2] == raw
    assert post(guard, path="/v1/completions", json={"prompt": AUDIO_TOKEN}).status_code == 200  # not a chat: vLLM's


def test_transcriptions_get_llasm_serves_token_budget():
    """16 tokens + 10 per second of audio when the request names none, as `llasm serve` allows."""
    from modeling_llasm.serving.app import transcript_max_tokens

    recorder, guard = guarded()
    wav = encode_audio(tone(2.5))
    import base64

    files = {"file": ("clip.wav", base64.b64decode(wav), "audio/wav")}
    assert post(guard, "/v1/audio/transcriptions", files=files, data={"model": "m"}).status_code == 200
    _, headers, body = recorder.received[-1]
    assert int(headers["content-length"]) == len(body)
    assert b'name="max_completion_tokens"\r\n\r\n41\r\n' in body and transcript_max_tokens(2.5, ServerSettings(**LIMITS)) == 41
    assert post(guard, "/v1/audio/transcriptions", files=files, data={"model": "m", "max_completion_tokens": "7"}).status_code == 200
    assert recorder.received[-1][2].count(b'name="max_completion_tokens"') == 1
    error = error_of(post(guard, "/v1/audio/transcriptions", files=files, data={"max_completion_tokens": "4000"}))
    assert error["code"] == "max_tokens_too_large"
    files = {"file": ("long.wav", base64.b64decode(encode_audio(tone(LIMITS["max_audio_seconds"] + 1))), "audio/wav")}
    assert error_of(post(guard, "/v1/audio/transcriptions", files=files))["code"] == "audio_too_long"


def test_with_form_field_keeps_the_form_parseable():
    from starlette.requests import Request

    boundary = "XyZ"
    body = f'--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\nm\r\n--{boundary}--\r\n'.encode()
    rewritten = with_form_field(body, f"multipart/form-data; boundary={boundary}", "max_completion_tokens", "9")

    async def form():
        async def receive():
            return {"type": "http.request", "body": rewritten, "more_body": False}

        scope = {"type": "http", "method": "POST", "path": "/", "headers": [(b"content-type", f"multipart/form-data; boundary={boundary}".encode())]}
        return dict(await Request(scope, receive).form())

    assert asyncio.run(form()) == {"model": "m", "max_completion_tokens": "9"}


def test_too_many_in_flight_get_429():
    """--max-queue + --max-batch requests in flight, then 429 at once (vLLM alone queues everything)."""
    recorder, guard = guarded(max_queue=1, max_batch=1)

    async def go():
        recorder.gate = asyncio.Event()
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=guard), base_url="http://test") as client:
            held = [asyncio.create_task(client.post("/v1/chat/completions", json=chat("hi", max_tokens=2))) for _ in range(2)]
            while len(recorder.received) < 2:
                await asyncio.sleep(0.01)
            refused = await client.post("/v1/chat/completions", json=chat("hi", max_tokens=2))
            recorder.gate.set()
            return refused, [await task for task in held]

    refused, held = asyncio.run(go())
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "queue_full"
    assert [response.status_code for response in held] == [200, 200]


def test_settings_come_from_the_environment(monkeypatch, tmp_path):
    """How vLLM builds it (the app alone): settings and the checkpoint's audio token from `guard_environment`."""
    model, processor = build_tiny_llasm()
    processor.save_pretrained(tmp_path)
    settings = ServerSettings(max_tokens_limit=33, max_audio_seconds=7.0)
    environment = guard_environment(settings, tmp_path)
    assert environment["LLASM_VLLM_MAX_AUDIO_SECONDS"] == "7.0"
    monkeypatch.setenv(SETTINGS_VARIABLE, environment[SETTINGS_VARIABLE])
    guard = LlasmRequestGuard(Recorder())
    assert guard.audio_token == processor.audio_token and guard.settings.max_tokens_limit == 33
    monkeypatch.delenv(SETTINGS_VARIABLE)
    with pytest.raises(RuntimeError, match=SETTINGS_VARIABLE):
        LlasmRequestGuard(Recorder())
