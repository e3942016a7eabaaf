"""Every precision a GPU user trains and serves in, forced on any CPU (issue 23): bf16 / fp16 autocast over float32
weights, and bf16 / fp16 weights, for every adaptor kind: forward + LM loss + backward, CTC pre-alignment loss,
greedy `generate` (batched, and with `LlasmConversationCache`), and the pipeline. Nothing here depends on whether this
CPU computes bf16 fast: the precision is set explicitly. The reader's greedy read-out and the CTC scores must not
depend on a caller's autocast (docs/training.md "Precision")."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import pytest
import torch
from transformers import pipeline

from modeling_llasm import LlasmChatPipeline, LlasmConversationCache
from modeling_llasm.configuration_llasm import encoder_frame_mask
from modeling_llasm.data.collator import LlasmDataCollator
from modeling_llasm.modeling_llasm import embedding_ctc_logits
from modeling_llasm.training.losses import LlasmCtcAligner
from tiny_llasm import TINY_ADAPTORS, compress_llasm, reader_llasm, speechlike


@dataclass(frozen=True)
class Precision:
    """Weights' dtype and the autocast dtype (None: no autocast); `compute` is what the LM head then outputs."""

    weights: torch.dtype
    autocast: torch.dtype | None

    @property
    def compute(self) -> torch.dtype:
        return self.autocast or self.weights

    def context(self):
        return torch.autocast("cpu", dtype=self.autocast) if self.autocast else contextlib.nullcontext()


PRECISIONS = {
    "bf16-autocast": Precision(torch.float32, torch.bfloat16),
    "fp16-autocast": Precision(torch.float32, torch.float16),
    "bf16-weights": Precision(torch.bfloat16, None),
    "fp16-weights": Precision(torch.float16, None),
}
CTC_ADAPTORS = ("stack_mlp", "linear", "whisper_resampler", "ctc_compress")  # the reader trains no CTC head


def audio_item(seconds: float, seed: int, transcript: str | None = None) -> dict:
    item = {"type": "audio", "array": speechlike(seconds, seed), "sampling_rate": 16000}
    return {**item, "transcript": transcript} if transcript else item


def asr_record(i: int) -> dict:
    words = ["hello world", "the quick brown fox", "what is the capital of france"][i % 3]
    return {"id": f"r{i}", "messages": [
        {"role": "user", "content": [audio_item(0.8 + 0.3 * i, i, words)]},
        {"role": "assistant", "content": [{"type": "text", "text": words}]}]}  # fmt: skip


def built(adaptor: str, precision: Precision):
    model, processor = TINY_ADAPTORS[adaptor]()
    return model.to(precision.weights), processor


def in_dtype(batch: dict, precision: Precision) -> dict:
    """The collated batch with its audio features in the weights' dtype (as the pipeline and the server pass them)."""
    return {k: v.to(precision.weights) if k == "input_features" else v for k, v in batch.items()}


class OutputDtypes:
    """Records the dtype of what a module outputs (proof that the path ran in the precision asked)."""

    def __init__(self, module: torch.nn.Module):
        self.seen: set[torch.dtype] = set()
        module.register_forward_hook(lambda _m, _a, output: self.seen.add(output.dtype))


@pytest.mark.parametrize("precision", sorted(PRECISIONS))
@pytest.mark.parametrize("adaptor", sorted(TINY_ADAPTORS))
def test_forward_lm_loss_and_backward(adaptor, precision):
    precision = PRECISIONS[precision]
    model, processor = built(adaptor, precision)
    model.train()
    head = OutputDtypes(model.lm_head)
    batch = in_dtype(LlasmDataCollator(processor, "instruct")([asr_record(i) for i in range(3)]), precision)
    with precision.context():
        output = model(**batch)
    assert head.seen == {precision.compute}
    assert torch.isfinite(output.loss) and output.loss.item() > 0
    output.loss.backward()
    grads = {n: p.grad for n, p in model.model.multi_modal_projector.named_parameters() if p.grad is not None}
    assert grads, "no gradient reached the adaptor"
    assert all(torch.isfinite(g).all() for g in grads.values()), [n for n, g in grads.items() if not torch.isfinite(g).all()]
    assert any(g.abs().sum() > 0 for g in grads.values())


@pytest.mark.parametrize("precision", sorted(PRECISIONS))
@pytest.mark.parametrize("adaptor", CTC_ADAPTORS)
def test_stage_one_ctc_loss_and_backward(adaptor, precision):
    precision = PRECISIONS[precision]
    model, processor = built(adaptor, precision)
    aligner = LlasmCtcAligner(model)
    batch = in_dtype(LlasmDataCollator(processor, "align", ctc=True)([asr_record(i) for i in range(3)]), precision)
    with precision.context():
        loss = aligner(**batch)["loss"]
    assert loss.dtype == torch.float32 and torch.isfinite(loss) and loss.item() > 0  # > 0: every target fits its clip
    loss.backward()
    grads = [p.grad for p in aligner.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads) and any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("precision", sorted(PRECISIONS))
