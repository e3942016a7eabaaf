"""Real recorded speech for tests and evaluation, from packages whose licence allows it (never committed here).

`pocketsphinx_testdata()`: the 10 transcribed English recordings of Debian's `pocketsphinx-testdata`
(0.8+5prealpha+1-15, BSD-2-Clause, Carnegie Mellon University; docs/evaluation.md): 5 "cards" utterances (a male
speaker reading playing cards, "five five" among them) and 5 LibriVox sentences (Sense and Sensibility, a public-domain
recording), 16 kHz mono WAV, 1.1-7.1 s. Found in `/usr/share/pocketsphinx/test/data` when the package is installed,
else fetched once with `apt-get download` (no root needed) and unpacked into `$LLASM_CACHE/real_speech/`.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from ..cache import llasm_cache_dir


POCKETSPHINX_PACKAGE = "pocketsphinx-testdata"
_SYSTEM_DIR = Path("/usr/share/pocketsphinx/test/data")
_LINE = re.compile(r"^<s>\s*(.*?)\s*</s>\s*\((\S+)\)\s*$")


def _unpack_pocketsphinx(target: Path) -> Path:
    """`apt-get download` the package and unpack its data into `target`; return the data directory."""
    if not (shutil.which("apt-get") and shutil.which("dpkg-deb")):
        raise FileNotFoundError(
            f"{POCKETSPHINX_PACKAGE} is not installed and apt-get / dpkg-deb are missing to fetch it "
            f"(Debian: apt-get install {POCKETSPHINX_PACKAGE})"
        )
    with tempfile.TemporaryDirectory(prefix="llasm-deb-") as tmp:
        got = subprocess.run(["apt-get", "download", POCKETSPHINX_PACKAGE], cwd=tmp, capture_output=True, text=True)
        debs = list(Path(tmp).glob(f"{POCKETSPHINX_PACKAGE}_*.deb"))
        if got.returncode != 0 or not debs:
            raise FileNotFoundError(
                f"apt-get download {POCKETSPHINX_PACKAGE} failed ({got.stderr.strip()[-300:]}); "
                f"run apt-get update, or install it: apt-get install {POCKETSPHINX_PACKAGE}"
            )
        unpacked = Path(tmp) / "root"
        subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(unpacked)], check=True, capture_output=True)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        shutil.copytree(unpacked / _SYSTEM_DIR.relative_to("/"), partial)
        shutil.copy(unpacked / "usr/share/doc" / POCKETSPHINX_PACKAGE / "copyright", partial / "copyright")
        partial.rename(target)  # complete or absent
    return target


def pocketsphinx_testdata(cache_dir: str | Path | None = None, *, download: bool = True) -> list[dict[str, Any]]:
    """The 10 transcribed recordings: [{"path", "text", "id", "set"}] ("set": "cards" or "librivox").

    Uses the installed package, else `cache_dir` (default `$LLASM_CACHE/real_speech/pocketsphinx-testdata`),
    fetching it there when `download` is true. Raises `FileNotFoundError` saying how to get it otherwise.
    """
    root = _SYSTEM_DIR
    if not (root / "cards" / "cards.transcription").is_file():
        root = Path(cache_dir) if cache_dir is not None else llasm_cache_dir() / "real_speech" / POCKETSPHINX_PACKAGE
        if not (root / "cards" / "cards.transcription").is_file():
            if not download:
                raise FileNotFoundError(f"{POCKETSPHINX_PACKAGE} is neither installed nor in {root} (download=False)")
            _unpack_pocketsphinx(root)
    out = []
    for name, listing in (("cards", "cards/cards.transcription"), ("librivox", "librivox/transcription")):
        for line in (root / listing).read_text(encoding="utf-8").splitlines():
            match = _LINE.match(line.strip())
            if not match:
                continue
            text, uid = match.groups()
            path = root / name / f"{uid}.wav"
            if not path.is_file():
                raise FileNotFoundError(f"{path} is listed in {root / listing} but missing")
            out.append({"path": str(path), "text": " ".join(text.split()), "id": uid, "set": name})
    return out
