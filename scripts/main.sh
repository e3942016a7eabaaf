#!/usr/bin/env bash
# The main job: install, run the tiny LLaSM recipe end to end on the embedded default, then ask it a held-out spoken
# question (a text and a voice it never trained on) and print its answer beside its answer to the same question typed.
# Re-running continues an interrupted recipe (--resume) instead of starting over.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh

RUN_DIR="${LLASM_RUN_DIR:-${LLASM_CACHE:-$HOME/.cache/llasm}/runs/tiny}"
llasm train --recipe tiny --run-dir "$RUN_DIR" --resume "$@"

# a held-out evaluation question (modeling_llasm/data/eval_questions_en.txt), voiced by a held-out voice
TEXT="What is the capital of Germany?"
QUESTION="$RUN_DIR/heldout_question.wav"
if command -v flite >/dev/null 2>&1; then
  flite -voice slt -t "$TEXT" -o "$QUESTION"
elif command -v espeak-ng >/dev/null 2>&1; then
  espeak-ng -v en-us+m5 -w "$QUESTION" "$TEXT"
else
  QUESTION="$(find "$RUN_DIR/understanding_set" -name "*.wav" | sort | head -n 1)"
  TEXT="(the first held-out question of $RUN_DIR/understanding_set)"
fi
echo
echo "Held-out spoken question ($QUESTION): $TEXT"
echo "--- answer to the audio:"
llasm chat "$RUN_DIR/final" --audio "$QUESTION" --max-new-tokens 64
echo "--- answer to the same question typed:"
llasm chat "$RUN_DIR/final" --text "$TEXT" --max-new-tokens 64
echo "--- its transcript of the audio (a transcription request):"
llasm chat "$RUN_DIR/final" --transcribe --audio "$QUESTION" --max-new-tokens 64
