"""`llasm build-base`: build the embedded default model offline."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", default=None, help="target directory (default: $LLASM_BASE_DIR or ~/.cache/llasm/llasm-tiny-base)")
    parser.add_argument("--force", action="store_true", help="rebuild even if a complete build exists")


def run(args: argparse.Namespace) -> int:
    from modeling_llasm.conversion.build_base import build_base

    path = build_base(args.output, force=args.force)
    print(path)
    return 0
