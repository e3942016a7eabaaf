"""The reader's Whisper-style fallback: windows whose greedy reading looks wrong are read again at higher
temperatures, reproducibly (`config.reader_temperatures`, compression-ratio and log-probability thresholds)."""

from __future__ import annotations

import pytest
import torch

from modeling_llasm import LlasmConfig
from modeling_llasm.reading_llasm import compression_ratio
from tiny_llasm import reader_llasm, speechlike, tiny_config, tiny_tokenizer


def features_of(processor, *clips):
    batch = processor(text=[processor.audio_token] * len(clips), audio=list(clips))
    return batch["input_features"], batch["input_features_mask"]


def temperatures_read(model, call):
    reader, seen = model.model.multi_modal_projector, []
    decode = reader._decode

    def recording(*args, **kwargs):
        seen.append(args[4])
        return decode(*args, **kwargs)

    reader._decode = recording
    try:
        return seen, call()
    finally:
        del reader._decode


def test_greedy_only_unless_temperatures_are_given_and_greedy_is_kept_when_nothing_passes():
    model, processor = reader_llasm()
    features, mask = features_of(processor, speechlike(2.2, 3))
    with torch.no_grad():
        seen, greedy = temperatures_read(model, lambda: model.get_audio_features(features, mask))
        assert seen == [0.0]
        model.config.reader_temperatures = [0.0, 0.5, 1.0]
        model.config.reader_logprob_threshold = 0.0  # a mean log-probability is never above 0: every reading fails
        seen, fallback = temperatures_read(model, lambda: model.get_audio_features(features, mask))
    assert seen == [0.0, 0.5, 1.0]
    assert fallback.recognized_token_ids == greedy.recognized_token_ids
    assert torch.equal(fallback.pooler_output, greedy.pooler_output)


def test_a_passing_second_reading_replaces_the_greedy_one_and_is_reproducible():
    model, processor = reader_llasm()
    reader = model.model.multi_modal_projector
    clip, other = speechlike(2.2, 3), speechlike(1.3, 5)
    greedy_readings = set()
    decode = reader._decode
    reader._decode = lambda *args, **kwargs: greedy_readings.update(tuple(ids) for ids in decode(*args, **kwargs)[0]) or decode(*args, **kwargs)
    with torch.no_grad():
        greedy = model.get_audio_features(*features_of(processor, clip)).recognized_token_ids
        del reader._decode
        model.config.reader_temperatures = [0.0, 1.0]
        # the greedy readings "look wrong", anything else passes
        reader.needs_another_reading = lambda ids, logprob, exhausted=False: tuple(ids) in greedy_readings
        first = model.get_audio_features(*features_of(processor, clip)).recognized_token_ids
        again = model.get_audio_features(*features_of(processor, clip)).recognized_token_ids
        batched = model.get_audio_features(*features_of(processor, other, clip)).recognized_token_ids
    assert first != greedy
    assert again == first  # sampling is seeded from each window's audio
    assert batched[-len(first) :] == first  # whatever else is in the batch


def test_what_needs_another_reading():
    model, _ = reader_llasm()
    reader = model.model.multi_modal_projector
    assert reader.needs_another_reading([5, 5, 5, 5, 5, 5], -0.1, exhausted=True)  # out of budget in a loop
    assert not reader.needs_another_reading([1, 2, 3, 4, 5, 6], -0.1, exhausted=True)
    assert not reader.needs_another_reading([5, 5, 5, 5, 5, 5], -0.1)  # no tokenizer: the ratio cannot be measured
    assert reader.needs_another_reading([1, 2], -1.5)  # below Whisper's log-probability threshold
    model.config.reader_logprob_threshold = None
    assert not reader.needs_another_reading([1, 2], -1.5)


def test_compression_ratio_is_whispers():
    assert compression_ratio("") == 0.0
    assert compression_ratio("The quick brown fox jumps over the lazy dog.") < 1.0
    assert compression_ratio("five " * 40) > 2.4  # a long loop


@pytest.mark.parametrize("temperatures", [[], [0.0, -0.2]])
def test_bad_temperatures_are_refused(temperatures):
    with pytest.raises(ValueError, match="reader_temperatures must be a non-empty list of temperatures >= 0"):
        tiny_config(tiny_tokenizer(), adaptor_type="whisper_reader", reader_prompt_ids=[61], reader_temperatures=temperatures)
