"""`POST /v1/audio/chat`: a spoken turn streamed in while it is recorded. The request body is the speech itself, raw
16-bit little-endian mono PCM (`Content-Type: audio/pcm`), sent as it is recorded (chunked transfer encoding); while it
arrives the worker reads it and prefills the LLM (`LlasmAudioStream`), so when the body ends only the tail is left.
The answer is a `chat.completion` object, equal to `/v1/chat/completions` with the same audio as `input_audio`.

Query parameters: `model`, `max_tokens`, `temperature`, `language` (the reader's), `sample_rate` (of the PCM, default
16000), `text` (typed text after the audio in the turn). The response adds `llasm.end_of_speech_to_first_token_s`
(from the body's last byte to the first answer token) and how much was done while the audio arrived.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np
from fastapi import FastAPI, Request

from ..processing_llasm import load_audio
from ..streaming_llasm import LlasmAudioStream
from .engine import Completion, Engine, QueueFull, Sampling, ShuttingDown, Task
from .protocol import RequestError, chat_completion_body, queue_full_response, unavailable_response

SPOKEN_TURN_PATH = "/v1/audio/chat"
PCM_TYPES = ("audio/pcm", "audio/l16", "application/octet-stream")
SAMPLE_RATES = (8000, 16000, 22050, 24000, 32000, 44100, 48000)
UPDATE_SECONDS = 0.25  # new audio that makes the worker read again (when it is free; it never queues more than one)


class BodyTooLarge(Exception):
    """The streamed body went over `--max-body-mb` (raised by the server's guard while the body is read)."""


class _FirstToken:
    """A generation streamer that records when the first new token arrives (the prompt comes first)."""

    def __init__(self) -> None:
        self.calls, self.first_token_at = 0, None

    def put(self, value) -> None:
        self.calls += 1
        if self.calls == 2:
            self.first_token_at = time.perf_counter()

    def end(self) -> None:
        pass


def _number(request: Request, name: str, kind: type, default: Any) -> Any:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        return kind(raw)
    except ValueError:
        raise RequestError(f"{name} must be {'an integer' if kind is int else 'a number'}, got {raw!r}.", name, "invalid_value") from None


def add_spoken_turns(app: FastAPI, engine: Engine, settings, check_model, check_language) -> None:
    """Register `POST /v1/audio/chat` on `app` (see the module docstring). `check_model` / `check_language` are the
    server's own checks (404 for another model, 400 for a language the model cannot read)."""
    model, processor = engine.model, engine.processor

    def submit(fn) -> asyncio.Future:
        """Run `fn` on the worker (raises `QueueFull` / `ShuttingDown` at once when it cannot be queued)."""
        task = Task(fn)
        engine.submit(task)
        return asyncio.wrap_future(task.future)

    @app.post(SPOKEN_TURN_PATH)
    async def spoken_turn(request: Request):
        if request.query_params.get("model") is not None:
            check_model(request.query_params["model"])
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type not in PCM_TYPES:
            raise RequestError(f"The body must be raw 16-bit little-endian mono PCM (Content-Type one of {', '.join(PCM_TYPES)}), "
                               f"got {content_type or 'no Content-Type'!r}.", "body", "unsupported_media_type", status=415)  # fmt: skip
        max_tokens = _number(request, "max_tokens", int, settings.default_max_tokens)
        if not 1 <= max_tokens <= settings.max_tokens_limit:
            raise RequestError(f"max_tokens must be between 1 and {settings.max_tokens_limit}, got {max_tokens}.", "max_tokens", "invalid_value")
        temperature = _number(request, "temperature", float, settings.default_temperature)
        if not 0.0 <= temperature <= 2.0:
            raise RequestError(f"temperature must be between 0 and 2, got {temperature}.", "temperature", "invalid_value")
        rate = _number(request, "sample_rate", int, 16000)
        if rate not in SAMPLE_RATES:
            raise RequestError(f"sample_rate must be one of {SAMPLE_RATES}, got {rate}.", "sample_rate", "invalid_value")
        language = request.query_params.get("language")
        language = check_language(language) if language else None
        if engine.full():
            return _refused(429, settings)
        stream = LlasmAudioStream(model, processor, text=request.query_params.get("text") or None, language=language,
                                  update_seconds=0)  # fmt: skip
        limit = int(settings.max_audio_seconds * rate)
        pending, received = bytearray(), 0
        unread: list[np.ndarray] = []  # audio converted but not yet given to the stream
        reading: asyncio.Future | None = None

        def read(chunks: list[np.ndarray], update: bool = True) -> None:  # on the worker
            for index, chunk in enumerate(chunks):
                stream.append(chunk, update=update and index == len(chunks) - 1)

        try:
            async for piece in request.stream():
                pending += piece
                received += len(piece) // 2
                if received > limit:
                    raise RequestError(f"The audio is longer than the limit of {settings.max_audio_seconds:g} s "
                                       "(--max-audio-seconds).", "body", "audio_too_long")  # fmt: skip
                if len(pending) >= 2 * int(UPDATE_SECONDS * rate) and (reading is None or reading.done()):
                    if reading is not None:
                        reading.result()  # a failed reading ends the request
                    unread.append(_pcm(pending, len(pending) // 2 * 2, rate))
                    try:  # read what arrived, on the worker; when it is busy the audio waits for the next chance
                        reading, unread = submit(lambda chunks=list(unread): read(chunks)), []
                    except QueueFull:
                        reading = None
        except BodyTooLarge as error:
            raise RequestError(str(error), "body", "body_too_large") from None
        except ShuttingDown as error:
            return _refused(503, settings, error)
        end_of_speech = time.perf_counter()
        if reading is not None:
            await reading
        if len(pending) % 2:
            raise RequestError("The body does not hold whole 16-bit samples (an odd number of bytes).", "body", "invalid_audio")
        if pending:
            unread.append(_pcm(pending, len(pending), rate))
        if not stream.samples and not unread:
            raise RequestError("The body holds no audio.", "body", "invalid_audio")
        first = _FirstToken()
        sampling = Sampling(temperature=temperature)

        def answer() -> Completion:  # on the worker, as a chat completion's answer is made
            read(unread, update=False)
            output = stream.generate(max_new_tokens=max_tokens, streamer=first, pad_token_id=processor.pad_token_id,
                                     **sampling.generate_kwargs())  # fmt: skip
            return engine.completion(output[0, stream.prompt_length :].tolist(), max_tokens, stream.prompt_length)

        try:
            result = await submit(answer)
        except QueueFull:
            return _refused(429, settings)
        except ShuttingDown as error:
            return _refused(503, settings, error)
        return chat_completion_body(result, settings.model_id, llasm={
            "audio_seconds": round(stream.samples / processor.feature_extractor.sampling_rate, 3),
            "end_of_speech_to_first_token_s": None if first.first_token_at is None else round(first.first_token_at - end_of_speech, 4),
            "readings_while_streaming": stream.updates,
            "prompt_positions_reused": stream.cache.reused_tokens,
        })  # fmt: skip


def _pcm(pending: bytearray, length: int, rate: int) -> np.ndarray:
    """The first `length` bytes of `pending` (removed from it) as float samples at 16 kHz."""
    samples = np.frombuffer(bytes(pending[:length]), dtype="<i2").astype(np.float32) / 32768.0
    del pending[:length]
    return load_audio(samples, sampling_rate=rate)


def _refused(status: int, settings, error: Exception | None = None):
    return queue_full_response(settings.max_queue) if status == 429 else unavailable_response(error)
