"""Stage-1 (modality alignment) samples from ASR corpora.

Each loader yields chat records (see `modeling_llasm.data.chat`): the user turn holds the audio and an ASR
instruction, placed before or after the audio at random (seeded per sample id), and the assistant turn is the
transcript. Audio paths are absolute; audio is not read here (the collator loads and resamples it).

```python
{"id": "librispeech-1089-134686-0000", "language": "en", "task": "asr",
 "messages": [{"role": "user", "content": [{"type": "text", "text": "Transcribe the speech."},
                                           {"type": "audio", "path": "/data/.../1089-134686-0000.flac",
                                            "transcript": "he hoped there would be stew for dinner"}]},
              {"role": "assistant", "content": [{"type": "text", "text": "he hoped there would be stew for dinner"}]}]}
```
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from .chat import audio_part, iter_jsonl, message, text_part
from .filters import detect_language


logger = logging.getLogger(__name__)

ASR_INSTRUCTIONS: dict[str, tuple[str, ...]] = {
    "en": (
        "Transcribe the speech.",
        "Write down what is said in the audio.",
        "What does the speaker say?",
        "Please transcribe this recording.",
        "Convert this speech to text.",
        "Repeat exactly what you hear.",
        "Give me a transcript of the audio.",
        "Write out the spoken words.",
        "What was said in this clip?",
        "Listen and type what you hear.",
        "Provide a word-for-word transcription.",
        "Transcribe the audio into English text.",
    ),
    "zh": (
        "请把这段语音转写成文字。",
        "这段录音里说了什么？",
        "请写下你听到的内容。",
        "把语音内容转换成文字。",
        "请逐字转写这段音频。",
        "说话人说了什么？",
        "请听写这段话。",
        "请给出这段音频的文字记录。",
        "把你听到的话原样写出来。",
        "请识别这段语音。",
        "这段话的文字内容是什么？",
        "请将音频转录为中文文本。",
    ),
}


def asr_record(
    sample_id: str,
    audio: dict[str, Any],
    transcript: str,
    language: str,
    *,
    seed: int = 0,
    instructions: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, Any]:
    """A stage-1 chat record: user = `audio` part + an instruction (random side), assistant = `transcript`."""
    table = ASR_INSTRUCTIONS if instructions is None else instructions
    if not table.get(language):
        raise ValueError(f"no ASR instructions for language {language!r}; have {sorted(table)}")
    rng = random.Random(f"llasm-asr:{seed}:{sample_id}")
    instruction = text_part(rng.choice(list(table[language])))
    parts = (instruction, audio) if rng.random() < 0.5 else (audio, instruction)
    return {
        "id": sample_id,
        "language": language,
        "task": "asr",
        "messages": [message("user", *parts), message("assistant", text_part(transcript))],
    }


def _join_chinese(text: str) -> str:
    """AISHELL transcripts are word-segmented with spaces; drop the spaces between CJK characters."""
    return re.sub(r"(?<=[^\x00-\x7f])\s+(?=[^\x00-\x7f])", "", text.strip())


def load_librispeech(root: str | os.PathLike, *, lowercase: bool = True, seed: int = 0) -> Iterator[dict[str, Any]]:
    """Stage-1 records from a LibriSpeech tree (`SPEAKER/CHAPTER/SPEAKER-CHAPTER.trans.txt` + `UTT.flac`).

    `root` may be a split directory (`LibriSpeech/train-clean-100`) or any parent of several. LibriSpeech
    transcripts are upper case; `lowercase` (default) turns them to lower case.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"LibriSpeech root {root} is not a directory")
    found = 0
    for trans in sorted(root.rglob("*.trans.txt")):
        with open(trans, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                utt_id, _, text = line.strip().partition(" ")
                if not text.strip():
                    raise ValueError(f"{trans}:{lineno}: expected 'UTTERANCE-ID TRANSCRIPT', got {line.strip()!r}")
                flac = trans.parent / f"{utt_id}.flac"
                if not flac.is_file():
                    raise FileNotFoundError(f"{trans}:{lineno}: audio file {flac} not found")
                text = text.strip().lower() if lowercase else text.strip()
                found += 1
                yield asr_record(f"librispeech-{utt_id}", audio_part(text, str(flac.resolve())), text, "en", seed=seed)
    if not found:
        raise ValueError(f"no LibriSpeech transcripts (*.trans.txt) under {root}")


def load_aishell(
    root: str | os.PathLike, *, split: str | None = None, seed: int = 0
) -> Iterator[dict[str, Any]]:
    """Stage-1 records from AISHELL-1 (`transcript/aishell_transcript_v0.8.txt` + `wav/{train,dev,test}/S*/*.wav`).

    `split` keeps only wavs under a directory of that name ("train", "dev", "test"). Utterances in the
    transcript without a wav (normal when one split is unpacked) and wavs without a transcript (a few exist in
    the release) are skipped and counted in the log.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"AISHELL root {root} is not a directory")
    transcripts = sorted(root.rglob("aishell_transcript_v0.8.txt"))
    if not transcripts:
        raise FileNotFoundError(f"no aishell_transcript_v0.8.txt under {root}")
    if len(transcripts) > 1:
        raise ValueError(f"several AISHELL transcript files under {root}: {[str(t) for t in transcripts]}")
    texts: dict[str, str] = {}
    with open(transcripts[0], encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            utt_id, _, text = line.strip().partition(" ")
            if not text.strip():
                raise ValueError(f"{transcripts[0]}:{lineno}: expected 'UTTERANCE-ID TRANSCRIPT', got {line.strip()!r}")
            texts[utt_id] = _join_chinese(text)
    wavs = sorted(p for p in root.rglob("*.wav") if split is None or split in p.relative_to(root).parts[:-1])
    found = missing_text = 0
    for wav in wavs:
        text = texts.get(wav.stem)
        if text is None:
            missing_text += 1
            continue
        found += 1
        yield asr_record(f"aishell-{wav.stem}", audio_part(text, str(wav.resolve())), text, "zh", seed=seed)
    if missing_text:
        logger.info("AISHELL %s: skipped %d wav files that have no transcript", root, missing_text)
    logger.info("AISHELL %s: %d utterances (%d transcripts without a wav here)", root, found, len(texts) - found)
    if not found:
        raise ValueError(f"no AISHELL wav file under {root} (split={split!r}) matches a transcript line")


def load_jsonl_manifest(
    path: str | os.PathLike, *, language: str | None = None, seed: int = 0
) -> Iterator[dict[str, Any]]:
    """Stage-1 records from a JSONL file of `{"audio": PATH, "text": TRANSCRIPT}` (optional `"id"`, `"language"`).

    Relative audio paths are resolved against the JSONL file's directory. Without a `language` argument or
    field, the language is detected from the text ("zh" for Chinese characters, else "en").
    """
    path = Path(path)
    base = path.parent.resolve()
    for where, lineno, row in iter_jsonl(path):
        if not isinstance(row, dict) or not isinstance(row.get("audio"), str) or not isinstance(row.get("text"), str):
            raise ValueError(f"{where}: expected an object with string fields 'audio' and 'text', got {json.dumps(row)[:120]}")
        audio = Path(row["audio"])
        audio = audio if audio.is_absolute() else base / audio
        if not audio.is_file():
            raise FileNotFoundError(f"{where}: audio file {audio} not found")
        text = row["text"].strip()
        lang = language or row.get("language") or ("zh" if detect_language(text) == "zh" else "en")
        sample_id = str(row.get("id") or f"{path.stem}-{lineno:07d}")
        yield asr_record(sample_id, audio_part(text, str(audio)), text, lang, seed=seed)
