"""Zero-training check (issue 22, noise): does a standard denoiser in front of Whisper help it read noisy speech?

The English base reads what its Whisper (tiny.en) hears, and under noise Whisper hears badly (on-topic answers fall
to 0.42x of clean at 10 dB white noise). Before building anything into the model, this measures Whisper's own word
error rate on the held-out spoken questions (clean, white and babble noise at 10 and 0 dB SNR: the same noisy copies
as `llasm eval --understanding --noise`), as they are and after `noisereduce` spectral gating with its defaults
(non-stationary, and stationary): no setting tuned to this set.

Needs `pip install noisereduce` (not a dependency: the check found it does not help; docs/bilingual.md "Noise").

    python benchmarks/denoise_check.py [--whisper DIR] [--limit N] [--output benchmarks/results/noise/denoise-check.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from modeling_llasm.cache import llasm_cache_dir
from modeling_llasm.data.chat import audio_parts, read_manifest
from modeling_llasm.data.noise import noisy_copies
from modeling_llasm.evaluation.cascade import WhisperTranscriber, whisper_dir_for
from modeling_llasm.evaluation.understanding import build_understanding_set, recognition_error
from modeling_llasm.processing_llasm import load_audio

CONDITIONS = (("clean", None), ("white", 10.0), ("babble", 10.0), ("white", 0.0), ("babble", 0.0))


def denoisers() -> dict:
    import noisereduce

    return {
        "none": lambda clip: clip,
        "noisereduce": lambda clip: noisereduce.reduce_noise(y=clip, sr=16000).astype(np.float32),
        "noisereduce-stationary": lambda clip: noisereduce.reduce_noise(y=clip, sr=16000, stationary=True).astype(np.float32),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--whisper", default=None, help="Whisper directory (default: the English base's, tiny.en)")
    parser.add_argument("--eval-dir", default=str(Path(llasm_cache_dir()).expanduser() / "eval" / "understanding-en"))
    parser.add_argument("--limit", type=int, default=None, help="first N clips only")
    parser.add_argument("--output", default="benchmarks/results/noise/denoise-check.json")
    args = parser.parse_args(argv)

    manifest = build_understanding_set(args.eval_dir)
    records = list(read_manifest(manifest, resolve_paths=True))[: args.limit]
    parts = [next(audio_parts(record)) for record in records]
    references = [part["transcript"] for part in parts]
    clips = [load_audio(part["path"], target_rate=16000) for part in parts]
    whisper = WhisperTranscriber.from_pretrained(args.whisper or whisper_dir_for(None), batch_size=8)
    results = {"whisper": str(args.whisper or whisper_dir_for(None)), "clips": len(clips), "wer": {}, "seconds": {}}
    for kind, snr in CONDITIONS:
        condition = "clean" if snr is None else f"{kind}:{snr:g}"
        noisy = clips if snr is None else noisy_copies(clips, kind, snr)
        for name, denoise in denoisers().items():
            start = time.perf_counter()
            cleaned = [denoise(clip) for clip in noisy]
            seconds = time.perf_counter() - start
            transcripts = whisper(cleaned)
            wer = recognition_error(references, transcripts, "wer")
            results["wer"].setdefault(condition, {})[name] = round(wer, 4)
            results["seconds"].setdefault(name, []).append(round(seconds / len(clips), 4))
            print(f"{condition:12s} {name:24s} WER {wer:.3f}  ({seconds / len(clips) * 1000:.0f} ms/clip to denoise)", file=sys.stderr)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
