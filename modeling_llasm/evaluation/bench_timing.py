"""The measurements of `llasm bench`: stage timers, time to first token, decode speed, batching, stage-1 training speed and memory."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .bench_systems import METHODS, BenchSettings, Systems, find_stage1_script
from .clips import SENTENCES

__all__ = [
    "StageTimer",
    "TokenTimes",
    "bare_llm_inputs",
    "bench_batch",
    "bench_decode",
    "bench_memory",
    "bench_stage1",
    "bench_stage1_trainer",
    "bench_ttft",
    "stage1_batch",
    "ttft_cascade",
    "ttft_speech",
]


# --------------------------------------------------------------------------------------------------- timing helpers


class StageTimer:
    """Forward hooks measuring the time spent in named sub-modules during one call."""

    def __init__(self, modules: dict[str, torch.nn.Module]):
        self.modules = modules
        self.totals: dict[str, float] = {}
        self._handles: list = []
        self._starts: dict[str, float] = {}

    def __enter__(self):
        for name, module in self.modules.items():
            self._handles.append(module.register_forward_pre_hook(self._pre(name)))
            self._handles.append(module.register_forward_hook(self._post(name)))
        return self

    def __exit__(self, *exc):
        for handle in self._handles:
            handle.remove()

    def _pre(self, name):
        def hook(module, args):
            self._starts[name] = time.perf_counter()

        return hook

    def _post(self, name):
        def hook(module, args, output):
            self.totals[name] = self.totals.get(name, 0.0) + time.perf_counter() - self._starts.pop(name)

        return hook


class TokenTimes:
    """A generation streamer recording when the prompt and each new token arrive."""

    def __init__(self):
        self.times: list[float] = []

    def put(self, value):
        self.times.append(time.perf_counter())

    def end(self):
        pass

    def decode_rate(self) -> float:
        """New tokens per second after the first one (excludes the prefill)."""
        if len(self.times) < 3:
            raise ValueError("decode rate needs at least 2 new tokens")
        return (len(self.times) - 2) / (self.times[-1] - self.times[1])


def _audio_turn(clip: np.ndarray, text: str | None = None) -> list[dict]:
    content = [{"type": "audio", "array": clip, "sampling_rate": 16000}]
    if text:
        content.append({"type": "text", "text": text})
    return [{"role": "user", "content": content}]


def _text_turn(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def ttft_speech(model, processor, clip: np.ndarray, **generate_kwargs) -> dict[str, float]:
    """Audio in -> first token of an LLaSM-style model; with a features/encoder/adaptor/prefill breakdown.
    `generate_kwargs` (e.g. a `conversation_cache`) go to `generate`."""
    start = time.perf_counter()
    inputs = processor.apply_chat_template([_audio_turn(clip)], add_generation_prompt=True)
    features = time.perf_counter() - start
    timer = StageTimer({"encoder": model.model.audio_tower, "adaptor": model.model.multi_modal_projector, "llm_prefill": model.model.language_model})
    with timer, torch.inference_mode():
        model.generate(**inputs, max_new_tokens=1, do_sample=False, **generate_kwargs)
    total = time.perf_counter() - start
    out = {"total": total, "features": features, **timer.totals}
    out["other"] = total - sum(v for k, v in out.items() if k != "total")
    out["prompt_tokens"] = int(inputs["input_ids"].shape[1])
    return out


def ttft_cascade(transcriber, llm, processor, clip: np.ndarray) -> dict[str, float]:
    """Audio in -> Whisper transcript -> first token of the LLM on the transcript prompt."""
    start = time.perf_counter()
    transcript = transcriber([clip])[0]
    asr = time.perf_counter() - start
    inputs = processor.apply_chat_template([_text_turn(transcript)], add_generation_prompt=True)
    timer = StageTimer({"llm_prefill": llm})
    with timer, torch.inference_mode():
        llm.generate(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], max_new_tokens=1, do_sample=False)
    total = time.perf_counter() - start
    out = {"total": total, "asr": asr, **timer.totals}
    out["other"] = total - asr - out.get("llm_prefill", 0.0)
    out["prompt_tokens"] = int(inputs["input_ids"].shape[1])
    out["transcript"] = transcript
    return out


def _median_dict(runs: list[dict]) -> dict:
    keys = [k for k, v in runs[0].items() if isinstance(v, (int, float))]
    out = {k: statistics.median(r[k] for r in runs) for k in keys}
    for k, v in runs[-1].items():
        if not isinstance(v, (int, float)):
            out[k] = v
    return out


def _top_ops(fn: Callable[[], Any], rows: int = 12) -> str:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=48)


# --------------------------------------------------------------------------------------------------- sections


def bench_ttft(systems: Systems, settings: BenchSettings, clips: dict[float, np.ndarray]) -> dict:
    runs: dict[str, dict[float, list[dict]]] = {m: {s: [] for s in clips} for m in METHODS}
    calls = {
        "llasm": lambda c: ttft_speech(systems.llasm, systems.llasm_processor, c),
        "original": lambda c: ttft_speech(systems.original, systems.original_processor, c),
        "cascade": lambda c: ttft_cascade(systems.transcriber, systems.llm, systems.llasm_processor, c),
    }
    for repeat in range(settings.warmup + settings.repeats):
        for seconds, clip in clips.items():
            order = METHODS[repeat % 3 :] + METHODS[: repeat % 3]  # rotate to spread drift over the methods
            for method in order:
                result = calls[method](clip)
                if repeat >= settings.warmup:
                    runs[method][seconds].append(result)
        settings.log(f"[bench] ttft: repeat {repeat + 1}/{settings.warmup + settings.repeats} done")
    medians = {m: {str(s): _median_dict(r) for s, r in per.items()} for m, per in runs.items()}
    raw = {m: {str(s): [round(r["total"], 4) for r in per] for s, per in v.items()} for m, v in runs.items()}
    return {"seconds": list(clips), "median": medians, "totals": raw}


def _filler_ids(tokenizer, length: int) -> torch.Tensor:
    ids = tokenizer(" ".join(SENTENCES), add_special_tokens=False)["input_ids"]
    reps = -(-length // len(ids))
    return torch.tensor((ids * reps)[:length])


def bare_llm_inputs(processor, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The bare LLM's baseline prompt for a spoken question's `inputs`: the same chat prompt, with text of the same
    length in place of the audio placeholders (decode speed depends on the prompt length, not its content)."""
    prompt = inputs["input_ids"].clone()
    audio = prompt == processor.audio_token_id
    prompt[audio] = _filler_ids(processor.tokenizer, int(audio.sum()))
    return {"input_ids": prompt, "attention_mask": torch.ones_like(prompt)}


