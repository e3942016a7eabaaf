"""Zero-training check: can prompting make the frozen LLM transcribe? (docs/training.md, "Can the frozen LLM still
transcribe?").

    python benchmarks/asr_prompt_check.py [RUN_DIR] [NUM_CLIPS] [ARM_NAME_FILTER]

Greedy transcripts of the run's held-out ASR clips (`RUN_DIR/understanding/heldout_asr.jsonl`) by `RUN_DIR/final`
under each prompt; prints the WER of each. `ASR_CHECK_SPLIT=train` uses training-split clips instead (to choose a
design without looking at the held-out ones), `ASR_CHECK_SPLIT=questions` the understanding set's spoken questions.
"""

import json
import os
import sys
import time
from pathlib import Path

import torch

from modeling_llasm import LlasmProcessor
from modeling_llasm.metrics import word_error_rate
from modeling_llasm.training.loading import load_llasm

SYSTEM = {"role": "system", "content": [{"type": "text", "text": "You are a transcriber. Reply with exactly the words spoken in the audio, nothing else."}]}


def training_clips(run: Path, start: int, stop: int) -> list[dict]:
    """ASR records `start:stop` of the run's stage-1 training split, audio paths made absolute."""
    with open(run / "data/stage1/train/manifest.jsonl", encoding="utf-8") as handle:
        records = [json.loads(line) for line in handle]
    records = [r for r in records if r.get("task") == "asr"][start:stop]
    for record in records:  # the manifest's audio paths are relative to its folder
        for part in record["messages"][0]["content"]:
            if part["type"] == "audio":
                part["path"] = str(run / "data/stage1/train" / part["path"])
    return records


def spoken_questions(run: Path) -> list[dict]:
    """The run's understanding set as ASR records (no instruction; the question's transcript as the answer)."""
    records = []
    with open(run / "understanding_set/manifest.jsonl", encoding="utf-8") as handle:
        for line in handle:
            record = json.loads(line)
            audio = dict(record["messages"][0]["content"][0], path=str(run / "understanding_set" / record["messages"][0]["content"][0]["path"]))
            records.append({"messages": [{"role": "user", "content": [audio]},
                                         {"role": "assistant", "content": [{"type": "text", "text": audio["transcript"]}]}]})  # fmt: skip
    return records


def main() -> None:
    run = Path(sys.argv[1]) if len(sys.argv) > 1 else Path.home() / ".cache/llasm/runs/tiny"
    num_clips = int(sys.argv[2]) if len(sys.argv) > 2 else 96
    torch.set_num_threads(2)
    model = load_llasm(run / "final").eval()
    processor = LlasmProcessor.from_pretrained(run / "final")
    split = os.environ.get("ASR_CHECK_SPLIT", "heldout")
    if split == "train":  # validate prompt designs on training-split clips (after the demos)
        records = training_clips(run, 3, 3 + num_clips)
    elif split == "questions":  # the spoken held-out questions of the understanding evaluation (other texts and voices)
        records = spoken_questions(run)[:num_clips]
    else:
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

    def first_line(text: str) -> str:
        return text.split("\n")[0].strip()

    # In-context demonstrations: training clips (voices and texts the held-out set never uses) with their transcripts.
    demos = training_clips(run, 0, 3)

    def with_demos(record):
        turns = [SYSTEM]
        for demo in demos:
            turns += demo["messages"]
        return turns + user_turn(record)

    def with_text_demos(record):
        turns = [SYSTEM]
        for demo in demos:
            said = demo["messages"][1]["content"][0]["text"]
            turns += [{"role": "user", "content": [{"type": "text", "text": "Transcribe the speech."}, {"type": "text", "text": said}]},
                      {"role": "assistant", "content": [{"type": "text", "text": said}]}]  # fmt: skip
        return turns + user_turn(record)

    def typed(record):  # the LLM's own limit: the words themselves, typed where the audio was
        turns = user_turn(record)
        content = [{"type": "text", "text": p["transcript"]} if p["type"] == "audio" else p for p in turns[-1]["content"]]
        return turns[:-1] + [{"role": "user", "content": content}]

    arms = {
        "the clip's own instruction": lambda: wer_of(user_turn),
        "typed: the reference transcript in place of the audio, the clip's own instruction": lambda: wer_of(typed),
        "typed: the same, + transcriber system prompt": lambda: wer_of(lambda r: [SYSTEM] + typed(r)),
        "+ transcriber system prompt": lambda: wer_of(lambda r: [SYSTEM] + user_turn(r)),
        "answer forced to open with a quote": lambda: wer_of(user_turn, '"', until_quote),
        "system prompt + forced quote": lambda: wer_of(lambda r: [SYSTEM] + user_turn(r), '"', until_quote),
        "system prompt, first line only": lambda: wer_of(lambda r: [SYSTEM] + user_turn(r), cut=first_line),
        "system prompt + 3 spoken demonstrations": lambda: wer_of(with_demos),
        "system prompt + 3 spoken demonstrations, first line only": lambda: wer_of(with_demos, cut=first_line),
        "processor.apply_transcription_request (its own system prompt + 3 typed demonstrations)":
            lambda: wer_of(lambda r: processor.transcription_conversation(next(p for p in r["messages"][0]["content"] if p["type"] == "audio"))),
        "system prompt + 3 typed demonstrations": lambda: wer_of(with_text_demos),
        "system prompt + 3 typed demonstrations, first line only": lambda: wer_of(with_text_demos, cut=first_line),
    }
    only = sys.argv[3] if len(sys.argv) > 3 else ""
    for name, arm in arms.items():
        if only not in name:
            continue
        started = time.perf_counter()
        print(f"{name}: WER {arm():.3f} ({time.perf_counter() - started:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
