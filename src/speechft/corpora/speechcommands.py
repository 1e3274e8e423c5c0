"""Speech Commands v0.01 for SUPERB keyword spotting (KS), 12 classes.

Layout (speech_commands_v0.01.tar.gz, extracted): ``<root>/<word>/<hash>_nohash_<n>.wav``,
``validation_list.txt`` and ``testing_list.txt`` (lines ``<word>/<file>.wav``) and
``_background_noise_/*.wav``.

Classes: yes no up down left right on off stop go, ``_unknown_`` (every other word) and
``_silence_`` (1-s clips cut from ``_background_noise_``, written as WAV files under
``out_dir/ks/silence/``). Splits:
  train  every word file listed in neither index file
  dev    validation_list.txt
  test   SUPERB's separate test set ``speech_commands_test_set_v0.01`` when ``test_root=PATH`` is
         given (layout ``<class>/*.wav`` with ``_silence_/`` and ``_unknown_/`` folders); otherwise
         testing_list.txt (the corpus's own test list; numbers are then not comparable to SUPERB)
Silence clips: each noise file is cut into 1-s clips every ``silence_hop`` seconds; of each file's
clips the last 10% go to dev, the 10% before them to test (only without ``test_root``), the rest to
train, so no noise segment is shared between splits.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import soundfile as sf

from ..data.audio import TARGET_SR, resample, to_mono
from ..data.manifest import Utterance
from .common import (
    CorpusError, LayoutError, check_root, examples, find_nested_root, has_frames, label_counts, read_text_lines,
    require_dir, require_file, with_durations, write_subset, write_wav_atomic,
)

log = logging.getLogger(__name__)

CORPUS = "Speech Commands"
LAYOUT = "<root>/<word>/*.wav + validation_list.txt + testing_list.txt + _background_noise_/*.wav"
TEST_LAYOUT = "speech_commands_test_set_v0.01/<class>/*.wav with _silence_/ and _unknown_/ folders"
WORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
UNKNOWN, SILENCE = "_unknown_", "_silence_"
CLASSES = WORDS + (UNKNOWN, SILENCE)
NOISE_DIR = "_background_noise_"
SUBSET = "ks"


def class_of(word: str) -> str:
    return word if word in CLASSES else UNKNOWN


def read_list(path: Path) -> set[str]:
    """Entries ``<word>/<file>.wav`` of validation_list.txt / testing_list.txt."""
    out = set()
    for lineno, line in read_text_lines(path):
        if "/" not in line:
            raise CorpusError(f"{path}:{lineno}: expected '<word>/<file>.wav', got {line!r}")
        out.add(line.replace("\\", "/"))
    return out


def scan_words(root: Path) -> dict[str, Path]:
    """``{"<word>/<file>.wav": path}`` of every word folder (folders starting with '_' excluded)."""
    files = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("_")):
        for wav in sorted(folder.glob("*.wav")):
            files[f"{folder.name}/{wav.name}"] = wav
    if not files:
        raise LayoutError(f"{CORPUS} root {root}: no <word>/*.wav files (expected the standard layout {LAYOUT})")
    return files


def _row(key: str, path: Path, label: str) -> Utterance:
    return Utterance(id=key.removesuffix(".wav"), audio=str(path), label=label)


def silence_clips(noise_dir: Path, out_dir: Path, hop: float, with_test: bool) -> dict[str, list[Utterance]]:
    """Cut 1-s clips from each background-noise file; ``{split: rows}`` (see module doc)."""
    noises = sorted(noise_dir.glob("*.wav"))
    if not noises:
        raise LayoutError(f"{CORPUS}: no *.wav in {noise_dir} (the _silence_ class is cut from them)")
    if hop <= 0:
        raise ValueError(f"silence_hop must be > 0 seconds, got {hop}")
    splits: dict[str, list[Utterance]] = {"train": [], "dev": [], "test": []}
    for noise in noises:
        try:
            wav, sr = sf.read(str(noise), dtype="float32", always_2d=False)
        except (RuntimeError, sf.LibsndfileError, OSError) as e:
            raise CorpusError(f"{noise}: not readable audio ({e})") from None
        wav = resample(to_mono(wav), sr, TARGET_SR)
        starts = list(range(0, len(wav) - TARGET_SR + 1, max(1, int(round(hop * TARGET_SR)))))
        n = len(starts)
        if n < 3:
            log.warning("%s: %s is shorter than 3 clips; all its %d silence clips go to train", CORPUS, noise, n)
        n_dev = max(1, n // 10) if n >= 3 else 0
        n_test = (max(1, n // 10) if n >= 3 else 0) if with_test else 0
        for i, start in enumerate(starts):
            split = "dev" if i >= n - n_dev else "test" if i >= n - n_dev - n_test else "train"
            name = f"{noise.stem}_{start:09d}"  # start sample: clips of another hop get other names
            clip_id, path = f"{SILENCE}/{name}", out_dir / SUBSET / "silence" / f"{name}.wav"
            if not has_frames(path, TARGET_SR):
                write_wav_atomic(path, wav[start:start + TARGET_SR], TARGET_SR)
            splits[split].append(Utterance(id=clip_id, audio=str(path), label=SILENCE,
                                           duration=1.0, sample_rate=TARGET_SR))
    return splits


def scan_test_root(test_root) -> list[Utterance]:
    root = check_root(test_root, f"{CORPUS} test set", TEST_LAYOUT)
    root = find_nested_root(root, UNKNOWN, ("speech_commands_test_set_v0.01",))
    rows = []
    odd = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        if folder.name not in CLASSES:
            odd.append(folder.name)
        for wav in sorted(folder.glob("*.wav")):
            rows.append(_row(f"{folder.name}/{wav.name}", wav, class_of(folder.name)))
    if odd:
        log.warning("%s test set %s: folders %s are not among the 12 classes; labelled %s",
                    CORPUS, root, examples(odd), UNKNOWN)
    if not rows:
        raise LayoutError(f"{CORPUS} test set {root}: no <class>/*.wav files (expected {TEST_LAYOUT})")
    return rows


def prepare(root, out_dir, test_root: Optional[str] = None, silence_hop: float = 1.0) -> dict[str, dict[str, Path]]:
    """Write ``out_dir/ks/{train,dev,test}.jsonl``; returns ``{"ks": {split: path}}``."""
    root = find_nested_root(check_root(root, CORPUS, LAYOUT), "validation_list.txt", ("speech_commands_v0.01",))
    out_dir = Path(out_dir)
    hint = f"it ships with Speech Commands v0.01; expected layout {LAYOUT}"
    val = read_list(require_file(root / "validation_list.txt", CORPUS, "split file", hint))
    test_rows = scan_test_root(test_root) if test_root is not None else None
    if test_rows is None or (root / "testing_list.txt").exists():
        # with the separate test set its files still stay out of train (as SUPERB's split does)
        test = read_list(require_file(root / "testing_list.txt", CORPUS, "split file", hint))
    else:
        test = set()
    noise_dir = require_dir(root, NOISE_DIR, CORPUS, LAYOUT)

    files = scan_words(root)
    for name, listed in (("validation_list.txt", val), ("testing_list.txt", test)):
        absent = sorted(listed - files.keys())
        if absent:
            log.warning("%s: %d entries of %s have no audio under %s, e.g. %s",
                        CORPUS, len(absent), name, root, examples(absent, 3))
    splits: dict[str, list[Utterance]] = {"train": [], "dev": [], "test": []}
    for key, path in files.items():
        split = "dev" if key in val else "test" if key in test else "train"
        splits[split].append(_row(key, path, class_of(key.split("/", 1)[0])))
    if test_rows is not None:
        splits["test"] = test_rows
        log.info("%s: test = the separate v0.01 test set (SUPERB); testing_list.txt files are unused", CORPUS)
    else:
        log.info("%s: no test_root given; test = testing_list.txt (SUPERB uses speech_commands_test_set_v0.01)", CORPUS)

    for split in splits:
        splits[split] = with_durations(splits[split], desc=f"{CORPUS} {split}")
    silence = silence_clips(noise_dir, out_dir, silence_hop, with_test=test_root is None)
    for split, rows in silence.items():
        splits[split].extend(rows)
    for split, rows in splits.items():
        log.info("%s %s: %s", CORPUS, split, label_counts(rows))
    return {SUBSET: write_subset(out_dir, SUBSET, splits, f"{CORPUS} {root}")}
