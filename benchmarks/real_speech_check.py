"""The reader's recognition on real recorded speech beside its own Whisper's (issue 22, item 5).

    python benchmarks/real_speech_check.py [BASE ...]     # default: the English and the bilingual base

For each base: the 10 transcribed recordings of Debian's pocketsphinx-testdata (`data.real_speech`), read by the
`whisper_reader` (`get_audio_features(...).recognized_token_ids`) and transcribed by the same Whisper through
transformers' `generate` (the cascade's `WhisperTranscriber`), WER with Whisper's normaliser; and how many readings
loop (a word repeated 3+ times in a row that the reference does not repeat). Prints a JSON line per base.
"""

from __future__ import annotations

import json
import re
import sys

import torch

from modeling_llasm.conversion.build_base import bilingual_base_dir, default_base_dir
from modeling_llasm.data.real_speech import pocketsphinx_testdata
from modeling_llasm.evaluation.cascade import WhisperTranscriber, whisper_dir_for
from modeling_llasm.evaluation.evaluator import load_llasm
from modeling_llasm.evaluation.understanding import adaptor_transcripts
from modeling_llasm.metrics import word_error_rate
from modeling_llasm.processing_llasm import load_audio

_RUN = re.compile(r"\b(\w+)(?:\W+\1\b){2,}", re.IGNORECASE)


def loops(text: str, reference: str) -> bool:
    """A word said three or more times in a row that the reference does not say so."""
    found = _RUN.search(text)
    return bool(found) and not re.search(rf"\b{re.escape(found.group(1))}(?:\W+{re.escape(found.group(1))}\b){{2,}}", reference, re.I)


def check(base) -> dict:
    rows = pocketsphinx_testdata()
    clips = [load_audio(row["path"]) for row in rows]
    references = [row["text"] for row in rows]
    model, processor = load_llasm(base)
    with torch.no_grad():
        read, _ = adaptor_transcripts(model, processor, clips, batch_size=4)
    whisper = WhisperTranscriber.from_pretrained(whisper_dir_for(base))(clips)
    reader_wer, whisper_wer = word_error_rate(references, read), word_error_rate(references, whisper)
    return {
        "base": str(base), "clips": len(rows), "reader_wer": round(reader_wer, 3), "whisper_wer": round(whisper_wer, 3),
        "ratio": round(reader_wer / whisper_wer, 2) if whisper_wer else None,
        "reader_loops": sum(loops(t, r) for t, r in zip(read, references)),
        "whisper_loops": sum(loops(t, r) for t, r in zip(whisper, references)),
        "samples": [{"reference": r, "reader": a, "whisper": w} for r, a, w in zip(references, read, whisper)],
    }  # fmt: skip


if __name__ == "__main__":
    for base in sys.argv[1:] or [default_base_dir(), bilingual_base_dir()]:
        print(json.dumps(check(base), ensure_ascii=False), flush=True)