def bench_decode(systems: Systems, settings: BenchSettings, clip: np.ndarray) -> dict:
    model, processor, llm = systems.llasm, systems.llasm_processor, systems.llm
    n = settings.decode_tokens
    inputs = processor.apply_chat_template([_audio_turn(clip)], add_generation_prompt=True)
    text_inputs = bare_llm_inputs(processor, inputs)
    prompt = text_inputs["input_ids"]
    gen = dict(max_new_tokens=n, min_new_tokens=n, do_sample=False)
    rates: dict[str, list[float]] = {"llasm": [], "bare_llm": []}
    for repeat in range(settings.warmup + settings.repeats):
        for name in (("llasm", "bare_llm") if repeat % 2 == 0 else ("bare_llm", "llasm")):
            times = TokenTimes()
            with torch.inference_mode():
                if name == "llasm":
                    model.generate(**inputs, streamer=times, **gen)
                else:
                    llm.generate(**text_inputs, streamer=times, **gen)
            if repeat >= settings.warmup:
                rates[name].append(times.decode_rate())
    median = {k: statistics.median(v) for k, v in rates.items()}
    return {
        "prompt_tokens": int(prompt.shape[1]),
        "new_tokens": n,
        "tokens_per_second": median,
        "ms_per_token": {k: 1000 / v for k, v in median.items()},
        "runs": {k: [round(x, 2) for x in v] for k, v in rates.items()},
        "ratio": median["llasm"] / median["bare_llm"],
        "_inputs": (inputs, text_inputs),
    }


