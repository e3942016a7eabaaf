"""Quick CTC-recognizer probe on cached frozen-encoder outputs (research harness, not the recipe).

Trains one adaptor variant with CTC for a fixed wall-clock budget and reports best-path WER on the stage-1
held-out clips and on held-out spoken questions. Used to choose the recipe's recognizer before building it in.

    python benchmarks/ctc_probe.py --data DIR --questions MANIFEST --minutes 6 --stack 4 --vocab 8192 --layers 1
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from modeling_llasm.metrics import word_error_rate
from modeling_llasm.processing_llasm import LlasmProcessor
from modeling_llasm.training.ctc_vocabulary import SubVocabulary
from modeling_llasm.training.encoder_cache import EncoderCache, clips_of
from modeling_llasm.training.loading import load_llasm
from modeling_llasm.training.runner import read_records


def load_split(records, cache, tokenizer):
    out = []
    for record, clip in zip(records, clips_of(records)):
        item = next(i for m in record["messages"] for i in m["content"] if isinstance(i, dict) and i.get("type") == "audio")
        windows = cache.get(clip)
        states = torch.cat([w["encoder_states"] for w in windows])
        text = item["transcript"]
        out.append((states, tokenizer(text.strip(), add_special_tokens=False)["input_ids"], text))
    return out


class Probe(nn.Module):
    def __init__(self, embeddings, vocab_ids, stack, layers, hidden=576, d_model=384, mode="mlp"):
        super().__init__()
        self.stack = stack
        self.linear_1 = nn.Linear(d_model * stack, hidden)
        self.linear_2 = nn.Linear(hidden, embeddings.shape[1])
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(embeddings.shape[1], 9, 4 * embeddings.shape[1], dropout=0.1, batch_first=True,
                                       norm_first=True, activation="gelu")
            for _ in range(layers)
        )  # fmt: skip
        self.register_buffer("vocab_ids", vocab_ids)
        sub = embeddings[vocab_ids].float()
        self.register_buffer("sub_embeddings", sub)
        self.register_buffer("norm", embeddings.float().norm(dim=-1).mean())
        self.blank = nn.Parameter(sub.mean(0).clone())
        self.blank_bias = nn.Parameter(torch.zeros(()))
        self.log_scale = nn.Parameter(torch.zeros(()))

    def forward(self, states, lengths):
        batch, frames, dim = states.shape
        pad = (-frames) % self.stack
        states = F.pad(states, (0, 0, 0, pad)).reshape(batch, (frames + pad) // self.stack, self.stack * dim)
        x = self.linear_2(F.gelu(self.linear_1(states)))
        t_lengths = (lengths + self.stack - 1) // self.stack
        mask = torch.arange(x.shape[1])[None] >= t_lengths[:, None]
        for layer in self.layers:
            x = layer(x, src_key_padding_mask=mask)
        x = x.float()
        x = x / x.norm(dim=-1, keepdim=True).clamp_min(1e-6) * self.norm
        logits = torch.cat([(x @ self.blank + self.blank_bias)[..., None], x @ self.sub_embeddings.T], -1)
        return logits * self.log_scale.exp(), t_lengths


def batches(data, batch_size, rng):
    order = list(range(len(data)))
    while True:
        rng.shuffle(order)
        for i in range(0, len(order) - batch_size + 1, batch_size):
            yield [data[j] for j in order[i : i + batch_size]]


def collate(items, probe):
    lengths = torch.tensor([s.shape[0] for s, _, _ in items])
    states = nn.utils.rnn.pad_sequence([s.float() for s, _, _ in items], batch_first=True)
    targets = [ids for _, ids, _ in items]  # class indices (1-based) already
    target_lengths = torch.tensor([len(t) for t in targets])
    flat = torch.tensor([t for ts in targets for t in ts])
    return states, lengths, flat, target_lengths


@torch.no_grad()
def decode(probe, data, tokenizer, batch_size=32):
    probe.eval()
    refs, hyps = [], []
    for i in range(0, len(data), batch_size):
        items = data[i : i + batch_size]
        states, lengths, _, _ = collate(items, probe)
        logits, t_lengths = probe(states, lengths)
        best = logits.argmax(-1)
        for row, n, (_, _, text) in zip(best.tolist(), t_lengths.tolist(), items):
            out, prev = [], 0
            for k in row[:n]:
                if k != prev and k != 0:
                    out.append(int(probe.vocab_ids[k - 1]))
                prev = k
            hyps.append(tokenizer.decode(out).strip())
            refs.append(text)
    probe.train()
    return refs, hyps


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--base", default=str(Path.home() / ".cache/llasm/llasm-tiny-base"))
    parser.add_argument("--data", nargs="+", required=True, help="stage-1 data dirs (train from each)")
    parser.add_argument("--heldout", required=True)
    parser.add_argument("--questions", required=True)
    parser.add_argument("--cache", default=str(Path.home() / ".cache/llasm/exp/cache"))
    parser.add_argument("--minutes", type=float, default=6)
    parser.add_argument("--stack", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=0, help="0 = full LLM vocabulary")
    parser.add_argument("--layers", type=int, default=0)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--out", default=None)
    parser.add_argument("--save", default=None, help="save the trained probe (state dict + settings) here")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = load_llasm(args.base)
    processor = LlasmProcessor.from_pretrained(args.base)
    tokenizer = processor.tokenizer
    cache = EncoderCache(model, processor, cache_dir=args.cache, keep_in_memory=False)
    train_records = [r for d in args.data for r in read_records(Path(d) / "train", limit=args.limit)]
    heldout_records = read_records(args.heldout)
    question_records = read_records(args.questions)
    for records in (train_records, heldout_records, question_records):
        cache.precompute(clips_of(records), progress=False)
    train = load_split(train_records, cache, tokenizer)
    heldout = load_split(heldout_records, cache, tokenizer)
    questions = load_split(question_records, cache, tokenizer)
    embeddings = model.get_input_embeddings().weight.detach()
    if args.vocab:
        vocabulary = SubVocabulary.build(tokenizer, args.vocab, extra_texts=[text for _, _, text in train])
    else:
        vocabulary = SubVocabulary(list(range(embeddings.shape[0])))
    vocab_ids = torch.tensor(vocabulary.token_ids)
    inside = set(vocabulary.token_ids)
    covered = sum(all(t in inside for t in ids) for _, ids, _ in questions)
    for data in (train, heldout, questions):
        data[:] = [(states, vocabulary.targets(ids), text) for states, ids, text in data]
    probe = Probe(embeddings, vocab_ids, args.stack, args.layers)
    params = [p for p in probe.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    rng = random.Random(0)
    stream = batches(train, args.batch, rng)
    budget = args.minutes * 60
    # time 5 steps to plan the cosine schedule
    step, start, planned = 0, time.perf_counter(), None
    losses = []
    while True:
        elapsed = time.perf_counter() - start
        if step == 3:
            after_warmup = elapsed
        if planned is None and step == 13:  # plan the cosine schedule from steps 3..13
            planned = max(20, int(budget / ((elapsed - after_warmup) / 10)))
        if planned is not None and step >= planned or elapsed > budget * 1.05:
            break
        total = planned or 1000
        lr = args.lr * min(1.0, (step + 1) / max(1, 0.05 * total)) * 0.5 * (1 + math.cos(math.pi * min(step, total) / total))
        for group in optimizer.param_groups:
            group["lr"] = lr
        states, lengths, flat, target_lengths = collate(next(stream), probe)
        logits, t_lengths = probe(states, lengths)
        log_probs = logits.float().log_softmax(-1).transpose(0, 1)
        loss = F.ctc_loss(log_probs, flat, t_lengths, target_lengths, zero_infinity=True)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        losses.append(loss.item())
        step += 1
    train_seconds = time.perf_counter() - start
    result = {"args": vars(args), "steps": step, "train_seconds": round(train_seconds, 1), "vocab": len(vocab_ids),
              "questions_covered": covered / len(questions), "train_items": len(train),
              "loss_first": sum(losses[:20]) / 20, "loss_last": sum(losses[-50:]) / min(50, len(losses))}  # fmt: skip
    for name, data in (("heldout", heldout), ("questions", questions)):
        refs, hyps = decode(probe, data, tokenizer)
        result[f"{name}_wer"] = round(word_error_rate(refs, hyps), 4)
        result[f"{name}_examples"] = [f"{r} -> {h}" for r, h in list(zip(refs, hyps))[:6]]
    print(json.dumps(result, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    if args.save:
        torch.save({"state_dict": probe.state_dict(), "stack": args.stack, "layers": args.layers}, args.save)


if __name__ == "__main__":
    main()
