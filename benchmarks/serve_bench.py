"""Latency and throughput of `llasm serve` under concurrent clients: micro-batching (max batch 8) vs one at a time;
with `--engine vllm`, also vLLM's OpenAI server on the same model and clips (`llasm serve --engine vllm`).

Starts the OpenAI-compatible server in this process (uvicorn on 127.0.0.1, a free port), and for 1, 4 and 16
concurrent clients, each sending a few chat requests (a spoken question + a short instruction, greedy, `max_tokens`
32), measures per-request latency (p50/p95), requests/s and generated tokens/s. Prints a markdown table and writes
JSON to `--out`.

    python benchmarks/serve_bench.py                                  # ~/.cache/llasm/llasm-tiny-base (whisper_reader)
    python benchmarks/serve_bench.py --model DIR --out serve.json --clients 1,4,16 --requests 4
    python benchmarks/serve_bench.py --engines transformers,vllm --max-batch 8 --clients 1,4,16,64 --distinct-audio

Run it on a quiet machine: the numbers are wall-clock times.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

QUESTION = "What is the capital of France?"
INSTRUCTIONS = ["Answer briefly.", "Answer in one sentence.", "Transcribe the question, then answer it."]


def default_model() -> str | None:
    from modeling_llasm.conversion.build_base import default_base_dir

    preferred = default_base_dir()  # the whisper_reader base (session 3 measured it as llasm-tiny-base-whisper_reader-s4)
    return str(preferred) if (preferred / "config.json").is_file() else None


def question_audio(text: str = QUESTION) -> tuple[bytes, str]:
    """A spoken question as WAV bytes: espeak-ng if installed, else a generated tone sweep (same length class)."""
    import soundfile

    if shutil.which("espeak-ng"):
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "question.wav"
            result = subprocess.run(["espeak-ng", "-w", str(path), text], capture_output=True)
            if result.returncode == 0 and path.is_file() and path.stat().st_size > 44:
                return path.read_bytes(), "espeak-ng"
    rate, seconds = 16000, 2.0
    t = np.arange(int(rate * seconds)) / rate
    samples = (0.3 * np.sin(2 * np.pi * (200 + 400 * t) * t)).astype(np.float32)
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue(), "generated tone"


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def distinct_audio(audio: bytes, count: int) -> list[str]:
    """`count` base64 WAVs of `audio`, each with its own inaudible dither (1e-4, seeded), so that no request's audio
    repeats an earlier one's: no engine answers from a cache of processed audio."""
    import soundfile

    samples, rate = soundfile.read(io.BytesIO(audio), dtype="float32")
    out = []
    for seed in range(count):
        noisy = samples + 1e-4 * np.random.default_rng(seed).standard_normal(samples.shape).astype(np.float32)
        buffer = io.BytesIO()
        soundfile.write(buffer, noisy, rate, format="WAV", subtype="FLOAT")
        out.append(base64.b64encode(buffer.getvalue()).decode())
    return out


def run_load(url: str, model_id: str, audio_b64: str | list[str], clients: int, requests: int, max_tokens: int) -> dict:
    """`clients` threads, each sending `requests` chat completions one after another; all start together. With a
    list of clips, request r of client i sends clip `(i * requests + r) % len(clips)`."""
    clips = [audio_b64] if isinstance(audio_b64, str) else audio_b64
    import httpx

    latencies: list[float] = []
    tokens: list[int] = []
    errors: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(clients + 1)

    def client(index: int) -> None:
        with httpx.Client(timeout=600) as http:
            start.wait()
            for request in range(requests):
                instruction = INSTRUCTIONS[(index + request) % len(INSTRUCTIONS)]
                body = {
                    "model": model_id, "max_tokens": max_tokens, "temperature": 0,
                    "messages": [{"role": "user", "content": [
                        {"type": "input_audio", "input_audio": {"data": clips[(index * requests + request) % len(clips)], "format": "wav"}},
                        {"type": "text", "text": instruction},
                    ]}],
                }  # fmt: skip
                began = time.perf_counter()
                response = http.post(f"{url}/v1/chat/completions", json=body)
                elapsed = time.perf_counter() - began
                with lock:
                    if response.status_code == 200:
                        latencies.append(elapsed)
                        tokens.append(response.json()["usage"]["completion_tokens"])
                    else:
                        errors.append(f"{response.status_code}: {response.text[:200]}")

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - began
    return {
        "clients": clients, "requests": clients * requests, "answered": len(latencies), "errors": errors[:5],
        "wall_s": wall, "p50_s": percentile(latencies, 50), "p95_s": percentile(latencies, 95),
        "mean_s": statistics.fmean(latencies) if latencies else float("nan"),
        "requests_per_s": len(latencies) / wall, "tokens_per_s": sum(tokens) / wall,
        "completion_tokens": sum(tokens),
    }  # fmt: skip


