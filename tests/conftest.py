import os

import pytest

from tiny_llasm import build_tiny_llasm

# Every "auto" precision in the tests (inference `--dtype auto`, training `--precision auto`) takes the float32 path
# on every CPU, in this process and in the commands the tests start (issue 23: a test must not take another path on
# another machine); tests of the bf16 path set LLASM_FAST_BF16=1 themselves.
os.environ["LLASM_FAST_BF16"] = "0"


@pytest.fixture
def tiny_llasm():
    """(model, processor): a tiny random LLaSM with 1-second audio windows."""
    return build_tiny_llasm()
