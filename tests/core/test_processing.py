import math

import numpy as np
import pytest
import soundfile
import torch
from transformers import WhisperFeatureExtractor

from modeling_llasm import LlasmProcessor, load_audio
from tiny_llasm import tiny_tokenizer, tone


def test_load_audio_from_wav_path_stereo_and_other_rate(tmp_path):
    stereo = np.stack([tone(0.5, 44100), -tone(0.5, 44100, freq=220.0)], axis=1)
    path = tmp_path / "stereo.wav"
    soundfile.write(path, stereo, 44100)
    samples = load_audio(path)
    assert samples.dtype == np.float32 and samples.ndim == 1
    assert abs(len(samples) - 8000) <= 2  # 0.5 s at 16 kHz


def test_load_audio_int16_torch_and_bytes(tmp_path):
    pcm = (tone(0.25) * 32767).astype(np.int16)
    from_int = load_audio(pcm, sampling_rate=16000)
    assert np.abs(from_int).max() <= 1.0 and np.allclose(from_int, pcm / 32768.0, atol=1e-6)
    from_torch = load_audio(torch.from_numpy(tone(0.25)), sampling_rate=16000)
    assert np.allclose(from_torch, tone(0.25))
    path = tmp_path / "clip.wav"
    soundfile.write(path, tone(0.25), 16000, subtype="FLOAT")
    assert np.allclose(load_audio(path.read_bytes()), tone(0.25), atol=1e-6)
    channels_first = np.stack([tone(0.25), tone(0.25)])
    assert np.allclose(load_audio(channels_first, sampling_rate=16000), tone(0.25))


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.zeros(0, dtype=np.float32), "empty"),
        (np.array([0.1, np.nan, 0.2] * 100, dtype=np.float32), "NaN"),
        ("/no/such/file.wav", "not found"),
        (np.zeros((2, 2, 2), dtype=np.float32), "1-D or 2-D"),
    ],
)
def test_bad_audio_is_a_clear_error(bad, message):
    with pytest.raises(ValueError, match=message):
        load_audio(bad)


def real_size_processor(stack_factor: int = 8) -> LlasmProcessor:
    return LlasmProcessor(feature_extractor=WhisperFeatureExtractor(), tokenizer=tiny_tokenizer(), stack_factor=stack_factor)


def test_70_second_clip_gives_three_windows_and_all_their_tokens():
    processor = real_size_processor(stack_factor=8)
    inputs = processor(text="<|audio|>", audio=tone(70.0))
    # 70 s -> windows of 30 s, 30 s, 10 s -> 3000, 3000, 1000 mel frames, nothing cut
    assert inputs["input_features"].shape == (3, 80, 3000)
    assert inputs["input_features_mask"].sum(-1).tolist() == [3000, 3000, 1000]
    expected_tokens = 2 * math.ceil(1500 / 8) + math.ceil(500 / 8)
    assert (inputs["input_ids"] == processor.audio_token_id).sum().item() == expected_tokens


def test_features_of_a_clip_do_not_depend_on_batch_neighbours():
    processor = real_size_processor()
    alone = processor(text="<|audio|>", audio=tone(2.0, seed=1))
    batch = processor(text=["<|audio|>", "<|audio|>"], audio=[tone(2.0, seed=1), tone(5.0, seed=2)])
    assert batch["input_features"].shape[-1] == 500  # padded to the longest clip (5 s), not to 30 s
    assert torch.equal(batch["input_features"][0, :, :200], alone["input_features"][0])
    assert batch["input_features_mask"][0].sum() == 200
    assert torch.all(batch["input_features"][0, :, 200:] == 0)


def test_placeholder_and_clip_count_mismatch_is_a_clear_error():
    processor = real_size_processor()
    with pytest.raises(ValueError, match=r"Found 2 '<\|audio\|>' placeholder\(s\).*but 1 audio clip"):
        processor(text="<|audio|> and <|audio|>", audio=tone(1.0))
    with pytest.raises(ValueError, match="Audio clip 1: Audio clip is empty"):
        processor(text=["<|audio|>", "<|audio|>"], audio=[tone(1.0), np.zeros(0, dtype=np.float32)])


def test_text_is_left_padded_for_generation():
    processor = real_size_processor()
    inputs = processor(text=["hello world", "hello"])
    assert inputs["attention_mask"][1, 0] == 0 and inputs["attention_mask"][1, -1] == 1


