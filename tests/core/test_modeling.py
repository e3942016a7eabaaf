import numpy as np
import pytest
import torch
from transformers import AutoModel, AutoModelForCausalLM, AutoProcessor

import modeling_llasm  # noqa: F401  (registers the Auto classes)
from modeling_llasm import LlasmForConditionalGeneration
from modeling_llasm.modeling_llasm import text_causal_lm
from tiny_llasm import build_tiny_llasm, compress_llasm, reader_llasm, run_without_the_package, tone


def audio_messages(seconds: float, seed: int, text: str = "transcribe the speech"):
    clip = tone(seconds, freq=200.0 + 150 * seed, seed=seed)
    return [{"role": "user", "content": [{"type": "audio", "array": clip, "sampling_rate": 16000}, {"type": "text", "text": text}]}]


def test_save_load_auto_classes_give_identical_logits(tiny_llasm, tmp_path):
    model, processor = tiny_llasm
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    inputs = processor.apply_chat_template(audio_messages(1.4, 0), add_generation_prompt=True)
    with torch.no_grad():
        reference = model(**inputs).logits
    for auto_class in (AutoModel, AutoModelForCausalLM):
        reloaded = auto_class.from_pretrained(tmp_path, dtype=torch.float32)
        assert isinstance(reloaded, LlasmForConditionalGeneration)
        reloaded_inputs = AutoProcessor.from_pretrained(tmp_path).apply_chat_template(audio_messages(1.4, 0), add_generation_prompt=True)
        with torch.no_grad():
            assert torch.equal(reloaded(**reloaded_inputs).logits, reference)


@pytest.mark.parametrize("adaptor", ["stack_mlp", "ctc_compress", "whisper_reader"])
def test_trust_remote_code_loads_without_the_package(tiny_llasm, tmp_path, adaptor):
    model, processor = {"stack_mlp": lambda: tiny_llasm, "ctc_compress": compress_llasm, "whisper_reader": reader_llasm}[adaptor]()
    assert model.config.adaptor_type == adaptor
    model.save_pretrained(tmp_path / "ckpt")
    processor.save_pretrained(tmp_path / "ckpt")
    inputs = processor(text="hello <|audio|> world", audio=tone(1.3))
    with torch.no_grad():
        torch.save(model(**inputs).logits, tmp_path / "reference.pt")
    run_without_the_package(
        f"""
        import numpy as np, torch
        from transformers import AutoModel, AutoProcessor
        model = AutoModel.from_pretrained({str(tmp_path / 'ckpt')!r}, trust_remote_code=True, dtype=torch.float32)
        processor = AutoProcessor.from_pretrained({str(tmp_path / 'ckpt')!r}, trust_remote_code=True)
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        t = np.arange(int(1.3 * 16000)) / 16000
        clip = (0.5 * np.sin(2 * np.pi * 440.0 * t) + 0.05 * np.random.default_rng(0).standard_normal(t.shape)).astype(np.float32)
        with torch.no_grad():
            logits = model(**processor(text="hello <|audio|> world", audio=clip)).logits
        assert torch.equal(logits, torch.load({str(tmp_path / 'reference.pt')!r}, weights_only=True))
        print("REMOTE-CODE-OK")
        """,
        tmp_path,
    )


def test_batched_greedy_generation_equals_one_by_one(tiny_llasm):
    model, processor = tiny_llasm
    conversations = [audio_messages(0.6, 0), audio_messages(2.3, 1, "hello"), audio_messages(1.1, 2, "what is the capital of france")]
    batch = processor.apply_chat_template(conversations, add_generation_prompt=True)
    assert batch["attention_mask"][:, 0].tolist().count(0) >= 1  # prompts differ in length: left padding in use
    batched = model.generate(**batch, max_new_tokens=12, do_sample=False)[:, batch["input_ids"].shape[1] :]
    singles = []
    for conversation in conversations:
        inputs = processor.apply_chat_template(conversation, add_generation_prompt=True)
        singles.append(model.generate(**inputs, max_new_tokens=12, do_sample=False)[0, inputs["input_ids"].shape[1] :])
    for row, single in zip(batched, singles):
        assert row[: len(single)].tolist() == single.tolist()
    assert len({tuple(s.tolist()) for s in singles}) > 1  # the audio actually changes the answer


def test_encoder_runs_once_per_generate_call(tiny_llasm):
    model, processor = tiny_llasm
    calls = []
    model.model.audio_tower.register_forward_hook(lambda module, args, output: calls.append(args[0].shape))
    inputs = processor.apply_chat_template([audio_messages(2.5, 0), audio_messages(0.7, 1)], add_generation_prompt=True)
    model.generate(**inputs, max_new_tokens=6, min_new_tokens=6, do_sample=False)
    assert len(calls) == 1 and calls[0][0] == 4  # one call for all 3 + 1 windows


