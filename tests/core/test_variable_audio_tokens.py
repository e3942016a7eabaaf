"""Adaptors with a variable audio-token count (`ctc_compress`, `whisper_reader`) and the contract of
`configuration_llasm.audio_token_count`: forward masks unused placeholders, generate drops them, batching, beams,
saving and the collator's labels work as for fixed-count adaptors."""

import numpy as np
import pytest
import torch
from transformers import AutoModel, AutoProcessor, TextIteratorStreamer

from modeling_llasm import LlasmForConditionalGeneration
from modeling_llasm.configuration_llasm import encoder_frame_mask
from modeling_llasm.modeling_llasm import encode_audio_windows
from modeling_llasm.modeling_llasm import text_causal_lm
from tiny_llasm import build_tiny_llasm, compress_llasm, reader_llasm, speechlike, tone


def variable_llasm(adaptor_type: str, seed: int = 0):
    return compress_llasm(seed) if adaptor_type == "ctc_compress" else reader_llasm(seed)


ADAPTORS = pytest.mark.parametrize("adaptor_type", ["ctc_compress", "whisper_reader"])


def conversation(clip, text="what is this"):
    return [{"role": "user", "content": [{"type": "audio", "array": clip, "sampling_rate": 16000}, {"type": "text", "text": text}]}]


def packed_reference(model, inputs):
    """Per row: the prompt without unused audio slots as embeddings, and the mask of the kept positions."""
    features = model.get_audio_features(inputs["input_features"], inputs["input_features_mask"])
    slots = [model.config.num_audio_tokens(int(n)) for n in inputs["input_features_mask"].sum(-1)]
    audio = iter(features.pooler_output)
    windows = iter(zip(slots, features.audio_token_counts.tolist()))
    rows, keeps = [], []
    remaining = used = 0
    for ids, mask in zip(inputs["input_ids"], inputs["attention_mask"]):
        vectors, keep = [], []
        for token, real in zip(ids.tolist(), mask.tolist()):
            if token == model.config.audio_token_id:
                if remaining == 0:
                    remaining, used = next(windows)
                keep.append(used > 0)
                if used > 0:
                    vectors.append(next(audio))
                used, remaining = used - 1, remaining - 1
            else:
                keep.append(bool(real))
                if real:
                    vectors.append(model.get_input_embeddings().weight[token])
        rows.append(torch.stack(vectors))
        keeps.append(torch.tensor(keep))
    return rows, keeps


def test_counts_are_bounded_by_the_placeholders_and_at_least_one():
    model, processor = compress_llasm()
    inputs = processor.apply_chat_template([conversation(speechlike(2.5, 0)), conversation(speechlike(0.7, 1))], add_generation_prompt=True)
    with torch.no_grad():
        features = model.get_audio_features(inputs["input_features"], inputs["input_features_mask"])
    slots = [model.config.num_audio_tokens(int(n)) for n in inputs["input_features_mask"].sum(-1)]
    counts = features.audio_token_counts.tolist()
    assert len(counts) == len(slots) == 4  # 1-s windows: 3 + 1
    assert all(1 <= c <= s for c, s in zip(counts, slots)) and sum(counts) < sum(slots)
    assert features.pooler_output.shape == (sum(counts), model.config.text_config.hidden_size)
    assert [len(ids) for ids in features.recognized_token_ids] == counts
    vocab = set(model.model.multi_modal_projector.ctc_token_ids.tolist())
    assert all(t in vocab for ids in features.recognized_token_ids for t in ids)
    with torch.no_grad():  # silence: every frame blank -> still one token per window
        model.model.multi_modal_projector.blank_bias.fill_(1e4)
        silent = model.get_audio_features(inputs["input_features"], inputs["input_features_mask"])
    assert silent.audio_token_counts.tolist() == [1, 1, 1, 1]


@ADAPTORS
def test_forward_equals_the_prompt_without_unused_slots(adaptor_type):
    model, processor = variable_llasm(adaptor_type)
    inputs = processor.apply_chat_template([conversation(speechlike(1.6, 0)), conversation(speechlike(0.9, 3), "hi")], add_generation_prompt=True)
    with torch.no_grad():
        logits = model(**inputs).logits
        references, keeps = packed_reference(model, inputs)
    assert not all(bool(k.all()) for k in keeps)  # some slots are unused
    for row, (reference, keep) in enumerate(zip(references, keeps)):
        with torch.no_grad():
            expected = model(inputs_embeds=reference[None]).logits[0]
        assert torch.allclose(logits[row][keep], expected, atol=1e-5)


