"""The fast-answer measurements of `llasm bench` (issue 12): reuse of earlier work (the shared prompt head, the
turns before), inference precision, and the batched pipeline, each beside its baseline in the same run."""

from __future__ import annotations

import copy
import statistics
import time

import numpy as np
import torch

from ..modeling_llasm import LlasmConversationCache, set_inference_dtype
from .bench_systems import BenchSettings, Systems
from .bench_timing import TokenTimes, _audio_turn, bare_llm_inputs, ttft_speech

__all__ = ["FAST_DTYPES", "LOOKUP_TOKENS", "bench_dtypes", "bench_pipeline", "bench_prompt_lookup", "bench_reuse"]

FAST_DTYPES = ("float32", "bfloat16", "int8")
# the precisions that keep the task numbers, among which the goals take the fastest. Judged by the task on the 120
# held-out spoken questions (docs/inference.md): bfloat16 changes answers but keeps them on topic (0.833 vs float32's
# 0.808, recognition 0.145 vs 0.158); int8 dynamic quantization does not (0.658, a third of typed answers off topic).
QUALITY_DTYPES = ("float32", "bfloat16")
TURN_ANSWER = "Sure. Here is a short answer to that question, in two sentences. I hope it helps you."


def _alternating(settings: BenchSettings, arms: dict, log_name: str) -> dict[str, list]:
    """Run every arm once per repeat (order rotated to spread drift), warm-up repeats dropped."""
    results: dict[str, list] = {name: [] for name in arms}
    names = list(arms)
    for repeat in range(settings.warmup + settings.repeats):
        for name in names[repeat % len(names) :] + names[: repeat % len(names)]:
            value = arms[name]()
            if repeat >= settings.warmup:
                results[name].append(value)
        settings.log(f"[bench] {log_name}: repeat {repeat + 1}/{settings.warmup + settings.repeats} done")
    return results


def _three_turns(clips: list[np.ndarray]) -> list[dict]:
    """A spoken conversation at its third question: two earlier questions with fixed answers."""
    messages = []
    for clip in clips[:2]:
        messages += [*_audio_turn(clip), {"role": "assistant", "content": TURN_ANSWER}]
    return messages + _audio_turn(clips[2])


def bench_reuse(systems: Systems, settings: BenchSettings, clips: list[np.ndarray]) -> dict:
    """TTFT of a 5 s question with / without the shared prompt-head cache, and of turn 3 of a spoken chat
    continuing its conversation cache / prefilled in full; greedy answers compared."""
    model, processor = systems.llasm, systems.llasm_processor
    head = LlasmConversationCache.for_prompt_head(model, processor)

    def with_head():
        return ttft_speech(model, processor, clips[0], conversation_cache=head.copy())

    # Turn 3 of a spoken chat, two ways: (a) as `llasm chat -i` runs it: the model's own greedy answers (up to
    # `llasm chat`'s default 128 tokens) generated into the cache; (b) short fixed answers (18 tokens), prefilled as
    # text (the cache ends up as if they had been generated), where the new turn is a larger share of the prompt.
    chat_messages = _audio_turn(clips[0])
    own = head.copy()
    for clip in clips[1:]:
        inputs = processor.apply_chat_template(chat_messages, add_generation_prompt=True)
        with torch.inference_mode():
            out = model.generate(**inputs, max_new_tokens=128, do_sample=False, conversation_cache=own)
        answer = processor.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip()
        chat_messages += [{"role": "assistant", "content": answer}, *_audio_turn(clip)]
    short_messages = _three_turns(clips)
    short = head.copy()
    for upto in (2, 4):
        short.prefill(model, **processor.apply_chat_template(short_messages[:upto]))

    def turn3(messages: list[dict], cache: LlasmConversationCache | None) -> dict:
        start = time.perf_counter()
        inputs = processor.apply_chat_template(messages, add_generation_prompt=True)
        kwargs = {"conversation_cache": cache.copy()} if cache is not None else {}
        with torch.inference_mode():
            model.generate(**inputs, max_new_tokens=1, do_sample=False, **kwargs)
        prompt = int(inputs["input_ids"].shape[1])
        return {"total": time.perf_counter() - start, "prompt_tokens": prompt,
                "prefilled_tokens": prompt - (kwargs["conversation_cache"].reused_tokens if kwargs else 0)}  # fmt: skip

    runs = _alternating(settings, {
        "question_no_cache": lambda: ttft_speech(model, processor, clips[0]),
        "question_prefix_cache": with_head,
        "turn3_full_prefill": lambda: turn3(chat_messages, None),
        "turn3_conversation_cache": lambda: turn3(chat_messages, own),
        "turn3_short_answers_full_prefill": lambda: turn3(short_messages, None),
        "turn3_short_answers_conversation_cache": lambda: turn3(short_messages, short),
    }, "reuse")  # fmt: skip
    median = {name: statistics.median(r["total"] for r in rs) for name, rs in runs.items()}
    equal = []
    for messages, cache in ((chat_messages, own), (short_messages, short)):
        inputs = processor.apply_chat_template(messages, add_generation_prompt=True)
        with torch.inference_mode():
            full = model.generate(**inputs, max_new_tokens=24, do_sample=False)
            reused = model.generate(**inputs, max_new_tokens=24, do_sample=False, conversation_cache=cache.copy())
        equal.append(bool(torch.equal(full, reused)))
    tokens = {name: {"prompt": rs[-1]["prompt_tokens"], "prefilled": rs[-1]["prefilled_tokens"]}
              for name, rs in runs.items() if name.startswith("turn3")}  # fmt: skip
    return {
        "ttft_seconds": median,
        "runs": {name: [round(r["total"], 4) for r in rs] for name, rs in runs.items()},
        "head_tokens": len(head),
        "turn3_tokens": tokens,
        "prefix_ratio": median["question_prefix_cache"] / median["question_no_cache"],
        "turn3_ratio": median["turn3_conversation_cache"] / median["turn3_full_prefill"],
        "turn3_short_answers_ratio": median["turn3_short_answers_conversation_cache"] / median["turn3_short_answers_full_prefill"],
        "turn3_answers_equal": all(equal),
    }


