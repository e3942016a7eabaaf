"""Is an answer on the topic of its question? A keyword check for noisy-speech evaluation (issue 22, item 5).

An answer is **on topic** when it shares a content term with the question that was asked (the gold transcript):
for English words, a Porter stem of a question word that is not among the most frequent English words (wordfreq);
for Chinese, a pair of adjacent characters of the question that is a word (in wordfreq's Chinese list) but not a
frequent one ("韩国" and "首都" in "韩国的首都是哪里？", not "哪里"). A mixed question counts both. It is a lenient,
language-independent check of *what* the answer is about, not of whether it is right: misheard speech under noise
shows up as answers about something else.

```python
on_topic("The capital of Germany is Berlin.", "What is the capital of Germany?")   # True
on_topic("I like pizza.", "What is the capital of Germany?")                       # False
```
"""

from __future__ import annotations

import re
from functools import lru_cache

from ._error_rate import HAN_CHARACTERS, normalize_text

# wordfreq's most frequent words count as function words (Chinese: its 1,000 most frequent include "哪里", "几个",
# "什么", "介绍", which every answer may say)
FREQUENT_WORDS = {"en": 300, "zh": 1000}
_CJK_RUN = re.compile(f"[{HAN_CHARACTERS}]+")
_LATIN_WORD = re.compile(r"[a-z][a-z']*")


@lru_cache(maxsize=2)
def _frequent(language: str) -> frozenset[str]:
    from wordfreq import top_n_list

    return frozenset(top_n_list(language, FREQUENT_WORDS[language]))


@lru_cache(maxsize=1)
def _chinese_words() -> frozenset[str]:
    from wordfreq import get_frequency_dict

    return frozenset(word for word in get_frequency_dict("zh") if len(word) == 2)


@lru_cache(maxsize=1)
def _stemmer():
    from nltk.stem.porter import PorterStemmer  # rouge-score's own stemmer

    return PorterStemmer()


def content_terms(text: str) -> set[str]:
    """The English stems and Chinese two-character words of `text` that say what it is about (see the module docstring)."""
    normalized = normalize_text(text)
    frequent_en, frequent_zh = _frequent("en"), _frequent("zh")
    terms = {_stemmer().stem(word) for word in _LATIN_WORD.findall(normalized) if len(word) > 2 and word not in frequent_en}
    for run in _CJK_RUN.findall(text):
        for pair in (run[i : i + 2] for i in range(len(run) - 1)):
            if pair in _chinese_words() and pair not in frequent_zh:
                terms.add(pair)
    return terms


def on_topic(answer: str | None, question: str) -> bool | None:
    """Whether `answer` shares a content term with `question`; None when the question has none to share."""
    wanted = content_terms(question)
    if not wanted:
        return None
    return bool(answer) and not wanted.isdisjoint(content_terms(answer))
