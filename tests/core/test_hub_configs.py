"""The ready-made configs in hub_configs/: they load, agree with their processor configs, and instantiate (on the
meta device) to exactly the parameter count computed here by hand from the architectures."""

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig

from modeling_llasm import LlasmForConditionalGeneration
from modeling_llasm.chat_templates import load_chat_template

HUB_CONFIGS = Path(__file__).resolve().parents[2] / "hub_configs"


# ----- parameter counts by formula (independent of the code under test) -----
def whisper_encoder(d, layers, ffn, mels, positions=1500):
    convs = (mels * d * 3 + d) + (d * d * 3 + d)
    attention = 4 * d * d + 3 * d  # q, k, v, out; k has no bias
    layer = attention + 2 * d + (d * ffn + ffn) + (ffn * d + d) + 2 * d  # + 2 LayerNorms
    return convs + positions * d + layers * layer + 2 * d


def whisper_decoder(d, layers, ffn, vocab, positions=448):
    attention = 4 * d * d + 3 * d
    layer = 2 * attention + 3 * 2 * d + (d * ffn + ffn) + (ffn * d + d)  # self + cross attention, 3 LayerNorms
    return vocab * d + positions * d + layers * layer + 2 * d


def decoder_llm(vocab, hidden, intermediate, layers, heads, kv_heads, tied, qkv_bias=False):
    head_dim = hidden // heads
    attention = hidden * heads * head_dim + 2 * hidden * kv_heads * head_dim + heads * head_dim * hidden
    if qkv_bias:
        attention += heads * head_dim + 2 * kv_heads * head_dim
    layer = attention + 3 * hidden * intermediate + 2 * hidden  # SwiGLU MLP + 2 RMSNorms
    return vocab * hidden * (1 if tied else 2) + layers * layer + hidden


def test_formulas_reproduce_published_sizes():
    assert decoder_llm(32000, 4096, 11008, 32, 32, 32, tied=False) == 6_738_415_616  # Llama-2-7B
    assert decoder_llm(152064, 3584, 18944, 28, 28, 4, tied=False, qkv_bias=True) == 7_615_616_512  # Qwen2.5-7B
    assert decoder_llm(49152, 576, 1536, 30, 9, 3, tied=True) == 134_515_008  # SmolLM2-135M


WHISPER_LARGE_ENCODER = whisper_encoder(1280, 32, 5120, mels=80)
EXPECTED = {
    # whisper-large-v2 encoder + decoder (the resampler) + Linear(1280 -> 4096) + Llama-2-7B shape
    "llasm-cllama2": WHISPER_LARGE_ENCODER + whisper_decoder(1280, 32, 5120, 51865) + (1280 * 4096 + 4096)
    + decoder_llm(32003, 4096, 11008, 32, 32, 32, tied=False),
    "llasm-baichuan": WHISPER_LARGE_ENCODER + whisper_decoder(1280, 32, 5120, 51865) + (1280 * 4096 + 4096)
    + decoder_llm(64004, 4096, 11008, 32, 32, 32, tied=False),
    # whisper-large-v3 encoder (128 mels) + stack-8 MLP (10240 -> 3584 -> 3584) + Qwen2.5-7B shape (+ audio token)
    "llasm-large": whisper_encoder(1280, 32, 5120, mels=128) + (8 * 1280 * 3584 + 3584) + (3584 * 3584 + 3584)
    + decoder_llm(151666, 3584, 18944, 28, 28, 4, tied=False, qkv_bias=True),
    # Whisper tiny.en encoder + stack-8 MLP (3072 -> 576 -> 576) + SmolLM2-135M (+ audio token, tied)
    "llasm-tiny": whisper_encoder(384, 4, 1536, mels=80) + (8 * 384 * 576 + 576) + (576 * 576 + 576)
    + decoder_llm(49153, 576, 1536, 30, 9, 3, tied=True),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_parameter_count_on_meta_device(name):
    config = AutoConfig.from_pretrained(HUB_CONFIGS / name)
    with torch.device("meta"):
        model = LlasmForConditionalGeneration(config)
    assert sum(p.numel() for p in model.parameters()) == EXPECTED[name]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_processor_config_agrees_with_model_config(name):
    config = AutoConfig.from_pretrained(HUB_CONFIGS / name)
    processor = json.loads((HUB_CONFIGS / name / "processor_config.json").read_text())
    assert processor["processor_class"] == "LlasmProcessor"
    for key in ("adaptor_type", "audio_token", "stack_factor", "num_queries"):
        assert processor[key] == getattr(config, key), key
    assert processor["feature_extractor"]["feature_size"] == config.audio_config.num_mel_bins
    assert processor["feature_extractor"]["nb_max_frames"] == config.window_mel_frames
    generation = json.loads((HUB_CONFIGS / name / "generation_config.json").read_text())
    assert generation["bos_token_id"] == config.text_config.bos_token_id


@pytest.mark.parametrize("name, template, patch_id", [("llasm-cllama2", "llasm_cllama2", 32000), ("llasm-baichuan", "llasm_baichuan", 64001)])
def test_original_variants(name, template, patch_id):
    config = AutoConfig.from_pretrained(HUB_CONFIGS / name)
    assert (config.adaptor_type, config.num_queries, config.audio_token_id) == ("whisper_resampler", 64, patch_id)
    assert config.audio_config.decoder_start_token_id == 50258  # <|startoftranscript|>
    assert config.text_config.vocab_size == patch_id + 3  # <au_patch>, <au_start>, <au_end> are the last rows
    assert json.loads((HUB_CONFIGS / name / "processor_config.json").read_text())["pad_to_window"] is True
    assert (HUB_CONFIGS / name / "chat_template.jinja").read_text() == load_chat_template(template)
