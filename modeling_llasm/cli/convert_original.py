"""`llasm convert-original SRC DST --whisper WHISPER_DIR`: convert an original LinkSoul-AI LLaSM checkpoint."""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", help="original checkpoint directory (e.g. a local copy of LinkSoul/LLaSM-Cllama2)")
    parser.add_argument("dst", help="output directory (our format: safetensors + processor files)")
    parser.add_argument(
        "--whisper", required=True, metavar="WHISPER_DIR",
        help="Hugging Face Whisper checkpoint directory the original used (openai/whisper-large-v2)",
    )
    parser.add_argument("--variant", choices=("cllama2", "baichuan"), default="cllama2", help="released variant (default: cllama2)")
    parser.add_argument(
        "--dtype", choices=("float32", "float16", "bfloat16"), default=None,
        help="output dtype (default: as stored, float32 for the released checkpoints)",
    )
    parser.add_argument("--max-shard-size-gb", type=float, default=5.0, help="largest output shard in GB (default 5)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty DST")


def run(args: argparse.Namespace) -> int:
    from ..conversion.original_llasm import OriginalCheckpointError, convert_original_checkpoint

    try:
        dst = convert_original_checkpoint(
            args.src, args.dst, args.whisper, variant=args.variant, dtype=args.dtype,
            max_shard_size=int(args.max_shard_size_gb * 1024**3), overwrite=args.overwrite,
        )
    except (OriginalCheckpointError, FileExistsError, ValueError) as error:
        print(f"llasm convert-original: error: {error}", file=sys.stderr)
        return 1
    print(f"Converted {args.src} ({args.variant}) to {dst}")
    return 0
