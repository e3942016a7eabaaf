"""Tiny random components (Whisper with 1-s windows, 2-layer Llama, byte-level BPE tokenizer) built offline.

Used by `llasm bench --smoke` and the tests: they exercise the real code paths in seconds; their numbers mean nothing.
"""

from __future__ import annotations

from pathlib import Path

import torch

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_CORPUS = [
    "what is the capital of france", "transcribe the speech", "the quick brown fox jumps over the lazy dog",
    "hello world this is a tiny tokenizer for tests", "please answer the question in one sentence",
] * 20


def tiny_tokenizer(extra_special_tokens: tuple[str, ...] = ()):
    """A 300-token byte-level BPE with ChatML-style special tokens and chat template (plus `extra_special_tokens`)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    specials = ["<pad>", "<|im_start|>", "<|im_end|>", *extra_special_tokens]
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(_CORPUS, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", eos_token="<|im_end|>", bos_token="<|im_start|>",
        extra_special_tokens=list(extra_special_tokens),
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_tiny_components(directory: str | Path, seed: int = 0) -> tuple[Path, Path]:
    """Write a tiny `WhisperForConditionalGeneration` (+ feature extractor, 1-s windows) and a tiny Llama (+ tokenizer
    with a chat template) under `directory`; return `(whisper_dir, llm_dir)`."""
    from transformers import LlamaConfig, LlamaForCausalLM, WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration

    directory = Path(directory)
    whisper_dir, llm_dir = directory / "tiny-whisper", directory / "tiny-llm"
    torch.manual_seed(seed)
    whisper = WhisperForConditionalGeneration(
        WhisperConfig(
            d_model=32, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=64, decoder_layers=2,
            decoder_attention_heads=2, decoder_ffn_dim=64, max_source_positions=50, max_target_positions=128,
            num_mel_bins=80, vocab_size=64, pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1,
            begin_suppress_tokens=None, suppress_tokens=None,
        )  # fmt: skip
    )
    whisper.save_pretrained(whisper_dir)
    WhisperFeatureExtractor(feature_size=80, chunk_length=1).save_pretrained(whisper_dir)
    tokenizer = tiny_tokenizer()
    llm = LlamaForCausalLM(
        LlamaConfig(
            hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            vocab_size=len(tokenizer) + 8, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
            bos_token_id=tokenizer.bos_token_id, max_position_embeddings=4096,
        )  # fmt: skip
    )
    llm.generation_config.pad_token_id = tokenizer.pad_token_id
    llm.save_pretrained(llm_dir)
    tokenizer.save_pretrained(llm_dir)
    return whisper_dir, llm_dir
