"""`llasm train --recipe tiny --smoke` end to end on the tiny model and a tiny dataset, resume, loss-curve PNG."""

from __future__ import annotations

import json

from llasm_training_fixtures import tiny_training_files  # noqa: F401  (fixture)

from modeling_llasm.cli import main
from modeling_llasm.training import check_hub_layout
from modeling_llasm.training.plotting import plot_loss_curves


PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_llasm_train_smoke_runs_every_phase_and_resumes(tiny_training_files, tmp_path, capsys):
    base_dir, data_dir = tiny_training_files
    run_dir = tmp_path / "run"
    argv = ["train", "--recipe", "tiny", "--smoke", "--precision", "fp32", "--base-dir", str(base_dir), "--data-dir", str(data_dir),
            "--run-dir", str(run_dir), "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    for phase in ("stage1_ctc", "stage1_lm", "stage2_data", "stage2"):
        assert (run_dir / phase / "done.json").is_file(), phase
    assert 0.0 <= summary["stage1_heldout_wer"] and 0.0 <= summary["final_heldout_wer"]
    assert summary["ctc_heldout_wer"] >= 0.0  # best-path decoding of the CTC head alone
    assert check_hub_layout(run_dir / "final") == []
    assert check_hub_layout(run_dir / "stage1_lm" / "final") == []
    assert (run_dir / "loss_curve.png").read_bytes().startswith(PNG_MAGIC)
    curves = json.loads((run_dir / "loss_curves.json").read_text())
    assert set(curves) == {"stage1_ctc", "stage1_lm", "stage2"} and all(curves.values())
    transcripts = (run_dir / "stage2" / "heldout_transcripts.jsonl").read_text().splitlines()
    assert len(transcripts) == 4 and {"reference", "prediction"} <= set(json.loads(transcripts[0]))
    responses = (run_dir / "stage2_data" / "train.jsonl").read_text().splitlines()
    assert len(responses) == 6 and json.loads(responses[0])["messages"][-1]["role"] == "assistant"
    assert (run_dir / "train.log").read_text().count("stage 2: instruct") == 1

    # a second run without --resume refuses to overwrite; with --resume every finished phase is skipped
    assert main(argv) == 2
    assert main([*argv, "--resume"]) == 0
    log = (run_dir / "train.log").read_text()
    assert log.count("stage 2: instruct") == 1 and log.count("stage 1b: LM loss") == 1
    assert json.loads((run_dir / "summary.json").read_text())["final_heldout_wer"] == summary["final_heldout_wer"]


def test_resume_continues_an_interrupted_phase_from_its_checkpoint(tiny_training_files, tmp_path):
    base_dir, data_dir = tiny_training_files
    run_dir = tmp_path / "run"
    argv = ["train", "--smoke", "--precision", "fp32", "--base-dir", str(base_dir), "--data-dir", str(data_dir), "--run-dir", str(run_dir),
            "--no-progress", "--no-ctc"]  # fmt: skip
    assert main(argv) == 0
    # simulate a kill during stage 2, after its first checkpoint: drop what came after it
    import shutil

    for path in ("stage2/done.json", "stage2/checkpoint-2", "final"):
        target = run_dir / path
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    assert (run_dir / "stage2" / "checkpoint-1" / "trainer_state.json").is_file()
    assert main([*argv, "--resume"]) == 0
    stage2 = json.loads((run_dir / "stage2" / "done.json").read_text())
    steps = [entry["step"] for entry in stage2["log_history"] if "loss" in entry]
    assert steps == [1, 2]  # step 1 restored from the checkpoint, step 2 trained now
    log = (run_dir / "train.log").read_text()
    assert "resuming from" in log and str(run_dir / "stage2" / "checkpoint-1") in log
    assert log.count("stage 1b: LM loss") == 1  # the finished stage 1 was not redone
    assert check_hub_layout(run_dir / "final") == []


def test_loss_curve_png(tmp_path):
    path = plot_loss_curves({"a": [(1, 5.0), (2, 4.0), (3, 3.5)], "b": [(4, 3.0), (5, 2.0)]}, tmp_path / "c.png")
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC) and b"IHDR" in data and data.endswith(b"IEND\xaeB`\x82")
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (800, 450)


