"""`evaluate_model`: LLaSM vs the cascade baseline on a chat-record manifest (ASR WER/CER, spoken-instruction ROUGE-L)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from ..metrics._error_rate import error_rate
from . import tasks
from .cascade import AsrFunction, WhisperTranscriber, whisper_dir_for
from ..metrics.rouge import rouge_l

RESULT_VERSION = 1


def load_llasm(model_dir: str | os.PathLike, dtype: torch.dtype = torch.float32):
    """(model, processor) of a saved LLaSM checkpoint, in eval mode."""
    from transformers import AutoProcessor

    from .. import LlasmForConditionalGeneration

    model = LlasmForConditionalGeneration.from_pretrained(model_dir, dtype=dtype).eval()
    processor = AutoProcessor.from_pretrained(model_dir)
    return model, processor


def generate_answers(
    model, processor, conversations: Sequence[list[dict]], max_new_tokens: int = 128, batch_size: int = 8,
    progress: str | None = None, **generate_kwargs,
) -> list[str]:  # fmt: skip
    """Greedy answers of `model` to chat `conversations` (batched, left-padded), decoded without special tokens.
    `progress`: the description of a progress bar (None: none)."""
    from tqdm.auto import tqdm

    answers: list[str] = []
    generate_kwargs.setdefault("do_sample", False)
    with tqdm(total=len(conversations), desc=progress, unit="answer", disable=progress is None) as bar:
        for start in range(0, len(conversations), batch_size):
            batch = list(conversations[start : start + batch_size])
            inputs = processor.apply_chat_template(batch, add_generation_prompt=True, padding_side="left")
            with torch.inference_mode():
                out = model.generate(**inputs, max_new_tokens=max_new_tokens, **generate_kwargs)
            new = out[:, inputs["input_ids"].shape[1] :]
            answers.extend(processor.decode(row, skip_special_tokens=True).strip() for row in new)
            bar.update(len(batch))
    return answers


def _rates(references: list[str], hypotheses: list[str]) -> dict[str, Any]:
    """Corpus WER and CER (with alignment counts) of hypotheses vs references."""
    wer = error_rate(references, hypotheses, "word", return_details=True)
    cer = error_rate(references, hypotheses, "char", return_details=True)
    return {
        "wer": wer["wer"],
        "cer": cer["cer"],
        "word_counts": {k: wer[k] for k in ("substitutions", "deletions", "insertions", "hits", "num_reference_units")},
        "char_counts": {k: cer[k] for k in ("substitutions", "deletions", "insertions", "hits", "num_reference_units")},
        "num_samples": len(references),
    }


def _sample_wer(reference: str, hypothesis: str) -> float | None:
    try:
        return error_rate([reference], [hypothesis], "word")
    except ValueError:  # empty reference with a non-empty hypothesis: undefined for one sample
        return None


def _by_language(samples: list[dict], key: str) -> dict[str, Any]:
    languages = sorted({s["language"] for s in samples})
    if len(languages) < 2:
        return {}
    return {
        lang: _rates([s["reference"] for s in samples if s["language"] == lang], [s[key] for s in samples if s["language"] == lang])
        for lang in languages
    }


def evaluate_model(
    model: str | os.PathLike | Any,
    manifest: str | os.PathLike,
    *,
    processor: Any = None,
    cascade: bool = True,
    asr: AsrFunction | None = None,
    whisper_dir: str | os.PathLike | None = None,
    max_new_tokens: int = 128,
    batch_size: int = 8,
    limit: int | None = None,
    output: str | os.PathLike | None = None,
    dtype: torch.dtype = torch.float32,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Evaluate a LLaSM model, and the cascade baseline, on the records of a JSONL `manifest`.

    - ASR records (audio + transcription instruction): the model's transcript vs the reference (assistant text),
      corpus WER and CER; the cascade's transcript is Whisper's output for the same audio.
    - Spoken-instruction records: the model answers the audio; the reference answer is the same LLM answering the
      gold transcript as text. Agreement = mean ROUGE-L F1. The cascade answers Whisper's transcript instead.

    `model` is a checkpoint directory or a loaded `LlasmForConditionalGeneration` (then pass `processor`).
    `asr` replaces the cascade's Whisper (any function: clips -> transcripts); by default the full Whisper
    checkpoint is `whisper_dir`, else the one recorded in the model's `llasm_build.json`, else Whisper tiny.en.
    Returns the results dict (also written as JSON to `output` when given).
    """
    from ..processing_llasm import load_audio

    log = log or (lambda line: None)
    model_name = None
    if isinstance(model, (str, os.PathLike)):
        model_name = str(model)
        model, loaded_processor = load_llasm(model, dtype=dtype)
        processor = processor or loaded_processor
    elif processor is None:
        raise ValueError("Pass `processor` together with a loaded model.")

    records = tasks.read_records(manifest)
    if limit is not None:
        records = records[:limit]
    asr_records, spoken_records, skipped = [], [], []
    for record in records:
        kind = tasks.classify_record(record)
        (asr_records if kind == tasks.ASR else spoken_records if kind == tasks.SPOKEN else skipped).append(record)
    if not asr_records and not spoken_records:
        raise ValueError(f"{manifest}: no record has audio in its first user turn; nothing to evaluate.")
    log(f"[eval] {len(asr_records)} ASR and {len(spoken_records)} spoken-instruction samples ({len(skipped)} skipped)")

    timing: dict[str, float] = {}
    gen = dict(max_new_tokens=max_new_tokens, batch_size=batch_size)

    def timed(name: str, fn):
        start = time.perf_counter()
        value = fn()
        timing[name] = timing.get(name, 0.0) + time.perf_counter() - start
        return value

    log("[eval] LLaSM: answering the audio ...")
    prompts = [tasks.audio_prompt(r) for r in asr_records + spoken_records]
    llasm_out = timed("llasm_seconds", lambda: generate_answers(model, processor, prompts, **gen))
    llasm_asr, llasm_spoken = llasm_out[: len(asr_records)], llasm_out[len(asr_records) :]

    reference_answers: list[str] = []
    if spoken_records:
        log("[eval] reference: the same LLM answering the gold transcripts ...")
        text_prompts = [tasks.text_prompt(r, tasks.gold_transcripts(r)) for r in spoken_records]
        reference_answers = timed("reference_llm_seconds", lambda: generate_answers(model, processor, text_prompts, **gen))

    cascade_asr: list[str] = []
    cascade_spoken: list[str] = []
    cascade_transcripts: list[list[str]] = []
    whisper_name = None
    if cascade:
        if asr is None:
            whisper_path = Path(whisper_dir) if whisper_dir is not None else whisper_dir_for(model_name)
            whisper_name = str(whisper_path)
            log(f"[eval] cascade: Whisper {whisper_path} ...")
            asr = WhisperTranscriber.from_pretrained(whisper_path, dtype=dtype, batch_size=batch_size)
        else:
            whisper_name = getattr(asr, "__name__", type(asr).__name__)
        clips_per_record = [[load_audio(p) for p in tasks.audio_paths(r)] for r in asr_records + spoken_records]
        flat = [clip for clips in clips_per_record for clip in clips]
        transcripts = iter(timed("cascade_asr_seconds", lambda: list(asr(flat))))
        cascade_transcripts = [[next(transcripts) for _ in clips] for clips in clips_per_record]
        cascade_asr = [" ".join(t) for t in cascade_transcripts[: len(asr_records)]]
        if spoken_records:
            log("[eval] cascade: the LLM answering Whisper's transcripts ...")
            text_prompts = [tasks.text_prompt(r, t) for r, t in zip(spoken_records, cascade_transcripts[len(asr_records) :])]
            cascade_spoken = timed("cascade_llm_seconds", lambda: generate_answers(model, processor, text_prompts, **gen))

    samples: list[dict[str, Any]] = []
    for i, record in enumerate(asr_records):
        reference = tasks.asr_reference(record)
        sample = {"id": record["id"], "task": tasks.ASR, "language": record.get("language", "unknown"),
                  "reference": reference, "llasm": llasm_asr[i], "llasm_wer": _sample_wer(reference, llasm_asr[i])}  # fmt: skip
        if cascade:
            sample.update(cascade=cascade_asr[i], cascade_wer=_sample_wer(reference, cascade_asr[i]))
        samples.append(sample)
    for i, record in enumerate(spoken_records):
        gold = tasks.gold_transcripts(record)
        sample = {"id": record["id"], "task": tasks.SPOKEN, "language": record.get("language", "unknown"),
                  "transcript": " ".join(gold), "reference_answer": reference_answers[i], "llasm": llasm_spoken[i],
                  "llasm_rougeL": rouge_l(reference_answers[i], llasm_spoken[i])["f1"]}  # fmt: skip
        answer = tasks.dataset_answer(record)
        if answer is not None:
            sample["dataset_answer"] = answer
        if cascade:
            j = len(asr_records) + i
            sample.update(
                cascade_transcript=" ".join(cascade_transcripts[j]),
                cascade=cascade_spoken[i],
                cascade_rougeL=rouge_l(reference_answers[i], cascade_spoken[i])["f1"],
            )
        samples.append(sample)

    asr_samples = [s for s in samples if s["task"] == tasks.ASR]
    spoken_samples = [s for s in samples if s["task"] == tasks.SPOKEN]
    systems = ["llasm", "cascade"] if cascade else ["llasm"]
    results: dict[str, Any] = {
        "version": RESULT_VERSION,
        "model": model_name or type(model).__name__,
        "manifest": str(manifest),
        "cascade_asr": whisper_name,
        "settings": {"max_new_tokens": max_new_tokens, "batch_size": batch_size, "limit": limit, "decoding": "greedy",
                     "dtype": str(dtype).replace("torch.", ""), "torch_threads": torch.get_num_threads()},  # fmt: skip
        "counts": {"asr": len(asr_samples), "spoken_instruction": len(spoken_samples), "skipped": len(skipped)},
        "asr": {},
        "spoken_instruction": {},
        "timing_seconds": {k: round(v, 3) for k, v in timing.items()},
        "samples": samples,
    }
    if asr_samples:
        refs = [s["reference"] for s in asr_samples]
        for system in systems:
            results["asr"][system] = _rates(refs, [s[system] for s in asr_samples])
            by_language = _by_language(asr_samples, system)
            if by_language:
                results["asr"][system]["by_language"] = by_language
    if spoken_samples:
        for system in systems:
            scores = [s[f"{system}_rougeL"] for s in spoken_samples]
            entry: dict[str, Any] = {"rougeL": sum(scores) / len(scores), "num_samples": len(scores)}
            with_answer = [s for s in spoken_samples if "dataset_answer" in s]
            if with_answer:
                entry["rougeL_vs_dataset_answer"] = sum(rouge_l(s["dataset_answer"], s[system])["f1"] for s in with_answer) / len(with_answer)
            results["spoken_instruction"][system] = entry
        if cascade:
            transcript_rates = _rates([s["transcript"] for s in spoken_samples], [s["cascade_transcript"] for s in spoken_samples])
            results["spoken_instruction"]["cascade"]["transcript_wer"] = transcript_rates["wer"]
            results["spoken_instruction"]["cascade"]["transcript_cer"] = transcript_rates["cer"]
    if output is not None:
        output = Path(output)
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    return results


