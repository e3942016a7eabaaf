"""Read conversation files in the common formats and turn them into pending chat records (human turns to voice).

Accepted record formats (one per JSONL line, or a JSON array of records, or one JSON object):

- ShareGPT / LLaVA / WizardLM: `{"id"?, "conversations": [{"from": "human"|"gpt"|"system", "value": str}]}`
  (`from` may also be "user", "assistant", "chatgpt", "bard", "bing", "model").
- OpenAI / transformers chat: `{"id"?, "messages": [{"role": ..., "content": str | [{"type": "text", ...}]}]}`.
- Alpaca / GPT-4-LLM / Evol-Instruct: `{"instruction": str, "input"?: str, "output": str}`; the human turn is
  the instruction, followed by the input on a new line when present.

Every human turn becomes a pending audio part (`{"type": "audio", "transcript": text}`); other turns stay text.
Record ids are `<file stem>-<index in file, 7 digits>`; an `id` / `idx` field in the input is kept as `source_id`.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .chat import audio_part, message, text_part
from .filters import detect_language


_ROLE_ALIASES = {
    "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "chatgpt": "assistant",
    "bard": "assistant", "bing": "assistant", "model": "assistant", "system": "system",
}  # fmt: skip


@dataclass(frozen=True)
class SkippedRecord:
    """An input record that cannot become a conversation; `reason` says why."""

    id: str
    reason: str


class ConversationFormatError(ValueError):
    """A record is not in a supported conversation format."""


def _text_of(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
            else:
                raise ConversationFormatError(f"{where}: only text content parts can be voiced, got {part!r:.80}")
        return "\n".join(texts)
    raise ConversationFormatError(f"{where}: expected a string or a list of text parts, got {type(content).__name__}")


def normalize_conversation(raw: Any, record_id: str) -> dict[str, Any]:
    """A pending chat record from one input record; raises `ConversationFormatError` with the reason."""
    if not isinstance(raw, dict):
        raise ConversationFormatError(f"expected a JSON object, got {type(raw).__name__}")
    turns: list[tuple[str, str]] = []
    if "conversations" in raw:
        convs = raw["conversations"]
        if not isinstance(convs, list):
            raise ConversationFormatError(f"'conversations' must be a list, got {type(convs).__name__}")
        for i, turn in enumerate(convs):
            if not isinstance(turn, dict) or not isinstance(turn.get("value"), str):
                raise ConversationFormatError(f"conversations[{i}]: expected {{'from', 'value': str}}, got {turn!r:.80}")
            role = _ROLE_ALIASES.get(str(turn.get("from", "")).lower())
            if role is None:
                raise ConversationFormatError(f"conversations[{i}]: unknown speaker {turn.get('from')!r}")
            turns.append((role, turn["value"]))
    elif "messages" in raw:
        msgs = raw["messages"]
        if not isinstance(msgs, list):
            raise ConversationFormatError(f"'messages' must be a list, got {type(msgs).__name__}")
        for i, msg in enumerate(msgs):
            if not isinstance(msg, dict):
                raise ConversationFormatError(f"messages[{i}]: expected an object, got {msg!r:.80}")
            role = _ROLE_ALIASES.get(str(msg.get("role", "")).lower())
            if role is None:
                raise ConversationFormatError(f"messages[{i}]: unknown role {msg.get('role')!r}")
            turns.append((role, _text_of(msg.get("content"), f"messages[{i}].content")))
    elif "instruction" in raw and "output" in raw:
        instruction, extra, output = raw["instruction"], raw.get("input") or "", raw["output"]
        if not all(isinstance(x, str) for x in (instruction, extra, output)):
            raise ConversationFormatError("'instruction', 'input' and 'output' must be strings")
        human = instruction.strip() + ("\n" + extra.strip() if extra.strip() else "")
        turns = [("user", human), ("assistant", output)]
    else:
        raise ConversationFormatError(
            f"unknown format: expected 'conversations', 'messages' or 'instruction'+'output', got keys {sorted(raw)[:8]}"
        )
    for i, (role, text) in enumerate(turns):
        if not text.strip():
            raise ConversationFormatError(f"turn {i} ({role}) is empty")
    messages = [
        message(role, audio_part(text.strip()) if role == "user" else text_part(text.strip())) for role, text in turns
    ]
    record: dict[str, Any] = {"id": record_id}
    source_id = raw.get("id", raw.get("idx"))
    if source_id is not None:
        record["source_id"] = str(source_id)
    record["language"] = detect_language(" ".join(text for role, text in turns if role == "user"))
    record["messages"] = messages
    return record


def record_id_prefix(path: Path) -> str:
    """The prefix of the record ids read from `path` (its name up to the first dot, made id-safe)."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", path.name.split(".")[0]) or "data"
    return stem


def _iter_raw(path: Path) -> Iterator[tuple[int, Any]]:
    """(index, raw record) from a JSON array / object or JSONL file; errors name the file and line."""
    with open(path, encoding="utf-8") as f:
        head = f.read(4096).lstrip()
    if head.startswith("["):
        with open(path, encoding="utf-8") as f:
            try:
                data = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
        yield from enumerate(data)
        return
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if path.suffix.lower() == ".json":
        try:
            yield 0, json.loads(text)
            return
        except json.JSONDecodeError:
            pass  # a .json file holding JSON lines
    index = 0
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            yield index, json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{lineno}: invalid JSON ({e.msg} at column {e.colno})") from None
        index += 1


def read_conversations(path: str | os.PathLike) -> Iterator[dict[str, Any] | SkippedRecord]:
    """Pending chat records from one conversation file; unusable records come back as `SkippedRecord`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"conversation file {path} not found")
    stem = record_id_prefix(path)
    for index, raw in _iter_raw(path):
        record_id = f"{stem}-{index:07d}"
        try:
            yield normalize_conversation(raw, record_id)
        except ConversationFormatError as e:
            yield SkippedRecord(record_id, f"bad_format: {e}")
