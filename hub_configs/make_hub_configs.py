"""Regenerate the ready-made configs in this directory: `python hub_configs/make_hub_configs.py`.

Every value is written out here (no hub access): the Whisper and LLM shapes are those of the published checkpoints.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from transformers import LlamaConfig, Qwen2Config, WhisperConfig, WhisperFeatureExtractor

from modeling_llasm import LlasmConfig
from modeling_llasm.chat_templates import load_chat_template

HERE = Path(__file__).resolve().parent


def whisper_large(version: int) -> WhisperConfig:
    """openai/whisper-large-v2 (80 mels, vocab 51865) or -v3 (128 mels, vocab 51866)."""
    return WhisperConfig(
        vocab_size=51865 if version == 2 else 51866, num_mel_bins=80 if version == 2 else 128,
        d_model=1280, encoder_layers=32, decoder_layers=32, encoder_attention_heads=20, decoder_attention_heads=20,
        encoder_ffn_dim=5120, decoder_ffn_dim=5120, max_source_positions=1500, max_target_positions=448,
        pad_token_id=50257 if version == 2 else 50256, bos_token_id=50257, eos_token_id=50257,
        decoder_start_token_id=50258, begin_suppress_tokens=[220, 50257], forced_decoder_ids=None,
    )


def whisper_tiny_en() -> WhisperConfig:
    return WhisperConfig(
        vocab_size=51864, num_mel_bins=80, d_model=384, encoder_layers=4, decoder_layers=4,
        encoder_attention_heads=6, decoder_attention_heads=6, encoder_ffn_dim=1536, decoder_ffn_dim=1536,
        max_source_positions=1500, max_target_positions=448, pad_token_id=50256, bos_token_id=50257,
        eos_token_id=50256, decoder_start_token_id=50257, begin_suppress_tokens=[220, 50256],
    )


def llasm_original(vocab_size: int, rms_norm_eps: float) -> LlamaConfig:
    """The LLaMA-layout LLM of LinkSoul/LLaSM-Cllama2 (vocab 32003) and LLaSM-Baichuan (vocab 64004)."""
    return LlamaConfig(
        vocab_size=vocab_size, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=32, max_position_embeddings=2048, rms_norm_eps=rms_norm_eps, hidden_act="silu",
        initializer_range=0.02, pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False,
    )


def qwen25_7b_instruct() -> Qwen2Config:
    """Qwen/Qwen2.5-7B-Instruct, embeddings resized to its tokenizer + `<|audio|>` (151665 + 1 rows), as
    `LlasmForConditionalGeneration.from_pretrained_components` does."""
    return Qwen2Config(
        vocab_size=151666, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
        num_key_value_heads=4, max_position_embeddings=32768, rope_theta=1000000.0, rms_norm_eps=1e-6,
        hidden_act="silu", initializer_range=0.02, use_sliding_window=False, sliding_window=None, max_window_layers=28,
        bos_token_id=151643, eos_token_id=151645, pad_token_id=151643, tie_word_embeddings=False,
    )


def smollm2_135m_instruct() -> LlamaConfig:
    """HuggingFaceTB/SmolLM2-135M-Instruct + `<|audio|>` (49152 + 1 rows), tied embeddings."""
    return LlamaConfig(
        vocab_size=49153, hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
        num_key_value_heads=3, max_position_embeddings=8192, rope_theta=100000.0, rms_norm_eps=1e-5,
        hidden_act="silu", initializer_range=0.041666666666666664, bos_token_id=1, eos_token_id=2, pad_token_id=2,
        tie_word_embeddings=True,
    )


MODELS = {
    "llasm-cllama2": dict(
        config=LlasmConfig(audio_config=whisper_large(2), text_config=llasm_original(32003, 1e-5), adaptor_type="whisper_resampler",
                           num_queries=64, audio_token="<au_patch>", audio_token_id=32000, tie_word_embeddings=False),
        mels=80, pad_to_window=True, chat_template="llasm_cllama2",
        generation=dict(bos_token_id=1, eos_token_id=2, pad_token_id=0, do_sample=True, temperature=0.2, top_p=1.0, max_new_tokens=1024),
    ),
    "llasm-baichuan": dict(
        config=LlasmConfig(audio_config=whisper_large(2), text_config=llasm_original(64004, 1e-6), adaptor_type="whisper_resampler",
                           num_queries=64, audio_token="<au_patch>", audio_token_id=64001, tie_word_embeddings=False),
        mels=80, pad_to_window=True, chat_template="llasm_baichuan",
        generation=dict(bos_token_id=1, eos_token_id=2, pad_token_id=0, do_sample=True, temperature=0.2, top_p=1.0, max_new_tokens=1024),
    ),
    "llasm-large": dict(
        config=LlasmConfig(audio_config=whisper_large(3), text_config=qwen25_7b_instruct(), adaptor_type="stack_mlp", stack_factor=8,
                           audio_token="<|audio|>", audio_token_id=151665, tie_word_embeddings=False),
        mels=128, pad_to_window=False, chat_template=None,
        generation=dict(bos_token_id=151643, eos_token_id=[151645, 151643], pad_token_id=151643),
    ),
    "llasm-tiny": dict(
        config=LlasmConfig(audio_config=whisper_tiny_en(), text_config=smollm2_135m_instruct(), adaptor_type="stack_mlp", stack_factor=8,
                           audio_token="<|audio|>", audio_token_id=49152, tie_word_embeddings=True),
        mels=80, pad_to_window=False, chat_template=None,
        generation=dict(bos_token_id=1, eos_token_id=2, pad_token_id=2),
    ),
}


def processor_config(spec: dict) -> dict:
    config: LlasmConfig = spec["config"]
    feature_extractor = json.loads(WhisperFeatureExtractor(feature_size=spec["mels"]).to_json_string())
    return {
        "adaptor_type": config.adaptor_type,
        "audio_token": config.audio_token,
        "feature_extractor": feature_extractor,
        "num_queries": config.num_queries,
        "pad_to_window": spec["pad_to_window"],
        "processor_class": "LlasmProcessor",
        "stack_factor": config.stack_factor,
    }


def main() -> None:
    for name, spec in MODELS.items():
        directory = HERE / name
        if directory.exists():
            shutil.rmtree(directory)
        directory.mkdir()
        # No auto_map / code copy: load with the package installed (or save_pretrained a model for remote code).
        (directory / "config.json").write_text(spec["config"].to_json_string())
        (directory / "processor_config.json").write_text(json.dumps(processor_config(spec), indent=2, sort_keys=True) + "\n")
        (directory / "generation_config.json").write_text(json.dumps(spec["generation"], indent=2) + "\n")
        if spec["chat_template"]:
            (directory / "chat_template.jinja").write_text(load_chat_template(spec["chat_template"]))
        print(directory)


if __name__ == "__main__":
    main()
