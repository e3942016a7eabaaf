"""The `stream` section of `llasm bench` (issue 24): the model users run, the default base (`whisper_reader`), timed
as a user feels it. For each clip length: its time to first token on the whole clip (with a breakdown: features,
encoder, reading, LLM prefill), and from the end of speech to the first token when the clip arrived in chunks
(`LlasmAudioStream`), beside the original LLaSM method and the cascade on the same clips, in the same run. The
whole-clip TTFT is also timed with the shared prompt head already prefilled (`LlasmConversationCache.for_prompt_head`),
as `llasm serve` and the pipeline keep it."""

from __future__ import annotations

import statistics
import time

import numpy as np
import torch

from ..conversation_cache_llasm import LlasmConversationCache
from ..streaming_llasm import LlasmAudioStream
from .bench_systems import BenchSettings, Systems
from .bench_timing import TokenTimes, _audio_turn, _median_dict, ttft_cascade, ttft_speech
from .clips import speech_clip

__all__ = ["STREAM_CHUNK_SECONDS", "STREAM_SECONDS", "bench_streaming", "load_default_reader", "stream_end_to_first_token"]

STREAM_SECONDS = (2.0, 5.0, 15.0, 30.0)
STREAM_CHUNK_SECONDS = 0.5  # a microphone's chunk; the stream works after each one
ANSWER_TOKENS = 16  # new tokens compared between the streamed and the whole-clip answer


def load_default_reader(settings: BenchSettings, systems: Systems):
    """(model, processor, description) of the default base: the `--model` given when it is a `whisper_reader`, else
    the embedded base (built if missing); with `--smoke`, a reader composed from the tiny components."""
    from ..evaluation.evaluator import load_llasm
    from ..modeling_llasm import set_inference_dtype

    if systems.llasm.config.adaptor_type == "whisper_reader":
        return systems.llasm, systems.llasm_processor, systems.description["llasm_model"]
    if settings.smoke:
        from ..modeling_llasm import LlasmForConditionalGeneration

        model, processor = LlasmForConditionalGeneration.from_pretrained_components(
            systems.description["whisper"], systems.description["llm"], adaptor_type="whisper_reader", stack_factor=4)
        description = "composed: tiny Whisper + whisper_reader + tiny LLM"
    else:
        from ..conversion.build_base import embedded_base

        base = embedded_base(log=settings.log)
        (model, processor), description = load_llasm(base), str(base)
    return set_inference_dtype(model.eval(), systems.description["dtype"]), processor, description


def stream_end_to_first_token(model, processor, clip: np.ndarray, chunk_seconds: float = STREAM_CHUNK_SECONDS,
                              max_new_tokens: int = 1) -> dict:  # fmt: skip
    """Feed `clip` in chunks to a `LlasmAudioStream` (working after each chunk, as fast as it can), then time from the
    last chunk's arrival (the end of speech) to the first answer token. Also: the mean work per chunk (to keep up with
    live speech it must stay below the chunk's duration) and the answer's token ids."""
    size = int(chunk_seconds * 16000)
    chunks = [clip[i : i + size] for i in range(0, len(clip), size)]
    stream = LlasmAudioStream(model, processor, update_seconds=0)
    work = []
    with torch.inference_mode():
        for chunk in chunks[:-1]:
            start = time.perf_counter()
            stream.append(chunk)
            work.append(time.perf_counter() - start)
        times = TokenTimes()
        end_of_speech = time.perf_counter()
        stream.append(chunks[-1], update=False)
        output = stream.generate(max_new_tokens=max_new_tokens, do_sample=False, streamer=times)
    return {
        "total": times.times[1] - end_of_speech,  # the streamer gets the prompt first, then each new token
        "work_per_chunk": statistics.mean(work) if work else 0.0,
        "prefilled_before_end": stream.cache.reused_tokens,
        "first_token_computed_ahead": stream.cache.computed_steps,  # 1: the end added no words (`LlasmComputedStep`)
        "prompt_tokens": len(stream.cache.keys) - max_new_tokens + 1,
        "answer": output[0, stream.prompt_length :].tolist(),
    }


def bench_streaming(systems: Systems, settings: BenchSettings) -> dict:
    model, processor, description = load_default_reader(settings, systems)
    seconds_list = STREAM_SECONDS[:2] if settings.smoke else STREAM_SECONDS
    silence = np.zeros(int(round(settings.stream_end_silence * 16000)), dtype=np.float32)
    clips = {s: np.concatenate([speech_clip(s, seed=20 + i), silence]) for i, s in enumerate(seconds_list)}
    head = LlasmConversationCache.for_prompt_head(model, processor)  # as the server and the pipeline keep it
    calls = {
        "base": lambda c: ttft_speech(model, processor, c),
        "base_head_cached": lambda c: ttft_speech(model, processor, c, conversation_cache=head.copy()),
        "streamed": lambda c: stream_end_to_first_token(model, processor, c),
        "original": lambda c: ttft_speech(systems.original, systems.original_processor, c),
        "cascade": lambda c: ttft_cascade(systems.transcriber, systems.llm, systems.llasm_processor, c),
    }
    runs: dict[str, dict[float, list[dict]]] = {m: {s: [] for s in clips} for m in calls}
    for repeat in range(settings.warmup + settings.repeats):
        for seconds, clip in clips.items():
            order = list(calls)[repeat % len(calls) :] + list(calls)[: repeat % len(calls)]
            for method in order:
                result = calls[method](clip)
                if repeat >= settings.warmup:
                    runs[method][seconds].append(result)
        settings.log(f"[bench] stream: repeat {repeat + 1}/{settings.warmup + settings.repeats} done")
    answers = {}
    for seconds, clip in clips.items():  # the streamed answer against the whole clip's, over more tokens
        inputs = processor.apply_chat_template([_audio_turn(clip)], add_generation_prompt=True)
        with torch.inference_mode():
            whole = model.generate(**inputs, max_new_tokens=ANSWER_TOKENS, do_sample=False)[0, inputs["input_ids"].shape[1] :].tolist()
        streamed = stream_end_to_first_token(model, processor, clip, max_new_tokens=ANSWER_TOKENS)["answer"]
        answers[str(seconds)] = {"identical": streamed == whole, "whole": processor.decode(whole, skip_special_tokens=True)}
    # the answers' token ids are compared below, not reported per run
    median = {m: {str(s): {k: v for k, v in _median_dict(r).items() if k != "answer"} for s, r in per.items()} for m, per in runs.items()}
    return {
        "model": description,
        "seconds": list(clips),
        "chunk_seconds": STREAM_CHUNK_SECONDS,
        "end_silence_seconds": settings.stream_end_silence,
        "median": median,
        "totals": {m: {str(s): [round(r["total"], 4) for r in per] for s, per in v.items()} for m, v in runs.items()},
        "answer_tokens": ANSWER_TOKENS,
        "answers": answers,
        "answers_identical": sum(a["identical"] for a in answers.values()),
    }

