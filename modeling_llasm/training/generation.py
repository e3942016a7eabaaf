"""Greedy batched answers from a model being trained: used by the runner (transcripts, teacher responses) and by
the Trainer's answer-agreement callback, which must not import the runner (it imports the Trainer)."""

from __future__ import annotations


def generate_batch(model, processor, conversations: list[list[dict]], max_new_tokens: int = 64) -> tuple[list[str], list[bool]]:
    """Greedy answers to a batch of conversations; also whether each one ended with an end-of-sequence token."""
    inputs = processor.apply_chat_template(conversations, add_generation_prompt=True, padding_side="left")
    device = next(model.parameters()).device
    inputs = {k: v.to(device) for k, v in inputs.items()}
    eos = model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, (list, tuple)) else [eos]) - {None}
    output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    new_tokens = output[:, inputs["input_ids"].shape[1] :]
    texts = [processor.decode(row, skip_special_tokens=True).strip() for row in new_tokens]
    finished = [bool(eos & set(row.tolist())) for row in new_tokens]
    return texts, finished
