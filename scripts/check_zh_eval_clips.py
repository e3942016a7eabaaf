"""How well a multilingual Whisper hears the committed Chinese / code-switched clips: CER per kind.

    python scripts/check_zh_eval_clips.py [WHISPER_DIR]    # default: $LLASM_CACHE/whisper-base (the converted
                                                           # multilingual base, see docs/evaluation.md)

The language of each clip is forced in Whisper's prompt (the question's `language`). CER with `normalize="zh"`
(punctuation removed, full/half width, traditional -> simplified, Latin case-folded, spaces ignored).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import soundfile as sf
import torch
from transformers import WhisperForConditionalGeneration, WhisperProcessor


ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from modeling_llasm.cache import llasm_cache_dir  # noqa: E402
from modeling_llasm.metrics import character_error_rate  # noqa: E402


def main() -> int:
    model_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else llasm_cache_dir() / "whisper-base"
    if not (model_dir / "config.json").is_file():
        raise SystemExit(f"no Whisper model in {model_dir}")
    clips = ROOT / "modeling_llasm" / "data" / "eval_clips_zh"
    rows = [json.loads(line) for line in (clips / "questions.jsonl").read_text(encoding="utf-8").splitlines()]
    processor = WhisperProcessor.from_pretrained(model_dir)
    model = WhisperForConditionalGeneration.from_pretrained(model_dir).eval()
    by_kind: dict[str, tuple[list[str], list[str]]] = {}
    for row in rows:
        audio, sr = sf.read(clips / row["file"], dtype="float32")
        features = processor(audio, sampling_rate=sr, return_tensors="pt").input_features
        with torch.no_grad():
            ids = model.generate(features, language=row["language"], task="transcribe", max_new_tokens=64)
        text = processor.batch_decode(ids, skip_special_tokens=True)[0].strip()
        refs, hyps = by_kind.setdefault(row["kind"], ([], []))
        refs.append(row["text"])
        hyps.append(text)
        print(f"{row['file']}\t{row['text']}\t{text}", flush=True)
    for kind, (refs, hyps) in by_kind.items():
        print(f"{kind}: {len(refs)} clips, CER {character_error_rate(refs, hyps, normalize='zh'):.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
