#!/usr/bin/env bash
# transformers' own common model tests (ModelTesterMixin, ConfigTester) as a test dependency of tests/common/: the
# source distribution of the installed transformers from PyPI ships its top-level tests/test_*.py; they are unpacked
# as the package `transformers_tests` into $LLASM_CACHE/transformers-tests/<version>/ (never into this repository).
set -euo pipefail
version=$(python -c "import transformers; print(transformers.__version__)")
target="${LLASM_CACHE:-$HOME/.cache/llasm}/transformers-tests/$version"
if [ -f "$target/transformers_tests/__init__.py" ]; then
  exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python -m pip download --disable-pip-version-check -q --no-binary :all: --no-deps "transformers==$version" -d "$work"
tar xzf "$work/transformers-$version.tar.gz" -C "$work" "transformers-$version/tests"
mkdir -p "$target"
rm -rf "$target/transformers_tests"
mv "$work/transformers-$version/tests" "$target/transformers_tests"
touch "$target/transformers_tests/__init__.py"  # a package, as tests/ is in the transformers repository
echo "fetch_transformers_tests.sh: transformers $version tests in $target/transformers_tests"
