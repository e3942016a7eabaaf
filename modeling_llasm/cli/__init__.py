"""`llasm` command line. Each sub-command lives in its own module of this package, imported lazily."""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module under modeling_llasm.cli, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "build-base": ("build_base", "build the embedded default model (Whisper tiny.en + SmolLM2-135M) offline"),
    "build-data": ("build_data", "voice conversation files (or the embedded seed text) into a 16 kHz spoken-chat dataset with offline TTS (resumable)"),
    "chat": ("chat", "ask a model a spoken and/or typed question, once or interactively"),
    "serve": ("serve", "OpenAI-compatible HTTP server (/v1/chat/completions with text and audio, streaming, micro-batching)"),
    "demo": ("demo", "local web page (Gradio) to talk to a model: microphone or upload, optional text, streamed answers"),
    "train": ("train", "run the LLaSM training recipe (--recipe tiny: build base, TTS data, stage 1, stage 2, WER, save)"),
    "eval": ("eval", "ASR WER/CER and spoken-instruction ROUGE-L of a model vs the Whisper->LLM cascade (JSON results)"),
    "bench": ("bench", "benchmark TTFT, decode speed, batching, stage-1 training speed and QLoRA memory vs baselines"),
    "convert-original": ("convert_original", "convert an original LinkSoul-AI LLaSM checkpoint (Cllama2/Baichuan) offline"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llasm", description="LLaSM speech-language model tools.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        parser = build_parser()
        if argv and argv[0] not in ("-h", "--help"):
            parser.error(f"unknown command {argv[0]!r}; choose from {', '.join(COMMANDS)}")
        parser.print_help()
        return 0
    name, rest = argv[0], argv[1:]
    module = importlib.import_module(f"modeling_llasm.cli.{COMMANDS[name][0]}")
    parser = argparse.ArgumentParser(prog=f"llasm {name}", description=COMMANDS[name][1])
    module.add_arguments(parser)
    args = parser.parse_args(rest)
    return int(module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
