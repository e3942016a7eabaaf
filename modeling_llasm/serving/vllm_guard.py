"""`llasm serve`'s request limits in front of vLLM's OpenAI server (`llasm serve --engine vllm`).

vLLM loads `LlasmRequestGuard` with `--middleware modeling_llasm.serving.vllm_guard.LlasmRequestGuard` (`vllm_command`
adds it) and builds it with the app alone, so its settings come from the environment: `LLASM_VLLM_SERVER_SETTINGS`,
the JSON of a `ServerSettings` plus the model directory (`guard_environment`). Before vLLM parses anything it applies
what `llasm serve` applies, with the same code and messages:

- the body-size limit (`--max-body-mb`) and admission (`--max-queue` + `--max-batch` requests in flight, then 429);
- chat completions: a typed audio placeholder in any text is a 400 (vLLM would embed it as an ordinary token), the
  per-clip and per-request audio limits, `max_tokens` within `--max-tokens-limit` and `--default-max-tokens` when the
  request gives none (vLLM's own default is the rest of the context);
- transcriptions: the per-clip limit and `llasm serve`'s duration-based token budget when the request names none.

A body this guard cannot read (not JSON, an unknown part type) goes on unchanged: vLLM's own validation answers it.
"""

from __future__ import annotations

import json
import os
import types
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from .app import (
    SAMPLING_RATE,
    Admission,
    RequestGuard,
    ServerSettings,
    add_request_audio,
    decode_audio_bytes,
    decode_audio_part,
    refuse_audio_placeholder,
    requested_max_tokens,
    transcript_max_tokens,
)
from .protocol import RequestError, error_response

SETTINGS_VARIABLE = "LLASM_VLLM_SERVER_SETTINGS"
CHAT_PATH, TRANSCRIPTION_PATH = "/v1/chat/completions", "/v1/audio/transcriptions"


def guard_environment(settings: ServerSettings, model_dir: str | os.PathLike) -> dict[str, str]:
    """The environment variables that configure the guard (and the plugin's clip limit) in vLLM's processes."""
    fields = {name: getattr(settings, name) for name in ("max_body_mb", "max_audio_seconds", "max_request_audio_seconds",
                                                         "max_tokens_limit", "default_max_tokens", "max_queue", "max_batch")}  # fmt: skip
    return {SETTINGS_VARIABLE: json.dumps({"model_dir": os.fspath(model_dir), **fields}),
            "LLASM_VLLM_MAX_AUDIO_SECONDS": str(settings.max_audio_seconds)}  # fmt: skip


def audio_token_of(model_dir: str | os.PathLike) -> str:
    """The checkpoint's audio placeholder, as its processor has it."""
    import modeling_llasm  # noqa: F401  (AutoProcessor learns "llasm")
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(model_dir).audio_token


