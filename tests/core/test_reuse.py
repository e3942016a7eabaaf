"""Reusing earlier work across calls: `LlasmConversationCache` (multi-turn KV reuse, only new audio encoded) and the
pipeline's shared prompt-head cache give the same answers as a full prefill."""

import pytest
import torch

from modeling_llasm import LlasmChatPipeline, LlasmConversationCache
from tiny_llasm import build_tiny_llasm, compress_llasm, reader_llasm, speechlike

MODELS = {"stack_mlp": build_tiny_llasm, "ctc_compress": compress_llasm, "whisper_reader": reader_llasm}


def audio_turn(seconds: float, seed: int, text: str | None = None) -> dict:
    content = [{"type": "audio", "array": speechlike(seconds, seed), "sampling_rate": 16000}]
    if text:
        content.append({"type": "text", "text": text})
    return {"role": "user", "content": content}


class EncoderCalls:
    """Counts the audio windows the encoder is run on."""

    def __init__(self, model):
        self.windows = 0
        model.model.audio_tower.register_forward_hook(self.hook)

    def hook(self, module, args, output):
        self.windows += output.last_hidden_state.shape[0]


@pytest.mark.parametrize("adaptor_type", sorted(MODELS))
def test_three_turns_equal_full_prefill_and_encode_only_new_audio(adaptor_type):
    model, processor = MODELS[adaptor_type]()
    encoder = EncoderCalls(model)
    cache = LlasmConversationCache()
    messages = [audio_turn(2.5, 0, "what is this")]
    for turn, seconds in enumerate((1.3, 0.8, None)):
        inputs = processor.apply_chat_template(messages, add_generation_prompt=True)
        windows = inputs["input_features"].shape[0]
        full = model.generate(**inputs, max_new_tokens=6, do_sample=False)
        before = encoder.windows
        reused = model.generate(**inputs, max_new_tokens=6, do_sample=False, conversation_cache=cache)
        assert torch.equal(reused, full)  # the caller's prompt + the same new tokens
        new_windows = encoder.windows - before
        if turn == 0:
            assert new_windows == windows and cache.reused_tokens == 0
        else:
            # only this turn's clip is encoded; everything before the previous answer comes from the cache
            assert new_windows == windows - previous_windows
            assert cache.reused_tokens >= previous_prompt_llm_tokens
        previous_windows = windows
        previous_prompt_llm_tokens = len(cache) - 5  # the prompt as the LLM saw it (6 new tokens, the last not fed)
        answer = processor.decode(full[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        messages += [{"role": "assistant", "content": answer}]
        if seconds is not None:
            messages += [audio_turn(seconds, turn + 1)]
        else:
            messages += [{"role": "user", "content": "and in text?"}]


def test_edited_history_drops_the_stale_part_of_the_cache():
    model, processor = build_tiny_llasm()
    cache = LlasmConversationCache()
    first = [audio_turn(1.5, 0), {"role": "assistant", "content": "an answer"}, audio_turn(1.0, 1)]
    inputs = processor.apply_chat_template(first, add_generation_prompt=True)
    model.generate(**inputs, max_new_tokens=4, do_sample=False, conversation_cache=cache)
    edited = [audio_turn(1.5, 0), {"role": "assistant", "content": "another answer"}, audio_turn(1.0, 2)]
    inputs = processor.apply_chat_template(edited, add_generation_prompt=True)
    reused = model.generate(**inputs, max_new_tokens=6, do_sample=False, conversation_cache=cache)
    assert torch.equal(reused, model.generate(**inputs, max_new_tokens=6, do_sample=False))
    first_answer_start = processor.apply_chat_template(first[:1], add_generation_prompt=True)["input_ids"].shape[1]
    assert 0 < cache.reused_tokens <= first_answer_start + 1


def test_conversation_cache_refuses_what_it_cannot_do():
    model, processor = build_tiny_llasm()
    inputs = processor.apply_chat_template([[audio_turn(1.0, 0)], [audio_turn(0.5, 1)]], add_generation_prompt=True)
    with pytest.raises(ValueError, match="one conversation"):
        model.generate(**inputs, max_new_tokens=2, conversation_cache=LlasmConversationCache())
    single = processor.apply_chat_template([audio_turn(1.0, 0)], add_generation_prompt=True)
    with pytest.raises(ValueError, match="num_beams"):
        model.generate(**single, max_new_tokens=2, num_beams=2, conversation_cache=LlasmConversationCache())
    keep = torch.ones_like(single["input_ids"][0], dtype=torch.bool)
    keep[(single["input_ids"][0] == model.config.audio_token_id).nonzero()[0]] = False  # one placeholder too few
    wrong = dict(single, input_ids=single["input_ids"][:, keep], attention_mask=single["attention_mask"][:, keep])
    with pytest.raises(ValueError, match="placeholder"):
        model.generate(**wrong, max_new_tokens=2, conversation_cache=LlasmConversationCache())
    with pytest.raises(ValueError, match="use_cache=False"):
        model.generate(**single, max_new_tokens=2, use_cache=False, conversation_cache=LlasmConversationCache())


@pytest.mark.parametrize("batch_size,kwargs,reason", [
    (1, {"max_new_tokens": 3, "do_sample": True, "streamer": object()}, None),
    (2, {}, "a batch of 2"),
    (1, {"num_return_sequences": 2}, "num_return_sequences"),
    (1, {"use_cache": False}, "use_cache=False"),
    (1, {"past_key_values": object()}, "past_key_values"),
    (1, {"return_dict_in_generate": True}, "return_dict_in_generate"),
])  # fmt: skip
def test_one_predicate_says_when_a_conversation_cache_can_serve_a_call(batch_size, kwargs, reason):
    said = LlasmConversationCache.unsupported(batch_size, **kwargs)
    assert said is None if reason is None else reason in said


def test_pipeline_without_a_kv_cache_skips_its_prefix_cache():
    """`use_cache=False` is a generate() argument the prefix cache can not honour: the pipeline does without it
    (it used to take the prefix cache and then fail) and answers as it does with the cache."""
    model, processor = build_tiny_llasm()
    chat = LlasmChatPipeline(model=model, processor=processor)
    question = {"audio": {"array": speechlike(0.8, 0), "sampling_rate": 16000}, "text": "hi"}
    without = chat(question, max_new_tokens=5, do_sample=False, use_cache=False)["generated_text"]
    assert without == chat(question, max_new_tokens=5, do_sample=False)["generated_text"]


@pytest.mark.parametrize("adaptor_type", ["stack_mlp", "whisper_reader"])
def test_pipeline_prefix_cache_is_prefilled_once_and_changes_nothing(adaptor_type):
    model, processor = MODELS[adaptor_type]()
    chat = LlasmChatPipeline(model=model, processor=processor)
    prefills = []
    model.model.language_model.register_forward_hook(lambda module, args, kwargs, output: prefills.append(kwargs["inputs_embeds"].shape[1]) if kwargs.get("inputs_embeds") is not None else None, with_kwargs=True)
    questions = [{"audio": {"array": speechlike(0.5 + 0.4 * i, i), "sampling_rate": 16000}, "text": "hi"} for i in range(3)]
    plain = [chat(q, max_new_tokens=5, do_sample=False, prefix_cache=False)["generated_text"] for q in questions]
    full_prefills = [n for n in prefills if n > 1]  # decode steps feed one position
    prefills.clear()
    cached = [chat(q, max_new_tokens=5, do_sample=False)["generated_text"] for q in questions]
    assert cached == plain
    head = len(chat.shared_prefix_cache())
    assert head > 3  # the system prompt and the template's user header
    # the head once, then each question without it
    assert [n for n in prefills if n > 1] == [head] + [n - head for n in full_prefills]
    # sampling with a seed: the same text as without the cache
    torch.manual_seed(3)
    sampled = chat(questions[0], max_new_tokens=5, do_sample=True)["generated_text"]
    torch.manual_seed(3)
    assert sampled == chat(questions[0], max_new_tokens=5, do_sample=True, prefix_cache=False)["generated_text"]


def test_pipeline_conversation_cache_three_turns():
    model, processor = reader_llasm()
    chat = LlasmChatPipeline(model=model, processor=processor)
    cache = LlasmConversationCache()
    messages = [audio_turn(1.2, 0)]
    for turn in range(3):
        with_cache = chat(messages, conversation_cache=cache, max_new_tokens=5, do_sample=False)
        without = chat(messages, prefix_cache=False, max_new_tokens=5, do_sample=False)
        assert with_cache["generated_text"] == without["generated_text"]
        if turn:
            assert cache.reused_tokens > len(chat.shared_prefix_cache())
        messages = with_cache["conversation"] + [audio_turn(0.9, turn + 1)]
    with pytest.raises(ValueError, match="LlasmConversationCache"):
        chat(messages, conversation_cache="not a cache")


def test_int8_inference_is_close_and_cannot_be_saved(tmp_path):
    from modeling_llasm.modeling_llasm import set_inference_dtype

    model, processor = build_tiny_llasm()
    inputs = processor.apply_chat_template([audio_turn(1.0, 0)], add_generation_prompt=True)
    with torch.no_grad():
        reference = model(**inputs).logits
    set_inference_dtype(model, "int8")
    assert any("quantized" in type(m).__module__ for m in model.model.language_model.modules())
    with torch.no_grad():
        quantized = model(**inputs).logits
    # int8 weights: close to, not equal to, float32
    assert not torch.equal(quantized, reference)
    assert torch.nn.functional.cosine_similarity(quantized.flatten(), reference.flatten(), dim=0) > 0.99
    assert model.generate(**inputs, max_new_tokens=3).shape[1] == inputs["input_ids"].shape[1] + 3
    with pytest.raises(ValueError, match="int8"):
        model.save_pretrained(tmp_path / "q")
    with pytest.raises(ValueError, match="Unknown inference dtype"):
        set_inference_dtype(model, "int4")
