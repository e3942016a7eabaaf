"""`create_app(model, processor, settings)`: the OpenAI-compatible chat-completions server as a FastAPI app.

Endpoints: `POST /v1/chat/completions` (text and `input_audio` content parts, streaming as SSE),
`POST /v1/audio/transcriptions` (a multipart audio file, asked by `processor.apply_transcription_request`), `GET /v1/models`,
`GET /v1/models/{id}`, `GET /health`. Every client error is a 4xx with OpenAI's error body
`{"error": {"message", "type", "param", "code"}}`; nothing is fetched from anywhere.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import copy
import io
import json
import logging
import re
import secrets
import threading
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from jinja2.exceptions import TemplateError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..configuration_llasm import reader_language_code
from ..processing_llasm import load_audio
from .engine import Completion, Engine, Job, QueueFull, Sampling, ShuttingDown, stop_index
from .protocol import ChatCompletionRequest, RequestError, chat_completion_body, error_body, error_response, queue_full_response, unavailable_response, usage_body, validation_error_body
from .spoken import SPOKEN_TURN_PATH, BodyTooLarge, add_spoken_turns

logger = logging.getLogger("modeling_llasm.serving")
_error = error_response


def _queue_full(settings: ServerSettings) -> JSONResponse:
    return queue_full_response(settings.max_queue)


_unavailable = unavailable_response

SAMPLING_RATE = 16000
# requests admitted against the queue's room
GENERATING_PATHS = ("/v1/chat/completions", "/v1/audio/transcriptions", SPOKEN_TURN_PATH)
TRANSCRIPTION_FIELDS = ("file", "model", "language", "prompt", "response_format", "temperature")
TRANSCRIPTION_FORMATS = ("json", "text")
TRANSCRIPT_TOKENS_BASE, TRANSCRIPT_TOKENS_PER_SECOND = 16, 10.0


@dataclass
class ServerSettings:
    """Everything `create_app` needs besides the model (the CLI flags of `llasm serve`, less host and port)."""

    model_id: str = "llasm"
    api_key: str | None = None
    max_body_mb: float = 25.0
    max_audio_seconds: float = 120.0  # per clip
    max_request_audio_seconds: float = 300.0  # all clips of one request (earlier turns included)
    max_tokens_limit: int = 1024
    default_max_tokens: int = 256
    default_temperature: float = 0.0  # greedy unless the request asks otherwise (OpenAI's default would be 1.0)
    max_queue: int = 64
    max_batch: int = 8
    batch_wait_ms: float = 5.0
    max_conversations: int = 8  # KV caches of recent conversations kept for their next turn (0: no reuse)

    def __post_init__(self) -> None:
        for name in ("max_body_mb", "max_audio_seconds", "max_request_audio_seconds"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}.")
        for name in ("max_tokens_limit", "default_max_tokens", "max_queue", "max_batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")
        if self.batch_wait_ms < 0:
            raise ValueError(f"batch_wait_ms must be >= 0, got {self.batch_wait_ms}.")
        if self.max_conversations < 0:
            raise ValueError(f"max_conversations must be >= 0, got {self.max_conversations}.")
        self.default_max_tokens = min(self.default_max_tokens, self.max_tokens_limit)

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 1024 * 1024)


class Admission:
    """How many chat requests are in flight, from their first body byte to their last response byte (reading,
    preprocessing, queued, generating, streaming), and how many may be: the queue's room plus one batch. Bounds the
    memory held by bodies and decoded audio, which the engine's queue alone would not (it only sees requests once
    they are preprocessed). Only touched from the event loop: no lock."""

    def __init__(self, limit: int):
        self.limit, self.in_flight = limit, 0


class RequestGuard:
    """ASGI middleware run before any body parsing: Bearer auth on /v1/*, admission of chat requests (429 when too
    many are in flight), and the body-size limit (Content-Length first, then the bytes actually received, so a
    chunked or lying body is cut off too)."""

    def __init__(self, app, settings: ServerSettings, admission: Admission):
        self.app, self.settings, self.admission = app, settings, admission

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {key.lower(): value for key, value in scope.get("headers", [])}
        key = self.settings.api_key
        if key and scope["path"].startswith("/v1"):
            scheme, _, token = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
            if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip().encode(), key.encode()):
                missing = not token.strip()
                message = "Missing API key: send 'Authorization: Bearer KEY'." if missing else "Incorrect API key provided."
                await _error(401, message, code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})(scope, receive, send)
                return
        counted = scope.get("method") == "POST" and scope["path"].rstrip("/") in GENERATING_PATHS
        if counted:
            if self.admission.in_flight >= self.admission.limit:
                await _queue_full(self.settings)(scope, receive, send)
                return
            self.admission.in_flight += 1
        try:
            await self._limited(scope, receive, send, headers)
        finally:
            if counted:
                self.admission.in_flight -= 1

    async def _limited(self, scope, receive, send, headers: dict[bytes, bytes]) -> None:
        limit = self.settings.max_body_bytes
        limit_text = f"--max-body-mb {self.settings.max_body_mb:g} ({limit} bytes)"
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                await _error(400, f"Invalid Content-Length header {declared!r}.", code="invalid_request")(scope, receive, send)
                return
            if size > limit:
                message = f"Request body too large: Content-Length {size} bytes exceeds the limit {limit_text}."
                await _error(400, message, code="body_too_large")(scope, receive, send)
                return
        if scope.get("method") not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        if scope["path"].rstrip("/") == SPOKEN_TURN_PATH:  # read as it arrives: counted, not held back
            received = 0

            async def counted():
                nonlocal received
                message = await receive()
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(f"Request body too large: more than {limit} bytes received, over the limit {limit_text}.")
                return message

            await self.app(scope, counted, send)
            return
        chunks, total = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > limit:
                message = f"Request body too large: more than {limit} bytes received, over the limit {limit_text}."
                await _error(400, message, code="body_too_large")(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # later: the client's disconnect, which streaming responses watch for

        await self.app(scope, replay, send)


def decode_audio_part(part, param: str, settings: ServerSettings) -> np.ndarray:
    """base64 -> 16 kHz float32 mono, or `RequestError` naming the problem (and the limit and value if too long)."""
    data = part.data.strip()
    if data.startswith("data:"):  # data URL: data:audio/wav;base64,....
        header, _, data = data.partition(",")
        if ";base64" not in header:
            raise RequestError(f"{param}.data: a data URL must be base64-encoded (';base64,').", f"{param}.data")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as error:
        raise RequestError(f"{param}.data is not valid base64 ({error}).", f"{param}.data", "invalid_base64") from error
    return decode_audio_bytes(raw, f"{param}.data", param, f"{part.format} audio", settings)


def decode_audio_bytes(raw: bytes, param: str, name: str, what: str, settings: ServerSettings) -> np.ndarray:
    """An encoded audio file -> 16 kHz float32 mono, or `RequestError` on `param` (`name` in the message)."""
    if not raw:
        raise RequestError(f"{param} is empty: no audio.", param, "empty_audio")
    import soundfile

    try:
        info = soundfile.info(io.BytesIO(raw))
    except Exception as error:  # noqa: BLE001 -- libsndfile's own error types
        reason = re.sub(r"^Error opening <[^>]*>: ", "", str(error)).strip()
        raise RequestError(f"{param} could not be decoded as {what} ({reason}).", param, "invalid_audio") from error
    limit = settings.max_audio_seconds
    if info.samplerate > 0 and info.frames > 0 and info.frames / info.samplerate > limit:
        seconds = info.frames / info.samplerate
        raise RequestError(f"{name}: audio clip of {seconds:.1f} s exceeds the limit --max-audio-seconds {limit:g}.",
                           param, "audio_too_long")  # fmt: skip
    try:
        samples = load_audio(raw, target_rate=SAMPLING_RATE)
    except ValueError as error:
        code = "empty_audio" if "empty" in str(error) else "invalid_audio"
        raise RequestError(f"{param}: {error}", param, code) from error
    seconds = len(samples) / SAMPLING_RATE
    if seconds > limit:  # the header may have under-stated the length
        raise RequestError(f"{name}: audio clip of {seconds:.1f} s exceeds the limit --max-audio-seconds {limit:g}.",
                           param, "audio_too_long")  # fmt: skip
    return samples


def refuse_audio_placeholder(text: str, param: str, audio_token: str | None) -> None:
    """`RequestError` when typed text holds the audio placeholder: the processor would take it for a clip."""
    if audio_token and audio_token in text:
        raise RequestError(f"{param}: text may not contain the audio placeholder {audio_token!r}; send audio as an "
                           "input_audio part.", param)  # fmt: skip


def add_request_audio(total_seconds: float, samples: np.ndarray, param: str, settings: ServerSettings) -> float:
    """The request's audio so far plus this clip, or `RequestError` over --max-request-audio-seconds."""
    total_seconds += len(samples) / SAMPLING_RATE
    if total_seconds > settings.max_request_audio_seconds:
        raise RequestError(
            f"The request's audio adds up to more than {total_seconds:.1f} s, over the limit "
            f"--max-request-audio-seconds {settings.max_request_audio_seconds:g}.", param, "audio_too_long",
        )  # fmt: skip
    return total_seconds


def requested_max_tokens(max_tokens: int | None, max_completion_tokens: int | None, settings: ServerSettings) -> int:
    """The tokens a chat request may generate: what it asks (`max_tokens` or `max_completion_tokens`, which must
    agree), else --default-max-tokens; `RequestError` over --max-tokens-limit."""
    if max_tokens is not None and max_completion_tokens is not None and max_tokens != max_completion_tokens:
        raise RequestError(
            f"max_tokens ({max_tokens}) and max_completion_tokens ({max_completion_tokens}) disagree; give one.",
            "max_completion_tokens",
        )  # fmt: skip
    requested = max_completion_tokens or max_tokens
    param = "max_completion_tokens" if max_completion_tokens is not None else "max_tokens"
    if requested is None:
        return settings.default_max_tokens
    if requested > settings.max_tokens_limit:
        raise RequestError(f"{param} = {requested} exceeds the limit --max-tokens-limit {settings.max_tokens_limit}.",
                           param, "max_tokens_too_large")  # fmt: skip
    return requested


def transcript_max_tokens(seconds: float, settings: ServerSettings) -> int:
    """A transcription's token budget: room for fast speech (~5 words/s) and no more, so that a model that loops
    stops soon after the words run out; at most --max-tokens-limit."""
    return min(settings.max_tokens_limit, TRANSCRIPT_TOKENS_BASE + int(TRANSCRIPT_TOKENS_PER_SECOND * seconds))


def to_messages(request: ChatCompletionRequest, settings: ServerSettings, audio_token: str | None = None) -> list[dict]:
    """OpenAI messages -> `LlasmProcessor` chat messages (audio decoded), checking the audio limits. Text holding
    `audio_token` is refused: the processor would take it for an audio placeholder."""
    messages, total_seconds = [], 0.0

    def check_text(text: str, param: str) -> None:
        refuse_audio_placeholder(text, param, audio_token)

    for i, message in enumerate(request.messages):
        role = "system" if message.role == "developer" else message.role
        if isinstance(message.content, str):
            check_text(message.content, f"messages.{i}.content")
            messages.append({"role": role, "content": message.content})
            continue
        content = []
        for j, part in enumerate(message.content):
            param = f"messages.{i}.content.{j}"
            if part.type == "text":
                check_text(part.text, f"{param}.text")
                content.append({"type": "text", "text": part.text})
                continue
            if role != "user":
                raise RequestError(f"{param}: audio is only accepted in user messages (this is a {message.role!r} message).", param)
            samples = decode_audio_part(part.input_audio, f"{param}.input_audio", settings)
            total_seconds = add_request_audio(total_seconds, samples, param, settings)
            content.append({"type": "audio", "array": samples, "sampling_rate": SAMPLING_RATE})
        messages.append({"role": role, "content": content})
    if not any(m["role"] == "user" for m in messages):
        raise RequestError("The conversation has no user message: add at least one message with role 'user'.", "messages",
                           "no_user_message")  # fmt: skip
    return messages


def _request_options(request: ChatCompletionRequest, settings: ServerSettings) -> tuple[int, Sampling, tuple[str, ...]]:
    if request.n not in (None, 1):
        raise RequestError(f"n = {request.n} is not supported: this server returns one choice (n = 1).", "n", "unsupported_value")
    if request.stream_options is not None and not request.stream:
        raise RequestError("stream_options is only allowed with stream: true.", "stream_options")
    max_tokens = requested_max_tokens(request.max_tokens, request.max_completion_tokens, settings)
    temperature = settings.default_temperature if request.temperature is None else request.temperature
    sampling = Sampling(temperature=temperature, top_p=1.0 if request.top_p is None else request.top_p, seed=request.seed)
    stop = (request.stop,) if isinstance(request.stop, str) else tuple(request.stop or ())
    return max_tokens, sampling, stop


def create_app(model, processor, settings: ServerSettings | None = None) -> FastAPI:
    """The server for an already loaded `model` (eval mode) and its `processor`. The generation worker starts with
    the app (lifespan) and stops with it."""
    settings = settings or ServerSettings()
    engine = Engine(model, processor, settings.max_queue, settings.max_batch, settings.batch_wait_ms / 1000.0,
                    settings.max_conversations)  # fmt: skip
    try:  # the worker decodes with its own copy: a fast tokenizer must not be used from two threads at once
        engine.tokenizer = copy.deepcopy(processor.tokenizer)
    except Exception:  # noqa: BLE001
        logger.warning("could not copy the tokenizer; decoding shares it with preprocessing")
    preprocess_lock = threading.Lock()
    context = getattr(getattr(model.config, "text_config", model.config), "max_position_embeddings", None)
    created = int(time.time())

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        engine.start()
        try:
            yield
        finally:
            engine.stop()

    app = FastAPI(title="LLaSM OpenAI-compatible server", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.engine, app.state.settings = engine, settings
    admission = Admission(settings.max_queue + settings.max_batch)
    app.add_middleware(RequestGuard, settings=settings, admission=admission)

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(request: Request, error: RequestValidationError):
        return JSONResponse(validation_error_body(list(error.errors())), status_code=400)

    @app.exception_handler(RequestError)
    async def on_request_error(request: Request, error: RequestError):
        return _error(error.status, error.message, error.type, error.param, error.code)

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, error: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code)
        return _error(error.status_code, str(error.detail), param=None, code=code, headers=getattr(error, "headers", None))

    @app.exception_handler(Exception)
    async def on_unexpected(request: Request, error: Exception):
        logger.exception("unexpected error")
        return _error(500, f"Internal server error: {type(error).__name__}.", "server_error", code="internal_error")

    @app.get("/health")
    async def health():
        status = {"status": "ok" if engine.alive else "error", "model": settings.model_id, "queued": engine.queued,
                  "running": engine.running, "in_flight": admission.in_flight, "max_in_flight": admission.limit,
                  "max_queue": settings.max_queue, "max_batch": settings.max_batch,
                  "dtype": str(model.dtype).removeprefix("torch."),
                  "generate_calls": engine.stats["generate_calls"], "requests": engine.stats["requests"],
                  "conversation_reuse": dict(engine.conversations.stats)}  # fmt: skip
        return JSONResponse(status, status_code=200 if engine.alive else 503)

    def model_card() -> dict:
        return {"id": settings.model_id, "object": "model", "created": created, "owned_by": "llasm"}

    def check_model(model_id: str) -> None:
        if model_id != settings.model_id:
            raise RequestError(f"The model {model_id!r} does not exist; this server serves {settings.model_id!r}.",
                               "model", "model_not_found", status=404)  # fmt: skip

    def check_language(language: str) -> str | None:
        """The language to read the audio in (`whisper_reader`: one its Whisper knows; other adaptors: English only,
        which they hear anyway, so None), or a 400."""
        config = model.config
        if config.adaptor_type != "whisper_reader":
            if language != "en":
                raise RequestError(f"language {language!r} is not supported: this model's {config.adaptor_type} adaptor hears "
                                   "English ('en') only.", "language", "unsupported_value")  # fmt: skip
            return None
        try:
            return reader_language_code(language, config.reader_language_ids)
        except ValueError as error:
            raise RequestError(f"language: {error}", "language", "unsupported_value") from error

    add_spoken_turns(app, engine, settings, check_model, check_language)

    @app.get("/v1/models")
    async def list_models():
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str):
        check_model(model_id)
        return model_card()

    def prepare(request: ChatCompletionRequest) -> dict[str, Any]:
        """In a thread-pool thread: decode audio, apply the chat template, compute features."""
        messages = to_messages(request, settings, processor.audio_token)
        with preprocess_lock:
            try:
                inputs = processor.apply_chat_template(messages, add_generation_prompt=True)
            except (ValueError, TemplateError) as error:  # a template may refuse a conversation (raise_exception)
                raise RequestError(f"messages: {error}", "messages") from error
        return dict(inputs)

    async def complete(inputs: dict, max_tokens: int, sampling: Sampling, stop: tuple[str, ...]) -> Completion | JSONResponse:
        """Queue one non-streaming generation and wait for it: its completion, or the response that refuses it."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future = loop.create_future()
        job = Job(inputs, max_tokens, sampling, stop, on_done=lambda r, e: _call_soon(loop, _resolve, future, r, e))
        refused = _submit(engine, job, settings)
        if refused is not None:
            return refused
        try:
            return await future
        except asyncio.CancelledError:
            job.cancelled.set()
            raise
        except ShuttingDown as error:
            return _unavailable(error)
        except Exception as error:  # noqa: BLE001 -- a failed generate (a bug): a 500 the client can read
            return _error(500, f"Generation failed: {type(error).__name__}: {error}", "server_error", code="generation_failed")

    @app.post("/v1/audio/transcriptions")
    async def transcriptions(request: Request):
        """OpenAI's audio transcription API: a multipart form with the audio `file`; the model is asked by
        `processor.apply_transcription_request`. Greedy unless `temperature` is given; `json` or `text` responses."""
        if engine.full():
            return _queue_full(settings)
        try:
            form = await request.form(max_files=1, max_fields=len(TRANSCRIPTION_FIELDS))
        except Exception as error:  # noqa: BLE001 -- starlette's multipart errors (not a form, too many parts)
            raise RequestError(f"The body must be a multipart/form-data form with an audio 'file' ({error}).", None,
                               "invalid_request") from error  # fmt: skip
        unknown = sorted(set(form.keys()) - set(TRANSCRIPTION_FIELDS))
        if unknown:
            raise RequestError(f"Unknown form field(s) {unknown}; this endpoint takes {list(TRANSCRIPTION_FIELDS)}.", unknown[0])
        if form.get("model") is not None:
            check_model(form.get("model"))
        if form.get("prompt"):
            raise RequestError("prompt is not supported: the transcription prompt is the model's own (processor.transcription_prompt).",
                               "prompt", "unsupported_value")  # fmt: skip
        language = form.get("language") or None
        if language is not None:
            language = check_language(language)
        response_format = form.get("response_format") or "json"
        if response_format not in TRANSCRIPTION_FORMATS:
            raise RequestError(f"response_format {response_format!r} is not supported; use one of {list(TRANSCRIPTION_FORMATS)}.",
                               "response_format", "unsupported_value")  # fmt: skip
        try:
            temperature = float(form.get("temperature") or settings.default_temperature)
        except ValueError as error:
            raise RequestError(f"temperature must be a number, got {form.get('temperature')!r}.", "temperature") from error
        if not 0.0 <= temperature <= 2.0:
            raise RequestError(f"temperature must be between 0 and 2, got {temperature:g}.", "temperature")
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise RequestError("The form needs the audio as a file field named 'file'.", "file", "missing_file")
        raw = await upload.read()
        name = f"file {upload.filename!r}" if upload.filename else "file"

        def prepare_transcription() -> tuple[dict[str, Any], float]:
            samples = decode_audio_bytes(raw, "file", name, "audio", settings)
            with preprocess_lock:
                return (dict(processor.apply_transcription_request(samples, sampling_rate=SAMPLING_RATE, language=language)),
                        len(samples) / SAMPLING_RATE)  # fmt: skip

        inputs, seconds = await run_in_threadpool(prepare_transcription)
        max_tokens = transcript_max_tokens(seconds, settings)
        if context is not None:
            max_tokens = min(max_tokens, context - int(inputs["attention_mask"].sum()))
            if max_tokens < 1:
                raise RequestError(f"The audio fills the model's context of {context} tokens.", "file", "context_length_exceeded")
        result = await complete(inputs, max_tokens, Sampling(temperature=temperature), ())
        if isinstance(result, JSONResponse):
            return result
        if response_format == "text":
            return PlainTextResponse(result.text)
        return {"text": result.text, "usage": {"type": "tokens", "input_tokens": result.prompt_tokens,
                                               "output_tokens": result.completion_tokens,
                                               "total_tokens": result.prompt_tokens + result.completion_tokens}}  # fmt: skip

    @app.post("/v1/chat/completions")
    async def chat_completions(request: ChatCompletionRequest):
        if request.model is not None:
            check_model(request.model)
        max_tokens, sampling, stop = _request_options(request, settings)
        if engine.full():  # refuse before spending time on the audio
            return _queue_full(settings)
        inputs = await run_in_threadpool(prepare, request)
        prompt_tokens = int(inputs["attention_mask"].sum())
        if context is not None and prompt_tokens + max_tokens > context:
            raise RequestError(
                f"The prompt ({prompt_tokens} tokens, audio included) plus max_tokens ({max_tokens}) exceeds the model's "
                f"context of {context} tokens.", "messages", "context_length_exceeded",
            )  # fmt: skip
        loop = asyncio.get_running_loop()
        completion_id, created_at = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        if not request.stream:
            result = await complete(inputs, max_tokens, sampling, stop)
            if isinstance(result, JSONResponse):
                return result
            return chat_completion_body(result, settings.model_id)
        events: asyncio.Queue = asyncio.Queue()
        job = Job(inputs, max_tokens, sampling, stop,
                  on_done=lambda r, e: _call_soon(loop, events.put_nowait, ("done", r, e)),
                  on_text=lambda text: _call_soon(loop, events.put_nowait, ("text", text, None)))  # fmt: skip
        refused = _submit(engine, job, settings)
        if refused is not None:
            return refused
        include_usage = bool(request.stream_options and request.stream_options.include_usage)
        chunks = _sse_chunks(job, events, stop, completion_id, created_at, settings.model_id, include_usage)
        return StreamingResponse(chunks, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    return app


def _submit(engine: Engine, job: Job, settings: ServerSettings) -> JSONResponse | None:
    """Queue `job`; the response that refuses it (queue full, shutting down), or None once it is queued."""
    try:
        engine.submit(job)
    except QueueFull:
        return _queue_full(settings)
    except ShuttingDown as error:
        return _unavailable(error)
    return None


def _call_soon(loop: asyncio.AbstractEventLoop, callback, *args) -> None:
    try:
        loop.call_soon_threadsafe(callback, *args)
    except RuntimeError:  # the loop is closed: the server is gone, nobody waits for this answer
        pass


def _resolve(future: asyncio.Future, result, error) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


_usage = usage_body


def _visible(raw: str, stop: tuple[str, ...]) -> str:
    """The part of the streamed text that is certainly in the final answer: cut at a stop string, minus a tail that
    could still become one, stripped as the final answer is (so the stream never sends what it must take back)."""
    cut = stop_index(raw, stop)
    if cut >= 0:
        return raw[:cut].strip()
    holdback = max((len(s) - 1 for s in stop), default=0)
    return (raw[: len(raw) - holdback] if holdback else raw).strip()


async def _sse_chunks(job: Job, events: asyncio.Queue, stop: tuple[str, ...], completion_id: str, created: int,
                      model_id: str, include_usage: bool) -> AsyncIterator[str]:  # fmt: skip
    def chunk(delta: dict, finish_reason: str | None = None) -> str:
        body = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model_id,
                "system_fingerprint": None,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}]}  # fmt: skip
        if include_usage:
            body["usage"] = None
        return f"data: {json.dumps(body)}\n\n"

    finished = False
    try:
        yield chunk({"role": "assistant", "content": ""})
        raw, sent = "", ""
        while True:
            kind, value, error = await events.get()
            if kind == "text":
                raw += value
                visible = _visible(raw, stop)
                if len(visible) > len(sent) and visible.startswith(sent):
                    yield chunk({"content": visible[len(sent) :]})
                    sent = visible
                continue
            finished = True
            if error is not None:
                body = error_body(f"Generation failed: {type(error).__name__}: {error}", "server_error", code="generation_failed")
                yield f"data: {json.dumps(body)}\n\n"
                yield "data: [DONE]\n\n"
                return
            result: Completion = value
            if result.text.startswith(sent) and len(result.text) > len(sent):
                yield chunk({"content": result.text[len(sent) :]})
            elif not result.text.startswith(sent):
                logger.warning("streamed text diverged from the final answer: %r vs %r", sent, result.text)
            yield chunk({}, result.finish_reason)
            if include_usage:
                usage = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model_id,
                         "system_fingerprint": None, "choices": [], "usage": _usage(result)}  # fmt: skip
                yield f"data: {json.dumps(usage)}\n\n"
            yield "data: [DONE]\n\n"
            return
    finally:
        if not finished:  # the client went away: stop generating for it
            job.cancelled.set()


__all__ = ["ServerSettings", "create_app", "to_messages"]
