"""`llasm demo`: a local web page (Gradio) to talk to a LLaSM model. Gradio is imported only by `build_demo`."""

from .app import (
    AUTO_LANGUAGE,
    EMPTY_ANSWER,
    ModelInfo,
    SpokenTurn,
    build_demo,
    chatbot_messages,
    default_demo_model,
    describe_model,
    first_word_note,
    launch_demo,
    reader_languages,
    stream_answer,
    turn_generation,
    user_message,
)

__all__ = [
    "AUTO_LANGUAGE",
    "EMPTY_ANSWER",
    "ModelInfo",
    "SpokenTurn",
    "build_demo",
    "chatbot_messages",
    "default_demo_model",
    "describe_model",
    "first_word_note",
    "launch_demo",
    "reader_languages",
    "stream_answer",
    "turn_generation",
    "user_message",
]