def test_time_budget_callback_stops_and_its_spent_time_survives_resume(tmp_path):
    from llasm_training_fixtures import spoken_qa_record
    from transformers import TrainingArguments

    from modeling_llasm.data.collator import LlasmDataCollator
    from modeling_llasm.training.trainer import LlasmTrainer, TimeBudgetCallback
    from tiny_llasm import build_tiny_llasm

    model, processor = build_tiny_llasm()
    args = TrainingArguments(str(tmp_path), use_cpu=True, report_to=[], max_steps=6, save_steps=1, per_device_train_batch_size=1,
                             restore_callback_states_from_checkpoint=True)  # fmt: skip
    budget = TimeBudgetCallback(budget_seconds=0.0)
    trainer = LlasmTrainer(model=model, args=args, train_dataset=[spoken_qa_record(i) for i in range(6)],
                           data_collator=LlasmDataCollator(processor, "instruct"), stage="instruct", callbacks=[budget])  # fmt: skip
    trainer.train()
    assert trainer.state.global_step == 1 and budget.stopped_at_step == 1
    state = json.loads((tmp_path / "checkpoint-1" / "trainer_state.json").read_text())
    assert state["stateful_callbacks"]["TimeBudgetCallback"]["attributes"]["elapsed"] > 0


def test_recipe_with_word_level_adaptors_keeps_the_llm_frozen_and_evaluates_understanding(tiny_training_files, tmp_path):
    """The reader (distillation only) and ctc_compress (no LM phase) recipes: which phases ran, the LLM untouched, and
    the spoken-understanding numbers in the summary."""
    import torch

    from modeling_llasm.training.ctc_vocabulary import SubVocabulary
    from modeling_llasm.training.loading import load_llasm
    from tiny_llasm import build_tiny_llasm, reader_llasm

    _, data_dir = tiny_training_files
    compress, compress_processor = build_tiny_llasm(adaptor_type="ctc_compress", ctc_vocab_size=280)
    compress.set_ctc_vocabulary(SubVocabulary.build(compress_processor.tokenizer, 280, words=300).token_ids)
    reader, reader_processor = reader_llasm()
    for kind, (model, processor), options, ran, skipped in [
        ("whisper_reader", (reader, reader_processor), [], (), ("stage1_ctc", "stage1_lm", "stage2")),
        ("whisper_reader", (reader, reader_processor), ["--reader-distill"], ("stage2",), ("stage1_ctc", "stage1_lm")),
        ("ctc_compress", (compress, compress_processor), [], ("stage1_ctc", "stage2"), ("stage1_lm",)),
    ]:
        base = tmp_path / f"base-{kind}"
        model.save_pretrained(base)
        processor.save_pretrained(base)
        run_dir = tmp_path / f"run-{kind}{''.join(options)}"
        # bf16: the path that crashed on AVX512-BF16 CPUs, forced here on every CPU (issue 23)
        argv = ["train", "--smoke", "--base-dir", str(base), "--data-dir", str(data_dir), "--run-dir", str(run_dir), "--no-progress",
                "--precision", "bf16", *options]  # fmt: skip
        assert main(argv) == 0
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["adaptor_type"] == kind
        assert all(summary["phases"][name]["steps"] == 2 for name in ran), summary["phases"]
        assert all(summary["phases"][name]["steps"] == 0 for name in skipped)
        final = load_llasm(run_dir / "final")
        llm_before = dict(model.model.language_model.named_parameters())
        assert all(torch.equal(p, llm_before[n]) for n, p in final.model.language_model.named_parameters())  # LLM frozen
        adaptor_before = dict(model.model.multi_modal_projector.named_parameters())
        adaptor_same = all(torch.equal(p, adaptor_before[n]) for n, p in final.model.multi_modal_projector.named_parameters())
        # stage 2 keeps its best step on the held-out questions (step 0 = where it started), scored at every step
        kept = summary.get("stage2_kept")
        assert (kept is not None) == ("stage2" in ran)
        if kept is not None:
            history = json.loads((run_dir / "stage2" / "done.json").read_text())["log_history"]
            scores = {e["step"]: e["eval_answer_rougeL"] for e in history if "eval_answer_rougeL" in e}
            assert sorted(scores) == [0, 1, 2] and all(0.0 <= v <= 1.0 for v in scores.values())
            assert kept["metric"] == "eval_answer_rougeL" and kept["step"] == max(scores, key=scores.get)
        # the default reader trains nothing; the others train the adaptor (unless the reader's stage 2 kept step 0)
        assert adaptor_same == (not ran or (kind == "whisper_reader" and kept["step"] == 0))
        assert (run_dir / "stage2_data").exists() == bool(ran) and (run_dir / "encoder_cache").exists() == bool(ran)
        assert not (run_dir / "stage1_lm" / "final").exists()  # no LM phase: the stage-1 model is not saved twice
        understanding = summary["understanding"]
        assert understanding["spoken"]["num_questions"] == 3 and understanding["text_skill_retention"] == 1.0
        assert understanding["spoken"]["rougeL_cascade_vs_typed"] is None  # smoke: no Whisper cascade
        assert json.loads((run_dir / "understanding" / "results.json").read_text())["samples"][0]["audio_answer"] is not None
        assert check_hub_layout(run_dir / "final") == []


