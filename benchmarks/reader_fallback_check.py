"""Zero-training check of Whisper's fallback for the reader (issue 22, item 5): recognition with and without it.

    python benchmarks/reader_fallback_check.py BASE SET [--noise white:10,white:0,babble:10,babble:0] [--limit N]

SET: `en` (the 120 held-out English clips of `llasm eval --understanding`, voiced once), `zh-all` (the 40 committed
Chinese and code-switched clips) or `real` (Debian's pocketsphinx recordings). For the clean clips and each noisy
copy (`data.noise`), the `whisper_reader`'s recognition is scored greedy only (`reader_temperatures=None`) and with
Whisper's fallback (`[0.0, 0.2, ..., 1.0]`, compression ratio 2.4, mean log-probability -1.0), beside the same
Whisper's own greedy transcription (the cascade's). Prints one JSON line per condition: error rates (WER for
English, CER otherwise), readings that loop, windows read again, and the largest share of a window's token budget
any reading used (does the `num_audio_tokens` cap bind?).
"""

from __future__ import annotations

import argparse
import json
import re
import time

import torch

from modeling_llasm.data.noise import noisy_copies, parse_noise_conditions
from modeling_llasm.evaluation.cascade import WhisperTranscriber, whisper_dir_for
from modeling_llasm.evaluation.evaluator import load_llasm
from modeling_llasm.evaluation.understanding import adaptor_transcripts, error_unit, recognition_error
from modeling_llasm.processing_llasm import load_audio

WHISPER_TEMPERATURES = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
_RUN = re.compile(r"\b(\w+)(?:\W+\1\b){2,}|(\w)\2{4,}", re.IGNORECASE)


def clip_set(name: str) -> tuple[list, list[str], list[str]]:
    """Clips, reference transcripts and languages of a named set."""
    if name == "real":
        from modeling_llasm.data.real_speech import pocketsphinx_testdata

        rows = pocketsphinx_testdata()
        return [load_audio(r["path"]) for r in rows], [r["text"] for r in rows], ["en"] * len(rows)
    from modeling_llasm.cache import llasm_cache_dir
    from modeling_llasm.evaluation import tasks
    from modeling_llasm.evaluation.understanding import build_understanding_set, committed_clip_manifest

    if name == "en":
        manifest = build_understanding_set(llasm_cache_dir() / "eval" / "understanding-en")
    else:
        manifest = committed_clip_manifest(llasm_cache_dir() / "eval" / f"understanding-{name}", None if name == "zh-all" else name)
    records = [r for r in tasks.read_records(manifest) if tasks.classify_record(r) == tasks.SPOKEN]
    return ([load_audio(tasks.audio_paths(r)[0]) for r in records], [tasks.gold_transcripts(r)[0] for r in records],
            [r.get("language", "en") for r in records])  # fmt: skip


class ReadingProbe:
    """Counts the reader's windows and second readings, and the largest share of a window's token budget that a
    final reading used (1.0: the cap bound)."""

    def __init__(self, reader):
        self.reader, self.windows, self.again, self.most = reader, 0, 0, 0.0
        self._decode, self._read_windows = reader._decode, reader._read_windows
        reader._decode, reader._read_windows = self.decode, self.read_windows

    def decode(self, states, mask, max_pieces, languages, temperature=0.0, generators=None):
        if temperature == 0.0:
            self.windows += len(max_pieces)
        else:
            self.again += len(max_pieces)
        return self._decode(states, mask, max_pieces, languages, temperature, generators)

    def read_windows(self, states, mask, max_pieces, language):
        out = self._read_windows(states, mask, max_pieces, language)
        pieces = self.reader._tables()[0]
        for ids, budget in zip(out[0], max_pieces):
            self.most = max(self.most, sum(len(pieces[i]) for i in ids) / budget)
        return out

    def remove(self):
        del self.reader._decode, self.reader._read_windows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base")
    parser.add_argument("set", choices=["en", "zh-all", "zh", "real"])
    parser.add_argument("--noise", default="white:10,white:0,babble:10,babble:0")
    parser.add_argument("--limit", type=int, default=None)
    args = parser.parse_args()
    clips, references, languages = clip_set(args.set)
    clips, references, languages = clips[: args.limit], references[: args.limit], languages[: args.limit]
    unit = error_unit(languages)
    model, processor = load_llasm(args.base)
    reader = model.model.multi_modal_projector
    whisper = WhisperTranscriber.from_pretrained(whisper_dir_for(args.base))
    conditions = [("clean", None)] + [(f"{k}:{s:g}", (k, s)) for k, s in parse_noise_conditions(args.noise)] if args.noise else [("clean", None)]
    for name, noise in conditions:
        heard = noisy_copies(clips, *noise) if noise else clips
        row = {"base": args.base, "set": args.set, "condition": name, "clips": len(heard), "unit": unit}
        whisper_texts = whisper(heard)
        row["whisper"] = round(recognition_error(references, whisper_texts, unit), 4)
        row["whisper_loops"] = sum(bool(_RUN.search(t)) for t in whisper_texts)
        for arm, temperatures in (("greedy", None), ("fallback", WHISPER_TEMPERATURES)):
            model.config.reader_temperatures = temperatures
            probe = ReadingProbe(reader)
            start = time.perf_counter()
            with torch.no_grad():
                texts, _ = adaptor_transcripts(model, processor, heard, batch_size=8)
            probe.remove()
            row[arm] = {"error": round(recognition_error(references, texts, unit), 4), "loops": sum(bool(_RUN.search(t)) for t in texts),
                        "windows": probe.windows, "read_again": probe.again, "most_budget_used": round(probe.most, 3),
                        "seconds": round(time.perf_counter() - start, 1)}  # fmt: skip
            row[arm]["ratio_to_whisper"] = round(row[arm]["error"] / row["whisper"], 3) if row["whisper"] else None
        print(json.dumps(row, ensure_ascii=False), flush=True)


if __name__ == "__main__":
    main()