def bench_dtypes(systems: Systems, settings: BenchSettings, clip: np.ndarray) -> dict:
    """Per inference precision: TTFT of a 5 s question (prompt-head cache on) and decode tokens/s of LLaSM, beside
    the float32 bare LLM's decode speed on a text prompt of the same length."""
    processor, n = systems.llasm_processor, settings.decode_tokens
    gen = dict(max_new_tokens=n, min_new_tokens=n, do_sample=False)
    inputs = processor.apply_chat_template([_audio_turn(clip)], add_generation_prompt=True)
    text_inputs = bare_llm_inputs(processor, inputs)
    results: dict[str, dict] = {}
    for dtype in FAST_DTYPES:
        model = systems.llasm if dtype == "float32" else set_inference_dtype(copy.deepcopy(systems.llasm), dtype)
        head = LlasmConversationCache.for_prompt_head(model, processor)

        def ttft():
            return ttft_speech(model, processor, clip, conversation_cache=head.copy())["total"]

        def decode():
            times = TokenTimes()
            with torch.inference_mode():
                model.generate(**inputs, streamer=times, **gen)
            return times.decode_rate()

        arms = {"ttft": ttft, "decode": decode}
        if dtype == "float32":  # timed again here, alternating with this section's arms (as `bench_decode` does)
            def bare_decode():
                times = TokenTimes()
                with torch.inference_mode():
                    systems.llm.generate(**text_inputs, streamer=times, **gen)
                return times.decode_rate()

            arms["bare_llm_decode"] = bare_decode
        runs = _alternating(settings, arms, f"dtype {dtype}")
        results[dtype] = {name: statistics.median(values) for name, values in runs.items()}
        results[dtype]["runs"] = {name: [round(v, 4) for v in values] for name, values in runs.items()}
        # (each cast copy is freed when the next iteration rebinds `model`, `head` and the timed closures)
    bare = results["float32"]["bare_llm_decode"]
    fastest = min(QUALITY_DTYPES, key=lambda d: results[d]["ttft"])
    return {"by_dtype": results, "bare_llm_decode_float32": bare, "fastest_ttft_dtype": fastest,
            "decode_ratio_to_bare_float32": {d: results[d]["decode"] / bare for d in FAST_DTYPES},
            "quality_dtypes": list(QUALITY_DTYPES)}  # fmt: skip


