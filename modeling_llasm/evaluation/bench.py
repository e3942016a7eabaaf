"""`llasm bench`: LLaSM speed and memory next to its baselines, on the same clips and the same LLM, in one run.

Sections (each reports medians over `repeats` after one warm-up):

- ``ttft``: time to first token for 2 / 5 / 20 s clips (audio in -> first answer token; feature extraction
  included) for our default adaptor (stack_mlp on unpadded windows), the original LLaSM method (30 s padded window,
  Whisper decoder resampler with 64 queries, linear) and the cascade (Whisper generates the transcript, then the LLM
  prefills the transcript prompt), with a time breakdown (features / encoder / adaptor / LLM prefill).
- ``decode``: decode tokens/s after a 5 s clip vs the bare LLM decoding from a text prompt of the same length.
- ``batch``: 8 mixed-length clips in one batch vs one by one (throughput, and whether the outputs are equal).
- ``stage1``: adaptor-only (stage-1) training samples/s with cached encoder outputs vs running the encoder.
- ``memory``: peak RSS of one 4-bit QLoRA vs one bf16 LoRA training step (fresh process each).

Goals (ratios) are checked and printed; for a missed goal a profile (torch.profiler top ops and the breakdown)
is added to the report.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .clips import SENTENCES, speech_clip, speech_source
from .sysinfo import load_average, machine_info, thread_contention_check

SECTIONS = ("ttft", "decode", "batch", "stage1", "memory")
TTFT_SECONDS = (2.0, 5.0, 20.0)
BATCH_SECONDS = (1.5, 2.0, 3.0, 4.0, 5.0, 7.0, 9.0, 12.0)
METHODS = ("llasm", "original", "cascade")
METHOD_LABELS = {
    "llasm": "LLaSM (stack_mlp, unpadded)",
    "original": "original LLaSM (30 s pad + Whisper-decoder resampler, 64 q)",
    "cascade": "cascade (Whisper generate -> LLM prefill)",
}
GOALS = {
    "ttft_vs_original": ("TTFT 5 s: LLaSM / original method", "<=", 0.25),
    "ttft_vs_cascade": ("TTFT 5 s: LLaSM / cascade", "<=", 0.5),
    "decode_vs_bare": ("decode tok/s: LLaSM / bare LLM", ">=", 0.97),
    "batch_speedup": ("batch-8 throughput / one-by-one", ">=", 2.5),
    "stage1_cache_speedup": ("stage-1 samples/s: cached / uncached", ">=", 2.0),
}


@dataclass
class BenchSettings:
    output_dir: Path
    smoke: bool = False
    repeats: int = 5
    warmup: int = 1
    threads: int | None = None
    sections: tuple[str, ...] = SECTIONS
    whisper_dir: str | None = None
    llm_dir: str | None = None
    model_dir: str | None = None
    decode_tokens: int = 64
    batch_new_tokens: int = 32
    stage1_batch: int = 4
    stage1_steps: int = 3
    profile: bool = True
    trainer_benchmark: bool = True  # also run benchmarks/stage1_speed.py when present
    work_dir: str | None = None
    log: Callable[[str], None] = field(default=lambda line: print(line, file=sys.stderr, flush=True))


# --------------------------------------------------------------------------------------------------- models


@dataclass
class Systems:
    llasm: Any
    llasm_processor: Any
    original: Any
    original_processor: Any
    transcriber: Any
    llm: Any  # the shared language model (bare)
    description: dict


def compose_original(llasm, processor, whisper_dir: str | os.PathLike, num_queries: int = 64):
    """The original LLaSM method around *the same LLM object*: Whisper encoder + Whisper decoder queried by
    `num_queries` start tokens + a linear projection; the processor pads every window to 30 s."""
    from transformers import WhisperFeatureExtractor, WhisperModel

    from ..configuration_llasm import LlasmConfig
    from ..modeling_llasm import LLASM_ADAPTORS, LlasmAudioEncoder, LlasmForConditionalGeneration
    from ..processing_llasm import LlasmProcessor

    whisper = WhisperModel.from_pretrained(whisper_dir, dtype=torch.float32)
    config = LlasmConfig(
        audio_config=whisper.config, text_config=llasm.config.text_config, adaptor_type="whisper_resampler",
        num_queries=num_queries, audio_token=llasm.config.audio_token, audio_token_id=llasm.config.audio_token_id,
    )  # fmt: skip
    with torch.device("meta"):
        model = LlasmForConditionalGeneration(config)
    model.audio_tower = LlasmAudioEncoder(whisper.config)
    model.audio_tower.load_state_dict(whisper.encoder.state_dict())
    adaptor = LLASM_ADAPTORS["whisper_resampler"](config)
    adaptor.decoder.load_state_dict(whisper.decoder.state_dict())  # the original used the pretrained decoder
    torch.nn.init.normal_(adaptor.linear.weight, std=0.02)
    torch.nn.init.zeros_(adaptor.linear.bias)
    model.multi_modal_projector = adaptor
    model.language_model = llasm.language_model
    model.generation_config = copy.deepcopy(llasm.generation_config)
    model.config._attn_implementation = llasm.config._attn_implementation
    original_processor = LlasmProcessor(
        feature_extractor=WhisperFeatureExtractor.from_pretrained(whisper_dir), tokenizer=processor.tokenizer,
        chat_template=processor.chat_template, audio_token=processor.audio_token, adaptor_type="whisper_resampler",
        num_queries=num_queries, pad_to_window=True,
    )  # fmt: skip
    return model.eval(), original_processor


def build_systems(settings: BenchSettings, work_dir: Path) -> tuple[Systems, Path]:
    """Load / compose the three systems; return them and a saved copy of our model (for the memory probe)."""
    from ..modeling_llasm import LlasmForConditionalGeneration
    from .cascade import WhisperTranscriber
    from .evaluator import load_llasm

    if settings.smoke:
        from .tiny import build_tiny_components

        whisper_dir, llm_dir = build_tiny_components(work_dir / "components")
    else:
        whisper_dir = settings.whisper_dir
        llm_dir = settings.llm_dir
        if whisper_dir is None:
            from .cascade import whisper_dir_for

            whisper_dir = whisper_dir_for(settings.model_dir)
        if llm_dir is None and settings.model_dir is None:
            from ..conversion.gguf_llm import default_llm_dir

            llm_dir = default_llm_dir()
    torch.manual_seed(0)
    if settings.model_dir is not None:
        llasm, processor = load_llasm(settings.model_dir)
        saved = Path(settings.model_dir)
    else:
        llasm, processor = LlasmForConditionalGeneration.from_pretrained_components(whisper_dir, llm_dir, adaptor_type="stack_mlp", stack_factor=8)
        saved = work_dir / "llasm"
        if "memory" in settings.sections or ("stage1" in settings.sections and settings.trainer_benchmark and find_stage1_script() is not None):
            llasm.save_pretrained(saved)
            processor.save_pretrained(saved)
    original, original_processor = compose_original(llasm, processor, whisper_dir)
    if settings.smoke:
        from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration

        transcriber = WhisperTranscriber(
            WhisperForConditionalGeneration.from_pretrained(whisper_dir, dtype=torch.float32),
            WhisperFeatureExtractor.from_pretrained(whisper_dir), processor.tokenizer, max_new_tokens=8,
        )  # fmt: skip
    else:
        transcriber = WhisperTranscriber.from_pretrained(whisper_dir)
    description = {
        "whisper": str(whisper_dir),
        "llm": str(llm_dir) if llm_dir else f"language model of {settings.model_dir}",
        "llasm_model": str(settings.model_dir) if settings.model_dir else "composed: Whisper encoder + fresh stack_mlp adaptor (x8) + LLM",
        "original_model": "composed: Whisper encoder + pretrained Whisper decoder (64 start-token queries) + fresh linear + the same LLM",
        "llm_parameters_m": round(sum(p.numel() for p in llasm.language_model.parameters()) / 1e6, 1),
        "whisper_encoder_parameters_m": round(sum(p.numel() for p in llasm.audio_tower.parameters()) / 1e6, 1),
        "attn_implementation": llasm.config._attn_implementation,
    }
    return Systems(llasm, processor, original, original_processor, transcriber, llasm.language_model, description), saved


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


def ttft_speech(model, processor, clip: np.ndarray) -> dict[str, float]:
    """Audio in -> first token of an LLaSM-style model; with a features/encoder/adaptor/prefill breakdown."""
    start = time.perf_counter()
    inputs = processor.apply_chat_template([_audio_turn(clip)], add_generation_prompt=True)
    features = time.perf_counter() - start
    timer = StageTimer({"encoder": model.audio_tower, "adaptor": model.multi_modal_projector, "llm_prefill": model.language_model})
    with timer, torch.inference_mode():
        model.generate(**inputs, max_new_tokens=1, do_sample=False)
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


def bench_decode(systems: Systems, settings: BenchSettings, clip: np.ndarray) -> dict:
    model, processor, llm = systems.llasm, systems.llasm_processor, systems.llm
    n = settings.decode_tokens
    inputs = processor.apply_chat_template([_audio_turn(clip)], add_generation_prompt=True)
    prompt = inputs["input_ids"].clone()
    audio = prompt == model.config.audio_token_id
    prompt[audio] = _filler_ids(processor.tokenizer, int(audio.sum()))  # same length, text instead of audio
    text_inputs = {"input_ids": prompt, "attention_mask": torch.ones_like(prompt)}
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
    saved_state = {k: v.clone() for k, v in model.multi_modal_projector.state_dict().items()}
    for p in model.parameters():
        p.requires_grad_(False)
    trainable = list(model.multi_modal_projector.parameters())
    for p in trainable:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(trainable, lr=1e-5)
    model.train()
    batch = stage1_batch(processor, clips)
    with torch.no_grad():
        cached = model.audio_tower(batch["input_features"], attention_mask=batch["input_features_mask"]).last_hidden_state
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
                states = model.audio_tower(inputs.pop("input_features"), attention_mask=inputs["input_features_mask"]).last_hidden_state
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
        model.multi_modal_projector.load_state_dict(saved_state)
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


def find_stage1_script() -> Path | None:
    """The training engineer's `benchmarks/stage1_speed.py` (source checkout or current directory), if present."""
    for root in (Path(__file__).resolve().parents[2], Path.cwd()):
        script = root / "benchmarks" / "stage1_speed.py"
        if script.is_file():
            return script
    return None


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


