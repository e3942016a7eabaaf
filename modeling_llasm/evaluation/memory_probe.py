"""Peak CPU memory (RSS) of one LLaSM training step, run in a fresh process per setting (`llasm bench` uses it).

    python -m modeling_llasm.evaluation.memory_probe MODEL_DIR --mode qlora|lora-bf16 [--threads N]

Prints one JSON line: RSS after imports (baseline) and after loading, the peak (VmHWM) while loading, the peak
during one forward + backward + AdamW step on 2 ASR samples of 5 s (VmHWM reset after loading), and the overall
process peak. Both modes train LoRA (r=8) on the LLM's linears and
the adaptor (`modules_to_save`) with activation checkpointing; `qlora` loads the LLM in 4-bit NF4
(double quantization, bf16 compute; encoder, adaptor and LM head unquantized), `lora-bf16` loads everything in
bf16. The same recipe as `modeling_llasm.training.qlora`.
"""

from __future__ import annotations

import argparse
import json
import time

LORA_TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def rss_mib() -> float:
    return _status_kib("VmRSS") / 1024


def peak_rss_mib() -> float:
    return _status_kib("VmHWM") / 1024


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux: write 5 to /proc/self/clear_refs); False if not permitted."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def _enable_checkpointing(model) -> None:
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def load_for_training(model_dir: str, mode: str):
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import BitsAndBytesConfig

    from modeling_llasm import LlasmForConditionalGeneration
    from modeling_llasm.training.loading import training_config

    config = training_config(model_dir)  # a GGUF-converted LLM may carry a stale GGUF quantization_config
    if mode == "qlora":
        quantization = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16, llm_int8_skip_modules=["model.audio_tower", "model.multi_modal_projector", "lm_head"],
        )  # fmt: skip
        model = LlasmForConditionalGeneration.from_pretrained(
            model_dir, config=config, quantization_config=quantization, device_map="cpu", dtype=torch.float32
        )
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    elif mode == "lora-bf16":
        model = LlasmForConditionalGeneration.from_pretrained(model_dir, config=config, dtype=torch.bfloat16)
        for parameter in model.parameters():
            parameter.requires_grad_(False)
    else:
        raise ValueError(f"mode must be 'qlora' or 'lora-bf16', got {mode!r}")
    _enable_checkpointing(model)
    config = LoraConfig(
        r=8, lora_alpha=16, lora_dropout=0.05, task_type="CAUSAL_LM", target_modules=LORA_TARGETS,
        modules_to_save=["multi_modal_projector"],
    )  # fmt: skip
    model = get_peft_model(model, config)
    model.train()
    return model


def training_batch(processor, seconds: float = 5.0, batch: int = 2):
    """`batch` ASR samples (instruction + clip -> transcript), right-padded, labels on the answer only."""
    import torch

    from .clips import SENTENCES, speech_clip

    conversations, prompts = [], []
    for i in range(batch):
        user = {"role": "user", "content": [{"type": "text", "text": "Transcribe the speech."},
                                            {"type": "audio", "array": speech_clip(seconds, seed=i), "sampling_rate": 16000}]}  # fmt: skip
        conversations.append([user, {"role": "assistant", "content": SENTENCES[i % len(SENTENCES)]}])
        prompts.append([user])
    inputs = processor.apply_chat_template(conversations, add_generation_prompt=False, padding_side="right")
    prompt_lengths = [
        int(processor.apply_chat_template([p], add_generation_prompt=True)["attention_mask"].sum()) for p in prompts
    ]
    labels = inputs["input_ids"].clone()
    labels[inputs["attention_mask"] == 0] = -100
    for row, length in enumerate(prompt_lengths):
        labels[row, :length] = -100
    inputs["labels"] = labels
    return dict(inputs), torch.tensor(prompt_lengths)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model_dir")
    parser.add_argument("--mode", required=True, choices=["qlora", "lora-bf16"])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--batch", type=int, default=2)
    args = parser.parse_args(argv)

    import torch
    from transformers import AutoProcessor
    from transformers.utils import logging as hf_logging

    import modeling_llasm  # noqa: F401
    import peft  # noqa: F401

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    if args.threads:
        torch.set_num_threads(args.threads)
    processor = AutoProcessor.from_pretrained(args.model_dir)
    inputs, _ = training_batch(processor, args.seconds, args.batch)
    if args.mode == "lora-bf16":
        inputs["input_features"] = inputs["input_features"].to(torch.bfloat16)
    baseline = rss_mib()
    start = time.perf_counter()
    model = load_for_training(args.model_dir, args.mode)
    load_seconds = time.perf_counter() - start
    after_load = rss_mib()
    load_peak = peak_rss_mib()
    step_peak_measured = reset_peak_rss()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4)
    start = time.perf_counter()
    loss = model(**inputs).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    step_seconds = time.perf_counter() - start
    result = {
        "mode": args.mode,
        "baseline_rss_mib": round(baseline, 1),
        "after_load_rss_mib": round(after_load, 1),
        "load_peak_rss_mib": round(load_peak, 1),
        "step_peak_rss_mib": round(peak_rss_mib(), 1) if step_peak_measured else None,
        "load_seconds": round(load_seconds, 2),
        "step_seconds": round(step_seconds, 2),
        "loss": round(float(loss.detach()), 4),
        "trainable_parameters": sum(p.numel() for p in trainable),
        "linear4bit_modules": sum(type(m).__name__ == "Linear4bit" for m in model.modules()),
        "threads": torch.get_num_threads(),
    }
    result["peak_rss_mib"] = round(max(load_peak, result["step_peak_rss_mib"] or peak_rss_mib()), 1)
    result["peak_minus_baseline_mib"] = round(result["peak_rss_mib"] - baseline, 1)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
