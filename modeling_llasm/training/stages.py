"""LLaSM training stages: which parameters learn.

| stage | Whisper encoder | adaptor | LLM (default `llm_mode`) |
|---|---|---|---|
| `"align"` (stage 1, ASR data) | frozen | trained | `"frozen"` |
| `"instruct"` (stage 2, spoken instructions) | frozen | trained | `"full"` (or `"lora"`, or `"frozen"`) |

`train_encoder=True` trains the whole Whisper encoder; `train_encoder_layers=N` only its top N transformer layers and
its final layer norm (the encoder's input convolutions and lower layers stay frozen). The Whisper decoder of the
`"whisper_resampler"` adaptor (`model.multi_modal_projector.decoder`) stays frozen like the
encoder. With `llm_mode="lora"` only the LoRA matrices of the LLM learn (the model must be a peft model;
`prepare_stage` wraps it).

The Trainer collects the trainable parameters for its optimizer before `on_train_begin`, so a stage must be set
up before the Trainer is built or, at the latest, in `on_init_end`: that is what [`LlasmStageCallback`] does.
"""

from __future__ import annotations

import logging
import re

from torch import nn
from transformers import TrainerCallback


logger = logging.getLogger(__name__)

STAGES = ("align", "instruct")
LLM_MODES = ("full", "lora", "frozen")
DEFAULT_LLM_MODE = {"align": "frozen", "instruct": "full"}
LORA_TARGET_REGEX = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


def resolve_llm_mode(stage: str, llm_mode: str | None) -> str:
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}.")
    mode = llm_mode or DEFAULT_LLM_MODE[stage]
    if mode not in LLM_MODES:
        raise ValueError(f"llm_mode must be one of {LLM_MODES}, got {mode!r}.")
    return mode


def is_trainable(
    name: str, stage: str, llm_mode: str | None = None, train_encoder: bool = False, encoder_layers_from: int | None = None
) -> bool | None:
    """Whether parameter `name` (plain or peft-wrapped model) learns in `stage`; None for parameters outside
    the encoder / adaptor / LLM (left as they are). `encoder_layers_from=k`: encoder layers k, k+1, ... and the
    encoder's final layer norm learn too (see `train_encoder_layers` of `apply_stage`)."""
    mode = resolve_llm_mode(stage, llm_mode)
    parts = name.split(".")
    if "audio_tower" in parts:
        if train_encoder:
            return True
        if encoder_layers_from is None:
            return False
        below = parts[parts.index("audio_tower") + 1 :]
        if below[0] == "layer_norm":
            return True
        return below[0] == "layers" and int(below[1]) >= encoder_layers_from
    if "multi_modal_projector" in parts:
        below = parts[parts.index("multi_modal_projector") + 1 :]
        if "original_module" in below:  # peft keeps the original of a modules_to_save copy frozen
            return False
        if "decoder" in below:  # the whisper_resampler's Whisper decoder: frozen like the encoder
            return train_encoder
        return True
    if "language_model" in parts or "lm_head" in parts:  # the LLM: its base model and its head (untied)
        if mode == "full":
            return True
        if mode == "lora":
            return any(part.startswith("lora_") for part in parts)
        return False
    return None


def first_trained_encoder_layer(names: list[str], train_encoder_layers: int) -> int | None:
    """The index of the lowest Whisper encoder layer (`audio_tower.layers.<i>`, counted from the parameter `names`)
    that `train_encoder_layers` trains; None when it is 0."""
    if not train_encoder_layers:
        return None
    indices = [int(m.group(1)) for name in names if (m := re.search(r"(?:^|\.)audio_tower\.layers\.(\d+)\.", name))]
    layers = max(indices) + 1 if indices else 0
    if not 0 < train_encoder_layers <= layers:
        raise ValueError(f"train_encoder_layers must be between 1 and the encoder's {layers} layers, got {train_encoder_layers}.")
    return layers - train_encoder_layers


