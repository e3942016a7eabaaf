"""`llasm bench --smoke`: the benchmark machinery end to end on tiny random models."""

import json

import pytest

from modeling_llasm.evaluation.bench import GOALS, BenchSettings, check_goals, explain_missed, goal_line, run_benchmark


def test_bench_smoke_writes_table_json_and_plots(tmp_path):
    settings = BenchSettings(
        output_dir=tmp_path / "out", smoke=True, repeats=1, warmup=0, threads=1, decode_tokens=4, batch_new_tokens=3,
        stage1_steps=1, stage1_batch=2, sections=("ttft", "stream", "decode", "batch", "reuse", "dtype", "pipeline", "lookup", "stage1"), log=lambda line: None,
        trainer_benchmark=False,  # benchmarks/stage1_speed.py is the training engineer's, with its own checks
    )  # fmt: skip
    results = run_benchmark(settings)
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["machine"]["torch_threads"] == 1 and saved["machine"]["cpu_model"]
    assert set(saved["ttft"]["median"]) == {"llasm", "original", "cascade"}
    for method in ("llasm", "original", "cascade"):
        assert set(saved["ttft"]["median"][method]) == {"2.0", "5.0", "20.0"}
        assert all(v["total"] > 0 for v in saved["ttft"]["median"][method].values())
    # The original method always gives 64 audio tokens per (padded) window; ours grows with the clip.
    assert saved["ttft"]["median"]["original"]["5.0"]["prompt_tokens"] > saved["ttft"]["median"]["llasm"]["5.0"]["prompt_tokens"]
    assert saved["decode"]["tokens_per_second"]["llasm"] > 0 and saved["decode"]["new_tokens"] == 4
    assert saved["batch"]["outputs_total"] == 8 and len(saved["batch"]["clip_seconds"]) == 8
    assert saved["stage1"]["samples_per_second"]["cached"] > 0
    # issue 12: reuse, precision and the batched pipeline, each beside its baseline
    reuse = saved["reuse"]
    assert reuse["turn3_answers_equal"] is True and reuse["head_tokens"] > 0
    for kind in ("turn3", "turn3_short_answers"):  # the earlier turns come from the cache
        tokens = reuse["turn3_tokens"]
        assert tokens[f"{kind}_conversation_cache"]["prefilled"] < tokens[f"{kind}_full_prefill"]["prompt"] / 2
    assert set(saved["dtype"]["by_dtype"]) == {"float32", "bfloat16", "int8"}
    assert all(row["decode"] > 0 and row["ttft"] > 0 for row in saved["dtype"]["by_dtype"].values())
    assert saved["pipeline"]["outputs_equal"] == saved["pipeline"]["outputs_total"] == 8
    # issue 26: prompt-lookup decoding beside greedy on the same prompts, the same answers
    lookup = saved["lookup"]["prompts"]
    assert set(lookup) == {"transcription request 1", "spoken question 1", "transcription request 2", "spoken question 2"}
    assert saved["lookup"]["answers_equal"] and all(row["answers_equal"] and row["new_tokens"] > 0 for row in lookup.values())
    # issue 24: the default base (a tiny whisper_reader here) on the whole clip and streamed, beside the baselines
    stream = saved["stream"]
    assert set(stream["median"]) == {"base", "base_head_cached", "streamed", "original", "cascade"}
    assert all(set(per) == {"2.0", "5.0"} and all(v["total"] > 0 for v in per.values()) for per in stream["median"].values())
    assert stream["answers_identical"] == len(stream["answers"]) == 2
    assert all(v["prefilled_before_end"] > 0 and v["work_per_chunk"] > 0 for v in stream["median"]["streamed"].values())
    assert {g["key"] for g in saved["goals"]} == set(GOALS) - {"stream_flatness"}  # no 30 s clip in a smoke run
    table = (tmp_path / "out" / "results.md").read_text()
    for heading in ("## Goals", "## Time to first token", "## The default base: whole clip and streamed", "## Decode speed", "## Batch of 8", "## Reusing earlier work",
                    "## Inference precision", "## Batched pipeline", "## Prompt-lookup decoding", "## Stage-1 training", "SMOKE RUN"):
        assert heading in table
    if any(not g["met"] for g in saved["goals"]):  # tiny random models miss some goals: profiles explain why
        assert "## Profiles of missed goals" in table and "Self CPU" in table
    for plot in ("ttft.png", "decode.png", "batch.png", "stage1.png"):
        assert (tmp_path / "out" / plot).stat().st_size > 1000
    assert results["plots"]


