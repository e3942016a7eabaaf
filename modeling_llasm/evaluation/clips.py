"""Deterministic benchmark clips: espeak-ng speech when it is installed, else noise-like stand-in signals."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from functools import lru_cache

import numpy as np

SAMPLING_RATE = 16_000
SENTENCES = (
    "The quick brown fox jumps over the lazy dog.",
    "What is the capital of France, and why is it famous?",
    "Please explain how a rainbow forms after the rain.",
    "My favourite season is autumn because the leaves turn red and gold.",
    "Can you recommend a good book about the history of science?",
    "The train to the airport leaves every fifteen minutes from platform two.",
    "How many planets are there in our solar system?",
    "Write a short poem about the sea at night.",
    "Yesterday we walked along the river and watched the boats go by.",
    "Tell me three ways to save energy at home.",
)


@lru_cache(maxsize=1)
def speech_source() -> str:
    """`"espeak-ng"` if speech can be synthesized here, else `"noise"`."""
    try:
        from ..data.tts import available_engines

        if "espeak-ng" in available_engines():
            return "espeak-ng"
    except Exception:  # the data tools are optional
        pass
    return "espeak-ng-cli" if shutil.which("espeak-ng") else "noise"


def _espeak(text: str, voice: str) -> np.ndarray:
    source = speech_source()
    if source == "espeak-ng":
        from ..data.tts import synthesize

        return synthesize(text, f"espeak-ng:{voice}")
    import soundfile

    from ..processing_llasm import load_audio

    with tempfile.NamedTemporaryFile(suffix=".wav") as handle:
        subprocess.run(["espeak-ng", "-v", voice, "-w", handle.name, text], check=True, capture_output=True)
        samples, rate = soundfile.read(handle.name, dtype="float32")
    return load_audio(samples, sampling_rate=rate)


def noise_clip(seconds: float, seed: int = 0) -> np.ndarray:
    """A speech-like stand-in: syllable-rate amplitude-modulated harmonics plus noise (deterministic)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(round(seconds * SAMPLING_RATE))) / SAMPLING_RATE
    pitch = 110 + 30 * np.sin(2 * np.pi * 0.3 * t + seed)
    phase = 2 * np.pi * np.cumsum(pitch) / SAMPLING_RATE
    voiced = sum(np.sin(k * phase) / k for k in range(1, 6))
    envelope = 0.5 * (1 + np.sin(2 * np.pi * 4.0 * t + rng.uniform(0, 6.28)))
    return (0.3 * envelope * voiced + 0.02 * rng.standard_normal(t.shape)).astype(np.float32)


def speech_clip(seconds: float, seed: int = 0, voice: str = "en-us") -> np.ndarray:
    """Exactly `seconds` of 16 kHz audio: sentences spoken one after another (starting at sentence `seed`), cut to
    length with a 10 ms fade; `noise_clip` when no speech synthesizer is available."""
    n = int(round(seconds * SAMPLING_RATE))
    if speech_source() == "noise":
        return noise_clip(seconds, seed)
    pieces, total, index = [], 0, seed
    gap = np.zeros(SAMPLING_RATE // 5, dtype=np.float32)
    while total < n:
        speech = _espeak(SENTENCES[index % len(SENTENCES)], voice)
        pieces += [speech, gap]
        total += len(speech) + len(gap)
        index += 1
    clip = np.concatenate(pieces)[:n].copy()
    fade = min(160, n)
    clip[-fade:] *= np.linspace(1.0, 0.0, fade, dtype=np.float32)
    return clip.astype(np.float32)
