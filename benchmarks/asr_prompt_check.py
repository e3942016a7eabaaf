"""Zero-training check: can prompting make the frozen LLM transcribe? (docs/training.md, "Can the frozen LLM still
transcribe?").

    python benchmarks/asr_prompt_check.py [RUN_DIR] [NUM_CLIPS]

Greedy transcripts of the run's held-out ASR clips (`RUN_DIR/understanding/heldout_asr.jsonl`) by `RUN_DIR/final`
under four prompts; prints the WER of each.
"""

import json
import sys
import time
from pathlib import Path

import torch

from modeling_llasm import LlasmProcessor
from modeling_llasm.metrics import word_error_rate
from modeling_llasm.training.loading import load_llasm

SYSTEM = {"role": "system", "content": [{"type": "text", "text": "You are a transcriber. Reply with exactly the words spoken in the audio, nothing else."}]}


def main() -> None:
    run = Path(sys.argv[1]) if len(sys.argv) > 1 else Path.home() / ".cache/llasm/runs/tiny"
    num_clips = int(sys.argv[2]) if len(sys.argv) > 2 else 96
    torch.set_num_threads(2)
    model = load_llasm(run / "final").eval()
    processor = LlasmProcessor.from_pretrained(run / "final")
    with open(run / "understanding/heldout_asr.jsonl", encoding="utf-8") as handle:
        records = [json.loads(line) for line in handle][:num_clips]
    references = [next(m for m in r["messages"] if m["role"] == "assistant")["content"][0]["text"] for r in records]

    def user_turn(record):
        return [m for m in record["messages"] if m["role"] != "assistant"]

    def wer_of(make_conversation, prefix=None, cut=None) -> float:
        predictions = []
        for start in range(0, len(records), 8):
            conversations = [make_conversation(r) for r in records[start : start + 8]]
            if prefix is None:
                inputs = processor.apply_chat_template(conversations, add_generation_prompt=True, padding_side="left")
            else:  # the answer is forced to start with `prefix`
                conversations = [c + [{"role": "assistant", "content": [{"type": "text", "text": prefix}]}] for c in conversations]
                inputs = processor.apply_chat_template(conversations, continue_final_message=True, padding_side="left")
            output = model.generate(**inputs, max_new_tokens=48, do_sample=False)
            for row in output[:, inputs["input_ids"].shape[1] :]:
                text = processor.decode(row, skip_special_tokens=True).strip()
                predictions.append(cut(text) if cut else text)
        return word_error_rate(references, predictions)

    def until_quote(text: str) -> str:
        return text.split('"')[0].strip()

    arms = {
        "the clip's own instruction": lambda: wer_of(user_turn),
        "+ transcriber system prompt": lambda: wer_of(lambda r: [SYSTEM] + user_turn(r)),
        "answer forced to open with a quote": lambda: wer_of(user_turn, '"', until_quote),
        "system prompt + forced quote": lambda: wer_of(lambda r: [SYSTEM] + user_turn(r), '"', until_quote),
    }
    for name, arm in arms.items():
        started = time.perf_counter()
        print(f"{name}: WER {arm():.3f} ({time.perf_counter() - started:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