def test_recipe_can_train_the_top_encoder_layer(tiny_training_files, tmp_path):
    """`--train-encoder-layers 1`: every phase trains the encoder's top layer (and final norm) beside the adaptor,
    without an encoder cache; the lower encoder layers stay as they were."""
    import torch

    from modeling_llasm.training.loading import load_llasm

    base_dir, data_dir = tiny_training_files
    run_dir = tmp_path / "run"
    argv = ["train", "--smoke", "--precision", "fp32", "--base-dir", str(base_dir), "--data-dir", str(data_dir), "--run-dir", str(run_dir),
            "--no-progress", "--no-understanding", "--no-keep-best", "--train-encoder-layers", "1"]  # fmt: skip
    assert main(argv) == 0
    before = dict(load_llasm(base_dir).model.audio_tower.named_parameters())
    after = dict(load_llasm(run_dir / "final").model.audio_tower.named_parameters())
    changed = {name for name, p in after.items() if not torch.equal(p, before[name])}
    assert changed and all(name.startswith(("layers.1.", "layer_norm.")) for name in changed), changed
    assert not (run_dir / "encoder_cache").exists()


def test_recipe_can_teach_the_llm_to_copy_behind_the_reader(tiny_training_files, tmp_path):
    """The LoRA arm of docs/training.md: `--stage2-llm-mode lora --stage2-asr-mix 1 --ce-weight 0.5` mixes ASR records
    (clip + instruction -> transcript, cross-entropy) into the reader's stage 2 and trains LoRA on the LLM; with
    `--reader-residual-ratio 0` the reader's residual stays off, so only the LLM changes."""
    import torch

    from modeling_llasm.training.loading import load_llasm
    from tiny_llasm import reader_llasm

    _, data_dir = tiny_training_files
    model, processor = reader_llasm()
    base = tmp_path / "base"
    model.save_pretrained(base)
    processor.save_pretrained(base)
    run_dir = tmp_path / "run"
    argv = ["train", "--smoke", "--precision", "fp32", "--base-dir", str(base), "--data-dir", str(data_dir), "--run-dir", str(run_dir),
            "--no-progress", "--no-understanding", "--no-keep-best", "--reader-distill", "--reader-residual-ratio", "0",
            "--stage2-llm-mode", "lora", "--stage2-asr-mix", "1", "--ce-weight", "0.5"]  # fmt: skip
    assert main(argv) == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["stage2_records"]["asr"] > 0 and summary["phases"]["stage2"]["steps"] == 2
    final = load_llasm(run_dir / "final")
    llm_before = dict(model.model.language_model.named_parameters())
    assert not all(torch.equal(p, llm_before[n]) for n, p in final.model.language_model.named_parameters())  # LoRA merged in
    assert all(torch.equal(p, dict(model.model.multi_modal_projector.named_parameters())[n])
               for n, p in final.model.multi_modal_projector.named_parameters())  # fmt: skip
    assert final.config.reader_residual_ratio == 0.0


