"""LlasmDataCollator: labels token by token, stages, padding, audio, errors."""

from __future__ import annotations

import pytest
import soundfile as sf
import torch
from llasm_training_fixtures import audio_item, spoken_qa_record, text

from modeling_llasm.data.collator import IGNORE_INDEX, LlasmDataCollator, SampleTooLongError


def expected_chatml_labels(tokenizer, ids: list[int]) -> list[int]:
    """Independent reference: walk the ChatML token stream; inside an assistant turn every token after the
    header newline through `<|im_end|>` is learned; everything else (incl. the newline after it) is not."""
    tokens = tokenizer.convert_ids_to_tokens(ids)
    labels, state, header = [], "outside", ""
    for token_id, token in zip(ids, tokens):
        if token == "<|im_start|>":
            state, header = "header", ""
            labels.append(IGNORE_INDEX)
        elif state == "header":
            header += tokenizer.convert_tokens_to_string([token])
            labels.append(IGNORE_INDEX)
            if header.endswith("\n"):
                state = "assistant" if header.strip() == "assistant" else "other"
        elif state == "assistant":
            labels.append(token_id)
            if token == "<|im_end|>":
                state = "outside"
        else:
            labels.append(IGNORE_INDEX)
            if token == "<|im_end|>":
                state = "outside"
    return labels


def multi_turn_record() -> dict:
    return {"id": "multi", "messages": [
        {"role": "system", "content": [text("please answer the question")]},
        {"role": "user", "content": [audio_item(0.5, 1, "what is the capital"), text("in one sentence")]},
        {"role": "assistant", "content": [text("the capital of france")]},
        {"role": "user", "content": [audio_item(1.3, 2, "the quick brown fox")]},
        {"role": "assistant", "content": [text("hello world")]}]}  # fmt: skip


def test_instruct_labels_match_reference_token_by_token(tiny_llasm):
    _, processor = tiny_llasm
    tokenizer = processor.tokenizer
    batch = LlasmDataCollator(processor, "instruct")([multi_turn_record(), spoken_qa_record(3)])
    for row in range(2):
        length = int(batch["attention_mask"][row].sum())
        ids = batch["input_ids"][row, :length].tolist()
        assert batch["labels"][row, :length].tolist() == expected_chatml_labels(tokenizer, ids)
        assert (batch["labels"][row, length:] == IGNORE_INDEX).all()
    learned = batch["labels"][0][batch["labels"][0] != IGNORE_INDEX]
    assert tokenizer.decode(learned) == "the capital of france<|im_end|>hello world<|im_end|>"
    audio_positions = batch["input_ids"] == processor.audio_token_id
    assert (batch["labels"][audio_positions] == IGNORE_INDEX).all()


def test_collator_inputs_equal_processor_inputs_right_padded(tiny_llasm):
    _, processor = tiny_llasm
    records = [multi_turn_record(), spoken_qa_record(0, seconds=0.3)]
    batch = LlasmDataCollator(processor, "instruct")(records)
    for row, record in enumerate(records):
        reference = processor.apply_chat_template(record["messages"], add_generation_prompt=False)
        length = reference["input_ids"].shape[1]
        assert torch.equal(batch["input_ids"][row, :length], reference["input_ids"][0])
        assert batch["attention_mask"][row, :length].all() and not batch["attention_mask"][row, length:].any()
        assert (batch["input_ids"][row, length:] == processor.tokenizer.pad_token_id).all()
    both = processor.apply_chat_template([r["messages"] for r in records], add_generation_prompt=False)
    assert torch.equal(batch["input_features"], both["input_features"])
    assert torch.equal(batch["input_features_mask"], both["input_features_mask"])


def test_audio_by_path_and_by_array_collate_identically(tiny_llasm, tmp_path):
    _, processor = tiny_llasm
    record = spoken_qa_record(1)
    item = record["messages"][0]["content"][0]
    sf.write(tmp_path / "q.wav", item["array"], 16000, subtype="FLOAT")
    by_path = {"id": "p", "messages": [{"role": "user", "content": [{"type": "audio", "path": str(tmp_path / "q.wav")}]},
                                       record["messages"][1]]}  # fmt: skip
    collator = LlasmDataCollator(processor, "instruct")
    a, b = collator([record]), collator([by_path])
    assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["labels"], b["labels"])
    torch.testing.assert_close(a["input_features"], b["input_features"])


