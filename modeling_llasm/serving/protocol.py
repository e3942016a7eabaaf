"""The OpenAI chat-completions request schema (pydantic, strict) and the OpenAI error body."""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal, Union

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

AUDIO_FORMATS = ("wav", "flac", "mp3", "ogg")


class _Strict(BaseModel):
    # unknown fields and wrong types are errors (strict: no "5" -> 5 coercion); the app turns them into 400s
    model_config = ConfigDict(extra="forbid", strict=True)


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class InputAudio(_Strict):
    data: str = Field(description="base64 of the encoded file (a `data:audio/...;base64,` prefix is accepted)")
    format: Literal["wav", "flac", "mp3", "ogg"]


class AudioPart(_Strict):
    type: Literal["input_audio"]
    input_audio: InputAudio


ContentPart = Annotated[Union[TextPart, AudioPart], Field(discriminator="type")]


class Message(_Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: Union[str, Annotated[list[ContentPart], Field(min_length=1)]]
    name: str | None = None  # accepted and ignored, as OpenAI's optional participant name


class StreamOptions(_Strict):
    include_usage: bool = False


class ChatCompletionRequest(_Strict):
    messages: Annotated[list[Message], Field(min_length=1)]
    model: str | None = None
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    stop: Union[Annotated[str, Field(min_length=1)], Annotated[list[Annotated[str, Field(min_length=1)]], Field(max_length=4)]] | None = None
    n: Annotated[int, Field(ge=1)] | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    seed: int | None = None
    user: str | None = None  # accepted and ignored


class RequestError(Exception):
    """A client error that becomes an OpenAI-style error response."""

    def __init__(self, message: str, param: str | None = None, code: str | None = "invalid_value", status: int = 400,
                 type: str = "invalid_request_error"):  # fmt: skip
        super().__init__(message)
        self.message, self.param, self.code, self.status, self.type = message, param, code, status, type


def error_body(message: str, type: str = "invalid_request_error", param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def error_response(status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                   code: str | None = None, headers: dict | None = None) -> JSONResponse:  # fmt: skip
    """An OpenAI-style error response."""
    return JSONResponse(error_body(message, type, param, code), status_code=status, headers=headers)


def queue_full_response(max_queue: int) -> JSONResponse:
    """429: the request queue is full."""
    return error_response(429, f"Server busy: the request queue is full (--max-queue {max_queue}); retry later.",
                          "rate_limit_error", code="queue_full", headers={"Retry-After": "1"})  # fmt: skip


def unavailable_response(error: Exception) -> JSONResponse:
    """503: the server is shutting down."""
    return error_response(503, f"{error} Retry later.", "server_error", code="shutting_down", headers={"Retry-After": "5"})


def chat_completion_body(completion, model_id: str, **extra: Any) -> dict:
    """The `chat.completion` object of a finished answer (`engine.Completion`); `extra`: more top-level fields."""
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()), "model": model_id,
        "system_fingerprint": None,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": completion.text},
                     "finish_reason": completion.finish_reason, "logprobs": None}],
        "usage": usage_body(completion),
        **extra,
    }  # fmt: skip


def usage_body(completion) -> dict:
    """OpenAI's `usage` of a finished answer (`engine.Completion`)."""
    return {"prompt_tokens": completion.prompt_tokens, "completion_tokens": completion.completion_tokens,
            "total_tokens": completion.prompt_tokens + completion.completion_tokens}  # fmt: skip

_BRANCH_LABELS = {"str", "int", "float", "bool", "list", "dict", "none"}


def _param_of(loc: tuple[Any, ...]) -> str:
    """`('body', 'messages', 0, 'content', 'list[...]', 1, 'input_audio', 'input_audio', 'data')` -> the field path
    `messages.0.content.1.input_audio.data`: drops `body`, pydantic's union-branch labels and tagged-union tags."""
    parts: list[str] = []
    previous: Any = None
    for item in loc:
        if item == "body" and not parts:
            continue
        # union-branch labels: `str`, `list[...]`, `constrained-str` (an Annotated str); field names have no `-` or `[`
        if isinstance(item, str) and ("[" in item or "-" in item or item in _BRANCH_LABELS):
            previous = item
            continue
        if isinstance(previous, int) and item in ("text", "input_audio") and "content" in parts:
            previous = "tag"  # the discriminator tag of a content part, not a field
            continue
        parts.append(str(item))
        previous = item
    return ".".join(parts)


def validation_error_body(errors: list[dict]) -> dict:
    """One OpenAI error body from FastAPI/pydantic validation errors: the most specific error, with its field path."""
    if not errors:
        return error_body("Invalid request body.", code="invalid_request")
    described = []
    for error in errors:
        loc = tuple(error.get("loc", ()))
        kind = error.get("type", "")
        if kind == "extra_forbidden":
            message = f"Unknown field {str(loc[-1])!r}: this server does not support it."
        elif kind == "json_invalid":
            message = f"The request body is not valid JSON ({error.get('ctx', {}).get('error', error.get('msg'))})."
            loc = ()
        elif kind == "missing" and loc in (("body",), ()):
            message = "The request needs a JSON body."
        elif loc in (("body",), ()):  # a list, a string, form data...
            message = "The request body must be a JSON object (a chat completion request)."
        else:
            message = str(error.get("msg", "invalid value"))
        described.append((len(loc), _param_of(loc), message, kind))
    # the deepest error is the most specific one (a wrong content part rather than "content is not a string")
    depth = max(d[0] for d in described)
    deepest = [d for d in described if d[0] == depth]
    param = deepest[0][1] or None
    messages = list(dict.fromkeys(d[2] for d in deepest if d[1] == deepest[0][1]))
    if len(messages) > 1 and all(d[3].endswith("_type") for d in deepest):  # a union: none of its types fit
        message = "Input should be " + " or ".join(m.removeprefix("Input should be ") for m in messages)
    else:
        message = "; ".join(messages)
    if param:
        message = f"{param}: {message}"
    return error_body(message, param=param, code=deepest[0][3] or "invalid_value")


__all__ = [
    "AUDIO_FORMATS", "AudioPart", "ChatCompletionRequest", "InputAudio", "Message", "RequestError", "StreamOptions",
    "TextPart", "chat_completion_body", "error_body", "error_response", "queue_full_response", "unavailable_response", "usage_body", "validation_error_body",
]
