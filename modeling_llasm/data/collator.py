"""Training collator: chat records with audio -> right-padded model inputs with stage-aware labels.

```python
collator = LlasmDataCollator(processor, stage="instruct", max_length=1024)
trainer = LlasmTrainer(model=model, args=args, train_dataset=records, data_collator=collator)
```

A sample is one of

- a chat record `{"id": ..., "messages": [...]}` (see `modeling_llasm.data.chat`), audio parts given by
  `path` (or `audio`) or by `array` + `sampling_rate`, optionally with the spoken `transcript`;
- a bare message list;
- an ASR pair `{"audio": path | array | {"array", "sampling_rate"}, "transcript" | "text" | "sentence": str}`.

Labels:

- `stage="instruct"` (LLaSM stage 2): every assistant turn is learned, including the template's end-of-turn
  token (e.g. `<|im_end|>`); system and user turns, audio tokens, the generation prompt (`<|im_start|>assistant\\n`)
  and whitespace the template puts after the end-of-turn token are not.
- `stage="align"` (stage 1): only the transcript is learned. ASR records (`"task": "asr"`, or whose assistant
  turns repeat the transcripts) are used as they are; any other record whose audio parts carry a `transcript`
  becomes an ASR conversation (user: audio + `asr_prompt`, assistant: transcript) for each of its clips; a record
  that is neither is refused (`ValueError`).

Assistant spans are found by rendering the conversation prefix by prefix with the chat template (the prompt up to
each assistant turn with `add_generation_prompt=True`, and up to the end of that turn) and mapping the character
spans onto the tokens of the full rendering with the tokenizer's offsets, so BPE merges across turn boundaries and
templates that inject system prompts are handled. A template whose rendering of a prefix is not a prefix of the
full rendering is refused with a clear error.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..processing_llasm import TRANSCRIPTION_INSTRUCTION, load_audio
from .chat import transcript_messages


IGNORE_INDEX = -100
STAGES = ("align", "instruct")
DEFAULT_ASR_PROMPT = TRANSCRIPTION_INSTRUCTION  # the instruction of the processor's transcription requests too


class SampleTooLongError(ValueError):
    """A sample does not fit `max_length` (audio placeholders are never truncated)."""


class LlasmDataCollator:
    r"""
    Collate chat samples with audio into `input_ids`, `attention_mask`, `labels` (right-padded) and
    `input_features`, `input_features_mask` (one row per audio window, padded to the longest window).

    Args:
        processor ([`LlasmProcessor`]): renders the chat template, computes per-window log-mel features.
        stage (`str`): `"align"` (stage 1: learn the transcript) or `"instruct"` (stage 2: learn assistant turns).
        max_length (`int`, *optional*): longest tokenized sample (audio tokens included); a longer sample raises
            [`SampleTooLongError`] naming the sample. Nothing is ever truncated.
        asr_prompt (`str`): instruction of the ASR turns built in the `"align"` stage.
        distill (`bool`): also return the text-teacher inputs `teacher_input_ids`, `teacher_attention_mask`,
            `teacher_labels`: the same conversation with every audio part replaced by its transcript (see
            `modeling_llasm.training.losses.distillation_loss`).
        ctc (`bool`): also return `ctc_labels` (the transcript's LLM tokens per clip, padded with -100) and
            `audio_token_counts` (audio tokens per clip) for CTC pre-alignment (`LlasmCtcAligner`).
        encoder_cache ([`EncoderCache`], *optional*): return the frozen encoder's cached outputs as
            `audio_encoder_hidden_states` instead of `input_features` (computed and stored on a miss).
        pad_to_multiple_of (`int`, *optional*): pad the text length to a multiple of this.
    """

    def __init__(
        self,
        processor,
        stage: str = "instruct",
        max_length: int | None = None,
        asr_prompt: str = DEFAULT_ASR_PROMPT,
        distill: bool = False,
        ctc: bool = False,
        encoder_cache=None,
        pad_to_multiple_of: int | None = None,
    ):
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {stage!r}.")
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.stage = stage
        self.max_length = max_length
        self.asr_prompt = asr_prompt
        self.distill = distill
        self.ctc = ctc
        self.encoder_cache = encoder_cache
        self.pad_to_multiple_of = pad_to_multiple_of
        self.audio_token_id = processor.audio_token_id
        self.pad_token_id = processor.pad_token_id
        self.sampling_rate = processor.feature_extractor.sampling_rate

    # ------------------------------------------------------------------ public API
    def __call__(self, samples: Sequence[Any]) -> dict[str, torch.Tensor]:
        encoded = [self.encode(sample, index) for index, sample in enumerate(samples)]
        batch = self._pad_text([e["input_ids"] for e in encoded], [e["labels"] for e in encoded])
        windows = [w for e in encoded for w in e["windows"]]
        if windows:
            batch.update(self._pad_audio(windows))
        if self.distill:
            teacher = self._pad_text([e["teacher_input_ids"] for e in encoded], [e["teacher_labels"] for e in encoded])
            batch["teacher_input_ids"] = teacher["input_ids"]
            batch["teacher_attention_mask"] = teacher["attention_mask"]
            batch["teacher_labels"] = teacher["labels"]
        if self.ctc:
            targets = [t for e in encoded for t in e["ctc_targets"]]
            longest = max((len(t) for t in targets), default=0)
            ctc_labels = torch.full((len(targets), max(longest, 1)), IGNORE_INDEX, dtype=torch.long)
            for row, target in enumerate(targets):
                ctc_labels[row, : len(target)] = torch.tensor(target, dtype=torch.long)
            batch["ctc_labels"] = ctc_labels
            batch["audio_token_counts"] = torch.tensor([n for e in encoded for n in e["clip_tokens"]], dtype=torch.long)
        return batch

    def conversation(self, sample: Any) -> list[dict]:
        """The message list this stage trains on for `sample` (see the module docstring)."""
        messages = _messages_of(sample)
        if self.stage == "instruct":
            return messages
        if _is_asr_conversation(sample, messages):
            return messages
        clips = [item for m in messages if m["role"] == "user" for item in _content_items(m) if item.get("type") == "audio"]
        if not clips or any(not isinstance(c.get("transcript"), str) for c in clips):
            # never guess: an instruction answer learned as a "transcript" would silently corrupt stage 1
            raise ValueError(
                f"stage 'align' learns transcripts, but {_sample_name(sample)} has "
                f"{'no audio' if not clips else 'an audio part without a transcript'} and is not an ASR record; "
                "give its audio parts a 'transcript' or mark it with \"task\": \"asr\"."
            )
        conversation = []
        for clip in clips:
            conversation.append({"role": "user", "content": [clip, {"type": "text", "text": self.asr_prompt}]})
            conversation.append({"role": "assistant", "content": [{"type": "text", "text": clip["transcript"]}]})
        return conversation

    def encode(self, sample: Any, index: int = 0) -> dict[str, Any]:
        """One sample -> `input_ids`, `labels` (lists, audio placeholders expanded), its audio `windows`,
        and the teacher / CTC fields when enabled."""
        name = _sample_name(sample, index)
        try:
            messages = self.conversation(sample)
            flat, clips = self.processor.flatten_messages(messages)
            ids, labels = self.tokenize_with_labels(flat)
            windows, clip_tokens = [], []
            for clip_index, clip in enumerate(clips):
                clip_windows = self._clip_windows(clip, clip_index)
                windows.extend(clip_windows)
                clip_tokens.append(sum(w["num_tokens"] for w in clip_windows))
            input_ids, label_ids = self._expand_audio(ids, labels, clip_tokens)
        except SampleTooLongError:
            raise
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(f"{name}: {error}") from error
        if not any(label != IGNORE_INDEX for label in label_ids):
            raise ValueError(f"{name}: nothing to learn (no assistant turn in the {self.stage!r} conversation).")
        if self.max_length is not None and len(input_ids) > self.max_length:
            raise SampleTooLongError(
                f"{name} is {len(input_ids)} tokens long ({sum(clip_tokens)} of them audio tokens), more than "
                f"max_length={self.max_length}. Audio placeholders are never truncated: raise max_length, shorten "
                "the conversation or its audio, or filter the sample out."
            )
        out = {"input_ids": input_ids, "labels": label_ids, "windows": windows, "clip_tokens": clip_tokens}
        if self.distill:
            teacher_flat, _ = self.processor.flatten_messages(transcript_messages(messages, where=name))
            teacher_ids, teacher_labels = self.tokenize_with_labels(teacher_flat)
            student_targets = [t for t in label_ids if t != IGNORE_INDEX]
            teacher_targets = [t for t in teacher_labels if t != IGNORE_INDEX]
            if student_targets != teacher_targets:
                raise ValueError(f"{name}: the text-teacher conversation tokenizes the responses differently.")
            out["teacher_input_ids"], out["teacher_labels"] = teacher_ids, teacher_labels
        if self.ctc:
            out["ctc_targets"] = []
            for clip_index, item in enumerate(_audio_items(messages)):
                transcript = item.get("transcript")
                if not isinstance(transcript, str) or not transcript.strip():
                    raise ValueError(f"{name}: audio clip {clip_index} has no 'transcript' for the CTC target.")
                out["ctc_targets"].append(self.tokenizer(transcript.strip(), add_special_tokens=False)["input_ids"])
        return out

    def tokenize_with_labels(self, flat_messages: list[dict]) -> tuple[list[int], list[int]]:
        """Token ids of the rendered conversation (audio placeholders not expanded) and labels that keep only
        the assistant turns (through their end-of-turn token)."""
        full, spans = self.assistant_spans(flat_messages)
        try:
            encoding = self.tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
            ids, offsets = list(encoding["input_ids"]), list(encoding["offset_mapping"])
        except (NotImplementedError, ValueError, TypeError):  # tokenizers without offsets: token-prefix fallback
            return self._labels_by_token_prefixes(flat_messages)
        labels = [IGNORE_INDEX] * len(ids)
        for position, (start, end) in enumerate(offsets):
            if end > start and any(start < span_end and end > span_start for span_start, span_end in spans):
                labels[position] = ids[position]
        if labels:
            labels[0] = IGNORE_INDEX  # never a prediction target (nothing precedes it)
        return ids, labels

    def assistant_spans(self, flat_messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
        """The full rendering and the character spans to learn (one per assistant turn)."""
        full = self._render(flat_messages, add_generation_prompt=False)
        spans = []
        for turn, message in enumerate(flat_messages):
            if message["role"] != "assistant":
                continue
            prompt = self._render(flat_messages[:turn], add_generation_prompt=True) if turn else ""
            through = self._render(flat_messages[: turn + 1], add_generation_prompt=False)
            if not through.startswith(prompt) or not full.startswith(through):
                raise ValueError(
                    "the chat template does not render conversations prefix by prefix (an earlier turn renders "
                    f"differently once turn {turn} is added), so assistant turns cannot be located for the labels."
                )
            response = through[len(prompt) :]
            start = len(prompt)
            end = start + len(response.rstrip())  # the end-of-turn token is learned; the newline after it is not
            if end > start:
                spans.append((start, end))
        return full, spans

    # ------------------------------------------------------------------ internals
    def _render(self, flat_messages: list[dict], add_generation_prompt: bool) -> str:
        if not flat_messages:
            return ""
        return self.tokenizer.apply_chat_template(
            flat_messages,
            chat_template=self.processor.chat_template,
            add_generation_prompt=add_generation_prompt,
            tokenize=False,
        )

    def _labels_by_token_prefixes(self, flat_messages: list[dict]) -> tuple[list[int], list[int]]:
        def encode(text: str) -> list[int]:
            return list(self.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []

        full, spans = self.assistant_spans(flat_messages)
        ids = encode(full)
        labels = [IGNORE_INDEX] * len(ids)
        for start, end in spans:
            prefix, through = encode(full[:start]), encode(full[:end])
            if ids[: len(through)] != through or through[: len(prefix)] != prefix:
                raise ValueError("the tokenizer has no offsets and does not tokenize prefixes consistently.")
            labels[len(prefix) : len(through)] = ids[len(prefix) : len(through)]
        if labels:
            labels[0] = IGNORE_INDEX
        return ids, labels

    def _clip_windows(self, clip: Any, clip_index: int) -> list[dict[str, Any]]:
        if self.encoder_cache is not None:
            return self.encoder_cache.get(clip)
        try:
            samples = load_audio(clip, None, self.sampling_rate)
        except ValueError as error:
            raise ValueError(f"audio clip {clip_index}: {error}") from error
        windows = []
        for window in self.processor.audio_windows(samples):
            features = self.processor.window_features(window)
            windows.append({"features": features, "mel_frames": features.shape[-1],
                            "num_tokens": self.processor.num_audio_tokens(features.shape[-1])})  # fmt: skip
        return windows

    def _expand_audio(self, ids: list[int], labels: list[int], clip_tokens: list[int]) -> tuple[list[int], list[int]]:
        placeholders = sum(1 for token in ids if token == self.audio_token_id)
        if placeholders != len(clip_tokens):
            raise ValueError(f"the conversation renders {placeholders} audio placeholder(s) for {len(clip_tokens)} clip(s).")
        out_ids, out_labels, clip = [], [], 0
        for token, label in zip(ids, labels):
            if token == self.audio_token_id:
                out_ids.extend([token] * clip_tokens[clip])
                out_labels.extend([IGNORE_INDEX] * clip_tokens[clip])
                clip += 1
            else:
                out_ids.append(token)
                out_labels.append(label)
        return out_ids, out_labels

    def _pad_text(self, ids: list[list[int]], labels: list[list[int]]) -> dict[str, torch.Tensor]:
        longest = max(len(i) for i in ids)
        if self.pad_to_multiple_of:
            longest = -(-longest // self.pad_to_multiple_of) * self.pad_to_multiple_of
        input_ids = torch.full((len(ids), longest), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(ids), longest), dtype=torch.long)
        label_ids = torch.full((len(ids), longest), IGNORE_INDEX, dtype=torch.long)
        for row, (sample_ids, sample_labels) in enumerate(zip(ids, labels)):
            input_ids[row, : len(sample_ids)] = torch.tensor(sample_ids, dtype=torch.long)
            attention_mask[row, : len(sample_ids)] = 1
            label_ids[row, : len(sample_labels)] = torch.tensor(sample_labels, dtype=torch.long)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": label_ids}

    def _pad_audio(self, windows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        longest = max(w["mel_frames"] for w in windows)
        mask = torch.zeros((len(windows), longest), dtype=torch.long)
        for row, window in enumerate(windows):
            mask[row, : window["mel_frames"]] = 1
        if "encoder_states" in windows[0]:
            frames = max(w["encoder_states"].shape[0] for w in windows)
            dim = windows[0]["encoder_states"].shape[-1]
            states = torch.zeros((len(windows), frames, dim), dtype=torch.float32)
            for row, window in enumerate(windows):
                states[row, : window["encoder_states"].shape[0]] = window["encoder_states"].float()
            return {"audio_encoder_hidden_states": states, "input_features_mask": mask}
        n_mels = windows[0]["features"].shape[0]
        features = np.zeros((len(windows), n_mels, longest), dtype=np.float32)
        for row, window in enumerate(windows):
            features[row, :, : window["mel_frames"]] = window["features"]
        return {"input_features": torch.from_numpy(features), "input_features_mask": mask}


# ---------------------------------------------------------------------- sample helpers
def _messages_of(sample: Any) -> list[dict]:
    if isinstance(sample, list):
        return sample
    if not isinstance(sample, dict):
        raise TypeError(f"a sample must be a chat record, a message list or an ASR dict, got {type(sample).__name__}")
    if "messages" in sample:
        messages = sample["messages"]
        if isinstance(messages, str):  # e.g. a datasets column holding JSON
            import json

            messages = json.loads(messages)
        return messages
    if "audio" in sample:
        transcript = next((sample[k] for k in ("transcript", "text", "sentence") if isinstance(sample.get(k), str)), None)
        if transcript is None:
            raise KeyError("an ASR sample needs a 'transcript' (or 'text' / 'sentence') string next to 'audio'")
        audio = sample["audio"]
        item = {"type": "audio", "transcript": transcript}
        if isinstance(audio, dict):
            item.update({k: v for k, v in audio.items() if k in ("array", "sampling_rate", "path")})
            if item.get("array") is not None:
                item.pop("path", None)
        elif isinstance(audio, (str, os.PathLike)):
            item["path"] = os.fspath(audio)
        else:
            item["array"], item["sampling_rate"] = audio, sample.get("sampling_rate")
        return [{"role": "user", "content": [item]}]
    raise KeyError(f"a sample needs 'messages' (or 'audio' + 'transcript'); got keys {sorted(sample)}")


def _content_items(message: dict) -> list[dict]:
    content = message.get("content")
    return [] if isinstance(content, str) else list(content or [])


def _audio_items(messages: list[dict]) -> list[dict]:
    return [item for m in messages for item in _content_items(m) if item.get("type") == "audio"]


def message_text(message: dict) -> str:
    """The text of a chat message: its string content, or its text parts joined by newlines."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    return "\n".join(item.get("text", "") for item in content if item.get("type") == "text")


def _is_asr_conversation(sample: Any, messages: list[dict]) -> bool:
    if isinstance(sample, dict) and sample.get("task") == "asr":
        return True
    transcripts = [item.get("transcript") for item in _audio_items(messages)]
    answers = [message_text(m).strip() for m in messages if m["role"] == "assistant"]
    return bool(answers) and len(answers) == len(transcripts) and all(
        isinstance(t, str) and t.strip() == a for t, a in zip(transcripts, answers)
    )


def _sample_name(sample: Any, index: int | None = None) -> str:
    where = f" (batch position {index})" if index is not None else ""
    if isinstance(sample, dict) and sample.get("id") is not None:
        return f"sample {sample['id']!r}{where}"
    return f"sample at batch position {index}" if index is not None else "a sample"


def clip_key(clip: Any) -> str:
    """A stable identity for an audio clip: path + size + mtime for files, a content hash for arrays."""
    if isinstance(clip, (str, os.PathLike)):
        path = os.path.abspath(os.fspath(clip))
        stat = os.stat(path)
        return f"file:{path}:{stat.st_size}:{stat.st_mtime_ns}"
    if isinstance(clip, bytes):
        return "bytes:" + hashlib.sha1(clip).hexdigest()
    if isinstance(clip, dict):
        array, rate = clip.get("array"), clip.get("sampling_rate")
    else:
        array, rate = clip, None
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu().numpy()
    array = np.ascontiguousarray(np.asarray(array))
    digest = hashlib.sha1(array.tobytes())
    digest.update(f"{array.dtype}:{array.shape}:{rate}".encode())
    return "array:" + digest.hexdigest()


__all__ = ["LlasmDataCollator", "SampleTooLongError", "IGNORE_INDEX", "DEFAULT_ASR_PROMPT", "clip_key"]
