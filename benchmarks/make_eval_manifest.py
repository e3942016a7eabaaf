"""Write a small spoken evaluation set (espeak-ng) for `llasm eval`: ASR samples and spoken questions.

    python benchmarks/make_eval_manifest.py -o /tmp/llasm-evalset [--asr 12 --spoken 8 --voice en-us+f3]
    llasm eval --data /tmp/llasm-evalset/manifest.jsonl

Records follow docs/data.md. The project's full held-out sets come from `llasm build-data --seed-text`
(`stage1/heldout` = ASR, `stage2/heldout` = spoken questions); this script is a quick stand-alone alternative.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import soundfile

ASR_TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "She sells sea shells by the sea shore.",
    "The library opens at nine in the morning and closes at six.",
    "Please remember to water the plants while I am away.",
    "Our flight was delayed because of heavy snow in the mountains.",
    "He bought three apples, two oranges and a loaf of bread.",
    "The museum has a new exhibition about ancient Egypt.",
    "It is going to rain this afternoon, so take an umbrella.",
    "The children played football in the park until sunset.",
    "I would like a cup of tea with milk and no sugar.",
    "The meeting has been moved to Thursday at three o'clock.",
    "Turn left at the traffic lights and the station is on your right.",
]
QUESTIONS = [
    "What is the capital of France?",
    "How many days are there in a leap year?",
    "Why is the sky blue?",
    "Name three colours of the rainbow.",
    "What do bees make?",
    "How do you boil an egg?",
    "What is the largest planet in the solar system?",
    "Give me a synonym for happy.",
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-o", "--output", type=Path, required=True)
    parser.add_argument("--asr", type=int, default=len(ASR_TEXTS))
    parser.add_argument("--spoken", type=int, default=len(QUESTIONS))
    parser.add_argument("--voice", default="espeak-ng:en-us+f3", help="TTS voice id (modeling_llasm.data.tts)")
    args = parser.parse_args(argv)

    from modeling_llasm.data.tts import synthesize

    audio_dir = args.output / "audio"
    audio_dir.mkdir(parents=True, exist_ok=True)
    records = []
    jobs = [("asr", i, ASR_TEXTS[i % len(ASR_TEXTS)]) for i in range(args.asr)]
    jobs += [("spoken_question", i, QUESTIONS[i % len(QUESTIONS)]) for i in range(args.spoken)]
    for task, i, text in jobs:
        name = f"{task}-{i:03d}"
        samples = synthesize(text, args.voice)
        soundfile.write(audio_dir / f"{name}.wav", samples, 16000)
        audio = {"type": "audio", "path": f"audio/{name}.wav", "transcript": text, "voice": args.voice,
                 "duration": round(len(samples) / 16000, 2)}  # fmt: skip
        if task == "asr":
            messages = [{"role": "user", "content": [{"type": "text", "text": "Transcribe the speech."}, audio]},
                        {"role": "assistant", "content": [{"type": "text", "text": text}]}]  # fmt: skip
        else:
            messages = [{"role": "user", "content": [audio]}]
        records.append({"id": name, "language": "en", "task": task, "messages": messages})
    manifest = args.output / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in records))
    print(f"{len(records)} records -> {manifest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
