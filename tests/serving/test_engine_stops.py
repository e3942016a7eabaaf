"""The engine's per-row stopping: stop strings are found on the decoded text at the token that completes them,
although only the last few tokens are decoded at each step."""

from __future__ import annotations

import torch

from modeling_llasm.serving.engine import Job, _RowStops
from tiny_llasm import tiny_tokenizer

TEXT = ("The answer is long and says many things before it ends. " * 12
        + "Café crème, naïve façade — über → straße. Then STOP here, and more words follow after it.")


def job(stop: tuple[str, ...], max_tokens: int = 10_000) -> Job:
    return Job(inputs={}, max_tokens=max_tokens, stop=stop)


def first_stop_by_full_decode(tokenizer, tokens: list[int], stops: tuple[str, ...]) -> int | None:
    """Reference: the fewest new tokens whose whole decoded text holds a stop string."""
    for n in range(1, len(tokens) + 1):
        if any(s in tokenizer.decode(tokens[:n], skip_special_tokens=True) for s in stops):
            return n
    return None


def run_stops(tokenizer, prompt: list[int], rows: list[list[int]], jobs: list[Job]) -> list[int | None]:
    stops = _RowStops(jobs, tokenizer)
    length = max(len(r) for r in rows)
    for n in range(1, length + 1):  # generate calls the criteria after each new token, prompt included
        batch = torch.tensor([prompt + (r + [tokenizer.pad_token_id] * length)[:n] for r in rows])
        if bool(stops(batch, None).all()):
            break
    return stops.done_at


def test_stop_strings_are_found_where_the_full_text_first_holds_them():
    tokenizer = tiny_tokenizer()
    prompt = tokenizer.encode("A question?")
    answer = tokenizer.encode(TEXT)
    assert len(answer) > 100  # long enough that a tail-only decode matters
    cases = [("STOP",), ("straße",), ("→",), ("é",), ("ends. The answer",), ("after it.",), ("never generated",),
             ("crème", "many")]
    for stop in cases:
        expected = first_stop_by_full_decode(tokenizer, answer, stop)
        (done_at,) = run_stops(tokenizer, prompt, [answer], [job(stop)])
        assert done_at == expected, stop
    assert first_stop_by_full_decode(tokenizer, answer, ("STOP",)) > 100


def test_each_row_stops_on_its_own_stop_strings_and_max_tokens():
    tokenizer = tiny_tokenizer()
    prompt = tokenizer.encode("A question?")
    answer = tokenizer.encode(TEXT)
    jobs = [job(("STOP",)), job(("straße",)), job((), max_tokens=7), job(("never generated",))]
    done_at = run_stops(tokenizer, prompt, [answer] * 4, jobs)
    assert done_at[0] == first_stop_by_full_decode(tokenizer, answer, ("STOP",))
    assert done_at[1] == first_stop_by_full_decode(tokenizer, answer, ("straße",))
    assert done_at[1] < done_at[0]
    assert done_at[2] == 7
    assert done_at[3] is None


def test_queue_room_counts_the_batch_an_idle_worker_is_about_to_take():
    """Two requests arriving together at an idle engine with one queue place and batches of one are both taken (the
    admission count let both in); a third waits for none of them and is refused; behind a running batch only
    `max_queue` may wait."""
    import pytest

    from modeling_llasm.serving.engine import Engine, QueueFull
    from tiny_llasm import build_tiny_llasm

    model, processor = build_tiny_llasm()
    engine = Engine(model, processor, max_queue=1, max_batch=1)  # not started: the worker has not taken anything yet
    engine.submit(job(()))
    engine.submit(job(()))
    with pytest.raises(QueueFull, match="--max-queue 1"):
        engine.submit(job(()))
    assert engine.queued == 2 and engine.full()
    assert len(engine._take()) == 1  # the worker's step: it takes the first, one generating and one waiting
    assert engine.running == 1 and engine.queued == 1 and engine.full()
    with pytest.raises(QueueFull):
        engine.submit(job(()))
