"""transformers' v5 layout and conventions: `LlasmModel` as `model` beside `lm_head`, checkpoints of the earlier layout,
`return_dict=False`, the old cache keyword, the placeholder mask from `inputs_embeds`."""

from __future__ import annotations

import re
import warnings

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModel

import modeling_llasm  # noqa: F401  (registers the Auto classes)
from modeling_llasm import LlasmForConditionalGeneration, LlasmModel
from tiny_llasm import TINY_ADAPTORS, build_tiny_llasm, run_without_the_package, tone


# The layout every checkpoint was written in before `LlasmModel` held the towers, spelled out by hand (not through
# the conversion mapping under test): the generative class nested the whole causal LM.
OLD_NAMES = [
    (r"^model\.audio_tower\.", "audio_tower."),
    (r"^model\.multi_modal_projector\.", "multi_modal_projector."),
    (r"^model\.language_model\.", "language_model.model."),
    (r"^lm_head\.", "language_model.lm_head."),
]


def old_layout(state_dict: dict[str, torch.Tensor], tied: bool) -> dict[str, torch.Tensor]:
    renamed = {}
    for key, tensor in state_dict.items():
        if tied and key == "lm_head.weight":
            continue  # a tied head was never saved
        for pattern, replacement in OLD_NAMES:
            key, count = re.subn(pattern, replacement, key)
            if count:
                break
        renamed[key] = tensor.contiguous().clone()
    return renamed


def inputs_for(processor, seconds: float = 1.3):
    messages = [{"role": "user", "content": [{"type": "audio", "array": tone(seconds), "sampling_rate": 16000},
                                             {"type": "text", "text": "what is it?"}]}]  # fmt: skip
    return processor.apply_chat_template(messages, add_generation_prompt=True)


def save_old_checkpoint(model, processor, directory) -> None:
    """A checkpoint as the code before the v5 layout wrote it: its config, processor and old-layout weights."""
    model.save_pretrained(directory)  # config, generation config (+ weights, replaced below)
    processor.save_pretrained(directory)
    for path in directory.glob("*.safetensors"):
        path.unlink()
    save_file(old_layout(model.state_dict(), model.config.tie_word_embeddings), str(directory / "model.safetensors"),
              metadata={"format": "pt"})  # fmt: skip


@pytest.mark.parametrize("adaptor,tied", [("stack_mlp", False), ("stack_mlp", True), ("whisper_reader", False), ("ctc_compress", False)])
def test_an_old_layout_checkpoint_loads_with_identical_logits(tmp_path, adaptor, tied):
    model, processor = build_tiny_llasm(tie_word_embeddings=True) if tied else TINY_ADAPTORS[adaptor]()
    assert model.config.tie_word_embeddings == tied
    save_old_checkpoint(model, processor, tmp_path)
    inputs = inputs_for(processor)
    with torch.no_grad():
        expected = model(**inputs).logits
        hidden = model.model(**inputs).last_hidden_state
    loaded, info = LlasmForConditionalGeneration.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert (loaded.lm_head.weight is loaded.get_input_embeddings().weight) == tied
    with torch.no_grad():
        assert torch.equal(loaded(**inputs).logits, expected)
        assert torch.equal(AutoModel.from_pretrained(tmp_path)(**inputs).logits, expected)
        assert torch.equal(LlasmModel.from_pretrained(tmp_path)(**inputs).last_hidden_state, hidden)


def test_save_pretrained_writes_the_layout_every_earlier_checkpoint_has(tmp_path):
    """`save_pretrained` reverts the conversion mapping (as for transformers' Qwen2-Audio): the code of an earlier
    checkpoint (its `trust_remote_code` copy) reads what this one writes, and vice versa."""
    model, processor = build_tiny_llasm()
    model.save_pretrained(tmp_path)
    saved = load_file(str(tmp_path / "model.safetensors"))
    assert saved.keys() == old_layout(model.state_dict(), tied=False).keys()
    # the new layout, saved as is, loads as well
    model.save_pretrained(tmp_path / "v5", save_original_format=False)
    assert "lm_head.weight" in load_file(str(tmp_path / "v5" / "model.safetensors"))
    inputs = inputs_for(processor)
    with torch.no_grad():
        assert torch.equal(LlasmForConditionalGeneration.from_pretrained(tmp_path / "v5")(**inputs).logits, model(**inputs).logits)


