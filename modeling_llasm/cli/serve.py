"""`llasm serve`: an OpenAI-compatible chat-completions server (text and audio in, text out) for a LLaSM model."""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", nargs="?", default=None,
                        help="model directory (default: the newest finished recipe model ~/.cache/llasm/runs/*/final, "
                             "else the embedded llasm-tiny-base, built if missing)")  # fmt: skip
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on /v1/* (401 otherwise)")
    parser.add_argument("--model-id", default=None, help="the model id clients send and /v1/models lists (default: the model directory's name)")
    parser.add_argument("--max-body-mb", type=float, default=25.0, help="largest request body, MiB (400 above)")
    parser.add_argument("--max-audio-seconds", type=float, default=120.0, help="longest audio clip, seconds (400 above)")
    parser.add_argument("--max-request-audio-seconds", type=float, default=300.0,
                        help="most audio in one request, all clips and turns together, seconds (400 above)")  # fmt: skip
    parser.add_argument("--max-tokens-limit", type=int, default=1024, help="largest max_tokens a request may ask for (400 above)")
    parser.add_argument("--default-max-tokens", type=int, default=256, help="max_tokens when a request gives none")
    parser.add_argument("--default-temperature", type=float, default=0.0, help="temperature when a request gives none (0 = greedy)")
    parser.add_argument("--max-queue", type=int, default=64, help="requests waiting for the model; more are answered 429 at once")
    parser.add_argument("--max-batch", type=int, default=8, help="most requests in one batched generate (1 = one at a time)")
    parser.add_argument("--batch-wait-ms", type=float, default=5.0, help="how long the worker waits to gather a batch")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                        help="inference precision (default auto: bfloat16 where this machine computes it faster than "
                             "float32, else float32; as `llasm chat --dtype`)")  # fmt: skip
    parser.add_argument("--max-conversations", type=int, default=8,
                        help="KV caches of recent conversations kept so that their next turn prefills only itself (0: off)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    parser.add_argument("--engine", default="transformers", choices=["transformers", "vllm"],
                        help="transformers: this process (the default); vllm: vLLM's OpenAI server from the venv of "
                             "scripts/install_vllm.sh, with the LLaSM plugin (uses --host, --port, --api-key, --model-id, "
                             "--dtype, --default-temperature, --threads and the request limits; docs/serving.md 'vLLM')")  # fmt: skip
    parser.add_argument("--vllm-args", default="", help="more flags for vLLM's server, one string: --vllm-args '--tensor-parallel-size 2'")


def settings_of(args: argparse.Namespace, model_id: str):
    from modeling_llasm.serving.app import ServerSettings

    return ServerSettings(
        model_id=model_id, api_key=args.api_key, max_body_mb=args.max_body_mb, max_audio_seconds=args.max_audio_seconds,
        max_request_audio_seconds=args.max_request_audio_seconds, max_tokens_limit=args.max_tokens_limit,
        default_max_tokens=args.default_max_tokens, default_temperature=args.default_temperature,
        max_queue=args.max_queue, max_batch=args.max_batch, batch_wait_ms=args.batch_wait_ms,
        max_conversations=args.max_conversations,
    )  # fmt: skip


def build_app(args: argparse.Namespace, log=lambda line: print(line, file=sys.stderr)):
    """Choose and load the model, and return `(app, model_dir)`."""
    import torch

    from modeling_llasm.cli.chat import resolve_dtype
    from modeling_llasm.serving.app import create_app
    from modeling_llasm.serving.models import choose_model_dir, load_model, model_id_of

    if args.threads:
        torch.set_num_threads(args.threads)
    directory = choose_model_dir(args.model, log=log)
    dtype = resolve_dtype(args.dtype, args.device, "serve")
    log(f"[serve] loading {directory} ({dtype}) ...")
    model, processor = load_model(directory, device=args.device, dtype=dtype)
    settings = settings_of(args, args.model_id or model_id_of(directory))
    return create_app(model, processor, settings), directory


def run_vllm(args: argparse.Namespace) -> int:
    """`--engine vllm`: run vLLM's OpenAI server in the foreground on the chosen model."""
    import shlex

    from modeling_llasm.cli.chat import resolve_dtype
    from modeling_llasm.serving.models import choose_model_dir, model_id_of
    from modeling_llasm.serving.vllm_server import run_foreground, server_environment, vllm_command

    directory = choose_model_dir(args.model, log=lambda line: print(line, file=sys.stderr))
    model_id = args.model_id or model_id_of(directory)
    try:
        command = vllm_command(directory, host=args.host, port=args.port, model_id=model_id,
                               api_key=args.api_key, dtype=resolve_dtype(args.dtype, args.device, "serve"), default_temperature=args.default_temperature,
                               extra=shlex.split(args.vllm_args))  # fmt: skip
    except FileNotFoundError as error:
        raise SystemExit(f"llasm serve --engine vllm: {error}")
    env = server_environment(directory, settings_of(args, model_id))
    if args.threads:
        env.setdefault("OMP_NUM_THREADS", str(args.threads))
    return run_foreground(command, env)


def run(args: argparse.Namespace) -> int:
    from modeling_llasm.serving.models import is_loopback

    if args.engine == "vllm":
        if not is_loopback(args.host) and not args.api_key:
            print(f"[serve] warning: listening on {args.host} without --api-key: anyone who can reach it can use it.", file=sys.stderr)
        return run_vllm(args)

    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as error:
        raise SystemExit(f"llasm serve needs fastapi and uvicorn: pip install 'modeling_llasm[serve]' ({error}).")
    from modeling_llasm.serving.server import serve

    app, directory = build_app(args)
    settings = app.state.settings
    if not is_loopback(args.host) and not args.api_key:
        print(f"[serve] warning: listening on {args.host} without --api-key: anyone who can reach it can use it.", file=sys.stderr)
    print(f"[serve] model {directory} as {settings.model_id!r}: http://{args.host}:{args.port}/v1 "
          f"(max batch {settings.max_batch}, queue {settings.max_queue}{', API key required' if args.api_key else ''})",
          file=sys.stderr)  # fmt: skip
    serve(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0
