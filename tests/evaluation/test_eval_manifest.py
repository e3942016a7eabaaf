"""`evaluate_model` / `llasm eval` on the tiny model with a tiny manifest and a stub cascade ASR."""

import json
from pathlib import Path

import jiwer
import numpy as np
import pytest
import soundfile
import torch

from modeling_llasm.evaluation import classify_record, evaluate_model, format_results, rouge_l
from modeling_llasm.evaluation.tasks import ASR, SPOKEN
from tiny_llasm import tone

# Clip length (samples) -> what the stub "Whisper" hears. ASR references: "the quick brown fox" (4 words) and
# "hello world" (2 words); the stub makes 1 substitution and 1 deletion -> cascade WER = 2 / 6.
STUB_TRANSCRIPTS = {8000: "the quick brown box", 11200: "hello", 14400: "what is the capital of france"}


def stub_asr(clips):
    return [STUB_TRANSCRIPTS[len(clip)] for clip in clips]


def user(*parts):
    return {"role": "user", "content": list(parts)}


def assistant(text):
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


def audio(path, transcript):
    return {"type": "audio", "path": path, "transcript": transcript}


def text(value):
    return {"type": "text", "text": value}


@pytest.fixture
def manifest(tmp_path):
    for name, seconds, freq in (("a.wav", 0.5, 300.0), ("b.wav", 0.7, 500.0), ("c.wav", 0.9, 700.0)):
        soundfile.write(tmp_path / name, tone(seconds, freq=freq), 16000)
    records = [
        {"id": "asr-1", "language": "en", "task": "asr",
         "messages": [user(text("Transcribe the speech."), audio("a.wav", "the quick brown fox")), assistant("the quick brown fox")]},
        {"id": "asr-2", "language": "en",  # no task field: found by its instruction
         "messages": [user(audio("b.wav", "Hello, world!"), text("Please transcribe this recording.")), assistant("Hello, world!")]},
        {"id": "spoken-1", "language": "en", "task": "spoken_question",
         "messages": [user(audio("c.wav", "what is the capital of france"))]},
        {"id": "text-only", "language": "en", "messages": [user(text("hello")), assistant("hi")]},
    ]  # fmt: skip
    path = tmp_path / "manifest.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_eval_fields_and_wer_arithmetic(tiny_llasm, manifest, tmp_path):
    model, processor = tiny_llasm
    out = tmp_path / "results.json"
    results = evaluate_model(model, manifest, processor=processor, asr=stub_asr, max_new_tokens=6, batch_size=2, output=out)
    assert json.loads(out.read_text()) == json.loads(json.dumps(results))
    assert results["counts"] == {"asr": 2, "spoken_instruction": 1, "skipped": 1}

    cascade = results["asr"]["cascade"]
    assert cascade["wer"] == pytest.approx(2 / 6)
    assert cascade["word_counts"] == {"substitutions": 1, "deletions": 1, "insertions": 0, "hits": 4, "num_reference_units": 6}
    by_id = {s["id"]: s for s in results["samples"]}
    assert by_id["asr-1"]["cascade_wer"] == pytest.approx(0.25) and by_id["asr-2"]["cascade_wer"] == pytest.approx(0.5)

    # LLaSM's own transcripts (a random tiny model: gibberish) are scored with the same corpus arithmetic.
    refs = ["the quick brown fox", "hello world"]
    hyps = [by_id["asr-1"]["llasm"], by_id["asr-2"]["llasm"]]
    norm = lambda t: " ".join("".join(c if c.isalnum() or c.isspace() else " " for c in t.lower()).split())  # noqa: E731
    expected = jiwer.process_words(refs, [norm(h) for h in hyps])
    assert results["asr"]["llasm"]["wer"] == pytest.approx(
        (expected.substitutions + expected.deletions + expected.insertions) / 6
    )

    spoken = by_id["spoken-1"]
    assert spoken["transcript"] == "what is the capital of france"
    # The stub hears the spoken question exactly, so the cascade asks the LLM the same text as the reference.
    assert spoken["cascade_transcript"] == spoken["transcript"]
    assert spoken["cascade"] == spoken["reference_answer"] and spoken["cascade_rougeL"] == 1.0
    assert results["spoken_instruction"]["cascade"]["transcript_wer"] == 0.0
    assert 0.0 <= results["spoken_instruction"]["llasm"]["rougeL"] <= 1.0
    assert results["spoken_instruction"]["llasm"]["rougeL"] == pytest.approx(rouge_l(spoken["reference_answer"], spoken["llasm"])["f1"])
    table = format_results(results)
    assert "ASR WER (n=2)" in table and "33.33 %" in table and "cascade" in table


