"""`llasm train --languages`: the language mix of the recipe (parsing, data split, interleaving, refusals, per-language
held-out scores and retention) on tiny random models. The real bilingual smoke run is in test_training_bilingual_smoke.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modeling_llasm.cli import main
from modeling_llasm.data.text_sources import load_questions, retention_prompts, text_skill_prompts
from modeling_llasm.evaluation.understanding import text_language
from modeling_llasm.training.recipe import (
    RecipeSettingsError, check_base_languages, interleave_languages, language_mix, seed_counts,
)  # fmt: skip
from llasm_training_fixtures import write_tiny_dataset
from tiny_llasm import build_tiny_llasm, multilingual_reader, reader_llasm


def save(model_and_processor, directory: Path) -> Path:
    model, processor = model_and_processor
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


# ------------------------------------------------------------------------------------------ plumbing


def test_language_mix_gives_shares_in_the_order_asked():
    assert language_mix("en") == {"en": 1.0}
    assert language_mix("en,zh") == {"en": 0.5, "zh": 0.5}
    assert language_mix(" zh , en ") == {"zh": 0.5, "en": 0.5}
    assert language_mix("en=3,zh=1") == {"en": 0.75, "zh": 0.25}
    assert language_mix(["zh"]) == {"zh": 1.0} and language_mix({"en": 1, "zh": 3}) == {"en": 0.25, "zh": 0.75}


@pytest.mark.parametrize(
    ("languages", "message"),
    [
        ("en,fr", r"unknown language\(s\) \['fr'\]; the recipe's data has \['en', 'zh'\]"),
        ("en,en", r"each language once, got \['en', 'en'\]"),
        ("en=0,zh=1", r"weights must be positive finite numbers, got \[\('en', 0.0\)\]"),
        ("en=inf,zh=1", r"weights must be positive finite numbers, got \[\('en', inf\)\]"),
        ("en=lots", r"the weight of 'en' must be a number, got 'lots'"),
        ("en,", r"expected comma-separated language codes"),
        ([], r"give at least one language"),
    ],
)
def test_language_mix_refuses_bad_input_naming_it(languages, message):
    with pytest.raises(RecipeSettingsError, match=message):
        language_mix(languages)


def test_seed_counts_keep_the_english_default_and_split_a_mix():
    # English alone: exactly the counts the recipe always built (the default stays byte-identical)
    assert seed_counts(4800, 600, {"en": 1.0}) == ({"en": 4800}, {"en": 600})
    assert seed_counts(16, 0, {"en": 1.0}) == ({"en": 16}, {})
    assert seed_counts(4800, 600, {"en": 0.5, "zh": 0.5}) == ({"en": 2400, "zh": 2400}, {"en": 300})
    assert seed_counts(100, 40, {"zh": 0.75, "en": 0.25}) == ({"zh": 75, "en": 25}, {"en": 10})
    assert seed_counts(100, 40, {"zh": 1.0}) == ({"zh": 100}, {})  # assistant-style text exists in English only
    assert seed_counts(3, 0, {"en": 0.9, "zh": 0.1}) == ({"en": 3, "zh": 2}, {})  # each language keeps one held out


def test_interleave_languages_holds_the_share_in_every_prefix():
    english = [{"id": f"en{i}", "language": "en"} for i in range(6)]
    chinese = [{"id": f"zh{i}", "language": "zh"} for i in range(6)]
    assert interleave_languages(english, {"en": 1.0}) == english  # one language: unchanged
    mixed = interleave_languages(english + chinese, {"en": 0.5, "zh": 0.5})
    assert [r["id"] for r in mixed[:4]] == ["en0", "zh0", "en1", "zh1"]
    assert [r for r in mixed if r["language"] == "zh"] == chinese  # each language's own order kept
    weighted = interleave_languages(english + chinese, {"en": 0.75, "zh": 0.25})
    assert [r["language"] for r in weighted[:8]].count("zh") == 2
    assert [r["id"] for r in weighted[-4:]] == ["zh2", "zh3", "zh4", "zh5"]  # English ran out: the rest follows
    assert interleave_languages([{"id": "a"}, {"id": "b", "language": "en"}], {"en": 1.0}) == [{"id": "a"}, {"id": "b", "language": "en"}]


def test_which_bases_hear_chinese():
    english_reader, _ = reader_llasm()
    bilingual_reader, _ = multilingual_reader()
    stack, _ = build_tiny_llasm()
    check_base_languages("multi", bilingual_reader.config, ["en", "zh"])
    check_base_languages("english", english_reader.config, ["en"])
    with pytest.raises(RecipeSettingsError, match=r"the base english cannot hear \['zh'\]: its Whisper .*no <\|zh\|> language token"):
        check_base_languages("english", english_reader.config, ["en", "zh"])
    with pytest.raises(RecipeSettingsError, match=r"the base stack cannot hear \['zh'\]"):  # a 64-token (English) Whisper
        check_base_languages("stack", stack.config, ["zh"])
    stack.config.audio_config.vocab_size = 51865  # a multilingual Whisper's vocabulary: any adaptor hears both
    check_base_languages("stack", stack.config, ["en", "zh"])


# ------------------------------------------------------------------------------------------ retention prompts


def test_retention_prompts_add_chinese_for_a_chinese_or_mixed_set():
    english, chinese = text_skill_prompts("en"), text_skill_prompts("zh")
    assert len(english) == len(chinese) == 24 and text_skill_prompts() == english
    assert all(text_language(p) == "en" for p in english) and all(text_language(p) == "zh" for p in chinese)
    assert retention_prompts(["en", "en", None]) == english
    assert retention_prompts(["zh"]) == retention_prompts(["en", "zh"]) == english + chinese
    assert not set(chinese) & set(load_questions("zh"))  # never training text
    with pytest.raises(ValueError, match=r"unknown languages \['fr'\]"):
        retention_prompts(["fr"])
    with pytest.raises(ValueError, match=r"language must be one of \('en', 'zh'\), got 'fr'"):
        text_skill_prompts("fr")


def test_understanding_retention_measures_both_languages_on_a_chinese_set(tmp_path):
    """`llasm eval --understanding --clips zh|zh-all`: retention on the English and the Chinese prompts, per language."""
    from modeling_llasm.evaluation.understanding import evaluate_understanding

    data = write_tiny_dataset(tmp_path / "data", bilingual=True)
    model, processor = multilingual_reader()
    mixed = data / "stage2" / "heldout" / "manifest.jsonl"
    results = evaluate_understanding(model, mixed, processor=processor, base_model=model, cascade=False, max_new_tokens=2,
                                     batch_size=16)  # fmt: skip
    skills = results["text_skills"]
    assert skills["num_prompts"] == 48 and sorted(skills["by_language"]) == ["en", "zh"]
    assert all(row["num_prompts"] == 24 and row["retention_rougeL"] == 1.0 for row in skills["by_language"].values())
    assert [s["prompt"] for s in skills["samples"]] == text_skill_prompts("en") + text_skill_prompts("zh")
    english = mixed.with_name("english.jsonl")  # beside the audio: its paths are relative
    english.write_text("".join(line + "\n" for line in mixed.read_text().splitlines() if '"language": "en"' in line))
    results = evaluate_understanding(model, english, processor=processor, base_model=model, cascade=False, max_new_tokens=2)
    assert results["text_skills"]["num_prompts"] == 24 and list(results["text_skills"]["by_language"]) == ["en"]


# ------------------------------------------------------------------------------------------ the recipe


def test_recipe_trains_a_language_mix_and_scores_each_language(tmp_path):
    """`--smoke --languages en,zh --reader-distill` on a tiny two-language reader: both languages in every split the
    run takes (the data files hold them in blocks), stage 2 trained, held-out ASR as WER (en) and CER (zh), the
    understanding set and the retention prompts in both languages, the mix in the plan and the summary."""
    base = save(multilingual_reader(), tmp_path / "base")
    data = write_tiny_dataset(tmp_path / "data", bilingual=True)
    run_dir = tmp_path / "run"
    argv = ["train", "--smoke", "--precision", "fp32", "--languages", "en,zh", "--reader-distill", "--base-dir", str(base),
            "--data-dir", str(data), "--run-dir", str(run_dir), "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["languages"] == {"en": 0.5, "zh": 0.5}
    assert json.loads((run_dir / "plan.json").read_text())["languages"] == {"en": 0.5, "zh": 0.5}
    by_language = summary["records_by_language"]
    assert by_language["stage2_train"] == {"en": 3, "zh": 3} and by_language["stage2_heldout"] == {"en": 2, "zh": 2}
    assert by_language["stage1_train"] == {"en": 4, "zh": 4} and by_language["stage1_heldout"] == {"en": 2, "zh": 2}
    assert summary["phases"]["stage2"]["steps"] == 2
    trained_on = [json.loads(line)["language"] for line in (run_dir / "stage2_data" / "train.jsonl").read_text().splitlines()]
    assert trained_on[:4] == ["en", "zh", "en", "zh"]  # the first batches see both languages
    final = summary["heldout_by_language"]["final"]
    assert final["en"]["unit"] == "wer" and final["zh"]["unit"] == "cer"
    assert final["en"]["clips"] == final["zh"]["clips"] == 2 and summary["final_heldout_wer"] == final["en"]["error"]
    understanding = summary["understanding"]
    assert sorted(understanding["by_language"]) == ["en", "zh"] and understanding["spoken"]["error_unit"] == "cer"
    assert understanding["text_skill_retention_by_language"] == {"en": 1.0, "zh": 1.0}  # the LLM stayed frozen
    results = json.loads((run_dir / "understanding" / "results.json").read_text())
    assert results["text_skills"]["num_prompts"] == 48

    # a resume keeps the mix it was planned with; given data must hold the languages asked
    assert main([*argv, "--resume", "--languages", "en"]) == 2
    other = ["train", "--smoke", "--precision", "fp32", "--languages", "en", "--base-dir", str(base), "--data-dir", str(data),
             "--run-dir", str(tmp_path / "run-en"), "--no-progress"]  # fmt: skip
    assert main(other) == 2
    assert not (tmp_path / "run-en" / "plan.json").exists()


def test_english_only_default_is_unchanged(tmp_path):
    """Without --languages on English data: no per-language keys in the phases' results, the same held-out WER key."""
    base = save(reader_llasm(), tmp_path / "base")
    data = write_tiny_dataset(tmp_path / "data")
    run_dir = tmp_path / "run"
    argv = ["train", "--smoke", "--precision", "fp32", "--base-dir", str(base), "--data-dir", str(data), "--run-dir", str(run_dir),
            "--no-progress", "--no-understanding"]  # fmt: skip
    assert main(argv) == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["languages"] == {"en": 1.0} and "records_by_language" not in summary and "heldout_by_language" not in summary
    assert set(json.loads((run_dir / "stage1_lm" / "done.json").read_text())) == {"metrics", "heldout_wer", "steps", "log_history", "saved"}


