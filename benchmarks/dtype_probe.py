"""Speed of the bare LLM per precision: prefill of a 62-token prompt and decode tokens/s (docs/inference.md).

    python benchmarks/dtype_probe.py [MODEL_DIR]      # default: the embedded base

float32, bfloat16 weights, torch's dynamic int8 (`quantize_dynamic`) and, when torchao is installed, torchao's
int8 weight-only and int8 dynamic-activation configs. Medians of 3 after one warm-up, 2 threads.
"""

import copy
import statistics
import sys
import time
import warnings

import torch

from modeling_llasm.modeling_llasm import text_causal_lm
from modeling_llasm.conversion.build_base import default_base_dir
from modeling_llasm.training.loading import load_llasm


def bench(llm, name: str, ids: torch.Tensor) -> None:
    llm.generation_config.pad_token_id = 0

    def once():
        start = time.perf_counter()
        llm(input_ids=ids, use_cache=True)
        prefill = time.perf_counter() - start
        llm.generate(input_ids=ids, max_new_tokens=48, min_new_tokens=48, do_sample=False)
        total = time.perf_counter() - start - prefill
        return prefill, 48 / (total - prefill)

    once()
    runs = [once() for _ in range(3)]
    print(f"{name}: prefill of {ids.shape[1]} tokens {statistics.median(r[0] for r in runs) * 1000:.0f} ms, "
          f"decode {statistics.median(r[1] for r in runs):.1f} tok/s", flush=True)  # fmt: skip


def main() -> None:
    torch.set_num_threads(2)
    llm = text_causal_lm(load_llasm(sys.argv[1] if len(sys.argv) > 1 else default_base_dir()).eval())
    ids = torch.randint(100, 1000, (1, 62), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        bench(llm, "float32", ids)
        bench(copy.deepcopy(llm).to(torch.bfloat16), "bfloat16", ids)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            bench(torch.ao.quantization.quantize_dynamic(copy.deepcopy(llm), {torch.nn.Linear}, dtype=torch.qint8), "int8 dynamic (torch)", ids)
    try:
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, Int8WeightOnlyConfig, quantize_
    except ImportError:
        print("torchao not installed: its configs skipped")
        return
    for config in (Int8WeightOnlyConfig(), Int8DynamicActivationInt8WeightConfig()):
        quantized = copy.deepcopy(llm)
        quantize_(quantized, config)
        with torch.inference_mode():
            bench(quantized, f"torchao {type(config).__name__}", ids)


if __name__ == "__main__":
    main()
