"""The reader's fast path against the way Whisper computes the same reading (issue 24): same words on held-out clips,
and how much faster, in each precision.

Fast (the default): the reader's logits from `text_logit_weights` (a contiguous transposed copy of the output
projection). Reference: the logits from the embedding's transposed view, as before session 15. `--fast-attention
eager` also gives the fast arm's decoder eager attention (the reference keeps SDPA): tried, not adopted. Both reuse
the canned silence's projections (checked against projecting every padded window in
tests/conversion/test_build_base.py). For every `--step`-th clip of an understanding manifest
(held-out texts and voices): both readings' Whisper ids, and each reading timed `--repeats` times, the two arms
alternating; the report gives per-clip medians and their median over clips.

    python benchmarks/reader_speed_check.py ~/.cache/llasm/llasm-tiny-base ~/.cache/llasm/eval/understanding-en \\
        --dtypes float32,bfloat16 -o benchmarks/results/reader-speed/check.json
    python benchmarks/reader_speed_check.py ... --fast-attention eager -o benchmarks/results/reader-speed/check-eager.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import soundfile
import torch

from modeling_llasm.configuration_llasm import encoder_frame_mask, window_token_counts
from modeling_llasm.evaluation.evaluator import load_llasm
from modeling_llasm.evaluation.sysinfo import machine_info
from modeling_llasm.modeling_llasm import encode_audio_windows, set_inference_dtype
from streaming_check import clip_path


def set_arm(reader, fast: bool, attention: str | None) -> None:
    if attention is not None:
        reader.decoder.set_attn_implementation(attention if fast else "sdpa")
    reader.contiguous_text_logits = fast


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("manifest_dir", type=Path)
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--step", type=int, default=1, help="every STEP-th clip")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--fast-attention", default=None, help="also give the fast arm's decoder this attention "
                        "(e.g. eager; the reference arm: sdpa); default: both keep the model's")  # fmt: skip
    parser.add_argument("-o", "--output", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    records = [json.loads(line) for line in (args.manifest_dir / "manifest.jsonl").read_text().splitlines()][:: args.step]
    report = {"command": "python benchmarks/reader_speed_check.py " + " ".join(sys.argv[1:]),
              "machine": machine_info(), "clips": len(records), "repeats": args.repeats, "dtypes": {}}  # fmt: skip
    for dtype in args.dtypes.split(","):
        model, processor = load_llasm(args.model)
        model = set_inference_dtype(model.eval(), dtype)
        reader = model.model.multi_modal_projector
        rows = []
        with torch.inference_mode():
            for index, record in enumerate(records):
                audio, rate = soundfile.read(clip_path(args.manifest_dir, record), dtype="float32")
                inputs = processor(text=processor.audio_token, audio=audio, sampling_rate=rate)
                encoded, mask = encode_audio_windows(model.model.audio_tower, inputs["input_features"], inputs["input_features_mask"])
                states, frames, budget = encoded.last_hidden_state, encoder_frame_mask(mask), window_token_counts(model.config, mask)
                times, ids = {True: [], False: []}, {}
                for repeat in range(args.repeats + 1):  # the first pass warms up
                    for fast in (True, False) if (index + repeat) % 2 else (False, True):
                        set_arm(reader, fast, args.fast_attention)
                        start = time.perf_counter()
                        ids[fast] = reader.read(states, frames, budget)[0]
                        if repeat:
                            times[fast].append(time.perf_counter() - start)
                rows.append({"clip": record.get("id", index), "identical": ids[True] == ids[False], "tokens": sum(map(len, ids[True])),
                             "fast_ms": 1000 * statistics.median(times[True]), "reference_ms": 1000 * statistics.median(times[False])})  # fmt: skip
        fast_ms, reference_ms = (statistics.median(r[k] for r in rows) for k in ("fast_ms", "reference_ms"))
        report["dtypes"][dtype] = {
            "identical": sum(r["identical"] for r in rows), "fast_ms_median": fast_ms, "reference_ms_median": reference_ms,
            "speedup_median": statistics.median(r["reference_ms"] / r["fast_ms"] for r in rows), "rows": rows,
        }  # fmt: skip
        print(dtype, {k: v for k, v in report["dtypes"][dtype].items() if k != "rows"}, flush=True)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