def test_silent_model_has_wer_one(tiny_llasm, manifest):
    """A model whose LM head is zero always emits token 0 (<pad>, a special token): empty transcripts."""
    model, processor = tiny_llasm
    with torch.no_grad():
        model.lm_head.weight.zero_()
    results = evaluate_model(model, manifest, processor=processor, cascade=False, max_new_tokens=3)
    assert results["cascade_asr"] is None and "cascade" not in results["asr"]
    llasm = results["asr"]["llasm"]
    assert llasm["wer"] == 1.0 and llasm["cer"] == 1.0
    assert llasm["word_counts"]["deletions"] == 6 and llasm["word_counts"]["hits"] == 0
    assert all(s["llasm"] == "" for s in results["samples"])


def test_classify_and_rouge():
    rec = lambda parts, task=None: {"id": "x", "messages": [user(*parts)], **({"task": task} if task else {})}  # noqa: E731
    assert classify_record(rec([audio("a", "t"), text("Write down what is said in the audio.")])) == ASR
    assert classify_record(rec([audio("a", "t"), text("请把这段语音转写成文字。")])) == ASR
    assert classify_record(rec([audio("a", "t")])) == SPOKEN
    assert classify_record(rec([audio("a", "t"), text("Answer briefly.")])) == SPOKEN
    assert classify_record(rec([audio("a", "t")], task="asr")) == ASR
    assert classify_record(rec([text("no audio")])) is None
    assert rouge_l("The cat sat on the mat.", "the cat sat on the mat")["f1"] == 1.0
    assert rouge_l("a b c d", "a c")["f1"] == pytest.approx(2 * 1.0 * 0.5 / 1.5)
    assert rouge_l("北京是首都", "北京是中国首都")["recall"] == 1.0  # CJK characters are tokens
    assert rouge_l("", "") == {"precision": 1.0, "recall": 1.0, "f1": 1.0}


def test_cli_eval_writes_json(tiny_llasm, manifest, tmp_path, capsys):
    from modeling_llasm.cli import main

    model, processor = tiny_llasm
    model.save_pretrained(tmp_path / "ckpt")
    processor.save_pretrained(tmp_path / "ckpt")
    out = tmp_path / "cli.json"
    assert main(["eval", str(tmp_path / "ckpt"), "--data", str(manifest), "--no-cascade", "--max-new-tokens", "4", "-o", str(out)]) == 0
    results = json.loads(out.read_text())
    assert results["counts"]["asr"] == 2 and "wer" in results["asr"]["llasm"]
    assert "ASR WER (n=2)" in capsys.readouterr().out


def test_cli_eval_in_int8(tiny_llasm, manifest, tmp_path):
    """`llasm eval --dtype int8` quantizes the loaded model (set_inference_dtype) and evaluates it."""
    from modeling_llasm.cli import main

    model, processor = tiny_llasm
    model.save_pretrained(tmp_path / "ckpt")
    processor.save_pretrained(tmp_path / "ckpt")
    out = tmp_path / "int8.json"
    args = ["eval", str(tmp_path / "ckpt"), "--data", str(manifest), "--no-cascade", "--max-new-tokens", "4", "--dtype", "int8", "-o", str(out)]
    assert main(args) == 0
    assert json.loads(out.read_text())["counts"]["asr"] == 2


