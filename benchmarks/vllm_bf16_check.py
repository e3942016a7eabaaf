"""bf16 with the vLLM plugin (issue 25): the embedded base served by vLLM and by `llasm serve`, each in float32 and in
bfloat16, asked the held-out English spoken questions (espeak-ng, one voice, greedy, 40 tokens). Reports, per
dtype: how many vLLM answers equal `llasm serve`'s, and how often each engine's answers are on topic
(`metrics.topic`: the answer shares a content word with the question). Quality only: no timings.

    python benchmarks/vllm_bf16_check.py                    # all 60 held-out questions
    python benchmarks/vllm_bf16_check.py --limit 20 --out benchmarks/results/vllm/bf16-check.json

bf16 answers of two engines need not be identical (other kernels, other rounding): the check is whether bf16 keeps
the task on vLLM as it does on transformers (docs/inference.md "Judged by the task").
"""

from __future__ import annotations

import argparse
import base64
import json
import subprocess
import sys
import tempfile
from pathlib import Path

MAX_TOKENS = 40


def voiced_questions(limit: int | None, directory: Path) -> list[tuple[str, str]]:
    from modeling_llasm.data.text_sources import eval_questions

    questions = eval_questions()[:limit]
    clips = []
    for i, question in enumerate(questions):
        path = directory / f"q{i}.wav"
        subprocess.run(["espeak-ng", "-v", "en-us", "-w", str(path), question], check=True)
        clips.append((question, base64.b64encode(path.read_bytes()).decode()))
    return clips


def ask(url: str, model_id: str, clip: str) -> str:
    import openai

    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=600)
    messages = [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": clip, "format": "wav"}}]}]
    reply = client.chat.completions.create(model=model_id, messages=messages, max_tokens=MAX_TOKENS, temperature=0)
    return reply.choices[0].message.content.strip()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model directory (default: the embedded base)")
    parser.add_argument("--limit", type=int, default=None, help="first N held-out questions (default: all)")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args()

    from modeling_llasm.conversion.build_base import embedded_base
    from modeling_llasm.metrics.topic import on_topic
    from modeling_llasm.serving.app import ServerSettings, create_app
    from modeling_llasm.serving.models import load_model
    from modeling_llasm.serving.server import BackgroundServer
    from modeling_llasm.serving.vllm_server import VllmServer, vllm_environment

    directory = Path(args.model) if args.model else embedded_base()
    model_id = "llasm"
    results: dict = {"model": str(directory), "max_tokens": MAX_TOKENS, "by_dtype": {}}
    with tempfile.TemporaryDirectory() as tmp:
        clips = voiced_questions(args.limit, Path(tmp))
        results["questions"] = len(clips)
        for dtype in args.dtypes.split(","):
            answers: dict[str, list[str]] = {}
            model, processor = load_model(directory, dtype=dtype)
            with BackgroundServer(create_app(model, processor, ServerSettings(model_id=model_id))) as server:
                answers["llasm_serve"] = [ask(server.url, model_id, clip) for _, clip in clips]
            del model
            env = {**vllm_environment(), "HF_HUB_OFFLINE": "1"}
            with VllmServer(directory, model_id=model_id, dtype=dtype, max_model_len=2048, env=env,
                            log_path=Path(tmp) / f"vllm-{dtype}.log") as server:  # fmt: skip
                answers["vllm"] = [ask(server.url, model_id, clip) for _, clip in clips]
            row = {
                "vllm_equal_to_llasm_serve": sum(a == b for a, b in zip(answers["vllm"], answers["llasm_serve"])),
                "on_topic": {engine: sum(bool(on_topic(a, q)) for a, (q, _) in zip(given, clips)) / len(clips)
                             for engine, given in answers.items()},  # fmt: skip
                "answers": {engine: given for engine, given in answers.items()},
            }
            results["by_dtype"][dtype] = row
            print(f"{dtype}: vLLM == llasm serve {row['vllm_equal_to_llasm_serve']}/{len(clips)}; on topic "
                  + ", ".join(f"{k} {v:.3f}" for k, v in row["on_topic"].items()), file=sys.stderr)  # fmt: skip
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