def test_several_audios_in_several_turns(tiny_llasm):
    model, processor = tiny_llasm
    conversation = audio_messages(0.8, 0) + [{"role": "assistant", "content": "ok"}] + audio_messages(1.5, 3, "and this")
    inputs = processor.apply_chat_template(conversation, add_generation_prompt=True)
    with torch.no_grad():
        out = model(**inputs)
    per_window = [model.config.num_audio_tokens(n) for n in inputs["input_features_mask"].sum(-1).tolist()]
    assert out.audio_hidden_states.shape[0] == sum(per_window) == (inputs["input_ids"] == model.config.audio_token_id).sum()
    # the second clip's tokens are its own: changing only the second clip changes only later logits
    other = processor.apply_chat_template(audio_messages(0.8, 0) + [{"role": "assistant", "content": "ok"}] + audio_messages(1.5, 4, "and this"), add_generation_prompt=True)
    with torch.no_grad():
        changed = model(**other).logits
    first_clip_end = (inputs["input_ids"][0] == model.config.audio_token_id).nonzero()[per_window[0] - 1].item()
    assert torch.allclose(changed[0, : first_clip_end + 1], out.logits[0, : first_clip_end + 1])
    assert not torch.allclose(changed[0, -1], out.logits[0, -1])


def test_placeholder_feature_mismatch_is_a_clear_error(tiny_llasm):
    model, processor = tiny_llasm
    inputs = processor.apply_chat_template(audio_messages(1.0, 0), add_generation_prompt=True)
    audio_positions = (inputs["input_ids"][0] == model.config.audio_token_id).nonzero().flatten()
    cut = {k: v for k, v in inputs.items()}
    keep = torch.ones(inputs["input_ids"].shape[1], dtype=torch.bool)
    keep[audio_positions[:3]] = False  # as if a careless truncation dropped three placeholders
    cut["input_ids"], cut["attention_mask"] = inputs["input_ids"][:, keep], inputs["attention_mask"][:, keep]
    with pytest.raises(ValueError, match=f"has {len(audio_positions) - 3} audio placeholder tokens but the audio gives {len(audio_positions)}"):
        model(**cut)
    # without audio, placeholder ids are ordinary tokens to the model, as in transformers' audio LLMs (assisted
    # decoding calls it with ids only); a user who types the placeholder is stopped by the processor (below)
    no_audio = {k: v for k, v in inputs.items() if not k.startswith("input_features")}
    with torch.no_grad():
        as_tokens = model(inputs_embeds=model.get_input_embeddings()(no_audio["input_ids"]), attention_mask=no_audio["attention_mask"])
        assert torch.equal(model(**no_audio).logits, as_tokens.logits)


def test_a_typed_audio_placeholder_is_refused_where_the_user_types_it(tiny_llasm):
    from transformers import pipeline

    model, processor = tiny_llasm
    typed = f"what is {processor.audio_token} here?"
    with pytest.raises(ValueError, match="contains the audio placeholder"):
        processor.apply_chat_template([{"role": "user", "content": [{"type": "text", "text": typed}]}], add_generation_prompt=True)
    with pytest.raises(ValueError, match="contains the audio placeholder"):
        processor.apply_chat_template([{"role": "user", "content": typed}], add_generation_prompt=True)
    with pytest.raises(ValueError, match="placeholder"):
        processor(text=typed)
    chat = pipeline("llasm-chat", model=model, processor=processor)
    with pytest.raises(ValueError, match="contains the audio placeholder"):
        chat({"text": typed}, max_new_tokens=2)


def test_loss_uses_only_labelled_positions(tiny_llasm):
    model, processor = tiny_llasm
    inputs = processor.apply_chat_template(audio_messages(1.0, 0), add_generation_prompt=True)
    labels = inputs["input_ids"].clone()
    labels[:, : labels.shape[1] - 5] = -100
    out = model(**inputs, labels=labels)
    logits = out.logits[0, :-1]
    targets = labels[0, 1:]
    keep = targets != -100
    manual = torch.nn.functional.cross_entropy(logits[keep], targets[keep])
    assert keep.sum() == 5 and torch.allclose(out.loss, manual, atol=1e-6)
    changed = labels.clone()
    changed[0, 2] = 5  # an extra labelled position changes the loss
    assert not torch.allclose(model(**inputs, labels=changed).loss, out.loss)


def test_frozen_encoder_gets_no_gradients(tiny_llasm):
    model, processor = tiny_llasm
    model.train()
    model.model.audio_tower.requires_grad_(False)
    model.model.language_model.requires_grad_(False)
    model.lm_head.requires_grad_(False)
    inputs = processor.apply_chat_template(audio_messages(1.0, 0), add_generation_prompt=True)
    model(**inputs, labels=inputs["input_ids"]).loss.backward()
    for name, parameter in model.named_parameters():
        if name.startswith("model.multi_modal_projector"):
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
        else:
            assert parameter.grad is None, name