def test_understanding_asks_held_out_asr_by_instruction_and_by_transcription_request(tiny_llasm, manifest, monkeypatch):
    from modeling_llasm.evaluation import understanding

    model, processor = tiny_llasm
    asked = []

    def recording(model, processor, conversations, **kwargs):
        asked.append(conversations)
        return real(model, processor, conversations, **kwargs)

    real = understanding.generate_answers
    monkeypatch.setattr(understanding, "generate_answers", recording)
    results = understanding.evaluate_understanding(model, manifest, processor=processor, asr_manifest=manifest, asr=stub_asr,
                                                   cascade=False, max_new_tokens=4, batch_size=2)  # fmt: skip
    asr = results["heldout_asr"]
    assert asr["num_clips"] == 2 and asr["whisper_wer"] == pytest.approx(2 / 6)
    instruction, request = asked[-2], asked[-1]  # spoken answers and typed answers were asked first
    assert instruction[0][0]["content"][0] == text("Transcribe the speech.")  # the record's own user turn
    prompt = processor.transcription_prompt
    assert all(c[: len(prompt)] == prompt and c[-1]["content"][1]["audio"].endswith(name) for c, name in zip(request, ("a.wav", "b.wav")))
    from modeling_llasm.metrics import word_error_rate  # tested on its own in tests/metrics

    for key, field in (("wer", "llasm"), ("transcription_request_wer", "llasm_transcription_request")):
        hypotheses = [s[field] for s in asr["samples"]]
        assert asr[key] == pytest.approx(word_error_rate(["the quick brown fox", "Hello, world!"], hypotheses))
        assert asr[f"{key}_ratio_to_whisper"] == pytest.approx(asr[key] / (2 / 6))
    assert "by a transcription request" in understanding.format_understanding(results)

    only = understanding.evaluate_understanding(model, manifest, processor=processor, asr_manifest=manifest, asr=stub_asr, cascade=False,
                                                asr_prompts=("transcription_request",), max_new_tokens=4, batch_size=2)  # fmt: skip
    assert only["heldout_asr"]["wer"] is None and only["heldout_asr"]["transcription_request_wer"] == asr["transcription_request_wer"]
    with pytest.raises(ValueError, match=r"Unknown ASR prompt kind\(s\) \['typed'\]"):
        understanding.evaluate_understanding(model, manifest, processor=processor, asr_manifest=manifest, asr=stub_asr, cascade=False,
                                             asr_prompts=("typed",), max_new_tokens=2)  # fmt: skip


def test_understanding_scores_chinese_and_code_switched_questions_by_characters(tiny_llasm, tmp_path):
    """The committed clips: Chinese and mixed sets are scored by CER with Chinese normalisation, each kind on its
    own, and whether the spoken answers come in the question's language."""
    from modeling_llasm.data.eval_clips import zh_eval_clips
    from modeling_llasm.evaluation import understanding
    from modeling_llasm.metrics import character_error_rate

    model, processor = tiny_llasm
    rows = {row["path"]: row for row in zh_eval_clips()}
    manifest = understanding.committed_clip_manifest(tmp_path / "zh")
    records = [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines()]
    assert len(records) == len(rows) == 40 and {r["kind"] for r in records} == {"zh", "zh_en", "en_zh"}

    def traditional_asr(clips):  # Whisper's habit: traditional characters; scored as simplified
        return ["北京是中國的首都嗎" for _ in clips]

    few = understanding.committed_clip_manifest(tmp_path / "few", "zh")
    results = understanding.evaluate_understanding(model, few, processor=processor, asr=traditional_asr, max_new_tokens=3,
                                                   batch_size=8, limit=4)  # fmt: skip
    spoken = results["spoken"]
    assert spoken["error_unit"] == "cer" and "adaptor_wer" not in spoken
    questions = [s["question"] for s in results["samples"]]
    assert spoken["whisper_cer"] == pytest.approx(character_error_rate(questions, ["北京是中国的首都吗"] * 4, normalize="zh"))
    assert spoken["audio_answers_in_question_language"] == pytest.approx(
        sum(understanding.text_language(s["audio_answer"]) == "zh" for s in results["samples"]) / 4)
    assert "recognition CER" in understanding.format_understanding(results)
    assert understanding.error_unit(["en", "en"]) == "wer" and understanding.error_unit(["en", "zh"]) == "cer"
    assert [understanding.text_language(t) for t in ("什么是 machine learning？", "How do people celebrate 春节?", "42")] == ["zh", "en", None]


