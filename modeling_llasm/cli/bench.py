"""`llasm bench`: TTFT (LLaSM vs the original LLaSM method vs the Whisper->LLM cascade), decode speed vs the bare
LLM, batch-8 vs one-by-one, stage-1 training speed with/without the encoder cache, and QLoRA vs bf16 LoRA memory.
Writes results.json, results.md and PNG plots, and prints whether each goal is met."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from modeling_llasm.evaluation.bench import SECTIONS

    parser.add_argument("--smoke", action="store_true", help="tiny random models, 1 repeat: checks the machinery in seconds")
    parser.add_argument("--output", "-o", default=None, help="output directory (default: benchmarks/results; with --smoke: $TMPDIR/llasm-bench-smoke)")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per measurement (default 5; 1 with --smoke)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all usable CPUs)")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    parser.add_argument("--whisper", default=None, help="full Whisper checkpoint (default: embedded Whisper tiny.en)")
    parser.add_argument("--llm", default=None, help="LLM checkpoint (default: embedded SmolLM2-135M-Instruct)")
    parser.add_argument("--model", default=None, help="benchmark this LLaSM checkpoint as 'ours' (default: compose Whisper + fresh stack_mlp adaptor + LLM)")
    parser.add_argument("--decode-tokens", type=int, default=None, help="new tokens in the decode test (default 64; 8 with --smoke)")
    parser.add_argument("--batch-new-tokens", type=int, default=None, help="new tokens per clip in the batch test (default 32; 8 with --smoke)")
    parser.add_argument("--stage1-steps", type=int, default=None, help="timed training steps per mode (default 5; 1 with --smoke)")
    parser.add_argument("--no-profile", action="store_true", help="skip torch.profiler tables for missed goals")
    parser.add_argument("--no-trainer-benchmark", action="store_true", help="do not also run benchmarks/stage1_speed.py (the training pipeline's stage-1 benchmark)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "auto"],
                        help="precision of every system compared (default float32; auto: bfloat16 where this machine "
                             "computes it faster, as `llasm chat` chooses); sections ttft, stream, decode, batch, reuse, "
                             "pipeline, lookup")  # fmt: skip
    parser.add_argument("--stream-end-silence", type=float, default=0.0, metavar="SECONDS",
                        help="section stream: add this much silence after each clip's speech, as when the speaker stops "
                             "and the stream ends at a voice-activity end point (default 0: the stream ends as the clip "
                             "is cut, mostly inside a word); every system gets the same clips")  # fmt: skip
    parser.add_argument("--work-dir", default=None, help="keep intermediate files (saved model for the memory probe) here")


def settings_from_args(args: argparse.Namespace):
    import os

    from modeling_llasm.evaluation.bench import BenchSettings

    smoke = args.smoke
    if args.output:
        output = Path(args.output)
    elif smoke:  # smoke numbers mean nothing: keep them out of the repository
        import tempfile

        output = Path(tempfile.gettempdir()) / "llasm-bench-smoke"
    else:
        output = Path("benchmarks/results")
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 1
    return BenchSettings(
        output_dir=output,
        smoke=smoke,
        repeats=args.repeats if args.repeats is not None else (1 if smoke else 5),
        warmup=args.warmup,
        threads=args.threads or usable,
        sections=tuple(s.strip() for s in args.sections.split(",") if s.strip()),
        whisper_dir=args.whisper,
        llm_dir=args.llm,
        model_dir=args.model,
        decode_tokens=args.decode_tokens or (8 if smoke else 64),
        batch_new_tokens=args.batch_new_tokens or (8 if smoke else 32),
        stage1_steps=args.stage1_steps or (1 if smoke else 5),
        profile=not args.no_profile,
        trainer_benchmark=not args.no_trainer_benchmark,
        work_dir=args.work_dir,
        dtype=args.dtype,
        stream_end_silence=args.stream_end_silence,
    )


def run(args: argparse.Namespace) -> int:
    from modeling_llasm.evaluation.bench import run_benchmark, summary_lines

    settings = settings_from_args(args)
    command = "llasm bench " + " ".join(shlex.quote(a) for a in sys.argv[2:]) if sys.argv[1:2] == ["bench"] else "llasm bench"
    results = run_benchmark(settings, command=command)
    print("\n".join(summary_lines(results)))
    print(f"\nresults: {settings.output_dir / 'results.md'} (+ results.json, {', '.join(results.get('plots', [])) or 'no plots: install matplotlib'})")
    return 0
