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


def speechlike(seconds: float, seed: int) -> np.ndarray:
    """Tones whose pitch changes every 80 ms: frames differ, so the CTC path has several segments."""
    rng = np.random.default_rng(seed)
    pieces = [tone(0.08, freq=float(rng.uniform(150, 3000)), seed=seed + i) for i in range(int(seconds / 0.08))]
    return np.concatenate(pieces)


def compress_llasm(seed: int = 0, **overrides):
    overrides = {"adaptor_type": "ctc_compress", "ctc_vocab_size": 48, **overrides}
    model, processor = build_tiny_llasm(seed=seed, **overrides)
    vocab_size = model.get_input_embeddings().weight.shape[0]
    model.set_ctc_vocabulary(range(vocab_size - 48, vocab_size))
    head = model.model.multi_modal_projector
    with torch.no_grad():  # a random head whose blank wins on about half the frames: runs merge, some are dropped
        inputs = processor(text=processor.audio_token, audio=speechlike(3.0, 99))
        encoded = model.model.audio_tower(inputs["input_features"], attention_mask=inputs["input_features_mask"]).last_hidden_state
        frames, _ = head.frame_states(encoded, inputs["input_features_mask"][:, ::2].bool())
        logits = head.ctc_logits(frames, model.get_input_embeddings().weight)
        head.blank_bias.copy_((logits[..., 1:].amax(-1) - logits[..., 0]).median())
    return model, processor


def reader_llasm(seed: int = 0):
    """A tiny `whisper_reader`: Whisper ids 0..59 are text (spelled with 1-2 LLM tokens), 60 is end-of-text."""
    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer()
    config = tiny_config(tokenizer, adaptor_type="whisper_reader", stack_factor=2, reader_prompt_ids=[61])
    config.audio_config.eos_token_id, config.audio_config.decoder_start_token_id = 60, 61
    model = LlasmForConditionalGeneration(config).eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    processor = tiny_processor(tokenizer, config)
    vocab_size = model.get_input_embeddings().weight.shape[0]
    model.set_reader_tables([[10 + i] if i % 3 else [10 + i, 20 + i] for i in range(60)] + [[]] * 4)
    head = model.model.multi_modal_projector
    with torch.no_grad():
        silence = processor(text=processor.audio_token, audio=np.zeros(16000, dtype=np.float32))
        head.silence_states.copy_(model.model.audio_tower(silence["input_features"]).last_hidden_state[0])
        head.decoder.embed_tokens.weight[60] *= 0  # end-of-text: reachable but not first choice
        head.decoder.embed_tokens.weight[60] += head.decoder.embed_tokens.weight[:60].mean(0) * 1.5
    assert vocab_size > 90
    return model, processor


# adaptor name -> builder of a tiny model of that adaptor kind (the precision tests run each one)
TINY_ADAPTORS = {
    "stack_mlp": build_tiny_llasm,
    "linear": lambda: build_tiny_llasm(adaptor_type="linear"),
    "whisper_resampler": lambda: build_tiny_llasm(adaptor_type="whisper_resampler", num_queries=24),
    "ctc_compress": compress_llasm,
    "whisper_reader": reader_llasm,
}


EN, ZH, TRANSCRIBE, NO_TIMESTAMPS = 64, 65, 66, 67


def multilingual_reader(seed: int = 0):
    """`reader_llasm` whose Whisper knows two languages: tokens 64 (en) and 65 (zh), 66 <|transcribe|>, 67
    <|notimestamps|>."""
    model, processor = reader_llasm(seed)
    config = model.config
    decoder = model.model.multi_modal_projector.decoder
    with torch.no_grad():
        old = decoder.embed_tokens.weight
        grown = torch.nn.Embedding(68, old.shape[1])
        grown.weight[: old.shape[0]] = old
        grown.weight[old.shape[0] :] = torch.randn(68 - old.shape[0], old.shape[1]) * old.std()
    decoder.embed_tokens = grown
    config.audio_config.vocab_size = 68
    model.model.multi_modal_projector.llm_pieces = torch.cat([model.model.multi_modal_projector.llm_pieces,
                                                        torch.full((4, model.model.multi_modal_projector.llm_pieces.shape[1]), -1)])  # fmt: skip
    model.model.multi_modal_projector.starts_word = torch.cat([model.model.multi_modal_projector.starts_word, torch.zeros(4, dtype=torch.bool)])
    model.model.multi_modal_projector._lookup = None
    config.reader_language_ids, config.reader_task_id = {"en": EN, "zh": ZH}, TRANSCRIBE
    config.reader_prompt_ids = [61, NO_TIMESTAMPS]
    return model, processor


def run_without_the_package(body: str, tmp_path) -> None:
    """Run python `body` in a fresh process where `modeling_llasm` cannot be imported (a checkpoint's own
    `trust_remote_code` copy must serve); it must print REMOTE-CODE-OK."""
    import os
    import subprocess
    import sys
    import textwrap

    block = textwrap.dedent(
        """
        import sys
        class BlockPackage:  # the checkpoint's own code must be used, not the installed package
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] == "modeling_llasm":
                    raise ImportError("modeling_llasm is blocked in this test")
        sys.meta_path.insert(0, BlockPackage())
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    result = subprocess.run([sys.executable, "-c", block + textwrap.dedent(body)], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert "REMOTE-CODE-OK" in result.stdout, result.stderr[-3000:]
