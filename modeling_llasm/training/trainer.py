"""`LlasmTrainer`: a `transformers.Trainer` for the two LLaSM stages.

- applies the stage's freezing at `on_init_end` (before the optimizer exists) via [`LlasmStageCallback`];
- computes the LM loss with the LM head only at learned positions (`logits_to_keep` boolean mask);
- optionally adds text-teacher distillation (KL to the same LLM reading the transcript);
- saves hub-ready checkpoints (custom pipeline + model card) and writes its own model card on `push_to_hub`.

It runs unchanged under `torchrun` / `accelerate launch` (DDP, FSDP, DeepSpeed): every forward goes through the
wrapped model.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainerCallback
from transformers.trainer_callback import ExportableState

from ..data.collator import message_text
from .losses import distillation_loss, logits_at_labels, token_cross_entropy
from .stages import LlasmStageCallback
from .generation import generate_batch


logger = logging.getLogger(__name__)

TEACHER_KEYS = ("teacher_input_ids", "teacher_attention_mask", "teacher_labels")


class TimeBudgetCallback(TrainerCallback, ExportableState):
    """Stops training once `budget_seconds` of training time (summed over resumed runs: the elapsed time is saved
    with each checkpoint when `restore_callback_states_from_checkpoint=True`) are spent; a checkpoint is saved."""

    def __init__(self, budget_seconds: float, elapsed: float = 0.0):
        self.budget_seconds = float(budget_seconds)
        self.elapsed = float(elapsed)
        self.stopped_at_step: int | None = None
        self._last = None

    def on_train_begin(self, args, state, control, **kwargs):
        self._last = time.monotonic()

    def on_step_end(self, args, state, control, **kwargs):
        now = time.monotonic()
        self.elapsed += now - (self._last if self._last is not None else now)
        self._last = now
        if self.elapsed >= self.budget_seconds and state.global_step < state.max_steps:
            logger.info("time budget of %.0f s spent at step %d of %d: stopping", self.budget_seconds,
                        state.global_step, state.max_steps)  # fmt: skip
            self.stopped_at_step = state.global_step
            control.should_training_stop = True
            control.should_save = True
            control.should_evaluate = args.eval_strategy != "no"  # the last step is scored too (KeepBestCallback)
        return control

    def state(self) -> dict:
        return {"args": {"budget_seconds": self.budget_seconds}, "attributes": {"elapsed": self.elapsed}}


class KeepBestCallback(TrainerCallback):
    """Keeps the trainable parameters that scored best on the evaluation set and puts them back at the end of
    training, *the starting point included* when the Trainer evaluates at step 0 (`eval_on_start=True`): a run that
    only makes the model worse on held-out data ends where it started. `Trainer(load_best_model_at_end=True)` can not
    do that (it only picks among saved checkpoints, never the step-0 evaluation) and reloads whole models; here only
    the trainable tensors (an adaptor, LoRA) are kept.

    The best tensors and their score are written to `OUTPUT_DIR/best_trainable/` (safetensors + `best.json`,
    atomically) at each new best, so a run resumed from a checkpoint still knows its best, step 0 included (a fresh
    run in the same directory starts over).

    ```python
    args = TrainingArguments("out", eval_strategy="steps", eval_steps=50, eval_on_start=True, ...)
    trainer = LlasmTrainer(model=model, args=args, eval_dataset=heldout_voices, callbacks=[KeepBestCallback()], ...)
    trainer.train()  # the model now holds the best evaluated parameters; trainer.state.log_history has every score
    ```
    """

    def __init__(self, metric: str = "eval_loss", greater_is_better: bool = False):
        self.metric = metric if metric.startswith("eval_") else f"eval_{metric}"
        self.greater_is_better = greater_is_better
        self.best: dict[str, Any] | None = None  # {"step", "metric", "value"} of the kept tensors

    def directory(self, args) -> Path:
        return Path(args.output_dir) / "best_trainable"

    def on_train_begin(self, args, state, control, **kwargs):
        record = self.directory(args) / "best.json"
        self.best = None
        if state.global_step > 0 and record.is_file():  # resumed from a checkpoint: its best so far (maybe step 0)
            self.best = json.loads(record.read_text())
        return control

    def on_evaluate(self, args, state, control, model=None, metrics=None, **kwargs):
        if model is None or not metrics:
            return control
        if self.metric not in metrics:
            raise KeyError(f"KeepBestCallback: the evaluation reported no {self.metric!r} (got {sorted(metrics)}).")
        value = float(metrics[self.metric])
        if self.best is not None and not (value > self.best["value"] if self.greater_is_better else value < self.best["value"]):
            return control
        if not args.should_save:  # not the main process
            self.best = {"step": state.global_step, "metric": self.metric, "value": value}
            return control
        from safetensors.torch import save_file

        from ..files import atomic_write_json

        directory = self.directory(args)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {name: p.detach().cpu().contiguous() for name, p in model.named_parameters() if p.requires_grad}
        tmp = directory / f".trainable.safetensors.tmp-{os.getpid()}"
        save_file(tensors, str(tmp))
        os.replace(tmp, directory / "trainable.safetensors")
        self.best = {"step": state.global_step, "metric": self.metric, "value": value}
        atomic_write_json(directory / "best.json", self.best)
        logger.info("new best %s %.4f at step %d", self.metric, value, state.global_step)
        return control

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if model is None or self.best is None:
            return control
        if self.best["step"] == state.global_step:
            return control
        from safetensors.torch import load_file

        tensors = load_file(str(self.directory(args) / "trainable.safetensors"))
        parameters = dict(model.named_parameters())
        missing = sorted(set(tensors) - set(parameters))
        if missing:
            raise KeyError(f"KeepBestCallback: {self.directory(args)} holds tensors the model does not have: {missing[:5]}")
        with torch.no_grad():
            for name, tensor in tensors.items():
                parameters[name].copy_(tensor.to(parameters[name].device, parameters[name].dtype))
        logger.info("restored the best evaluated parameters: step %d (%s %.4f), not the last step %d",
                    self.best["step"], self.metric, self.best["value"], state.global_step)  # fmt: skip
        return control


class AnswerAgreementCallback(TrainerCallback):
    """Adds `eval_answer_rougeL` to every evaluation: the model's greedy answers to held-out spoken questions,
    scored by ROUGE-L against reference answers (in the recipe: the LLM's own answers to the typed transcripts). That
    is what the spoken-understanding evaluation measures, here on validation questions. List it before a
    `KeepBestCallback("answer_rougeL", greater_is_better=True)`, which then keeps the step that answers best.

    ```python
    callbacks = [AnswerAgreementCallback(heldout_records, processor), KeepBestCallback("answer_rougeL", greater_is_better=True)]
    ```
    """

    def __init__(self, records: list[dict], processor, max_new_tokens: int = 40, batch_size: int = 8):
        self.conversations = [[m for m in r["messages"] if m["role"] != "assistant"] for r in records]
        self.references = []
        for record in records:
            answer = [m for m in record["messages"] if m["role"] == "assistant"]
            if not answer:
                raise ValueError(f"AnswerAgreementCallback: record {record.get('id')!r} has no assistant answer to compare with.")
            self.references.append(message_text(answer[-1]))
        self.processor, self.max_new_tokens, self.batch_size = processor, max_new_tokens, batch_size

    def on_evaluate(self, args, state, control, model=None, metrics=None, **kwargs):
        if model is None or metrics is None:
            return control
        from ..metrics.rouge import rouge_l

        was_training = model.training
        model.eval()
        answers = []
        with torch.no_grad():
            for start in range(0, len(self.conversations), self.batch_size):
                texts, _ = generate_batch(model, self.processor, self.conversations[start : start + self.batch_size], self.max_new_tokens)
                answers.extend(texts)
        model.train(was_training)
        score = sum(rouge_l(r, a)["f1"] for r, a in zip(self.references, answers)) / max(1, len(answers))
        metrics["eval_answer_rougeL"] = score
        last = state.log_history[-1] if state.log_history else {}
        if last.get("step") == state.global_step and any(k.startswith("eval_") for k in last):
            last["eval_answer_rougeL"] = score  # beside the eval loss of the same step
        return control


def check_mixed_precision(args) -> None:
    """Refuse `fp16=True` on CPU with a clear error: accelerate enables fp16 autocast only on accelerators, so on CPU
    the Trainer would silently train in float32. (bf16 autocast does run on CPU; docs/training.md "Precision".)"""
    if getattr(args, "fp16", False) and args.device.type == "cpu":
        raise ValueError("fp16 mixed precision needs a GPU: on CPU the Trainer (accelerate) does not autocast to fp16 and "
                         "would silently train in float32. Train with bf16 (or fp32) on CPU.")  # fmt: skip


class LlasmTrainer(Trainer):
    r"""
    Args (besides those of `Trainer`):
        stage (`str`, *optional*): `"align"` or `"instruct"`; adds a [`LlasmStageCallback`] that freezes the model
            for the stage at `on_init_end`.
        llm_mode (`str`, *optional*): `"full"`, `"lora"` or `"frozen"` (default: frozen in align, full in instruct).
        train_encoder (`bool`): also train the Whisper encoder (not LLaSM; off by default).
        train_encoder_layers (`int`): also train the top N Whisper encoder layers and its final layer norm (0: none).
            The encoder then runs in every step: do not give the collator an `EncoderCache`.
        distill_weight (`float`): weight of the KL to the text teacher (needs `LlasmDataCollator(distill=True)`).
        ce_weight (`float`): weight of the cross-entropy on the labels.
        distill_temperature (`float`): softmax temperature of the distillation.
        teacher_model (*optional*): the text teacher; by default the model itself reading the transcript, with
            its LoRA adapters disabled when it is a peft model (= the base LLM).
        label_positions_only (`bool`): run the LM head only at learned positions (the full-vocabulary logits of
            prompt and audio positions are never needed for training).
        model_card (`dict`, *optional*): keyword arguments of `llasm_model_card` for the saved checkpoints.
    """

    def __init__(
        self,
        *args,
        stage: str | None = None,
        llm_mode: str | None = None,
        train_encoder: bool = False,
        train_encoder_layers: int = 0,
        distill_weight: float = 0.0,
        ce_weight: float = 1.0,
        distill_temperature: float = 1.0,
        teacher_model: torch.nn.Module | None = None,
        label_positions_only: bool = True,
        model_card: Mapping[str, Any] | None = None,
        **kwargs,
    ):
        args_obj = kwargs.get("args", args[1] if len(args) > 1 else None)
        if args_obj is not None:
            check_mixed_precision(args_obj)
        if args_obj is not None and args_obj.remove_unused_columns:
            args_obj.remove_unused_columns = False  # samples are raw chat records; the collator needs every field
        self.stage_callback = None
        if stage is not None:
            self.stage_callback = LlasmStageCallback(stage, llm_mode, train_encoder, train_encoder_layers)
            callbacks = list(kwargs.pop("callbacks", None) or [])
            kwargs["callbacks"] = [self.stage_callback, *callbacks]
        self.distill_weight = float(distill_weight)
        self.ce_weight = float(ce_weight)
        self.distill_temperature = float(distill_temperature)
        self.teacher_model = teacher_model
        self.label_positions_only = label_positions_only
        self.model_card_kwargs = dict(model_card or {})
        self._warned_moving_teacher = False
        super().__init__(*args, **kwargs)
        self.args.remove_unused_columns = False
        if (self.label_smoother is not None or self.compute_loss_func is not None) and (self.distill_weight or self.ce_weight != 1.0):
            raise ValueError(
                "distill_weight / ce_weight need LlasmTrainer's own loss, which label_smoothing_factor and "
                f"compute_loss_func replace (got distill_weight={self.distill_weight}, ce_weight={self.ce_weight}); "
                "drop one of them."
            )
        from .qlora import keep_4bit_weights_trainable

        if keep_4bit_weights_trainable(self.model):
            logger.warning("4-bit weights had been repacked for CPU inference; unpacked them so that training is correct.")

    def train(self, *args, **kwargs):
        """`Trainer.train`, then the model's forward unwrapped: accelerate wraps it in the bf16/fp16 autocast for
        training and leaves it there, so every later use of the model in this process (evaluations, generation,
        the recipe's next phases) would silently run in bf16/fp16."""
        try:
            return super().train(*args, **kwargs)
        finally:
            self.accelerator.unwrap_model(self.model, keep_fp32_wrapper=False)

    # ------------------------------------------------------------------ loss
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = dict(inputs)
        teacher = {key: inputs.pop(key) for key in TEACHER_KEYS if key in inputs}
        labels = inputs.pop("labels", None)
        if labels is None or self.label_smoother is not None or self.compute_loss_func is not None:
            if labels is not None:
                inputs["labels"] = labels
            return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)

        outputs, logits, targets = logits_at_labels(model, inputs, labels, self.label_positions_only)
        loss = logits.new_zeros(())
        if self.ce_weight:
            loss = loss + self.ce_weight * token_cross_entropy(logits, targets, num_items_in_batch)
        if self.distill_weight:
            if not teacher:
                raise ValueError("distill_weight > 0 needs teacher inputs: use LlasmDataCollator(..., distill=True).")
            teacher_logits = self.teacher_logits(model, teacher)
            loss = loss + self.distill_weight * distillation_loss(
                logits, teacher_logits, self.distill_temperature, num_items_in_batch
            )
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes  # DDP averages gradients; the count is global
        return (loss, outputs) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        # Logits exist only at the learned positions (flattened), so evaluation reports the loss only.
        return super().prediction_step(model, inputs, True, ignore_keys=ignore_keys)

    @torch.no_grad()
    def teacher_logits(self, model, teacher: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits of the text teacher at the learned response positions of `teacher_labels`."""
        teacher_inputs = {"input_ids": teacher["teacher_input_ids"], "attention_mask": teacher["teacher_attention_mask"]}
        teacher_model = self.teacher_model if self.teacher_model is not None else model
        context = contextlib.nullcontext()
        unwrapped = self.accelerator.unwrap_model(teacher_model)
        if self.teacher_model is None and hasattr(unwrapped, "disable_adapter"):
            context = unwrapped.disable_adapter()  # the base LLM, without this run's LoRA
        elif self.teacher_model is None and not self._warned_moving_teacher:
            llm = [getattr(getattr(unwrapped, "model", None), "language_model", None), getattr(unwrapped, "lm_head", None)]
            if any(p.requires_grad for module in llm if module is not None for p in module.parameters()):
                logger.warning("Distilling from the LLM being trained (a moving teacher); pass teacher_model= to fix it.")
            self._warned_moving_teacher = True
        with context:
            _, logits, _ = logits_at_labels(teacher_model, teacher_inputs, teacher["teacher_labels"], self.label_positions_only)
        return logits

    # ------------------------------------------------------------------ saving
    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Save as the Trainer does, then make the folder hub-ready (remote code, `llasm-chat` pipeline, model card)
        before anything is pushed."""
        super().save_model(output_dir, _internal_call=True)  # push (below) only once the folder is complete
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if self.args.should_save and _is_llasm(self.accelerator.unwrap_model(self.model)):
            from .hub import make_hub_ready

            make_hub_ready(output_dir, **self.card_kwargs())
            if _internal_call and self.args.push_to_hub and Path(output_dir) != Path(self.args.output_dir):
                # a checkpoint: the Trainer pushes output_dir after copying only config + weights into it, and the
                # pushed repo needs the code, processor and card too
                for path in Path(output_dir).iterdir():
                    if path.suffix in (".py", ".jinja") or path.name in ("README.md", "processor_config.json"):
                        shutil.copy(path, Path(self.args.output_dir) / path.name)
        if self.args.push_to_hub and not _internal_call:
            self.push_to_hub(commit_message="Model save", revision=self.args.hub_revision)

    def card_kwargs(self) -> dict[str, Any]:
        kwargs = dict(self.model_card_kwargs)
        kwargs.setdefault("model_name", self.args.hub_model_id or Path(self.args.output_dir).name)
        kwargs.setdefault("stages", [{
            "name": self.stage_callback.stage if self.stage_callback else "custom",
            "trained": "adaptor" + ({"full": " + LLM", "lora": " + LLM LoRA", "frozen": ""}[self.stage_callback.llm_mode]
                                    if self.stage_callback else ""),
            "data": "", "steps": self.state.global_step, "notes": "",
        }])  # fmt: skip
        return kwargs

    def create_model_card(self, *args, **kwargs) -> None:
        """Write the LLaSM model card (huggingface_hub `ModelCard`) instead of the generic Trainer one."""
        if not self.is_world_process_zero():
            return
        from .hub import llasm_model_card

        card_kwargs = self.card_kwargs()
        if kwargs.get("model_name"):
            card_kwargs["model_name"] = kwargs["model_name"]
        card_kwargs.setdefault("adapter", (Path(self.args.output_dir) / "adapter_config.json").is_file())
        llasm_model_card(**card_kwargs).save(os.path.join(self.args.output_dir, "README.md"))


def _is_llasm(model) -> bool:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(getattr(base, "config", None), "model_type", None) == "llasm"


__all__ = ["AnswerAgreementCallback", "KeepBestCallback", "LlasmTrainer", "TimeBudgetCallback", "check_mixed_precision"]
