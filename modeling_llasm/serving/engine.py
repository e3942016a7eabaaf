"""The generation worker: one thread, a bounded queue, and micro-batching of compatible requests.

Requests are preprocessed (audio decoded, chat template applied, features computed) in the web server's threads;
the worker only runs the model. Non-streaming requests with the same sampling settings (all greedy ones, or the
same temperature/top_p without a seed) that arrive within `batch_wait_s` of each other share one `generate` call:
their already-tokenized prompts are left-padded into one batch exactly as `LlasmProcessor` pads a batch, and each row
stops on its own (`max_tokens`, stop strings). For greedy decoding the model gives batched == one-by-one answers.
Streaming requests and seeded sampling run alone.
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import StoppingCriteria, StoppingCriteriaList, TextStreamer

from ..modeling_llasm import LlasmConversationCache, common_prefix_length
from ..processing_llasm import collate_model_inputs

logger = logging.getLogger("modeling_llasm.serving")


def stop_index(text: str, stops: tuple[str, ...]) -> int:
    """Where the first of the stop strings `stops` starts in `text`, or -1 (OpenAI's `stop`: the answer ends there)."""
    return min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)


class QueueFull(Exception):
    """The request queue is full; the caller should answer 429."""


class ShuttingDown(RuntimeError):
    """The engine is stopping: the request was not (or will not be) run; the caller should answer 503."""


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0

    def batch_key(self) -> tuple | None:
        """Requests with equal keys may share a `generate` call; None = always alone (seeded sampling)."""
        if self.greedy:
            return ("greedy",)
        if self.seed is not None:
            return None
        return ("sample", self.temperature, self.top_p)

    def generate_kwargs(self) -> dict[str, Any]:
        if self.greedy:
            return {"do_sample": False, "num_beams": 1}
        return {"do_sample": True, "num_beams": 1, "temperature": self.temperature, "top_p": self.top_p, "top_k": 0}


@dataclass
class Completion:
    text: str
    finish_reason: str  # "stop" or "length"
    prompt_tokens: int
    completion_tokens: int


@dataclass
class Job:
    """One request. `inputs`: the processor's output for this conversation alone (unpadded, batch of 1)."""

    inputs: dict[str, torch.Tensor]
    max_tokens: int
    sampling: Sampling = field(default_factory=Sampling)
    stop: tuple[str, ...] = ()
    # called from the worker thread: on_done(Completion | None, BaseException | None); on_text(str) when streaming
    on_done: Callable[[Completion | None, BaseException | None], None] = lambda result, error: None
    on_text: Callable[[str], None] | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)

    @property
    def stream(self) -> bool:
        return self.on_text is not None

    @property
    def prompt_tokens(self) -> int:
        return int(self.inputs["attention_mask"].sum())

    def batch_key(self) -> tuple | None:
        """Requests share a `generate` call only with the same sampling and reading language (one per call)."""
        key = None if self.stream else self.sampling.batch_key()
        return None if key is None else (*key, self.inputs.get("language"))


@dataclass
class Task:
    """Model work other than a `generate` call (e.g. reading a streamed turn's audio as it arrives), run on the
    worker thread between batches, alone: the model is only ever used by that thread. `fn`'s result (or error)
    goes to `future`."""

    fn: Callable[[], Any]
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)
    cancelled: threading.Event = field(default_factory=threading.Event)

    def batch_key(self) -> None:
        return None

    def on_done(self, result: Any, error: BaseException | None) -> None:
        if error is not None:
            self.future.set_exception(error)
        else:
            self.future.set_result(result)


class _RowStops(StoppingCriteria):
    """Per-row stopping: each row's own `max_tokens`, its stop strings (checked on the decoded text), cancellation.
    Records after how many new tokens each row stopped (`done_at`).

    Checked after every token, so a stop string can only have just been completed: only the last tokens that could
    hold it are decoded (each token is at least one byte; one more token for tokenizers that drop a leading space),
    not the whole answer at every step."""

    def __init__(self, jobs: list[Job], tokenizer):
        self.jobs, self.tokenizer = jobs, tokenizer
        self.start: int | None = None  # prompt length as generate sees it (a ctc_compress prompt is re-packed)
        self.done_at: list[int | None] = [None] * len(jobs)
        self.tail = [max((len(s.encode("utf-8")) for s in job.stop), default=0) + 1 for job in jobs]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        if self.start is None:
            self.start = input_ids.shape[1] - 1
        generated = input_ids.shape[1] - self.start
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        for row, job in enumerate(self.jobs):
            if self.done_at[row] is not None:
                done[row] = True
                continue
            stop = generated >= job.max_tokens or job.cancelled.is_set()
            if not stop and job.stop:
                start = max(self.start, input_ids.shape[1] - self.tail[row])
                text = self.tokenizer.decode(input_ids[row, start:], skip_special_tokens=True)
                stop = any(s in text for s in job.stop)
            if stop:
                self.done_at[row] = generated
                done[row] = True
        return done