@ADAPTORS
def test_generate_returns_the_callers_prompt_then_the_answer(adaptor_type):
    model, processor = variable_llasm(adaptor_type)
    inputs = processor.apply_chat_template(conversation(speechlike(1.4, 2)), add_generation_prompt=True)
    gen = dict(max_new_tokens=7, min_new_tokens=7, do_sample=False)
    out = model.generate(**inputs, **gen)
    prompt_length = inputs["input_ids"].shape[1]
    assert torch.equal(out[:, :prompt_length], inputs["input_ids"])
    with torch.no_grad():
        reference = packed_reference(model, inputs)[0][0]
    expected = text_causal_lm(model).generate(inputs_embeds=reference[None], attention_mask=torch.ones(1, reference.shape[0], dtype=torch.long), **gen)
    assert out[0, prompt_length:].tolist() == expected[0, -7:].tolist()
    result = model.generate(**inputs, **gen, return_dict_in_generate=True, output_scores=True)
    assert torch.equal(result.sequences, out) and len(result.scores) == 7


@ADAPTORS
def test_batched_generation_equals_one_by_one_and_beams(adaptor_type):
    model, processor = variable_llasm(adaptor_type, seed=1)
    conversations = [conversation(speechlike(0.6, 0)), conversation(speechlike(2.3, 1), "hello"), conversation(speechlike(1.1, 2))]
    batch = processor.apply_chat_template(conversations, add_generation_prompt=True)
    gen = dict(max_new_tokens=8, min_new_tokens=8, do_sample=False)
    batched = model.generate(**batch, **gen)[:, batch["input_ids"].shape[1] :]
    singles = []
    for c in conversations:
        inputs = processor.apply_chat_template(c, add_generation_prompt=True)
        singles.append(model.generate(**inputs, **gen)[0, inputs["input_ids"].shape[1] :])
    assert [row.tolist() for row in batched] == [s.tolist() for s in singles]
    assert len({tuple(s.tolist()) for s in singles}) > 1
    beams = model.generate(**batch, max_new_tokens=5, num_beams=3, num_return_sequences=2, do_sample=False)
    assert beams.shape[0] == 6
    assert torch.equal(beams[:, : batch["input_ids"].shape[1]], batch["input_ids"].repeat_interleave(2, dim=0))


def test_training_loss_reaches_the_adaptor_and_the_head():
    model, processor = compress_llasm()
    model.train()
    model.model.audio_tower.requires_grad_(False)
    model.model.language_model.requires_grad_(False)
    model.lm_head.requires_grad_(False)
    inputs = processor.apply_chat_template(conversation(speechlike(1.2, 0)), add_generation_prompt=True, padding_side="right")
    labels = inputs["input_ids"].clone()
    labels[:, :-3] = -100
    model(**inputs, labels=labels).loss.backward()
    head = model.model.multi_modal_projector
    assert head.linear_1.weight.grad.abs().sum() > 0 and head.log_scale.grad is not None
    assert head.ctc_token_ids.requires_grad is False


@ADAPTORS
def test_save_and_auto_reload_keep_the_vocabulary(adaptor_type, tmp_path):
    model, processor = variable_llasm(adaptor_type)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    reloaded = AutoModel.from_pretrained(tmp_path, dtype=torch.float32)
    assert isinstance(reloaded, LlasmForConditionalGeneration)
    for name, buffer in model.model.multi_modal_projector.named_buffers():  # vocabulary / table / silence
        assert torch.equal(dict(reloaded.model.multi_modal_projector.named_buffers())[name], buffer), name
    inputs = AutoProcessor.from_pretrained(tmp_path).apply_chat_template(conversation(speechlike(1.3, 0)), add_generation_prompt=True)
    with torch.no_grad():
        assert torch.equal(reloaded(**inputs).logits, model(**inputs).logits)


def test_bad_vocabulary_is_refused():
    model, _ = compress_llasm()
    with pytest.raises(ValueError, match="distinct token ids"):
        model.set_ctc_vocabulary([1, 1, 2])
    plain, _ = build_tiny_llasm()
    with pytest.raises(ValueError, match="has no CTC vocabulary"):
        plain.set_ctc_vocabulary([1, 2])


