"""The inference precision users get by default (`--dtype auto`, `set_inference_dtype(model, "auto")`): bfloat16 where
the device computes it faster than float32, else float32 (issue 23 item 5). Both paths are forced here with
`LLASM_FAST_BF16`, so the tests take the same path on every CPU; the probe itself is replaced, never run."""

from __future__ import annotations

import pytest
import torch

from modeling_llasm import modeling_llasm
from modeling_llasm.modeling_llasm import FAST_BF16_ENV, bf16_is_faster, choose_inference_dtype, set_inference_dtype


@pytest.fixture
def probe(monkeypatch):
    """`LLASM_FAST_BF16` unset and the CPU probe replaced: `probe.answer` is what it says; `probe.calls` counts."""

    class Probe:
        answer = False
        calls = 0

        def __call__(self):
            self.calls += 1
            return self.answer

    fake = Probe()
    monkeypatch.delenv(FAST_BF16_ENV, raising=False)
    monkeypatch.setattr(modeling_llasm, "_bf16_matmul_is_faster", fake)
    return fake


@pytest.mark.parametrize("fast", [True, False])
def test_auto_is_bfloat16_exactly_where_bf16_is_faster(fast, monkeypatch):
    monkeypatch.setenv(FAST_BF16_ENV, "1" if fast else "0")
    dtype, why = choose_inference_dtype("auto", "cpu")
    assert dtype == ("bfloat16" if fast else "float32")
    assert why.startswith("auto: bf16 is " + ("faster" if fast else "not faster"))
    for explicit in ("float32", "bfloat16", "float16", "int8"):  # an explicit dtype never asks the machine
        assert choose_inference_dtype(explicit, "cpu") == (explicit, "asked")


def test_unknown_dtypes_and_bad_overrides_are_refused(monkeypatch):
    with pytest.raises(ValueError, match="Unknown inference dtype 'fp8'"):
        choose_inference_dtype("fp8")
    monkeypatch.setenv(FAST_BF16_ENV, "yes")
    with pytest.raises(ValueError, match="LLASM_FAST_BF16 must be 1 .* or 0 .*got 'yes'"):
        bf16_is_faster("cpu")


@pytest.mark.parametrize("answer", [True, False])
def test_without_the_override_the_cpu_probe_decides(probe, answer):
    probe.answer = answer
    assert bf16_is_faster("cpu") is answer
    assert choose_inference_dtype("auto", "cpu")[0] == ("bfloat16" if answer else "float32")
    assert probe.calls == 2


def test_a_cuda_device_asks_cuda_not_the_cpu_probe(probe, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    assert bf16_is_faster("cuda") is True and probe.calls == 0
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: False)
    assert choose_inference_dtype("auto", "cuda:0")[0] == "float32" and probe.calls == 0


@pytest.mark.parametrize("fast", [True, False])
def test_set_inference_dtype_auto_casts_the_model_as_chosen(tiny_llasm, fast, monkeypatch):
    model, processor = tiny_llasm
    monkeypatch.setenv(FAST_BF16_ENV, "1" if fast else "0")
    model = set_inference_dtype(model.eval(), "auto")
    expected = torch.bfloat16 if fast else torch.float32
    assert {p.dtype for p in model.parameters()} == {expected}
    inputs = processor(text="hello", return_tensors="pt")
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert output.shape[1] == inputs["input_ids"].shape[1] + 3