class _CallbackStreamer(TextStreamer):
    """transformers' `TextStreamer` (as `TextIteratorStreamer`, word-safe decoding) handing text to a callback."""

    def __init__(self, tokenizer, on_text: Callable[[str], None]):
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.on_text = on_text

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        if text:
            self.on_text(text)


class ConversationPool:
    """KV caches of the conversations served lately (OpenAI clients resend the whole conversation each turn): a
    request alone in its `generate` continues the cache whose conversation it extends furthest, else starts from the
    shared prompt head. `size` 0 turns reuse off. Answers are those of a full prefill (`LlasmConversationCache`)."""

    def __init__(self, model, processor, size: int = 8):
        self.model, self.processor, self.size = model, processor, size
        self.entries: list[tuple[list[int], LlasmConversationCache]] = []  # (the ids it was last called with + answer, cache)
        self.head: LlasmConversationCache | None = None
        self.stats = {"reused_tokens": 0, "prompt_tokens": 0}

    def prepare(self) -> None:
        """Prefill the shared prompt head (before serving: it uses the processor, which request threads share)."""
        if self.head is None and self.size > 0:
            with torch.inference_mode():
                self.head = LlasmConversationCache.for_prompt_head(self.model, self.processor)

    def take(self, input_ids: list[int]) -> LlasmConversationCache:
        self.prepare()
        best, best_common = None, len(self.head)
        for index, (ids, _) in enumerate(self.entries):
            common = common_prefix_length(ids, input_ids)
            if common > best_common:  # only a real continuation: never crop another conversation to the head
                best, best_common = index, common
        if best is not None:
            return self.entries.pop(best)[1]
        return self.head.copy()

    def give_back(self, ids: list[int], cache: LlasmConversationCache, prompt_tokens: int) -> None:
        self.stats["reused_tokens"] += cache.reused_tokens
        self.stats["prompt_tokens"] += prompt_tokens
        self.entries.append((ids, cache))
        del self.entries[: max(0, len(self.entries) - self.size)]  # least recently used first


