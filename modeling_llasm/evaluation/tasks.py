"""Which evaluation a manifest record is for, and the prompts the model / the text LLM / the cascade get.

Records follow the chat record format of `modeling_llasm.data.chat` (see docs/data.md):

- **ASR** (`"task": "asr"`, or a first user turn holding one audio part plus a transcription instruction such as
  "Transcribe the speech."): the reference is the assistant's text (else the audio part's `transcript`).
- **Spoken instruction** (`"task": "spoken_question"` / `"spoken_instruction"`, or a first user turn with audio
  and no ASR instruction): the model answers the audio; the reference answer is the *same LLM* answering the
  gold transcript as text (the audio parts' `transcript`), and agreement is ROUGE-L between the two.

Only the first user turn is evaluated (with a preceding system message, if any).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from ..data.chat import iter_jsonl


ASR = "asr"
SPOKEN = "spoken_instruction"
TASK_ALIASES = {
    "asr": ASR,
    "transcription": ASR,
    "spoken_question": SPOKEN,
    "spoken_instruction": SPOKEN,
    "spoken_chat": SPOKEN,
}

# Words that mark a transcription request (en + zh); extended by the instructions of `data.asr` when importable.
_ASR_PATTERN = re.compile(
    r"transcri|write down what|what does the speaker say|repeat exactly|spoken words|what was said|"
    r"type what you hear|speech to text|转写|转录|听写|识别这段语音|说了什么|文字记录|文字内容|写下你听到|原样写出",
    re.IGNORECASE,
)


def _known_asr_instructions() -> set[str]:
    try:
        from ..data.asr import ASR_INSTRUCTIONS
    except Exception:  # the data tools are optional for evaluation
        return set()
    return {text.strip().lower() for texts in ASR_INSTRUCTIONS.values() for text in texts}


def is_asr_instruction(text: str) -> bool:
    """True if `text` asks for a transcription of the audio."""
    stripped = text.strip()
    return stripped.lower() in _known_asr_instructions() or bool(_ASR_PATTERN.search(stripped))


def first_user_turn(record: dict[str, Any]) -> tuple[list[dict], dict | None, list[dict]]:
    """(messages before the first user turn (system), the first user turn, the messages after it)."""
    messages = record.get("messages") or []
    for index, message in enumerate(messages):
        if message.get("role") == "user":
            return list(messages[:index]), message, list(messages[index + 1 :])
    return list(messages), None, []


def _parts(message: dict) -> list[dict]:
    content = message.get("content")
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return list(content or [])


def classify_record(record: dict[str, Any]) -> str | None:
    """`"asr"`, `"spoken_instruction"`, or None when the record has no audio in its first user turn."""
    _, user, _ = first_user_turn(record)
    if user is None:
        return None
    parts = _parts(user)
    audio = [p for p in parts if p.get("type") == "audio"]
    if not audio:
        return None
    task = TASK_ALIASES.get(str(record.get("task", "")).lower())
    if task is not None:
        return task
    texts = [p.get("text", "") for p in parts if p.get("type") == "text"]
    if len(audio) == 1 and any(is_asr_instruction(t) for t in texts):
        return ASR
    return SPOKEN


def _text_of(message: dict | None) -> str | None:
    if message is None:
        return None
    texts = [p.get("text", "") for p in _parts(message) if p.get("type") == "text"]
    return "\n".join(texts).strip() if texts else None


def asr_reference(record: dict[str, Any]) -> str:
    """The transcript an ASR sample should produce: the assistant's text, else the audio part's transcript."""
    _, user, after = first_user_turn(record)
    assistant = next((m for m in after if m.get("role") == "assistant"), None)
    text = _text_of(assistant)
    if text:
        return text
    audio = [p for p in _parts(user) if p.get("type") == "audio"]
    transcript = audio[0].get("transcript") if audio else None
    if not isinstance(transcript, str):
        raise ValueError(f"ASR record {record.get('id')!r} has neither an assistant text nor an audio transcript.")
    return transcript


def dataset_answer(record: dict[str, Any]) -> str | None:
    """The record's own assistant answer to its first user turn, if it has one."""
    _, _, after = first_user_turn(record)
    return _text_of(next((m for m in after if m.get("role") == "assistant"), None)) or None


def audio_paths(record: dict[str, Any]) -> list[str]:
    """Paths of the audio parts of the first user turn, in order."""
    _, user, _ = first_user_turn(record)
    return [p["path"] for p in _parts(user) if p.get("type") == "audio"]


def gold_transcripts(record: dict[str, Any]) -> list[str]:
    """Transcripts of the audio parts of the first user turn, in order."""
    _, user, _ = first_user_turn(record)
    out = []
    for part in _parts(user):
        if part.get("type") == "audio":
            if not isinstance(part.get("transcript"), str):
                raise ValueError(f"Record {record.get('id')!r}: an audio part has no 'transcript'.")
            out.append(part["transcript"])
    return out


def audio_prompt(record: dict[str, Any], clip: Any = None) -> list[dict]:
    """Chat messages for the speech model: system (if any) + the first user turn, audio parts as audio (`clip`: the
    samples to hear instead of the record's one audio file, e.g. a noisy copy)."""
    before, user, _ = first_user_turn(record)
    content = []
    for part in _parts(user):
        if part.get("type") == "audio":
            content.append({"type": "audio", "path": part["path"]} if clip is None else {"type": "audio", "audio": clip})
        else:
            content.append({"type": "text", "text": part.get("text", "")})
    return [*_clean(before), {"role": "user", "content": content}]


def text_prompt(record: dict[str, Any], transcripts: list[str]) -> list[dict]:
    """The same prompt with each audio part replaced by a transcript (gold, or the cascade's ASR output)."""
    before, user, _ = first_user_turn(record)
    pieces, texts = [], iter(transcripts)
    for part in _parts(user):
        pieces.append(next(texts) if part.get("type") == "audio" else part.get("text", ""))
    return [*_clean(before), {"role": "user", "content": "\n".join(pieces)}]


def _clean(messages: list[dict]) -> list[dict]:
    """System messages as plain strings (templates of text-only LLMs expect string content)."""
    out = []
    for message in messages:
        text = _text_of(message) if not isinstance(message.get("content"), str) else message["content"]
        out.append({"role": message["role"], "content": text or ""})
    return out


def read_records(manifest: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a JSONL manifest, audio paths made absolute (relative ones are relative to the manifest)."""
    manifest = Path(manifest)
    base = manifest.parent.resolve()
    records = []
    for where, lineno, record in iter_jsonl(manifest):
        if not isinstance(record, dict) or not isinstance(record.get("messages"), list):
            raise ValueError(f"{where}: expected a chat record with a 'messages' list.")
        record.setdefault("id", f"{manifest.name}:{lineno}")
        for message in record["messages"]:
            for part in _parts(message):
                if part.get("type") == "audio":
                    if not isinstance(part.get("path"), str):
                        raise ValueError(f"{where}: an audio part has no 'path' (not synthesized yet?).")
                    part["path"] = str(base / part["path"])
        records.append(record)
    return records