def apply_stage(
    model: nn.Module, stage: str, llm_mode: str | None = None, train_encoder: bool = False, train_encoder_layers: int = 0
) -> list[str]:
    """Set `requires_grad` for `stage` in place; return the names of the trainable parameters.
    `train_encoder_layers=N` also trains the top N Whisper encoder layers and the encoder's final layer norm."""
    mode = resolve_llm_mode(stage, llm_mode)
    names = [name for name, _ in model.named_parameters()]
    if mode == "lora" and not any(".lora_" in name for name in names):
        raise ValueError("llm_mode='lora' needs a peft model with LoRA layers; use prepare_stage(..., llm_mode='lora').")
    encoder_layers_from = first_trained_encoder_layer(names, train_encoder_layers)
    trainable = []
    for name, parameter in model.named_parameters():
        flag = is_trainable(name, stage, mode, train_encoder, encoder_layers_from)
        if flag is None:
            flag = parameter.requires_grad
        elif flag and not parameter.is_floating_point():
            flag = False  # quantized storage (e.g. bitsandbytes 4-bit) cannot learn
        parameter.requires_grad_(flag)
        if flag:
            trainable.append(name)
    if not trainable:
        raise ValueError(f"Stage {stage!r} with llm_mode={mode!r} leaves nothing to train.")
    return trainable


def default_lora_config(r: int = 8, lora_alpha: int = 16, lora_dropout: float = 0.05, **kwargs):
    """LoRA on the LLM's attention and MLP linears only (never Whisper's), the adaptor fully trained and saved."""
    from peft import LoraConfig

    kwargs.setdefault("target_modules", LORA_TARGET_REGEX)
    kwargs.setdefault("modules_to_save", ["multi_modal_projector"])
    kwargs.setdefault("task_type", "CAUSAL_LM")
    return LoraConfig(r=r, lora_alpha=lora_alpha, lora_dropout=lora_dropout, **kwargs)


def prepare_stage(
    model: nn.Module,
    stage: str,
    llm_mode: str | None = None,
    lora_config=None,
    train_encoder: bool = False,
    train_encoder_layers: int = 0,
) -> nn.Module:
    """Set up `model` for `stage` and return it (a new peft model when `llm_mode="lora"` wraps it).

    Call before building the Trainer, or pass [`LlasmStageCallback`] to it (the callback cannot wrap with LoRA:
    call `prepare_stage(model, stage, "lora")` first).
    """
    mode = resolve_llm_mode(stage, llm_mode)
    if mode == "lora" and not any(".lora_" in name for name, _ in model.named_parameters()):
        from peft import get_peft_model

        model = get_peft_model(model, lora_config or default_lora_config())
    trainable = apply_stage(model, stage, mode, train_encoder, train_encoder_layers)
    count = sum(p.numel() for n, p in model.named_parameters() if p.requires_grad)
    logger.info("stage %s (llm %s): %d trainable tensors, %d parameters", stage, mode, len(trainable), count)
    return model


class LlasmStageCallback(TrainerCallback):
    r"""
    Applies a LLaSM stage's freezing at `on_init_end`, before the Trainer builds its optimizer (freezing in
    `on_train_begin` would silently train nothing differently: the optimizer already holds the parameters).

    At `on_train_begin` it checks that the optimizer holds exactly the stage's trainable parameters.
    """

    def __init__(self, stage: str, llm_mode: str | None = None, train_encoder: bool = False, train_encoder_layers: int = 0):
        self.stage = stage
        self.llm_mode = resolve_llm_mode(stage, llm_mode)
        self.train_encoder = train_encoder
        self.train_encoder_layers = train_encoder_layers
        self.trainable: list[str] = []

    def on_init_end(self, args, state, control, model=None, **kwargs):
        if model is None:
            raise ValueError("LlasmStageCallback needs the Trainer's model.")
        self.trainable = apply_stage(model, self.stage, self.llm_mode, self.train_encoder, self.train_encoder_layers)
        return control

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        if model is None or optimizer is None:
            return control
        wanted = {id(p) for p in model.parameters() if p.requires_grad}
        held = {id(p) for group in optimizer.param_groups for p in group["params"]}
        if held and wanted and not wanted <= held:  # wrapped optimizers (DeepSpeed/FSDP) may hold flat copies
            logger.warning(
                "The optimizer holds %d parameter tensors but %d require grad: the stage was changed after the "
                "optimizer was built, so it does not train what the stage says.", len(held), len(wanted)
            )
        return control


__all__ = [
    "STAGES", "LLM_MODES", "DEFAULT_LLM_MODE", "LORA_TARGET_REGEX", "LlasmStageCallback", "apply_stage",
    "default_lora_config", "first_trained_encoder_layer", "is_trainable", "prepare_stage", "resolve_llm_mode",
]  # fmt: skip
