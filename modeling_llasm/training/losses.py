"""Training losses: LM loss with the LM head only at label positions, text-teacher distillation, CTC pre-alignment."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..data.collator import IGNORE_INDEX
from ..configuration_llasm import encoder_frame_mask
from ..modeling_llasm import audio_window_tokens, embedding_ctc_logits, encode_audio_windows, window_token_counts


def prediction_mask(labels: torch.Tensor) -> torch.Tensor:
    """Boolean `(batch, seq)`: positions whose *next* label is learned (the LM head is needed only there)."""
    mask = torch.zeros_like(labels, dtype=torch.bool)
    mask[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    return mask


def shifted_targets(labels: torch.Tensor) -> torch.Tensor:
    """The learned labels in the row-major order of `prediction_mask(labels)`."""
    return labels[:, 1:][labels[:, 1:] != IGNORE_INDEX]


def logits_at_labels(model: nn.Module, inputs: dict, labels: torch.Tensor, label_positions_only: bool = True):
    """Run `model` on `inputs` (no labels) and return `(outputs, logits (N, vocab), targets (N,))` for the N
    learned positions. With `label_positions_only` the LM head runs only there (`logits_to_keep` boolean mask)."""
    mask = prediction_mask(labels)
    if label_positions_only:
        outputs = model(**inputs, logits_to_keep=mask)
        logits = outputs.logits
        if logits.dim() == 3:  # an LLM that ignores tensor logits_to_keep returns every position
            logits = logits[mask]
    else:
        outputs = model(**inputs)
        logits = outputs.logits[mask]
    return outputs, logits, shifted_targets(labels)


def token_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, num_items_in_batch=None) -> torch.Tensor:
    """Cross-entropy summed over tokens / `num_items_in_batch` (the Trainer's count over the accumulated
    batch), or the mean when it is not given."""
    loss = F.cross_entropy(logits.float(), targets.to(logits.device), reduction="sum")
    return _normalize(loss, targets.numel(), num_items_in_batch)


def distillation_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0, num_items_in_batch=None
) -> torch.Tensor:
    """KL(teacher || student) per response token (Ultravox-style: the teacher is the LLM reading the transcript),
    summed over tokens / `num_items_in_batch` (or the mean), scaled by `temperature**2`."""
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student and teacher logits differ in shape ({tuple(student_logits.shape)} vs "
            f"{tuple(teacher_logits.shape)}): they must cover the same response tokens."
        )
    student = F.log_softmax(student_logits.float() / temperature, dim=-1)
    teacher = F.log_softmax(teacher_logits.detach().float() / temperature, dim=-1)
    kl = F.kl_div(student, teacher, log_target=True, reduction="sum") * temperature**2
    return _normalize(kl, student_logits.shape[0], num_items_in_batch)


def _normalize(total: torch.Tensor, count: int, num_items_in_batch) -> torch.Tensor:
    if num_items_in_batch is not None:
        if torch.is_tensor(num_items_in_batch):
            num_items_in_batch = num_items_in_batch.to(total.device)
        return total / num_items_in_batch
    return total / max(count, 1)


@torch.no_grad()
def calibrate_adaptor(model: nn.Module, batches, target_norm: float | None = None) -> float:
    """Scale the adaptor's last linear layer so that its audio tokens have the mean norm of the LLM's token
    embeddings (directions unchanged); returns the factor applied. Used after CTC pre-alignment, whose
    norm-invariant head leaves the output norm arbitrary. `batches`: collated batches with audio."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    last = [m for m in base.model.multi_modal_projector.modules() if isinstance(m, nn.Linear)][-1]
    if target_norm is None:
        target_norm = float(base.get_input_embeddings().weight.float().norm(dim=-1).mean())
    norms = []
    for batch in batches:
        features = base.get_audio_features(batch.get("input_features"), batch["input_features_mask"],
                                           batch.get("audio_encoder_hidden_states")).pooler_output  # fmt: skip
        norms.append(features.float().norm(dim=-1))
    factor = target_norm / float(torch.cat(norms).mean())
    last.weight.mul_(factor)
    if last.bias is not None:
        last.bias.mul_(factor)
    return factor


