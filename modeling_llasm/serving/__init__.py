"""OpenAI-compatible HTTP serving for LLaSM (`llasm serve`): FastAPI app, micro-batching worker, model choice.

Needs the `serve` extra (fastapi, uvicorn); the tests also use `openai` and `httpx`.
"""

from .models import choose_model_dir, default_model_dir, is_loopback, load_model, model_id_of, newest_recipe_model


def __getattr__(name: str):  # the web stack is imported only when the app is asked for
    if name in ("create_app", "ServerSettings"):
        from . import app

        return getattr(app, name)
    if name in ("BackgroundServer", "serve"):
        from . import server

        return getattr(server, name)
    raise AttributeError(name)


__all__ = [
    "BackgroundServer", "ServerSettings", "choose_model_dir", "create_app", "default_model_dir", "is_loopback", "load_model",
    "model_id_of", "newest_recipe_model", "serve",
]