def test_bench_compares_every_system_in_the_asked_dtype(tmp_path):
    """`llasm bench --dtype bfloat16`: ours, the original method, the cascade's Whisper and the streamed default base
    all run in bf16 (their ratios compare methods, not precisions); sections that start from float32 are refused."""
    import torch

    from modeling_llasm.evaluation import bench_streaming, bench_systems

    built = {}
    real_build, real_reader = bench_systems.build_systems, bench_streaming.load_default_reader

    def build(settings, work_dir):
        built["systems"] = real_build(settings, work_dir)
        return built["systems"]

    def reader(settings, systems):
        built["reader"] = real_reader(settings, systems)
        return built["reader"]

    import modeling_llasm.evaluation.bench as bench_module

    settings = BenchSettings(output_dir=tmp_path / "out", smoke=True, repeats=1, warmup=0, threads=1, decode_tokens=3,
                             sections=("ttft", "stream", "decode"), dtype="bfloat16", log=lambda line: None)  # fmt: skip
    with pytest.MonkeyPatch.context() as patch:  # keep what was built, to look at its dtype
        patch.setattr(bench_module, "build_systems", build)
        patch.setattr(bench_streaming, "load_default_reader", reader)
        results = run_benchmark(settings)
    systems = built["systems"][0]
    for model in (systems.llasm, systems.original, systems.transcriber.model, systems.llm, built["reader"][0]):
        assert {p.dtype for p in model.parameters() if p.is_floating_point()} == {torch.bfloat16}
    assert results["systems"]["dtype"] == "bfloat16" and "greedy decoding, bfloat16" in (tmp_path / "out" / "results.md").read_text()
    assert all(v["total"] > 0 for v in results["ttft"]["median"]["llasm"].values())
    with pytest.raises(ValueError, match="the sections dtype, memory start from float32 weights"):
        run_benchmark(BenchSettings(output_dir=tmp_path / "refused", smoke=True, repeats=1, warmup=0, threads=1,
                                    sections=("ttft", "dtype", "memory"), dtype="bfloat16", log=lambda line: None))  # fmt: skip


def test_stream_clips_can_end_with_silence_after_the_speech(tmp_path):
    """`--stream-end-silence 1`: every system in the stream section gets each clip with 1 s of silence after its speech
    (the stream ends at a voice-activity end point), and the report says so; a negative length is refused at once."""
    import numpy as np

    from modeling_llasm.evaluation import bench_streaming

    seen, real_stream = [], bench_streaming.stream_end_to_first_token
    settings = BenchSettings(output_dir=tmp_path / "out", smoke=True, repeats=1, warmup=0, threads=1, sections=("stream",),
                             stream_end_silence=1.0, log=lambda line: None)  # fmt: skip
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(bench_streaming, "stream_end_to_first_token", lambda model, processor, clip, **kw: seen.append(clip) or real_stream(model, processor, clip, **kw))
        results = run_benchmark(settings)
    assert sorted({len(c) for c in seen}) == [3 * 16000, 6 * 16000]  # the 2 s and 5 s clips, 1 s longer
    assert all(not np.any(c[-16000:]) and np.any(c[-16000 - 1600 : -16000]) for c in seen)
    assert results["stream"]["end_silence_seconds"] == 1.0
    assert "ends with 1 s of silence after its speech" in (tmp_path / "out" / "results.md").read_text()
    with pytest.raises(ValueError, match="--stream-end-silence must be >= 0 seconds, got -0.5"):
        run_benchmark(BenchSettings(output_dir=tmp_path / "refused", smoke=True, sections=("stream",), stream_end_silence=-0.5, log=lambda line: None))


