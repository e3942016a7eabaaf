#!/usr/bin/env bash
# The speech-understanding experiments of docs/training.md (issue 11), one after another. Each run must have the
# machine to itself (time-budgeted phases): do not run tests or other jobs beside it.
#   bash benchmarks/understanding_runs.sh default-curve [MIN...]  # the default recipe at 15 / 30 / 60 / 120 minutes (or MIN...)
#   bash benchmarks/understanding_runs.sh curve             # the reader with --reader-distill at 15 / 30 / 60 / 120 minutes
#   bash benchmarks/understanding_runs.sh keep-best         # the capped distillation arm at 15 minutes on the 15-minute
#                                                           # run's data, keeping its best step on held-out voices, scored
#                                                           # by the stage's loss, then by its answers
#   bash benchmarks/understanding_runs.sh lora-copy         # LoRA on the LLM taught to copy (ASR records mixed into the
#                                                           # reader's stage 2, its residual off), 15 minutes on the
#                                                           # 15-minute run's data, selection off
#   bash benchmarks/understanding_runs.sh ablation [MIN]    # stack_mlp, ctc_compress, ctc_compress + the top Whisper
#                                                           # encoder layer: MIN (default 30) minutes each on the 60-minute
#                                                           # run's data, stage-2 selection off so that only the adaptor differs
set -euo pipefail
RUNS="${LLASM_CACHE:-$HOME/.cache/llasm}/runs"
case "${1:-}" in
  default-curve)
    shift
    budgets=("$@"); [ ${#budgets[@]} -gt 0 ] || budgets=(15 30 60 120)
    for minutes in "${budgets[@]}"; do
      llasm train --recipe tiny --budget-minutes "$minutes" --run-dir "$RUNS/default-$minutes" --resume --no-progress
    done ;;
  curve)
    for minutes in 15 30 60 120; do
      llasm train --recipe tiny --budget-minutes "$minutes" --reader-distill --run-dir "$RUNS/reader-distill-$minutes" --resume --no-progress
    done ;;
  keep-best)
    test -d "$RUNS/reader-distill-15/data" || { echo "run '$0 curve' first (this arm reuses the 15-minute run's data)"; exit 2; }
    for by in loss answers; do
      llasm train --recipe tiny --budget-minutes 15 --reader-distill --reader-residual-ratio 0.25 --keep-best-by "$by" \
        --data-dir "$RUNS/reader-distill-15/data" --run-dir "$RUNS/reader-distill-15-capped-best-$by" --resume --no-progress
    done ;;
  lora-copy)
    test -d "$RUNS/reader-distill-15/data" || { echo "run '$0 curve' first (this arm reuses the 15-minute run's data)"; exit 2; }
    llasm train --recipe tiny --budget-minutes 15 --reader-distill --reader-residual-ratio 0 --stage2-llm-mode lora \
      --stage2-asr-mix 1 --ce-weight 0.5 --no-keep-best --data-dir "$RUNS/reader-distill-15/data" \
      --run-dir "$RUNS/reader-lora-copy-15" --resume --no-progress ;;
  ablation)
    minutes="${2:-30}"
    test -d "$RUNS/reader-distill-60/data" || { echo "run '$0 curve' first (the ablation reuses the 60-minute run's data)"; exit 2; }
    for arm in "stack_mlp" "ctc_compress" "ctc_compress --train-encoder-layers 1"; do
      read -r adaptor options <<<"$arm"
      name="$adaptor${options:+-enc1}-$minutes"
      # shellcheck disable=SC2086  # options: zero or two words
      llasm train --recipe tiny --budget-minutes "$minutes" --adaptor-type "$adaptor" $options --no-keep-best \
        --data-dir "$RUNS/reader-distill-60/data" --run-dir "$RUNS/ablation/$name" --resume --no-progress
    done ;;
  *) echo "usage: $0 default-curve [MIN...]|curve|keep-best|lora-copy|ablation [MINUTES]"; exit 2 ;;
esac
