"""VoxCeleb1 for SUPERB speaker identification (SID), 1,251 speakers.

Layout: ``<root>/wav/<speaker id>/<video id>/<utt>.wav`` (the dev and test archives extracted into
one ``wav/`` folder; ``<root>/dev/wav`` + ``<root>/test/wav`` as kept by some setups also works) and
``<root>/iden_split.txt`` (or ``iden_split=PATH``), the official identification split: lines
``<1|2|3> id10001/1zcIwhmdeo4/00001.wav`` with 1 = train, 2 = dev, 3 = test, as SUPERB uses it.
``speaker`` = the speaker id (``id10001``). Audio stays in place.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

from ..data.manifest import Utterance
from .common import (
    CorpusError, LayoutError, check_root, examples, find_nested_root, progress, read_text_lines, require_file,
    with_durations, write_subset,
)

log = logging.getLogger(__name__)

CORPUS = "VoxCeleb1"
LAYOUT = "<root>/wav/<speaker id>/<video id>/<utt>.wav + <root>/iden_split.txt"
WAV_DIRS = ("wav", "dev/wav", "test/wav", "vox1_dev_wav/wav", "vox1_test_wav/wav")
SPLIT_CODES = {"1": "train", "2": "dev", "3": "test"}
SPLIT_HINT = ("the official identification split from the VoxCeleb1 site, "
              "https://www.robots.ox.ac.uk/~vgg/data/voxceleb/vox1.html ('iden_split.txt'); "
              "put it in the root or pass iden_split=PATH")
SUBSET = "sid"


def read_iden_split(path: Path) -> list[tuple[str, str, int]]:
    """``[(split, "id10001/1zcIwhmdeo4/00001.wav", lineno)]``; :class:`CorpusError` on a bad line."""
    out = []
    for lineno, line in read_text_lines(path):
        parts = line.split()
        if len(parts) != 2 or parts[0] not in SPLIT_CODES or parts[1].count("/") != 2:
            raise CorpusError(f"{path}:{lineno}: expected '<1|2|3> <speaker>/<video>/<utt>.wav', got {line!r}")
        out.append((SPLIT_CODES[parts[0]], parts[1], lineno))
    if not out:
        raise CorpusError(f"{path}: empty split file")
    return out


def prepare(root, out_dir, iden_split: Optional[str] = None, skip_missing: bool = False) -> dict[str, dict[str, Path]]:
    """Write ``out_dir/sid/{train,dev,test}.jsonl``; returns ``{"sid": {split: path}}``.

    A file listed in the split but absent on disk is an error (a partial download), unless
    ``skip_missing`` is set, which skips such files with a warning.
    """
    root = find_nested_root(check_root(root, CORPUS, LAYOUT), "wav", ("VoxCeleb1", "voxceleb1"))
    split_file = Path(iden_split).expanduser() if iden_split is not None else root / "iden_split.txt"
    require_file(split_file, CORPUS, "split file", SPLIT_HINT)
    wav_dirs = [root / d for d in WAV_DIRS if (root / d).is_dir()]
    if not wav_dirs:
        raise LayoutError(f"{CORPUS} root {root}: no wav/ folder (expected the standard layout {LAYOUT})")

    splits: dict[str, list[Utterance]] = {"train": [], "dev": [], "test": []}
    missing = []
    entries = read_iden_split(split_file)
    for split, rel, lineno in progress(entries, desc=f"{CORPUS}: locating files"):
        audio = next((d / rel for d in wav_dirs if (d / rel).is_file()), None)
        if audio is None:
            missing.append(f"{rel} (line {lineno})")
            continue
        speaker = rel.split("/", 1)[0]
        utt_id = rel.removesuffix(".wav").replace("/", "-")  # id10001-1zcIwhmdeo4-00001
        splits[split].append(Utterance(id=utt_id, audio=str(audio), speaker=speaker))
    if missing:
        msg = (f"{CORPUS}: {len(missing)} of {len(entries)} files listed in {split_file} are not under "
               f"{', '.join(str(d) for d in wav_dirs)}: {examples(missing, 3)}")
        if not skip_missing:
            raise LayoutError(msg + " (pass skip_missing=True to leave them out)")
        log.warning(msg)
    for split in splits:
        splits[split] = with_durations(splits[split], desc=f"{CORPUS} {split}")
    n_spk = len({r.speaker for r in splits["train"]})
    unseen = {r.speaker for s in ("dev", "test") for r in splits[s]} - {r.speaker for r in splits["train"]}
    if unseen:
        log.warning("%s: %d dev/test speakers never occur in train: %s", CORPUS, len(unseen), examples(sorted(unseen)))
    log.info("%s: %d training speakers", CORPUS, n_spk)
    return {SUBSET: write_subset(Path(out_dir), SUBSET, splits, f"{CORPUS} {root}")}
