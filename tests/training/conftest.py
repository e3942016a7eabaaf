"""Training tests never let the recipe ask this CPU whether bf16 is fast (issue 23: a test must not take another path
on another machine): a recipe run in a test passes `--precision`, a test of `auto` replaces the probe itself."""

import pytest


@pytest.fixture(autouse=True)
def no_precision_probe(monkeypatch):
    from modeling_llasm.training import recipe

    def refuse():
        raise AssertionError("a test ran the recipe with --precision auto: pass --precision (fp32/bf16/fp16) explicitly, "
                             "or replace recipe.bf16_is_faster, so the test takes the same path on every CPU")

    monkeypatch.setattr(recipe, "bf16_is_faster", refuse)