class LlasmRequestGuard:
    """ASGI middleware: `llasm serve`'s request guard and checks in front of vLLM's app (see the module's docstring)."""

    def __init__(self, app, settings: ServerSettings | None = None, audio_token: str | None = None):
        if settings is None:
            raw = os.environ.get(SETTINGS_VARIABLE)
            if not raw:
                raise RuntimeError(f"{SETTINGS_VARIABLE} is not set: start vLLM with `llasm serve --engine vllm` or "
                                   "`modeling_llasm.serving.vllm_server.VllmServer`.")  # fmt: skip
            fields = json.loads(raw)
            model_dir = fields.pop("model_dir")
            settings = ServerSettings(**fields)
            audio_token = audio_token or audio_token_of(model_dir)
        self.app, self.settings, self.audio_token = app, settings, audio_token
        self.guard = RequestGuard(self.checked, settings, Admission(settings.max_queue + settings.max_batch))

    async def __call__(self, scope, receive, send) -> None:
        await self.guard(scope, receive, send)

    async def checked(self, scope, receive, send) -> None:
        """After the guard (which has read the whole body): check the request and pass it on, rewritten if needed."""
        path = scope["path"].rstrip("/") if scope["type"] == "http" else None
        if scope.get("method") != "POST" or path not in (CHAT_PATH, TRANSCRIPTION_PATH):
            await self.app(scope, receive, send)
            return
        message = await receive()  # the guard replays the body in one message
        body = message.get("body", b"")
        try:
            if path == CHAT_PATH:
                rewritten = await run_in_threadpool(self.checked_chat, body)
            else:
                rewritten = await self.checked_transcription(scope, body)
        except RequestError as error:
            await error_response(error.status, error.message, error.type, error.param, error.code)(scope, receive, send)
            return
        if rewritten is not None:
            body = rewritten
            scope = dict(scope, headers=[(key, value) for key, value in scope["headers"] if key.lower() != b"content-length"]
                         + [(b"content-length", str(len(body)).encode())])  # fmt: skip
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    def checked_chat(self, body: bytes) -> bytes | None:
        """A chat completion request's body, with `max_tokens` filled in when it gives none; `RequestError` for what
        `llasm serve` refuses; None (unchanged) for a body vLLM validates itself."""
        try:
            request = json.loads(body)
        except ValueError:
            return None
        if not isinstance(request, dict) or not isinstance(request.get("messages"), list):
            return None
        total_seconds = 0.0
        for i, message in enumerate(request["messages"]):
            content = message.get("content") if isinstance(message, dict) else None
            if isinstance(content, str):
                refuse_audio_placeholder(content, f"messages.{i}.content", self.audio_token)
            for j, part in enumerate(content if isinstance(content, list) else ()):
                param = f"messages.{i}.content.{j}"
                if not isinstance(part, dict):
                    continue
                if part.get("type") == "text" and isinstance(part.get("text"), str):
                    refuse_audio_placeholder(part["text"], f"{param}.text", self.audio_token)
                audio = part.get("input_audio") if part.get("type") == "input_audio" else None
                if isinstance(audio, dict) and isinstance(audio.get("data"), str):
                    clip = types.SimpleNamespace(data=audio["data"], format=audio.get("format", "wav"))
                    samples = decode_audio_part(clip, f"{param}.input_audio", self.settings)
                    total_seconds = add_request_audio(total_seconds, samples, param, self.settings)
        asked = {name: request.get(name) for name in ("max_tokens", "max_completion_tokens")}
        if not all(value is None or (isinstance(value, int) and not isinstance(value, bool)) for value in asked.values()):
            return None
        max_tokens = requested_max_tokens(asked["max_tokens"], asked["max_completion_tokens"], self.settings)
        if all(value is None for value in asked.values()):
            return json.dumps({**request, "max_tokens": max_tokens}).encode()
        return None

    async def checked_transcription(self, scope: dict[str, Any], body: bytes) -> bytes | None:
        """A transcription form, with `max_completion_tokens` set from the clip's duration when it names none."""
        replayed = False

        async def replay():
            nonlocal replayed
            chunk, replayed = (b"" if replayed else body), True
            return {"type": "http.request", "body": chunk, "more_body": False}

        try:
            form = await Request(scope, replay).form()
        except Exception:  # noqa: BLE001 -- not a form: vLLM answers it
            return None
        try:
            upload = form.get("file")
            if upload is None or isinstance(upload, str):
                return None
            raw = await upload.read()
            name = f"file {upload.filename!r}" if upload.filename else "file"
            samples = await run_in_threadpool(decode_audio_bytes, raw, "file", name, "audio", self.settings)
            asked = form.get("max_completion_tokens")
            if asked is not None:
                try:
                    requested_max_tokens(None, int(asked), self.settings)
                except ValueError:
                    pass  # not a number: vLLM's validation says so
                return None
            budget = transcript_max_tokens(len(samples) / SAMPLING_RATE, self.settings)
        finally:
            await form.close()
        return with_form_field(body, content_type(scope), "max_completion_tokens", str(budget))


def content_type(scope: dict[str, Any]) -> str:
    return next((value.decode("latin-1") for key, value in scope["headers"] if key.lower() == b"content-type"), "")


def with_form_field(body: bytes, content_type: str, name: str, value: str) -> bytes:
    """A multipart/form-data body with one more field, before its closing boundary."""
    boundary = next(part.split("=", 1)[1].strip().strip('"') for part in content_type.split(";") if part.strip().startswith("boundary="))
    closing = f"--{boundary}--".encode()
    end = body.rindex(closing)
    field = f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
    return body[:end] + field + body[end:]


__all__ = ["LlasmRequestGuard", "SETTINGS_VARIABLE", "audio_token_of", "guard_environment", "with_form_field"]