# --------------------------------------------------------------------------------------------------- goals + profiles


def check_goals(results: dict) -> list[dict]:
    values = {}
    if "ttft" in results:
        med = results["ttft"]["median"]
        key = "5.0" if "5.0" in med["llasm"] else sorted(med["llasm"], key=float)[len(med["llasm"]) // 2]
        values["ttft_vs_original"] = med["llasm"][key]["total"] / med["original"][key]["total"]
        values["ttft_vs_cascade"] = med["llasm"][key]["total"] / med["cascade"][key]["total"]
    if "decode" in results:
        values["decode_vs_bare"] = results["decode"]["ratio"]
    if "batch" in results:
        values["batch_speedup"] = results["batch"]["speedup"]
    if "stage1" in results:
        trainer = results["stage1"].get("trainer_benchmark") or {}
        values["stage1_cache_speedup"] = trainer.get("cached_speedup", results["stage1"]["speedup"])
    goals = []
    for key, value in values.items():
        name, op, target = GOALS[key]
        met = value <= target if op == "<=" else value >= target
        # margin: how far inside (+) or outside (-) the target, relative to the target
        margin = (target - value) / target if op == "<=" else (value - target) / target
        goals.append({"key": key, "goal": name, "target": f"{op} {target}", "value": value, "met": met, "margin": margin})
    return goals


def goal_line(goal: dict) -> str:
    status = "MET" if goal["met"] else "MISSED"
    how = "inside" if goal["met"] else "outside"
    return f"{status:6s} {goal['goal']}: {goal['value']:.3f} (target {goal['target']}; {abs(goal['margin']) * 100:.0f} % {how} the target)"


def explain_missed(goals: list[dict], results: dict) -> dict[str, str]:
    """A one-paragraph reason per missed goal, from the time breakdowns."""
    out = {}
    missed = {g["key"] for g in goals if not g["met"]}
    pct = lambda part, whole: f"{100 * part / whole:.0f} %" if whole else "n/a"  # noqa: E731
    if missed & {"ttft_vs_original", "ttft_vs_cascade"}:
        med = results["ttft"]["median"]
        key = "5.0" if "5.0" in med["llasm"] else next(iter(med["llasm"]))
        ours = med["llasm"][key]
        share = f"LLaSM's TTFT ({ours['total']:.3f} s) is {pct(ours.get('llm_prefill', 0), ours['total'])} LLM prefill of {ours['prompt_tokens']} tokens, {pct(ours.get('encoder', 0), ours['total'])} encoder, {pct(ours.get('features', 0), ours['total'])} features."
        if "ttft_vs_original" in missed:
            orig = med["original"][key]
            bound = ours.get("llm_prefill", 0) / orig["total"]
            out["ttft_vs_original"] = (
                f"{share} The original method ({orig['total']:.3f} s): encoder {pct(orig.get('encoder', 0), orig['total'])}, "
                f"Whisper-decoder resampler {pct(orig.get('adaptor', 0), orig['total'])}, LLM prefill of {orig['prompt_tokens']} tokens "
                f"{pct(orig.get('llm_prefill', 0), orig['total'])}. Even with free audio encoding, LLaSM's prefill alone gives a ratio of {bound:.3f}."
            )
        if "ttft_vs_cascade" in missed:
            cas = med["cascade"][key]
            out["ttft_vs_cascade"] = f"{share} The cascade ({cas['total']:.3f} s): Whisper generate {pct(cas.get('asr', 0), cas['total'])}, LLM prefill of {cas['prompt_tokens']} tokens {pct(cas.get('llm_prefill', 0), cas['total'])}."
    if "decode_vs_bare" in missed:
        d = results["decode"]
        out["decode_vs_bare"] = (
            f"LLaSM {d['ms_per_token']['llasm']:.1f} ms/token vs bare LLM {d['ms_per_token']['bare_llm']:.1f} ms/token "
            f"({d['ms_per_token']['llasm'] - d['ms_per_token']['bare_llm']:+.1f} ms per step); the per-step difference is the wrapper's "
            "forward (embedding lookup + placeholder check + LLM call) and generation bookkeeping: compare the two profiles below."
        )
    if "batch_speedup" in missed:
        b = results["batch"]
        out["batch_speedup"] = (
            f"One by one {b['seconds']['one_by_one']:.2f} s vs batch {b['seconds']['batch']:.2f} s for {b['outputs_total']} clips x "
            f"{b['new_tokens_per_clip']} tokens. Batching amortizes the per-step weight reads of decoding; the encoder and the prefill "
            "are compute-bound and gain little, and left padding to the longest clip adds work, so short generations gain less."
        )
    if "stage1_cache_speedup" in missed:
        st = results["stage1"]
        r = st["step_breakdown_seconds"]["uncached"]
        out["stage1_cache_speedup"] = (
            f"The cache removes features + encoder = {100 * st['encoder_share_of_uncached_step']:.0f} % of an uncached step "
            f"({r['features'] + r['encoder']:.3f} of {r['total']:.3f} s); the frozen LLM's forward ({r['forward']:.3f} s) and backward "
            f"({r['backward_and_step']:.3f} s), which the adaptor's gradient must pass through, remain. Upper bound of the cache speedup: "
            f"{st['cache_speedup_upper_bound']:.2f}x."
            + (f" The training pipeline's benchmark measured {st['trainer_benchmark']['cached_speedup']:.2f}x." if "cached_speedup" in (st.get("trainer_benchmark") or {}) else "")
            + (f" Without the LLM in the step (CTC pre-alignment), caching gives {st['ctc_pre_alignment']['speedup']:.2f}x." if st.get("ctc_pre_alignment") and "speedup" in st["ctc_pre_alignment"] else "")
        )
    return out


def profiles_for_missed(goals: list[dict], systems: Systems, settings: BenchSettings, clips: dict, results: dict) -> dict[str, str]:
    """torch.profiler top ops (by self CPU time) of the runs behind each missed goal."""
    out: dict[str, str] = {}
    missed = {g["key"] for g in goals if not g["met"]}
    five = clips.get(5.0, next(iter(clips.values()))) if clips else None
    if missed & {"ttft_vs_original", "ttft_vs_cascade"} and five is not None:
        out["ttft: LLaSM, 5 s clip"] = _top_ops(lambda: ttft_speech(systems.llasm, systems.llasm_processor, five))
        if "ttft_vs_original" in missed:
            out["ttft: original method, 5 s clip"] = _top_ops(lambda: ttft_speech(systems.original, systems.original_processor, five))
        if "ttft_vs_cascade" in missed:
            out["ttft: cascade, 5 s clip"] = _top_ops(lambda: ttft_cascade(systems.transcriber, systems.llm, systems.llasm_processor, five))
    if "decode_vs_bare" in missed and "_inputs" in results.get("decode", {}):
        inputs, text_inputs = results["decode"]["_inputs"]
        gen = dict(max_new_tokens=16, min_new_tokens=16, do_sample=False)
        out["decode: LLaSM, 16 tokens"] = _top_ops(lambda: systems.llasm.generate(**inputs, **gen))
        out["decode: bare LLM, 16 tokens"] = _top_ops(lambda: systems.llm.generate(**text_inputs, **gen))
    if "stage1_cache_speedup" in missed:
        out["stage1: uncached step (1 step, breakdown by operator)"] = _top_ops(
            lambda: bench_stage1(
                systems, BenchSettings(output_dir=settings.output_dir, warmup=0, stage1_steps=1, log=settings.log),
                [speech_clip(s, seed=i) for i, s in enumerate((3.0, 4.0))], with_ctc=False,
            )
        )
    if "batch_speedup" in missed:
        batch_clips = [speech_clip(s, seed=i) for i, s in enumerate(BATCH_SECONDS)]
        gen = dict(max_new_tokens=8, min_new_tokens=8, do_sample=False)
        inputs = systems.llasm_processor.apply_chat_template([_audio_turn(c) for c in batch_clips], add_generation_prompt=True, padding_side="left")
        out["batch: batch of 8, 8 tokens"] = _top_ops(lambda: systems.llasm.generate(**inputs, **gen))
    return out


# --------------------------------------------------------------------------------------------------- report


def _fmt_s(x: float) -> str:
    return f"{x * 1000:.0f} ms" if x < 1 else f"{x:.2f} s"


def markdown_report(results: dict) -> str:
    info, lines = results["machine"], []
    kind = "SMOKE RUN (tiny random models; numbers are meaningless)" if results["settings"]["smoke"] else ""
    lines += ["# LLaSM benchmarks", ""]
    if kind:
        lines += [f"**{kind}**", ""]
    if results.get("note"):
        lines += [f"**{results['note']}**", ""]
    lines += [
        f"- Machine: {info['cpu_model']}, {info['usable_cpus']} usable CPUs, {info['memory_gib']} GiB; {info['platform']}",
        f"- Software: python {info['python']}, torch {info['torch']} ({info['torch_threads']} threads), transformers {info['transformers']}, peft {info['peft']}, bitsandbytes {info['bitsandbytes']}",
        f"- Load average (1/5/15 min) before / after: {results['load_average_before']} / {results['load_average_after']}",
        f"- Models: LLM `{results['systems']['llm']}` ({results['systems']['llm_parameters_m']} M params), Whisper `{results['systems']['whisper']}`",
        f"- Clips: {results['clip_source']}; medians over {results['settings']['repeats']} repeats after {results['settings']['warmup']} warm-up; greedy decoding, fp32",
        f"- Command: `{results['command']}`; wall time {results['wall_seconds']:.0f} s",
        "",
    ]
    if results.get("goals"):
        lines += ["## Goals", "", "| goal | target | value | status |", "|---|---|---|---|"]
        for g in results["goals"]:
            status = ("met" if g["met"] else "**missed**") + f" ({abs(g['margin']) * 100:.0f} % {'inside' if g['met'] else 'outside'})"
            lines.append(f"| {g['goal']} | {g['target']} | {g['value']:.3f} | {status} |")
        lines.append("")
    if "ttft" in results:
        med = results["ttft"]["median"]
        keys = sorted(med["llasm"], key=float)
        lines += ["## Time to first token", "", "| method | " + " | ".join(f"{float(k):g} s clip" for k in keys) + " |", "|---" * (len(keys) + 1) + "|"]
        for m in METHODS:
            lines.append(f"| {METHOD_LABELS[m]} | " + " | ".join(_fmt_s(med[m][k]["total"]) for k in keys) + " |")
        lines += ["", "Breakdown (median, seconds) and prompt length (tokens):", "", "| method | clip | features / ASR | encoder | adaptor | LLM prefill | other | prompt tokens |", "|---|---|---|---|---|---|---|---|"]
        for m in METHODS:
            for k in keys:
                r = med[m][k]
                first = r.get("features", r.get("asr", 0.0))
                lines.append(
                    f"| {m} | {float(k):g} s | {first:.3f} | {r.get('encoder', 0):.3f} | {r.get('adaptor', 0):.3f} | {r.get('llm_prefill', 0):.3f} | {r.get('other', 0):.3f} | {r.get('prompt_tokens', '')} |"
                )
        lines.append("")
    if "decode" in results:
        d = results["decode"]
        lines += ["## Decode speed", "", f"Prompt of {d['prompt_tokens']} tokens, {d['new_tokens']} new tokens (EOS suppressed); rate over tokens 2..N.", "",
                  "| system | tokens/s | ms/token |", "|---|---|---|"]  # fmt: skip
        for k, label in (("llasm", "LLaSM after a 5 s clip"), ("bare_llm", "bare LLM, text prompt of the same length")):
            lines.append(f"| {label} | {d['tokens_per_second'][k]:.2f} | {d['ms_per_token'][k]:.1f} |")
        lines += [f"| ratio | {d['ratio']:.3f} | |", ""]
    if "batch" in results:
        b = results["batch"]
        lines += ["## Batch of 8 vs one by one", "", f"Clips of {', '.join(f'{s:g}' for s in b['clip_seconds'])} s; {b['new_tokens_per_clip']} new tokens each (EOS suppressed).", "",
                  "| mode | seconds | clips/s | tokens/s |", "|---|---|---|---|"]  # fmt: skip
        for k in ("one_by_one", "batch"):
            lines.append(f"| {k.replace('_', ' ')} | {b['seconds'][k]:.2f} | {b['clips_per_second'][k]:.2f} | {b['tokens_per_second'][k]:.1f} |")
        lines += ["", f"Speedup {b['speedup']:.2f}x; identical outputs: {b['outputs_equal']}/{b['outputs_total']} (first differing token per clip: {b['first_differing_token']}).", ""]
    if "stage1" in results:
        s = results["stage1"]
        lines += ["## Stage-1 training (adaptor only)", "", f"Batch of {s['batch_size']} ASR samples ({', '.join(f'{x:g}' for x in s['clip_seconds'])} s clips).", "",
                  "| mode | samples/s | features | encoder | forward | backward + step | step |", "|---|---|---|---|---|---|---|"]  # fmt: skip
        for k in ("uncached", "cached"):
            r = s["step_breakdown_seconds"][k]
            lines.append(f"| {k} | {s['samples_per_second'][k]:.2f} | {r['features']:.3f} | {r['encoder']:.3f} | {r['forward']:.3f} | {r['backward_and_step']:.3f} | {r['total']:.3f} |")
        lines += ["", f"Speedup {s['speedup']:.2f}x (features + encoder are {100 * s['encoder_share_of_uncached_step']:.0f} % of an uncached step: "
                  f"upper bound {s['cache_speedup_upper_bound']:.2f}x). Measured by {s['measured_by']}.", ""]  # fmt: skip
        if s.get("ctc_pre_alignment") and "error" not in s["ctc_pre_alignment"]:
            c = s["ctc_pre_alignment"]
            lines += [f"CTC pre-alignment step (`training.losses.LlasmCtcAligner`: encoder + adaptor + CTC, no LLM): uncached "
                      f"{c['samples_per_second']['uncached']:.2f} samples/s, cached {c['samples_per_second']['cached']:.2f} samples/s "
                      f"({c['speedup']:.2f}x).", ""]  # fmt: skip
        trainer = s.get("trainer_benchmark")
        if trainer and "error" in trainer:
            lines += [f"`{trainer['script']}` failed: {trainer['error']}", ""]
        elif trainer:
            lines += [f"The training pipeline's benchmark (`benchmarks/stage1_speed.py`: real collator, disk encoder cache, LM head "
                      f"at label positions; batch {trainer.get('batch_size')}; the goal uses its `lm bf16 cached` / `lm bf16`):", "",
                      "| configuration | s/step | samples/s |", "|---|---|---|"]  # fmt: skip
            for r in trainer.get("results", []):
                lines.append(f"| {r['name']} | {r['seconds_per_step']:.3f} | {r['samples_per_second']:.2f} |")
            extra = f"; CTC pre-alignment {trainer['ctc_cached_speedup']:.2f}x" if "ctc_cached_speedup" in trainer else ""
            if "cached_speedup" in trainer:
                lines += ["", f"Encoder cache speedup (LM loss, bf16): {trainer['cached_speedup']:.2f}x{extra}."]
            lines.append("")
    if "memory" in results:
        mem = results["memory"]
        lines += ["## Training memory (RSS, one training step, fresh process per setting)", "",
                  "| setting | peak RSS (MiB) | peak - import baseline | peak while loading | after load | peak during the step | step (s) |",
                  "|---|---|---|---|---|---|---|"]  # fmt: skip
        for k in ("qlora", "lora-bf16"):
            r = mem.get(k, {})
            if "error" in r or not r:
                lines.append(f"| {k} | error: {r.get('error', 'not run')} | | | | | |")
            else:
                step_peak = "n/a" if r.get("step_peak_rss_mib") is None else f"{r['step_peak_rss_mib']:.0f}"
                lines.append(
                    f"| {k} | {r['peak_rss_mib']:.0f} | {r['peak_minus_baseline_mib']:.0f} | {r['load_peak_rss_mib']:.0f} | "
                    f"{r['after_load_rss_mib']:.0f} | {step_peak} | {r['step_seconds']:.2f} |"
                )
        lines += ["", "The import baseline (torch, transformers, peft, bitsandbytes) is "
                  f"{mem.get('qlora', {}).get('baseline_rss_mib', 'n/a')} MiB. Loading a 4-bit model reads the full-precision "
                  "checkpoint and quantizes it, so the loading peak can exceed the training-step peak."]  # fmt: skip
        if "qlora_over_bf16_peak" in mem:
            lines += ["", f"QLoRA / bf16 LoRA: {mem['qlora_over_bf16_peak']:.2f}x peak RSS, {mem['qlora_over_bf16_peak_minus_baseline']:.2f}x above the import baseline."]
        lines.append("")
    if results.get("explanations"):
        lines += ["## Why goals are missed", ""]
        names = {k: v[0] for k, v in GOALS.items()}
        for key, text in results["explanations"].items():
            lines += [f"- **{names.get(key, key)}**: {text}"]
        lines.append("")
    if results.get("profiles"):
        lines += ["## Profiles of missed goals", ""]
        for name, table in results["profiles"].items():
            lines += [f"### {name}", "", "```", table.rstrip(), "```", ""]
    return "\n".join(lines)


def write_plots(results: dict, output_dir: Path) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    written = []

    def save(fig, name):
        fig.tight_layout()
        fig.savefig(output_dir / name, dpi=80)
        plt.close(fig)
        written.append(name)

    if "ttft" in results:
        med = results["ttft"]["median"]
        keys = sorted(med["llasm"], key=float)
        fig, ax = plt.subplots(figsize=(7, 3.6))
        width = 0.27
        for i, m in enumerate(METHODS):
            values = [med[m][k]["total"] for k in keys]
            bars = ax.bar([j + (i - 1) * width for j in range(len(keys))], values, width, label=METHOD_LABELS[m])
            ax.bar_label(bars, labels=[f"{v:.2f}" for v in values], fontsize=6)
        ax.set_xticks(range(len(keys)), [f"{float(k):g} s clip" for k in keys])
        ax.set_ylabel("time to first token (s)")
        ax.legend(fontsize=7)
        ax.set_title("Time to first token (median)")
        save(fig, "ttft.png")
    if "decode" in results:
        d = results["decode"]
        fig, ax = plt.subplots(figsize=(4.5, 3))
        ax.bar(["LLaSM", "bare LLM"], [d["tokens_per_second"]["llasm"], d["tokens_per_second"]["bare_llm"]], color=["C0", "C7"])
        ax.set_ylabel("decode tokens/s")
        ax.set_title(f"Decode speed (ratio {d['ratio']:.3f})")
        save(fig, "decode.png")
    if "batch" in results:
        b = results["batch"]
        fig, ax = plt.subplots(figsize=(4.5, 3))
        ax.bar(["one by one", "batch of 8"], [b["clips_per_second"]["one_by_one"], b["clips_per_second"]["batch"]], color=["C7", "C0"])
        ax.set_ylabel("clips/s")
        ax.set_title(f"Batch of 8 ({b['speedup']:.2f}x)")
        save(fig, "batch.png")
    if "stage1" in results:
        s = results["stage1"]
        fig, ax = plt.subplots(figsize=(4.5, 3))
        ax.bar(["encoder run", "encoder cached"], [s["samples_per_second"]["uncached"], s["samples_per_second"]["cached"]], color=["C7", "C0"])
        ax.set_ylabel("training samples/s")
        ax.set_title(f"Stage 1 ({s['speedup']:.2f}x)")
        save(fig, "stage1.png")
    if "memory" in results and all("peak_rss_mib" in results["memory"].get(k, {}) for k in ("qlora", "lora-bf16")):
        mem = results["memory"]
        fig, ax = plt.subplots(figsize=(4.5, 3))
        labels = ["4-bit QLoRA", "bf16 LoRA"]
        base = [mem["qlora"]["baseline_rss_mib"], mem["lora-bf16"]["baseline_rss_mib"]]
        load = [mem[k]["load_peak_rss_mib"] - mem[k]["baseline_rss_mib"] for k in ("qlora", "lora-bf16")]
        step = [(mem[k].get("step_peak_rss_mib") or mem[k]["peak_rss_mib"]) - mem[k]["baseline_rss_mib"] for k in ("qlora", "lora-bf16")]
        x = range(len(labels))
        ax.bar(x, base, 0.6, color="C7", label="after imports")
        ax.bar([i - 0.15 for i in x], load, 0.3, bottom=base, color="C1", label="loading peak")
        ax.bar([i + 0.15 for i in x], step, 0.3, bottom=base, color="C0", label="training-step peak")
        ax.set_xticks(list(x), labels)
        ax.set_ylabel("peak RSS (MiB)")
        ax.legend(fontsize=7)
        ax.set_title("Training memory")
        save(fig, "memory.png")
    return written


# --------------------------------------------------------------------------------------------------- entry point


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items() if not str(k).startswith("_")}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float):
        return round(obj, 6)
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    return obj


