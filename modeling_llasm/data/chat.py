"""The chat record format shared by every LLaSM data file (TTS-built conversations, ASR samples, manifests).

One record is one conversation in the transformers chat layout (a list of `{"role", "content": [parts]}`),
so it can be handed to `processor.apply_chat_template` as is:

```json
{"id": "sharegpt-0000012",
 "language": "en",
 "messages": [
   {"role": "user", "content": [
     {"type": "audio", "path": "audio/3f/sharegpt-0000012-00.wav", "transcript": "What is a prime number?",
      "voice": "espeak-ng:en-us+m3", "rate": 1.1, "duration": 1.94}]},
   {"role": "assistant", "content": [{"type": "text", "text": "A prime number is ..."}]}]}
```

- Roles: `system`, `user`, `assistant`.
- Parts: `{"type": "text", "text": str}` or `{"type": "audio", "path": str, "transcript": str, ...}`. An audio
  `path` is relative to the directory of the manifest that holds the record (or absolute). Extra keys on an
  audio part (`voice`, `rate`, `duration`, `sampling_rate`) are metadata; chat templates ignore them.
- An audio part without `path` is *pending*: the dataset builder synthesizes its `transcript` and fills in
  `path`, `voice`, `rate` and `duration`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from ..files import atomic_write_text


SAMPLING_RATE = 16_000
ROLES = ("system", "user", "assistant")
MANIFEST_NAME = "manifest.jsonl"


def text_part(text: str) -> dict[str, Any]:
    """A text content part."""
    return {"type": "text", "text": text}


def audio_part(transcript: str, path: str | None = None, **metadata: Any) -> dict[str, Any]:
    """An audio content part; without `path` it is pending synthesis of `transcript`."""
    part: dict[str, Any] = {"type": "audio"}
    if path is not None:
        part["path"] = path
    part["transcript"] = transcript
    part.update(metadata)
    return part


def message(role: str, *parts: dict[str, Any]) -> dict[str, Any]:
    """A chat message with the given content parts."""
    if role not in ROLES:
        raise ValueError(f"message role must be one of {ROLES}, got {role!r}")
    return {"role": role, "content": list(parts)}


def validate_record(record: Any, *, where: str = "record", require_paths: bool = True) -> None:
    """Raise `ValueError` naming `where` and the field if `record` does not follow the chat record format."""
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if not isinstance(record.get("id"), str) or not record["id"]:
        raise ValueError(f"{where}: field 'id' must be a non-empty string, got {record.get('id')!r}")
    messages = record.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"{where}: field 'messages' must be a non-empty list, got {messages!r:.80}")
    for i, msg in enumerate(messages):
        at = f"{where}: messages[{i}]"
        if not isinstance(msg, dict) or msg.get("role") not in ROLES:
            raise ValueError(f"{at}: expected an object with 'role' in {ROLES}, got {msg!r:.80}")
        content = msg.get("content")
        if not isinstance(content, list) or not content:
            raise ValueError(f"{at}: field 'content' must be a non-empty list of parts, got {content!r:.80}")
        for j, part in enumerate(content):
            pat = f"{at}.content[{j}]"
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text":
                if not isinstance(part.get("text"), str):
                    raise ValueError(f"{pat}: text part needs a string 'text', got {part.get('text')!r:.80}")
            elif kind == "audio":
                if not isinstance(part.get("transcript"), str):
                    raise ValueError(f"{pat}: audio part needs a string 'transcript', got {part.get('transcript')!r:.80}")
                if require_paths and not isinstance(part.get("path"), str):
                    raise ValueError(f"{pat}: audio part needs a string 'path', got {part.get('path')!r:.80}")
            else:
                raise ValueError(f"{pat}: expected a part with type 'text' or 'audio', got {part!r:.80}")


def audio_parts(record: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every audio part of a record, in order."""
    for msg in record["messages"]:
        for part in msg["content"]:
            if part.get("type") == "audio":
                yield part


def transcript_messages(messages: list[dict[str, Any]], *, where: str = "conversation") -> list[dict[str, Any]]:
    """The conversation with every audio part replaced by a text part holding its transcript: what a text-only
    LLM (the cascade, the distillation teacher) reads instead of the speech. Raises `ValueError` naming `where`
    when an audio part has no transcript."""
    out = []
    for message in messages:
        content = message["content"]
        if isinstance(content, str):
            out.append(message)
            continue
        items = []
        for item in content:
            if item.get("type") == "audio":
                transcript = item.get("transcript")
                if not isinstance(transcript, str):
                    raise ValueError(f"{where}: an audio part has no 'transcript' (expected a string, got {transcript!r:.80})")
                items.append({"type": "text", "text": transcript})
            else:
                items.append(item)
        out.append({**message, "content": items})
    return out


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[str, int, Any]]:
    """Yield `(where, line_number, value)` for every non-blank line of a JSONL file; `where` is `"path:line"`
    for error messages. Invalid JSON raises `ValueError` naming the file, line and column."""
    path = Path(path)
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                value = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: invalid JSON ({e.msg} at column {e.colno})") from None
            yield where, lineno, value


def read_manifest(path: str | os.PathLike, *, resolve_paths: bool = True) -> Iterator[dict[str, Any]]:
    """Yield the records of a JSONL manifest; with `resolve_paths`, audio paths become absolute."""
    base = Path(path).parent.resolve()
    for where, _, record in iter_jsonl(path):
        validate_record(record, where=where)
        if resolve_paths:
            for part in audio_parts(record):
                part["path"] = str(base / part["path"])
        yield record


def write_manifest(records: Iterable[dict[str, Any]], path: str | os.PathLike) -> int:
    """Write records as JSONL atomically (temp file + rename); returns the number written."""
    lines = []
    for n, record in enumerate(records, 1):
        validate_record(record, where=f"record {n}")
        lines.append(json.dumps(record, ensure_ascii=False) + "\n")
    atomic_write_text(path, "".join(lines))
    return len(lines)
