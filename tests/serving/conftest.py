"""Fixtures for the OpenAI-compatible server tests: a tiny random LLaSM served by uvicorn on 127.0.0.1.

The web stack is imported inside the fixtures: without the `serve` extra, test_serving.py skips itself."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from serving_helpers import LIMITS, MODEL_ID, Gate, Served

from tiny_llasm import build_tiny_llasm, multilingual_reader


@pytest.fixture(scope="session")
def tiny_model():
    """(model, processor): one tiny random LLaSM shared by all servers (each has its own worker thread)."""
    return build_tiny_llasm()


def _serve(model, processor, **overrides) -> Iterator[Served]:
    from modeling_llasm.serving.app import ServerSettings, create_app
    from modeling_llasm.serving.server import BackgroundServer

    app = create_app(model, processor, ServerSettings(model_id=MODEL_ID, **{**LIMITS, **overrides}))
    with BackgroundServer(app) as server:
        yield Served(server.url, app, model, processor)


@pytest.fixture(scope="module")
def served(tiny_model) -> Iterator[Served]:
    """The tiny model behind a server with small limits, micro-batching up to 8 requests."""
    yield from _serve(*tiny_model, max_batch=8, batch_wait_ms=5.0)


@pytest.fixture(scope="module")
def served_with_key(tiny_model) -> Iterator[Served]:
    yield from _serve(*tiny_model, api_key="sk-test-secret")


@pytest.fixture
def served_tiny_queue(tiny_model) -> Iterator[Served]:
    """A server that lets at most 2 requests wait."""
    yield from _serve(*tiny_model, max_queue=2, max_batch=8)


@pytest.fixture
def gate(monkeypatch):
    """`gate(engine)` -> a `Gate` on that engine's next generate call; always opened at the end of the test."""
    gates: list[Gate] = []

    def make(engine) -> Gate:
        gates.append(Gate(engine, monkeypatch))
        return gates[-1]

    yield make
    for g in gates:  # never leave a worker blocked, even when the test failed
        g.open()


@pytest.fixture
def served_one_slot(tiny_model) -> Iterator[Served]:
    """A server with one queue place and batches of one: at most 2 chat requests in flight."""
    yield from _serve(*tiny_model, max_queue=1, max_batch=1)


@pytest.fixture(scope="module")
def served_multilingual() -> Iterator[Served]:
    """A tiny `whisper_reader` whose Whisper knows two languages (`tiny_llasm.multilingual_reader`)."""
    yield from _serve(*multilingual_reader(), max_batch=8, batch_wait_ms=5.0)