def test_pad_token_id_is_the_pad_token_else_end_of_sequence():
    processor = real_size_processor()
    tokenizer = processor.tokenizer
    assert tokenizer.pad_token_id is not None and processor.pad_token_id == tokenizer.pad_token_id
    tokenizer.pad_token = None
    assert processor.pad_token_id == tokenizer.eos_token_id != None  # noqa: E711
    tokenizer.eos_token = None
    with pytest.raises(ValueError, match="neither a pad token nor an end-of-sequence token"):
        processor.pad_token_id


def test_chat_template_expands_audio_items_in_order(tmp_path):
    processor = real_size_processor(stack_factor=8)
    path = tmp_path / "q.wav"
    soundfile.write(path, tone(3.0), 16000)
    messages = [
        {"role": "user", "content": [{"type": "audio", "path": str(path)}, {"type": "text", "text": "transcribe"}]},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": [{"type": "audio", "array": tone(1.0, 8000), "sampling_rate": 8000}]},
    ]
    prompt = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert prompt.count("<|audio|>") == 2 and prompt.endswith("<|im_start|>assistant\n")
    inputs = processor.apply_chat_template(messages, add_generation_prompt=True)
    assert inputs["input_features_mask"].sum(-1).tolist() == [300, 100]
    ids = inputs["input_ids"][0].tolist()
    first = ids.index(processor.audio_token_id)
    assert ids[first : first + math.ceil(150 / 8)] == [processor.audio_token_id] * math.ceil(150 / 8)
    assert (inputs["input_ids"] == processor.audio_token_id).sum() == math.ceil(150 / 8) + math.ceil(50 / 8)
    with pytest.raises(ValueError, match="remote audio URLs"):
        processor.apply_chat_template([{"role": "user", "content": [{"type": "audio", "url": "https://x/y.wav"}]}], add_generation_prompt=True)


