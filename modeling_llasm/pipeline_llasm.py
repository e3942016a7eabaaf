"""`pipeline("llasm-chat")`: speech (and text) in, the assistant's answer out."""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Iterator, Sized
from typing import Any

import numpy as np
import torch
from transformers import Pipeline, TextIteratorStreamer

from .conversation_cache_llasm import LlasmConversationCache
from .processing_llasm import collate_model_inputs

AUDIO_TYPES = (str, os.PathLike, bytes, np.ndarray, torch.Tensor)


class LlasmChatPipeline(Pipeline):
    r"""
    Chat with a LLaSM model. Inputs:

    - an audio clip (file path, bytes, numpy/torch array, or `{"array", "sampling_rate"}` dict), with an optional
      `text=` that follows the audio in the same user turn (e.g. an instruction);
    - a dict `{"audio": ..., "text": ...}` (either key optional);
    - a chat: a list of messages whose content items are `{"type": "audio", ...}` / `{"type": "text", ...}`.

    Generation parameters (`max_new_tokens`, `do_sample`, `streamer`, ...) pass through to `generate()`;
    `language="zh"` makes a multilingual `whisper_reader` read the audio in that language (default: detected).
    With `stream=True` the call returns an iterator of text pieces as they are generated.

    Returns `{"generated_text": answer, "conversation": messages + [assistant turn]}`; with
    `num_return_sequences=n > 1`, a list of `n` such dicts. A list (or dataset) of inputs with `batch_size=N`
    generates N conversations per `generate` call (left-padded; the same answers as one by one).

    Reuse of earlier work (one conversation at a time): the prompt head every request shares (system prompt and
    template) is prefilled once per pipeline and copied into each call; pass `conversation_cache=
    LlasmConversationCache()` and the whole conversation each turn to prefill only the new turn and encode only new
    audio (`prefix_cache=False`: no shared prompt head).

    Example:

    ```python
    >>> import modeling_llasm
    >>> from transformers import pipeline
    >>> chat = pipeline("llasm-chat", model="~/.cache/llasm/llasm-tiny-base")
    >>> chat("question.wav", max_new_tokens=64)["generated_text"]
    >>> for piece in chat({"text": "What is the capital of France?"}, stream=True):
    ...     print(piece, end="")
    >>> answers = chat(["q1.wav", "q2.wav", "q3.wav"], batch_size=8)
    >>> from modeling_llasm import LlasmConversationCache
    >>> cache = LlasmConversationCache()
    >>> turn = chat("turn1.wav", conversation_cache=cache)
    >>> messages = turn["conversation"] + [{"role": "user", "content": [{"type": "audio", "path": "turn2.wav"}]}]
    >>> chat(messages, conversation_cache=cache)  # prefills turn 2 only
    ```
    """

    _load_processor = True
    _load_tokenizer = False
    _load_feature_extractor = False
    _load_image_processor = False
    _pipeline_calls_generate = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.processor.check_model_config(self.model.config)
        reader = self.model.model.multi_modal_projector
        if self.model.config.adaptor_type == "whisper_reader" and reader.text_tokenizer is None:
            self.model.set_reader_tokenizer(self.processor.tokenizer)  # spell what it reads as typed text

    def _sanitize_parameters(self, text: str | None = None, system_prompt: str | None = None, stream: bool | None = None,
                             conversation_cache: LlasmConversationCache | None = None, prefix_cache: bool | None = None,
                             language: str | None = None, **generate_kwargs):  # fmt: skip
        unknown = sorted(k for k in generate_kwargs if not _is_generate_argument(k))
        if unknown:
            raise ValueError(
                f"llasm-chat got unknown keyword argument(s) {unknown}; it takes audio=, text=, system_prompt=, "
                "stream=, batch_size=, conversation_cache=, prefix_cache=, language= and generate() arguments (GenerationConfig "
                "fields such as max_new_tokens, do_sample, temperature, num_beams, num_return_sequences; streamer, "
                "logits_processor, ...)."
            )
        if conversation_cache is not None and not isinstance(conversation_cache, LlasmConversationCache):
            raise ValueError(f"conversation_cache must be a LlasmConversationCache, got {type(conversation_cache).__name__}.")
        preprocess_params = {}
        if text is not None:
            preprocess_params["text"] = text
        if system_prompt is not None:
            preprocess_params["system_prompt"] = system_prompt
        if language is not None:  # the whisper_reader reads the audio in it (model.generate's `language`)
            generate_kwargs["language"] = language
        forward_params = {"generate_kwargs": generate_kwargs}
        if conversation_cache is not None:
            forward_params["conversation_cache"] = conversation_cache
        if prefix_cache is not None:
            forward_params["prefix_cache"] = prefix_cache
        return preprocess_params, forward_params, {}

    def __call__(self, inputs: Any = None, stream: bool = False, **kwargs) -> dict | list | Iterator[str]:
        if "audio" in kwargs:  # chat(audio=..., text=...), as image-text-to-text takes images=
            if inputs is not None:
                raise ValueError("Pass the audio either as the first argument or as audio=, not both.")
            inputs = {"audio": kwargs.pop("audio"), "text": kwargs.pop("text", None)}
        batch_size = kwargs.get("batch_size") or getattr(self, "_batch_size", None) or 1
        if batch_size != 1 and (stream or kwargs.get("conversation_cache") is not None):
            raise ValueError(f"stream=True and conversation_cache= take one conversation at a time (batch_size=1), got batch_size={batch_size}.")
        if not stream:
            return super().__call__(inputs, **kwargs)
        if kwargs.get("streamer") is not None:
            raise ValueError("Pass either stream=True (the call returns an iterator) or your own `streamer`, not both.")
        if kwargs.get("num_return_sequences", 1) != 1:
            raise ValueError("stream=True streams one answer; num_return_sequences must be 1.")
        streamer = TextIteratorStreamer(self.processor.tokenizer, skip_prompt=True, skip_special_tokens=True)
        failure: list[BaseException] = []

        def run() -> None:
            try:
                Pipeline.__call__(self, inputs, **kwargs, streamer=streamer)
            except BaseException as error:  # surface it in the caller's thread, after ending the stream
                failure.append(error)
                streamer.end()

        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        return _joining(streamer, worker, failure)

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs) -> None:
        """Save model, processor and this pipeline's code with a `custom_pipelines` entry (hub-ready)."""
        # `pipeline(..., dtype=...)` forwards dtype to the tokenizer, whose config then can't be written as JSON.
        self.processor.tokenizer.init_kwargs.pop("dtype", None)
        super().save_pretrained(save_directory, **kwargs)
        self.processor.save_pretrained(save_directory)

    def preprocess(self, inputs: Any, text: str | None = None, system_prompt: str | None = None) -> dict:
        messages = self.to_messages(inputs, text, system_prompt)
        return {"model_inputs": dict(self.processor.apply_chat_template(messages, add_generation_prompt=True)), "messages": messages}

    @staticmethod
    def to_messages(inputs: Any, text: str | None = None, system_prompt: str | None = None) -> list[dict]:
        """Normalise the accepted input forms to a chat message list."""
        if hasattr(inputs, "messages"):  # transformers wraps message lists in a `Chat`
            inputs = inputs.messages
        if isinstance(inputs, list) and inputs and isinstance(inputs[0], dict) and "role" in inputs[0]:
            messages = list(inputs)
            if text is not None:
                messages.append({"role": "user", "content": [{"type": "text", "text": text}]})
        else:
            if isinstance(inputs, dict) and ("audio" in inputs or "text" in inputs) and "array" not in inputs:
                audio, text = inputs.get("audio"), inputs.get("text", text)
            elif inputs is None or isinstance(inputs, (AUDIO_TYPES, dict)):
                audio = inputs
            else:
                raise ValueError(
                    f"llasm-chat takes audio (path, bytes, array, dict), {{'audio', 'text'}} or a message list; got {type(inputs).__name__}."
                )
            content = []
            if audio is not None:
                content.append({"type": "audio", "audio": audio} if not isinstance(audio, dict) else {"type": "audio", **audio})
            if text is not None:
                content.append({"type": "text", "text": text})
            if not content:
                raise ValueError("llasm-chat needs audio, text, or both.")
            messages = [{"role": "user", "content": content}]
        if system_prompt is not None and messages[0]["role"] != "system":
            messages = [{"role": "system", "content": system_prompt}, *messages]
        return messages

    def get_iterator(self, inputs, num_workers: int, batch_size: int, preprocess_params, forward_params, postprocess_params):
        """As `Pipeline.get_iterator`, batching with `collate_model_inputs` (audio windows are not per-sample rows)."""
        if batch_size == 1:
            return super().get_iterator(inputs, num_workers, batch_size, preprocess_params, forward_params, postprocess_params)
        from torch.utils.data import DataLoader
        from transformers.pipelines.pt_utils import PipelineDataset, PipelineIterator

        sized = isinstance(inputs, Sized)  # as the base class: an iterable is read by one worker
        dataset = (PipelineDataset if sized else PipelineIterator)(inputs, self.preprocess, preprocess_params)
        pad_token_id = self.processor.pad_token_id

        def collate(items: list[dict]) -> dict:
            return {"model_inputs": collate_model_inputs([item["model_inputs"] for item in items], pad_token_id),
                    "messages": [item["messages"] for item in items]}  # fmt: skip

        loader = DataLoader(dataset, num_workers=num_workers if sized else min(num_workers, 1), batch_size=batch_size,
                            collate_fn=collate)  # fmt: skip
        model_iterator = PipelineIterator(loader, self.forward, forward_params, loader_batch_size=batch_size)
        return PipelineIterator(model_iterator, self.postprocess, postprocess_params)

    def _forward(self, model_inputs: dict, generate_kwargs: dict | None = None,
                 conversation_cache: LlasmConversationCache | None = None, prefix_cache: bool = True) -> dict:  # fmt: skip
        inputs = model_inputs["model_inputs"]
        generate_kwargs = dict(generate_kwargs or {})
        # the Pipeline base class merges the pipeline's own generation defaults (as the built-in pipelines do)
        prepare = getattr(self, "_prepare_generate_kwargs", None)
        if prepare is not None:
            generate_kwargs = prepare(generate_kwargs)
        # beams, batches, a caller's own KV cache, use_cache=False or full generate outputs: no shared prompt head
        shareable = LlasmConversationCache.unsupported(inputs["input_ids"].shape[0], **generate_kwargs) is None
        if conversation_cache is None and prefix_cache and shareable:
            conversation_cache = self.shared_prefix_cache().copy()
        elif conversation_cache is not None and not conversation_cache.keys and prefix_cache:
            conversation_cache.start_from(self.shared_prefix_cache())
        if conversation_cache is not None:
            generate_kwargs["conversation_cache"] = conversation_cache
        sequences = self.model.generate(**inputs, **generate_kwargs)
        new_tokens = sequences[:, inputs["input_ids"].shape[1] :]
        # (conversations, returned sequences, tokens): the base class splits a batch along the first axis
        new_tokens = new_tokens.reshape(inputs["input_ids"].shape[0], -1, new_tokens.shape[-1])
        return {"new_tokens": new_tokens, "messages": model_inputs["messages"]}

    def shared_prefix_cache(self) -> LlasmConversationCache:
        """The KV cache of the prompt head every conversation with the default system prompt shares, prefilled on
        first use (`LlasmConversationCache.for_prompt_head`); calls take a copy."""
        if getattr(self, "_shared_prefix", None) is None:
            self._shared_prefix = LlasmConversationCache.for_prompt_head(self.model, self.processor)
        return self._shared_prefix

    def postprocess(self, model_outputs: dict) -> dict | list[dict]:
        results = []
        for tokens in model_outputs["new_tokens"][0]:  # one row per returned sequence
            answer = self.processor.decode(tokens, skip_special_tokens=True).strip()
            conversation = [*model_outputs["messages"], {"role": "assistant", "content": answer}]
            results.append({"generated_text": answer, "conversation": conversation})
        return results[0] if len(results) == 1 else results


def _is_generate_argument(name: str) -> bool:
    """Whether `generate()` understands `name` (or it is the pipeline's `batch_size`)."""
    return name in _generate_argument_names()


@functools.cache
def _generate_argument_names() -> frozenset[str]:
    """GenerationConfig fields and `generate()`'s own parameters, computed once (the pipeline checks every call)."""
    import inspect

    from transformers import GenerationConfig, GenerationMixin

    return frozenset({*GenerationConfig().to_dict(), *inspect.signature(GenerationMixin.generate).parameters, "batch_size"})


def _joining(streamer: TextIteratorStreamer, worker: threading.Thread, failure: list[BaseException]) -> Iterator[str]:
    yield from streamer
    worker.join()
    if failure:
        raise failure[0]


__all__ = ["LlasmChatPipeline"]
