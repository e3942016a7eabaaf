"""LLaSM training: stages, collator, losses (LM at label positions, text-teacher distillation, CTC pre-alignment),
frozen-encoder cache, 4-bit QLoRA, hub-ready checkpoints, and the `llasm train --recipe tiny` recipe.

Heavy optional pieces (peft, bitsandbytes) are imported only by the functions that need them.
"""

from ..data.collator import LlasmDataCollator, SampleTooLongError
from .encoder_cache import EncoderCache, clips_of
from .hub import check_hub_layout, llasm_model_card, make_hub_ready
from .losses import LlasmCtcAligner, distillation_loss, logits_at_labels, token_cross_entropy
from .qlora import load_qlora_model, merge_adapter, qlora_config, save_adapter
from .stages import LlasmStageCallback, apply_stage, default_lora_config, prepare_stage
from .trainer import AnswerAgreementCallback, KeepBestCallback, LlasmTrainer, TimeBudgetCallback


__all__ = [
    "AnswerAgreementCallback",
    "EncoderCache",
    "KeepBestCallback",
    "LlasmCtcAligner",
    "LlasmDataCollator",
    "LlasmStageCallback",
    "LlasmTrainer",
    "SampleTooLongError",
    "TimeBudgetCallback",
    "apply_stage",
    "check_hub_layout",
    "clips_of",
    "default_lora_config",
    "distillation_loss",
    "llasm_model_card",
    "load_qlora_model",
    "logits_at_labels",
    "make_hub_ready",
    "merge_adapter",
    "prepare_stage",
    "qlora_config",
    "save_adapter",
    "token_cross_entropy",
]
