"""Stage control: the Trainer's optimizer holds exactly the parameters each stage trains."""

from __future__ import annotations

import pytest
import torch
from llasm_training_fixtures import spoken_qa_record
from transformers import Trainer, TrainerCallback, TrainingArguments

from modeling_llasm.data.collator import LlasmDataCollator
from modeling_llasm.training import LlasmStageCallback, LlasmTrainer, prepare_stage
from tiny_llasm import build_tiny_llasm


def optimizer_parameter_names(trainer, model) -> set[str]:
    held = {id(p) for group in trainer.create_optimizer().param_groups for p in group["params"]}
    return {name for name, p in model.named_parameters() if id(p) in held}


def names(model, *prefixes, lora_only=False) -> set[str]:
    return {n for n, _ in model.named_parameters() if any(n.startswith(p) for p in prefixes) and (not lora_only or ".lora_" in n)}


def make_args(tmp_path) -> TrainingArguments:
    return TrainingArguments(str(tmp_path), use_cpu=True, report_to=[], max_steps=1, save_strategy="no")


@pytest.mark.parametrize("stage,llm_mode", [("align", None), ("instruct", None), ("instruct", "frozen"), ("instruct", "lora")])
def test_trainer_optimizer_holds_exactly_the_stage_parameters(tmp_path, stage, llm_mode):
    model, processor = build_tiny_llasm()
    if llm_mode == "lora":
        model = prepare_stage(model, stage, "lora")  # wraps with peft (before the Trainer)
        for parameter in model.parameters():  # undo the freezing: the callback alone must get it right
            parameter.requires_grad_(True)
    trainer = LlasmTrainer(model=model, args=make_args(tmp_path), train_dataset=[spoken_qa_record(0)],
                           data_collator=LlasmDataCollator(processor, stage), stage=stage, llm_mode=llm_mode)  # fmt: skip
    held = optimizer_parameter_names(trainer, model)
    if llm_mode == "lora":
        prefix = "base_model.model."
        projector = {n for n in names(model, prefix + "model.multi_modal_projector.") if ".modules_to_save." in n}
        expected = projector | names(model, prefix + "model.language_model.", lora_only=True)
        targets = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
        assert expected - projector and all(any(f".{t}." in n for t in targets) for n in expected - projector)
    elif stage == "align" or llm_mode == "frozen":
        expected = names(model, "model.multi_modal_projector.")
    else:
        expected = names(model, "model.multi_modal_projector.", "model.language_model.", "lm_head.")
    assert held == expected
    assert not any("audio_tower" in n for n in held)


def test_whisper_resampler_decoder_stays_frozen_like_the_encoder(tmp_path):
    model, processor = build_tiny_llasm(adaptor_type="whisper_resampler", num_queries=4)
    trainer = LlasmTrainer(model=model, args=make_args(tmp_path), train_dataset=[spoken_qa_record(0)],
                           data_collator=LlasmDataCollator(processor, "align"), stage="align")  # fmt: skip
    assert optimizer_parameter_names(trainer, model) == names(model, "model.multi_modal_projector.linear.")


class FreezeAtTrainBegin(TrainerCallback):
    def on_train_begin(self, args, state, control, model=None, **kwargs):
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(name.startswith("model.multi_modal_projector."))


def test_stage_callback_acts_before_the_optimizer_exists_unlike_on_train_begin(tmp_path):
    """Why the callback uses on_init_end: a freeze in on_train_begin comes after the optimizer collected everything."""
    model, processor = build_tiny_llasm()
    late = Trainer(model=model, args=make_args(tmp_path), callbacks=[FreezeAtTrainBegin()],
                   train_dataset=[spoken_qa_record(0)], data_collator=LlasmDataCollator(processor, "align"))  # fmt: skip
    trainable_at_init = {n for n, p in model.named_parameters() if p.requires_grad}  # Whisper's positions are fixed
    assert optimizer_parameter_names(late, model) == trainable_at_init
    model, processor = build_tiny_llasm()
    early = Trainer(model=model, args=make_args(tmp_path), callbacks=[LlasmStageCallback("align")],
                    train_dataset=[spoken_qa_record(0)], data_collator=LlasmDataCollator(processor, "align"))  # fmt: skip
    assert optimizer_parameter_names(early, model) == names(model, "model.multi_modal_projector.")


def test_train_encoder_layers_trains_the_top_layers_and_the_final_norm_only(tmp_path):
    """The tiny encoder has 2 layers: N=1 adds layer 1 and the encoder's final layer norm to the adaptor; the
    convolutions, positions and layer 0 stay frozen; a step changes exactly those tensors."""
    model, processor = build_tiny_llasm()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = LlasmTrainer(model=model, args=make_args(tmp_path), train_dataset=[spoken_qa_record(0)],
                           data_collator=LlasmDataCollator(processor, "align"), stage="align", train_encoder_layers=1)  # fmt: skip
    held = optimizer_parameter_names(trainer, model)
    assert held == names(model, "model.multi_modal_projector.", "model.audio_tower.layers.1.", "model.audio_tower.layer_norm.")
    trainer.train()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed & names(model, "model.audio_tower.layers.1.") and changed <= held
    assert not changed & names(model, "model.audio_tower.conv1.", "model.audio_tower.conv2.", "model.audio_tower.layers.0.")


def test_train_encoder_layers_is_checked(tmp_path):
    from modeling_llasm.training import EncoderCache
    from modeling_llasm.training.runner import ctc_align, train_stage

    model, processor = build_tiny_llasm()
    with pytest.raises(ValueError, match="between 1 and the encoder's 2 layers, got 3"):
        prepare_stage(model, "align", train_encoder_layers=3)
    cache = EncoderCache(model, processor, cache_dir=tmp_path / "cache")
    for run in (ctc_align, train_stage):
        extra = ("align",) if run is train_stage else ()
        with pytest.raises(ValueError, match="encoder_cache would freeze"):
            run(model, processor, [spoken_qa_record(0)], make_args(tmp_path), *extra, encoder_cache=cache, train_encoder_layers=1)


@pytest.mark.parametrize("option", [{"train_encoder": True}, {"train_encoder_layers": 1}])
def test_train_stage_and_ctc_align_train_the_encoder_when_asked(tmp_path, option):
    """The examples' `--train_encoder` / `--train_encoder_layers` reach the Trainer's stage callback (it used to
    re-freeze the encoder that `prepare_stage` had unfrozen) and the CTC aligner."""
    from modeling_llasm.training.runner import ctc_align, train_stage

    model, processor = build_tiny_llasm()
    layer0 = names(model, "model.audio_tower.layers.0.")
    for run, extra in ((train_stage, ("align",)), (ctc_align, ())):
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        run(model, processor, [spoken_qa_record(0), spoken_qa_record(1)], make_args(tmp_path / run.__name__), *extra, **option)
        changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
        assert changed & names(model, "model.audio_tower.layers.1."), run.__name__
        assert bool(changed & layer0) == ("train_encoder" in option), run.__name__
