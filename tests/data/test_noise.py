"""Noisy copies of clips at a signal-to-noise ratio (`data.noise`)."""

import numpy as np
import pytest

from modeling_llasm.data.noise import babble, mix_at_snr, noisy_copies, parse_noise_conditions


def sine(freq: float, seconds: float = 0.5, amplitude: float = 0.3) -> np.ndarray:
    t = np.arange(int(16000 * seconds)) / 16000
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def snr_db(clean: np.ndarray, noisy: np.ndarray) -> float:
    noise = noisy.astype(np.float64) - clean
    return 10 * np.log10(np.mean(clean.astype(np.float64) ** 2) / np.mean(noise**2))


@pytest.mark.parametrize("kind", ["white", "babble"])
@pytest.mark.parametrize("target", [10.0, 0.0, -5.0])
def test_noisy_copies_have_the_asked_snr_and_are_reproducible(kind, target):
    clips = [sine(f, seconds=0.3 + 0.1 * i) for i, f in enumerate((200, 350, 500, 650, 800, 950))]
    noisy = noisy_copies(clips, kind, target)
    assert [len(n) for n in noisy] == [len(c) for c in clips] and all(n.dtype == np.float32 for n in noisy)
    for clean, mixed in zip(clips, noisy):
        assert snr_db(clean, mixed) == pytest.approx(target, abs=0.01)
    again = noisy_copies(clips, kind, target)
    assert all(np.array_equal(a, b) for a, b in zip(noisy, again))
    other_seed = noisy_copies(clips, kind, target, seed=1)
    assert not np.array_equal(noisy[0], other_seed[0])


def test_babble_is_other_talkers_never_the_clip_itself():
    # each "talker" is one pure tone: the babble mixed into clip i has no energy at clip i's frequency
    freqs = (300, 500, 700, 900, 1100, 1300)
    clips = [sine(f, seconds=1.0) for f in freqs]
    noisy = noisy_copies(clips, "babble", 0.0, talkers=4)
    for i, (clean, mixed) in enumerate(zip(clips, noisy)):
        spectrum = np.abs(np.fft.rfft(mixed - clean))  # 1 s at 16 kHz: bin = Hz
        present = [f for f in freqs if spectrum[f] > 0.05 * spectrum.max()]
        assert freqs[i] not in present and len(present) == 4


def test_babble_loops_short_talkers_and_normalises_each():
    rng = np.random.default_rng(0)
    out = babble(1000, [np.ones(30, np.float32), 5 * np.ones(70, np.float32)], rng)
    assert out.shape == (1000,) and np.allclose(out, 2.0)  # each talker at unit power, summed


def test_bad_noise_requests_name_the_problem():
    clips = [sine(300), sine(400)]
    with pytest.raises(ValueError, match="noise kind must be one of"):
        noisy_copies(clips, "pink", 10)
    with pytest.raises(ValueError, match="needs more than 4 clips; got 2"):
        noisy_copies(clips, "babble", 10)
    with pytest.raises(ValueError, match="silent clip"):
        mix_at_snr(np.zeros(10, np.float32), np.ones(10, np.float32), 10)
    assert parse_noise_conditions("white:10, babble:0") == [("white", 10.0), ("babble", 0.0)]
    with pytest.raises(ValueError, match=r"'pink:3'.*KIND:SNR_DB"):
        parse_noise_conditions("white:10,pink:3")
    with pytest.raises(ValueError, match="'loud' is not a number"):
        parse_noise_conditions("white:loud")
