"""Convert an original LinkSoul-AI LLaSM checkpoint (`LinkSoul/LLaSM-Cllama2`, `LinkSoul/LLaSM-Baichuan`) to this
package's format: a `LlasmForConditionalGeneration` with the `"whisper_resampler"` adaptor, safetensors shards,
the original tokenizer and the variant's chat template.

The original checkpoints hold only the LLM and `model.mm_projector` (Whisper was never saved), so the Whisper
weights (encoder -> `audio_tower`, decoder -> `multi_modal_projector.decoder`) come from a separate Hugging Face
Whisper checkpoint directory (`openai/whisper-large-v2` for both released variants).

Memory: the conversion streams one source shard at a time (`torch.load(..., mmap=True, weights_only=True)`, or
`safe_open` for safetensors) and writes output shards of at most `max_shard_size` bytes, so the peak resident
memory is about one source shard plus one output shard: for the fp32 7B checkpoints (shards of ~10 GB) about
15 GB at `dtype="float32"` (~10 GB with a half-precision `dtype`, where a shard's converted copy is half its size);
disk: the output size (~28 GB fp32 with Whisper, ~14 GB fp16/bf16) plus nothing temporary beyond it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import torch

# Released variants: tokens the original added to the LLM tokenizer (in id order, as the last rows of the vocab),
# the processor's pad token, and the chat template name.
VARIANTS: dict[str, dict] = {
    "cllama2": {"added_tokens": ("<au_patch>", "<au_start>", "<au_end>"), "pad_token": "<unk>", "bos_token": "<s>"},
    "baichuan": {"added_tokens": ("<pad>", "<au_patch>", "<au_start>", "<au_end>"), "pad_token": "<pad>", "bos_token": None},
}
AUDIO_PATCH_TOKEN, AUDIO_START_TOKEN, AUDIO_END_TOKEN = "<au_patch>", "<au_start>", "<au_end>"
# The original infer.py's sampling settings (LinkSoul-AI/LLaSM infer.py).
ORIGINAL_GENERATION = {"do_sample": True, "temperature": 0.2, "top_p": 1.0, "max_new_tokens": 1024}
_DROPPED_KEY = re.compile(r"^model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq$")
_LLM_KEY = re.compile(r"^(model\.(layers\.\d+\.|embed_tokens\.|norm\.)|lm_head\.)")


class OriginalCheckpointError(ValueError):
    """The source checkpoint (or the Whisper directory) does not match what the converter expects."""


# ----------------------------------------------------------------------------------------------------------------
# key mapping
# ----------------------------------------------------------------------------------------------------------------
def map_original_key(key: str) -> str | None:
    """Our key for an original LLaSM state-dict key; None for keys that are dropped (`rotary_emb.inv_freq`)."""
    if _DROPPED_KEY.match(key):
        return None
    if key.startswith("model.mm_projector."):
        return "multi_modal_projector.linear." + key[len("model.mm_projector.") :]
    if _LLM_KEY.match(key):
        return "language_model." + key
    raise OriginalCheckpointError(f"unknown key {key!r}")


def map_whisper_key(key: str) -> str | None:
    """Our key for a Hugging Face Whisper key (`WhisperModel` or `WhisperForConditionalGeneration` layout);
    None for `proj_out` (tied to the decoder embeddings; the resampler does not use it)."""
    if key.startswith("model."):
        key = key[len("model.") :]
    if key.startswith("encoder."):
        return "audio_tower." + key[len("encoder.") :]
    if key.startswith("decoder."):
        return "multi_modal_projector.decoder." + key[len("decoder.") :]
    if key.startswith("proj_out."):
        return None
    raise OriginalCheckpointError(f"unknown Whisper key {key!r}")


# ----------------------------------------------------------------------------------------------------------------
# reading checkpoints shard by shard
# ----------------------------------------------------------------------------------------------------------------
def _checkpoint_shards(directory: Path, what: str) -> tuple[list[Path], dict[str, str] | None]:
    """The weight files of a HF-style checkpoint directory and, if sharded, its `weight_map` (key -> file name)."""
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index_path = directory / index_name
        if index_path.is_file():
            weight_map = json.loads(index_path.read_text())["weight_map"]
            files = sorted(set(weight_map.values()))
            missing = [name for name in files if not (directory / name).is_file()]
            if missing:
                raise OriginalCheckpointError(
                    f"{what}: {index_name} lists shard(s) that are not in {directory}: {', '.join(missing)}. "
                    "Download every shard listed in the index."
                )
            return [directory / name for name in files], weight_map
    for single in ("model.safetensors", "pytorch_model.bin"):
        if (directory / single).is_file():
            return [directory / single], None
    raise OriginalCheckpointError(
        f"{what}: no weights in {directory} (expected pytorch_model.bin.index.json + shards, "
        "model.safetensors.index.json + shards, model.safetensors or pytorch_model.bin)."
    )


def _iter_shard(path: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """(key, tensor) pairs of one weight file; `.bin` files are read with `weights_only=True` (never plain pickle),
    memory-mapped when the file is in torch's zip format."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            for key in handle.keys():
                yield key, handle.get_tensor(key)
        return
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # legacy (non-zip) serialization cannot be memory-mapped
        state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise OriginalCheckpointError(f"{path} does not hold a state dict (got {type(state).__name__}).")
    for key in list(state):
        yield key, state.pop(key)
    del state