def test_a_mixed_set_is_summarised_per_language_and_per_kind(tiny_llasm, tmp_path):
    from modeling_llasm.evaluation import understanding

    model, processor = tiny_llasm
    lines = []
    for kind in ("zh", "en_zh"):
        manifest = understanding.committed_clip_manifest(tmp_path / kind, kind)
        lines += manifest.read_text(encoding="utf-8").splitlines()[:2]
    lines.append(lines[-1].replace('"kind": "en_zh"', '"kind": null').replace('"id": "en_zh-', '"id": "nokind-'))
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text("\n".join(lines) + "\n", encoding="utf-8")
    results = understanding.evaluate_understanding(model, mixed, processor=processor, asr=lambda clips: ["x"] * len(clips),
                                                   max_new_tokens=2, batch_size=8)  # fmt: skip
    assert results["spoken"]["num_questions"] == 5 and results["spoken"]["error_unit"] == "cer"
    assert {k: v["num_questions"] for k, v in results["by_kind"].items()} == {"zh": 2, "en_zh": 2, "-": 1}
    assert results["by_language"]["en"]["error_unit"] == "wer" and results["by_language"]["zh"]["error_unit"] == "cer"


def test_noise_robustness_answers_noisy_copies_and_reuses_the_typed_answers(tiny_llasm, tmp_path, monkeypatch):
    """Every condition hears noisy copies (model and cascade ASR alike), the typed questions are answered once, and
    the summary compares each condition's on-topic rate with clean."""
    from modeling_llasm.data.noise import noisy_copies
    from modeling_llasm.evaluation import understanding
    from modeling_llasm.processing_llasm import load_audio

    model, processor = tiny_llasm
    clips = []
    for i in range(6):  # babble needs more than 4 other talkers
        clips.append(tone(0.4 + 0.1 * i, freq=300.0 + 100 * i))
        soundfile.write(tmp_path / f"q{i}.wav", clips[-1], 16000)
    questions = [f"what is the capital of country number {i}" for i in range(6)]
    records = [{"id": f"q{i}", "language": "en", "task": "spoken_question", "messages": [user(audio(f"q{i}.wav", q))]}
               for i, q in enumerate(questions)]  # fmt: skip
    manifest = tmp_path / "spoken.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in records))
    heard, typed_batches = [], []

    def asr(batch):  # the cascade's "Whisper": records what it heard
        heard.append([np.asarray(c) for c in batch])
        return ["heard something"] * len(batch)

    real = understanding.generate_answers

    def answers(model, processor, conversations, **kwargs):
        contents = [c[-1]["content"] for c in conversations]
        texts = [part if isinstance(part, str) else part.get("text") for content in contents
                 for part in ([content] if isinstance(content, str) else content)]  # fmt: skip
        typed_batches.append(sum(t in questions for t in texts))
        return real(model, processor, conversations, **kwargs)

    monkeypatch.setattr(understanding, "generate_answers", answers)
    out = tmp_path / "noise.json"
    results = understanding.evaluate_noise_robustness(model, manifest, [("white", 10.0), ("babble", 0.0)], processor=processor,
                                                      asr=asr, max_new_tokens=3, batch_size=8, output=out)  # fmt: skip
    assert list(results["summary"]) == ["clean", "white:10", "babble:0"]
    assert json.loads(out.read_text())["summary"].keys() == results["summary"].keys()
    # clean first, then each condition's noisy copies, exactly as data.noise makes them
    clips = [load_audio(tmp_path / f"q{i}.wav") for i in range(6)]
    assert np.allclose(heard[0][2], clips[2]) and np.allclose(heard[1][2], noisy_copies(clips, "white", 10.0)[2])
    assert np.allclose(heard[2][5], noisy_copies(clips, "babble", 0.0)[5])
    assert sum(typed_batches) == 6  # the typed questions are answered once, in the clean run
    condition = results["conditions"]["white:10"]
    assert condition["settings"]["noise"] == {"kind": "white", "snr_db": 10.0}
    assert [s["typed_answer"] for s in condition["samples"]] == [s["typed_answer"] for s in results["clean"]["samples"]]
    row, clean = results["summary"]["white:10"], results["summary"]["clean"]
    on_topic = [s["audio_on_topic"] for s in condition["samples"]]
    assert row["audio_on_topic"] == pytest.approx(sum(on_topic) / len(on_topic))
    if clean["audio_on_topic"]:
        assert row["audio_on_topic_ratio_to_clean"] == pytest.approx(row["audio_on_topic"] / clean["audio_on_topic"])
    with pytest.raises(ValueError, match="typed_answers: 2 answers for 6 spoken questions"):
        understanding.evaluate_understanding(model, manifest, processor=processor, asr=asr, typed_answers=["a", "b"], max_new_tokens=1)
    assert "| babble:0 |" in understanding.format_noise_robustness(results)
    # an interrupted run resumes: finished conditions are kept, only the missing one is answered
    partial = json.loads(out.read_text())
    del partial["conditions"]["babble:0"]
    out.write_text(json.dumps(partial))
    heard.clear()
    resumed = understanding.evaluate_noise_robustness(model, manifest, [("white", 10.0), ("babble", 0.0)], processor=processor,
                                                      asr=asr, max_new_tokens=3, batch_size=8, output=out)  # fmt: skip
    assert len(heard) == 1 and np.allclose(heard[0][5], noisy_copies(clips, "babble", 0.0)[5])
    assert resumed["summary"] == json.loads(json.dumps(results["summary"]))


