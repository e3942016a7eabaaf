"""The CTC head's sub-vocabulary: the LLM tokens English speech is mostly made of, and targets mapped onto it.

Scoring every CTC frame against all ~49k LLM tokens makes the vocabulary projection most of a CTC step (10x slower
than 4,096 tokens on a 2-core CPU, docs/training.md). The head therefore scores a sub-vocabulary: the tokens of
the most frequent English words (`wordfreq` frequencies, spelled as they occur mid-sentence, capitalised and
sentence-initial) plus every single-character token, so that *any* text can be spelled with it. A transcript
token outside the sub-vocabulary is split into the longest in-vocabulary pieces of its own string
(`SubVocabulary.targets`), so no target is ever dropped or mapped to the blank.

```python
vocab = SubVocabulary.build(tokenizer, size=4096)
vocab.token_ids          # LLM token ids, sorted: the CTC head's classes 1..size (0 is the blank)
vocab.targets([...])     # LLM token ids of a transcript -> class indices (1-based)
```
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property

from ..reading_llasm import spell_token


def _frequent_words(count: int) -> list[tuple[str, float]]:
    try:
        from wordfreq import top_n_list, word_frequency
    except ImportError as error:  # pragma: no cover - a dependency of the `embedded` extra
        raise ImportError("The CTC sub-vocabulary needs `wordfreq` (pip install wordfreq).") from error
    return [(word, word_frequency(word, "en")) for word in top_n_list("en", count)]


@dataclass
class SubVocabulary:
    """LLM token ids scored by the CTC head (`token_ids`) and the mapping of any LLM token onto them."""

    token_ids: list[int]
    pieces: dict[int, list[int]] = field(default_factory=dict)  # LLM id outside the vocabulary -> in-vocab ids

    @classmethod
    def build(cls, tokenizer, size: int = 4096, words: int = 50_000, extra_texts: Iterable[str] = ()) -> SubVocabulary:
        """The `size` most frequent LLM tokens of English (word frequencies from `wordfreq`, plus `extra_texts`
        counted once per occurrence at the median word frequency) and every single-character token."""
        vocab = tokenizer.get_vocab()
        special = set(tokenizer.all_special_ids)
        singles = sorted(i for token, i in vocab.items() if len(token) == 1 and i not in special)
        if size <= len(singles):
            raise ValueError(f"size={size} must exceed the {len(singles)} single-character tokens the vocabulary always holds.")
        frequency: Counter = Counter()
        frequent = _frequent_words(words)
        # how a word is written: mid-sentence, capitalised (names, titles), sentence-initial
        for word, freq in frequent:
            for text, share in ((" " + word, 0.8), (" " + word.capitalize(), 0.1), (word.capitalize(), 0.1)):
                for token in tokenizer(text, add_special_tokens=False)["input_ids"]:
                    frequency[token] += share * freq
        median = sorted(freq for _, freq in frequent)[len(frequent) // 2] if frequent else 1.0
        for text in extra_texts:
            for token in tokenizer(text, add_special_tokens=False)["input_ids"]:
                frequency[token] += median
        for punctuation in (".", ",", "?", "!", "'s", "'", "-"):
            for token in tokenizer(punctuation, add_special_tokens=False)["input_ids"]:
                frequency[token] += 1.0  # always in, whatever the word list says
        chosen = set(singles)
        for token, _ in frequency.most_common():
            if len(chosen) >= size:
                break
            if token not in special:
                chosen.add(token)
        return cls(sorted(chosen)).with_tokenizer(tokenizer)

    def with_tokenizer(self, tokenizer) -> SubVocabulary:
        """Precompute `pieces` for every LLM token outside the vocabulary (greedy longest in-vocabulary prefix of
        its string; single characters always match)."""
        vocab = tokenizer.get_vocab()
        inside = set(self.token_ids)
        by_string = {token: i for token, i in vocab.items() if i in inside}
        longest = max(len(token) for token in by_string)
        pieces: dict[int, list[int]] = {}
        for token, i in vocab.items():
            if i not in inside:  # no single-character token (special tokens): nothing to spell it with -> []
                pieces[i] = spell_token(token, by_string, longest)
        self.pieces = pieces
        return self

    @property
    def size(self) -> int:
        return len(self.token_ids)

    def targets(self, llm_ids: Sequence[int]) -> list[int]:
        """1-based class indices (0 is the CTC blank) spelling `llm_ids` with the vocabulary."""
        index = self._index
        out = []
        for token in llm_ids:
            out.extend(index[t] for t in ([token] if token in index else self.pieces.get(token, [])))
        return out

    @cached_property
    def _index(self) -> dict[int, int]:
        return {token: i + 1 for i, token in enumerate(self.token_ids)}


__all__ = ["SubVocabulary"]
