"""The whole LLaSM benchmark in one command (same as `llasm bench`); results go to benchmarks/results/.

    python benchmarks/run_benchmarks.py                 # full run: ~4 min on 2 quiet CPU cores (see docs/benchmarks.md)
    python benchmarks/run_benchmarks.py --smoke         # tiny random models, ~1 min: checks the machinery
    python benchmarks/run_benchmarks.py --repeats 1 --sections ttft,decode

All `llasm bench` options apply (`--help`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from modeling_llasm.cli import bench

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="run_benchmarks.py", description=bench.__doc__)
    bench.add_arguments(parser)
    args = parser.parse_args(argv)
    if args.output is None and not args.smoke:
        args.output = str(Path(__file__).resolve().parent / "results")
    return bench.run(args)


if __name__ == "__main__":
    raise SystemExit(main())
