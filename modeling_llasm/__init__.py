"""LLaSM: Whisper encoder -> modal adaptor -> decoder-only LLM, as a transformers plugin.

Importing the package registers the classes with the transformers Auto classes, so that
`AutoModel.from_pretrained(dir)` and `AutoProcessor.from_pretrained(dir)` work for LLaSM checkpoints.
"""

import transformers
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoProcessor
from transformers.pipelines import PIPELINE_REGISTRY

from .configuration_llasm import LlasmConfig, audio_token_count
from .modeling_llasm import LlasmConversationCache, LlasmForConditionalGeneration, LlasmModel, LlasmPreTrainedModel
from .pipeline_llasm import LlasmChatPipeline
from .processing_llasm import LlasmProcessor, load_audio
from .streaming_llasm import LlasmAudioStream, generate_from_audio_stream


def _register() -> None:
    AutoConfig.register(LlasmConfig.model_type, LlasmConfig, exist_ok=True)
    auto_model_classes = [AutoModel, AutoModelForCausalLM]
    if hasattr(transformers, "AutoModelForMultimodalLM"):
        auto_model_classes.append(transformers.AutoModelForMultimodalLM)
    # AutoModel -> the generative class on purpose (README: AutoModel.from_pretrained(dir).generate(...));
    # LlasmModel (no LM head) is loaded by name. See LlasmModel's docstring.
    for auto_class in auto_model_classes:
        auto_class.register(LlasmConfig, LlasmForConditionalGeneration, exist_ok=True)
    AutoProcessor.register(LlasmConfig, LlasmProcessor, exist_ok=True)
    PIPELINE_REGISTRY.register_pipeline(
        "llasm-chat", pipeline_class=LlasmChatPipeline, pt_model=AutoModelForCausalLM, type="multimodal"
    )
    # Saved checkpoints carry the code + auto_map, so they also load with trust_remote_code=True.
    LlasmConfig.register_for_auto_class()
    LlasmForConditionalGeneration.register_for_auto_class("AutoModel")
    LlasmProcessor.register_for_auto_class()


_register()

__all__ = [
    "LlasmAudioStream",
    "LlasmChatPipeline",
    "LlasmConfig",
    "LlasmConversationCache",
    "LlasmForConditionalGeneration",
    "LlasmModel",
    "LlasmPreTrainedModel",
    "LlasmProcessor",
    "audio_token_count",
    "generate_from_audio_stream",
    "load_audio",
]
