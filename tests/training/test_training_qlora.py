"""4-bit QLoRA on CPU: LLM-only quantization, gradients, adapter save/reload, merge into a plain checkpoint."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from llasm_training_fixtures import spoken_qa_record
from transformers import LlamaConfig

from modeling_llasm import LlasmForConditionalGeneration
from modeling_llasm.data.collator import LlasmDataCollator
from modeling_llasm.training import check_hub_layout, load_qlora_model, merge_adapter, save_adapter
from modeling_llasm.training.qlora import keep_4bit_weights_trainable
from tiny_llasm import build_tiny_llasm, tiny_tokenizer


bnb = pytest.importorskip("bitsandbytes")


@pytest.fixture(scope="module")
def qlora_base(tmp_path_factory):
    """A tiny LLaSM whose LLM is wide enough for 4-bit blocks (64) and bitsandbytes' CPU packing."""
    tokenizer = tiny_tokenizer()
    text_config = LlamaConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id, max_position_embeddings=4096,
    )  # fmt: skip
    model, processor = build_tiny_llasm(text_config=text_config)
    directory = tmp_path_factory.mktemp("qlora") / "base"
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    batch = LlasmDataCollator(processor, "instruct")([spoken_qa_record(i) for i in range(3)])
    return directory, processor, batch


def test_qlora_quantizes_only_llm_linears_and_trains_lora_and_adaptor(qlora_base):
    directory, _, batch = qlora_base
    model = load_qlora_model(directory)
    quantized = [n for n, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(quantized) == 2 * 7 and all(".language_model." in n for n in quantized)
    base = model.get_base_model()
    assert not isinstance(base.lm_head, bnb.nn.Linear4bit)
    assert not any(isinstance(m, bnb.nn.Linear4bit) for m in base.model.audio_tower.modules())
    assert base.is_loaded_in_4bit and base.is_activation_checkpointing
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n or ".modules_to_save." in n for n in trainable)
    assert not any("audio_tower" in n for n in trainable)
    model.train()
    model(**batch).loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert all(g is not None for g in grads.values())
    assert all(grads[n].abs().sum() > 0 for n in grads if ".lora_B." in n or ".modules_to_save." in n)


def test_qlora_adapter_reload_and_merge_give_the_same_logits(qlora_base, tmp_path):
    directory, processor, batch = qlora_base
    model = load_qlora_model(directory)
    with torch.no_grad():  # as if trained: non-zero LoRA B and a changed adaptor
        for name, parameter in model.named_parameters():
            if ".lora_B." in name or ".modules_to_save." in name:
                parameter.add_(0.05 * torch.randn_like(parameter))
    model.eval()
    with torch.no_grad():
        trained_4bit = model(**batch).logits
    save_adapter(model, tmp_path / "adapter", processor)
    saved = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert saved["modules_to_save"] == ["multi_modal_projector"]
    assert check_hub_layout(tmp_path / "adapter") == []

    # same 4-bit base + reloaded adapter: identical
    reloaded = load_qlora_model(directory, adapter_dir=tmp_path / "adapter", is_trainable=False)
    keep_4bit_weights_trainable(reloaded)  # the same (unpacked) 4-bit kernels as the trained model, for exact logits
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch).logits, trained_4bit, rtol=0, atol=0)

    # merged plain checkpoint == fp32 base + adapter (not merged): identical up to float rounding
    merge_adapter(directory, tmp_path / "adapter", tmp_path / "merged")
    assert check_hub_layout(tmp_path / "merged") == []
    merged = LlasmForConditionalGeneration.from_pretrained(tmp_path / "merged", dtype=torch.float32).eval()
    assert not any(".lora_" in n for n, _ in merged.named_parameters())
    from peft import PeftModel

    fp32_base = LlasmForConditionalGeneration.from_pretrained(directory, dtype=torch.float32)
    unmerged = PeftModel.from_pretrained(fp32_base, str(tmp_path / "adapter")).eval()
    with torch.no_grad():
        merged_logits, unmerged_logits = merged(**batch).logits, unmerged(**batch).logits
    torch.testing.assert_close(merged_logits, unmerged_logits, rtol=1e-5, atol=1e-5)
    # vs the 4-bit training model only the base weights' NF4 rounding differs: close, not equal
    assert (merged_logits - trained_4bit).abs().max() < 0.25 * merged_logits.abs().max()


def test_stale_gguf_quantization_config_is_dropped_for_training(tmp_path):
    """A base whose LLM was converted from GGUF can keep the GGUF quantization_config although its weights are
    floats: transformers then flags the model as quantized (the Trainer refuses it, 4-bit loading clashes)."""
    from transformers.trainer_utils import validate_quantization_for_training

    from modeling_llasm.training.loading import load_llasm

    model, processor = build_tiny_llasm()
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["text_config"]["quantization_config"] = {"dequantize": False, "gguf_file": "x.gguf", "quant_method": "gguf"}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="quantized"):
        validate_quantization_for_training(LlasmForConditionalGeneration.from_pretrained(tmp_path, dtype=torch.float32))
    loaded = load_llasm(tmp_path)
    validate_quantization_for_training(loaded)
    assert not hasattr(loaded.config.text_config, "quantization_config")
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor)


def test_eval_before_training_does_not_corrupt_qlora_gradients(qlora_base, tmp_path):
    """bitsandbytes repacks 4-bit weights for CPU inference in eval mode (AVX512-BF16 CPUs) and then has no
    autograd for them: our loaders keep the training layout, and LlasmTrainer undoes a repacking done earlier."""
    from modeling_llasm.training import LlasmTrainer
    from transformers import TrainingArguments

    directory, processor, batch = qlora_base

    def gradients(eval_first: bool, repack: bool, unpack: bool = True):
        torch.manual_seed(0)
        model = load_qlora_model(directory, activation_checkpointing=False)
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if ".lora_B." in name:
                    parameter.fill_(0.01)
        if repack:  # a model used for CPU inference before training
            for module in model.modules():
                if isinstance(module, bnb.nn.Linear4bit):
                    module.support_avx512bf16_for_cpu = True
        if eval_first:
            model.eval()
            with torch.no_grad():
                model(**batch)
        if repack and unpack:
            LlasmTrainer(model=model, args=TrainingArguments(str(tmp_path), use_cpu=True, report_to=[]))
        model.train()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model(**batch).loss.backward()
        no_autograd = any("autograd kernel was not registered" in str(w.message) for w in caught)
        return {n: p.grad for n, p in model.named_parameters() if p.requires_grad}, no_autograd

    def distance(a, b):
        return max(float((a[n] - b[n]).norm() / b[n].norm()) for n in b)

    reference, _ = gradients(eval_first=False, repack=False)
    kept, no_autograd = gradients(eval_first=True, repack=False)  # our loader never repacks: identical
    assert not no_autograd and distance(kept, reference) < 1e-5
    # repacked, then unpacked by LlasmTrainer: the backward runs through differentiable 4-bit kernels again (the
    # weights are those of the repacking's inverse, whose block scales are re-quantized: close, not identical)
    _, no_autograd = gradients(eval_first=True, repack=True)
    assert not no_autograd
    if bnb.functional.has_avx512bf16():  # only such CPUs repack; without the unpacking the gradients are wrong
        broken, no_autograd = gradients(eval_first=True, repack=True, unpack=False)
        assert no_autograd and distance(broken, reference) > 0.5
