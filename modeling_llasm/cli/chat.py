"""`llasm chat`: ask a LLaSM model a spoken (and/or typed) question, once or interactively."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

DEFAULT_DTYPE = "auto"

HELP_INTERACTIVE = """Interactive chat. Type a message, or:
  /audio PATH [text]   send an audio file (optionally followed by text in the same turn)
  /reset               forget the conversation
  /quit                leave"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", nargs="?", default=None, help="model directory (default: the embedded llasm-tiny-base, built if missing)")
    parser.add_argument("--audio", action="append", default=[], help="audio file for the question (repeatable)")
    parser.add_argument("--text", default=None, help="text in the same user turn, after the audio")
    parser.add_argument("--system", default=None, help="system prompt")
    parser.add_argument("--transcribe", action="store_true",
                        help="print the transcript of each --audio file (LlasmProcessor.apply_transcription_request) instead of answering")
    parser.add_argument("--language", default=None,
                        help="language the audio is read in, as a Whisper code ('en', 'zh'; default: detected per window "
                             "by a multilingual Whisper; the English base reads English)")  # fmt: skip
    parser.add_argument("--interactive", "-i", action="store_true", help="keep chatting (see /help inside)")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy decoding")
    parser.add_argument("--device", default="cpu")
    add_dtype_argument(parser)


def add_dtype_argument(parser: argparse.ArgumentParser) -> None:
    """`--dtype`, for the commands that answer (chat, demo)."""
    parser.add_argument("--dtype", default=DEFAULT_DTYPE, choices=["auto", "float32", "bfloat16"],
                        help="inference precision (default auto: bfloat16 where this machine computes it faster than "
                             "float32 (a CPU with AVX512-BF16 / AMX, a CUDA GPU), else float32; both keep the task "
                             "numbers, docs/inference.md; LLASM_FAST_BF16=1/0 skips the speed probe)")  # fmt: skip


def resolve_dtype(dtype: str, device: str, command: str) -> str:
    """The concrete inference dtype for `--dtype` (auto: `choose_inference_dtype`), said on stderr when auto chose."""
    from modeling_llasm.modeling_llasm import choose_inference_dtype

    chosen, why = choose_inference_dtype(dtype, device)
    if dtype == "auto":
        print(f"[{command}] dtype {chosen} ({why})", file=sys.stderr)
    return chosen


def load_chat_pipeline(model: str | None, device: str = "cpu", dtype: str = "float32"):
    """`pipeline("llasm-chat")` for `model` (default: the embedded base, built if missing), loaded in `dtype`
    (a torch float dtype's name, or "auto": see `resolve_dtype`; the weights are cast as they load, no float32 copy
    first)."""
    from transformers import pipeline

    from modeling_llasm import LlasmChatPipeline

    dtype = resolve_dtype(dtype, device, "llasm")
    if model is None:
        from modeling_llasm.conversion.build_base import embedded_base

        model = str(embedded_base(log=lambda line: print(line, file=sys.stderr)))
    # pipeline_class: hub-ready checkpoints carry a `custom_pipelines` entry, which transformers would otherwise
    # only load with trust_remote_code; the installed package is the same code.
    return pipeline("llasm-chat", model=model, device=device, dtype=dtype, pipeline_class=LlasmChatPipeline)


def user_turn(audio_paths: list[str], text: str | None) -> dict:
    content = []
    for path in audio_paths:
        if not Path(path).is_file():
            raise SystemExit(f"llasm chat: audio file not found: {path}")
        content.append({"type": "audio", "path": path})
    if text:
        content.append({"type": "text", "text": text})
    return {"role": "user", "content": content}


def generation_kwargs(max_new_tokens: int, temperature: float) -> dict:
    """`generate()` arguments for a length limit and a temperature (0 = greedy decoding)."""
    generation = {"max_new_tokens": max_new_tokens, "do_sample": temperature > 0}
    if temperature > 0:
        generation["temperature"] = temperature
    return generation


def answer(chat, messages: list[dict], args: argparse.Namespace, conversation_cache=None) -> str:
    pieces = []
    generation = generation_kwargs(args.max_new_tokens, args.temperature)
    if getattr(args, "language", None):
        generation["language"] = args.language
    for piece in chat(messages, stream=True, conversation_cache=conversation_cache, **generation):
        print(piece, end="", flush=True)
        pieces.append(piece)
    print()
    return "".join(pieces).strip()


def run(args: argparse.Namespace) -> int:
    if not args.interactive and not args.audio and not args.text:
        raise SystemExit("llasm chat: give --audio and/or --text, or --interactive.")
    if args.transcribe and (not args.audio or args.text or args.interactive or args.system):
        raise SystemExit("llasm chat --transcribe: give only --audio files (no --text, --system or --interactive).")
    from modeling_llasm import LlasmConversationCache

    chat = load_chat_pipeline(args.model, args.device, args.dtype)
    if args.transcribe:
        clips = user_turn(args.audio, None)["content"]
        shared = LlasmConversationCache()  # the transcription prompt is prefilled once for all the files
        for clip in clips:
            answer(chat, chat.processor.transcription_conversation(clip), args, shared)
        return 0
    system = [{"role": "system", "content": args.system}] if args.system else []
    messages = list(system)
    conversation_cache = LlasmConversationCache()  # each turn prefills only itself and encodes only its own audio
    if args.audio or args.text:
        messages.append(user_turn(args.audio, args.text))
        messages.append({"role": "assistant", "content": answer(chat, messages, args, conversation_cache)})
    if not args.interactive:
        return 0
    print(HELP_INTERACTIVE, file=sys.stderr)
    while True:
        try:
            line = input("you> ").strip()
        except EOFError:
            return 0
        if not line:
            continue
        if line in ("/quit", "/exit"):
            return 0
        if line == "/help":
            print(HELP_INTERACTIVE, file=sys.stderr)
            continue
        if line == "/reset":
            messages = list(system)
            conversation_cache = LlasmConversationCache()
            continue
        if line.startswith("/audio"):
            words = shlex.split(line)
            if len(words) < 2:
                print("usage: /audio PATH [text]", file=sys.stderr)
                continue
            if not Path(words[1]).is_file():
                print(f"audio file not found: {words[1]}", file=sys.stderr)
                continue
            turn = user_turn([words[1]], " ".join(words[2:]) or None)
        else:
            turn = {"role": "user", "content": line}
        messages.append(turn)
        print("llasm> ", end="", flush=True)
        messages.append({"role": "assistant", "content": answer(chat, messages, args, conversation_cache)})