def test_understanding_shows_progress_on_request(tiny_llasm, manifest, capsys):
    """The long steps of the spoken-understanding evaluation (`llasm eval --understanding`, the recipe's phase) show
    progress bars, as every other long step does; off by default."""
    from modeling_llasm.evaluation import understanding

    model, processor = tiny_llasm
    understanding.evaluate_understanding(model, manifest, processor=processor, asr=stub_asr, max_new_tokens=2, progress=True)
    shown = capsys.readouterr().err
    for step in ("answers to the audio", "answers to the typed questions", "recognition", "cascade answers"):
        assert f"{step}: 100%" in shown, shown
    understanding.evaluate_understanding(model, manifest, processor=processor, asr=stub_asr, max_new_tokens=2)
    assert "100%" not in capsys.readouterr().err


def test_an_evaluation_with_chinese_adds_the_committed_chinese_clips(tmp_path):
    """The recipe's understanding set for a language mix with Chinese: the voiced English questions plus the 40
    committed Chinese and code-switched clips, in one manifest with resolvable audio; English only: unchanged."""
    from modeling_llasm.data.chat import audio_part, message, write_manifest
    from modeling_llasm.evaluation import understanding

    english_dir = tmp_path / "understanding_set"
    (english_dir / "v").mkdir(parents=True)
    soundfile.write(english_dir / "v" / "q0.wav", tone(1.0), 16000)
    english = english_dir / "manifest.jsonl"
    write_manifest([{"id": "q-0", "language": "en", "task": "spoken_question",
                     "messages": [message("user", audio_part("What is the capital of France?", "v/q0.wav"))]}], english)  # fmt: skip
    assert understanding.understanding_manifest(english, ["en"], tmp_path / "out" / "questions.jsonl") == english
    combined = understanding.understanding_manifest(english, ["en", "zh"], tmp_path / "out" / "questions.jsonl")
    records = [json.loads(line) for line in combined.read_text(encoding="utf-8").splitlines()]
    assert len(records) == 41 and records[0]["id"] == "q-0"
    assert {r["language"] for r in records} == {"en", "zh"} and {r.get("kind") for r in records[1:]} == {"zh", "zh_en", "en_zh"}
    paths = [part["path"] for r in records for part in r["messages"][0]["content"] if part.get("type") == "audio"]
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in paths)