def test_reader_gives_the_llm_its_own_embeddings_of_what_it_read():
    model, processor = reader_llasm()
    inputs = processor.apply_chat_template([conversation(speechlike(1.5, 0)), conversation(speechlike(0.5, 1))], add_generation_prompt=True)
    with torch.no_grad():
        features = model.get_audio_features(inputs["input_features"], inputs["input_features_mask"])
    ids = [t for window in features.recognized_token_ids for t in window]
    assert len(ids) == features.pooler_output.shape[0] == int(features.audio_token_counts.sum())
    table = model.model.multi_modal_projector.llm_pieces
    assert set(ids) <= set(table[table >= 0].tolist())
    # state_proj starts at zero: the audio tokens are exactly the LLM's embeddings of the pieces read
    assert torch.equal(features.pooler_output, model.get_input_embeddings().weight[ids])
    slots = [model.config.num_audio_tokens(int(n)) for n in inputs["input_features_mask"].sum(-1)]
    assert all(1 <= c <= s for c, s in zip(features.audio_token_counts.tolist(), slots))


def test_reader_residual_ratio_caps_the_learned_residual(tmp_path):
    """`reader_residual_ratio` bounds what `state_proj` adds to each word's embedding (relative to its norm)."""
    model, processor = reader_llasm()
    inputs = processor.apply_chat_template(conversation(speechlike(1.5, 0)), add_generation_prompt=True)
    with torch.no_grad():
        model.model.multi_modal_projector.state_proj.bias.fill_(5.0)  # a residual far larger than the embeddings

        def residuals():
            features = model.get_audio_features(inputs["input_features"], inputs["input_features_mask"])
            words = model.get_input_embeddings().weight[[t for w in features.recognized_token_ids for t in w]]
            return (features.pooler_output - words).norm(dim=-1) / words.norm(dim=-1)

        unbounded = residuals()
        model.config.reader_residual_ratio = 0.25
        bounded = residuals()
    assert unbounded.min() > 1.0
    assert torch.allclose(bounded, torch.full_like(bounded, 0.25), atol=1e-4)
    model.save_pretrained(tmp_path / "m")
    assert type(model).from_pretrained(tmp_path / "m").config.reader_residual_ratio == 0.25
    with pytest.raises(ValueError, match="reader_residual_ratio"):
        type(model.config)(**{**model.config.to_dict(), "reader_residual_ratio": -1.0})


def test_reader_memo_cache_reads_each_window_once():
    model, processor = reader_llasm()
    inputs = processor.apply_chat_template(conversation(speechlike(2.2, 3)), add_generation_prompt=True)
    reader = model.model.multi_modal_projector
    calls = []
    decode = reader._decode
    reader._decode = lambda *args, **kwargs: calls.append(args[0].shape[0]) or decode(*args, **kwargs)
    with torch.no_grad():
        plain = model.get_audio_features(inputs["input_features"], inputs["input_features_mask"]).pooler_output
        reader.read_cache = {}
        first = model.get_audio_features(inputs["input_features"], inputs["input_features_mask"]).pooler_output
        again = model.get_audio_features(inputs["input_features"], inputs["input_features_mask"]).pooler_output
    assert calls == [3, 3]  # without the cache, then once to fill it; the third call decodes nothing
    assert torch.equal(first, plain) and torch.equal(again, plain)


def test_reader_logits_come_from_a_contiguous_copy_of_the_text_vocabulary_kept_until_it_changes():
    model, processor = reader_llasm()
    reader = model.model.multi_modal_projector
    eos = model.config.audio_config.eos_token_id
    embedding = reader.decoder.embed_tokens.weight
    weights = reader.text_logit_weights()
    assert weights.is_contiguous() and torch.equal(weights, embedding[: eos + 1].T)
    assert reader.text_logit_weights() is weights  # kept
    with torch.no_grad():
        embedding[3].mul_(2.0)  # an in-place change (a new version of the same storage)
    assert torch.equal(reader.text_logit_weights(), embedding[: eos + 1].T)
    model.to(torch.bfloat16)
    assert reader.text_logit_weights().dtype == torch.bfloat16
    inputs = processor.apply_chat_template(conversation(speechlike(2.2, 3)), add_generation_prompt=True)
    model.to(torch.float32)
    readings = {}
    for contiguous in (True, False):  # the copy against the embedding's transposed view, as Whisper computes logits
        reader.contiguous_text_logits = contiguous
        with torch.no_grad():
            readings[contiguous] = model.get_audio_features(inputs["input_features"], inputs["input_features_mask"])
    assert readings[True].recognized_token_ids == readings[False].recognized_token_ids
    assert torch.equal(readings[True].pooler_output, readings[False].pooler_output)


