"""Building blocks shared by `examples/train_stage{1,2}.py` and `llasm train`: records, CTC pre-alignment, a
stage's Trainer run, transcription / WER, response generation for spoken-question data."""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainingArguments

from ..data.chat import audio_parts, transcript_messages
from ..files import atomic_write_json, read_appendable_jsonl
from ..data.collator import LlasmDataCollator
from .losses import LlasmCtcAligner, calibrate_adaptor
from .stages import first_trained_encoder_layer, is_trainable
from .generation import generate_batch
from .trainer import LlasmTrainer, check_mixed_precision


logger = logging.getLogger(__name__)


def read_records(path: str | os.PathLike, limit: int | None = None) -> list[dict[str, Any]]:
    """Chat records of a JSONL manifest (or of `DIR/manifest.jsonl`), audio paths made absolute."""
    from ..data.chat import MANIFEST_NAME, read_manifest

    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST_NAME
    return list(itertools.islice(read_manifest(path), limit))


def last_checkpoint(output_dir: str | os.PathLike) -> str | None:
    """The newest *complete* `checkpoint-N` in `output_dir` (its `trainer_state.json`, written last, parses),
    or None. A run killed while saving leaves a torn newest checkpoint; it is skipped."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return None
    candidates = []
    for path in output_dir.iterdir():
        match = re.fullmatch(r"checkpoint-(\d+)", path.name)
        if match and path.is_dir():
            candidates.append((int(match.group(1)), path))
    for _, path in sorted(candidates, reverse=True):
        try:
            json.loads((path / "trainer_state.json").read_text())
        except (OSError, ValueError):
            logger.warning("skipping incomplete checkpoint %s", path)
            continue
        return str(path)
    return None


def ctc_align(
    model,
    processor,
    train_records: Sequence[Any],
    args: TrainingArguments,
    encoder_cache=None,
    resume: bool | str | None = None,
    calibrate: bool = True,
    callbacks: list | None = None,
    vocabulary=None,
    train_encoder: bool = False,
    train_encoder_layers: int = 0,
):
    """CTC training of the adaptor (the LLM never runs): trains `model.model.multi_modal_projector` in place. For a
    `ctc_compress` adaptor this trains its recognizer (`vocabulary`: its `SubVocabulary`, else rebuilt from the
    model and the processor's tokenizer); for other adaptors it is a pre-alignment, after which (`calibrate`) the
    output is scaled to the LLM's embedding norm (`calibrate_adaptor`).

    `train_encoder` / `train_encoder_layers=N` also train the Whisper encoder / its top N layers (see `apply_stage`;
    then pass no `encoder_cache`).

    Returns `(trainer, TrainOutput)`; checkpoints (aligner state) go to `args.output_dir`.
    """
    check_encoder_training(encoder_cache, train_encoder, train_encoder_layers)
    check_mixed_precision(args)
    aligner = LlasmCtcAligner(model, vocabulary=vocabulary, tokenizer=processor.tokenizer)
    calibrate = calibrate and not aligner.adaptor_head
    encoder_layers_from = first_trained_encoder_layer([name for name, _ in aligner.named_parameters()], train_encoder_layers)
    for name, parameter in aligner.named_parameters():
        if name.startswith("audio_tower."):
            parameter.requires_grad_(bool(is_trainable(name, "align", None, train_encoder, encoder_layers_from)))
        else:
            parameter.requires_grad_(".decoder." not in f".{name}")
    args = dataclasses.replace(args, activation_checkpointing=False, remove_unused_columns=False)
    collator = LlasmDataCollator(processor, stage="align", ctc=True, encoder_cache=encoder_cache)
    trainer = Trainer(model=aligner, args=args, train_dataset=list(train_records), data_collator=collator, callbacks=callbacks)
    checkpoint = resolve_resume(resume, args.output_dir)
    output = trainer.train(resume_from_checkpoint=checkpoint)
    if calibrate:
        sample = list(train_records)[: 4 * args.per_device_train_batch_size]
        batches = [collator(sample[i : i + args.per_device_train_batch_size]) for i in range(0, len(sample), args.per_device_train_batch_size)]
        factor = calibrate_adaptor(model, batches)
        logger.info("adaptor output scaled by %.4f to the LLM embedding norm", factor)
    return trainer, output


def train_stage(
    model,
    processor,
    train_records: Sequence[Any],
    args: TrainingArguments,
    stage: str,
    llm_mode: str | None = None,
    eval_records: Sequence[Any] | None = None,
    encoder_cache=None,
    distill_weight: float = 0.0,
    ce_weight: float = 1.0,
    distill_temperature: float = 1.0,
    max_length: int | None = None,
    resume: bool | str | None = None,
    model_card: dict | None = None,
    callbacks: list | None = None,
    train_encoder: bool = False,
    train_encoder_layers: int = 0,
) -> tuple[LlasmTrainer, Any]:
    """One LLaSM stage with `LlasmTrainer`; returns `(trainer, TrainOutput)`. The model must already be
    peft-wrapped for `llm_mode="lora"` (`prepare_stage`). `train_encoder` / `train_encoder_layers=N` also train the
    Whisper encoder / its top N layers (see `apply_stage`; then pass no `encoder_cache`)."""
    check_encoder_training(encoder_cache, train_encoder, train_encoder_layers)
    collator = LlasmDataCollator(
        processor, stage=stage, max_length=max_length, distill=distill_weight > 0, encoder_cache=encoder_cache
    )
    trainer = LlasmTrainer(
        model=model,
        args=args,
        train_dataset=list(train_records),
        eval_dataset=list(eval_records) if eval_records else None,
        data_collator=collator,
        processing_class=processor,
        stage=stage,
        llm_mode=llm_mode,
        train_encoder=train_encoder,
        train_encoder_layers=train_encoder_layers,
        distill_weight=distill_weight,
        ce_weight=ce_weight,
        distill_temperature=distill_temperature,
        model_card=model_card,
        callbacks=callbacks,
    )
    output = trainer.train(resume_from_checkpoint=resolve_resume(resume, args.output_dir))
    return trainer, output


def check_encoder_training(encoder_cache, train_encoder: bool, train_encoder_layers: int) -> None:
    if encoder_cache is not None and (train_encoder or train_encoder_layers):
        raise ValueError(f"train_encoder={train_encoder} / train_encoder_layers={train_encoder_layers} train the encoder, "
                         "whose outputs an encoder_cache would freeze: pass one or the other.")  # fmt: skip


def resolve_resume(resume: bool | str | None, output_dir: str | os.PathLike) -> str | None:
    """The checkpoint to resume from: `True`/`"last"`/`"true"`/`"yes"` -> the newest complete checkpoint in
    `output_dir` (None if there is none yet); `None`/`False`/`""`/`"no"`/`"none"`/`"false"` -> None; any other
    string is a checkpoint path (as `--resume_from_checkpoint` takes it)."""
    if isinstance(resume, str):
        if resume.lower() in ("", "false", "no", "none"):
            return None
        if resume.lower() not in ("last", "true", "yes"):
            return resume
        resume = True
    if resume:
        checkpoint = last_checkpoint(output_dir)
        if checkpoint:
            logger.info("resuming from %s", checkpoint)
        return checkpoint
    return None


def save_adaptor(model, path: str | os.PathLike) -> Path:
    """Save the adaptor (`model.multi_modal_projector`) weights alone as safetensors, atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    save_file({k: v.detach().contiguous() for k, v in model.model.multi_modal_projector.state_dict().items()}, str(tmp))
    os.replace(tmp, path)
    return path


def load_adaptor(model, path: str | os.PathLike) -> None:
    """Load adaptor weights written by `save_adaptor` (strict: every tensor must match)."""
    from safetensors.torch import load_file

    model.model.multi_modal_projector.load_state_dict(load_file(str(path)))


# ---------------------------------------------------------------------- generation-based evaluation
@torch.no_grad()
def transcribe_records(model, processor, records: Sequence[dict], batch_size: int = 8, max_new_tokens: int = 48,
                       progress: bool = True) -> tuple[list[str], list[str]]:  # fmt: skip
    """`(references, predictions)` for ASR records: the user turn as in training, the assistant turn the reference."""
    from tqdm.auto import tqdm

    model.eval()
    references, predictions = [], []
    for start in tqdm(range(0, len(records), batch_size), desc="transcribe", disable=not progress):
        chunk = records[start : start + batch_size]
        conversations = [[m for m in r["messages"] if m["role"] != "assistant"] for r in chunk]
        texts, _ = generate_batch(model, processor, conversations, max_new_tokens)
        predictions.extend(texts)
        for record in chunk:
            answer = next(m for m in record["messages"] if m["role"] == "assistant")
            content = answer["content"]
            references.append(content if isinstance(content, str) else " ".join(i["text"] for i in content if i.get("type") == "text"))
    return references, predictions


def evaluate_wer(model, processor, records: Sequence[dict], output_path: str | os.PathLike | None = None, **kwargs) -> float:
    """Held-out WER (`modeling_llasm.metrics.word_error_rate`) of greedy transcriptions of ASR records."""
    from ..metrics import word_error_rate

    references, predictions = transcribe_records(model, processor, records, **kwargs)
    if output_path is not None:
        write_transcripts(output_path, records, references, predictions)
    return word_error_rate(references, predictions)


def write_transcripts(path: str | os.PathLike, records: Sequence[dict], references: Sequence[str], predictions: Sequence[str]) -> None:
    """One JSON line per record: its id, reference and prediction."""
    with open(path, "w", encoding="utf-8") as handle:
        for record, reference, prediction in zip(records, references, predictions):
            handle.write(json.dumps({"id": record.get("id"), "reference": reference, "prediction": prediction}) + "\n")


@torch.no_grad()
def ctc_transcribe(aligner: LlasmCtcAligner, processor, records: Sequence[dict], batch_size: int = 16) -> tuple[list[str], list[str]]:
    """`(references, predictions)`: best-path CTC decoding of each record's clips with a trained aligner (the LLM
    never runs), references = the clips' transcripts."""
    collator = LlasmDataCollator(processor, stage="align", ctc=True)
    aligner.eval()
    references, predictions = [], []
    for start in range(0, len(records), batch_size):
        batch = collator(records[start : start + batch_size])
        for target, tokens in zip(batch["ctc_labels"].tolist(), aligner.greedy_decode(**batch)):
            references.append(processor.decode([t for t in target if t >= 0], skip_special_tokens=True))
            predictions.append(processor.decode(tokens, skip_special_tokens=True))
    return references, predictions


def ctc_wer(aligner: LlasmCtcAligner, processor, records: Sequence[dict], **kwargs) -> float:
    """Held-out WER of best-path CTC decoding (what the pre-alignment alone has learned)."""
    from ..metrics import word_error_rate

    return word_error_rate(*ctc_transcribe(aligner, processor, records, **kwargs))


def generate_responses(model, processor, records: Sequence[dict], output_path: str | os.PathLike, batch_size: int = 8,
                       max_new_tokens: int = 64, progress: bool = True, model_id: str | None = None) -> list[dict]:  # fmt: skip
    """Complete spoken-question records (user audio with a `transcript`, no assistant turn) with the LLM's own
    answer to the transcript (text only), as the stage-2 targets. Appends to `output_path` (JSONL) and resumes
    from it; unfinished answers (no end-of-sequence within `max_new_tokens`) are marked `"finished": false`
    (see `trim_unfinished`). A sidecar `<output_path>.config.json` records the model (`model_id`, default its
    `name_or_path`) and `max_new_tokens`: resuming with other ones is refused instead of mixing two models' answers."""
    from tqdm.auto import tqdm

    output_path = Path(output_path)
    model_id = model_id or str(getattr(model, "name_or_path", "") or type(model).__name__)
    settings = {"model": model_id, "max_new_tokens": max_new_tokens}
    settings_path = output_path.with_name(output_path.name + ".config.json")
    recorded = json.loads(settings_path.read_text(encoding="utf-8")) if settings_path.is_file() else None
    if recorded != settings:
        if recorded is not None and output_path.is_file():
            raise ValueError(
                f"{output_path} holds answers generated with {recorded}, not {settings}: use another output file "
                "or delete it to regenerate."
            )
        atomic_write_json(settings_path, settings)
    done: dict[str, dict] = {}
    for where, record in enumerate(read_appendable_jsonl(output_path), 1):
        if not isinstance(record, dict) or "id" not in record:
            raise ValueError(f"{output_path}:{where}: expected a record with an 'id', got {str(record)[:80]}")
        done[record["id"]] = record
    todo = [r for r in records if r["id"] not in done]
    for record in todo:  # checked up front: the answers are written as JSON lines, which hold no arrays
        if any(part.get("type") == "audio" and not isinstance(part.get("path"), str) for part in audio_parts(record)):
            raise ValueError(f"record {record['id']!r}: audio parts need a 'path' to be saved with their answers in {output_path}")
    model.eval()
    with open(output_path, "a", encoding="utf-8") as handle:
        for start in tqdm(range(0, len(todo), batch_size), desc="stage-2 responses", disable=not progress):
            chunk = todo[start : start + batch_size]
            text_conversations = [transcript_messages(r["messages"], where=str(r.get("id", "record"))) for r in chunk]
            answers, finished = generate_batch(model, processor, text_conversations, max_new_tokens)
            for record, answer, ok in zip(chunk, answers, finished):
                completed = {**record, "finished": ok,
                             "messages": [*record["messages"], {"role": "assistant", "content": [{"type": "text", "text": answer}]}]}  # fmt: skip
                handle.write(json.dumps(completed, ensure_ascii=False) + "\n")
                done[record["id"]] = completed
            handle.flush()
    return [done[r["id"]] for r in records if r["id"] in done]


def trim_unfinished(record: dict) -> dict | None:
    """A generated answer cut by max_new_tokens ends at its last full sentence (so the end-of-turn token is
    learned after a sentence, not mid-word); an answer without any full sentence gives None (drop it). The
    `"finished"` flag of `generate_responses` is removed."""
    finished = record.get("finished", True)
    record = {k: v for k, v in record.items() if k != "finished"}
    if finished:
        return record
    answer = record["messages"][-1]["content"][0]["text"]
    cut = max(answer.rfind(mark) for mark in (".", "!", "?", "。", "！", "？"))
    if cut < 1:
        return None
    messages = [*record["messages"][:-1], {"role": "assistant", "content": [{"type": "text", "text": answer[: cut + 1]}]}]
    return {**record, "messages": messages}


def usable_responses(records: Sequence[dict], where: str = "responses") -> list[dict]:
    """`trim_unfinished` over generated records, with a log line saying how many were trimmed or dropped."""
    unfinished = sum(not r.get("finished", True) for r in records)
    kept = [r for r in map(trim_unfinished, records) if r is not None]
    if unfinished:
        logger.warning("%s: %d of %d answers hit max_new_tokens: %d cut at their last full sentence, %d dropped",
                       where, unfinished, len(records), unfinished - (len(records) - len(kept)), len(records) - len(kept))  # fmt: skip
    return kept


__all__ = [
    "ctc_align", "ctc_transcribe", "ctc_wer", "evaluate_wer", "generate_batch", "generate_responses", "last_checkpoint", "load_adaptor", "read_records",
    "resolve_resume", "save_adaptor", "train_stage", "transcribe_records", "trim_unfinished", "usable_responses",
]  # fmt: skip