def bench_batch(systems: Systems, settings: BenchSettings, clips: list[np.ndarray]) -> dict:
    model, processor = systems.llasm, systems.llasm_processor
    m = settings.batch_new_tokens
    gen = dict(max_new_tokens=m, min_new_tokens=m, do_sample=False)

    def one_by_one():
        outs = []
        for clip in clips:
            inputs = processor.apply_chat_template([_audio_turn(clip)], add_generation_prompt=True)
            with torch.inference_mode():
                outs.append(model.generate(**inputs, **gen)[0, inputs["input_ids"].shape[1] :].tolist())
        return outs

    def batched():
        inputs = processor.apply_chat_template([_audio_turn(c) for c in clips], add_generation_prompt=True, padding_side="left")
        with torch.inference_mode():
            out = model.generate(**inputs, **gen)
        return [row.tolist() for row in out[:, inputs["input_ids"].shape[1] :]]

    times: dict[str, list[float]] = {"one_by_one": [], "batch": []}
    outputs = {}
    for repeat in range(settings.warmup + settings.repeats):
        for name, fn in ((("batch", batched), ("one_by_one", one_by_one)) if repeat % 2 else (("one_by_one", one_by_one), ("batch", batched))):
            start = time.perf_counter()
            outputs[name] = fn()
            if repeat >= settings.warmup:
                times[name].append(time.perf_counter() - start)
        settings.log(f"[bench] batch: repeat {repeat + 1}/{settings.warmup + settings.repeats} done")
    median = {k: statistics.median(v) for k, v in times.items()}
    equal = [a == b for a, b in zip(outputs["one_by_one"], outputs["batch"])]
    first_diff = []
    for a, b in zip(outputs["one_by_one"], outputs["batch"]):
        first_diff.append(next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None))
    return {
        "clip_seconds": [round(len(c) / 16000, 2) for c in clips],
        "new_tokens_per_clip": m,
        "seconds": median,
        "clips_per_second": {k: len(clips) / v for k, v in median.items()},
        "tokens_per_second": {k: len(clips) * m / v for k, v in median.items()},
        "speedup": median["one_by_one"] / median["batch"],
        "outputs_equal": sum(equal),
        "outputs_total": len(equal),
        "first_differing_token": first_diff,
        "runs": {k: [round(x, 3) for x in v] for k, v in times.items()},
    }


def stage1_batch(processor, clips: list[np.ndarray]) -> dict:
    """ASR training samples (instruction + clip -> transcript), right-padded, labels on the transcript only."""
    conversations, prompts = [], []
    for i, clip in enumerate(clips):
        user = _audio_turn(clip, "Transcribe the speech.")
        conversations.append([*user, {"role": "assistant", "content": SENTENCES[i % len(SENTENCES)]}])
        prompts.append(user)
    inputs = dict(processor.apply_chat_template(conversations, add_generation_prompt=False, padding_side="right"))
    labels = inputs["input_ids"].clone()
    labels[inputs["attention_mask"] == 0] = -100
    for row, prompt in enumerate(prompts):
        labels[row, : int(processor.apply_chat_template([prompt], add_generation_prompt=True)["attention_mask"].sum())] = -100
    inputs["labels"] = labels
    return inputs


