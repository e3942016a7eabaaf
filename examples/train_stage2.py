#!/usr/bin/env python
"""LLaSM stage 2 (cross-modal instruction fine-tuning): Whisper encoder frozen, adaptor + LLM trained on
spoken-instruction conversations (full fine-tuning, LoRA, or 4-bit QLoRA), optionally distilled from the text
teacher (the LLM reading the transcript instead of the audio).

    python examples/train_stage2.py --model_name_or_path runs/stage1 --train_manifest data/stage2/train \
        --generate_responses --output_dir runs/stage2 --max_steps 300 --per_device_train_batch_size 4 \
        --learning_rate 2e-4 --llm_mode lora --distill_weight 1.0 --ce_weight 0.5 --bf16 --use_cpu

    # 4-bit QLoRA (bitsandbytes; CPU works, CUDA is much faster)
    python examples/train_stage2.py ... --qlora --activation_checkpointing

    # multi-GPU: unchanged (see examples/accelerate/*.yaml for DDP, FSDP, DeepSpeed ZeRO-3)
    accelerate launch --config_file examples/accelerate/fsdp.yaml examples/train_stage2.py ...

Resume with `--resume_from_checkpoint last`. Records without an assistant turn (spoken questions) need
`--generate_responses`: the model's own LLM answers each transcript (text only) and that answer is the target.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from transformers import HfArgumentParser, TrainingArguments

from modeling_llasm.training.arguments import DataArguments, ModelArguments, load_model, resolve_model_dir
from modeling_llasm.training.encoder_cache import EncoderCache, clips_of
from modeling_llasm.training.qlora import merge_adapter
from modeling_llasm.files import atomic_write_json
from modeling_llasm.training.runner import generate_responses, read_records, resolve_resume, train_stage, usable_responses


logger = logging.getLogger("train_stage2")


def main(argv: list[str] | None = None) -> int:
    parser = HfArgumentParser((ModelArguments, DataArguments, TrainingArguments))
    model_args, data_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    logging.basicConfig(level=logging.INFO if training_args.should_log else logging.WARNING, format="%(message)s")
    output_dir = Path(training_args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)

    model_dir = resolve_model_dir(model_args, training_args)
    model, processor, llm_mode = load_model(model_args, model_dir, "instruct")
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    train = read_records(data_args.train_manifest, data_args.max_train_samples)
    heldout = read_records(data_args.eval_manifest, data_args.max_eval_samples) if data_args.eval_manifest else None

    if data_args.generate_responses:
        with training_args.main_process_first(desc="stage-2 responses"):
            questions = [r for r in train if r["messages"][-1]["role"] != "assistant"]
            generated = generate_responses(base, processor, questions, output_dir / "responses.jsonl")
        # answers cut by max_new_tokens end at their last full sentence; those without one are dropped (logged)
        answered = {r["id"]: r for r in usable_responses(generated, where=str(output_dir / "responses.jsonl"))}
        dropped = {r["id"] for r in generated} - set(answered)
        train = [answered.get(r.get("id"), r) for r in train if r.get("id") not in dropped]
    missing = [r.get("id") for r in train if r["messages"][-1]["role"] != "assistant"]
    if missing:
        raise ValueError(f"{len(missing)} training records have no assistant turn (e.g. {missing[:3]}); pass --generate_responses.")

    cache = None
    if data_args.encoder_cache and not (model_args.train_encoder or model_args.train_encoder_layers):  # a trained encoder is not cached
        cache = EncoderCache(base, processor, cache_dir=data_args.encoder_cache_dir)
        with training_args.main_process_first(desc="encoder cache"):
            cache.precompute(clips_of(train + (heldout or [])), progress=training_args.should_log)

    resume = resolve_resume(training_args.resume_from_checkpoint, output_dir)
    trainer, output = train_stage(
        model, processor, train, training_args, "instruct", llm_mode, eval_records=heldout, encoder_cache=cache,
        distill_weight=data_args.distill_weight, ce_weight=data_args.ce_weight, train_encoder=model_args.train_encoder,
        train_encoder_layers=model_args.train_encoder_layers,
        distill_temperature=data_args.distill_temperature, max_length=data_args.max_length, resume=resume,
        model_card={"model_name": training_args.hub_model_id or output_dir.name},
    )  # fmt: skip
    trainer.save_model()  # full model, or adapter + adaptor for (Q)LoRA; hub-ready either way
    summary = {"resumed_from": resume, "global_step": trainer.state.global_step, "train_loss": output.training_loss,
               "llm_mode": llm_mode, "qlora": model_args.qlora}  # fmt: skip
    if training_args.push_to_hub:
        trainer.push_to_hub(commit_message="LLaSM stage 2")
    if llm_mode == "lora" and model_args.merge_lora and trainer.is_world_process_zero():
        # from the saved adapter, never the live model: under FSDP/ZeRO-3 a rank holds only shards, and QLoRA
        # must not be merged into its 4-bit weights; the fp32 base + adapter are folded instead
        merged_dir = output_dir / "merged"
        merge_adapter(model_dir, output_dir, merged_dir, processor, model_name=merged_dir.name)
        summary["merged_dir"] = str(merged_dir)
    if trainer.is_world_process_zero():
        atomic_write_json(output_dir / "train_summary.json", summary, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
