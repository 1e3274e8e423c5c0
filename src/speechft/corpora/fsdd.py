"""Free Spoken Digit Dataset (FSDD): real recordings for fsdd-ks (digit) and fsdd-sid (speaker).

Source: github.com/Jakobovski/free-spoken-digit-dataset, license CC BY-SA 4.0. 3,000 wav files,
8 kHz mono, 6 speakers x 10 digits x 50 takes, named ``recordings/{digit}_{speaker}_{take}.wav``.

Splits by take, the same for every speaker and digit (so fsdd-sid sees every speaker everywhere
and fsdd-ks is a speaker-dependent digit task, as the dataset's own convention):
test = takes 0-4 (the dataset's conventional test set), dev = takes 5-9, train = takes 10-49;
with the full corpus that is 2,400 / 300 / 300 utterances. Size ``quick`` (smoke runs, ``reproduce
--quick``) keeps train takes 10-13, dev take 5 and test take 0: 240 / 60 / 60, every speaker and
digit. Audio is referenced in place by absolute path; ``duration`` and ``sample_rate`` come from the
wav headers.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Optional

import soundfile as sf

from ..data.manifest import Utterance, write_manifest
from ..utils.io import atomic_dir

log = logging.getLogger(__name__)

SUBSET = "fsdd"
SPLITS = ("train", "dev", "test")
PATTERN = re.compile(r"^(?P<digit>[0-9])_(?P<speaker>[A-Za-z]+)_(?P<take>[0-9]+)\.wav$")
EXPECTED_FILES = 3000
EXPECTED_COUNTS = {"train": 2400, "dev": 300, "test": 300}
TAKES = {"test": "0-4", "dev": "5-9", "train": "10-49"}
SIZES = {"default": None, "study": None,  # every take (the test split already holds 300 recordings)
         "quick": {"train": range(10, 14), "dev": range(5, 6), "test": range(0, 1)}}
LICENSE = "CC BY-SA 4.0 (github.com/Jakobovski/free-spoken-digit-dataset)"


def split_of_take(take: int) -> str:
    """test = takes 0-4, dev = takes 5-9, train = the rest (10-49)."""
    return "test" if take < 5 else "dev" if take < 10 else "train"


def read_recordings(root: str | Path) -> dict[str, list[Utterance]]:
    """``split -> rows`` of every ``recordings/*.wav`` under ``root`` (sorted by digit, speaker, take)."""
    root = Path(root).expanduser()
    rec = root / "recordings"
    if not rec.is_dir():
        raise FileNotFoundError(
            f"FSDD: {rec} is not a folder; pass the root of a clone of "
            "github.com/Jakobovski/free-spoken-digit-dataset (the folder that holds recordings/)"
        )
    files = sorted(p for p in rec.iterdir() if p.suffix.lower() == ".wav")
    if not files:
        raise FileNotFoundError(f"FSDD: no .wav files in {rec}")
    parsed = []
    for p in files:
        m = PATTERN.match(p.name)
        if m is None:
            raise ValueError(f"FSDD: {p}: file name does not match '{{digit}}_{{speaker}}_{{take}}.wav'")
        parsed.append((int(m["digit"]), m["speaker"], int(m["take"]), p))
    parsed.sort(key=lambda x: (x[0], x[1], x[2]))
    out: dict[str, list[Utterance]] = {s: [] for s in SPLITS}
    for digit, speaker, take, p in parsed:
        try:
            info = sf.info(str(p))
        except (RuntimeError, sf.LibsndfileError) as e:
            raise ValueError(f"FSDD: {p}: not readable audio ({e})") from None
        if info.frames == 0:
            raise ValueError(f"FSDD: {p}: empty audio (0 samples)")
        out[split_of_take(take)].append(Utterance(
            id=f"fsdd-{digit}_{speaker}_{take}", audio=str(p.resolve()), label=str(digit), speaker=speaker,
            duration=round(info.frames / info.samplerate, 4), sample_rate=int(info.samplerate)))
    return out


def take_of(u: Utterance) -> int:
    return int(u.id.rsplit("_", 1)[1])


def prepare(root: Optional[str | Path], out_dir: str | Path, size: str = "default") -> dict[str, dict[str, Path]]:
    """Write ``out_dir/fsdd/{train,dev,test}.jsonl``; returns ``{"fsdd": {split: path}}``."""
    if root is None:
        raise FileNotFoundError("FSDD needs --root: a clone of github.com/Jakobovski/free-spoken-digit-dataset")
    if size not in SIZES:
        raise ValueError(f"FSDD size must be one of {', '.join(SIZES)}, not {size!r}")
    rows = read_recordings(root)
    total = sum(len(r) for r in rows.values())
    counts = {s: len(rows[s]) for s in SPLITS}
    if total != EXPECTED_FILES or counts != EXPECTED_COUNTS:
        log.warning("FSDD at %s: %d recordings (train/dev/test %s), expected %d (%s); a partial or newer copy?",
                    root, total, counts, EXPECTED_FILES, EXPECTED_COUNTS)
    for split in SPLITS:
        if not rows[split]:
            raise ValueError(f"FSDD at {root}: no recordings fall in the {split} split (takes {TAKES[split]})")
    if SIZES[size] is not None:
        rows = {s: [u for u in rows[s] if take_of(u) in SIZES[size][s]] for s in SPLITS}
        counts = {s: len(rows[s]) for s in SPLITS}
    folder = Path(out_dir) / SUBSET
    with atomic_dir(folder) as tmp:
        for split in SPLITS:
            write_manifest(tmp / f"{split}.jsonl", rows[split], relative=False)
    log.info("FSDD: %s train/dev/test utterances -> %s", "/".join(str(counts[s]) for s in SPLITS), folder)
    return {SUBSET: {s: folder / f"{s}.jsonl" for s in SPLITS}}