def run_benchmark(settings: BenchSettings, command: str = "llasm bench") -> dict:
    """Run the selected sections; write `results.json`, `results.md` and PNG plots to `settings.output_dir`."""
    threads = torch.get_num_threads()
    try:
        return _run_benchmark(settings, command)
    finally:
        torch.set_num_threads(threads)  # leave the caller's process as it was


def _run_benchmark(settings: BenchSettings, command: str) -> dict:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    unknown = set(settings.sections) - set(SECTIONS)
    if unknown:
        raise ValueError(f"Unknown sections {sorted(unknown)}; choose from {SECTIONS}.")
    if settings.threads:
        torch.set_num_threads(settings.threads)
    output_dir = Path(settings.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    load_before = load_average()
    contention_before = thread_contention_check(torch.get_num_threads())
    results: dict[str, Any] = {
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in settings.__dict__.items() if k != "log"},
        "machine": machine_info(),
        "load_average_before": load_before,
        "command": command,
        "clip_source": {"espeak-ng": "espeak-ng speech (data.tts)", "espeak-ng-cli": "espeak-ng speech (CLI)"}.get(
            speech_source(), "NO SPEECH SYNTHESIZER: deterministic noise-like signals (modulated harmonics + noise)"
        ),
    }
    with contextlib.ExitStack() as stack:
        work_dir = Path(settings.work_dir) if settings.work_dir else Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="llasm-bench-")))
        settings.log("[bench] loading models ...")
        systems, saved_model = build_systems(settings, work_dir)
        results["systems"] = systems.description
        ttft_clips = {s: speech_clip(s, seed=i) for i, s in enumerate(TTFT_SECONDS)}
        if "ttft" in settings.sections:
            settings.log("[bench] time to first token ...")
            results["ttft"] = bench_ttft(systems, settings, ttft_clips)
        if "decode" in settings.sections:
            settings.log("[bench] decode speed ...")
            results["decode"] = bench_decode(systems, settings, ttft_clips[5.0])
        if "batch" in settings.sections:
            settings.log("[bench] batch of 8 vs one by one ...")
            results["batch"] = bench_batch(systems, settings, [speech_clip(s, seed=i) for i, s in enumerate(BATCH_SECONDS)])
        if "stage1" in settings.sections:
            settings.log("[bench] stage-1 training speed ...")
            stage1_clips = [speech_clip(s, seed=i) for i, s in enumerate((3.0, 4.0, 5.0, 6.0, 4.5, 3.5, 5.5, 2.5)[: settings.stage1_batch])]
            results["stage1"] = bench_stage1(systems, settings, stage1_clips)
            trainer = bench_stage1_trainer(settings, saved_model, work_dir)
            if trainer is not None:
                results["stage1"]["trainer_benchmark"] = trainer
        goals = check_goals(results)
        results["goals"] = goals
        results["explanations"] = explain_missed(goals, results)
        if settings.profile and any(not g["met"] for g in goals):
            settings.log("[bench] profiling the missed goals ...")
            results["profiles"] = profiles_for_missed(goals, systems, settings, ttft_clips, results)
        if "memory" in settings.sections:
            del systems
            results["memory"] = bench_memory(settings, saved_model)
    results["load_average_after"] = load_average()
    results["thread_contention"] = {"before": contention_before, "after": thread_contention_check(torch.get_num_threads())}
    results["wall_seconds"] = time.perf_counter() - started
    notes = []
    if load_before and results["machine"]["usable_cpus"] and load_before[0] > 0.5 * results["machine"]["usable_cpus"]:
        notes.append(f"The machine was busy when the run started (1-min load {load_before[0]} on {results['machine']['usable_cpus']} CPUs).")
    if contention_before["contended"] or results["thread_contention"]["after"]["contended"]:
        notes.append(
            f"Thread contention: a GEMV on {torch.get_num_threads()} threads was over 2x slower than on 1 thread "
            f"({results['thread_contention']}); other processes share the cores, so these timings are NOT representative."
        )
    if notes:
        results["note"] = " ".join(notes)
    clean = _jsonable(results)
    (output_dir / "results.json").write_text(json.dumps(clean, indent=2) + "\n")
    (output_dir / "results.md").write_text(markdown_report(clean) + "\n")
    clean["plots"] = write_plots(clean, output_dir)
    return clean