@pytest.mark.parametrize("adaptor", sorted(TINY_ADAPTORS))
def test_greedy_generate_batched_and_with_the_conversation_cache(adaptor, precision):
    precision = PRECISIONS[precision]
    model, processor = built(adaptor, precision)
    conversations = [[{"role": "user", "content": [audio_item(seconds, seed)]}] for seconds, seed in ((1.3, 0), (0.6, 1))]
    batch = in_dtype(processor.apply_chat_template(conversations, add_generation_prompt=True), precision)
    single = in_dtype(processor.apply_chat_template(conversations[:1], add_generation_prompt=True), precision)
    with precision.context():
        batched = model.generate(**batch, max_new_tokens=5, min_new_tokens=5, do_sample=False)
        alone = model.generate(**single, max_new_tokens=5, min_new_tokens=5, do_sample=False)
        cached = model.generate(**single, max_new_tokens=5, min_new_tokens=5, do_sample=False, conversation_cache=LlasmConversationCache())
    prompt = batch["input_ids"].shape[1]
    assert batched.shape == (2, prompt + 5) and torch.equal(batched[:, :prompt], batch["input_ids"])
    assert int(batched[:, prompt:].max()) < model.config.text_config.vocab_size
    assert torch.equal(cached, alone)  # the cache's prefill is the full prefill, in this precision too


@pytest.mark.parametrize("precision", sorted(PRECISIONS))
@pytest.mark.parametrize("adaptor", ["stack_mlp", "whisper_reader"])
def test_pipeline_answers(adaptor, precision, tmp_path):
    precision = PRECISIONS[precision]
    model, processor = TINY_ADAPTORS[adaptor]()
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    chat = pipeline("llasm-chat", model=str(tmp_path), device="cpu", dtype=str(precision.weights).removeprefix("torch."))
    assert isinstance(chat, LlasmChatPipeline) and chat.model.dtype == precision.weights
    with precision.context():
        answers = chat([{"audio": {"array": speechlike(s, i), "sampling_rate": 16000}} for i, s in enumerate((1.1, 0.5))],
                       batch_size=2, max_new_tokens=4, min_new_tokens=4, do_sample=False)  # fmt: skip
    assert len(answers) == 2 and all(isinstance(a["generated_text"], str) for a in answers)


@pytest.mark.parametrize("autocast", [torch.bfloat16, torch.float16])
def test_the_reader_reads_the_same_words_under_autocast(autocast):
    """The reader's greedy read-out runs with autocast off, in the decoder's dtype: under a caller's bf16/fp16 autocast
    (the recipe on a bf16-fast CPU, the Trainer on a GPU) it reads exactly what it reads without one. Before issue 23
    bf16 autocast crashed here (its logits were masked with float32's minimum)."""
    model, processor = reader_llasm()
    inputs = processor.apply_chat_template([[{"role": "user", "content": [audio_item(s, i)]}] for i, s in enumerate((1.4, 0.7))],
                                           add_generation_prompt=True)  # fmt: skip
    with torch.no_grad():
        encoded = model.model.audio_tower(inputs["input_features"], attention_mask=inputs["input_features_mask"]).last_hidden_state
        reference = model.get_audio_features(None, inputs["input_features_mask"], encoded)
        with torch.autocast("cpu", dtype=autocast):
            under = model.get_audio_features(None, inputs["input_features_mask"], encoded)
            encoded_under = model.model.audio_tower(inputs["input_features"], attention_mask=inputs["input_features_mask"]).last_hidden_state
            windows = encoded_under.shape[0]
            frames = encoder_frame_mask(inputs["input_features_mask"])
            _, read_states, _ = model.model.multi_modal_projector.read(encoded_under, frames, [40] * windows)
    assert windows == 3 and any(reference.recognized_token_ids) and under.recognized_token_ids == reference.recognized_token_ids
    assert encoded_under.dtype == autocast  # the encoder itself did run in the autocast dtype ...
    assert all(s.dtype == torch.float32 for s in read_states)  # ... the reading did not


@pytest.mark.parametrize("autocast", [torch.bfloat16, torch.float16])
def test_ctc_scores_are_float32_under_autocast(autocast):
    """The CTC head's scores (which frames merge, which token each segment is) do not depend on a caller's autocast."""
    model, _ = compress_llasm()
    head = model.model.multi_modal_projector
    frames = torch.randn(2, 7, model.config.text_config.hidden_size)
    embeddings = model.get_input_embeddings().weight
    reference = head.ctc_logits(frames, embeddings)
    with torch.autocast("cpu", dtype=autocast):
        under = head.ctc_logits(frames, embeddings)
        plain = embedding_ctc_logits(frames, embeddings[:9], torch.tensor(1.0), embeddings[0], torch.tensor(0.0), torch.tensor(0.0))
    assert under.dtype == plain.dtype == torch.float32 and torch.equal(under, reference)
