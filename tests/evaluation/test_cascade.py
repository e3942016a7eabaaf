"""The cascade's Whisper (`evaluation.cascade.WhisperTranscriber`) on the real Whisper tiny.en: batched
transcription within its token budget, without the warnings transformers prints for a call made wrong."""

from __future__ import annotations

import logging

import pytest
from transformers.utils import logging as hf_logging

from modeling_llasm.evaluation.cascade import WhisperTranscriber
from modeling_llasm.evaluation.clips import speech_clip

pytestmark = pytest.mark.real_weights


@pytest.fixture(scope="module")
def transcriber():
    from modeling_llasm.conversion.ctranslate2_whisper import default_whisper_dir

    return WhisperTranscriber.from_pretrained(default_whisper_dir())


def test_batched_transcription_keeps_its_budget_and_warns_nothing(transcriber, caplog):
    clips = [speech_clip(2.0), speech_clip(6.0, seed=1)]
    logging.Logger.warning_once.cache_clear()  # transformers prints some warnings once per process
    hf_logging.enable_propagation()
    try:
        with caplog.at_level(logging.WARNING, logger="transformers"):
            full = transcriber(clips, progress="Whisper")
            transcriber.max_new_tokens = 3
            short = transcriber(clips)
    finally:
        hf_logging.disable_propagation()
        transcriber.max_new_tokens = 224
    warnings = [r.getMessage() for r in caplog.records]
    assert not [w for w in warnings if "max_new_tokens" in w or "attention mask" in w], warnings
    assert full[0].lower().startswith("the quick brown fox") and len(full[1].split()) > 8
    # the budget counts new tokens only (Whisper adds its decoder prompt to `max_length`)
    assert all(len(transcriber.tokenizer(s, add_special_tokens=False)["input_ids"]) <= 3 for s in short)
    assert all(f.startswith(s) for f, s in zip(full, short))
