"""Do int8 variants keep float32's greedy answers? (docs/inference.md)

    python benchmarks/int8_agreement.py [MODEL_DIR]   # default: the embedded base

Greedy answers (24 tokens) to 16 text-skill prompts, batch 1 and batch 8, for torch's dynamic int8 with per-tensor
weights, per-channel weights, and per-channel with the LM head left in float32. Prints, per variant, how many
answers equal float32's (batch 1) and the mean number of leading tokens they share with it.
"""

import copy
import sys
import warnings
from pathlib import Path

import torch
from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig, quantize_dynamic

from modeling_llasm import LlasmProcessor
from modeling_llasm.conversion.build_base import default_base_dir
from modeling_llasm.training.loading import load_llasm

PROMPTS = Path(__file__).resolve().parents[1] / "modeling_llasm" / "data" / "text_skill_prompts_en.txt"


def llm_linears(model, qconfig) -> dict:
    """`quantize_dynamic`'s spec for the LLM's linear layers and its LM head (the audio side stays float32)."""
    return {name: qconfig for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and (name.startswith("model.language_model.") or name == "lm_head")}  # fmt: skip


def main() -> None:
    warnings.simplefilter("ignore")
    torch.set_num_threads(2)
    base = sys.argv[1] if len(sys.argv) > 1 else default_base_dir()
    model, processor = load_llasm(base).eval(), LlasmProcessor.from_pretrained(base)
    prompts = [line.strip() for line in PROMPTS.read_text().splitlines() if line.strip()][:16]
    conversations = [[{"role": "user", "content": p}] for p in prompts]

    def answers(m, batch: int) -> list[list[int]]:
        out = []
        for start in range(0, len(conversations), batch):
            inputs = processor.apply_chat_template(conversations[start : start + batch], add_generation_prompt=True, padding_side="left")
            with torch.inference_mode():
                rows = m.generate(**inputs, max_new_tokens=24, do_sample=False)
            out += [row[inputs["input_ids"].shape[1] :].tolist() for row in rows]
        return out

    reference = answers(model, 1)

    def agreement(other: list[list[int]]) -> tuple[int, float]:
        shared = [next((i for i, (a, b) in enumerate(zip(p, q)) if a != b), min(len(p), len(q))) for p, q in zip(reference, other)]
        return sum(p == q for p, q in zip(reference, other)), sum(shared) / len(shared)

    print("float32 batch 8 vs batch 1: identical %d/16, shared leading tokens %.1f" % agreement(answers(model, 8)))
    variants = {
        "per-tensor, all linear layers": lambda m: quantize_dynamic(m, llm_linears(m, default_dynamic_qconfig), dtype=torch.qint8, inplace=True),
        "per-channel, all linear layers": lambda m: quantize_dynamic(m, llm_linears(m, per_channel_dynamic_qconfig), inplace=True),
        "per-channel, LM head float32": lambda m: quantize_dynamic(m.model.language_model, {torch.nn.Linear: per_channel_dynamic_qconfig}, inplace=True),
    }
    for name, quantize in variants.items():
        quantized = copy.deepcopy(model)
        quantize(quantized)
        one, eight = agreement(answers(quantized, 1)), agreement(answers(quantized, 8))
        print(f"{name}: batch 1 identical {one[0]}/16, shared {one[1]:.1f} tokens; batch 8 identical {eight[0]}/16, shared {eight[1]:.1f}")


if __name__ == "__main__":
    main()
