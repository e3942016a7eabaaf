"""Noisy copies of spoken clips: white or babble noise mixed in at a given signal-to-noise ratio (issue 22, item 5).

Babble is several other talkers at once: a sum of other clips of the same set (other questions, other voices), each
started at a random point and looped to the clip's length, as babble noise is made for ASR robustness tests. Each
copy is deterministic (its seed comes from the clip's index and the condition), so a noisy set made twice is the same.

```python
from modeling_llasm.data.noise import noisy_copies
noisy = noisy_copies(clips, "babble", snr_db=10)   # list of float32 arrays, same lengths as clips
```
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np

NOISE_KINDS = ("white", "babble")
BABBLE_TALKERS = 4


def mix_at_snr(speech: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """`speech + g * noise` with `g` such that 10 log10(P_speech / P_noise) = `snr_db` (powers over the whole clip).
    Peaks above 1.0 are left as they are: float samples, the features need no clipping."""
    if speech.shape != noise.shape:
        raise ValueError(f"mix_at_snr: speech and noise shapes differ ({speech.shape} vs {noise.shape}).")
    speech_power = float(np.mean(speech.astype(np.float64) ** 2))
    noise_power = float(np.mean(noise.astype(np.float64) ** 2))
    if speech_power == 0.0 or noise_power == 0.0:
        raise ValueError("mix_at_snr: a silent clip or silent noise has no signal-to-noise ratio.")
    gain = np.sqrt(speech_power / (noise_power * 10.0 ** (snr_db / 10.0)))
    return (speech + gain * noise).astype(np.float32)


def babble(length: int, talkers: Sequence[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """The sum of `talkers`, each normalised to unit power, started at a random sample and looped to `length`."""
    total = np.zeros(length, dtype=np.float64)
    for talker in talkers:
        talker = np.asarray(talker, dtype=np.float64)
        power = np.mean(talker**2)
        if power == 0.0:
            continue
        start = int(rng.integers(len(talker)))
        repeats = -(-(start + length) // len(talker))
        total += np.tile(talker, repeats)[start : start + length] / np.sqrt(power)
    return total.astype(np.float32)


def noisy_copies(clips: Sequence[np.ndarray], kind: str, snr_db: float, talkers: int = BABBLE_TALKERS,
                 seed: int = 0) -> list[np.ndarray]:  # fmt: skip
    """Each clip with `kind` noise (`"white"` or `"babble"`) at `snr_db`. Babble for clip i sums `talkers` other
    clips of `clips` (never clip i itself), chosen at random per clip; needs at least `talkers + 1` clips."""
    if kind not in NOISE_KINDS:
        raise ValueError(f"noise kind must be one of {NOISE_KINDS}, got {kind!r}.")
    if kind == "babble" and len(clips) <= talkers:
        raise ValueError(f"babble noise of {talkers} talkers needs more than {talkers} clips; got {len(clips)}.")
    out = []
    for index, clip in enumerate(clips):
        clip = np.asarray(clip, dtype=np.float32)
        rng = np.random.default_rng([seed, index, zlib.crc32(kind.encode()), int(round(snr_db * 100)) % 2**32])
        if kind == "white":
            noise = rng.standard_normal(len(clip)).astype(np.float32)
        else:
            others = [j for j in range(len(clips)) if j != index]
            chosen = rng.choice(others, size=talkers, replace=False)
            noise = babble(len(clip), [clips[j] for j in chosen], rng)
        out.append(mix_at_snr(clip, noise, snr_db))
    return out


def parse_noise_conditions(spec: str) -> list[tuple[str, float]]:
    """`"white:10,babble:0"` -> `[("white", 10.0), ("babble", 0.0)]` (kind:SNR in dB, comma separated)."""
    conditions = []
    for item in (part.strip() for part in spec.split(",")):
        kind, sep, snr = item.partition(":")
        if not sep or kind not in NOISE_KINDS:
            raise ValueError(f"noise condition {item!r}: expected KIND:SNR_DB with KIND one of {NOISE_KINDS} (e.g. white:10).")
        try:
            conditions.append((kind, float(snr)))
        except ValueError:
            raise ValueError(f"noise condition {item!r}: SNR {snr!r} is not a number of dB.") from None
    return conditions
