"""`llasm build-data`: voice conversation files (or the embedded seed text) into a 16 kHz spoken-chat dataset."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _rates(value: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in _csv(value))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers like 0.9,1.0,1.2, got {value!r}") from None


def _counts(value: str) -> dict[str, int]:
    out = {}
    for item in _csv(value):
        lang, sep, n = item.partition("=")
        if not sep or not n.strip().isdigit():
            raise argparse.ArgumentTypeError(f"expected LANG=N[,LANG=N] like en=12000,zh=3000, got {value!r}")
        out[lang.strip()] = int(n)
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="*", type=Path,
                        help="conversation files: ShareGPT, Alpaca/GPT-4-LLM or chat 'messages' records, JSON or JSONL")
    parser.add_argument("--seed-text", action="store_true",
                        help="build the embedded default instead: stage-1 ASR set and stage-2 spoken questions "
                             "from the packaged text source (train + held-out, disjoint by text and voice)")
    parser.add_argument("-o", "--output", type=Path, default=None,
                        help="dataset directory (default: $LLASM_CACHE/data/<seed-text | first input name>)")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: CPU count; 1 = no pool)")
    parser.add_argument("--seed", type=int, default=0, help="seed for voices, rates, instructions and text (default 0)")
    parser.add_argument("--overwrite", action="store_true", help="delete a previous build in the output directory")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every skipped record")

    voices = parser.add_argument_group("voices")
    voices.add_argument("--engines", type=_csv, default=None,
                        help="TTS engines to draw voices from, e.g. espeak-ng,flite (default: all installed)")
    voices.add_argument("--voices-en", type=_csv, default=None,
                        help="English voice ids, e.g. espeak-ng:en-us+m3,flite:rms (default: all but held-out)")
    voices.add_argument("--voices-zh", type=_csv, default=None, help="Mandarin voice ids, e.g. espeak-ng:cmn+f2")
    voices.add_argument("--rates", type=_rates, default=None,
                        help="speaking rates to rotate, 1.0 = normal (default 0.85,0.95,1.0,1.1,1.2)")
    voices.add_argument("--max-audio-seconds", type=float, default=30.0,
                        help="skip turns whose audio is longer (default 30, Whisper's window)")
    voices.add_argument("--espeak-backend", choices=("auto", "binary", "library"), default="auto",
                        help="espeak-ng through its binary or the espeakng-loader library; "
                             "default: the binary when installed")
    voices.add_argument("--list-voices", action="store_true", help="print the available voice ids and exit")

    conv = parser.add_argument_group("conversation selection (files only)")
    conv.add_argument("--languages", type=_csv, default=["en", "zh"], help="languages to keep (default en,zh)")
    conv.add_argument("--max-human-chars", type=int, default=400, help="longest human turn kept (default 400)")
    conv.add_argument("--min-human-chars", type=int, default=2, help="shortest human turn kept (default 2)")
    conv.add_argument("--max-assistant-chars", type=int, default=None, help="longest assistant turn kept (default: any)")
    conv.add_argument("--max-symbol-ratio", type=float, default=0.2,
                      help="drop human turns with a larger share of symbol characters (default 0.2)")
    conv.add_argument("--keep-code", action="store_true", help="keep turns containing code")
    conv.add_argument("--keep-urls", action="store_true", help="keep turns containing URLs")
    conv.add_argument("--keep-tables", action="store_true", help="keep turns containing tables")
    conv.add_argument("--check-assistant", action="store_true",
                      help="also drop conversations whose assistant turns contain code / URLs / tables")
    conv.add_argument("--limit", type=int, default=None, help="build only the first N records (trial runs)")

    seed = parser.add_argument_group("seed text (--seed-text)")
    seed.add_argument("--utterances", type=_counts, default=None,
                      help="distinct stage-1 utterances per language (default en=12000,zh=3000)")
    seed.add_argument("--heldout-fraction", type=float, default=0.02, help="stage-1 share held out (default 0.02)")
    seed.add_argument("--question-heldout-fraction", type=float, default=0.1,
                      help="stage-2 question share held out (default 0.1)")


def run(args: argparse.Namespace) -> int:
    from modeling_llasm.cache import llasm_cache_dir
    from modeling_llasm.data import builder, tts
    from modeling_llasm.data.filters import FilterConfig

    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    if args.espeak_backend != "auto":
        backend = args.espeak_backend
        tts.register_engine("espeak-ng", lambda: tts.EspeakNGEngine(backend=backend))
    if args.list_voices:
        for language in ("en", "zh"):
            for voice in tts.list_voices(language, args.engines):
                print(f"{language}\t{voice}")
        return 0
    if args.seed_text == bool(args.inputs):
        print("error: give conversation files or --seed-text (exactly one of them)", file=sys.stderr)
        return 2
    if args.engines:
        unknown = [e for e in args.engines if e not in tts.engine_names()]
        if unknown:
            print(f"error: unknown TTS engines {unknown}; registered: {tts.engine_names()}", file=sys.stderr)
            return 2
    rates = args.rates or builder.DEFAULT_RATES
    common = dict(num_workers=args.workers, progress=not args.no_progress, overwrite=args.overwrite)
    try:
        if args.seed_text:
            from modeling_llasm.data.text_sources import seed_text_split

            output = args.output or llasm_cache_dir() / "data" / "seed-text"
            voices = None
            if args.engines or args.voices_en or args.voices_zh:
                voices = {lang: tts.list_voices(lang, args.engines) for lang in ("en", "zh")}
                voices.update({k: v for k, v in (("en", args.voices_en), ("zh", args.voices_zh)) if v})
            split = seed_text_split(args.utterances, heldout_fraction=args.heldout_fraction,
                                    question_heldout_fraction=args.question_heldout_fraction, seed=args.seed,
                                    voices=voices)  # fmt: skip
            reports = builder.build_seed_text(
                output, counts=args.utterances, seed=args.seed, heldout_fraction=args.heldout_fraction,
                question_heldout_fraction=args.question_heldout_fraction, rates=rates,
                max_audio_seconds=args.max_audio_seconds, split=split, **common,
            )  # fmt: skip
            for report in reports.values():
                print(report.summary())
            return 0
        output = args.output or llasm_cache_dir() / "data" / args.inputs[0].name.split(".")[0]
        if args.voices_en or args.voices_zh or args.engines:
            voices = builder.default_voices(args.languages, args.engines)
            voices.update({k: v for k, v in (("en", args.voices_en), ("zh", args.voices_zh)) if v})
        else:
            voices = builder.default_voices(args.languages)
        filters = FilterConfig(
            languages=tuple(args.languages), min_human_chars=args.min_human_chars, max_human_chars=args.max_human_chars,
            max_assistant_chars=args.max_assistant_chars, skip_code=not args.keep_code, skip_urls=not args.keep_urls,
            skip_tables=not args.keep_tables, max_symbol_ratio=args.max_symbol_ratio,
            check_assistant=args.check_assistant,
        )  # fmt: skip
        config = builder.BuildConfig(seed=args.seed, voices=voices, rates=rates, filters=filters,
                                     max_audio_seconds=args.max_audio_seconds)  # fmt: skip
        report = builder.build_from_files(args.inputs, output, config=config, limit=args.limit, **common)
        print(report.summary())
        return 0
    except (builder.BuildConfigMismatch, FileNotFoundError, ValueError, ImportError, tts.TTSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="llasm build-data", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
