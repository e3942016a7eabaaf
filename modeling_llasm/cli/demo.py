"""`llasm demo`: a local web page to talk to a LLaSM model (microphone or file upload, optional text, streamed)."""

from __future__ import annotations

import argparse
import os
import sys

from modeling_llasm.cli.chat import add_dtype_argument


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", nargs="?", default=None,
                        help="model directory (default: the newest finished recipe model ~/.cache/llasm/runs/*/final, "
                             "else the embedded llasm-tiny-base, built if missing)")  # fmt: skip
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--max-new-tokens", type=int, default=128, help="initial answer length limit (adjustable on the page)")
    parser.add_argument("--temperature", type=float, default=0.0, help="initial temperature, 0 = greedy (adjustable on the page)")
    parser.add_argument("--system", default=None, help="system prompt")
    parser.add_argument("--device", default="cpu")
    add_dtype_argument(parser)


def run(args: argparse.Namespace) -> int:
    from modeling_llasm.serving.models import is_loopback

    # Before gradio is imported anywhere: no usage analytics and no version check.
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    try:
        import gradio  # noqa: F401
    except ImportError as error:
        raise SystemExit(f"llasm demo needs gradio: pip install 'modeling_llasm[demo]' ({error}).")
    from modeling_llasm.cli.chat import load_chat_pipeline
    from modeling_llasm.demo import build_demo, describe_model, launch_demo, reader_languages
    from modeling_llasm.serving.models import choose_model_dir

    try:  # the model `llasm serve` would choose: MODEL, else the newest finished run, else the embedded base
        directory = choose_model_dir(args.model, log=lambda line: print(line, file=sys.stderr))
    except FileNotFoundError as error:
        raise SystemExit(f"llasm demo: {error}")
    info = describe_model(directory)
    print(f"[demo] loading {info.path} ({'embedded base' if info.kind == 'base' else info.kind}) ...", file=sys.stderr)
    chat = load_chat_pipeline(str(directory), args.device, args.dtype)
    demo = build_demo(chat, info, max_new_tokens=args.max_new_tokens, temperature=args.temperature, system_prompt=args.system,
                      languages=reader_languages(chat.model))
    if not is_loopback(args.host):
        print(f"[demo] warning: listening on {args.host}: anyone who can reach it can use the model.", file=sys.stderr)
    launch_demo(demo, host=args.host, port=args.port)
    return 0