def bench_stage1(systems: Systems, settings: BenchSettings, clips: list[np.ndarray], with_ctc: bool = True) -> dict:
    """Adaptor-only training step (encoder and LLM frozen), running the encoder vs reading cached encoder outputs.

    Uncached step: log-mel features (what a collator computes per step) + frozen encoder forward + adaptor and LLM
    forward/backward + AdamW step. Cached step: the same without features and encoder (the encoder outputs were
    computed once, kept in memory; a disk cache adds its read time)."""
    model, processor = systems.llasm, systems.llasm_processor
    saved_state = {k: v.clone() for k, v in model.model.multi_modal_projector.state_dict().items()}
    for p in model.parameters():
        p.requires_grad_(False)
    trainable = list(model.model.multi_modal_projector.parameters())
    for p in trainable:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(trainable, lr=1e-5)
    model.train()
    batch = stage1_batch(processor, clips)
    with torch.no_grad():
        cached = model.model.audio_tower(batch["input_features"], attention_mask=batch["input_features_mask"]).last_hidden_state
    text_only = {k: v for k, v in batch.items() if k not in ("input_features",)}

    def step(use_cache: bool) -> dict[str, float]:
        start = time.perf_counter()
        if use_cache:
            inputs = dict(text_only, audio_encoder_hidden_states=cached)
            features = encoder = 0.0
        else:
            inputs = stage1_batch(processor, clips)
            features = time.perf_counter() - start
            t = time.perf_counter()
            with torch.no_grad():  # frozen encoder, as a trainer runs it
                states = model.model.audio_tower(inputs.pop("input_features"), attention_mask=inputs["input_features_mask"]).last_hidden_state
            encoder = time.perf_counter() - t
            inputs["audio_encoder_hidden_states"] = states
        t = time.perf_counter()
        loss = model(**inputs).loss
        forward = time.perf_counter() - t
        t = time.perf_counter()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        backward = time.perf_counter() - t
        return {"total": time.perf_counter() - start, "features": features, "encoder": encoder, "forward": forward, "backward_and_step": backward}

    runs: dict[str, list[dict]] = {"uncached": [], "cached": []}
    ctc = None
    try:
        for repeat in range(settings.warmup + settings.stage1_steps):
            for name in (("uncached", "cached") if repeat % 2 == 0 else ("cached", "uncached")):
                result = step(name == "cached")
                if repeat >= settings.warmup:
                    runs[name].append(result)
        try:
            ctc = _stage1_ctc(model, processor, clips, cached, settings) if with_ctc else None
        except Exception as error:  # an optional extra: never lose the main measurement to it
            ctc = {"error": f"{type(error).__name__}: {error}"}
    finally:
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        model.model.multi_modal_projector.load_state_dict(saved_state)
    median = {k: _median_dict(v) for k, v in runs.items()}
    per_second = {k: len(clips) / v["total"] for k, v in median.items()}
    uncached = median["uncached"]
    encoder_share = (uncached["features"] + uncached["encoder"]) / uncached["total"]
    return {
        "encoder_share_of_uncached_step": encoder_share,
        "cache_speedup_upper_bound": 1 / max(1 - encoder_share, 1e-9),
        "ctc_pre_alignment": ctc,
        "batch_size": len(clips),
        "clip_seconds": [round(len(c) / 16000, 2) for c in clips],
        "step_breakdown_seconds": median,
        "samples_per_second": per_second,
        "speedup": per_second["cached"] / per_second["uncached"],
        "measured_by": "modeling_llasm.evaluation.bench.bench_stage1 (in-process, frozen encoder and LLM, adaptor trained, fp32, full logits)",
    }


