#!/usr/bin/env bash
# The main job: install, run the tiny LLaSM recipe end to end on the embedded default, answer a spoken question.
# Re-running continues an interrupted recipe (--resume) instead of starting over.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh

RUN_DIR="${LLASM_RUN_DIR:-${LLASM_CACHE:-$HOME/.cache/llasm}/runs/tiny}"
llasm train --recipe tiny --run-dir "$RUN_DIR" --resume "$@"

QUESTION="$RUN_DIR/question.wav"
if command -v espeak-ng >/dev/null 2>&1; then
  espeak-ng -v en-us -w "$QUESTION" "What is the capital of France?"
else
  QUESTION="$(find "$RUN_DIR/data/stage2/heldout/audio" -name "*.wav" | sort | head -n 1)"
fi
echo "Spoken question: $QUESTION"
llasm chat "$RUN_DIR/final" --audio "$QUESTION" --max-new-tokens 64