def test_sdpa_eager_and_gradient_checkpointing_agree(tmp_path):
    model, processor = build_tiny_llasm()
    inputs = processor.apply_chat_template([audio_messages(0.9, 0), audio_messages(1.7, 1)], add_generation_prompt=True)
    model.save_pretrained(tmp_path)
    eager = LlasmForConditionalGeneration.from_pretrained(tmp_path, attn_implementation="eager", dtype=torch.float32)
    sdpa = LlasmForConditionalGeneration.from_pretrained(tmp_path, attn_implementation="sdpa", dtype=torch.float32)
    assert sdpa.model.language_model.config._attn_implementation == "sdpa"
    assert sdpa.model.audio_tower.config._attn_implementation == "sdpa"
    with torch.no_grad():
        mask = inputs["attention_mask"].bool()
        assert torch.allclose(eager(**inputs).logits[mask], sdpa(**inputs).logits[mask], atol=1e-5)

    def grads(m):
        m.zero_grad()
        m(**inputs, labels=inputs["input_ids"]).loss.backward()
        return {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}

    sdpa.train()
    plain = grads(sdpa)
    sdpa.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    assert sdpa.model.language_model.gradient_checkpointing
    checkpointed = grads(sdpa)
    assert plain.keys() == checkpointed.keys()
    assert all(torch.allclose(plain[n], checkpointed[n], atol=1e-6) for n in plain)


def test_tied_word_embeddings_survive_save_and_load(tmp_path):
    model, processor = build_tiny_llasm(seed=1, tie_word_embeddings=True)
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    model.save_pretrained(tmp_path)
    reloaded = AutoModel.from_pretrained(tmp_path, dtype=torch.float32)
    assert reloaded.get_output_embeddings().weight is reloaded.get_input_embeddings().weight
    inputs = processor.apply_chat_template(audio_messages(1.2, 0), add_generation_prompt=True)
    with torch.no_grad():
        assert torch.equal(reloaded(**inputs).logits, model(**inputs).logits)


def _merged_embeddings(model, inputs):
    """Reference prompt embeddings: audio merged without generate's machinery."""
    with torch.no_grad():
        embeds = model.get_input_embeddings()(inputs["input_ids"])
        audio = model.get_audio_features(inputs["input_features"], inputs["input_features_mask"]).pooler_output
        mask = inputs["input_ids"] == model.config.audio_token_id
        embeds[mask] = audio
    return embeds


def test_beam_search_gives_every_beam_its_own_multi_window_audio(tiny_llasm):
    model, processor = tiny_llasm
    # one-second windows that differ (200, 900, 2500 Hz): a naive per-row expansion would mix them up
    first = np.concatenate([tone(1.0, freq=200.0, seed=1), tone(1.0, freq=900.0, seed=2), tone(0.5, freq=2500.0, seed=3)])
    second = np.concatenate([tone(1.0, freq=600.0, seed=4), tone(0.2, freq=3000.0, seed=5)])
    conversations = [
        [{"role": "user", "content": [{"type": "audio", "array": clip, "sampling_rate": 16000}, {"type": "text", "text": "hi"}]}]
        for clip in (first, second)
    ]
    inputs = processor.apply_chat_template(conversations, add_generation_prompt=True)
    _, expanded = model._expand_inputs_for_generation(expand_size=3, input_ids=inputs["input_ids"], **{k: v for k, v in inputs.items() if k != "input_ids"})
    order = [0, 1, 2] * 3 + [3, 4] * 3  # each copy of a sample holds that sample's windows, in order
    assert torch.equal(expanded["input_features"], inputs["input_features"][order])
    assert torch.equal(expanded["input_features_mask"], inputs["input_features_mask"][order])

    gen = dict(max_new_tokens=6, min_new_tokens=6, num_beams=3, num_return_sequences=2, do_sample=False)
    ours = model.generate(**inputs, **gen)[:, inputs["input_ids"].shape[1] :]
    reference = text_causal_lm(model).generate(
        inputs_embeds=_merged_embeddings(model, inputs), attention_mask=inputs["attention_mask"], **gen
    )
    assert ours.shape == (4, 6)
    assert ours.tolist() == reference[:, -6:].tolist()


