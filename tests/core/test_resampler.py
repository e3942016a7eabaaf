"""The "whisper_resampler" adaptor (the original LLaSM adaptor): Whisper decoder queries -> linear."""

import pytest
import torch
from transformers import AutoModel, AutoProcessor, WhisperModel

from modeling_llasm import LlasmConfig, LlasmForConditionalGeneration, audio_token_count
from modeling_llasm.modeling_llasm import LLASM_ADAPTORS
from tiny_llasm import build_tiny_llasm, tone

QUERIES = 4


def resampler_llasm(**overrides):
    overrides.setdefault("num_queries", QUERIES)
    return build_tiny_llasm(adaptor_type="whisper_resampler", **overrides)


def stock_whisper_reference(model, input_features):
    """The original computation: a stock WhisperModel (encoder + decoder) with `num_queries` copies of the decoder
    start token as decoder input, last_hidden_state -> the adaptor's linear."""
    whisper = WhisperModel(model.config.audio_config).eval()
    whisper.encoder.load_state_dict(model.model.audio_tower.state_dict())
    whisper.decoder.load_state_dict(model.model.multi_modal_projector.decoder.state_dict())
    start = model.config.audio_config.decoder_start_token_id
    queries = torch.full((input_features.shape[0], model.config.num_queries), start)
    with torch.no_grad():
        hidden = whisper(input_features=input_features, decoder_input_ids=queries).last_hidden_state
        return model.model.multi_modal_projector.linear(hidden)


def test_token_count_is_num_queries_per_window():
    for frames in (1, 37, 100, 3000):
        assert audio_token_count(frames, "whisper_resampler", stack_factor=8, num_queries=64) == 64
    model, processor = resampler_llasm()
    assert model.config.num_audio_tokens(55) == QUERIES
    assert processor.num_audio_tokens(55) == QUERIES


def test_adaptor_structure_and_limits():
    model, _ = resampler_llasm()
    adaptor = model.model.multi_modal_projector
    assert type(adaptor) is LLASM_ADAPTORS["whisper_resampler"]
    d_model, hidden = model.config.audio_config.d_model, model.config.text_config.hidden_size
    assert (adaptor.linear.in_features, adaptor.linear.out_features, adaptor.linear.bias is not None) == (d_model, hidden, True)
    assert len(adaptor.decoder.layers) == model.config.audio_config.decoder_layers
    assert adaptor.query_token_id == model.config.audio_config.decoder_start_token_id
    too_many = model.config.audio_config.max_target_positions + 1
    with pytest.raises(ValueError, match="max_target_positions"):
        LlasmForConditionalGeneration(LlasmConfig(audio_config=model.config.audio_config, text_config=model.config.text_config,
                                                  adaptor_type="whisper_resampler", num_queries=too_many))


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_padded_window_equals_stock_whisper_model(attn_implementation):
    model, processor = resampler_llasm()
    model.config.audio_config._attn_implementation = attn_implementation
    processor.pad_to_window = True  # every window padded to the full window, like the original 30 s
    inputs = processor(text="hello <|audio|>", audio=tone(0.6, seed=1))
    assert inputs["input_features"].shape[-1] == 2 * model.config.audio_config.max_source_positions
    with torch.no_grad():
        ours = model.get_audio_features(inputs["input_features"], inputs["input_features_mask"]).pooler_output
    reference = stock_whisper_reference(model, inputs["input_features"])[0]
    assert ours.shape == (QUERIES, model.config.text_config.hidden_size)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-6)


def test_unpadded_windows_use_the_frame_mask_so_batching_changes_nothing():
    model, processor = resampler_llasm()
    short, long = tone(0.35, seed=2), tone(0.9, seed=3)
    batch = processor(text=["a <|audio|>", "b <|audio|>"], audio=[short, long])
    assert batch["input_features_mask"][0].sum() < batch["input_features_mask"][1].sum()
    with torch.no_grad():
        together = model.get_audio_features(batch["input_features"], batch["input_features_mask"]).pooler_output
        for index, clip in enumerate((short, long)):
            alone = processor(text="x <|audio|>", audio=clip)
            features = model.get_audio_features(alone["input_features"], alone["input_features_mask"]).pooler_output
            torch.testing.assert_close(together[index * QUERIES : (index + 1) * QUERIES], features, rtol=1e-5, atol=1e-6)
    # and the padding really is masked: without the mask the short clip's tokens change
    with torch.no_grad():
        encoded = model.model.audio_tower(batch["input_features"][:1], attention_mask=batch["input_features_mask"][:1]).last_hidden_state
        frames = batch["input_features_mask"][:1, ::2].bool()
        masked = model.model.multi_modal_projector(encoded, frames)
        unmasked = model.model.multi_modal_projector(encoded, torch.ones_like(frames))
    assert not torch.allclose(masked, unmasked)


def test_side_by_side_with_stack_mlp_and_save_load(tmp_path):
    resampler, resampler_processor = resampler_llasm(seed=1)
    stack, stack_processor = build_tiny_llasm(seed=2)
    assert not hasattr(stack.model.multi_modal_projector, "decoder")
    clip = tone(1.3, seed=4)
    with torch.no_grad():
        for model, processor in ((resampler, resampler_processor), (stack, stack_processor)):
            inputs = processor(text="hi <|audio|>", audio=clip)
            expected = sum(processor.num_audio_tokens(int(n)) for n in inputs["input_features_mask"].sum(-1))
            assert int((inputs["input_ids"] == model.config.audio_token_id).sum()) == expected
            assert torch.isfinite(model(**inputs).logits).all()
    resampler.save_pretrained(tmp_path)
    resampler_processor.save_pretrained(tmp_path)
    reloaded = AutoModel.from_pretrained(tmp_path, dtype=torch.float32)
    reloaded_processor = AutoProcessor.from_pretrained(tmp_path)
    assert reloaded.config.adaptor_type == "whisper_resampler" and reloaded.config.num_queries == QUERIES
    inputs = reloaded_processor(text="hi <|audio|>", audio=clip)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**inputs).logits, resampler(**inputs).logits, rtol=0, atol=0)


def test_frozen_decoder_like_the_original_trains_only_the_linear():
    model, processor = resampler_llasm()
    model.train()
    model.requires_grad_(False)
    model.model.multi_modal_projector.linear.requires_grad_(True)  # the original stage 1: Whisper (incl. decoder) frozen
    inputs = processor(text="hi <|audio|> the", audio=tone(0.5))
    labels = inputs["input_ids"].clone()
    model(**inputs, labels=labels).loss.backward()
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"model.multi_modal_projector.linear.weight", "model.multi_modal_projector.linear.bias"}
    assert model.model.multi_modal_projector.linear.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.model.multi_modal_projector.decoder.parameters())
