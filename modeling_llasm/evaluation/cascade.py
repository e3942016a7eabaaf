"""The cascade baseline: Whisper ASR (encoder + autoregressive decoder) -> the LLM reading the transcript.

`WhisperTranscriber` wraps a `WhisperForConditionalGeneration` checkpoint; the LLM half of the cascade is the
LLaSM model's own language model (a text-only prompt runs it unchanged), so both systems share one LLM.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

# An ASR function: 16 kHz float32 clips -> transcripts. `WhisperTranscriber` is one; tests pass stubs.
AsrFunction = Callable[[Sequence[np.ndarray]], list[str]]


class WhisperTranscriber:
    """Greedy Whisper transcription of 16 kHz clips (batched; clips over 30 s use Whisper's long-form mode)."""

    def __init__(self, model, feature_extractor, tokenizer, max_new_tokens: int = 224, batch_size: int = 8):
        self.model = model.eval()
        self.feature_extractor = feature_extractor
        self.tokenizer = tokenizer
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size

    @classmethod
    def from_pretrained(cls, whisper_dir: str | os.PathLike, dtype: torch.dtype = torch.float32, **kwargs) -> WhisperTranscriber:
        from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration, WhisperTokenizerFast

        model = WhisperForConditionalGeneration.from_pretrained(whisper_dir, dtype=dtype)
        feature_extractor = WhisperFeatureExtractor.from_pretrained(whisper_dir)
        tokenizer = WhisperTokenizerFast.from_pretrained(whisper_dir)
        return cls(model, feature_extractor, tokenizer, **kwargs)

    @property
    def window_samples(self) -> int:
        return self.feature_extractor.n_samples

    def generate_ids(self, clips: Sequence[np.ndarray]) -> torch.Tensor:
        """Token ids of the transcripts of `clips` (all at most one window long)."""
        inputs = self.feature_extractor(
            list(clips), sampling_rate=self.feature_extractor.sampling_rate, return_tensors="pt", return_attention_mask=True
        )  # fmt: skip
        kwargs = self._task_kwargs()
        if getattr(self.model.generation_config, "no_timestamps_token_id", None) is not None:
            kwargs["return_timestamps"] = False  # plain transcripts (the real checkpoints have this field)
        # Whisper's `generate` counts `max_length` after its decoder prompt (it adds the prompt's length), and with
        # `max_new_tokens` it warns that both are set (its own generation config sets max_length): the budget goes here
        with torch.inference_mode():
            return self.model.generate(inputs.input_features.to(self.model.dtype), attention_mask=inputs.attention_mask,
                                       max_length=self.max_new_tokens, do_sample=False, **kwargs)  # fmt: skip

    def _task_kwargs(self) -> dict:
        """A multilingual Whisper transcribes (as `whisper.transcribe` does by default), in the detected language: without
        the task, transformers prompts the language token alone and the base model loops (韓國的首都在香港的首首首...)."""
        return {"task": "transcribe"} if getattr(self.model.generation_config, "is_multilingual", False) else {}

    def _long_form(self, clip: np.ndarray) -> str:
        inputs = self.feature_extractor(
            clip, sampling_rate=self.feature_extractor.sampling_rate, return_tensors="pt", truncation=False,
            padding="longest", return_attention_mask=True,
        )  # fmt: skip
        with torch.inference_mode():
            ids = self.model.generate(
                inputs.input_features.to(self.model.dtype), attention_mask=inputs.attention_mask,
                return_timestamps=True, do_sample=False, **self._task_kwargs(),
            )  # fmt: skip
        return self.tokenizer.decode(ids[0], skip_special_tokens=True).strip()

    def __call__(self, clips: Sequence[np.ndarray], progress: str | None = None) -> list[str]:
        """The transcript of each clip; `progress`: the description of a progress bar (None: none)."""
        from tqdm.auto import tqdm

        texts: list[str | None] = [None] * len(clips)
        # Long-form (> 30 s) transcription needs Whisper's timestamp tokens; a checkpoint without them truncates.
        long_form = getattr(self.model.generation_config, "no_timestamps_token_id", None) is not None
        short = [i for i, c in enumerate(clips) if len(c) <= self.window_samples or not long_form]
        with tqdm(total=len(clips), desc=progress, unit="clip", disable=progress is None) as bar:
            for start in range(0, len(short), self.batch_size):
                chunk = short[start : start + self.batch_size]
                ids = self.generate_ids([clips[i] for i in chunk])
                for i, text in zip(chunk, self.tokenizer.batch_decode(ids, skip_special_tokens=True)):
                    texts[i] = text.strip()
                bar.update(len(chunk))
            for i, clip in enumerate(clips):
                if texts[i] is None:
                    texts[i] = self._long_form(clip)
                    bar.update(1)
        return texts  # type: ignore[return-value]


def whisper_dir_for(model_dir: str | os.PathLike | None) -> Path:
    """The full Whisper checkpoint (encoder + decoder) a LLaSM model was built from.

    `llasm_build.json` (written by `llasm build-base`) records it; otherwise the embedded Whisper tiny.en.
    """
    if model_dir is not None:
        manifest = Path(model_dir) / "llasm_build.json"
        if manifest.is_file():
            recorded = json.loads(manifest.read_text()).get("whisper")
            if recorded and (Path(recorded) / "config.json").is_file():
                return Path(recorded)
    from ..conversion.ctranslate2_whisper import default_whisper_dir

    return default_whisper_dir()
