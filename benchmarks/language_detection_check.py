"""Language detection of the reader over every language vs over the model's own languages (issue 22).

    python benchmarks/language_detection_check.py [BASE]     # default: the bilingual base

A multilingual Whisper detects one of its 99 languages per window. The bilingual base answers in Chinese and English
only; a code-switched question detected as a third language is read in it ("什么是 artificial intelligence？" ->
"Je m'en suis...") and answered in it. This reads the held-out clips (the committed Chinese and code-switched ones,
the 120 English ones) and the 10 real English recordings twice: detecting among every language
(`reader_detect_languages=None`) and among `["zh", "en"]`, and prints per set the detected languages and the
recognition error (CER for Chinese and Chinese-led mixed clips, WER otherwise) of each, and the clips that changed.
"""

from __future__ import annotations

import collections
import json
import sys
from pathlib import Path

import torch

from modeling_llasm.conversion.build_base import bilingual_base_dir
from modeling_llasm.data.chat import read_manifest
from modeling_llasm.data.real_speech import pocketsphinx_testdata
from modeling_llasm.evaluation.evaluator import load_llasm
from modeling_llasm.evaluation.understanding import build_understanding_set, committed_clip_manifest
from modeling_llasm.cache import llasm_cache_dir
from modeling_llasm.metrics._error_rate import error_rate
from modeling_llasm.processing_llasm import load_audio


def read(model, processor, clips, batch_size: int = 8) -> tuple[list[str], list[list[str | None]]]:
    """Each clip's reading and the language of each of its windows."""
    texts, languages = [], []
    for start in range(0, len(clips), batch_size):
        chunk = clips[start : start + batch_size]
        batch = processor(text=[processor.audio_token] * len(chunk), audio=chunk)
        features = model.get_audio_features(batch["input_features"], batch["input_features_mask"])
        window = 0
        for clip in chunk:
            count = len(processor.audio_windows(clip))
            ids = [t for w in features.recognized_token_ids[window : window + count] for t in w]
            texts.append(processor.decode(ids, skip_special_tokens=True).strip())
            languages.append(features.audio_languages[window : window + count])
            window += count
    return texts, languages


def check(base) -> dict:
    model, processor = load_llasm(base)
    eval_dir = llasm_cache_dir() / "eval"
    sets = {}
    for name, manifest in (("zh-all", committed_clip_manifest(eval_dir / "understanding-zh-all")),
                           ("en", build_understanding_set(eval_dir / "understanding-en"))):  # fmt: skip
        parts = [(r.get("kind", "en"), r["messages"][0]["content"][0]) for r in read_manifest(manifest, resolve_paths=True)]
        sets[name] = [(kind, part["path"], part["transcript"]) for kind, part in parts]
    sets["real-en"] = [("en", row["path"], row["text"]) for row in pocketsphinx_testdata()]
    report = {"base": str(base)}
    for name, rows in sets.items():
        clips = [load_audio(path) for _, path, _ in rows]
        runs = {}
        for label, candidates in (("all", None), ("zh,en", ["zh", "en"])):
            model.config.reader_detect_languages = candidates
            with torch.no_grad():
                runs[label] = read(model, processor, clips)
        kinds = sorted({kind for kind, _, _ in rows})
        summary = {}
        for label, (texts, languages) in runs.items():
            per_kind = {}
            for kind in kinds:
                index = [i for i, row in enumerate(rows) if row[0] == kind]
                unit = "char" if kind in ("zh", "zh_en") else "word"
                per_kind[kind] = {
                    "detected": dict(collections.Counter(lang for i in index for lang in languages[i])),
                    f"{'cer' if unit == 'char' else 'wer'}": round(float(error_rate(
                        [rows[i][2] for i in index], [texts[i] for i in index], unit, normalize="zh" if unit == "char" else True)), 4),
                }  # fmt: skip
            summary[label] = per_kind
        changed = [{"kind": rows[i][0], "reference": rows[i][2], **{label: {"read": runs[label][0][i], "languages": runs[label][1][i]}
                                                                   for label in runs}}  # fmt: skip
                   for i in range(len(rows)) if runs["all"][1][i] != runs["zh,en"][1][i]]
        report[name] = {"clips": len(rows), "by_detection": summary, "changed": changed}
    model.config.reader_detect_languages = None
    return report


if __name__ == "__main__":
    print(json.dumps(check(Path(sys.argv[1]) if len(sys.argv) > 1 else bilingual_base_dir()), ensure_ascii=False, indent=1))
