"""Shared helpers of the training tests: tiny records, a saved tiny base and a tiny on-disk dataset."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf

from tiny_llasm import build_tiny_llasm, tone


REPO = Path(__file__).resolve().parents[2]
WORDS = ["hello world", "the quick brown fox", "what is the capital of france", "please answer the question"]


def audio_item(seconds: float = 0.5, seed: int = 0, transcript: str = "hello world") -> dict:
    return {"type": "audio", "array": tone(seconds, seed=seed, freq=300 + 40 * seed), "sampling_rate": 16000,
            "transcript": transcript}  # fmt: skip


def text(value: str) -> dict:
    return {"type": "text", "text": value}


def spoken_qa_record(i: int, seconds: float | None = None) -> dict:
    """A stage-2 style record: spoken question (with transcript) -> text answer."""
    return {"id": f"qa-{i}", "messages": [
        {"role": "user", "content": [audio_item(seconds or 0.4 + 0.1 * (i % 5), i, WORDS[i % 4])]},
        {"role": "assistant", "content": [text(WORDS[(i + 1) % 4])]}]}  # fmt: skip


ZH_WORDS = ["中国的首都是哪里", "今天天气很好", "请把窗户打开", "我喜欢读书"]


def write_tiny_dataset(root: Path, bilingual: bool = False) -> Path:
    """`root/stage1/{train,heldout}` ASR records and `root/stage2/{train,heldout}` spoken questions (tone audio);
    `bilingual`: the second half of each file Chinese (a block after the English, as the seed-text builder writes)."""
    sizes = {"stage1/train": 8, "stage1/heldout": 4, "stage2/train": 6, "stage2/heldout": 4 if bilingual else 3}
    for split, count in sizes.items():
        directory = root / split
        (directory / "audio").mkdir(parents=True, exist_ok=True)
        with open(directory / "manifest.jsonl", "w", encoding="utf-8") as handle:
            for i in range(count):
                language = "zh" if bilingual and i >= count // 2 else "en"
                transcript = (ZH_WORDS if language == "zh" else WORDS)[i % 4]
                path = f"audio/{i}.wav"
                sf.write(directory / path, tone(0.4 + 0.1 * (i % 5), freq=300 + 50 * i, seed=i), 16000)
                audio = {"type": "audio", "path": path, "transcript": transcript}
                if split.startswith("stage1"):
                    instruction = "Transcribe the speech." if language == "en" else "请把这段语音转写成文字。"
                    messages = [{"role": "user", "content": [text(instruction), audio]},
                                {"role": "assistant", "content": [text(transcript)]}]  # fmt: skip
                    record = {"id": f"{split}-{i}", "language": language, "task": "asr", "messages": messages}
                else:
                    record = {"id": f"{split}-{i}", "language": language, "task": "spoken_question",
                              "messages": [{"role": "user", "content": [audio]}]}  # fmt: skip
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    return root


@pytest.fixture(scope="session")
def tiny_training_files(tmp_path_factory) -> tuple[Path, Path]:
    """(base_dir, data_dir): a saved tiny LLaSM and a tiny dataset, built once per session."""
    root = tmp_path_factory.mktemp("llasm_training")
    model, processor = build_tiny_llasm()
    model.save_pretrained(root / "base")
    processor.save_pretrained(root / "base")
    return root / "base", write_tiny_dataset(root / "data")


def run_python(args: list[str], env: dict | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests"), os.environ.get("PYTHONPATH", "")]),
                "TOKENIZERS_PARALLELISM": "false", **(env or {})}  # fmt: skip
    return subprocess.run([sys.executable, *args], cwd=REPO, env=full_env, capture_output=True, text=True, timeout=timeout)
