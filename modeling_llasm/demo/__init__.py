"""`llasm demo`: a local web page (Gradio) to talk to a LLaSM model. Gradio is imported only by `build_demo`."""

from .app import (
    EMPTY_ANSWER,
    ModelInfo,
    build_demo,
    chatbot_messages,
    default_demo_model,
    describe_model,
    launch_demo,
    stream_answer,
    user_message,
)

__all__ = [
    "EMPTY_ANSWER",
    "ModelInfo",
    "build_demo",
    "chatbot_messages",
    "default_demo_model",
    "describe_model",
    "launch_demo",
    "stream_answer",
    "user_message",
]
