"""Losses: LM head only at label positions, text-teacher distillation, encoder cache, CTC pre-alignment."""

from __future__ import annotations

import pytest
import torch
from llasm_training_fixtures import spoken_qa_record, text
from transformers import TrainingArguments

from modeling_llasm.data.collator import LlasmDataCollator
from modeling_llasm.training import EncoderCache, LlasmTrainer, distillation_loss, logits_at_labels, token_cross_entropy
from modeling_llasm.training.runner import ctc_align, ctc_transcribe
from tiny_llasm import build_tiny_llasm


def args(tmp_path, **kwargs) -> TrainingArguments:
    kwargs = {"use_cpu": True, "report_to": [], "max_steps": 1, "save_strategy": "no", **kwargs}
    return TrainingArguments(str(tmp_path), **kwargs)


def test_lm_head_only_at_label_positions_gives_the_full_loss(tiny_llasm):
    model, processor = tiny_llasm
    batch = LlasmDataCollator(processor, "instruct")([spoken_qa_record(i) for i in range(3)])
    with torch.no_grad():
        full = model(**batch).loss
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        _, logits, targets = logits_at_labels(model, inputs, batch["labels"])
        reduced = token_cross_entropy(logits, targets)
    learned = int((batch["labels"][:, 1:] != -100).sum())
    assert logits.shape == (learned, model.config.text_config.vocab_size)  # not (batch, seq, vocab)
    torch.testing.assert_close(reduced, full, rtol=1e-5, atol=1e-6)


def test_distillation_loss_is_zero_when_student_input_equals_teacher_input(tmp_path):
    model, processor = build_tiny_llasm()
    text_only = [{"id": f"t{i}", "messages": [{"role": "user", "content": [text("what is the capital of france")]},
                                              {"role": "assistant", "content": [text(w)]}]}  # fmt: skip
                 for i, w in enumerate(["hello world", "the quick brown fox"])]
    collator = LlasmDataCollator(processor, "instruct", distill=True)
    batch = collator(text_only)
    assert torch.equal(batch["input_ids"], batch["teacher_input_ids"])
    trainer = LlasmTrainer(model=model, args=args(tmp_path), data_collator=collator, stage="instruct",
                           distill_weight=1.0, ce_weight=0.0)  # fmt: skip
    assert trainer.compute_loss(model, batch).item() == 0.0
    # with speech the student sees audio where the teacher reads the transcript: the loss is positive
    speech = collator([spoken_qa_record(0), spoken_qa_record(1)])
    assert trainer.compute_loss(model, speech).item() > 1e-4
    logits = torch.randn(5, 11)
    assert distillation_loss(logits, logits.clone(), temperature=2.0).item() == pytest.approx(0.0, abs=1e-7)


def test_distillation_gradient_reaches_the_adaptor_only_in_stage_one(tmp_path):
    model, processor = build_tiny_llasm()
    collator = LlasmDataCollator(processor, "align", distill=True)
    trainer = LlasmTrainer(model=model, args=args(tmp_path), data_collator=collator, stage="align", distill_weight=1.0)
    loss = trainer.compute_loss(model, collator([spoken_qa_record(0), spoken_qa_record(1)]))
    loss.backward()
    assert model.model.multi_modal_projector.linear_1.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.model.language_model.parameters())


def test_encoder_cache_gives_the_same_loss_and_skips_the_encoder(tiny_llasm, tmp_path, monkeypatch):
    model, processor = tiny_llasm
    records = [spoken_qa_record(i) for i in range(3)]
    cache = EncoderCache(model, processor, cache_dir=tmp_path, dtype=torch.float32)
    cached = LlasmDataCollator(processor, "instruct", encoder_cache=cache)
    first = cached(records)
    assert cache.misses == 3 and "input_features" not in first and "audio_encoder_hidden_states" in first
    assert len(list(cache.directory.rglob("*.safetensors"))) == 3
    plain = LlasmDataCollator(processor, "instruct")(records)
    with torch.no_grad():
        reference = model(**plain).loss

    def no_encoder(*args, **kwargs):
        raise AssertionError("the encoder ran although its outputs are cached")

    monkeypatch.setattr(model.model.audio_tower, "forward", no_encoder)
    again = cached(records)
    assert cache.hits == 3
    with torch.no_grad():
        torch.testing.assert_close(model(**again).loss, reference, rtol=1e-6, atol=1e-6)
    assert torch.equal(again["input_ids"], plain["input_ids"]) and torch.equal(again["labels"], plain["labels"])
    other, _ = build_tiny_llasm(seed=1)
    assert EncoderCache(other, processor, cache_dir=tmp_path).directory != cache.directory


def test_ctc_pre_alignment_trains_the_adaptor_without_running_the_llm(tmp_path, monkeypatch):
    model, processor = build_tiny_llasm()
    llm_before = {k: v.clone() for k, v in model.model.language_model.state_dict().items()}
    encoder_before = {k: v.clone() for k, v in model.model.audio_tower.state_dict().items()}
    projector_before = model.model.multi_modal_projector.linear_1.weight.detach().clone()

    def no_llm(*args, **kwargs):
        raise AssertionError("the LLM ran during CTC pre-alignment")

    monkeypatch.setattr(model.model.language_model, "forward", no_llm)
    records = [spoken_qa_record(i, seconds=0.6 + 0.1 * i) for i in range(4)]
    trainer, output = ctc_align(model, processor, records, args(tmp_path, max_steps=12, learning_rate=1e-2,
                                                                per_device_train_batch_size=4, logging_steps=1))  # fmt: skip
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 12 and losses[-1] < losses[0]
    assert not torch.equal(model.model.multi_modal_projector.linear_1.weight, projector_before)
    # the CTC head is norm-invariant; afterwards the adaptor is scaled to the LLM's mean embedding norm
    batch = LlasmDataCollator(processor, "align")(records)
    with torch.no_grad():
        audio = model.get_audio_features(batch["input_features"], batch["input_features_mask"]).pooler_output
    embedding_norm = model.get_input_embeddings().weight.norm(dim=-1).mean()
    torch.testing.assert_close(audio.norm(dim=-1).mean(), embedding_norm, rtol=1e-4, atol=1e-5)
    references, predictions = ctc_transcribe(trainer.model, processor, records[:2])
    assert references == [r["messages"][0]["content"][0]["transcript"] for r in records[:2]] and len(predictions) == 2
    assert all(torch.equal(v, model.model.language_model.state_dict()[k]) for k, v in llm_before.items())
    assert all(torch.equal(v, model.model.audio_tower.state_dict()[k]) for k, v in encoder_before.items())


def test_label_smoothing_with_distillation_is_refused(tmp_path):
    model, processor = build_tiny_llasm()
    collator = LlasmDataCollator(processor, "instruct", distill=True)
    with pytest.raises(ValueError, match="label_smoothing_factor and compute_loss_func replace"):
        LlasmTrainer(model=model, args=args(tmp_path, label_smoothing_factor=0.1), data_collator=collator, distill_weight=1.0)
