"""Training in each precision, forced on any CPU (issue 23): the Trainer's bf16 / fp16 autocast for every adaptor kind
(stage-1 LM loss, stage-1 CTC, stage 2 with LoRA and the text teacher), QLoRA's bf16 compute dtype under bf16
autocast, and the recipe's `--precision` (explicit values, `auto`, resume). No test here asks the CPU what it is fast
at: `bf16_is_faster` is replaced wherever `auto` is tested (and refuses to run in every training test, conftest.py)."""

from __future__ import annotations

import json

import pytest
import torch
from llasm_training_fixtures import spoken_qa_record, tiny_training_files  # noqa: F401  (fixture)
from transformers import TrainingArguments

from modeling_llasm.cli import main
from modeling_llasm.cli.train import PRECISIONS as CLI_PRECISIONS
from modeling_llasm.data.collator import LlasmDataCollator
from modeling_llasm.training import LlasmTrainer
from modeling_llasm.training import recipe as recipe_module
from modeling_llasm.training.recipe import PRECISIONS, Recipe, RecipeSettings, choose_precision
from modeling_llasm.training.runner import ctc_align
from modeling_llasm.training.stages import default_lora_config, prepare_stage
from tiny_llasm import TINY_ADAPTORS, build_tiny_llasm, reader_llasm


AUTOCAST = {"bf16": torch.bfloat16}  # fp16 training on CPU is refused (test_fp16_training_on_cpu_is_refused)


def trainer_args(tmp_path, precision: str) -> TrainingArguments:
    return TrainingArguments(str(tmp_path), use_cpu=True, report_to=[], max_steps=1, save_strategy="no", learning_rate=1e-2,
                             per_device_train_batch_size=2, **{precision: True})  # fmt: skip


def lm_head_dtypes(model) -> set:
    seen = set()
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    base.lm_head.register_forward_hook(lambda _m, _a, output: seen.add(output.dtype))
    return seen


def trained(before: dict, model) -> list[str]:
    return [n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p.detach(), before[n])]


@pytest.mark.parametrize("precision", sorted(AUTOCAST))
@pytest.mark.parametrize("adaptor", sorted(TINY_ADAPTORS))
@pytest.mark.parametrize("stage", ["align", "instruct-lora"])
def test_a_trainer_step_in_autocast(stage, adaptor, precision, tmp_path):
    """One optimizer step of stage 1 (LM loss, adaptor only) or stage 2 (LoRA + adaptor, CE + text-teacher KL) under
    the Trainer's bf16 autocast: finite loss, the adaptor (and LoRA) move. (fp16 autocast of the model itself is
    tested in tests/core/test_precision.py; the Trainer runs it only on a GPU.)"""
    model, processor = TINY_ADAPTORS[adaptor]()
    if stage == "align":
        kwargs = {"stage": "align"}
        prepare_stage(model, "align")
    else:
        model = prepare_stage(model, "instruct", "lora", lora_config=default_lora_config(r=4, lora_alpha=8))
        kwargs = {"stage": "instruct", "llm_mode": "lora", "distill_weight": 1.0, "ce_weight": 0.5}
    seen = lm_head_dtypes(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = LlasmTrainer(model=model, args=trainer_args(tmp_path, precision), train_dataset=[spoken_qa_record(i) for i in range(2)],
                           data_collator=LlasmDataCollator(processor, kwargs["stage"], distill=stage != "align"), **kwargs)  # fmt: skip
    output = trainer.train()
    assert AUTOCAST[precision] in seen  # the student's forward ran in the autocast dtype
    assert output.training_loss > 0 and torch.isfinite(torch.tensor(output.training_loss))
    moved = trained(before, model)
    assert moved and any("multi_modal_projector" in n for n in moved)
    if stage != "align":
        assert any(".lora_" in n for n in moved)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    seen.clear()  # after training the model computes in its own dtype again (accelerate's autocast wrapper removed)
    with torch.no_grad():
        model(**LlasmDataCollator(processor, "instruct")([spoken_qa_record(0)]))
    assert seen == {torch.float32}


@pytest.mark.parametrize("precision", sorted(AUTOCAST))
@pytest.mark.parametrize("adaptor", ["stack_mlp", "ctc_compress"])
def test_ctc_alignment_in_autocast(adaptor, precision, tmp_path):
    """Stage-1a CTC (`ctc_align`, the recipe's phase) under the Trainer's autocast: the CTC scores stay float32."""
    model, processor = TINY_ADAPTORS[adaptor]()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    _, output = ctc_align(model, processor, [spoken_qa_record(i) for i in range(2)], trainer_args(tmp_path, precision))
    assert output.training_loss > 0 and torch.isfinite(torch.tensor(output.training_loss))
    assert any("multi_modal_projector" in n for n in trained(before, model))


def test_fp16_training_on_cpu_is_refused(tiny_training_files, tmp_path, monkeypatch):
    """accelerate autocasts to fp16 only on accelerators: on CPU `fp16=True` would silently train in float32, so the
    Trainer, the CTC phase and the recipe refuse it, naming the problem."""
    model, processor = build_tiny_llasm()
    args = trainer_args(tmp_path, "fp16")
    with pytest.raises(ValueError, match="fp16 mixed precision needs a GPU"):
        LlasmTrainer(model=model, args=args, data_collator=LlasmDataCollator(processor, "align"), stage="align")
    with pytest.raises(ValueError, match="fp16 mixed precision needs a GPU"):
        ctc_align(model, processor, [spoken_qa_record(0)], args)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    base_dir, data_dir = tiny_training_files
    argv = ["train", "--smoke", "--base-dir", str(base_dir), "--data-dir", str(data_dir), "--run-dir", str(tmp_path / "run"),
            "--no-progress", "--precision", "fp16"]  # fmt: skip
    with pytest.raises(ValueError, match="--precision fp16 needs a CUDA GPU"):
        main(argv)
    assert not (tmp_path / "run" / "plan.json").exists()  # refused before any work


@pytest.mark.parametrize("adaptor", ["stack_mlp", "whisper_reader"])
def test_qlora_bf16_compute_under_bf16_autocast(adaptor, tmp_path):
    """QLoRA's default compute dtype (bf16) inside the Trainer's bf16 autocast: gradients reach LoRA and the adaptor."""
    bnb = pytest.importorskip("bitsandbytes")
    from transformers import LlamaConfig

    from modeling_llasm.training import load_qlora_model
    from tiny_llasm import tiny_tokenizer

    tokenizer = tiny_tokenizer()
    text_config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
                              num_key_value_heads=2, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                              eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id)  # fmt: skip
    if adaptor == "whisper_reader":
        model, processor = reader_llasm()
        model.model.language_model = type(model.model.language_model)(text_config)  # the reader's tables fit: ids < vocab
        model.lm_head = torch.nn.Linear(64, text_config.vocab_size, bias=False)
        model.config.text_config = text_config
        model.model.multi_modal_projector.state_proj = torch.nn.Linear(16, 64)
    else:
        model, processor = build_tiny_llasm(text_config=text_config)
    model.save_pretrained(tmp_path / "base")
    processor.save_pretrained(tmp_path / "base")
    model = load_qlora_model(tmp_path / "base", activation_checkpointing=False)
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())
    batch = LlasmDataCollator(processor, "instruct")([spoken_qa_record(i) for i in range(2)])
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(**batch).loss
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert torch.isfinite(loss) and all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert any(".lora_B." in n and g.abs().sum() > 0 for n, g in grads.items())


