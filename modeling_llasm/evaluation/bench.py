"""`llasm bench`: LLaSM speed and memory next to its baselines, on the same clips and the same LLM, in one run.

Sections (each reports medians over `repeats` after one warm-up):

- ``ttft``: time to first token for 2 / 5 / 20 s clips (audio in -> first answer token; feature extraction
  included) for our default adaptor (stack_mlp on unpadded windows), the original LLaSM method (30 s padded window,
  Whisper decoder resampler with 64 queries, linear) and the cascade (Whisper generates the transcript, then the LLM
  prefills the transcript prompt), with a time breakdown (features / encoder / adaptor / LLM prefill).
- ``stream``: the default base (`whisper_reader`), what users run: TTFT on the whole clip (features / encoder /
  reading / prefill) and from the end of speech to the first token when the clip arrives in 0.5 s chunks
  (`LlasmAudioStream`), for 2 / 5 / 15 / 30 s clips, beside the original method and the cascade on the same clips.
- ``decode``: decode tokens/s after a 5 s clip vs the bare LLM decoding from a text prompt of the same length.
- ``batch``: 8 mixed-length clips in one batch vs one by one (throughput, and whether the outputs are equal).
- ``stage1``: adaptor-only (stage-1) training samples/s with cached encoder outputs vs running the encoder.
- ``memory``: peak RSS of one 4-bit QLoRA vs one bf16 LoRA training step (fresh process each).

Goals (ratios) are checked and printed; for a missed goal a profile (torch.profiler top ops and the breakdown)
is added to the report.

Layout: `bench_systems` (settings and what is benchmarked), `bench_timing` (the measurements), `bench_report`
(goals, Markdown table, plots, summary); this module runs the sections and re-exports their public names.
"""

from __future__ import annotations

import contextlib
import functools
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from .bench_report import (
    GOALS,
    _jsonable,
    check_goals,
    explain_missed,
    goal_line,
    markdown_report,
    profiles_for_missed,
    summary_lines,
    write_plots,
)
from .bench_systems import (
    BATCH_SECONDS,
    METHOD_LABELS,
    METHODS,
    SECTIONS,
    TTFT_SECONDS,
    BenchSettings,
    Systems,
    build_systems,
    check_dtype_sections,
    compose_original,
    find_stage1_script,
)
from .bench_timing import (
    StageTimer,
    TokenTimes,
    bench_batch,
    bench_decode,
    bench_memory,
    bench_stage1,
    bench_stage1_trainer,
    bench_ttft,
    stage1_batch,
    ttft_cascade,
    ttft_speech,
)
from .bench_fast import bench_dtypes, bench_pipeline, bench_prompt_lookup, bench_reuse
from .bench_streaming import bench_streaming
from .clips import speech_clip, speech_source
from .sysinfo import load_average, machine_info, thread_contention_check

__all__ = [  # the names callers imported from this module before the split keep working
    "BATCH_SECONDS",
    "GOALS",
    "METHODS",
    "METHOD_LABELS",
    "SECTIONS",
    "TTFT_SECONDS",
    "BenchSettings",
    "StageTimer",
    "Systems",
    "TokenTimes",
    "bench_batch",
    "bench_decode",
    "bench_memory",
    "bench_stage1",
    "bench_stage1_trainer",
    "bench_ttft",
    "build_systems",
    "check_goals",
    "compose_original",
    "explain_missed",
    "find_stage1_script",
    "goal_line",
    "markdown_report",
    "profiles_for_missed",
    "run_benchmark",
    "stage1_batch",
    "summary_lines",
    "ttft_cascade",
    "ttft_speech",
    "write_plots",
]


# --------------------------------------------------------------------------------------------------- entry point


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
    check_dtype_sections(settings)
    if settings.stream_end_silence < 0:
        raise ValueError(f"--stream-end-silence must be >= 0 seconds, got {settings.stream_end_silence}.")
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
        five_seconds = ttft_clips[5.0]
        batch_clips = functools.cache(lambda: [speech_clip(s, seed=i) for i, s in enumerate(BATCH_SECONDS)])  # batch + pipeline
        inference_sections = (
            ("ttft", "time to first token", lambda: bench_ttft(systems, settings, ttft_clips)),
            ("stream", "the default base: whole clip and streamed", lambda: bench_streaming(systems, settings)),
            ("decode", "decode speed", lambda: bench_decode(systems, settings, five_seconds)),
            ("batch", "batch of 8 vs one by one", lambda: bench_batch(systems, settings, batch_clips())),
            ("reuse", "reuse: prompt-head cache, turn 3 of a chat",
             lambda: bench_reuse(systems, settings, [five_seconds, speech_clip(5.0, seed=7), speech_clip(5.0, seed=8)])),
            ("dtype", "inference precision", lambda: bench_dtypes(systems, settings, five_seconds)),
            ("pipeline", "batched pipeline", lambda: bench_pipeline(systems, settings, batch_clips())),
            ("lookup", "prompt-lookup decoding",
             lambda: bench_prompt_lookup(systems, settings, [five_seconds, speech_clip(5.0, seed=7)])),
        )  # fmt: skip
        for name, what, run in inference_sections:
            if name in settings.sections:
                settings.log(f"[bench] {what} ...")
                results[name] = run()
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