def format_results(results: dict[str, Any]) -> str:
    """The side-by-side summary table (LLaSM vs cascade) as text."""
    systems = ["llasm"] + (["cascade"] if results.get("cascade_asr") else [])
    header = ["metric", "LLaSM (audio -> LLM)"] + (["cascade (Whisper ASR -> LLM)"] if "cascade" in systems else [])
    rows = []

    def pct(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.2f} %"

    asr, spoken, timing = results["asr"], results["spoken_instruction"], results["timing_seconds"]
    if asr:
        n = results["counts"]["asr"]
        rows.append([f"ASR WER (n={n})"] + [pct(asr[s]["wer"]) for s in systems])
        rows.append([f"ASR CER (n={n})"] + [pct(asr[s]["cer"]) for s in systems])
        for lang in sorted(asr["llasm"].get("by_language", {})):
            rows.append([f"  WER [{lang}]"] + [pct(asr[s]["by_language"][lang]["wer"]) for s in systems])
    if spoken:
        n = results["counts"]["spoken_instruction"]
        rows.append([f"spoken instr. ROUGE-L vs LLM-on-transcript (n={n})"] + [f"{spoken[s]['rougeL']:.4f}" for s in systems])
        if "rougeL_vs_dataset_answer" in spoken["llasm"]:
            rows.append(["  ROUGE-L vs dataset answer"] + [f"{spoken[s]['rougeL_vs_dataset_answer']:.4f}" for s in systems])
        if "cascade" in systems:
            rows.append(["  transcript WER of the spoken instructions"] + ["-", pct(spoken["cascade"]["transcript_wer"])])
    llasm_time = timing.get("llasm_seconds", 0.0)
    cascade_time = timing.get("cascade_asr_seconds", 0.0) + timing.get("cascade_llm_seconds", 0.0)
    rows.append(["wall time (s)", f"{llasm_time:.1f}"] + ([f"{cascade_time:.1f}"] if "cascade" in systems else []))
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths))  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])