def markdown(rows: list[dict]) -> str:
    lines = ["| engine | max batch | clients | requests | p50 latency (s) | p95 latency (s) | requests/s | tokens/s | mean batch |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for r in rows:
        lines.append(f"| {r.get('engine', 'transformers')} | {r['max_batch']} | {r['clients']} | {r['answered']}/{r['requests']} | {r['p50_s']:.3f} | "
                     f"{r['p95_s']:.3f} | {r['requests_per_s']:.2f} | {r['tokens_per_s']:.1f} | {r['mean_batch']:.2f} |")  # fmt: skip
    return "\n".join(lines)


class Clips:
    """Hands out the clips in order, each once (one clip: always that clip)."""

    def __init__(self, clips: str | list[str]):
        self.clips, self.next = clips, 0

    def take(self, count: int) -> str | list[str]:
        if isinstance(self.clips, str):
            return self.clips
        self.next += count
        return self.clips[self.next - count : self.next]


def vllm_rows(directory, model_id: str, audio_b64, client_counts: list[int], args) -> list[dict]:
    """The same load against vLLM's OpenAI server (float32, eager, its own scheduler: up to 256 sequences)."""
    from modeling_llasm.serving.vllm_server import VllmServer, vllm_environment

    env = vllm_environment()
    env.setdefault("HF_HUB_OFFLINE", "1")
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    rows = []
    log = Path(tempfile.gettempdir()) / "serve_bench_vllm.log"
    with VllmServer(directory, model_id=model_id, env=env, log_path=log) as server:
        print(f"[serve_bench] vLLM up at {server.url} (log {log})", file=sys.stderr)
        clips = Clips(audio_b64)
        run_load(server.url, model_id, clips.take(args.warmup), 1, args.warmup, args.max_tokens)
        for clients in client_counts:
            row = run_load(server.url, model_id, clips.take(clients * args.requests), clients, args.requests, args.max_tokens)
            row.update(engine="vllm", max_batch=256, generate_calls=None, mean_batch=float("nan"))
            rows.append(row)
            print(f"[serve_bench] vllm, {clients} clients: p50 {row['p50_s']:.3f} s, {row['requests_per_s']:.2f} req/s", file=sys.stderr)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="serve_bench.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="model directory (default: the embedded ~/.cache/llasm/llasm-tiny-base "
                                                      "if it exists, else what `llasm serve` picks)")  # fmt: skip
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    parser.add_argument("--clients", default="1,4,16", help="comma-separated numbers of concurrent clients")
    parser.add_argument("--requests", type=int, default=4, help="requests per client")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--max-batch", default="8,1", help="comma-separated max batch sizes to compare (1 = one at a time)")
    parser.add_argument("--batch-wait-ms", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed requests per server before measuring")
    parser.add_argument("--engines", default="transformers", help="comma-separated: transformers (llasm serve), vllm "
                                                                 "(vLLM's server from scripts/install_vllm.sh's venv)")  # fmt: skip
    parser.add_argument("--distinct-audio", action="store_true", help="every request its own dithered copy of the clip (no audio cache hits)")
    args = parser.parse_args(argv)

    import torch

    from modeling_llasm.serving.app import ServerSettings, create_app
    from modeling_llasm.serving.models import choose_model_dir, load_model, model_id_of
    from modeling_llasm.serving.server import BackgroundServer

    if args.threads:
        torch.set_num_threads(args.threads)
    directory = choose_model_dir(args.model or default_model(), log=lambda line: print(line, file=sys.stderr))
    model, processor = load_model(directory)
    model_id = model_id_of(directory)
    audio, audio_source = question_audio()
    audio_b64 = base64.b64encode(audio).decode()
    if args.distinct_audio:  # warm-up clips first, then one per timed request of every load (no clip is sent twice)
        audio_b64 = distinct_audio(audio, args.warmup + sum(int(c) for c in args.clients.split(",")) * args.requests)
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    client_counts = [int(c) for c in args.clients.split(",") if c.strip()]
    batch_sizes = [int(b) for b in args.max_batch.split(",") if b.strip()]
    print(f"[serve_bench] {directory} ({audio_source} question, max_tokens {args.max_tokens}, "
          f"{torch.get_num_threads()} torch threads)", file=sys.stderr)  # fmt: skip

    rows = []
    for max_batch in batch_sizes if "transformers" in engines else []:
        settings = ServerSettings(model_id=model_id, max_batch=max_batch, max_queue=max(256, max(client_counts) * 2),
                                  batch_wait_ms=args.batch_wait_ms, max_tokens_limit=max(1024, args.max_tokens))  # fmt: skip
        app = create_app(model, processor, settings)
        engine = app.state.engine
        with BackgroundServer(app) as server:
            clips = Clips(audio_b64)
            run_load(server.url, model_id, clips.take(args.warmup), 1, args.warmup, args.max_tokens)  # warm-up: untimed
            for clients in client_counts:
                calls, served = engine.stats["generate_calls"], engine.stats["requests"]
                row = run_load(server.url, model_id, clips.take(clients * args.requests), clients, args.requests, args.max_tokens)
                calls, served = engine.stats["generate_calls"] - calls, engine.stats["requests"] - served
                row.update(engine="transformers", max_batch=max_batch, generate_calls=calls,
                           mean_batch=served / calls if calls else float("nan"))  # fmt: skip
                rows.append(row)
                print(f"[serve_bench] max_batch {max_batch}, {clients} clients: p50 {row['p50_s']:.3f} s, "
                      f"{row['requests_per_s']:.2f} req/s, mean batch {row['mean_batch']:.2f}", file=sys.stderr)  # fmt: skip

    if "vllm" in engines:
        rows += vllm_rows(directory, model_id, audio_b64, client_counts, args)

    table = markdown(rows)
    print(table)
    if args.out:
        result = {
            "model": str(directory), "model_id": model_id, "audio": audio_source, "max_tokens": args.max_tokens,
            "requests_per_client": args.requests, "batch_wait_ms": args.batch_wait_ms,
            "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "platform": platform.platform(),
            "device": str(model.device), "dtype": str(model.dtype), "results": rows, "markdown": table,
        }  # fmt: skip
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        print(f"[serve_bench] wrote {args.out}", file=sys.stderr)
    return 0 if all(r["answered"] == r["requests"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
