"""Helpers for the server tests (kept out of conftest.py so that the test module can import them)."""

from __future__ import annotations

import base64
import io
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import soundfile

MODEL_ID = "tiny-llasm"
# small limits, so that each can be crossed cheaply; every normal test request stays below them
LIMITS = dict(max_body_mb=0.5, max_audio_seconds=4.0, max_request_audio_seconds=6.0, max_tokens_limit=48, default_max_tokens=12)


@dataclass
class Served:
    """A running server (`url`) for `app`, and the model and processor behind it."""

    url: str
    app: object
    model: object
    processor: object

    @property
    def engine(self):
        return self.app.state.engine

    def client(self, api_key: str = "unused"):
        import openai

        # no retries: a 429 must reach the test, not be retried away
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=api_key, max_retries=0, timeout=120)

    def post(self, body=None, content=None, headers: dict | None = None, timeout: float = 120):
        """A raw POST /v1/chat/completions: JSON `body`, or `content` (bytes or an iterator of bytes) as it is."""
        import httpx

        if content is None:
            return httpx.post(f"{self.url}/v1/chat/completions", json=body, headers=headers, timeout=timeout)
        return httpx.post(f"{self.url}/v1/chat/completions", content=content, headers=headers, timeout=timeout)

    def health(self) -> dict:
        import httpx

        return httpx.get(f"{self.url}/health", timeout=30).json()


def encode_audio(samples: np.ndarray, fmt: str = "wav", sampling_rate: int = 16000, subtype: str | None = None) -> str:
    """base64 of `samples` written as a `fmt` file (what an OpenAI client puts in `input_audio.data`)."""
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, sampling_rate, format=fmt.upper(), subtype=subtype)
    return base64.b64encode(buffer.getvalue()).decode()


def audio_part(data: str, fmt: str = "wav") -> dict:
    return {"type": "input_audio", "input_audio": {"data": data, "format": fmt}}


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    """Poll `condition` until it holds; fail (not hang) if it never does. Not a timing assertion: the deadline only
    bounds a wait for a state the test itself brings about."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


class Gate:
    """Holds the engine's first `generate` call until `open()`: makes the worker busy on demand, so that queueing and
    batching are deterministic. Records the batch size of every call and the jobs."""

    def __init__(self, engine, monkeypatch):
        self.event, self.calls, self.jobs = threading.Event(), [], []
        real = engine.generate

        def gated(jobs):
            self.calls.append(len(jobs))
            self.jobs.extend(jobs)
            if len(self.calls) == 1 and not self.event.wait(120):
                raise RuntimeError("the test never opened the gate")
            return real(jobs)

        monkeypatch.setattr(engine, "generate", gated)

    def open(self) -> None:
        self.event.set()
