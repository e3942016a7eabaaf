"""Tiny random LLaSM checkpoints vLLM can serve (its CPU attention needs a head size of at least 32), built offline
with the builders of `tests/tiny_llasm.py` and saved as `save_pretrained` writes them."""

from __future__ import annotations

from pathlib import Path

import torch

import tiny_llasm
from tiny_llasm import TINY_ADAPTORS

# Llama with 2 heads of 32 (vLLM's CPU attention supports head sizes 32, 64, 80, ...), 1 KV head
TEXT_SIZES = dict(hidden_size=64, intermediate_size=128, num_attention_heads=2, num_key_value_heads=1, head_dim=32)


def build(kind: str, directory: Path, seed: int = 0) -> Path:
    """Build the tiny `kind` adaptor model of `tests/tiny_llasm.py` (or its `multilingual_reader`) with vLLM-sized
    attention heads, save model and processor to `directory`, and return it."""
    original = tiny_llasm.tiny_config

    def sized_config(tokenizer, tie_word_embeddings: bool = False, **overrides):
        config = original(tokenizer, tie_word_embeddings=tie_word_embeddings, **overrides)
        for key, value in TEXT_SIZES.items():
            setattr(config.text_config, key, value)
        return config

    tiny_llasm.tiny_config = sized_config
    try:
        torch.manual_seed(seed)
        builder = tiny_llasm.multilingual_reader if kind == "multilingual_reader" else TINY_ADAPTORS[kind]
        model, processor = builder()
    finally:
        tiny_llasm.tiny_config = original
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory
