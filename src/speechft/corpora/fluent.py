"""Fluent Speech Commands for SUPERB intent classification (IC).

Layout (fluent_speech_commands_dataset): ``<root>/data/{train,valid,test}_data.csv`` with columns
``<index>, path, speakerId, transcription, action, object, location`` and the audio under
``<root>/wavs/speakers/<speakerId>/*.wav`` (``path`` is relative to the root). Splits are the
official ones, as in SUPERB: train_data.csv, valid_data.csv (dev), test_data.csv.
``label`` = ``action|object|location`` (e.g. ``activate|lights|kitchen``), ``text`` = the
transcription, ``speaker`` = speakerId. Audio stays in place.
"""
from __future__ import annotations

import csv
import logging
from pathlib import Path

from ..data.manifest import SLOT_SEP, Utterance
from .common import (
    CorpusError, LayoutError, check_root, examples, find_nested_root, require_dir, require_file, with_durations,
    write_subset,
)

log = logging.getLogger(__name__)

CORPUS = "Fluent Speech Commands"
LAYOUT = "<root>/data/{train,valid,test}_data.csv + <root>/wavs/speakers/<speaker>/*.wav"
CSV_FILES = {"train": "train_data.csv", "dev": "valid_data.csv", "test": "test_data.csv"}
SLOTS = ("action", "object", "location")
SUBSET = "ic"


def read_split(root: Path, csv_path: Path) -> list[Utterance]:
    """Rows of one split csv; :class:`CorpusError` names the file and line of anything malformed."""
    with open(csv_path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        columns = set(reader.fieldnames or [])
        need = {"path", *SLOTS}
        if not need <= columns:
            raise CorpusError(f"{csv_path}: missing columns {', '.join(sorted(need - columns))} "
                              f"(expected index, path, speakerId, transcription, action, object, location)")
        rows, missing, seen = [], [], {}
        for lineno, rec in enumerate(reader, 2):
            rel = (rec.get("path") or "").strip()
            slots = [(rec.get(s) or "").strip() for s in SLOTS]
            if not rel or not all(slots):
                raise CorpusError(f"{csv_path}:{lineno}: empty path or action/object/location")
            if any(SLOT_SEP in v for v in slots):
                raise CorpusError(f"{csv_path}:{lineno}: a slot value contains {SLOT_SEP!r}: {slots}")
            audio = root / rel
            if not audio.is_file():
                missing.append(f"{rel} (line {lineno})")
                continue
            utt_id = f"{audio.parent.name}/{audio.stem}"  # <speaker folder>/<uuid>
            if utt_id in seen:
                raise CorpusError(f"{csv_path}:{lineno}: {rel} already listed on line {seen[utt_id]}")
            seen[utt_id] = lineno
            rows.append(Utterance(id=utt_id, audio=str(audio), label=SLOT_SEP.join(slots),
                                  text=(rec.get("transcription") or "").strip() or None,
                                  speaker=(rec.get("speakerId") or "").strip() or None))
    if missing:
        raise LayoutError(f"{csv_path}: {len(missing)} listed audio files are not under {root}: {examples(missing, 3)}")
    return rows


def prepare(root, out_dir) -> dict[str, dict[str, Path]]:
    """Write ``out_dir/ic/{train,dev,test}.jsonl``; returns ``{"ic": {split: path}}``."""
    root = find_nested_root(check_root(root, CORPUS, LAYOUT), "data", ("fluent_speech_commands_dataset",))
    data = require_dir(root, "data", CORPUS, LAYOUT)
    hint = f"expected layout {LAYOUT}"
    paths = {split: require_file(data / name, CORPUS, "split file", hint) for split, name in CSV_FILES.items()}
    splits = {split: with_durations(read_split(root, p), desc=f"{CORPUS} {split}") for split, p in paths.items()}
    n_intents = len({r.label for r in splits["train"]})
    unseen = {r.label for s in ("dev", "test") for r in splits[s]} - {r.label for r in splits["train"]}
    if unseen:
        log.warning("%s: %d dev/test intents never occur in train: %s", CORPUS, len(unseen), examples(sorted(unseen)))
    log.info("%s: %d intents in train", CORPUS, n_intents)
    return {SUBSET: write_subset(Path(out_dir), SUBSET, splits, f"{CORPUS} {root}")}