def test_resumed_stage_2_starts_from_the_stage_1_adaptor_when_stage_1b_saved_no_model(tiny_training_files, tmp_path):
    """ctc_compress has no LM phase, so no `stage1_lm/final` is written: a run killed after stage 1 rebuilds the
    stage-1 model from the base + `stage1_ctc/adaptor.safetensors` and ends exactly where the uninterrupted run did."""
    import shutil

    import torch

    from modeling_llasm.training.ctc_vocabulary import SubVocabulary
    from modeling_llasm.training.loading import load_llasm
    from tiny_llasm import build_tiny_llasm

    _, data_dir = tiny_training_files
    model, processor = build_tiny_llasm(adaptor_type="ctc_compress", ctc_vocab_size=280)
    model.set_ctc_vocabulary(SubVocabulary.build(processor.tokenizer, 280, words=300).token_ids)
    base = tmp_path / "base"
    model.save_pretrained(base)
    processor.save_pretrained(base)
    run_dir = tmp_path / "run"
    argv = ["train", "--smoke", "--precision", "fp32", "--base-dir", str(base), "--data-dir", str(data_dir), "--run-dir", str(run_dir),
            "--no-progress", "--no-understanding", "--no-keep-best"]  # fmt: skip
    assert main(argv) == 0
    uninterrupted = dict(load_llasm(run_dir / "final").model.multi_modal_projector.named_parameters())
    for path in ("stage2", "final", "summary.json"):  # killed after stage 1
        target = run_dir / path
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    assert main([*argv, "--resume"]) == 0
    resumed = dict(load_llasm(run_dir / "final").model.multi_modal_projector.named_parameters())
    assert all(torch.equal(resumed[name], uninterrupted[name]) for name in uninterrupted)
    assert not all(torch.equal(p, dict(model.model.multi_modal_projector.named_parameters())[n]) for n, p in resumed.items())


def test_a_recipe_that_trains_nothing_voices_only_the_held_out_sets(tmp_path):
    """The default reader recipe trains no phase: it voices the held-out clips it evaluates on, not the training
    clips (4,704 of them on the full recipe) that nothing would read."""
    import pytest

    from modeling_llasm.data.tts import EspeakNGEngine
    from tiny_llasm import reader_llasm

    if not EspeakNGEngine.is_available():
        pytest.skip("needs espeak-ng (the data builder's offline TTS)")
    model, processor = reader_llasm()
    model.save_pretrained(tmp_path / "base")
    processor.save_pretrained(tmp_path / "base")
    run_dir = tmp_path / "run"
    assert main(["train", "--smoke", "--base-dir", str(tmp_path / "base"), "--run-dir", str(run_dir), "--no-progress", "--precision", "fp32"]) == 0
    data = run_dir / "data"
    assert (data / "stage1" / "heldout" / "manifest.jsonl").is_file() and (data / "stage2" / "heldout" / "manifest.jsonl").is_file()
    assert not (data / "stage1" / "train").exists() and not (data / "stage2" / "train").exists()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["records"]["stage1_train"] == summary["records"]["stage2_train"] == 0
    assert summary["records"]["stage1_heldout"] > 0 and summary["understanding"]["spoken"]["num_questions"] > 0
