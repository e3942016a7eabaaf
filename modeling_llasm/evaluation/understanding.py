"""Spoken-question understanding: does the model answer a spoken question as it answers the same question typed?

For every held-out spoken question (texts and voices never trained on) the same model answers

- the **audio** (LLaSM),
- the **typed** gold transcript (the reference: what understanding should reproduce),
- **Whisper's transcript** of the audio (the cascade, Whisper tiny.en -> the same LLM: the anchor),

and the metrics are ROUGE-L(audio answer, typed answer) beside ROUGE-L(cascade answer, typed answer), the
adaptor's own recognition WER on the clips beside Whisper's, held-out ASR WER (optional ASR manifest), and
**text-skill retention** = ROUGE-L(the model's answers to typed prompts, the base LLM's answers).

```python
from modeling_llasm.evaluation.understanding import build_understanding_set, evaluate_understanding
manifest = build_understanding_set("~/.cache/llasm/eval/understanding-en")   # 60 questions x 2 held-out voices
results = evaluate_understanding("run/final", manifest, base_model="~/.cache/llasm/llasm-tiny-base")
```

`llasm eval MODEL --understanding` runs it (any manifest of spoken-question records works with `--data`).
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..data.text_sources import eval_questions, retention_prompts, text_skill_prompts
from ..files import atomic_write_json
from ..metrics._error_rate import HAN_CHARACTERS, error_rate
from ..processing_llasm import TRANSCRIPTION_INSTRUCTION
from . import tasks
from .cascade import AsrFunction, WhisperTranscriber, whisper_dir_for
from .evaluator import generate_answers, load_llasm
from ..metrics.rouge import rouge_l
from ..metrics.topic import on_topic


#: Held-out voices of the default set: never used for training (`data.text_sources.DEFAULT_HELDOUT_VOICES`), two
#: engines so that the score is not one synthesizer's.
DEFAULT_VOICES = ("flite:slt", "espeak-ng:en-us+m5")
ASR_PROMPT = TRANSCRIPTION_INSTRUCTION
RESULT_VERSION = 2  # 2: held-out ASR asked both by instruction and by transcription request
# How the held-out ASR clips ask for a transcript: their own chat instruction (as in training), or
# `LlasmProcessor.apply_transcription_request`.
ASR_PROMPTS = ("instruction", "transcription_request")


def build_understanding_set(
    output_dir: str | os.PathLike, voices: Sequence[str] = DEFAULT_VOICES, questions: Sequence[str] | None = None,
    num_workers: int | None = None, progress: bool = False,
) -> Path:  # fmt: skip
    """Voice every question with every voice (rate 1.0) into `OUT/<voice>/` and write `OUT/manifest.jsonl`
    (spoken-question records, audio paths relative to OUT). Resumable (the data builder's own resume); returns
    the manifest path."""
    from ..data.builder import BuildConfig, build_dataset
    from ..data.chat import audio_part, message, read_manifest, write_manifest

    output_dir = Path(output_dir).expanduser()
    questions = list(eval_questions() if questions is None else questions)
    if not questions:
        raise ValueError("build_understanding_set: no questions given.")
    records = []
    for voice in voices:
        name = voice.replace(":", "_").replace("+", "_")
        built = [{"id": f"q-{name}-{i:03d}", "language": "en", "task": "spoken_question", "voice": voice,
                  "messages": [message("user", audio_part(q))]} for i, q in enumerate(questions)]  # fmt: skip
        config = BuildConfig(voices={"en": [voice]}, rates=(1.0,), filters=None)
        report = build_dataset(built, output_dir / name, config=config, source={"understanding": voice},
                               total=len(built), num_workers=num_workers, progress=progress)  # fmt: skip
        if report.skipped:
            raise RuntimeError(f"build_understanding_set: {voice} could not voice {dict(report.skipped)} ({output_dir / name})")
        for record in read_manifest(output_dir / name / "manifest.jsonl", resolve_paths=True):
            for part in record["messages"][0]["content"]:
                if part.get("type") == "audio":
                    part["path"] = os.path.relpath(part["path"], output_dir)
            records.append(record)
    manifest = output_dir / "manifest.jsonl"
    write_manifest(records, manifest)
    return manifest


@torch.no_grad()
def adaptor_transcripts(model, processor, clips: Sequence[Any], batch_size: int = 8, max_new_tokens: int = 48,
                        progress: str | None = None) -> tuple[list[str], str]:  # fmt: skip
    """What the adaptor recognises in each clip, and how it was read out.

    Adaptors that recognise words (`ctc_compress`, `whisper_reader`: `get_audio_features(...).recognized_token_ids`)
    are read directly ("adaptor"); any other adaptor is read through the LLM with the ASR prompt ("llm").
    `progress`: the description of a progress bar (None: none)."""
    from tqdm.auto import tqdm

    from ..processing_llasm import load_audio

    clips = [load_audio(clip) for clip in clips]
    if model.config.variable_audio_tokens:
        texts = []
        with tqdm(total=len(clips), desc=progress, unit="clip", disable=progress is None) as bar:
            for start in range(0, len(clips), batch_size):
                chunk = clips[start : start + batch_size]
                batch = processor(text=[processor.audio_token] * len(chunk), audio=chunk)
                features = model.get_audio_features(batch["input_features"], batch["input_features_mask"])
                texts.extend(_decode_windows(processor, features.recognized_token_ids, [len(processor.audio_windows(c)) for c in chunk]))
                bar.update(len(chunk))
        return texts, "adaptor"
    prompts = [[{"role": "user", "content": [{"type": "audio", "audio": clip}, {"type": "text", "text": ASR_PROMPT}]}] for clip in clips]
    return generate_answers(model, processor, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size, progress=progress), "llm"


_HAN = re.compile(f"[{HAN_CHARACTERS}]")


def _decode_windows(processor, window_ids: list[list[int]], windows_per_clip: list[int]) -> list[str]:
    """Each clip's recognised text: its windows' texts in order, joined by a space (each window is spelled as typed at
    the start of a turn, so without one "day?" and "Can" of two windows would score as one word), or by nothing
    between Chinese characters."""
    texts, window = [], 0
    for count in windows_per_clip:
        text = ""
        for ids in window_ids[window : window + count]:
            piece = processor.decode(ids, skip_special_tokens=True).strip()
            if text and piece and not (_HAN.match(text[-1]) and _HAN.match(piece[0])):
                text += " "
            text += piece
        texts.append(text)
        window += count
    return texts


def _wer(references: list[str], hypotheses: list[str]) -> float:
    return float(error_rate(references, hypotheses, "word"))


def error_unit(languages: Sequence[str | None]) -> str:
    """`"wer"` for an all-English set, else `"cer"` (Chinese and mixed sets: characters, as Chinese ASR is scored)."""
    return "wer" if all((language or "en") == "en" for language in languages) else "cer"


def recognition_error(references: list[str], hypotheses: list[str], unit: str) -> float:
    """Corpus recognition error in `unit` (`error_unit`): WER, or CER with Chinese ASR normalisation."""
    if unit == "wer":
        return _wer(references, hypotheses)
    return float(error_rate(references, hypotheses, "char", normalize="zh"))


_CJK_CHAR = re.compile(f"[{HAN_CHARACTERS}]")
_LATIN_WORD = re.compile(r"[A-Za-z]+")


def text_language(text: str) -> str | None:
    """`"zh"` or `"en"`, whichever holds more of the words of `text` (a Chinese character counts as one word, as does a
    run of Latin letters); None without either."""
    chinese, latin = len(_CJK_CHAR.findall(text)), len(_LATIN_WORD.findall(text))
    if not chinese and not latin:
        return None
    return "zh" if chinese >= latin else "en"


def committed_clip_manifest(output_dir: str | os.PathLike, kind: str | None = None) -> Path:
    """A spoken-question manifest (`OUT/manifest.jsonl`) of the committed Chinese and code-switched clips
    (`data.eval_clips.zh_eval_clips`, held-out texts and voices); `kind` keeps one kind (`"zh"`, `"zh_en"`, `"en_zh"`)."""
    from ..data.chat import audio_part, message, write_manifest
    from ..data.eval_clips import zh_eval_clips

    records = [{"id": f"{row['kind']}-{Path(row['file']).stem}", "language": row["language"], "kind": row["kind"],
                "task": "spoken_question", "voice": "+".join(row["voices"]),
                "messages": [message("user", audio_part(row["text"], row["path"]))]} for row in zh_eval_clips(kind)]  # fmt: skip
    manifest = Path(output_dir).expanduser() / "manifest.jsonl"
    manifest.parent.mkdir(parents=True, exist_ok=True)
    write_manifest(records, manifest)
    return manifest


def understanding_manifest(english_manifest: str | os.PathLike, languages: Sequence[str], output: str | os.PathLike) -> Path:
    """The spoken questions of an evaluation in `languages`: the voiced English set (`build_understanding_set`) and,
    when Chinese is among them, the committed Chinese and code-switched clips (`committed_clip_manifest`), in one
    manifest at `output` (audio paths absolute). English only: `english_manifest` itself."""
    from ..data.chat import read_manifest, write_manifest

    if "zh" not in languages:
        return Path(english_manifest)
    output = Path(output).expanduser()
    chinese = committed_clip_manifest(output.parent / "committed_clips")
    records = [*read_manifest(english_manifest, resolve_paths=True), *read_manifest(chinese, resolve_paths=True)]
    write_manifest(records, output)
    return output


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _loaded(model, processor) -> tuple[Any, Any, str]:
    """`(model, processor, name)`: a checkpoint directory loaded with its processor, or a loaded model with the
    processor given."""
    if isinstance(model, (str, os.PathLike)):
        loaded, loaded_processor = load_llasm(model)
        return loaded, processor or loaded_processor, str(model)
    if processor is None:
        raise ValueError("Pass `processor` together with a loaded model.")
    return model, processor, type(model).__name__


def _whisper_path(whisper_dir: str | os.PathLike | None, model_name: str) -> Path:
    """The cascade's Whisper: the one given, else the one the model directory was built from."""
    return Path(whisper_dir) if whisper_dir is not None else whisper_dir_for(model_name if Path(model_name).is_dir() else None)


def evaluate_understanding(
    model: str | os.PathLike | Any,
    manifest: str | os.PathLike,
    *,
    processor: Any = None,
    base_model: str | os.PathLike | Any | None = None,
    asr_manifest: str | os.PathLike | None = None,
    asr_prompts: Sequence[str] = ASR_PROMPTS,
    recognition_manifest: str | os.PathLike | None = None,
    asr: AsrFunction | None = None,
    whisper_dir: str | os.PathLike | None = None,
    cascade: bool = True,
    text_prompts: Sequence[str] | None = None,
    max_new_tokens: int = 64,
    batch_size: int = 8,
    limit: int | None = None,
    noise: tuple[str, float] | None = None,
    typed_answers: Sequence[str] | None = None,
    output: str | os.PathLike | None = None,
    log: Callable[[str], None] | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Spoken-question understanding of `model` on the spoken-question records of `manifest` (see the module
    docstring). `base_model` (a checkpoint directory or a loaded model) gives the base LLM for text-skill retention
    (skipped when None); `asr_manifest` adds held-out ASR WER (the model transcribing through the LLM vs Whisper) on
    ASR records, asked with each record's own instruction and/or as a transcription request (`asr_prompts`, see
    `LlasmProcessor.apply_transcription_request`); `recognition_manifest` the adaptor's own recognition WER on them (vs Whisper, no LLM); `asr`
    replaces Whisper (clips -> transcripts); `cascade=False` skips Whisper and the cascade (their metrics are None).
    Greedy decoding, `max_new_tokens` for every answer. `noise=("white" | "babble", snr_db)` mixes noise into every
    clip first (`data.noise.noisy_copies`: the model, Whisper and the cascade all hear the noisy copies);
    `typed_answers` (in record order) reuses the answers to the typed questions of an earlier run on the same records.
    `progress`: progress bars for the long steps. Returns the results dict (also written as JSON to `output`)."""
    from ..processing_llasm import load_audio

    log = log or (lambda line: None)
    model, processor, model_name = _loaded(model, processor)
    records = [r for r in tasks.read_records(manifest) if tasks.classify_record(r) == tasks.SPOKEN][:limit]
    if not records:
        raise ValueError(f"{manifest}: no spoken-question records (audio in the first user turn, no ASR instruction).")
    if any(len(tasks.audio_paths(r)) != 1 for r in records):
        raise ValueError(f"{manifest}: every spoken question must have exactly one audio part in its first user turn.")
    gen = {"max_new_tokens": max_new_tokens, "batch_size": batch_size}
    timing: dict[str, float] = {}

    def bar(description: str) -> str | None:
        return description if progress else None

    def timed(name: str, fn):
        start = time.perf_counter()
        value = fn()
        timing[name] = round(timing.get(name, 0.0) + time.perf_counter() - start, 3)
        return value

    gold = [tasks.gold_transcripts(r)[0] for r in records]
    clips = [load_audio(tasks.audio_paths(r)[0]) for r in records]
    if noise is not None:
        from ..data.noise import noisy_copies

        clips = noisy_copies(clips, *noise)
    # a noisy copy is heard from memory; a clean clip from its file, as the record names it
    audio_prompts = [tasks.audio_prompt(r, clip if noise is not None else None) for r, clip in zip(records, clips)]
    log(f"[understanding] {len(records)} spoken questions{f' with {noise[0]} noise at {noise[1]:g} dB SNR' if noise else ''}: answering the audio ...")
    audio_answers = timed("audio_answers", lambda: generate_answers(model, processor, audio_prompts, progress=bar("answers to the audio"), **gen))
    if typed_answers is None:
        log("[understanding] answering the typed transcripts ...")
        typed_answers = timed("typed_answers", lambda: generate_answers(model, processor, [tasks.text_prompt(r, [g]) for r, g in zip(records, gold)],
                                                                       progress=bar("answers to the typed questions"), **gen))
    elif len(typed_answers) != len(records):
        raise ValueError(f"typed_answers: {len(typed_answers)} answers for {len(records)} spoken questions.")
    log("[understanding] the adaptor's own recognition ...")
    recognized, readout = timed("adaptor_recognition", lambda: adaptor_transcripts(model, processor, clips, batch_size=batch_size,
                                                                                                  progress=bar("recognition")))
    if asr is None and (cascade or asr_manifest is not None or recognition_manifest is not None):
        whisper_path = _whisper_path(whisper_dir, model_name)
        log(f"[understanding] Whisper {whisper_path} (cascade and ASR reference) ...")
        asr = WhisperTranscriber.from_pretrained(whisper_path, batch_size=batch_size)
    if not cascade:
        whisper_texts, cascade_answers = [None] * len(records), [None] * len(records)
    else:
        whisper_texts = timed("whisper", lambda: list(asr(clips, progress=bar("Whisper")) if isinstance(asr, WhisperTranscriber) else asr(clips)))
        cascade_answers = timed("cascade_answers", lambda: generate_answers(model, processor, [tasks.text_prompt(r, [t]) for r, t in zip(records, whisper_texts)],
                                                                            progress=bar("cascade answers"), **gen))

    samples = []
    for i, record in enumerate(records):
        samples.append({
            "id": record["id"], "voice": record.get("voice"), "question": gold[i], "adaptor_transcript": recognized[i],
            "whisper_transcript": whisper_texts[i], "audio_answer": audio_answers[i], "typed_answer": typed_answers[i],
            "cascade_answer": cascade_answers[i], "audio_rougeL": rouge_l(typed_answers[i], audio_answers[i])["f1"],
            "cascade_rougeL": rouge_l(typed_answers[i], cascade_answers[i])["f1"] if cascade else None,
            "language": record.get("language", "en"), "kind": record.get("kind"),
            "audio_answer_language": text_language(audio_answers[i]),
            "audio_on_topic": on_topic(audio_answers[i], gold[i]), "typed_on_topic": on_topic(typed_answers[i], gold[i]),
            "cascade_on_topic": on_topic(cascade_answers[i], gold[i]) if cascade else None,
        })  # fmt: skip

    def summary(rows: list[dict]) -> dict[str, Any]:
        audio = _mean([s["audio_rougeL"] for s in rows])
        anchor = _mean([s["cascade_rougeL"] for s in rows]) if cascade else None
        unit = error_unit([s["language"] for s in rows])  # English: WER as before; Chinese or mixed: CER
        adaptor_error = recognition_error([s["question"] for s in rows], [s["adaptor_transcript"] for s in rows], unit)
        whisper_error = recognition_error([s["question"] for s in rows], [s["whisper_transcript"] for s in rows], unit) if cascade else None
        return {
            "num_questions": len(rows), "rougeL_audio_vs_typed": audio, "rougeL_cascade_vs_typed": anchor,
            "rougeL_ratio_to_cascade": audio / anchor if anchor else None, "error_unit": unit,
            f"adaptor_{unit}": adaptor_error, f"whisper_{unit}": whisper_error,
            f"adaptor_{unit}_ratio_to_whisper": adaptor_error / whisper_error if whisper_error else None,
            "audio_answers_in_question_language": _mean([float(s["audio_answer_language"] == s["language"]) for s in rows]),
            **{f"{who}_on_topic": _mean([float(s[f"{who}_on_topic"]) for s in rows if s[f"{who}_on_topic"] is not None])
               for who in ("audio", "typed", "cascade") if who != "cascade" or cascade},
        }  # fmt: skip

    results: dict[str, Any] = {
        "version": RESULT_VERSION, "model": model_name, "manifest": str(manifest),
        "settings": {"max_new_tokens": max_new_tokens, "decoding": "greedy", "recognition_readout": readout,
                     "torch_threads": torch.get_num_threads(),
                     "noise": {"kind": noise[0], "snr_db": noise[1]} if noise else None},  # fmt: skip
        "spoken": summary(samples),
        "by_voice": {voice: summary([s for s in samples if s["voice"] == voice])
                     for voice in sorted({s["voice"] for s in samples if s["voice"]})},  # fmt: skip
    }
    if len({(s["language"], s["kind"]) for s in samples}) > 1:  # a mixed set: each language and kind on its own too
        results["by_language"] = {lang: summary([s for s in samples if s["language"] == lang]) for lang in sorted({s["language"] for s in samples})}
        results["by_kind"] = {kind: summary([s for s in samples if (s["kind"] or "-") == kind])
                              for kind in sorted({s["kind"] or "-" for s in samples})}  # fmt: skip
    asr_sets: dict[str, _AsrSet] = {}  # the same manifest for both: its clips are read and transcribed once

    def asr_set(manifest) -> _AsrSet:
        if str(manifest) not in asr_sets:
            asr_sets[str(manifest)] = _AsrSet.read(manifest, asr)
        return asr_sets[str(manifest)]

    if asr_manifest is not None:
        log("[understanding] held-out ASR ...")
        results["heldout_asr"] = timed("heldout_asr", lambda: _heldout_asr(model, processor, asr_set(asr_manifest), batch_size, asr_prompts))
    if recognition_manifest is not None:
        log("[understanding] the adaptor's recognition on held-out ASR clips ...")
        results["heldout_recognition"] = timed("heldout_recognition", lambda: _recognition(model, processor, asr_set(recognition_manifest), batch_size))
    if base_model is not None:
        log("[understanding] text-skill retention ...")
        # the English prompts, and the Chinese ones too when the set holds Chinese or mixed questions
        prompts = retention_prompts([s["language"] for s in samples]) if text_prompts is None else text_prompts
        results["text_skills"] = timed("text_skills", lambda: _text_retention(model, processor, base_model, prompts, gen))
    results["timing_seconds"] = timing
    results["samples"] = samples
    if output is not None:
        atomic_write_json(output, results, indent=1, ensure_ascii=False)
    return results


NOISE_CONDITIONS = (("white", 10.0), ("white", 0.0), ("babble", 10.0), ("babble", 0.0))


def evaluate_noise_robustness(
    model: str | os.PathLike | Any,
    manifest: str | os.PathLike,
    conditions: Sequence[tuple[str, float]] = NOISE_CONDITIONS,
    *,
    processor: Any = None,
    output: str | os.PathLike | None = None,
    log: Callable[[str], None] | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """`evaluate_understanding` on the clean clips and on noisy copies of them for each `(kind, snr_db)` condition
    (the typed answers are computed once), and each condition's rates relative to clean: on-topic answers to the
    audio (`audio_on_topic`), ROUGE-L to the typed answers, and recognition error. Other keyword arguments go to
    `evaluate_understanding` (no retention or held-out ASR here). Returns `{"clean", "conditions", "summary"}`,
    also written as JSON to `output` after every condition; a run interrupted with the same settings and `output`
    resumes from the conditions it finished."""
    model, processor, model_name = _loaded(model, processor)
    log = log or (lambda line: None)
    if kwargs.get("asr") is None and kwargs.get("cascade", True):  # one Whisper for every condition
        whisper_path = _whisper_path(kwargs.pop("whisper_dir", None), model_name)
        kwargs["asr"] = WhisperTranscriber.from_pretrained(whisper_path, batch_size=kwargs.get("batch_size", 8))
    settings = {"model": model_name, "manifest": str(manifest),  # what the results depend on (not `progress`)
                "kwargs": {k: v for k, v in kwargs.items() if isinstance(v, (int, float, str, bool, type(None))) and k != "progress"}}  # fmt: skip
    results: dict[str, Any] = {**settings, "clean": None, "conditions": {}}
    if output is not None and Path(output).is_file():  # resume: keep what an interrupted run of the same settings did
        done = json.loads(Path(output).read_text(encoding="utf-8"))
        if {k: done.get(k) for k in settings} == settings:
            results.update(clean=done.get("clean"), conditions=done.get("conditions", {}))
            log(f"[understanding] resuming {output}: clean{''.join(', ' + n for n in results['conditions'])} done")

    def save() -> None:
        if output is not None:
            atomic_write_json(output, results, indent=1, ensure_ascii=False)

    if results["clean"] is None:
        results["clean"] = evaluate_understanding(model, manifest, processor=processor, log=log, **kwargs)
        save()
    clean = results["clean"]
    typed = [sample["typed_answer"] for sample in clean["samples"]]
    rows = {"clean": clean["spoken"]}
    for kind, snr_db in conditions:
        name = f"{kind}:{snr_db:g}"
        if name not in results["conditions"]:
            results["conditions"][name] = evaluate_understanding(model, manifest, processor=processor, noise=(kind, snr_db),
                                                                 typed_answers=typed, log=log, **kwargs)  # fmt: skip
            save()
        rows[name] = results["conditions"][name]["spoken"]

    def ratio(value, reference):
        return value / reference if value is not None and reference else None

    unit = clean["spoken"]["error_unit"]
    results["summary"] = {
        name: {"audio_on_topic": row.get("audio_on_topic"), "cascade_on_topic": row.get("cascade_on_topic"),
               "audio_on_topic_ratio_to_clean": ratio(row.get("audio_on_topic"), rows["clean"].get("audio_on_topic")),
               "rougeL_audio_vs_typed": row["rougeL_audio_vs_typed"], "rougeL_cascade_vs_typed": row["rougeL_cascade_vs_typed"],
               f"adaptor_{unit}": row[f"adaptor_{unit}"], f"whisper_{unit}": row[f"whisper_{unit}"]}
        for name, row in rows.items()
    }  # fmt: skip
    save()
    return results


def format_noise_robustness(results: dict[str, Any]) -> str:
    """A table of `evaluate_noise_robustness`'s summary: one row per condition."""
    unit = results["clean"]["spoken"]["error_unit"]
    lines = [f"| condition | on topic (audio) | vs clean | on topic (cascade) | ROUGE-L audio | ROUGE-L cascade | "
             f"reader {unit.upper()} | Whisper {unit.upper()} |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, row in results["summary"].items():
        lines.append(f"| {name} | {_fmt(row['audio_on_topic'])} | {_fmt(row['audio_on_topic_ratio_to_clean'])} | "
                     f"{_fmt(row['cascade_on_topic'])} | {_fmt(row['rougeL_audio_vs_typed'])} | {_fmt(row['rougeL_cascade_vs_typed'])} | "
                     f"{_fmt(row[f'adaptor_{unit}'])} | {_fmt(row[f'whisper_{unit}'])} |")  # fmt: skip
    return "\n".join(lines)


@dataclass
class _AsrSet:
    """The ASR records of a manifest, their references, clips and Whisper's transcripts: read and run once."""

    records: list[dict]
    references: list[str]
    clips: list[Any]
    whisper: list[str]

    @classmethod
    def read(cls, manifest, asr: AsrFunction) -> _AsrSet:
        from ..processing_llasm import load_audio

        records = [r for r in tasks.read_records(manifest) if tasks.classify_record(r) == tasks.ASR]
        if not records:
            raise ValueError(f"{manifest}: no ASR records.")
        clips = [load_audio(tasks.audio_paths(r)[0]) for r in records]
        return cls(records, [tasks.asr_reference(r) for r in records], clips, list(asr(clips)))


def _heldout_asr(model, processor, data: _AsrSet, batch_size: int, prompts: Sequence[str] = ASR_PROMPTS) -> dict[str, Any]:
    """Held-out ASR WER through the LLM, asked as each record asks (`instruction`: the clip's own chat instruction,
    as in training) and/or as `processor.apply_transcription_request` asks (`transcription_request`)."""
    unknown = set(prompts) - set(ASR_PROMPTS)
    if unknown:
        raise ValueError(f"Unknown ASR prompt kind(s) {sorted(unknown)}; expected some of {ASR_PROMPTS}.")
    conversations = {
        "instruction": lambda: [tasks.audio_prompt(r) for r in data.records],
        "transcription_request": lambda: [processor.transcription_conversation(tasks.audio_paths(r)[0]) for r in data.records],
    }
    whisper_wer = _wer(data.references, data.whisper)
    results: dict[str, Any] = {"num_clips": len(data.records), "whisper_wer": whisper_wer}
    samples = [{"reference": r, "whisper": w} for r, w in zip(data.references, data.whisper)]
    for kind in ASR_PROMPTS:
        key = "wer" if kind == "instruction" else f"{kind}_wer"
        if kind not in prompts:
            results[key] = results[f"{key}_ratio_to_whisper"] = None
            continue
        hypotheses = generate_answers(model, processor, conversations[kind](), max_new_tokens=48, batch_size=batch_size)
        results[key] = wer = _wer(data.references, hypotheses)
        results[f"{key}_ratio_to_whisper"] = wer / whisper_wer if whisper_wer else None
        for sample, hypothesis in zip(samples, hypotheses):
            sample["llasm" if kind == "instruction" else f"llasm_{kind}"] = hypothesis
    results["samples"] = samples
    return results


def _recognition(model, processor, data: _AsrSet, batch_size: int) -> dict[str, Any]:
    recognized, readout = adaptor_transcripts(model, processor, data.clips, batch_size=batch_size)
    adaptor_wer, whisper_wer = _wer(data.references, recognized), _wer(data.references, data.whisper)
    return {"num_clips": len(data.records), "readout": readout, "adaptor_wer": adaptor_wer, "whisper_wer": whisper_wer,
            "adaptor_wer_ratio_to_whisper": adaptor_wer / whisper_wer if whisper_wer else None,
            "samples": [{"reference": r, "adaptor": a, "whisper": w} for r, a, w in zip(data.references, recognized, data.whisper)]}  # fmt: skip


def _text_retention(model, processor, base_model, prompts: Sequence[str] | None, gen: dict) -> dict[str, Any]:
    prompts = list(text_skill_prompts() if prompts is None else prompts)
    conversations = [[{"role": "user", "content": p}] for p in prompts]
    if isinstance(base_model, (str, os.PathLike)):
        base, _ = load_llasm(base_model)
    else:
        base = base_model
    answers = generate_answers(model, processor, conversations, **gen)
    base_answers = generate_answers(base, processor, conversations, **gen)
    scores = [rouge_l(b, a)["f1"] for a, b in zip(answers, base_answers)]
    languages = [text_language(p) or "en" for p in prompts]
    by_language = {language: {"num_prompts": languages.count(language),
                              "retention_rougeL": _mean([s for s, l in zip(scores, languages) if l == language])}
                   for language in sorted(set(languages))}  # fmt: skip
    return {"num_prompts": len(prompts), "retention_rougeL": _mean(scores), "by_language": by_language,
            "samples": [{"prompt": p, "answer": a, "base_answer": b, "rougeL": s}
                        for p, a, b, s in zip(prompts, answers, base_answers, scores)]}  # fmt: skip


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def format_understanding(results: dict[str, Any]) -> str:
    """A short text table of `evaluate_understanding` results."""
    def block(title: str, spoken: dict) -> list[str]:
        unit = spoken.get("error_unit", "wer")
        ratio = spoken[f"adaptor_{unit}_ratio_to_whisper"]
        language_match = spoken.get("audio_answers_in_question_language")
        return [
            title,
            f"  ROUGE-L(audio answer, typed answer)   {spoken['rougeL_audio_vs_typed']:.3f}",
            f"  ROUGE-L(cascade answer, typed answer) {_fmt(spoken['rougeL_cascade_vs_typed'])}"
            + (f"   ratio {spoken['rougeL_ratio_to_cascade']:.2f}" if spoken["rougeL_ratio_to_cascade"] is not None else ""),
            f"  recognition {unit.upper()}: adaptor {spoken[f'adaptor_{unit}']:.3f} ({results['settings']['recognition_readout']}), "
            f"Whisper {_fmt(spoken[f'whisper_{unit}'])}" + (f"   ratio {ratio:.2f}" if ratio is not None else ""),
            f"  audio answers in the question's language: {_fmt(language_match)}",
        ]

    lines = block(f"spoken questions: {results['spoken']['num_questions']} ({', '.join(results.get('by_voice', {})) or 'one voice'})",
                  results["spoken"])  # fmt: skip
    for kind, spoken in results.get("by_kind", {}).items():
        lines += block(f"kind {kind}: {spoken['num_questions']} questions", spoken)
    if "heldout_asr" in results:
        asr = results["heldout_asr"]
        lines.append(f"held-out ASR WER through the LLM, on {asr['num_clips']} clips (Whisper {asr['whisper_wer']:.3f}): "
                     f"asked by the clip's instruction {_fmt(asr['wer'])}, by a transcription request "
                     f"{_fmt(asr['transcription_request_wer'])}")  # fmt: skip
    if "heldout_recognition" in results:
        rec = results["heldout_recognition"]
        lines.append(f"held-out ASR clips, the adaptor's own recognition: WER {rec['adaptor_wer']:.3f} ({rec['readout']}; "
                     f"Whisper {rec['whisper_wer']:.3f}) on {rec['num_clips']} clips")  # fmt: skip
    if "text_skills" in results:
        skills = results["text_skills"]
        lines.append(f"text-skill retention (ROUGE-L vs the base LLM): {skills['retention_rougeL']:.3f} on {skills['num_prompts']} prompts")
    return "\n".join(lines)


__all__ = [
    "ASR_PROMPTS", "DEFAULT_VOICES", "adaptor_transcripts", "build_understanding_set", "committed_clip_manifest", "error_unit",
    "evaluate_noise_robustness", "format_noise_robustness", "recognition_error",
    "eval_questions", "evaluate_understanding", "format_understanding", "text_language", "text_skill_prompts",
]  # fmt: skip