# ---------------------------------------------------------------- the recipe's precision


@pytest.mark.parametrize("faster", [True, False])
def test_auto_precision_follows_the_speed_probe_and_explicit_values_win(faster, monkeypatch):
    monkeypatch.setattr(recipe_module, "bf16_is_faster", lambda device: faster)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # fp16 is a choice only where CUDA is
    assert choose_precision("auto")[0] == ("bf16" if faster else "fp32")
    for explicit in ("fp32", "bf16", "fp16"):
        assert choose_precision(explicit) == (explicit, "asked (--precision)")
    assert CLI_PRECISIONS == PRECISIONS
    with pytest.raises(ValueError, match="precision must be one of"):
        choose_precision("int8")
    with pytest.raises(ValueError, match="precision must be one of .* got 'float16'"):
        RecipeSettings(run_dir="unused", precision="float16")


def test_a_resumed_run_keeps_its_planned_precision(tmp_path):
    (tmp_path / "plan.json").write_text(json.dumps({"stage2": {"max_steps": 2}, "precision": {"name": "bf16", "reason": "asked (--precision)"}}))
    recipe = Recipe(RecipeSettings(run_dir=tmp_path, precision="auto", resume=True))
    recipe.plan()
    assert recipe.precision == "bf16" and recipe.summary["precision"]["name"] == "bf16"
    assert isinstance(recipe._autocast(), torch.autocast)
    with pytest.raises(ValueError, match="planned in bf16 .* --precision bf16 or auto"):
        Recipe(RecipeSettings(run_dir=tmp_path, precision="fp16", resume=True)).plan()


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_recipe_smoke_in_each_explicit_precision(precision, tiny_training_files, tmp_path):
    """`llasm train --smoke --precision X` (the stack_mlp base: every training phase runs): the choice is logged with
    the plan, stored in plan.json and summary.json, and reaches every phase's Trainer. `auto` is the speed probe
    (tested above with the probe replaced, so that no test depends on this CPU); fp16 is refused on CPU (above)."""
    base_dir, data_dir = tiny_training_files
    run_dir = tmp_path / "run"
    argv = ["train", "--smoke", "--base-dir", str(base_dir), "--data-dir", str(data_dir), "--run-dir", str(run_dir),
            "--no-progress", "--no-understanding", "--precision", precision]  # fmt: skip
    assert main(argv) == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["precision"] == {"name": precision, "reason": "asked (--precision)"}
    assert json.loads((run_dir / "plan.json").read_text())["precision"]["name"] == precision
    assert f"precision: {precision} (asked (--precision))" in (run_dir / "train.log").read_text()
    assert all(summary["phases"][name]["steps"] == 2 for name in ("stage1_ctc", "stage1_lm", "stage2"))
    for phase in ("stage1_ctc", "stage1_lm", "stage2"):
        args = torch.load(run_dir / phase / "checkpoint-2" / "training_args.bin", weights_only=False)
        assert (args.bf16, args.fp16) == (precision == "bf16", precision == "fp16"), phase
