"""Tiny random LLaSM (Whisper 1-s windows, 2-layer Llama, byte-level BPE tokenizer) built offline for tests."""

from __future__ import annotations

import numpy as np
import torch
from transformers import LlamaConfig, PreTrainedTokenizerFast, WhisperConfig, WhisperFeatureExtractor

from modeling_llasm import LlasmConfig, LlasmForConditionalGeneration, LlasmProcessor
from modeling_llasm.evaluation.tiny import tiny_tokenizer as tiny_components_tokenizer


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    tokenizer = tiny_components_tokenizer(extra_special_tokens=("<|audio|>",))
    tokenizer.padding_side = "left"
    return tokenizer


def tiny_config(tokenizer: PreTrainedTokenizerFast, tie_word_embeddings: bool = False, **overrides) -> LlasmConfig:
    audio = WhisperConfig(
        d_model=16, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=32, decoder_layers=1,
        decoder_attention_heads=2, decoder_ffn_dim=32, max_source_positions=50, num_mel_bins=80, vocab_size=64,
        pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1,
    )
    text = LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id, max_position_embeddings=4096, tie_word_embeddings=tie_word_embeddings,
    )
    kwargs = dict(audio_config=audio, text_config=text, stack_factor=2, audio_token_id=tokenizer.convert_tokens_to_ids("<|audio|>"))
    kwargs.update(overrides)
    return LlasmConfig(**kwargs)


def tiny_processor(tokenizer: PreTrainedTokenizerFast, config: LlasmConfig) -> LlasmProcessor:
    feature_extractor = WhisperFeatureExtractor(feature_size=80, chunk_length=1)  # 1-s windows = 100 mel frames
    return LlasmProcessor(
        feature_extractor=feature_extractor, tokenizer=tokenizer, audio_token=config.audio_token,
        adaptor_type=config.adaptor_type, stack_factor=config.stack_factor, num_queries=config.num_queries,
    )


def build_tiny_llasm(
    seed: int = 0, tie_word_embeddings: bool = False, **overrides
) -> tuple[LlasmForConditionalGeneration, LlasmProcessor]:
    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer()
    config = tiny_config(tokenizer, tie_word_embeddings=tie_word_embeddings, **overrides)
    model = LlasmForConditionalGeneration(config).eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model, tiny_processor(tokenizer, config)


def tone(seconds: float, sampling_rate: int = 16000, freq: float = 440.0, seed: int = 0) -> np.ndarray:
    """A noisy sine, `seconds` long: deterministic stand-in for speech."""
    t = np.arange(int(seconds * sampling_rate)) / sampling_rate
    rng = np.random.default_rng(seed)
    return (0.5 * np.sin(2 * np.pi * freq * t) + 0.05 * rng.standard_normal(t.shape)).astype(np.float32)
