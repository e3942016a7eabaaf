import pytest

from tiny_llasm import build_tiny_llasm


@pytest.fixture
def tiny_llasm():
    """(model, processor): a tiny random LLaSM with 1-second audio windows."""
    return build_tiny_llasm()
