"""Streaming input (`LlasmAudioStream`): audio that arrives in chunks is read and prefilled while it arrives, and the
answer equals the whole clip's. Tiny models: 1-s windows, so a 3.3 s clip spans four windows."""

import numpy as np
import pytest
import torch

from modeling_llasm import LlasmAudioStream, LlasmConversationCache, generate_from_audio_stream
from modeling_llasm.configuration_llasm import encoder_frame_mask, window_token_counts
from modeling_llasm.modeling_llasm import encode_audio_windows
from tiny_llasm import TINY_ADAPTORS, reader_llasm, speechlike

GREEDY = {"max_new_tokens": 8, "do_sample": False}


def turn(clip, text=None):
    content = [{"type": "audio", "array": clip, "sampling_rate": 16000}]
    if text:
        content.append({"type": "text", "text": text})
    return {"role": "user", "content": content}


def whole_clip_answer(model, processor, messages):
    inputs = processor.apply_chat_template(messages, add_generation_prompt=True)
    with torch.no_grad():
        return model.generate(**inputs, **GREEDY)


def chunked(clip, seconds):
    size = int(seconds * 16000)
    return [clip[i : i + size] for i in range(0, len(clip), size)]


@pytest.mark.parametrize("adaptor", sorted(TINY_ADAPTORS))
@pytest.mark.parametrize("chunk_seconds", [0.1, 0.5, 2.0])
def test_streamed_answer_equals_the_whole_clip_answer(adaptor, chunk_seconds):
    model, processor = TINY_ADAPTORS[adaptor]()
    clip = speechlike(3.3, 2)
    expected = whole_clip_answer(model, processor, [turn(clip)])
    output, stream = generate_from_audio_stream(model, processor, chunked(clip, chunk_seconds), update_seconds=0, **GREEDY)
    assert torch.equal(output, expected)
    assert stream.prompt_length == expected.shape[1] - GREEDY["max_new_tokens"]
    assert stream.updates == len(chunked(clip, chunk_seconds)) - 1  # the last chunk is read by generate


@pytest.mark.parametrize("chunk_seconds", [0.1, 0.5])
def test_the_reader_prefills_what_two_readings_agree_on_before_the_end(chunk_seconds):
    model, processor = reader_llasm(seed=1)
    clip = speechlike(3.3, 2)
    stream = LlasmAudioStream(model, processor, update_seconds=0)
    for chunk in chunked(clip, chunk_seconds):
        stream.append(chunk)
    assert any(not isinstance(k, int) for k in stream.cache.keys)  # words were prefilled while the audio arrived
    output = stream.generate(**GREEDY)
    assert torch.equal(output, whole_clip_answer(model, processor, [turn(clip)]))
    # the end reused the prompt head and words read before it (a later reading may still revise agreed words: those
    # positions are dropped and prefilled again, so the answer stays the whole clip's)
    first_audio_position = next(i for i, k in enumerate(stream.cache.keys) if not isinstance(k, int))
    assert stream.cache.reused_tokens > first_audio_position


@pytest.mark.parametrize("adaptor", sorted(TINY_ADAPTORS))
def test_when_the_end_adds_nothing_the_first_token_was_computed_while_the_audio_arrived(adaptor):
    """Two updates on the same audio (the speaker stopped before the stream ended) agree on the whole prompt: its
    last position is prefilled with the first token's logits, and `generate` takes them (`LlasmComputedStep`) instead
    of computing that position again. The answer is still the whole clip's."""
    model, processor = TINY_ADAPTORS[adaptor]()
    clip = speechlike(2.3, 1)
    stream = LlasmAudioStream(model, processor, update_seconds=0)
    for chunk in chunked(clip, 0.5):
        stream.append(chunk)
    stream.update()  # nothing new arrived: this reading equals the last one
    assert stream.cache.next_logits is not None
    prompt_positions = len(stream.cache.keys)  # all of them prefilled
    output = stream.generate(**GREEDY)
    assert torch.equal(output, whole_clip_answer(model, processor, [turn(clip)]))
    assert stream.cache.computed_steps == 1
    assert stream.cache.reused_tokens == prompt_positions - 1  # the last one came from the computed step


@pytest.mark.parametrize("adaptor", ["whisper_reader", "stack_mlp"])
def test_pause_cut_windows_stream_to_the_whole_clip_answer_and_the_end_encodes_only_the_last(adaptor):
    """With `max_window_seconds`, a window is final once its audio is in (its cut depends on its own audio only): the
    streamed answer is still the whole clip's, and the end of speech encodes just the open last window."""
    model, processor = TINY_ADAPTORS[adaptor]()
    processor.max_window_seconds = 0.6  # the tiny encoder's window is 1 s
    clip = speechlike(3.3, 2)
    expected = whole_clip_answer(model, processor, [turn(clip)])
    stream = LlasmAudioStream(model, processor, update_seconds=0)
    chunks = chunked(clip, 0.25)
    for chunk in chunks[:-1]:
        stream.append(chunk)
    stream.append(chunks[-1], update=False)
    encoded_windows = []
    hook = model.model.audio_tower.register_forward_pre_hook(lambda module, args: encoded_windows.append(args[0].shape[0]))
    output = stream.generate(**GREEDY)
    hook.remove()
    assert torch.equal(output, expected)
    assert len(processor.audio_windows(clip)) >= 5 and sum(encoded_windows) == 1


