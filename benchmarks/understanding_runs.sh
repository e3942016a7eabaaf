#!/usr/bin/env bash
# The speech-understanding experiments of docs/training.md (issue 11), one after another. Each run must have the
# machine to itself (time-budgeted phases): do not run tests or other jobs beside it.
#   bash benchmarks/understanding_runs.sh curve      # the reader with --reader-distill at 15 / 30 / 60 / 120 minutes
#                                                    # (the default reader trains nothing: no curve of its own)
#   bash benchmarks/understanding_runs.sh ablation   # stack_mlp and ctc_compress at 30 minutes on the 30-minute run's data
set -euo pipefail
RUNS="${LLASM_CACHE:-$HOME/.cache/llasm}/runs"
case "${1:-}" in
  curve)
    for minutes in 15 30 60 120; do
      llasm train --recipe tiny --budget-minutes "$minutes" --reader-distill --run-dir "$RUNS/reader-distill-$minutes" --resume --no-progress
    done ;;
  ablation)
    test -d "$RUNS/reader-distill-30/data" || { echo "run '$0 curve' first (the ablation reuses the 30-minute run's data)"; exit 2; }
    for adaptor in stack_mlp ctc_compress; do
      llasm train --recipe tiny --budget-minutes 30 --adaptor-type "$adaptor" --data-dir "$RUNS/reader-distill-30/data" \
        --run-dir "$RUNS/$adaptor-30" --resume --no-progress
    done ;;
  *) echo "usage: $0 curve|ablation"; exit 2 ;;
esac
