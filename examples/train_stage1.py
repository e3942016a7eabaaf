#!/usr/bin/env python
"""LLaSM stage 1 (modality alignment): Whisper encoder and LLM frozen, the adaptor learns to transcribe.

Optional CTC pre-alignment first (`--ctc_steps N`: adaptor vs the frozen LLM embedding matrix, the LLM never runs),
then the LM loss on the transcript tokens. Every TrainingArguments option works (`--help`).

    python examples/train_stage1.py --train_manifest data/stage1/train --eval_manifest data/stage1/heldout \
        --output_dir runs/stage1 --max_steps 400 --per_device_train_batch_size 8 --learning_rate 2e-3 \
        --bf16 --use_cpu --ctc_steps 300 --eval_wer

    # multi-process / multi-GPU: unchanged
    torchrun --nproc_per_node 2 examples/train_stage1.py ...
    accelerate launch --config_file examples/accelerate/ddp.yaml examples/train_stage1.py ...

Resume an interrupted run with `--resume_from_checkpoint last` (or a checkpoint path).
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from pathlib import Path

from transformers import HfArgumentParser, TrainerCallback, TrainingArguments

from modeling_llasm.training.arguments import DataArguments, ModelArguments, load_model, resolve_model_dir
from modeling_llasm.training.encoder_cache import EncoderCache, clips_of
from modeling_llasm.files import atomic_write_json
from modeling_llasm.training.runner import (
    ctc_align, evaluate_wer, last_checkpoint, load_adaptor, read_records, resolve_resume, save_adaptor, train_stage,
)  # fmt: skip


logger = logging.getLogger("train_stage1")


class RecordStart(TrainerCallback):
    """Remembers the step training (re)started from, for the run summary."""

    start_step = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.start_step = state.global_step


def main(argv: list[str] | None = None) -> int:
    parser = HfArgumentParser((ModelArguments, DataArguments, TrainingArguments))
    model_args, data_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    logging.basicConfig(level=logging.INFO if training_args.should_log else logging.WARNING, format="%(message)s")
    if model_args.llm_mode not in (None, "frozen"):
        logger.warning("stage 1 normally keeps the LLM frozen; training it with llm_mode=%s", model_args.llm_mode)

    model_dir = resolve_model_dir(model_args, training_args)
    model, processor, llm_mode = load_model(model_args, model_dir, "align")
    train = read_records(data_args.train_manifest, data_args.max_train_samples)
    heldout = read_records(data_args.eval_manifest, data_args.max_eval_samples) if data_args.eval_manifest else None

    cache = None
    if data_args.encoder_cache and not (model_args.train_encoder or model_args.train_encoder_layers):  # a trained encoder is not cached
        cache = EncoderCache(model.get_base_model() if hasattr(model, "get_base_model") else model, processor,
                             cache_dir=data_args.encoder_cache_dir)  # fmt: skip
        with training_args.main_process_first(desc="encoder cache"):
            cache.precompute(clips_of(train + (heldout or [])), progress=training_args.should_log)

    output_dir = Path(training_args.output_dir)
    resume = resolve_resume(training_args.resume_from_checkpoint, output_dir)
    if data_args.ctc_steps > 0:
        ctc_dir = output_dir / "ctc"
        adaptor = ctc_dir / "adaptor.safetensors"
        if resume and adaptor.is_file():  # only a resumed run may reuse it: a new run must not inherit an old adaptor
            logger.info("CTC pre-alignment already done: loading %s", adaptor)
            load_adaptor(model, adaptor)
        else:
            ctc_args = dataclasses.replace(training_args, output_dir=str(ctc_dir), max_steps=data_args.ctc_steps,
                                           learning_rate=data_args.ctc_learning_rate, push_to_hub=False,
                                           eval_strategy="no", load_best_model_at_end=False)  # fmt: skip
            ctc_align(model, processor, train, ctc_args, encoder_cache=cache,
                      resume=last_checkpoint(ctc_dir) if resume else None, train_encoder=model_args.train_encoder,
                      train_encoder_layers=model_args.train_encoder_layers)  # fmt: skip
            if training_args.should_save:
                save_adaptor(model, adaptor)

    start = RecordStart()
    trainer, output = train_stage(
        model, processor, train, training_args, "align", llm_mode, eval_records=heldout, encoder_cache=cache,
        distill_weight=data_args.distill_weight, ce_weight=data_args.ce_weight, train_encoder=model_args.train_encoder,
        train_encoder_layers=model_args.train_encoder_layers,
        distill_temperature=data_args.distill_temperature, max_length=data_args.max_length, resume=resume,
        model_card={"model_name": training_args.hub_model_id or output_dir.name}, callbacks=[start],
    )  # fmt: skip
    trainer.save_model()  # hub-ready: safetensors, processor, remote code, llasm-chat pipeline, model card
    summary = {"resumed_from": resume, "start_step": start.start_step, "global_step": trainer.state.global_step,
               "train_loss": output.training_loss, "metrics": output.metrics}  # fmt: skip
    if data_args.eval_wer and heldout and trainer.is_world_process_zero():
        summary["heldout_wer"] = evaluate_wer(model, processor, heldout, output_dir / "heldout_transcripts.jsonl")
        logger.info("held-out WER %.4f", summary["heldout_wer"])
    if trainer.is_world_process_zero():
        atomic_write_json(output_dir / "train_summary.json", summary, default=str)
    if training_args.push_to_hub:
        trainer.push_to_hub(commit_message="LLaSM stage 1")
    return 0


if __name__ == "__main__":
    sys.exit(main())