def test_an_old_checkpoint_loads_with_trust_remote_code_from_its_copied_code(tmp_path):
    """The code copied beside the weights registers the same conversion mapping: with the package blocked,
    `trust_remote_code` reads the old layout."""
    model, processor = build_tiny_llasm()
    save_old_checkpoint(model, processor, tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / "modeling_llasm.py").is_file()
    inputs = inputs_for(processor)
    torch.save(dict(inputs), tmp_path / "inputs.pt")
    with torch.no_grad():
        torch.save(model(**inputs).logits, tmp_path / "reference.pt")
    run_without_the_package(
        f"""
        import torch
        from transformers import AutoModel
        model, info = AutoModel.from_pretrained({str(tmp_path / 'ckpt')!r}, trust_remote_code=True, output_loading_info=True)
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        assert not info["missing_keys"] and not info["unexpected_keys"], info
        with torch.no_grad():
            logits = model(**torch.load({str(tmp_path / 'inputs.pt')!r}, weights_only=True)).logits
        assert torch.equal(logits, torch.load({str(tmp_path / 'reference.pt')!r}, weights_only=True))
        print("REMOTE-CODE-OK")
        """,
        tmp_path,
    )


def test_v5_layout_and_base_model():
    model, _ = build_tiny_llasm()
    assert model.base_model_prefix == "model" and model.base_model is model.model and isinstance(model.model, LlasmModel)
    assert {name for name, _ in model.named_children()} == {"model", "lm_head"}
    assert {name for name, _ in model.model.named_children()} == {"audio_tower", "multi_modal_projector", "language_model"}
    assert model.get_output_embeddings() is model.lm_head
    assert model.get_input_embeddings() is model.model.language_model.get_input_embeddings()


@pytest.mark.parametrize("adaptor", sorted(TINY_ADAPTORS))
def test_return_dict_false_gives_the_tuple_of_the_output(adaptor):
    model, processor = TINY_ADAPTORS[adaptor]()
    inputs = inputs_for(processor)
    with torch.no_grad():
        output = model(**inputs, labels=inputs["input_ids"])
        as_tuple = model(**inputs, labels=inputs["input_ids"], return_dict=False)
        base = model.model(**inputs)
        base_tuple = model.model(**inputs, return_dict=False)
        features = model.get_audio_features(inputs["input_features"], inputs["input_features_mask"])
        features_tuple = model.get_audio_features(inputs["input_features"], inputs["input_features_mask"], return_dict=False)
    assert isinstance(as_tuple, tuple) and torch.equal(as_tuple[0], output.loss) and torch.equal(as_tuple[1], output.logits)
    assert isinstance(base_tuple, tuple) and torch.equal(base_tuple[0], base.last_hidden_state)
    assert isinstance(features_tuple, tuple) and torch.equal(features_tuple[0], features.last_hidden_state)
    assert torch.equal(features_tuple[1], features.pooler_output)


def test_a_cache_passed_as_past_key_values_is_used():
    model, processor = build_tiny_llasm()
    inputs = inputs_for(processor)
    ids = inputs["input_ids"]
    with torch.no_grad():
        full = model(**inputs).logits[0, -1]
        prefix = {**inputs, "input_ids": ids[:, :-1], "attention_mask": inputs["attention_mask"][:, :-1]}
        cache = model(**prefix, use_cache=True).cache
        assert cache.get_seq_length() == ids.shape[1] - 1
        with warnings.catch_warnings(record=True):
            warnings.simplefilter("always")
            step = model(input_ids=ids[:, -1:], attention_mask=inputs["attention_mask"], past_key_values=cache).logits[0, -1]
    assert cache.get_seq_length() == ids.shape[1]  # the cache given was read and extended, not replaced by an empty one
    assert torch.allclose(step, full, atol=1e-5)


