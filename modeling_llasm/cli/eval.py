"""`llasm eval`: ASR WER/CER and spoken-instruction agreement (ROUGE-L) of a LLaSM model, side by side with the
cascade baseline (Whisper ASR -> the same LLM reading the transcript); writes the results as JSON.

`--understanding`: the spoken-understanding evaluation (`evaluation.understanding`): answers to the audio vs to the
typed question vs the cascade's, the adaptor's own recognition WER beside Whisper's, held-out ASR WER (`--asr`) and
text-skill retention against a base model (`--base`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", nargs="?", default=None, help="LLaSM checkpoint directory (default: the embedded llasm-tiny-base, built if missing)")
    parser.add_argument("--data", default=None,
                        help="JSONL manifest of chat records (docs/data.md); with --understanding the default is the "
                             "packaged held-out spoken questions voiced by held-out voices (built once, needs espeak-ng/flite)")
    parser.add_argument("--understanding", action="store_true",
                        help="spoken-understanding evaluation: audio vs typed vs cascade answers, recognition WER, "
                             "text-skill retention")
    parser.add_argument("--clips", default=None, choices=["en", "zh", "zh_en", "en_zh", "zh-all"],
                        help="--understanding: which held-out spoken questions (default en: 60 questions x 2 voices, "
                             "voiced once; zh / zh_en / en_zh / zh-all: the committed Chinese and code-switched clips)")  # fmt: skip
    parser.add_argument("--noise", default=None, metavar="KIND:SNR,...",
                        help="--understanding: also answer noisy copies of the clips, e.g. white:10,white:0,babble:10,babble:0 "
                             "(on-topic answers, ROUGE-L and recognition per condition beside clean; no retention or ASR)")
    parser.add_argument("--base", default=None, help="--understanding: base checkpoint for text-skill retention")
    parser.add_argument("--asr", default=None, help="--understanding: ASR manifest for held-out ASR WER")
    parser.add_argument("--output", "-o", default=None, help="results JSON (default: eval_results.json next to the manifest)")
    parser.add_argument("--whisper", default=None, help="full Whisper checkpoint for the cascade (default: the one the model was built from, else Whisper tiny.en)")
    parser.add_argument("--no-cascade", action="store_true", help="evaluate LLaSM only")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="answer length (default 128; --understanding: 64)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--limit", type=int, default=None, help="evaluate only the first N records")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16", "int8"],
                        help="int8: the LLM's linear layers quantized for CPU (set_inference_dtype)")


def run(args: argparse.Namespace) -> int:
    import torch

    from modeling_llasm.evaluation import evaluate_model, format_results

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.noise is not None and not args.understanding:
        raise SystemExit("llasm eval: --noise goes with --understanding")
    if args.understanding:
        return run_understanding(args)
    if args.data is None:
        raise SystemExit("llasm eval: --data MANIFEST is required (or pass --understanding)")
    manifest = Path(args.data)
    if not manifest.is_file():
        raise SystemExit(f"llasm eval: manifest not found: {manifest}")
    model = args.model
    if model is None:
        from modeling_llasm.conversion.build_base import embedded_base

        model = embedded_base(log=lambda line: print(line, file=sys.stderr))
    output = Path(args.output) if args.output else manifest.parent / "eval_results.json"
    processor, cascade_dtype = None, args.dtype
    if args.dtype == "int8":  # not a torch dtype: quantize the loaded model; the cascade's Whisper stays float32
        (model, processor), cascade_dtype = load_in_dtype(model, "int8"), "float32"
    results = evaluate_model(
        model, manifest, processor=processor, cascade=not args.no_cascade, whisper_dir=args.whisper, max_new_tokens=args.max_new_tokens or 128,
        batch_size=args.batch_size, limit=args.limit, output=output, dtype=getattr(torch, cascade_dtype),
        log=lambda line: print(line, file=sys.stderr),
    )  # fmt: skip
    print(format_results(results))
    print(f"\nresults: {output}")
    return 0


def load_in_dtype(model_dir, dtype: str):
    """`(model, processor)` of `model_dir` in `dtype`: float dtypes cast as the weights load; int8 quantizes the
    loaded float32 model (`set_inference_dtype`)."""
    import torch

    from modeling_llasm.evaluation.evaluator import load_llasm
    from modeling_llasm.modeling_llasm import set_inference_dtype

    if dtype != "int8":
        return load_llasm(model_dir, dtype=getattr(torch, dtype))
    model, processor = load_llasm(model_dir)
    return set_inference_dtype(model, dtype), processor


def run_understanding(args: argparse.Namespace) -> int:
    from modeling_llasm.cache import llasm_cache_dir
    from modeling_llasm.evaluation.understanding import build_understanding_set, evaluate_understanding, format_understanding

    if args.model is None:
        raise SystemExit("llasm eval --understanding: name the MODEL to evaluate")
    conditions = None
    if args.noise is not None:
        from modeling_llasm.data.noise import parse_noise_conditions

        try:
            conditions = parse_noise_conditions(args.noise)
        except ValueError as error:
            raise SystemExit(f"llasm eval --noise: {error}") from None
    if args.data is not None:
        if args.clips is not None:
            raise SystemExit("llasm eval --understanding: give --data or --clips, not both")
        manifest = Path(args.data)
        if not manifest.is_file():
            raise SystemExit(f"llasm eval: manifest not found: {manifest}")
    elif args.clips not in (None, "en"):
        from modeling_llasm.evaluation.understanding import committed_clip_manifest

        manifest = committed_clip_manifest(llasm_cache_dir() / "eval" / f"understanding-{args.clips}",
                                           None if args.clips == "zh-all" else args.clips)  # fmt: skip
    else:
        manifest = build_understanding_set(llasm_cache_dir() / "eval" / "understanding-en")
    model, processor = load_in_dtype(args.model, args.dtype) if args.dtype != "float32" else (args.model, None)
    common = dict(processor=processor, whisper_dir=args.whisper, max_new_tokens=args.max_new_tokens or 64,
                  batch_size=args.batch_size, limit=args.limit, log=lambda line: print(line, file=sys.stderr), progress=True)  # fmt: skip
    if conditions is not None:
        from modeling_llasm.evaluation.understanding import evaluate_noise_robustness, format_noise_robustness

        output = Path(args.output) if args.output else Path(args.model) / "understanding-noise.json"
        results = evaluate_noise_robustness(model, manifest, conditions, cascade=not args.no_cascade, output=output, **common)
        report = format_noise_robustness(results)
    else:
        output = Path(args.output) if args.output else Path(args.model) / "understanding.json"
        results = evaluate_understanding(model, manifest, base_model=args.base, asr_manifest=args.asr, output=output, **common)
        report = format_understanding(results)
    print(report)
    print(f"\nresults: {output}")
    return 0