@pytest.mark.parametrize("samples", [50, 160, 16000 + 100, 16000 + 200])
def test_tiny_last_window_is_padded_not_crashing(samples):
    from tiny_llasm import build_tiny_llasm

    model, processor = build_tiny_llasm()  # 1-s windows: the tail after 16000 samples is its own window
    inputs = processor(text="<|audio|>", audio=tone(samples / 16000))
    windows = -(-samples // 16000)
    assert inputs["input_features"].shape[0] == windows
    with torch.no_grad():
        out = model(**inputs)
    assert out.audio_hidden_states.shape[0] == (inputs["input_ids"] == model.config.audio_token_id).sum()


def test_call_level_sampling_rate_applies_to_array_items():
    processor = real_size_processor()
    clip_8k = tone(2.0, sampling_rate=8000)
    messages = [{"role": "user", "content": [{"type": "audio", "array": clip_8k}]}]
    at_8k = processor.apply_chat_template(messages, sampling_rate=8000, add_generation_prompt=True)
    assert at_8k["input_features_mask"].sum() == 200  # 2 s, not 1 s (as if 16 kHz)
    own_rate = [{"role": "user", "content": [{"type": "audio", "array": clip_8k, "sampling_rate": 8000}]}]
    assert processor.apply_chat_template(own_rate, sampling_rate=16000, add_generation_prompt=True)["input_features_mask"].sum() == 200


def test_left_padding_by_default_and_no_truncation():
    processor = real_size_processor()
    processor.tokenizer.padding_side = "right"
    inputs = processor(text=["hello world", "hello"])
    assert inputs["attention_mask"][1, 0] == 0 and inputs["attention_mask"][1, -1] == 1
    right = processor(text=["hello world", "hello"], padding_side="right")
    assert right["attention_mask"][1, -1] == 0
    with pytest.raises(ValueError, match="never truncates"):
        processor(text="<|audio|> hello", audio=tone(1.0), truncation=True, max_length=4)


def test_datasets_audio_dict_uses_its_decoded_array():
    processor = real_size_processor()
    item = {"type": "audio", "path": "not-here.mp3", "array": tone(1.5), "sampling_rate": 16000}
    inputs = processor.apply_chat_template([{"role": "user", "content": [item]}], add_generation_prompt=True)
    assert inputs["input_features_mask"].sum() == 150


def test_transcription_request_puts_the_saved_prompt_before_each_clip(tmp_path):
    from modeling_llasm.processing_llasm import DEFAULT_TRANSCRIPTION_PROMPT, TRANSCRIPTION_INSTRUCTION

    processor = real_size_processor()
    assert processor.transcription_prompt == DEFAULT_TRANSCRIPTION_PROMPT
    conversation = processor.transcription_conversation("q.wav")
    assert conversation[: len(DEFAULT_TRANSCRIPTION_PROMPT)] == DEFAULT_TRANSCRIPTION_PROMPT
    assert conversation[-1] == {"role": "user", "content": [{"type": "text", "text": TRANSCRIPTION_INSTRUCTION},
                                                            {"type": "audio", "audio": "q.wav"}]}  # fmt: skip
    # the demonstrations repeat their words verbatim, a question among them (which a chat LLM would otherwise answer)
    demos = [m for m in DEFAULT_TRANSCRIPTION_PROMPT if m["role"] != "system"]
    assert [m["role"] for m in demos] == ["user", "assistant"] * 3
    assert any(m["content"][0]["text"].endswith("?") for m in demos if m["role"] == "assistant")
    for question, reply in zip(demos[::2], demos[1::2]):
        assert question["content"][1]["text"] == reply["content"][0]["text"]

    inputs = processor.apply_transcription_request([tone(1.0), {"array": tone(2.0, 8000), "sampling_rate": 8000}])
    expected = processor.apply_chat_template(
        [processor.transcription_conversation(tone(1.0)), processor.transcription_conversation({"array": tone(2.0, 8000), "sampling_rate": 8000})],
        add_generation_prompt=True,
    )
    assert torch.equal(inputs["input_ids"], expected["input_ids"]) and inputs["input_features_mask"].sum(-1).tolist() == [100, 200]
    prompt = processor.apply_chat_template(processor.transcription_conversation(tone(1.0)), tokenize=False, add_generation_prompt=True)
    assert prompt.count("Orange window quietly seven bottle under Denver.") == 2 and prompt.endswith("<|im_start|>assistant\n")
    with pytest.raises(ValueError, match="at least one audio clip"):
        processor.apply_transcription_request([])

    # a checkpoint's own prompt is saved with its processor; [] asks with the instruction alone
    processor.transcription_prompt = []
    processor.save_pretrained(tmp_path / "p")
    reloaded = LlasmProcessor.from_pretrained(tmp_path / "p")
    assert reloaded.transcription_prompt == [] and len(reloaded.transcription_conversation("q.wav")) == 1


def test_pause_cut_windows_end_in_the_pause_and_cover_the_clip():
    """`max_window_seconds`: windows of at most that long, each but the last cut in the quietest 100 ms of its second
    half (here a 0.4 s pause), covering the clip with no sample lost or repeated."""
    from modeling_llasm.processing_llasm import pause_cut_bounds

    rate, hop = 16000, 160
    loud = 0.3 * np.sin(2 * np.pi * 220 * np.arange(rate * 26) / rate).astype(np.float32)
    clip = loud.copy()
    clip[int(7.0 * rate) : int(7.4 * rate)] = 0.0  # a pause 7.0-7.4 s into the first 10 s window
    clip[int(15.5 * rate) : int(15.9 * rate)] = 0.0  # and one in the second window's second half
    bounds = pause_cut_bounds(clip, 10 * rate, hop)
    assert bounds[0] == (0, bounds[0][1]) and bounds[-1][1] == len(clip)
    assert all(end == next_start for (_, end), (next_start, _) in zip(bounds, bounds[1:]))
    assert 7.0 * rate <= bounds[0][1] <= 7.4 * rate and 15.5 * rate <= bounds[1][1] <= 15.9 * rate
    assert all(5 * rate <= end - start <= 10 * rate for start, end in bounds[:-1])
    assert all(start % hop == 0 for start, _ in bounds)
    assert pause_cut_bounds(clip[: 10 * rate], 10 * rate, hop) == [(0, 10 * rate)]  # short enough: one window
    steady = pause_cut_bounds(loud, 10 * rate, hop)  # no pause at all: still at most 10 s each
    assert all(end - start <= 10 * rate for start, end in steady) and steady[-1][1] == len(loud)


def test_max_window_seconds_is_saved_applied_and_checked(tmp_path):
    processor = real_size_processor(stack_factor=8)
    processor.max_window_seconds = 8.0
    processor.save_pretrained(tmp_path)
    loaded = LlasmProcessor.from_pretrained(tmp_path)
    assert loaded.max_window_seconds == 8.0
    inputs = loaded(text="<|audio|>", audio=tone(20.0))
    frames = inputs["input_features_mask"].sum(-1).tolist()
    assert len(frames) == 3 and all(400 <= f <= 800 for f in frames[:-1]) and sum(frames) == 2000
    assert (inputs["input_ids"] == loaded.audio_token_id).sum().item() == sum(math.ceil(f / 2 / 8) for f in frames)
    with pytest.raises(ValueError, match="max_window_seconds must be between 0.4 and the encoder's window \\(30 s\\), got 45"):
        LlasmProcessor(feature_extractor=processor.feature_extractor, tokenizer=processor.tokenizer, max_window_seconds=45)