@pytest.mark.parametrize("adaptor", ["stack_mlp", "whisper_resampler", "whisper_reader"])
def test_audio_merges_into_inputs_embeds_without_input_ids(adaptor):
    """The placeholder positions are found from `inputs_embeds` (the placeholder's embedding) when ids are absent."""
    model, processor = TINY_ADAPTORS[adaptor]()
    inputs = inputs_for(processor)
    ids = inputs.pop("input_ids")
    with torch.no_grad():
        expected = model(input_ids=ids, **inputs).logits
        got = model(inputs_embeds=model.get_input_embeddings()(ids), **inputs).logits
    assert torch.equal(got, expected)
    keep = torch.ones(ids.shape[1], dtype=torch.bool)
    keep[(ids[0] == model.config.audio_token_id).nonzero().flatten()[:1]] = False  # one placeholder too few
    with pytest.raises(ValueError, match="audio placeholder tokens but the audio gives"):
        model(inputs_embeds=model.get_input_embeddings()(ids[:, keep]), attention_mask=inputs["attention_mask"][:, keep],
              input_features=inputs["input_features"], input_features_mask=inputs["input_features_mask"])  # fmt: skip


@pytest.mark.real_weights
def test_the_embedded_base_built_before_the_v5_layout_loads_every_weight():
    """The real base in the user cache (built by the code before the v5 layout, when there is one) loads every weight
    through the conversion mapping, to the same logits as its weights renamed by hand into a fresh model."""
    from modeling_llasm import LlasmProcessor
    from modeling_llasm.conversion.build_base import default_base_dir, is_built

    base_dir = default_base_dir()
    if not is_built(base_dir):
        pytest.skip(f"no embedded base at {base_dir} (llasm build-base)")
    saved = load_file(str(base_dir / "model.safetensors"))
    if "lm_head.weight" in saved or not any(key.startswith("language_model.model.") for key in saved):
        pytest.skip("the cached base is not in the earlier layout")
    loaded, info = LlasmForConditionalGeneration.from_pretrained(base_dir, dtype=torch.float32, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    by_hand = LlasmForConditionalGeneration(loaded.config).eval()
    state = {}
    for key, tensor in saved.items():
        for old, new in ((o[1:].replace("\\", ""), n) for o, n in OLD_NAMES):
            if key.startswith(new):
                key = old + key[len(new):]
                break
        state[key] = tensor
    missing, unexpected = by_hand.load_state_dict(state, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}  # the tied head is the embeddings
    by_hand.tie_weights()
    processor = LlasmProcessor.from_pretrained(base_dir)
    if loaded.config.adaptor_type == "whisper_reader":
        by_hand.set_reader_tokenizer(processor.tokenizer)
    inputs = inputs_for(processor, 2.0)
    with torch.no_grad():
        assert torch.equal(loaded.eval()(**inputs).logits, by_hand(**inputs).logits)


# ctc_compress / whisper_reader: not yet (their generate feeds the packed prompt as inputs_embeds, which assisted
# decoding does not extend with its candidates)
@pytest.mark.parametrize("adaptor", ["stack_mlp", "linear", "whisper_resampler"])
def test_assisted_and_prompt_lookup_decoding_give_the_greedy_answer(adaptor):
    """transformers calls the model with ids only while it verifies candidates: the audio reaches it once, at the
    prefill, as in plain greedy search."""
    model, processor = TINY_ADAPTORS[adaptor]()
    inputs = inputs_for(processor, 1.6)
    gen = dict(max_new_tokens=8, min_new_tokens=8, do_sample=False)
    with torch.no_grad():
        expected = model.generate(**inputs, **gen)
        assistant = TINY_ADAPTORS[adaptor]()[0]
        for parameter in assistant.lm_head.parameters():  # a weaker assistant: some candidates are rejected
            parameter.add_(torch.randn_like(parameter) * parameter.std())
        assisted = model.generate(**inputs, assistant_model=assistant, **gen)
        lookup = model.generate(**inputs, prompt_lookup_num_tokens=3, **gen)
    assert assisted.tolist() == expected.tolist()
    assert lookup.tolist() == expected.tolist()