class Engine:
    """Owns the model: a bounded queue of `Job`s and one worker thread that micro-batches them."""

    def __init__(self, model, processor, max_queue: int = 64, max_batch: int = 8, batch_wait_s: float = 0.005,
                 max_conversations: int = 8):  # fmt: skip
        if max_queue < 1 or max_batch < 1:
            raise ValueError(f"max_queue and max_batch must be >= 1, got {max_queue} and {max_batch}.")
        self.model, self.processor = model, processor
        self.tokenizer = processor.tokenizer
        self.max_queue, self.max_batch, self.batch_wait_s = max_queue, max_batch, batch_wait_s
        self._pending: collections.deque[Job] = collections.deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.running = 0
        self.stats = {"requests": 0, "generate_calls": 0, "batch_sizes": collections.Counter(), "errors": 0}
        eos = model.generation_config.eos_token_id
        if eos is None:
            eos = self.tokenizer.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, (list, tuple)) else [eos]) - {None}
        self.pad_token_id = processor.pad_token_id
        self.conversations = ConversationPool(model, processor, max_conversations)

    # ----- lifecycle -----
    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._stopping = False
        self.conversations.prepare()
        self._thread = threading.Thread(target=self._loop, name="llasm-generate", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._stopping = True
            abandoned = list(self._pending)
            self._pending.clear()
            self._cond.notify_all()
        for job in abandoned:
            job.on_done(None, ShuttingDown("The server is shutting down."))
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def queued(self) -> int:
        return len(self._pending)

    def full(self) -> bool:
        """True when `max_queue` jobs wait behind a running batch. While the worker is between batches, the jobs that
        its next batch will take do not count as waiting: two requests that arrive together at an idle server with
        --max-queue 1 --max-batch 1 are both taken, as the admission count promised."""
        room = self.max_queue + (self.max_batch if self.running == 0 else 0)
        return len(self._pending) >= room

    def submit(self, job: Job | Task) -> None:
        """Queue `job` (or a `Task`) or raise `QueueFull` at once (never blocks)."""
        with self._cond:
            if self._stopping:
                raise ShuttingDown("The server is shutting down.")
            if self.full():
                raise QueueFull(f"The request queue is full ({len(self._pending)} waiting, {self.running} generating; "
                                f"--max-queue {self.max_queue}, --max-batch {self.max_batch}).")  # fmt: skip
            self._pending.append(job)
            self._cond.notify_all()

    # ----- worker -----
    def _take(self) -> list[Job]:
        with self._cond:
            while not self._pending and not self._stopping:
                self._cond.wait(0.5)
            if self._stopping:
                return []
            first = self._pending.popleft()
            batch, key = [first], first.batch_key()
            self.running = 1  # counted as generating from the moment it leaves the queue (see `full`)
            if key is None or self.max_batch == 1:
                return batch
            deadline = time.monotonic() + self.batch_wait_s
            while len(batch) < self.max_batch:
                for job in list(self._pending):
                    if len(batch) >= self.max_batch:
                        break
                    if job.batch_key() == key:
                        self._pending.remove(job)
                        batch.append(job)
                        self.running = len(batch)
                remaining = deadline - time.monotonic()
                if len(batch) >= self.max_batch or remaining <= 0 or self._stopping:
                    break
                self._cond.wait(remaining)
            return batch

    def _loop(self) -> None:
        while not self._stopping:
            batch = [job for job in self._take() if not job.cancelled.is_set()]
            try:
                if batch:
                    self._run(batch)
            finally:
                with self._cond:
                    self.running = 0

    def _run(self, batch: list[Job | Task]) -> None:
        if isinstance(batch[0], Task):  # alone (no batch key)
            try:
                result = batch[0].fn()
            except Exception as error:  # noqa: BLE001 -- the task's caller gets it; the worker goes on
                batch[0].on_done(None, error)
            else:
                batch[0].on_done(result, None)
            return
        try:
            results = self.generate(batch)
        except Exception as error:  # noqa: BLE001 -- never let one request kill the worker
            if len(batch) > 1:  # one bad request must not fail the others: retry each alone
                logger.warning("batched generate failed (%s); retrying the %d requests one by one", error, len(batch))
                for job in batch:
                    self._run([job])
                return
            logger.exception("generate failed")
            self.stats["errors"] += 1
            batch[0].on_done(None, error)
            return
        for job, result in zip(batch, results):
            job.on_done(result, None)

    def generate(self, jobs: list[Job]) -> list[Completion]:
        """Run `jobs` (same sampling settings; one if streaming) through one `generate` call."""
        self.stats["generate_calls"] += 1
        self.stats["requests"] += len(jobs)
        self.stats["batch_sizes"][len(jobs)] += 1
        language = jobs[0].inputs.get("language")  # equal in a batch (`batch_key`)
        inputs = collate_model_inputs([{k: v for k, v in job.inputs.items() if k != "language"} for job in jobs], self.pad_token_id)
        device, dtype = self.model.device, self.model.dtype
        inputs = {k: (v.to(device, dtype) if k == "input_features" else v.to(device)) for k, v in inputs.items()}
        if language is not None:
            inputs["language"] = language
        stops = _RowStops(jobs, self.tokenizer)
        kwargs: dict[str, Any] = dict(jobs[0].sampling.generate_kwargs())
        kwargs["max_new_tokens"] = max(job.max_tokens for job in jobs)
        kwargs["stopping_criteria"] = StoppingCriteriaList([stops])
        kwargs["pad_token_id"] = self.pad_token_id
        if jobs[0].stream:
            kwargs["streamer"] = _CallbackStreamer(self.tokenizer, jobs[0].on_text)
        if jobs[0].sampling.seed is not None:
            torch.manual_seed(jobs[0].sampling.seed)
        conversation_cache = None
        if self.conversations.size > 0 and LlasmConversationCache.unsupported(len(jobs), **kwargs) is None:
            conversation_cache = kwargs["conversation_cache"] = self.conversations.take(inputs["input_ids"][0].tolist())
        with torch.inference_mode():
            sequences = self.model.generate(**inputs, **kwargs)
        if conversation_cache is not None:
            self.conversations.give_back(sequences[0].tolist(), conversation_cache, inputs["input_ids"].shape[1])
        new_tokens = sequences[:, inputs["input_ids"].shape[1] :].tolist()
        return [self._completion(job, tokens, stops.done_at[row]) for row, (job, tokens) in enumerate(zip(jobs, new_tokens))]

    def _completion(self, job: Job, tokens: list[int], done_at: int | None) -> Completion:
        return self.completion(tokens, job.max_tokens, job.prompt_tokens, job.stop, done_at, job.cancelled.is_set())

    def completion(self, tokens: list[int], max_tokens: int, prompt_tokens: int, stop: tuple[str, ...] = (),
                   done_at: int | None = None, cancelled: bool = False) -> Completion:  # fmt: skip
        """A request's answer from the new tokens generated for it: cut at `max_tokens` (or where its row stopped,
        `done_at`), at end-of-sequence (kept, as counted) and at a stop string. On the worker thread (its tokenizer)."""
        tokens = tokens[: min(max_tokens, done_at if done_at is not None else len(tokens))]
        finish = "length" if len(tokens) >= max_tokens else "stop"
        for index, token in enumerate(tokens):
            if token in self.eos_ids:
                tokens, finish = tokens[: index + 1], "stop"
                break
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        cut = stop_index(text, stop)
        if cut >= 0:
            text, finish = text[:cut], "stop"
        elif cancelled:
            finish = "stop"
        return Completion(text.strip(), finish, prompt_tokens, len(tokens))

__all__ = ["Completion", "ConversationPool", "Engine", "Job", "QueueFull", "Sampling", "ShuttingDown", "Task"]
