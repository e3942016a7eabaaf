"""Cache of the frozen Whisper encoder's outputs per audio clip (safetensors files, one per clip).

While the encoder is frozen (both LLaSM stages), its output for a clip never changes, so it is computed once and
read back in every later epoch, skipping audio decoding, log-mel features and the encoder forward. The cache
directory is keyed by a fingerprint of the encoder weights and the feature-extractor settings, so a different
encoder never reads stale entries.

```python
cache = EncoderCache(model, processor)                 # ~/.cache/llasm/encoder_cache/<fingerprint>/
cache.precompute(clips_of(train_records))              # optional: batched, with a progress bar
collator = LlasmDataCollator(processor, stage="align", encoder_cache=cache)
```
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..cache import llasm_cache_dir
from ..data.collator import clip_key
from ..processing_llasm import load_audio


logger = logging.getLogger(__name__)


def encoder_fingerprint(audio_tower: torch.nn.Module, processor) -> str:
    """Hash of the encoder weights, its class and the audio front-end settings."""
    digest = hashlib.sha1()
    digest.update(type(audio_tower).__name__.encode())
    for name, tensor in sorted(audio_tower.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    extractor = processor.feature_extractor
    settings = {k: getattr(extractor, k, None) for k in ("feature_size", "sampling_rate", "hop_length", "n_fft", "n_samples")}
    settings["pad_to_window"] = getattr(processor, "pad_to_window", False)
    if getattr(processor, "max_window_seconds", None) is not None:  # other windows, other encodings (absent: as before)
        settings["max_window_seconds"] = processor.max_window_seconds
    digest.update(json.dumps(settings, sort_keys=True).encode())
    return digest.hexdigest()[:16]


class EncoderCache:
    r"""
    Per-clip cache of `audio_tower` outputs: each entry holds, for every encoder window of the clip, the valid
    encoder frames `(frames, d_model)` and the window's mel-frame count.

    Args:
        model: the LLaSM model (its `audio_tower` is used; it must stay frozen while the cache is in use).
        processor: the [`LlasmProcessor`] (windowing, features, audio-token counts).
        cache_dir (`str`, *optional*): root directory; default `$LLASM_CACHE/encoder_cache` (`~/.cache/llasm`).
        dtype (`torch.dtype`): storage dtype; `float16` halves the disk use, `float32` is bit-exact.
        keep_in_memory (`bool`): also keep entries in RAM after the first read.
    """

    def __init__(self, model, processor, cache_dir: str | os.PathLike | None = None, dtype: torch.dtype = torch.float16,
                 keep_in_memory: bool = False):  # fmt: skip
        self.audio_tower = model.model.audio_tower
        self.processor = processor
        self.dtype = dtype
        self.fingerprint = encoder_fingerprint(self.audio_tower, processor)
        root = Path(cache_dir) if cache_dir is not None else llasm_cache_dir() / "encoder_cache"
        self.directory = root / f"{self.fingerprint}-{str(dtype).replace('torch.', '')}"
        self.keep_in_memory = keep_in_memory
        self._memory: dict[str, list[dict[str, Any]]] = {}
        self.hits = self.misses = 0

    def path(self, clip: Any) -> Path:
        name = hashlib.sha1(clip_key(clip).encode()).hexdigest()
        return self.directory / name[:2] / f"{name}.safetensors"

    def get(self, clip: Any) -> list[dict[str, Any]]:
        """Windows of `clip`: `{"encoder_states", "mel_frames", "num_tokens"}` each; computed on a miss."""
        key = clip_key(clip)
        if key in self._memory:
            self.hits += 1
            return self._memory[key]
        path = self.path(clip)
        if path.is_file():
            try:
                windows = self._read(path)
                self.hits += 1
            except (OSError, SafetensorError, KeyError) as error:  # a torn file from a killed run: recompute it
                logger.warning("%s: unreadable encoder-cache entry (%s); recomputing it", path, error)
                windows = self._compute([clip])[0]
        else:
            windows = self._compute([clip])[0]
        if self.keep_in_memory:
            self._memory[key] = windows
        return windows

    def precompute(self, clips: Iterable[Any], batch_size: int = 16, progress: bool = True) -> int:
        """Encode every clip not yet cached, `batch_size` clips at a time; returns how many were computed."""
        todo = [clip for clip in clips if not self.path(clip).is_file()]
        if not todo:
            return 0
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc="encoder cache", unit="clip", disable=not progress)
        for start in range(0, len(todo), batch_size):
            chunk = todo[start : start + batch_size]
            self._compute(chunk)
            bar.update(len(chunk))
        bar.close()
        return len(todo)

    # ------------------------------------------------------------------ internals
    def _read(self, path: Path) -> list[dict[str, Any]]:
        tensors = load_file(str(path))
        mel_frames = tensors["mel_frames"].tolist()
        return [
            {"encoder_states": tensors[f"window_{i}"], "mel_frames": int(frames),
             "num_tokens": self.processor.num_audio_tokens(int(frames))}
            for i, frames in enumerate(mel_frames)
        ]  # fmt: skip

    @torch.no_grad()
    def _compute(self, clips: list[Any]) -> list[list[dict[str, Any]]]:
        processor = self.processor
        rate = processor.feature_extractor.sampling_rate
        per_clip, flat = [], []
        for clip in clips:
            windows = [processor.window_features(w) for w in processor.audio_windows(load_audio(clip, None, rate))]
            per_clip.append(len(windows))
            flat.extend(windows)
        longest = max(w.shape[-1] for w in flat)
        features = torch.zeros((len(flat), flat[0].shape[0], longest), dtype=torch.float32)
        mask = torch.zeros((len(flat), longest), dtype=torch.long)
        for row, window in enumerate(flat):
            features[row, :, : window.shape[-1]] = torch.from_numpy(window)
            mask[row, : window.shape[-1]] = 1
        parameter = next(self.audio_tower.parameters())
        was_training = self.audio_tower.training
        self.audio_tower.eval()  # cached outputs are reused every epoch: never bake dropout into them
        try:
            states = self.audio_tower(features.to(parameter.device), attention_mask=mask.to(parameter.device)).last_hidden_state
        finally:
            self.audio_tower.train(was_training)
        states = states.float().cpu()
        results, row = [], 0
        for clip, count in zip(clips, per_clip):
            windows, tensors = [], {}
            for i in range(count):
                mel = int(mask[row].sum())
                frames = (mel - 1) // 2 + 1
                stored = states[row, :frames].to(self.dtype).contiguous()
                tensors[f"window_{i}"] = stored
                windows.append({"encoder_states": stored, "mel_frames": mel, "num_tokens": processor.num_audio_tokens(mel)})
                row += 1
            tensors["mel_frames"] = torch.tensor([w["mel_frames"] for w in windows], dtype=torch.long)
            path = self.path(clip)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
            save_file(tensors, str(tmp))
            os.replace(tmp, path)
            self.misses += 1
            results.append(windows)
        return results


def clips_of(records: Iterable[Any]) -> list[Any]:
    """Every audio clip of chat records / ASR samples, in order, as the collator passes them to the cache."""
    from ..data.collator import _audio_items, _messages_of
    from ..processing_llasm import _audio_of_item

    return [_audio_of_item(item, 0) for record in records for item in _audio_items(_messages_of(record))]


__all__ = ["EncoderCache", "encoder_fingerprint", "clips_of"]