class LlasmCtcAligner(nn.Module):
    r"""
    CTC training of the adaptor without running the LLM.

    - `ctc_compress` adaptors carry their own CTC head (`LlasmCtcCompressAdaptor`, scoring a sub-vocabulary of the
      LLM's input embeddings): the aligner trains adaptor + head on the adaptor's stacked frames. Transcript tokens
      are mapped onto the head's classes by `vocabulary` (`SubVocabulary`: tokens outside it are spelled with its
      pieces), built from the model if not given.
    - Other adaptors (stage-1 pre-alignment of `stack_mlp`): the audio tokens are classified against the whole
      frozen LLM input-embedding matrix (dot products at the embeddings' mean norm, a learned scale) plus a learned
      blank; the head is the aligner's own and is discarded after training (`calibrate_adaptor` then fixes the
      output norm). This pulls the adaptor outputs towards the embeddings of the words spoken.

    It shares `audio_tower` and `multi_modal_projector` with `model` (training it trains the model's adaptor); the
    LLM is not part of it. Train it with a plain `Trainer` (DDP works; it is an `nn.Module` returning
    `{"loss": ...}`) on batches of `LlasmDataCollator(..., ctc=True)`.
    """

    accepts_loss_kwargs = False  # its loss is a per-batch mean: the Trainer scales it for gradient accumulation

    def __init__(self, model: nn.Module, vocabulary=None, tokenizer=None):
        super().__init__()
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        self.config = base.config
        self.audio_tower = base.model.audio_tower
        self.multi_modal_projector = base.model.multi_modal_projector
        embeddings = base.get_input_embeddings().weight.detach()
        self.register_buffer("token_embeddings", embeddings, persistent=False)
        self.adaptor_head = base.config.adaptor_type == "ctc_compress"  # its own CTC head and vocabulary
        if self.adaptor_head:
            from .ctc_vocabulary import SubVocabulary

            ids = self.multi_modal_projector.ctc_token_ids.tolist()
            if vocabulary is not None and list(vocabulary.token_ids) != ids:
                raise ValueError("The CTC vocabulary given differs from the adaptor's `ctc_token_ids`.")
            self.vocabulary = vocabulary or (SubVocabulary(ids).with_tokenizer(tokenizer) if tokenizer is not None else SubVocabulary(ids))
            return
        # Audio tokens are scored at the LLM's typical embedding norm: CTC then shapes only their directions and
        # cannot inflate their norms (which would put them far outside what the LLM reads; see calibrate_adaptor).
        self.register_buffer("embedding_norm", embeddings.float().norm(dim=-1).mean(), persistent=False)
        self.blank_embedding = nn.Parameter(embeddings.float().mean(0).clone())
        self.blank_bias = nn.Parameter(torch.zeros(()))
        self.log_scale = nn.Parameter(torch.zeros(()))

    def audio_tokens(self, input_features=None, input_features_mask=None, audio_encoder_hidden_states=None) -> torch.Tensor:
        """`(total_audio_tokens, hidden)`, as `LlasmForConditionalGeneration.get_audio_features(...).pooler_output`."""
        return audio_window_tokens(self.audio_tower, self.multi_modal_projector, self.config, input_features,
                                   input_features_mask, audio_encoder_hidden_states,
                                   self.token_embeddings if self.adaptor_head else None).pooler_output  # fmt: skip

    def ctc_logits(self, input_features=None, input_features_mask=None, audio_encoder_hidden_states=None,
                   audio_token_counts=None) -> torch.Tensor:  # fmt: skip
        """`(clips, T, 1 + classes)` scores: index 0 is the blank, then the head's classes (the adaptor head's
        `ctc_token_ids`, or every LLM token)."""
        if self.adaptor_head:  # the adaptor's stacked frames, before compression
            encoded, mask = encode_audio_windows(self.audio_tower, input_features, input_features_mask, audio_encoder_hidden_states)
            frames, _ = self.multi_modal_projector.frame_states(encoded.last_hidden_state, encoder_frame_mask(mask).to(encoded.last_hidden_state.device))
            tokens = torch.cat([window[:count] for window, count in zip(frames, window_token_counts(self.config, mask))])
        else:
            tokens = self.audio_tokens(input_features, input_features_mask, audio_encoder_hidden_states)
        clips = torch.split(tokens, audio_token_counts.tolist())
        padded = nn.utils.rnn.pad_sequence(clips, batch_first=True).float()  # (clips, T, hidden)
        if self.adaptor_head:
            return self.multi_modal_projector.ctc_logits(padded, self.token_embeddings)
        return embedding_ctc_logits(padded, self.token_embeddings, self.embedding_norm, self.blank_embedding, self.blank_bias,
                                    self.log_scale)  # fmt: skip

    def class_token_ids(self, classes: list[int]) -> list[int]:
        """LLM token ids of head classes (1-based)."""
        if self.adaptor_head:
            return [self.vocabulary.token_ids[c - 1] for c in classes]
        return [c - 1 for c in classes]

    def targets(self, ctc_labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`(clips, L)` class targets (1-based, 0-padded) and their lengths, from the collator's LLM token ids."""
        rows = [[t for t in row if t != IGNORE_INDEX] for row in ctc_labels.tolist()]
        if self.adaptor_head:
            rows = [self.vocabulary.targets(row) for row in rows]
            if any(not row for row in rows):
                raise ValueError("A CTC target has no tokens the CTC vocabulary can spell (an empty transcript?).")
        else:
            rows = [[t + 1 for t in row] for row in rows]
        lengths = torch.tensor([len(row) for row in rows], dtype=torch.long)
        padded = torch.zeros(len(rows), max(1, int(lengths.max())), dtype=torch.long)
        for i, row in enumerate(rows):
            padded[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        return padded.to(ctc_labels.device), lengths.to(ctc_labels.device)

    @torch.no_grad()
    def greedy_decode(self, input_features=None, input_features_mask=None, audio_encoder_hidden_states=None,
                      audio_token_counts=None, **ignored) -> list[list[int]]:  # fmt: skip
        """Best-path CTC decoding: LLM token ids per clip (repeats collapsed, blanks removed)."""
        best = self.ctc_logits(input_features, input_features_mask, audio_encoder_hidden_states, audio_token_counts).argmax(-1)
        decoded = []
        for row, length in zip(best.tolist(), audio_token_counts.tolist()):
            classes, previous = [], 0
            for index in row[:length]:
                if index != previous and index != 0:
                    classes.append(index)
                previous = index
            decoded.append(self.class_token_ids(classes))
        return decoded

    def forward(self, input_features=None, input_features_mask=None, audio_encoder_hidden_states=None,
                audio_token_counts=None, ctc_labels=None, **ignored):  # fmt: skip
        if audio_token_counts is None or ctc_labels is None:
            raise ValueError("LlasmCtcAligner needs `audio_token_counts` and `ctc_labels` (LlasmDataCollator(ctc=True)).")
        logits = self.ctc_logits(input_features, input_features_mask, audio_encoder_hidden_states, audio_token_counts)
        log_probs = logits.float().log_softmax(-1).transpose(0, 1)  # (T, clips, 1 + classes)
        targets, target_lengths = self.targets(ctc_labels)
        loss = F.ctc_loss(log_probs, targets, audio_token_counts, target_lengths, blank=0, reduction="mean",
                          zero_infinity=True)  # fmt: skip
        return {"loss": loss}


__all__ = [
    "LlasmCtcAligner", "calibrate_adaptor", "distillation_loss", "logits_at_labels", "prediction_mask", "shifted_targets",
    "token_cross_entropy",
]  # fmt: skip