def test_a_computed_step_is_the_forward_it_replaces():
    """The logits and keys/values a computed step gives back are those of computing its position (to float rounding
    of a prefill in parts); it applies once, to exactly its position, and never to a call that asks for more."""
    from modeling_llasm.conversation_cache_llasm import LlasmComputedStep

    model, processor = reader_llasm(seed=2)
    inputs = processor.apply_chat_template([turn(speechlike(1.6, 0))], add_generation_prompt=True)
    ahead = LlasmConversationCache()
    keys, ids, embeds = ahead.prompt(model, inputs["input_ids"], None, {"input_features": inputs["input_features"],
                                                                       "input_features_mask": inputs["input_features_mask"]})  # fmt: skip
    ahead.extend(model, keys, embeds, with_logits=True)
    step = ahead.computed_step(keys)
    assert isinstance(step, LlasmComputedStep) and step.position == len(keys) - 1
    plain = LlasmConversationCache()
    plain.extend(model, keys[:-1], embeds[:-1])
    with torch.no_grad():
        computed = model(inputs_embeds=embeds[None, -1:], cache=plain.cache, use_cache=True)
    ahead.reuse(keys, keep_last=True)
    assert not step.applies(ahead.cache, new_positions=2)
    with torch.no_grad():
        replayed = model(inputs_embeds=embeds[None, -1:], cache=ahead.cache, use_cache=True, computed_step=step)
    torch.testing.assert_close(replayed.logits, computed.logits, rtol=1e-4, atol=1e-4)
    for mine, theirs in zip(ahead.cache.layers, plain.cache.layers):
        torch.testing.assert_close(mine.keys, theirs.keys, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(mine.values, theirs.values, rtol=1e-4, atol=1e-4)
    assert step.used and not step.applies(ahead.cache, new_positions=1)  # once
    edited = [*keys[:-1], keys[-1] + 1 if isinstance(keys[-1], int) else 0]
    assert ahead.computed_step(edited) is None  # another prompt: nothing computed ahead


def test_update_seconds_sets_how_often_work_is_done_between_chunks():
    model, processor = reader_llasm()
    clip = speechlike(2.0, 0)
    stream = LlasmAudioStream(model, processor, update_seconds=0.5)
    for chunk in chunked(clip, 0.1):
        stream.append(chunk)
    assert stream.updates == 4


def test_a_streamed_turn_continues_a_chat():
    model, processor = reader_llasm(seed=3)
    first, second = speechlike(1.4, 0), speechlike(2.1, 1)
    cache = LlasmConversationCache()
    inputs = processor.apply_chat_template([turn(first)], add_generation_prompt=True)
    with torch.no_grad():
        out = model.generate(**inputs, conversation_cache=cache, **GREEDY)
    answer = processor.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    history = [turn(first), {"role": "assistant", "content": answer}]
    expected = whole_clip_answer(model, processor, [*history, turn(second, "and this?")])
    stream = LlasmAudioStream(model, processor, messages=history, text="and this?", conversation_cache=cache, update_seconds=0)
    for chunk in chunked(second, 0.3):
        stream.append(chunk)
    output = stream.generate(**GREEDY)
    assert torch.equal(output, expected)
    assert stream.cache.reused_tokens > inputs["input_ids"].shape[1] // 2  # the first turn was not prefilled again


def test_bad_streams_are_refused():
    model, processor = reader_llasm()
    with pytest.raises(ValueError, match="16000 Hz"):
        LlasmAudioStream(model, processor, sampling_rate=8000)
    stream = LlasmAudioStream(model, processor)
    with pytest.raises(ValueError, match="No audio"):
        stream.generate(**GREEDY)
    with pytest.raises(ValueError, match="1-D mono"):
        stream.append(np.zeros((2, 1600), dtype=np.float32))
    stream.append(speechlike(0.6, 0))
    stream.generate(**GREEDY)
    with pytest.raises(RuntimeError, match="has ended"):
        stream.append(speechlike(0.2, 0))


def read_windows(model, processor, clip, drafts=None, calls=None):
    inputs = processor(text=processor.audio_token, audio=clip)
    with torch.no_grad():
        encoded, mask = encode_audio_windows(model.model.audio_tower, inputs["input_features"], inputs["input_features_mask"])
        reader = model.model.multi_modal_projector
        hook = reader.decoder.layers[0].register_forward_pre_hook(lambda module, args: calls.append(1)) if calls is not None else None
        reading = reader.read(encoded.last_hidden_state, encoder_frame_mask(mask), window_token_counts(model.config, mask), drafts=drafts)
    if hook is not None:
        hook.remove()
    return reading


def test_a_draft_gives_the_same_reading_in_fewer_decoder_steps():
    """`read(drafts=...)` checks an earlier reading in one pass and reads greedily after the first disagreement: the
    reading is the one without a draft, whether the draft is right, cut short, wrong in the middle or too long."""
    model, processor = reader_llasm(seed=0)
    with torch.no_grad():  # end-of-text less likely: a longer reading
        model.model.multi_modal_projector.decoder.embed_tokens.weight[60] *= 0.5
    clip = speechlike(0.9, 1)  # one window
    plain_calls: list = []
    ids, states, languages = read_windows(model, processor, clip, calls=plain_calls)
    reading = ids[0]
    assert len(reading) >= 4
    wrong = list(reading)
    wrong[len(wrong) // 2] = (wrong[len(wrong) // 2] + 1) % 60
    for draft in (reading, reading[:2], wrong, reading + reading[:3]):
        calls: list = []
        again = read_windows(model, processor, clip, drafts=[draft], calls=calls)
        assert again[0] == ids and again[2] == languages
        torch.testing.assert_close(again[1][0], states[0], rtol=1e-4, atol=1e-4)
        if draft is reading:
            assert len(calls) < len(plain_calls) // 2  # verified at once, not token by token
