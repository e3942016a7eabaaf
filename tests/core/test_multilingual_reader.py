"""The `whisper_reader` with a multilingual Whisper: the language in the decoder prompt (detected per window or
given), `language=` from the processor, `generate` and the conversation cache, and spelling as typed in any script."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from modeling_llasm import LlasmConversationCache
from tiny_llasm import EN, NO_TIMESTAMPS, TRANSCRIBE, ZH, build_tiny_llasm, multilingual_reader, reader_llasm, speechlike

def prompts_fed(model, call) -> list[list[int]]:
    """The token rows the reader's decoder embedded before its first read-out (detection step included)."""
    fed = []
    hook = model.model.multi_modal_projector.decoder.embed_tokens.register_forward_hook(lambda m, args, out: fed.append(args[0].tolist()))
    try:
        result = call()
    finally:
        hook.remove()
    return fed, result


def clip_inputs(processor, seconds: float = 1.4, seed: int = 0, **kwargs):
    messages = [{"role": "user", "content": [{"type": "audio", "audio": speechlike(seconds, seed)}]}]
    return processor.apply_chat_template(messages, add_generation_prompt=True, **kwargs)


def test_a_given_language_goes_into_the_decoder_prompt():
    model, processor = multilingual_reader()
    inputs = clip_inputs(processor)
    for language, token in (("zh", ZH), ("en", EN), ("<|zh|>", ZH)):
        fed, features = prompts_fed(model, lambda: model.get_audio_features(inputs["input_features"], inputs["input_features_mask"], language=language))
        assert fed[0] == [[61, token, TRANSCRIBE, NO_TIMESTAMPS]] * inputs["input_features"].shape[0]
        assert features.audio_languages == [language.strip("<|>")] * inputs["input_features"].shape[0]


def test_the_language_is_detected_per_window_from_the_language_tokens():
    """Whisper's own language identification: after <|startoftranscript|> the likelier language token wins."""
    model, processor = multilingual_reader()
    inputs = clip_inputs(processor, seconds=2.4)  # three windows
    embed = model.model.multi_modal_projector.decoder.embed_tokens.weight
    with torch.no_grad():
        embed[ZH] = -embed[EN]  # every state prefers exactly one of the two
    fed, first = prompts_fed(model, lambda: model.get_audio_features(inputs["input_features"], inputs["input_features_mask"]))
    assert fed[0] == [[61]] * 3  # the detection step
    assert fed[1] == [[{"en": EN, "zh": ZH}[code], TRANSCRIBE, NO_TIMESTAMPS] for code in first.audio_languages]
    with torch.no_grad():
        embed[EN], embed[ZH] = embed[ZH].clone(), embed[EN].clone()  # swap the two language tokens' directions
    swapped = model.get_audio_features(inputs["input_features"], inputs["input_features_mask"]).audio_languages
    assert swapped == [{"en": "zh", "zh": "en"}[code] for code in first.audio_languages]
    model.config.reader_language = "zh"  # a config default replaces detection
    assert model.get_audio_features(inputs["input_features"], inputs["input_features_mask"]).audio_languages == ["zh"] * 3


def test_detection_chooses_only_among_the_languages_the_model_answers_in():
    """`reader_detect_languages`: a language outside it is never detected, however likely Whisper finds it."""
    model, processor = multilingual_reader()
    inputs = clip_inputs(processor, seconds=2.4)
    features = lambda: model.get_audio_features(inputs["input_features"], inputs["input_features_mask"])  # noqa: E731
    first = features().audio_languages[0]
    other = {"en": "zh", "zh": "en"}[first]
    model.config.reader_detect_languages = [other]
    fed, restricted = prompts_fed(model, features)
    assert restricted.audio_languages == [other] * 3
    assert fed[1] == [[{"en": EN, "zh": ZH}[other], TRANSCRIBE, NO_TIMESTAMPS]] * 3
    fields = model.config.to_dict()
    assert type(model.config)(**{**fields, "reader_detect_languages": ["<|ZH|>", "en"]}).reader_detect_languages == ["zh", "en"]
    with pytest.raises(ValueError, match=r"Unknown reader language 'fr': expected one of \['en', 'zh'\]"):
        type(model.config)(**{**fields, "reader_detect_languages": ["zh", "fr"]})
    with pytest.raises(ValueError, match="reader_detect_languages needs a multilingual Whisper"):
        type(model.config)(**{**fields, "reader_language_ids": None, "reader_task_id": None, "reader_detect_languages": ["en"]})
    with pytest.raises(ValueError, match="at least one language"):
        type(model.config)(**{**fields, "reader_detect_languages": []})


