"""Word lists and text templates shared by the seed-text sources (`text_sources`) and the assistant-style
utterances (`assistant_text`)."""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Mapping


def require_package(module: str, pip_name: str):
    """Import `module`, or an ImportError saying which package to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(f"modeling_llasm.data needs `{pip_name}`: pip install {pip_name}") from e


def fill_template(template: str, slots: Mapping[str, Callable[[], str]]) -> str:
    """Format `template`, computing only the slots it uses (Faker calls are the slow part)."""
    names = dict.fromkeys(name for _, name, _, _ in string.Formatter().parse(template) if name)  # ordered: no set
    return template.format(**{name: slots[name]() for name in names})


# A few words are dropped from the random word sequences (wordfreq's lists come from web text).
_EN_BLOCKLIST = frozenset(
    "fuck fucking fucked fucker shit shitty bitch bitches cunt twat dick dicks cock cocks pussy whore slut sluts "
    "nigga niggas nigger fag faggot asshole porn porno rape raped cum tits boobs horny dildo".split()
)


def english_words(top_n: int = 20_000) -> list[str]:
    """wordfreq's `top_n` English words that read as words: letters only, pronounceable, nothing offensive."""
    wordfreq = require_package("wordfreq", "wordfreq")
    out = []
    for w in wordfreq.top_n_list("en", top_n):
        if w in _EN_BLOCKLIST or not re.fullmatch(r"[a-z]+('[a-z]+)?", w) or not re.search("[aeiouy]", w):
            continue  # letters only, and pronounceable as a word (no "lg", "mr", "st")
        if len(w) < 2 and w not in ("a", "i"):
            continue
        out.append("I" if w == "i" else w)
    return out
