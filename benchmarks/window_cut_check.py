"""Zero-training check before pause-cut windows become a base setting (issue 24, flatness): does the reader read long
spoken questions as well when each clip is split into windows of at most N seconds cut at pauses
(`LlasmProcessor.max_window_seconds`, `pause_cut_bounds`) as with Whisper's 30 s windows?

Long questions are made of the held-out questions (`eval_questions_en.txt`, never trained on), several voiced as one
text by each held-out voice (flite slt, espeak-ng en-us+m5), so the pauses are the TTS's own between sentences; and
the 10 real recordings of Debian's pocketsphinx-testdata joined in two clips. Recognition WER (Whisper's English
normaliser) of the reader per window setting, beside Whisper's own transcription of the whole clip (long-form past
30 s). Quality only, no timings.

    python benchmarks/window_cut_check.py [BASE] --windows 30,10,8,5 --out benchmarks/results/windows/check.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

VOICES = ("flite:slt", "espeak-ng:en-us+m5")
GROUP_SIZES = (4, 8)  # questions per long clip: ~10-15 s and ~20-30 s


def long_questions() -> tuple[list[np.ndarray], list[str], list[str]]:
    """(clips, references, kinds)."""
    from modeling_llasm.data.real_speech import pocketsphinx_testdata
    from modeling_llasm.data.text_sources import eval_questions
    from modeling_llasm.data.tts import synthesize
    from modeling_llasm.processing_llasm import load_audio

    clips, references, kinds = [], [], []
    questions = eval_questions()
    for size in GROUP_SIZES:
        for voice in VOICES:
            for start in range(0, len(questions) - size + 1, size):
                text = " ".join(questions[start : start + size])
                clips.append(synthesize(text, voice))
                references.append(text)
                kinds.append(f"tts x{size}")
    rows = pocketsphinx_testdata()
    gap = np.zeros(4800, dtype=np.float32)  # 0.3 s between recordings
    for half in (rows[:5], rows[5:]):
        clips.append(np.concatenate([piece for row in half for piece in (load_audio(row["path"]), gap)]))
        references.append(" ".join(row["text"] for row in half))
        kinds.append("real x5")
    return clips, references, kinds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("base", nargs="?", default=None, help="a whisper_reader model (default: the embedded base)")
    parser.add_argument("--windows", default="30,10,8,5", help="max window seconds per arm (30: Whisper's fixed windows)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    from modeling_llasm.conversion.build_base import embedded_base
    from modeling_llasm.evaluation.cascade import WhisperTranscriber, whisper_dir_for
    from modeling_llasm.evaluation.evaluator import load_llasm
    from modeling_llasm.evaluation.understanding import adaptor_transcripts
    from modeling_llasm.metrics import word_error_rate

    base = Path(args.base) if args.base else embedded_base()
    model, processor = load_llasm(base)
    clips, references, kinds = long_questions()
    seconds = [len(c) / 16000 for c in clips]
    print(f"{len(clips)} clips, {min(seconds):.1f}-{max(seconds):.1f} s", file=sys.stderr)
    results: dict = {"base": str(base), "clips": len(clips), "seconds": [round(s, 2) for s in seconds], "kinds": kinds,
                     "references": references, "arms": {}}  # fmt: skip

    def score(texts: list[str]) -> dict:
        by_kind = {kind: round(float(word_error_rate([r for r, k in zip(references, kinds) if k == kind],
                                                     [t for t, k in zip(texts, kinds) if k == kind], normalize=True)), 4)
                   for kind in dict.fromkeys(kinds)}  # fmt: skip
        return {"wer": round(float(word_error_rate(references, texts, normalize=True)), 4), "by_kind": by_kind, "texts": texts}

    whisper = WhisperTranscriber.from_pretrained(whisper_dir_for(base))
    results["whisper"] = score(whisper(clips))
    print(f"whisper: {results['whisper']['wer']}", file=sys.stderr)
    for limit in (float(w) for w in args.windows.split(",")):
        processor.max_window_seconds = None if limit >= 30 else limit
        windows = [len(processor.audio_windows(c)) for c in clips]
        texts, _ = adaptor_transcripts(model, processor, clips, batch_size=4)
        row = score(texts)
        row["windows_per_clip"] = windows
        results["arms"][f"{limit:g}"] = row
        print(f"max window {limit:g} s: WER {row['wer']} {row['by_kind']} (windows {min(windows)}-{max(windows)})", file=sys.stderr)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
