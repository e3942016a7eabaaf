"""`KeepBestCallback`: stage 2 ends with the parameters that scored best on held-out data, step 0 included."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from transformers import Trainer, TrainingArguments

from modeling_llasm.training import KeepBestCallback, TimeBudgetCallback


class Line(nn.Module):
    """loss = (w * x - y)^2 with one trainable weight and one frozen one."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))
        self.frozen = nn.Parameter(torch.ones(1), requires_grad=False)

    def forward(self, x, y):
        return {"loss": ((self.w * self.frozen * x - y) ** 2).mean()}


def points(target: float, count: int = 8) -> list[dict]:
    return [{"x": torch.ones(1), "y": torch.full((1,), target)} for _ in range(count)]


def train(tmp_path, model, eval_target: float, callbacks, max_steps: int = 5, eval_on_start: bool = True,
          eval_steps: int = 1, resume: bool = False, save_steps: int | None = None) -> Trainer:
    saving = {"save_strategy": "steps", "save_steps": save_steps} if save_steps else {"save_strategy": "no"}
    args = TrainingArguments(str(tmp_path), use_cpu=True, report_to=[], max_steps=max_steps, learning_rate=0.1,
                             per_device_train_batch_size=2, per_device_eval_batch_size=4, eval_strategy="steps",
                             eval_steps=eval_steps, eval_on_start=eval_on_start, lr_scheduler_type="constant", label_names=["y"], **saving)  # fmt: skip
    trainer = Trainer(model=model, args=args, train_dataset=points(5.0), eval_dataset=points(eval_target), callbacks=callbacks)
    trainer.train(resume_from_checkpoint=resume or None)
    return trainer


def eval_losses(trainer) -> dict[int, float]:
    return {e["step"]: e["eval_loss"] for e in trainer.state.log_history if "eval_loss" in e}


def test_training_that_only_hurts_the_held_out_data_ends_where_it_started(tmp_path):
    model, keep = Line(), KeepBestCallback()
    trainer = train(tmp_path, model, eval_target=0.0, callbacks=[keep])  # training pulls w to 5, the eval wants 0
    losses = eval_losses(trainer)
    assert sorted(losses) == [0, 1, 2, 3, 4, 5] and losses[0] == 0.0 and losses[5] > losses[1] > 0.0
    assert keep.best == {"step": 0, "metric": "eval_loss", "value": 0.0}
    assert model.w.item() == 0.0  # the step-0 parameters are back
    assert json.loads((tmp_path / "best_trainable" / "best.json").read_text())["step"] == 0


def test_training_that_helps_keeps_the_best_step(tmp_path):
    model, keep = Line(), KeepBestCallback()
    trainer = train(tmp_path, model, eval_target=0.25, callbacks=[keep])  # the eval is best after a few steps
    losses = eval_losses(trainer)
    best_step = min(losses, key=losses.get)
    assert 0 < best_step < 5 and keep.best["step"] == best_step
    with torch.no_grad():
        assert ((model.w - 0.25) ** 2).item() == pytest.approx(losses[best_step], rel=1e-5)
    assert model.frozen.item() == 1.0  # only trainable tensors are kept
    from safetensors.torch import load_file

    assert set(load_file(str(tmp_path / "best_trainable" / "trainable.safetensors"))) == {"w"}


def test_a_resumed_run_remembers_its_best_from_before_the_crash(tmp_path):
    import shutil

    train(tmp_path, Line(), eval_target=0.0, callbacks=[KeepBestCallback()], max_steps=4, save_steps=2)
    shutil.rmtree(tmp_path / "checkpoint-4")  # killed after step 2's checkpoint; step 0 scored best so far
    model, keep = Line(), KeepBestCallback()
    trainer = train(tmp_path, model, eval_target=0.0, callbacks=[keep], max_steps=4, save_steps=2, resume=True)
    assert sorted(eval_losses(trainer)) == [0, 1, 2, 3, 4] and trainer.state.global_step == 4
    assert keep.best["step"] == 0 and model.w.item() == 0.0


def test_a_fresh_run_in_the_same_directory_starts_over(tmp_path):
    train(tmp_path, Line(), eval_target=0.0, callbacks=[KeepBestCallback()])  # leaves best.json: step 0, loss 0
    keep = KeepBestCallback()
    train(tmp_path, Line(), eval_target=0.25, callbacks=[keep], eval_on_start=False)
    assert keep.best["step"] > 0


def test_a_time_budget_stop_scores_the_last_step(tmp_path):
    trainer = train(tmp_path, Line(), eval_target=0.0, callbacks=[TimeBudgetCallback(0.0), KeepBestCallback()], max_steps=50,
                    eval_steps=10)
    assert sorted(eval_losses(trainer)) == [0, 1]  # stopped after step 1 (not an eval step), which was scored


def test_a_missing_metric_is_named():
    from transformers import TrainerControl, TrainerState

    with pytest.raises(KeyError, match="eval_accuracy.*eval_loss"):
        KeepBestCallback("accuracy", greater_is_better=True).on_evaluate(
            TrainingArguments("unused", use_cpu=True, report_to=[]), TrainerState(), TrainerControl(),
            model=Line(), metrics={"eval_loss": 1.0})  # fmt: skip


def test_answer_agreement_scores_the_greedy_answers_against_the_references():
    from llasm_training_fixtures import spoken_qa_record
    from transformers import TrainerControl, TrainerState

    from modeling_llasm.metrics.rouge import rouge_l
    from modeling_llasm.training import AnswerAgreementCallback
    from modeling_llasm.training.runner import generate_batch
    from tiny_llasm import build_tiny_llasm

    model, processor = build_tiny_llasm()
    records = [spoken_qa_record(i) for i in range(3)]
    questions = [[m for m in r["messages"] if m["role"] == "user"] for r in records]
    answers = generate_batch(model, processor, questions, 6)[0]
    assert answers[2]  # the tiny model says something
    records[1]["messages"][-1]["content"] = "a plain-string answer"
    records[2]["messages"][-1]["content"] = [{"type": "text", "text": answers[2]}]  # one answer agrees fully
    metrics, state = {"eval_loss": 1.0}, TrainerState()
    state.log_history = [{"eval_loss": 1.0, "step": 0}]
    model.train()
    AnswerAgreementCallback(records, processor, max_new_tokens=6, batch_size=2).on_evaluate(
        TrainingArguments("unused", use_cpu=True, report_to=[]), state, TrainerControl(), model=model, metrics=metrics)  # fmt: skip
    references = ["the quick brown fox", "a plain-string answer", answers[2]]
    expected = sum(rouge_l(r, a)["f1"] for r, a in zip(references, answers)) / 3
    assert metrics["eval_answer_rougeL"] == pytest.approx(expected) and expected >= 1 / 3
    assert state.log_history[-1]["eval_answer_rougeL"] == metrics["eval_answer_rougeL"]
    assert model.training  # generation ran in eval mode; the model is left training
    with pytest.raises(ValueError, match="'qa-0' has no assistant answer"):
        AnswerAgreementCallback([{"id": "qa-0", "messages": records[0]["messages"][:1]}], processor)
