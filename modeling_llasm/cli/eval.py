"""`llasm eval`: ASR WER/CER and spoken-instruction agreement (ROUGE-L) of a LLaSM model, side by side with the
cascade baseline (Whisper ASR -> the same LLM reading the transcript); writes the results as JSON."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", nargs="?", default=None, help="LLaSM checkpoint directory (default: the embedded llasm-tiny-base, built if missing)")
    parser.add_argument("--data", required=True, help="JSONL manifest of chat records (docs/data.md)")
    parser.add_argument("--output", "-o", default=None, help="results JSON (default: eval_results.json next to the manifest)")
    parser.add_argument("--whisper", default=None, help="full Whisper checkpoint for the cascade (default: the one the model was built from, else Whisper tiny.en)")
    parser.add_argument("--no-cascade", action="store_true", help="evaluate LLaSM only")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--limit", type=int, default=None, help="evaluate only the first N records")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])


def run(args: argparse.Namespace) -> int:
    import torch

    from modeling_llasm.evaluation import evaluate_model, format_results

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    if args.threads:
        torch.set_num_threads(args.threads)
    manifest = Path(args.data)
    if not manifest.is_file():
        raise SystemExit(f"llasm eval: manifest not found: {manifest}")
    model = args.model
    if model is None:
        from modeling_llasm.conversion.build_base import build_base, default_base_dir, is_built

        model = default_base_dir()
        if not is_built(model):
            build_base(model, log=lambda line: print(line, file=sys.stderr))
    output = Path(args.output) if args.output else manifest.parent / "eval_results.json"
    results = evaluate_model(
        model, manifest, cascade=not args.no_cascade, whisper_dir=args.whisper, max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size, limit=args.limit, output=output, dtype=getattr(torch, args.dtype),
        log=lambda line: print(line, file=sys.stderr),
    )  # fmt: skip
    print(format_results(results))
    print(f"\nresults: {output}")
    return 0