def bench_pipeline(systems: Systems, settings: BenchSettings, clips: list[np.ndarray]) -> dict:
    """`pipeline("llasm-chat")` over a list: batch_size=8 vs one by one (prompt-head cache on), outputs compared."""
    from ..pipeline_llasm import LlasmChatPipeline

    chat = LlasmChatPipeline(model=systems.llasm, processor=systems.llasm_processor)
    m = settings.batch_new_tokens
    questions = [{"audio": {"array": clip, "sampling_rate": 16000}} for clip in clips]
    gen = dict(max_new_tokens=m, min_new_tokens=m, do_sample=False)
    outputs = {}

    def one_by_one():
        start = time.perf_counter()
        outputs["one_by_one"] = [chat(q, **gen)["generated_text"] for q in questions]
        return time.perf_counter() - start

    def batched():
        start = time.perf_counter()
        outputs["batch"] = [r["generated_text"] for r in chat(questions, batch_size=len(questions), **gen)]
        return time.perf_counter() - start

    runs = _alternating(settings, {"one_by_one": one_by_one, "batch": batched}, "pipeline batch")
    median = {name: statistics.median(values) for name, values in runs.items()}
    return {
        "clips": len(clips),
        "new_tokens_per_clip": m,
        "seconds": median,
        "answers_per_second": {k: len(clips) / v for k, v in median.items()},
        "speedup": median["one_by_one"] / median["batch"],
        "outputs_equal": sum(a == b for a, b in zip(outputs["one_by_one"], outputs["batch"])),
        "outputs_total": len(clips),
        "runs": {k: [round(v, 3) for v in values] for k, values in runs.items()},
    }


LOOKUP_TOKENS = 10  # candidate tokens per prompt-lookup step (transformers' documented example value)


class _TokenChunks:
    """A generation streamer recording when each chunk of new tokens arrives and how many it holds (prompt-lookup
    decoding emits several per step)."""

    def __init__(self):
        self.chunks: list[tuple[float, int]] = []

    def put(self, value):
        self.chunks.append((time.perf_counter(), int(value.numel())))

    def end(self):
        pass

    def decode_rate(self) -> float | None:
        """New tokens per second after the first chunk of new tokens (the prefill's); None with a single chunk."""
        new = self.chunks[1:]  # the first chunk is the prompt
        if len(new) < 2:
            return None
        return sum(n for _, n in new[1:]) / (new[-1][0] - new[0][0])


def bench_prompt_lookup(systems: Systems, settings: BenchSettings, clips: list[np.ndarray]) -> dict:
    """Greedy decoding with and without prompt-lookup decoding (`prompt_lookup_num_tokens`) on the same prompts: the
    transcription request and a spoken question per clip; decode tokens/s, wall time and whether the answers match."""
    model, processor = systems.llasm, systems.llasm_processor
    prompts = {}
    for i, clip in enumerate(clips):
        prompts[f"transcription request {i + 1}"] = processor.apply_transcription_request(clip)
        prompts[f"spoken question {i + 1}"] = processor.apply_chat_template([_audio_turn(clip)], add_generation_prompt=True)
    gen = dict(max_new_tokens=settings.decode_tokens, do_sample=False)
    answers: dict[tuple[str, str], list[int]] = {}

    def arm(name: str, inputs: dict, **lookup):
        def run():
            chunks = _TokenChunks()
            start = time.perf_counter()
            with torch.inference_mode():
                out = model.generate(**inputs, streamer=chunks, **gen, **lookup)
            answers[name, "lookup" if lookup else "greedy"] = out[0, inputs["input_ids"].shape[1] :].tolist()
            return {"seconds": time.perf_counter() - start, "decode_rate": chunks.decode_rate()}

        return run

    rows = {}
    for name, inputs in prompts.items():
        runs = _alternating(settings, {"greedy": arm(name, inputs), "lookup": arm(name, inputs, prompt_lookup_num_tokens=LOOKUP_TOKENS)},
                            f"prompt lookup: {name}")  # fmt: skip
        row = {}
        for mode, values in runs.items():
            rates = [v["decode_rate"] for v in values if v["decode_rate"] is not None]
            row[mode] = {"seconds": statistics.median(v["seconds"] for v in values), "decode_rate": statistics.median(rates) if rates else None}
        row["new_tokens"] = len(answers[name, "greedy"])
        row["answers_equal"] = answers[name, "greedy"] == answers[name, "lookup"]
        row["speedup"] = row["greedy"]["seconds"] / row["lookup"]["seconds"]
        rows[name] = row
    return {"prompt_lookup_num_tokens": LOOKUP_TOKENS, "max_new_tokens": settings.decode_tokens, "prompts": rows,
            "answers_equal": all(r["answers_equal"] for r in rows.values())}  # fmt: skip

