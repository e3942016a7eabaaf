import json

import pytest
from transformers import AutoConfig, LlamaConfig, WhisperConfig

from modeling_llasm import LlasmConfig, audio_token_count


def test_unknown_adaptor_type_is_a_clear_error():
    with pytest.raises(ValueError, match="adaptor_type 'qformer'"):
        LlasmConfig(adaptor_type="qformer")


def test_encoder_decoder_text_config_rejected():
    with pytest.raises(ValueError, match="decoder-only"):
        LlasmConfig(text_config={"model_type": "t5"})


def test_config_json_is_self_contained(tmp_path):
    config = LlasmConfig(
        audio_config=WhisperConfig(d_model=64, max_source_positions=100),
        text_config=LlamaConfig(hidden_size=48, num_attention_heads=4, num_key_value_heads=2),
        adaptor_type="linear",
        stack_factor=4,
        audio_token_id=7,
    )
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["audio_config"]["d_model"] == 64 and saved["text_config"]["hidden_size"] == 48
    reloaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(reloaded, LlasmConfig)
    assert reloaded.text_config.num_key_value_heads == 2
    assert (reloaded.adaptor_type, reloaded.stack_factor, reloaded.audio_token_id) == ("linear", 4, 7)
    assert reloaded.window_mel_frames == 200


@pytest.mark.parametrize(
    "mel_frames, stack, expected",
    [(3000, 8, 188), (3000, 1, 1500), (100, 2, 25), (101, 2, 26), (1, 8, 1), (17, 4, 3)],
)
def test_audio_token_count_follows_whisper_strides(mel_frames, stack, expected):
    # encoder frames = ceil(mel / 2) (conv stride 2), tokens = ceil(frames / stack): worked out by hand
    assert audio_token_count(mel_frames, "stack_mlp", stack) == expected


def test_audio_token_count_rejects_empty_window():
    with pytest.raises(ValueError, match="at least one mel frame"):
        audio_token_count(0, "stack_mlp", 8)