def test_recipe_refuses_chinese_on_an_english_only_base_before_any_work(tmp_path, capsys):
    base = save(reader_llasm(), tmp_path / "english-base")
    run_dir = tmp_path / "run"
    argv = ["train", "--smoke", "--precision", "fp32", "--languages", "en,zh", "--base-dir", str(base), "--run-dir", str(run_dir),
            "--no-progress"]  # fmt: skip
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert f"the base {base} cannot hear ['zh']" in error and "llasm build-base --bilingual" in error
    assert not (run_dir / "data").exists()  # refused before the data build
    # Chinese data on the English base, the languages taken from the data
    data = write_tiny_dataset(tmp_path / "data", bilingual=True)
    assert main(["train", "--smoke", "--precision", "fp32", "--base-dir", str(base), "--data-dir", str(data),
                 "--run-dir", str(tmp_path / "run2"), "--no-progress"]) == 2  # fmt: skip
    assert "cannot hear ['zh']" in capsys.readouterr().err
    # without a base, a mix with Chinese uses the bilingual base's reader only
    assert main(["train", "--smoke", "--languages", "zh", "--adaptor-type", "stack_mlp", "--run-dir", str(tmp_path / "run3")]) == 2
    assert "builds only the bilingual base's whisper_reader" in capsys.readouterr().err
    assert main(["train", "--smoke", "--languages", "en,de", "--run-dir", str(tmp_path / "run4")]) == 2
    assert "unknown language(s) ['de']" in capsys.readouterr().err