def summary_lines(results: dict) -> list[str]:
    lines = []
    if "ttft" in results:
        med = results["ttft"]["median"]
        for k in sorted(med["llasm"], key=float):
            lines.append(f"TTFT {float(k):g} s clip: " + ", ".join(f"{m} {_fmt_s(med[m][k]['total'])}" for m in METHODS))
    if "decode" in results:
        d = results["decode"]["tokens_per_second"]
        lines.append(f"decode: LLaSM {d['llasm']:.2f} tok/s, bare LLM {d['bare_llm']:.2f} tok/s")
    if "batch" in results:
        b = results["batch"]
        lines.append(f"batch of 8: {b['clips_per_second']['batch']:.2f} clips/s vs one by one {b['clips_per_second']['one_by_one']:.2f} clips/s; identical outputs {b['outputs_equal']}/{b['outputs_total']}")
    if "stage1" in results:
        s = results["stage1"]["samples_per_second"]
        lines.append(f"stage 1: cached {s['cached']:.2f} samples/s vs uncached {s['uncached']:.2f} samples/s")
    if "memory" in results:
        for k in ("qlora", "lora-bf16"):
            r = results["memory"].get(k, {})
            lines.append(f"memory {k}: " + (f"peak RSS {r['peak_rss_mib']:.0f} MiB ({r['peak_minus_baseline_mib']:.0f} MiB above imports)" if "peak_rss_mib" in r else f"error {r.get('error')}"))
    lines += [goal_line(g) for g in results.get("goals", [])]
    return lines