def test_generation_from_cached_encoder_outputs(tiny_llasm):
    model, processor = tiny_llasm
    inputs = processor.apply_chat_template([audio_messages(1.7, 0), audio_messages(0.6, 2, "hello")], add_generation_prompt=True)
    with torch.no_grad():
        cached = model.model.audio_tower(inputs["input_features"], attention_mask=inputs["input_features_mask"]).last_hidden_state
    gen = dict(max_new_tokens=8, min_new_tokens=8, do_sample=False)
    expected = model.generate(**inputs, **gen)
    without_features = {k: v for k, v in inputs.items() if k != "input_features"}
    assert model.generate(**without_features, audio_encoder_hidden_states=cached, **gen).tolist() == expected.tolist()


def test_unset_audio_token_id():
    model, processor = build_tiny_llasm(audio_token_id=None)
    text_only = processor(text=["hello world"])
    with torch.no_grad():
        assert model(**text_only).logits.shape[:2] == text_only["input_ids"].shape
    with pytest.raises(ValueError, match="audio_token_id` is not set"):
        model(**processor.apply_chat_template(audio_messages(1.0, 0), add_generation_prompt=True))


def test_prompt_longer_than_the_llm_context_is_reported():
    from transformers.testing_utils import CaptureLogger

    from modeling_llasm import modeling_llasm as modeling

    model, processor = build_tiny_llasm(seed=1)
    model.config.text_config.max_position_embeddings = 16  # only read for the check; RoPE works past it
    inputs = processor.apply_chat_template(audio_messages(1.0, 0), add_generation_prompt=True)
    with CaptureLogger(modeling.logger) as captured, torch.no_grad():
        model(**inputs)
    assert f"The prompt has {inputs['input_ids'].shape[1]} tokens, more than the LLM's max_position_embeddings (16)" in captured.out


def test_llasm_model_gives_the_hidden_states_behind_the_generative_models_logits(tiny_llasm, tmp_path):
    """LlasmModel (no LM head) reads the generative checkpoint; AutoModel still maps to the generative class."""
    from modeling_llasm import LlasmModel

    model, processor = tiny_llasm
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    base = LlasmModel.from_pretrained(tmp_path, dtype=torch.float32)
    assert not hasattr(base, "lm_head") and not hasattr(base.language_model, "lm_head")
    inputs = processor.apply_chat_template([audio_messages(1.3, 0), audio_messages(0.6, 1, "hi")], add_generation_prompt=True)
    with torch.no_grad():
        hidden = base(**inputs).last_hidden_state
        logits = model(**inputs).logits
    assert torch.allclose(model.get_output_embeddings()(hidden), logits, atol=1e-5)
    assert isinstance(AutoModel.from_pretrained(tmp_path, dtype=torch.float32), LlasmForConditionalGeneration)


def test_encoder_hidden_states_and_attentions_when_asked(tmp_path):
    model, processor = build_tiny_llasm()
    model.save_pretrained(tmp_path)
    eager = LlasmForConditionalGeneration.from_pretrained(tmp_path, attn_implementation="eager", dtype=torch.float32)
    inputs = processor.apply_chat_template([audio_messages(1.6, 0)], add_generation_prompt=True)
    with torch.no_grad():
        out = eager(**inputs, output_hidden_states=True, output_attentions=True)
        plain = eager(**inputs)
    layers = model.config.audio_config.encoder_layers
    windows, frames = inputs["input_features"].shape[0], (inputs["input_features"].shape[-1] + 1) // 2
    assert len(out.encoder_hidden_states) == layers + 1 and out.encoder_hidden_states[0].shape[:2] == (windows, frames)
    assert len(out.encoder_attentions) == layers and out.encoder_attentions[0].shape[-2:] == (frames, frames)
    assert len(out.hidden_states) == model.config.text_config.num_hidden_layers + 1  # the LLM's
    assert plain.encoder_hidden_states is None and plain.hidden_states is None
    assert torch.equal(out.logits, plain.logits)


def test_the_audio_placeholder_is_never_generated(tiny_llasm, tmp_path):
    model, processor = tiny_llasm
    audio_id = model.config.audio_token_id
    inputs = processor.apply_chat_template(audio_messages(1.0, 0), add_generation_prompt=True)
    with torch.no_grad():  # make the placeholder by far the most likely next token of the prompt
        last = model.model(**inputs).last_hidden_state[0, -1]
        model.get_output_embeddings().weight[audio_id] = last / last.norm() * model.get_output_embeddings().weight.abs().max() * 50
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    reloaded = AutoModel.from_pretrained(tmp_path, dtype=torch.float32)
    assert audio_id in reloaded.generation_config.suppress_tokens
    out = reloaded.generate(**inputs, max_new_tokens=8, do_sample=False)[0, inputs["input_ids"].shape[1] :]
    assert audio_id not in out.tolist() and len(out) > 0
    with torch.no_grad():  # without the suppression it would have been generated at once
        assert int(reloaded(**inputs).logits[0, -1].argmax()) == audio_id