def test_align_stage_learns_only_the_transcript(tiny_llasm):
    _, processor = tiny_llasm
    tokenizer = processor.tokenizer
    collator = LlasmDataCollator(processor, "align", asr_prompt="transcribe the speech")

    def learned(batch, row=0):
        labels = batch["labels"][row]
        return tokenizer.decode(labels[labels != IGNORE_INDEX])

    # a spoken-question record becomes ASR turns, one per clip: the answers are not learned
    assert learned(collator([multi_turn_record()])) == "what is the capital<|im_end|>the quick brown fox<|im_end|>"
    # an ASR record is used as it is (its instruction is not learned)
    asr = {"id": "asr", "task": "asr", "messages": [
        {"role": "user", "content": [text("please answer"), audio_item(0.4, 5, "hello world")]},
        {"role": "assistant", "content": [text("hello world")]}]}  # fmt: skip
    batch = collator([asr])
    assert learned(batch) == "hello world<|im_end|>"
    assert "please answer" in tokenizer.decode(batch["input_ids"][0])
    # an ASR pair in the datasets layout
    pair = {"audio": {"array": audio_item(0.4, 6)["array"], "sampling_rate": 16000}, "text": "the quick brown fox"}
    assert learned(collator([pair])) == "the quick brown fox<|im_end|>"


def test_template_with_default_system_prompt_and_generation_prompt(tiny_llasm):
    _, processor = tiny_llasm
    processor.chat_template = (
        "{% if messages[0]['role'] != 'system' %}<|im_start|>system\nyou are a helpful assistant<|im_end|>\n{% endif %}"
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    batch = LlasmDataCollator(processor, "instruct")([spoken_qa_record(2)])
    ids = batch["input_ids"][0].tolist()
    assert processor.tokenizer.decode(ids).startswith("<|im_start|>system\nyou are a helpful assistant")
    assert batch["labels"][0].tolist() == expected_chatml_labels(processor.tokenizer, ids)


def test_template_that_rewrites_earlier_turns_is_refused(tiny_llasm):
    _, processor = tiny_llasm
    processor.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if loop.last %}{{ m['content'] }}{% else %}...{% endif %}"
        "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    with pytest.raises(ValueError, match="sample 'multi'.*prefix by prefix"):
        LlasmDataCollator(processor, "instruct")([multi_turn_record()])


def test_too_long_sample_is_an_error_naming_it_never_truncated(tiny_llasm):
    _, processor = tiny_llasm
    collator = LlasmDataCollator(processor, "instruct", max_length=40)
    with pytest.raises(SampleTooLongError, match=r"sample 'multi' .* tokens long \(\d+ of them audio tokens\).*max_length=40"):
        collator([spoken_qa_record(0, seconds=0.2), multi_turn_record()])


def test_sample_without_assistant_turn_is_an_error(tiny_llasm):
    _, processor = tiny_llasm
    question = {"id": "q", "messages": [{"role": "user", "content": [audio_item(0.3)]}]}
    with pytest.raises(ValueError, match="sample 'q'.*nothing to learn"):
        LlasmDataCollator(processor, "instruct")([question])


def test_teacher_and_ctc_fields(tiny_llasm):
    _, processor = tiny_llasm
    tokenizer = processor.tokenizer
    batch = LlasmDataCollator(processor, "instruct", distill=True, ctc=True)([multi_turn_record()])
    teacher_text = tokenizer.decode(batch["teacher_input_ids"][0])
    assert "<|audio|>" not in teacher_text
    assert "what is the capital\nin one sentence" in teacher_text and "the quick brown fox" in teacher_text
    student_targets = batch["labels"][batch["labels"] != IGNORE_INDEX]
    teacher_targets = batch["teacher_labels"][batch["teacher_labels"] != IGNORE_INDEX]
    assert torch.equal(student_targets, teacher_targets)
    counts = batch["audio_token_counts"]
    assert len(counts) == 2 and int(counts.sum()) == int((batch["input_ids"] == processor.audio_token_id).sum())
    ctc = batch["ctc_labels"]
    assert tokenizer.decode(ctc[0][ctc[0] != IGNORE_INDEX]) == "what is the capital"
    assert tokenizer.decode(ctc[1][ctc[1] != IGNORE_INDEX]) == "the quick brown fox"


def test_align_stage_refuses_a_record_it_cannot_turn_into_asr(tiny_llasm):
    _, processor = tiny_llasm
    no_transcript = {k: v for k, v in audio_item(0.3).items() if k != "transcript"}
    answer = {"id": "chat-7", "messages": [{"role": "user", "content": [no_transcript]},
                                           {"role": "assistant", "content": [text("the quick brown fox")]}]}  # fmt: skip
    with pytest.raises(ValueError, match="sample 'chat-7' has an audio part without a transcript"):
        LlasmDataCollator(processor, "align")([answer])
    marked = {**answer, "task": "asr"}  # an ASR record without transcript fields is used as it is
    assert (LlasmDataCollator(processor, "align")([marked])["labels"] != IGNORE_INDEX).any()
