"""Chat templates shipped with the package (jinja files next to this module), selectable by name.

- `llasm_cllama2`: LinkSoul/LLaSM-Cllama2, Llama-2 chat format (`<s>[INST] <<SYS>>...<</SYS>>\n\n{user} [/INST] {answer} </s>`).
- `llasm_baichuan`: LinkSoul/LLaSM-Baichuan (`{system}USER:{user}ASSISTANT:{answer}</s>`).

Both use the original English system prompt (`ORIGINAL_SYSTEM_PROMPT`) unless the conversation starts with a
`system` message, and wrap each audio placeholder `<au_patch>` as `<au_start><au_patch><au_end>` (the processor
then expands `<au_patch>` to the adaptor's token count). Use with
`LlasmProcessor(..., chat_template=load_chat_template("llasm_cllama2"), audio_token="<au_patch>")`.
"""

from __future__ import annotations

from importlib import resources

ORIGINAL_SYSTEM_PROMPT = (
    "You are a helpful language and speech assistant. You are able to understand the speech content that the user "
    "provides, and assist the user with a variety of tasks using natural language."
)

# Short aliases: the LLaSM variant names.
_ALIASES = {"cllama2": "llasm_cllama2", "baichuan": "llasm_baichuan"}


def available_chat_templates() -> list[str]:
    """Names accepted by `load_chat_template` (file names without `.jinja`)."""
    return sorted(
        entry.name[: -len(".jinja")] for entry in resources.files(__package__).iterdir() if entry.name.endswith(".jinja")
    )


def load_chat_template(name: str) -> str:
    """The jinja source of the packaged chat template `name` (`"llasm_cllama2"`, `"llasm_baichuan"`, or the
    variant names `"cllama2"` / `"baichuan"`)."""
    name = _ALIASES.get(name, name)
    if name not in available_chat_templates():
        raise ValueError(f"Unknown chat template {name!r}; available: {available_chat_templates()} (or {sorted(_ALIASES)}).")
    return resources.files(__package__).joinpath(f"{name}.jinja").read_text(encoding="utf-8")


__all__ = ["ORIGINAL_SYSTEM_PROMPT", "available_chat_templates", "load_chat_template"]