def test_goal_arithmetic():
    results = {
        "ttft": {"median": {m: {"5.0": {"total": t}} for m, t in (("llasm", 0.2), ("original", 1.0), ("cascade", 0.3))}},
        "decode": {"ratio": 0.99}, "batch": {"speedup": 2.0}, "stage1": {"speedup": 3.0},
    }  # fmt: skip
    goals = {g["key"]: g for g in check_goals(results)}
    assert goals["ttft_vs_original"]["met"] and goals["ttft_vs_original"]["value"] == pytest.approx(0.2)
    assert goals["ttft_vs_original"]["margin"] == pytest.approx(0.2)  # 0.2 vs target 0.25: 20 % inside
    assert not goals["ttft_vs_cascade"]["met"] and goals["ttft_vs_cascade"]["margin"] == pytest.approx(-(0.2 / 0.3 - 0.5) / 0.5)
    assert goals["decode_vs_bare"]["met"]
    assert not goals["batch_speedup"]["met"] and goal_line(goals["batch_speedup"]).startswith("MISSED")
    assert "20 % outside" in goal_line(goals["batch_speedup"])
    assert goals["stage1_cache_speedup"]["met"]
    results.update({
        "dtype": {"by_dtype": {"float32": {"ttft": 0.2}, "int8": {"ttft": 0.1}}, "fastest_ttft_dtype": "int8",
                  "decode_ratio_to_bare_float32": {"float32": 1.0, "int8": 1.9}},
        "reuse": {"turn3_ratio": 0.4, "turn3_tokens": {"turn3_full_prefill": {"prompt": 400, "prefilled": 400},
                                                        "turn3_conversation_cache": {"prompt": 400, "prefilled": 44}}},
        "pipeline": {"speedup": 2.6},
    })  # fmt: skip
    goals = {g["key"]: g for g in check_goals(results)}
    why = explain_missed([goals["turn3_vs_full_prefill"], goals["pipeline_batch_speedup"]], results)
    assert "44 of 400 tokens" in why["turn3_vs_full_prefill"] and "pipeline_batch_speedup" not in why
    assert goals["fast_ttft_vs_original"]["value"] == pytest.approx(0.1) and goals["fast_ttft_vs_original"]["met"]
    assert goals["fast_ttft_vs_cascade"]["value"] == pytest.approx(0.1 / 0.3) and not goals["fast_ttft_vs_cascade"]["met"]
    assert goals["fast_decode_vs_bare_fp32"]["value"] == pytest.approx(1.9) and goals["fast_decode_vs_bare_fp32"]["met"]
    assert not goals["turn3_vs_full_prefill"]["met"] and goals["pipeline_batch_speedup"]["met"]
    totals = {"base": (0.3, 0.9), "streamed": (0.08, 0.15), "original": (0.6, 0.6), "cascade": (0.9, 2.0)}
    results["stream"] = {"median": {m: {"5.0": {"total": five}, "30.0": {"total": thirty}} for m, (five, thirty) in totals.items()}}
    goals = {g["key"]: g for g in check_goals(results)}
    assert goals["base_ttft_vs_original"]["value"] == pytest.approx(0.5) and goals["base_ttft_vs_original"]["met"]
    assert goals["base_ttft_vs_cascade"]["value"] == pytest.approx(1 / 3) and goals["base_ttft_vs_cascade"]["met"]
    assert goals["stream_vs_original"]["value"] == pytest.approx(0.08 / 0.6) and goals["stream_vs_original"]["met"]
    assert goals["stream_flatness"]["value"] == pytest.approx(0.15 / 0.08) and not goals["stream_flatness"]["met"]


def test_memory_probe_qlora_on_tiny_model(tmp_path):
    import subprocess
    import sys

    from modeling_llasm import LlasmForConditionalGeneration
    from modeling_llasm.evaluation.tiny import build_tiny_components

    whisper_dir, llm_dir = build_tiny_components(tmp_path)
    model, processor = LlasmForConditionalGeneration.from_pretrained_components(whisper_dir, llm_dir)
    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    proc = subprocess.run(
        [sys.executable, "-m", "modeling_llasm.evaluation.memory_probe", str(tmp_path / "model"), "--mode", "qlora", "--threads", "1", "--seconds", "1"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["linear4bit_modules"] > 0 and result["trainable_parameters"] > 0
    assert result["peak_rss_mib"] >= result["after_load_rss_mib"] >= result["baseline_rss_mib"] > 0


def test_bare_llm_baseline_prompt_is_the_chat_prompt_with_text_for_audio():
    """Both decode baselines (the decode and precision sections) give the bare LLM this prompt: the spoken
    question's chat prompt, as long, with filler text where the audio placeholders were."""
    import torch

    from modeling_llasm.evaluation.bench_timing import _audio_turn, bare_llm_inputs
    from tiny_llasm import build_tiny_llasm, tone

    _, processor = build_tiny_llasm()
    inputs = processor.apply_chat_template([_audio_turn(tone(2.0))], add_generation_prompt=True)
    bare = bare_llm_inputs(processor, inputs)
    audio = inputs["input_ids"] == processor.audio_token_id
    assert bare["input_ids"].shape == inputs["input_ids"].shape and int(audio.sum()) > 0
    assert torch.equal(bare["input_ids"][~audio], inputs["input_ids"][~audio])
    assert not bool((bare["input_ids"] == processor.audio_token_id).any())
    assert bool(bare["attention_mask"].all())

