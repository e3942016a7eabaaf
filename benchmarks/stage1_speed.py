#!/usr/bin/env python
"""Stage-1 training speed: samples/s of one optimizer step (collation + forward + backward + AdamW) for

- `lm fp32 full-logits`   : the plain loop (features computed per batch, encoder run, logits at every position)
- `lm fp32`               : + LM head only at label positions
- `lm bf16`               : + bf16 autocast
- `lm bf16 cached`        : + frozen-encoder outputs read from the cache (no audio decoding / features / encoder)
- `ctc bf16`              : CTC pre-alignment step, uncached (encoder + adaptor, the LLM never runs)
- `ctc bf16 cached`       : CTC pre-alignment step on cached encoder outputs (adaptor only)

on the real embedded base (`llasm build-base`, Whisper tiny.en + SmolLM2-135M-Instruct) when it is built, else on
the tiny random test model (the numbers then only show relative costs; the script says so).

    python benchmarks/stage1_speed.py                       # defaults: batch 8, 4 timed steps, ~3 s clips
    python benchmarks/stage1_speed.py --batch-size 16 --steps 8 --json out.json

Audio: deterministic noisy tones of 2-4 s with 8-14 word transcripts (speed depends on lengths, not content).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


WORDS = ("the quick brown fox jumps over a lazy dog while seven bright stars shine above quiet hills "
         "people often walk along the river to watch small boats drift slowly toward the old bridge").split()  # fmt: skip


def tone(seconds: float, seed: int, sampling_rate: int = 16000) -> np.ndarray:
    t = np.arange(int(seconds * sampling_rate)) / sampling_rate
    rng = np.random.default_rng(seed)
    return (0.3 * np.sin(2 * np.pi * (200 + 30 * seed) * t) + 0.05 * rng.standard_normal(t.shape)).astype(np.float32)


def make_records(n: int, directory: Path, seed: int = 0) -> list[dict]:
    import soundfile as sf

    rng = random.Random(seed)
    records = []
    for i in range(n):
        transcript = " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 14)))
        path = directory / f"clip{i}.wav"
        sf.write(path, tone(rng.uniform(2.0, 4.0), i), 16000)
        records.append({"id": f"bench-{i}", "task": "asr", "messages": [
            {"role": "user", "content": [{"type": "text", "text": "Transcribe the speech."},
                                         {"type": "audio", "path": str(path), "transcript": transcript}]},
            {"role": "assistant", "content": [{"type": "text", "text": transcript}]}]})  # fmt: skip
    return records


def load_model(base_dir: str | None):
    from modeling_llasm import LlasmForConditionalGeneration, LlasmProcessor

    if base_dir is None:
        try:
            from modeling_llasm.conversion.build_base import default_base_dir, is_built

            if is_built(default_base_dir()):
                base_dir = str(default_base_dir())
        except ImportError:
            pass
    if base_dir is not None:
        processor = LlasmProcessor.from_pretrained(base_dir)
        model = LlasmForConditionalGeneration.from_pretrained(base_dir, dtype=torch.float32)
        return model, processor, f"real base {base_dir}"
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from tiny_llasm import build_tiny_llasm

    model, processor = build_tiny_llasm()
    return model, processor, "TINY RANDOM TEST MODEL (the real base is not built: run `llasm build-base`)"


def bench(name: str, step, collate, records, batch_size: int, steps: int, bf16: bool) -> dict:
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    times = []
    for i in range(steps + 1):  # the first step warms up (allocations, kernel selection, cache fill)
        chunk = [records[(i * batch_size + j) % len(records)] for j in range(batch_size)]
        start = time.perf_counter()
        batch = collate(chunk)
        with autocast:
            loss = step(batch)
        loss.backward()
        step.optimizer.step()
        step.optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    seconds = sum(times[1:]) / steps
    result = {"name": name, "seconds_per_step": round(seconds, 3), "samples_per_second": round(batch_size / seconds, 2)}
    print(f"{name:28s} {result['seconds_per_step']:8.3f} s/step {result['samples_per_second']:8.2f} samples/s", flush=True)
    return result


class Step:
    def __init__(self, fn, parameters):
        self.fn = fn
        self.optimizer = torch.optim.AdamW([p for p in parameters if p.requires_grad], lr=1e-4)

    def __call__(self, batch):
        return self.fn(batch)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-dir", default=None, help="LLaSM checkpoint (default: the built embedded base)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=4, help="timed steps per configuration (after 1 warm-up)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    from modeling_llasm.data.collator import LlasmDataCollator
    from modeling_llasm.training import EncoderCache, LlasmCtcAligner, apply_stage, logits_at_labels, token_cross_entropy

    model, processor, what = load_model(args.base_dir)
    apply_stage(model, "align")
    model.train()
    print(f"model: {what}")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; batch {args.batch_size}, {args.steps} timed steps")  # fmt: skip
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        records = make_records(args.batch_size * (args.steps + 1), Path(tmp))
        cache = EncoderCache(model, processor, cache_dir=Path(tmp) / "cache", dtype=torch.float16)
        start = time.perf_counter()
        from modeling_llasm.training import clips_of

        cache.precompute(clips_of(records), progress=False)
        fill = time.perf_counter() - start
        print(f"encoder cache fill: {len(records)} clips in {fill:.1f} s ({len(records) / fill:.1f} clips/s, one-off)")
        plain = LlasmDataCollator(processor, "align")
        cached = LlasmDataCollator(processor, "align", encoder_cache=cache)
        ctc_plain = LlasmDataCollator(processor, "align", ctc=True)
        ctc_cached = LlasmDataCollator(processor, "align", ctc=True, encoder_cache=cache)

        def full_logits(batch):
            return model(**batch).loss

        def label_positions(batch):
            labels = batch.pop("labels")
            _, logits, targets = logits_at_labels(model, batch, labels)
            return token_cross_entropy(logits, targets)

        aligner = LlasmCtcAligner(model)
        for name, parameter in aligner.named_parameters():
            parameter.requires_grad_(not name.startswith("audio_tower."))

        def ctc(batch):
            return aligner(**batch)["loss"]

        configs = [
            ("lm fp32 full-logits", full_logits, plain, False, model.parameters()),
            ("lm fp32", label_positions, plain, False, model.parameters()),
            ("lm bf16", label_positions, plain, True, model.parameters()),
            ("lm bf16 cached", label_positions, cached, True, model.parameters()),
            ("ctc bf16", ctc, ctc_plain, True, aligner.parameters()),
            ("ctc bf16 cached", ctc, ctc_cached, True, aligner.parameters()),
        ]
        for name, fn, collate, bf16, parameters in configs:
            results.append(bench(name, Step(fn, list(parameters)), collate, records, args.batch_size, args.steps, bf16))
    base = results[0]["samples_per_second"]
    print("speed-up vs the plain loop: " + ", ".join(f"{r['name']} x{r['samples_per_second'] / base:.1f}" for r in results[1:]))
    if args.json:
        Path(args.json).write_text(json.dumps({"model": what, "batch_size": args.batch_size, "results": results,
                                               "cache_fill_seconds": round(fill, 2)}, indent=2) + "\n")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
