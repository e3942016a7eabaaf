"""Streaming input on held-out clips (issue 24): is the streamed answer the whole clip's, and does a draft reading
read the same words?

For every `--step`-th clip of an understanding manifest (held-out texts and voices; `llasm eval --understanding`
makes it):
- the answer (`--new-tokens` greedy tokens) from `generate_from_audio_stream` with chunks of 0.1 / 0.5 / 2 s
  (working after every chunk) against `model.generate` on the whole clip;
- the reader's reading of the whole clip with a draft (its reading of the first 50 % / 80 % of the clip) against its
  reading without one (ids, and the largest difference of the decoder states).

    python benchmarks/streaming_check.py ~/.cache/llasm/llasm-tiny-base ~/.cache/llasm/eval/understanding-en \\
        --step 6 --limit 20 -o benchmarks/results/streaming/check-en.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import soundfile
import torch

from modeling_llasm import generate_from_audio_stream
from modeling_llasm.configuration_llasm import encoder_frame_mask, window_token_counts
from modeling_llasm.evaluation.evaluator import load_llasm
from modeling_llasm.modeling_llasm import encode_audio_windows

CHUNK_SECONDS = (0.1, 0.5, 2.0)
DRAFT_FRACTIONS = (0.5, 0.8)


def clip_path(manifest_dir: Path, record: dict) -> Path:
    path = Path(record["messages"][0]["content"][0]["path"])
    return path if path.is_absolute() else manifest_dir / path


def reading(model, processor, audio, drafts=None):
    inputs = processor(text=processor.audio_token, audio=audio)
    encoded, mask = encode_audio_windows(model.model.audio_tower, inputs["input_features"], inputs["input_features_mask"])
    reader = model.model.multi_modal_projector
    return reader.read(encoded.last_hidden_state, encoder_frame_mask(mask), window_token_counts(model.config, mask), drafts=drafts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("manifest_dir", type=Path)
    parser.add_argument("--step", type=int, default=1, help="every STEP-th clip")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--new-tokens", type=int, default=24)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("-o", "--output", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, processor = load_llasm(args.model)
    records = [json.loads(line) for line in (args.manifest_dir / "manifest.jsonl").read_text().splitlines()][:: args.step][: args.limit]
    rows, started = [], time.perf_counter()
    with torch.inference_mode():
        for record in records:
            audio, rate = soundfile.read(clip_path(args.manifest_dir, record), dtype="float32")
            inputs = processor.apply_chat_template([[{"role": "user", "content": [{"type": "audio", "array": audio, "sampling_rate": rate}]}]],
                                                   add_generation_prompt=True)  # fmt: skip
            whole = model.generate(**inputs, max_new_tokens=args.new_tokens, do_sample=False)
            row = {"id": record["id"], "seconds": round(len(audio) / rate, 2), "streamed_identical": {}, "reused_at_end": {}}
            for seconds in CHUNK_SECONDS:
                size = int(seconds * rate)
                chunks = [audio[i : i + size] for i in range(0, len(audio), size)]
                output, stream = generate_from_audio_stream(model, processor, chunks, update_seconds=0,
                                                            max_new_tokens=args.new_tokens, do_sample=False)  # fmt: skip
                row["streamed_identical"][str(seconds)] = bool(torch.equal(output, whole))
                row["reused_at_end"][str(seconds)] = [stream.cache.reused_tokens, stream.prompt_length]
            if model.config.adaptor_type == "whisper_reader":
                plain = reading(model, processor, audio)
                row["draft_identical"], row["draft_state_difference"] = {}, 0.0
                for fraction in DRAFT_FRACTIONS:
                    draft = reading(model, processor, audio[: int(len(audio) * fraction)])[0]
                    drafted = reading(model, processor, audio, drafts=draft)
                    row["draft_identical"][str(fraction)] = drafted[0] == plain[0]
                    if drafted[0] == plain[0]:
                        difference = max(float((a - b).abs().max()) for a, b in zip(drafted[1], plain[1]))
                        row["draft_state_difference"] = max(row["draft_state_difference"], difference)
            rows.append(row)
            print(json.dumps(row), flush=True)
    streamed = [v for r in rows for v in r["streamed_identical"].values()]
    drafts = [v for r in rows for v in r.get("draft_identical", {}).values()]
    summary = {
        "model": args.model, "manifest": str(args.manifest_dir), "clips": len(rows), "new_tokens": args.new_tokens,
        "chunk_seconds": CHUNK_SECONDS, "streamed_identical": f"{sum(streamed)}/{len(streamed)}",
        "draft_fractions": DRAFT_FRACTIONS, "draft_identical": f"{sum(drafts)}/{len(drafts)}",
        "max_draft_state_difference": max((r.get("draft_state_difference", 0.0) for r in rows), default=0.0),
        "wall_seconds": round(time.perf_counter() - started, 1),
    }  # fmt: skip
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"summary": summary, "clips": rows}, indent=1) + "\n")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