def test_processor_language_reaches_generate_and_the_conversation_cache():
    model, processor = multilingual_reader()
    inputs = clip_inputs(processor, language="zh")
    assert inputs["language"] == "zh"
    gen = dict(max_new_tokens=3, do_sample=False)
    fed, out = prompts_fed(model, lambda: model.generate(**inputs, **gen))
    assert fed[0][0] == [61, ZH, TRANSCRIBE, NO_TIMESTAMPS]
    cache = LlasmConversationCache()
    fed, cached = prompts_fed(model, lambda: model.generate(**inputs, conversation_cache=cache, **gen))
    assert fed[0][0] == [61, ZH, TRANSCRIBE, NO_TIMESTAMPS] and torch.equal(cached, out)
    # the same clip in another language is another reading: the cache must not serve the zh one
    fed, _ = prompts_fed(model, lambda: model.generate(**{**inputs, "language": "en"}, conversation_cache=cache, **gen))
    assert fed and fed[0][0] == [61, EN, TRANSCRIBE, NO_TIMESTAMPS]


def test_bad_languages_are_refused_clearly():
    model, processor = multilingual_reader()
    inputs = clip_inputs(processor)
    with pytest.raises(ValueError, match=r"Unknown reader language 'fr': expected one of \['en', 'zh'\]"):
        model(**inputs, language="fr")
    with pytest.raises(ValueError, match="language must be a language code"):
        clip_inputs(processor, language=["zh"])
    english, english_processor = reader_llasm()
    english_inputs = clip_inputs(english_processor)
    with pytest.raises(ValueError, match="English-only"):
        english(**english_inputs, language="zh")
    assert english(**english_inputs, language="en").logits is not None  # English is what it reads anyway
    stack, stack_processor = build_tiny_llasm()
    with pytest.raises(ValueError, match="chooses what the whisper_reader adaptor reads"):
        stack.generate(**clip_inputs(stack_processor), language="en", max_new_tokens=2)
    with pytest.raises(ValueError, match="reader_chinese_script"):
        type(model.config)(**{**model.config.to_dict(), "reader_chinese_script": "pinyin"})


def test_the_read_memo_keeps_languages_apart():
    model, processor = multilingual_reader()
    inputs = clip_inputs(processor)
    reader = model.model.multi_modal_projector
    reader.read_cache = {}
    with torch.no_grad():
        zh = model.get_audio_features(inputs["input_features"], inputs["input_features_mask"], language="zh")
        en = model.get_audio_features(inputs["input_features"], inputs["input_features_mask"], language="en")
        zh_again = model.get_audio_features(inputs["input_features"], inputs["input_features_mask"], language="zh")
    assert zh.audio_languages != en.audio_languages and zh_again.audio_languages == zh.audio_languages
    assert len(reader.read_cache) == 2 * inputs["input_features"].shape[0]


def test_a_multilingual_reader_saves_and_reloads_its_languages_and_tokenizer(tmp_path):
    model, processor = multilingual_reader()
    model.config.reader_language = "zh"
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded = type(model).from_pretrained(tmp_path)
    assert loaded.config.reader_language_ids == {"en": EN, "zh": ZH} and loaded.config.reader_language == "zh"
    # the tokenizer saved beside the weights spells what the reader reads (see `spell`)
    assert loaded.model.multi_modal_projector.text_tokenizer is not None
    assert len(loaded.model.multi_modal_projector.text_tokenizer) == len(processor.tokenizer)
    model.save_pretrained(tmp_path / "weights-only")
    assert type(model).from_pretrained(tmp_path / "weights-only").model.multi_modal_projector.text_tokenizer is None


def test_the_pipeline_reads_in_the_language_it_is_given():
    from transformers import pipeline

    from modeling_llasm import LlasmChatPipeline

    model, processor = multilingual_reader()
    model.model.multi_modal_projector.text_tokenizer = None
    chat = pipeline("llasm-chat", model=model, processor=processor, pipeline_class=LlasmChatPipeline)
    assert model.model.multi_modal_projector.text_tokenizer is processor.tokenizer  # the pipeline spells as its processor types
    clip = speechlike(1.4, 0)
    fed, answer = prompts_fed(model, lambda: chat(clip, language="zh", max_new_tokens=4)["generated_text"])
    assert fed[0][0] == [61, ZH, TRANSCRIBE, NO_TIMESTAMPS]
    inputs = clip_inputs(processor, language="zh")
    direct = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert answer == processor.decode(direct[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip()


@pytest.mark.parametrize(
    ("tokens", "kept"),
    [
        ([1, 2, 3, 1, 2, 3, 1, 2], 3),  # a question read again and again until the budget ran out
        ([5, 5, 5, 5, 5], 1),  # "five five" read as "5 5 5 5 5"
        ([7, 8, 5, 5, 5, 5, 5, 5], 3),  # words, then a loop
        ([1, 2, 3, 4], None),  # no repetition
        ([1, 2, 3, 4, 5, 6, 9, 9], None),  # a short repeat at the end is speech, not a loop
        ([], None),
    ],
)
def test_a_loop_is_found_where_it_starts(tokens, kept):
    from modeling_llasm.reading_llasm import loop_start

    assert loop_start(tokens) == kept