def _stage1_ctc(model, processor, clips: list[np.ndarray], cached: torch.Tensor, settings: BenchSettings) -> dict | None:
    """The same comparison for the CTC pre-alignment step of `modeling_llasm.training.losses.LlasmCtcAligner`
    (encoder + adaptor + CTC against the LLM embeddings; no LLM pass), when the training code provides it."""
    try:
        from ..training.losses import LlasmCtcAligner
    except Exception:  # the training code is optional here
        return None
    aligner = LlasmCtcAligner(model)
    batch = stage1_batch(processor, clips)
    mask = batch["input_features_mask"]
    per_window = [model.config.num_audio_tokens(int(n)) for n in mask.sum(-1).tolist()]
    window = processor.feature_extractor.n_samples
    windows_per_clip = [-(-len(clip) // window) for clip in clips]
    bounds = np.cumsum([0, *windows_per_clip])
    counts = torch.tensor([sum(per_window[a:b]) for a, b in zip(bounds[:-1], bounds[1:])])
    labels = [processor.tokenizer(SENTENCES[i % len(SENTENCES)], add_special_tokens=False)["input_ids"] for i in range(len(clips))]
    ctc_labels = torch.full((len(labels), max(map(len, labels))), -100, dtype=torch.long)
    for row, ids in enumerate(labels):
        ctc_labels[row, : len(ids)] = torch.tensor(ids)
    trainable = [p for p in aligner.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-5)

    def step(use_cache: bool) -> float:
        start = time.perf_counter()
        if use_cache:
            inputs = {"input_features_mask": mask, "audio_encoder_hidden_states": cached}
        else:
            fresh = stage1_batch(processor, clips)
            inputs = {"input_features": fresh["input_features"], "input_features_mask": fresh["input_features_mask"]}
        loss = aligner(**inputs, audio_token_counts=counts, ctc_labels=ctc_labels)["loss"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    times: dict[str, list[float]] = {"uncached": [], "cached": []}
    for repeat in range(settings.warmup + settings.stage1_steps):
        for name in ("uncached", "cached"):
            value = step(name == "cached")
            if repeat >= settings.warmup:
                times[name].append(value)
    per_second = {k: len(clips) / statistics.median(v) for k, v in times.items()}
    return {"samples_per_second": per_second, "speedup": per_second["cached"] / per_second["uncached"]}


def bench_stage1_trainer(settings: BenchSettings, model_dir: Path, work_dir: Path) -> dict | None:
    """Run `benchmarks/stage1_speed.py` (the real collator, disk encoder cache, label-position logits, bf16) on our
    model in a subprocess; the cache speedup is `lm bf16 cached` / `lm bf16`."""
    script = find_stage1_script() if settings.trainer_benchmark else None
    if script is None:
        return None
    out_json = work_dir / "stage1_speed.json"
    command = [sys.executable, str(script), "--base-dir", str(model_dir), "--json", str(out_json), "--steps", str(settings.stage1_steps)]
    if settings.threads:
        command += ["--threads", str(settings.threads)]
    if settings.smoke:
        command += ["--batch-size", "2"]
    settings.log(f"[bench] stage 1: {script.name} on the same model ...")
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=3600)
    except subprocess.TimeoutExpired:
        return {"script": str(script), "error": "timed out after 3600 s"}
    if proc.returncode != 0 or not out_json.is_file():
        tail = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
        return {"script": str(script), "error": tail}
    data = json.loads(out_json.read_text())
    by_name = {r["name"]: r["samples_per_second"] for r in data.get("results", [])}
    out = {"script": str(script), "command": " ".join(command[1:]), **data}
    if by_name.get("lm bf16") and by_name.get("lm bf16 cached"):
        out["cached_speedup"] = by_name["lm bf16 cached"] / by_name["lm bf16"]
    if by_name.get("ctc bf16") and by_name.get("ctc bf16 cached"):
        out["ctc_cached_speedup"] = by_name["ctc bf16 cached"] / by_name["ctc bf16"]
    return out


def bench_memory(settings: BenchSettings, model_dir: Path) -> dict:
    out = {}
    for mode in ("qlora", "lora-bf16"):
        command = [sys.executable, "-m", "modeling_llasm.evaluation.memory_probe", str(model_dir), "--mode", mode]
        if settings.threads:
            command += ["--threads", str(settings.threads)]
        settings.log(f"[bench] memory: {mode} in a fresh process ...")
        proc = subprocess.run(command, capture_output=True, text=True)
        if proc.returncode != 0:
            out[mode] = {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
            continue
        out[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
    if all("peak_rss_mib" in v for v in out.values()):
        out["qlora_over_bf16_peak"] = out["qlora"]["peak_rss_mib"] / out["lora-bf16"]["peak_rss_mib"]
        out["qlora_over_bf16_peak_minus_baseline"] = out["qlora"]["peak_minus_baseline_mib"] / out["lora-bf16"]["peak_minus_baseline_mib"]
    return out