def _shard_keys(path: Path) -> list[str]:
    """Keys of one weight file (safetensors: without reading tensors; .bin: memory-mapped)."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            return list(handle.keys())
    return [key for key, _ in _iter_shard(path)]


class _ShardWriter:
    """Collects tensors and writes safetensors shards of at most `max_bytes`; `finish()` renames them
    `model-0000i-of-0000N.safetensors` and writes the index."""

    def __init__(self, directory: Path, max_bytes: int):
        self.directory, self.max_bytes = directory, max_bytes
        self.pending: dict[str, torch.Tensor] = {}
        self.pending_bytes = 0
        self.files: list[tuple[str, list[str]]] = []
        self.total_bytes = 0

    def add(self, key: str, tensor: torch.Tensor) -> None:
        size = tensor.numel() * tensor.element_size()
        if self.pending and self.pending_bytes + size > self.max_bytes:
            self.flush()
        self.pending[key] = tensor.contiguous()
        self.pending_bytes += size
        self.total_bytes += size

    def flush(self) -> None:
        if not self.pending:
            return
        from safetensors.torch import save_file

        name = f"part-{len(self.files) + 1:05d}.safetensors"
        save_file(self.pending, str(self.directory / name), metadata={"format": "pt"})
        self.files.append((name, list(self.pending)))
        self.pending, self.pending_bytes = {}, 0

    def finish(self) -> None:
        self.flush()
        total = len(self.files)
        weight_map = {}
        for number, (name, keys) in enumerate(self.files, start=1):
            final = "model.safetensors" if total == 1 else f"model-{number:05d}-of-{total:05d}.safetensors"
            (self.directory / name).rename(self.directory / final)
            weight_map.update({key: final for key in keys})
        if total > 1:
            index = {"metadata": {"total_size": self.total_bytes}, "weight_map": dict(sorted(weight_map.items()))}
            (self.directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


# ----------------------------------------------------------------------------------------------------------------
# configs, tokenizer, processor
# ----------------------------------------------------------------------------------------------------------------
def _original_config(src: Path) -> dict:
    path = src / "config.json"
    if not path.is_file():
        raise OriginalCheckpointError(f"No config.json in {src}; is it an original LLaSM checkpoint directory?")
    config = json.loads(path.read_text())
    required = ("hidden_size", "intermediate_size", "num_attention_heads", "num_hidden_layers", "vocab_size")
    missing = [name for name in required if name not in config]
    if missing:
        raise OriginalCheckpointError(f"{path} lacks {', '.join(missing)}; not an original LLaSM (LLaMA) config.")
    return config


def build_llasm_config(original: dict, whisper_config, audio_token_id: int):
    """Our `LlasmConfig` for an original LLaSM config dict and the Whisper config."""
    from transformers import LlamaConfig

    from ..configuration_llasm import LlasmConfig

    mm_hidden = original.get("mm_hidden_size", whisper_config.d_model)
    if mm_hidden != whisper_config.d_model:
        raise OriginalCheckpointError(
            f"The checkpoint's mm_hidden_size is {mm_hidden} but the Whisper d_model is {whisper_config.d_model}; "
            f"use the Whisper the checkpoint was trained with ({original.get('mm_audio_tower', 'openai/whisper-large-v2')})."
        )
    text_config = LlamaConfig(
        vocab_size=original["vocab_size"],
        hidden_size=original["hidden_size"],
        intermediate_size=original["intermediate_size"],
        num_hidden_layers=original["num_hidden_layers"],
        num_attention_heads=original["num_attention_heads"],
        num_key_value_heads=original.get("num_key_value_heads") or original["num_attention_heads"],
        hidden_act=original.get("hidden_act", "silu"),
        max_position_embeddings=original.get("max_position_embeddings", 2048),
        rms_norm_eps=original.get("rms_norm_eps", 1e-6),
        initializer_range=original.get("initializer_range", 0.02),
        pad_token_id=original.get("pad_token_id", 0),
        bos_token_id=original.get("bos_token_id", 1),
        eos_token_id=original.get("eos_token_id", 2),
        tie_word_embeddings=original.get("tie_word_embeddings", False),
    )
    whisper_config.forced_decoder_ids = None  # as the original did; irrelevant to the resampler
    return LlasmConfig(
        audio_config=whisper_config,
        text_config=text_config,
        adaptor_type="whisper_resampler",
        num_queries=original.get("audio_token_len", 64),
        audio_token=AUDIO_PATCH_TOKEN,
        audio_token_id=audio_token_id,
        tie_word_embeddings=text_config.tie_word_embeddings,
    )


def _legacy_llama_fast_pipeline(tokenizer):
    """Rebuild a (transformers 5) `LlamaTokenizer` with the pipeline of the transformers 4.31 fast Llama tokenizer
    that the original `infer.py` used: normalizer `Prepend("▁") + Replace(" ", "▁")` applied to every text piece
    between added tokens (= sentencepiece's dummy prefix per piece), no pre-tokenizer. Transformers 5 only prepends
    "▁" to the first piece, which would tokenize `<s>[INST]` differently from the original's BOS + "▁[INST]".
    Saved as a plain `tokenizer.json` so that reloading keeps this pipeline."""
    from tokenizers import Tokenizer, processors
    from transformers import PreTrainedTokenizerFast

    data = json.loads(tokenizer.backend_tokenizer.to_str())
    data["normalizer"] = {
        "type": "Sequence",
        "normalizers": [{"type": "Prepend", "prepend": "▁"}, {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}],
    }
    data["pre_tokenizer"] = None
    for token in data["added_tokens"]:
        # Matched in the raw text: a normalized "<au_start>" would become "▁<au_start>" and never match. The
        # LLaSM tokens were added with special_tokens=True by the original code.
        token["normalized"] = False
        if token["content"] in (AUDIO_PATCH_TOKEN, AUDIO_START_TOKEN, AUDIO_END_TOKEN, "<pad>"):
            token["special"] = True
    backend = Tokenizer.from_str(json.dumps(data))
    bos = tokenizer.convert_tokens_to_ids("<s>")
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )
    special = {name: getattr(tokenizer, name) for name in ("unk_token", "eos_token", "pad_token") if getattr(tokenizer, name)}
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", model_max_length=tokenizer.model_max_length, **special
    )


def load_original_tokenizer(src: Path, variant: str, vocab_size: int):
    """The original tokenizer with the variant's added tokens checked (ids = the last rows of the vocabulary),
    BOS fixed to `<s>` (the Cllama2 files say `</s>`), left padding, and (for sentencepiece Llama tokenizers)
    the transformers 4.31 fast pipeline of the original inference code."""
    import importlib.util

    from transformers import AutoTokenizer, LlamaTokenizer

    if not (src / "tokenizer.json").is_file() and (src / "tokenizer.model").is_file():
        missing = [name for name in ("sentencepiece", "google.protobuf") if importlib.util.find_spec(name.split(".")[0]) is None]
        if missing:
            raise OriginalCheckpointError(
                f"{src} has a sentencepiece tokenizer.model; reading it needs the Python packages "
                f"{', '.join('protobuf' if m == 'google.protobuf' else m for m in missing)} (pip install sentencepiece protobuf)."
            )
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # AutoTokenizer reads config.json and warns about the unknown "llaaa" type
    try:
        tokenizer = AutoTokenizer.from_pretrained(src)
    except Exception as error:
        raise OriginalCheckpointError(f"Could not load the tokenizer of {src}: {error}") from error
    finally:
        hf_logging.set_verbosity(verbosity)
    spec = VARIANTS[variant]
    if isinstance(tokenizer, LlamaTokenizer):
        tokenizer = _legacy_llama_fast_pipeline(tokenizer)
    other = next(name for name in VARIANTS if name != variant)
    vocab = tokenizer.get_vocab()
    if not any(token in vocab for token in spec["added_tokens"]):
        # e.g. a tokenizer directory without added_tokens.json: add them in the original order
        tokenizer.add_tokens(list(spec["added_tokens"]), special_tokens=True)
    first = vocab_size - len(spec["added_tokens"])
    expected = {token: first + i for i, token in enumerate(spec["added_tokens"])}
    got = {token: tokenizer.convert_tokens_to_ids(token) if token in tokenizer.get_vocab() else None for token in spec["added_tokens"]}
    # Baichuan added <pad> just before the three audio tokens; Cllama2 did not.
    looks_like_other = variant == "cllama2" and vocab.get("<pad>") == first - 1
    if got != expected or looks_like_other:
        raise OriginalCheckpointError(
            f"The tokenizer's LLaSM tokens have ids {got}{' after an added <pad>' if looks_like_other else ''}, "
            f"expected {expected} for variant {variant!r} (vocab_size {vocab_size}); is this the {other!r} variant?"
        )
    if spec["bos_token"] is not None:
        tokenizer.bos_token = spec["bos_token"]
    pad = spec["pad_token"] if spec["pad_token"] in tokenizer.get_vocab() else tokenizer.unk_token
    tokenizer.pad_token = pad
    tokenizer.padding_side = "left"
    return tokenizer


def _whisper_feature_extractor(whisper_dir: Path, whisper_config):
    from transformers import WhisperFeatureExtractor

    if (whisper_dir / "preprocessor_config.json").is_file():
        return WhisperFeatureExtractor.from_pretrained(whisper_dir)
    return WhisperFeatureExtractor(feature_size=whisper_config.num_mel_bins)


# ----------------------------------------------------------------------------------------------------------------
# main entry
# ----------------------------------------------------------------------------------------------------------------
def convert_original_checkpoint(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    whisper_dir: str | os.PathLike,
    variant: str = "cllama2",
    dtype: str | torch.dtype | None = None,
    max_shard_size: int = 5 * 1024**3,
    overwrite: bool = False,
) -> Path:
    """Convert the original LLaSM checkpoint `src` into our format in `dst`; return `dst`.

    Args:
        src: the original checkpoint directory (`config.json`, `pytorch_model.bin.index.json` + `.bin` shards or
            safetensors shards, and the tokenizer files: `tokenizer.model` or `tokenizer.json`, `tokenizer_config.json`,
            `added_tokens.json`, ...).
        dst: output directory (must not exist or be empty unless `overwrite`); written atomically via a sibling
            `<dst>.incomplete` directory that is removed on failure.
        whisper_dir: a Hugging Face Whisper checkpoint directory (`config.json` + weights; `openai/whisper-large-v2`
            for the released variants); its `preprocessor_config.json` is used for the feature extractor if present.
        variant: `"cllama2"` or `"baichuan"` (selects the added tokens, the pad token and the chat template).
        dtype: output dtype (`"float32"`, `"float16"`, `"bfloat16"` or a torch dtype); default: as stored in `src`.
        max_shard_size: largest output shard in bytes.

    Raises:
        OriginalCheckpointError: a missing shard, an unknown key, a missing key, a wrong shape, inconsistent
            tokenizer ids, or a Whisper that does not match the checkpoint.
    """
    from transformers import GenerationConfig, WhisperConfig
    from transformers.core_model_loading import revert_weight_conversion
    from transformers.dynamic_module_utils import custom_object_save

    from ..chat_templates import load_chat_template
    from ..modeling_llasm import LlasmForConditionalGeneration, suppressed_audio_tokens
    from ..processing_llasm import LlasmProcessor

    src, dst, whisper_dir = Path(src), Path(dst), Path(whisper_dir)
    if variant not in VARIANTS:
        raise ValueError(f"Unknown variant {variant!r}; expected one of {sorted(VARIANTS)}.")
    if isinstance(dtype, str):
        if dtype not in ("float32", "float16", "bfloat16"):
            raise ValueError(f"dtype must be float32, float16 or bfloat16, got {dtype!r}.")
        dtype = getattr(torch, dtype)
    if dst.exists() and any(dst.iterdir()) and not overwrite:
        raise FileExistsError(f"{dst} exists and is not empty (pass overwrite=True / --overwrite).")
    if not (whisper_dir / "config.json").is_file():
        raise OriginalCheckpointError(f"No config.json in the Whisper directory {whisper_dir}.")

    # 1. configs, tokenizer, and the expected shapes -- before touching any weights.
    original = _original_config(src)
    whisper_config = WhisperConfig.from_pretrained(whisper_dir)
    tokenizer = load_original_tokenizer(src, variant, original["vocab_size"])
    config = build_llasm_config(original, whisper_config, tokenizer.convert_tokens_to_ids(AUDIO_PATCH_TOKEN))
    with torch.device("meta"):
        model = LlasmForConditionalGeneration(config)
    # the names a checkpoint holds: `save_pretrained`'s (the layout the checkpoint conversion mapping reads)
    expected = {key: tuple(tensor.shape) for key, tensor in revert_weight_conversion(model, model.state_dict()).items()}

    src_files, src_map = _checkpoint_shards(src, "original LLaSM checkpoint")
    whisper_files, whisper_map = _checkpoint_shards(whisper_dir, "Whisper checkpoint")
    if src_map is not None:  # validate every key name from the index before reading any shard
        unknown = []
        for key in src_map:
            try:
                map_original_key(key)
            except OriginalCheckpointError:
                unknown.append(key)
        if unknown:
            raise OriginalCheckpointError(
                f"Unknown key(s) in {src}: {', '.join(unknown[:10])}{' ...' if len(unknown) > 10 else ''}. "
                "Expected LLaMA keys (model.layers.*, model.embed_tokens.*, model.norm.*, lm_head.*) and model.mm_projector.*."
            )

        planned = {map_original_key(key) for key in src_map} - {None}
        missing = sorted(key for key in expected if key.startswith(("language_model.", "multi_modal_projector.linear.")) and key not in planned)
        if missing:
            raise OriginalCheckpointError(
                f"The index of {src} lacks weights: {', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''} "
                f"({len(missing)} in all)."
            )

    # 2. stream the weights shard by shard into safetensors shards.
    work = dst.parent / (dst.name + ".incomplete")
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    try:
        writer = _ShardWriter(work, max_shard_size)
        written: dict[str, str] = {}
        sources = [(path, map_original_key, "original checkpoint") for path in src_files]
        sources += [(path, map_whisper_key, "Whisper checkpoint") for path in whisper_files]
        source_dtype = None
        for path, mapper, what in sources:
            tensor = None
            for key, tensor in _iter_shard(path):
                try:
                    target = mapper(key)
                except OriginalCheckpointError as error:
                    raise OriginalCheckpointError(f"{what} shard {path.name}: {error}") from None
                if target is None:
                    continue
                if target not in expected:
                    raise OriginalCheckpointError(
                        f"{what} shard {path.name}: key {key!r} maps to {target!r}, which the model does not have "
                        "(does the checkpoint's config.json match its weights?)."
                    )
                if tuple(tensor.shape) != expected[target]:
                    raise OriginalCheckpointError(
                        f"{what} shard {path.name}: {key!r} has shape {tuple(tensor.shape)}, expected {expected[target]} "
                        f"for {target!r} (from config.json / the Whisper config)."
                    )
                if target in written:
                    raise OriginalCheckpointError(f"{key!r} appears twice ({written[target]} and {path.name}).")
                if what == "original checkpoint" and tensor.is_floating_point() and source_dtype is None:
                    source_dtype = tensor.dtype
                out_dtype = dtype or source_dtype or tensor.dtype
                writer.add(target, tensor.to(out_dtype) if tensor.is_floating_point() else tensor)
                written[target] = path.name
            del tensor
        missing = sorted(set(expected) - set(written))
        if missing:
            raise OriginalCheckpointError(
                f"Missing weights: {', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''} "
                f"({len(missing)} in all; LLM and mm_projector keys come from {src}, audio_tower and "
                f"multi_modal_projector.decoder keys from {whisper_dir})."
            )
        writer.finish()

        # 3. config (+ code for trust_remote_code), generation config, processor.
        config.dtype = dtype or source_dtype or torch.float32
        custom_object_save(model, work, config=config)
        auto_map = dict(getattr(config, "auto_map", None) or {})
        target = f"{type(model).__module__.split('.')[-1]}.{type(model).__name__}"
        for auto_class in ("AutoModel", "AutoModelForCausalLM", "AutoModelForMultimodalLM"):
            auto_map.setdefault(auto_class, target)
        config.auto_map = auto_map
        config.save_pretrained(work)
        generation = {
            "bos_token_id": config.text_config.bos_token_id,
            "eos_token_id": config.text_config.eos_token_id,
            "pad_token_id": config.text_config.pad_token_id,
        }
        if (src / "generation_config.json").is_file():
            generation.update(json.loads((src / "generation_config.json").read_text()))
        generation.pop("transformers_version", None)
        generation.pop("_from_model_config", None)
        generation_config = GenerationConfig(**{**generation, **ORIGINAL_GENERATION})
        generation_config.suppress_tokens = suppressed_audio_tokens(generation_config, config.audio_token_id)
        generation_config.save_pretrained(work)
        processor = LlasmProcessor(
            feature_extractor=_whisper_feature_extractor(whisper_dir, whisper_config),
            tokenizer=tokenizer,
            chat_template=load_chat_template(f"llasm_{variant}"),
            audio_token=AUDIO_PATCH_TOKEN,
            adaptor_type="whisper_resampler",
            num_queries=config.num_queries,
            pad_to_window=True,
        )
        processor.save_pretrained(work)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    if dst.exists():
        shutil.rmtree(dst)
    work.rename(dst)
    return dst


__all__ = [
    "OriginalCheckpointError",
    "VARIANTS",
    "build_llasm_config",
    "convert_original_checkpoint",
    "load_original_tokenizer",
    "map_original_key",
    "map_whisper_key",
]