@ADAPTORS
def test_streamed_text_equals_the_generated_answer(adaptor_type):
    model, processor = variable_llasm(adaptor_type, seed=4)
    inputs = processor.apply_chat_template(conversation(speechlike(1.6, 5)), add_generation_prompt=True)
    gen = dict(max_new_tokens=10, min_new_tokens=10, do_sample=False)
    answer = processor.decode(model.generate(**inputs, **gen)[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    streamer = TextIteratorStreamer(processor.tokenizer, skip_prompt=True, skip_special_tokens=True)
    model.generate(**inputs, streamer=streamer, **gen)  # the queue holds everything once generate returns
    assert "".join(streamer) == answer and answer.strip()


@ADAPTORS
def test_collator_labels_give_the_loss_of_the_prompt_without_unused_slots(adaptor_type):
    from modeling_llasm.data.collator import IGNORE_INDEX, LlasmDataCollator  # test only: the core never imports data

    model, processor = variable_llasm(adaptor_type, seed=5)
    records = [
        {"id": f"r{i}", "messages": [
            {"role": "user", "content": [{"type": "audio", "array": speechlike(seconds, i), "sampling_rate": 16000}]},
            {"role": "assistant", "content": [{"type": "text", "text": answer}]}]}
        for i, (seconds, answer) in enumerate([(1.7, "hello there"), (0.7, "a longer answer to learn")])
    ]  # fmt: skip
    batch = LlasmDataCollator(processor, "instruct")(records)
    audio = batch["input_ids"] == model.config.audio_token_id
    assert (batch["labels"][audio] == IGNORE_INDEX).all()
    with torch.no_grad():
        features = model.get_audio_features(batch["input_features"], batch["input_features_mask"])
        slots = audio.sum().item()
        assert int(features.audio_token_counts.sum()) < slots  # some placeholders are unused: the case under test
        loss = model(**{k: v for k, v in batch.items() if k != "labels"}, labels=batch["labels"]).loss
        rows, keeps = packed_reference(model, batch)
        losses, counts = [], []
        for row, keep, labels in zip(rows, keeps, batch["labels"]):
            kept = labels[keep]
            logits = model(inputs_embeds=row[None]).logits[0]
            shifted = kept[1:]
            losses.append(torch.nn.functional.cross_entropy(logits[:-1], shifted, ignore_index=IGNORE_INDEX, reduction="sum"))
            counts.append((shifted != IGNORE_INDEX).sum())
    torch.testing.assert_close(loss, sum(losses) / sum(counts))


def test_reader_projects_the_silence_once_and_reads_as_when_it_projects_every_window():
    """The cross-attention keys/values of the canned silence are computed once and reused: readings (ids and decoder
    states) equal those of projecting each window padded with silence, as Whisper does; the projections are
    recomputed when the silence changes."""
    model, processor = reader_llasm(seed=2)
    reader = model.model.multi_modal_projector
    clips = [speechlike(1.5, 0), speechlike(0.4, 1), speechlike(3.1, 2)]  # windows of different lengths
    inputs = processor.apply_chat_template([conversation(c) for c in clips], add_generation_prompt=True)
    projected_frames = []
    hook = reader.decoder.layers[0].encoder_attn.k_proj.register_forward_hook(lambda m, args, out: projected_frames.append(args[0].shape[-2]))

    with torch.no_grad():
        encoded, mel_mask = encode_audio_windows(model.model.audio_tower, inputs["input_features"], inputs["input_features_mask"])
    frame_mask = encoder_frame_mask(mel_mask)

    def read():
        with torch.no_grad():
            return reader.read(encoded.last_hidden_state, frame_mask, [40] * frame_mask.shape[0])

    reader.reuse_silence_projections = False
    reference = read()
    assert set(projected_frames) == {reader.silence_states.shape[0]}  # every read projects whole padded windows
    projected_frames.clear()
    reader.reuse_silence_projections = True
    first, again = read(), read()
    hook.remove()
    longest = int(frame_mask.sum(-1).max())
    assert projected_frames == [reader.silence_states.shape[0], longest, longest]  # the silence once, then speech only
    assert first[0] == reference[0] and again[0] == reference[0] and any(first[0])
    for states, expected in zip(first[1], reference[1]):
        torch.testing.assert_close(states, expected, rtol=1e-5, atol=1e-5)
    before = reader.silence_projections(torch.float32, torch.device("cpu"))[0][0].clone()
    with torch.no_grad():
        reader.silence_states.mul_(0.5)
    after = reader.silence_projections(torch.float32, torch.device("cpu"))[0][0]
    attention = reader.decoder.layers[0].encoder_attn  # kept as the attention reads them: (heads, frames, head_dim)
    expected = attention.k_proj(reader.silence_states).view(-1, attention.num_heads, attention.head_dim).transpose(0, 1)
    torch.testing.assert_close(after, expected)
    assert not torch.allclose(after, before)
