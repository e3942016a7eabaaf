"""Which conversations are worth voicing: the paper's selection (no code, URLs, tables, symbol soup; en/zh; short
human turns), as a configurable filter that returns the reason a conversation is rejected."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass


_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_URL = re.compile(r"(https?://|ftp://|www\.)\S+|\b[\w.-]+\.(com|org|net|io|gov|edu|cn)\b(/\S*)?", re.IGNORECASE)
_CODE_FENCE = re.compile(r"```|~~~|<code>|</code>")
_CODE_LINE = re.compile(
    r"^\s*(def |class |import |from \S+ import |#include|function |public |private |var |let |const |return\b|"
    r"for\s*\(|if\s*\(|while\s*\(|SELECT |print\(|console\.)|[;{}]\s*$"
)
_TABLE_RULE = re.compile(r"^\s*\|?\s*:?-{3,}:?\s*(\|\s*:?-{3,}:?\s*)+\|?\s*$", re.MULTILINE)
_SPEAKABLE_PUNCT = set(" \t\n,.;:!?'\"()-–—…，。；：！？、“”‘’（）《》")


def detect_language(text: str) -> str:
    """"zh" if CJK characters are >= 30 % of the letters, "en" for (essentially ASCII) Latin text, else "other"."""
    letters = [c for c in text if unicodedata.category(c)[0] == "L"]
    if not letters:
        return "other"
    cjk = sum(1 for c in letters if _CJK.match(c))
    if cjk / len(letters) >= 0.3:
        return "zh"
    latin = sum(1 for c in letters if c.isascii())
    return "en" if latin / len(letters) >= 0.95 else "other"


def has_code(text: str) -> bool:
    """Code fences, or two or more lines that look like source code."""
    if _CODE_FENCE.search(text):
        return True
    return sum(1 for line in text.splitlines() if _CODE_LINE.search(line)) >= 2


def has_url(text: str) -> bool:
    return _URL.search(text) is not None


def has_table(text: str) -> bool:
    """A markdown table rule (`|---|---|`), or two or more lines with >= 2 pipes."""
    if _TABLE_RULE.search(text):
        return True
    return sum(1 for line in text.splitlines() if line.count("|") >= 2) >= 2


def symbol_ratio(text: str) -> float:
    """Share of non-space characters that are neither letters, digits nor ordinary sentence punctuation."""
    chars = [c for c in text if not c.isspace()]
    if not chars:
        return 0.0
    odd = sum(1 for c in chars if unicodedata.category(c)[0] not in "LN" and c not in _SPEAKABLE_PUNCT)
    return odd / len(chars)


@dataclass
class FilterConfig:
    """Conversation selection. A conversation is dropped (with a reason) if any checked turn fails.

    Args:
        languages: languages to keep ("en", "zh"), judged on the human turns.
        min_human_chars / max_human_chars: bounds on each human turn's length (stripped). Long turns make long
            audio; Whisper hears at most 30 s (~400 characters of English at normal speed).
        max_assistant_chars: bound on each assistant turn (None: no bound).
        skip_code / skip_urls / skip_tables: drop conversations whose checked turns contain these.
        max_symbol_ratio: drop human turns where more than this share of characters are symbols.
        check_assistant: also apply the code / URL / table checks to assistant turns (the paper dropped such
            dialogues entirely; off by default, since only human turns are voiced).
    """

    languages: tuple[str, ...] = ("en", "zh")
    min_human_chars: int = 2
    max_human_chars: int = 400
    max_assistant_chars: int | None = None
    skip_code: bool = True
    skip_urls: bool = True
    skip_tables: bool = True
    max_symbol_ratio: float = 0.2
    check_assistant: bool = False

    def check_turn(self, text: str, role: str) -> str | None:
        """Why this turn disqualifies its conversation, or None."""
        stripped = text.strip()
        if role == "user":
            if len(stripped) < self.min_human_chars:
                return f"human_turn_too_short ({len(stripped)} < {self.min_human_chars} characters)"
            if len(stripped) > self.max_human_chars:
                return f"human_turn_too_long ({len(stripped)} > {self.max_human_chars} characters)"
        elif role == "assistant" and self.max_assistant_chars is not None and len(stripped) > self.max_assistant_chars:
            return f"assistant_turn_too_long ({len(stripped)} > {self.max_assistant_chars} characters)"
        if role == "user" or (role == "assistant" and self.check_assistant):
            if self.skip_code and has_code(text):
                return f"code_in_{role}_turn"
            if self.skip_urls and has_url(text):
                return f"url_in_{role}_turn"
            if self.skip_tables and has_table(text):
                return f"table_in_{role}_turn"
        if role == "user":
            ratio = symbol_ratio(stripped)
            if ratio > self.max_symbol_ratio:
                return f"too_many_symbols ({ratio:.2f} > {self.max_symbol_ratio})"
        return None

    def check_conversation(self, turns: list[tuple[str, str]]) -> str | None:
        """`turns` = [(role, text)]; returns the first rejection reason, or None to keep the conversation."""
        human = [text for role, text in turns if role == "user"]
        if not human:
            return "no_human_turn"
        if not any(role == "assistant" for role, _ in turns):
            return "no_assistant_turn"
        for role, text in turns:
            reason = self.check_turn(text, role)
            if reason is not None:
                return reason
        language = detect_language(" ".join(human))
        if language not in self.languages:
            return f"language_{language}_not_in_{'_'.join(self.languages)}"
        return None
