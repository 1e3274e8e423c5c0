"""IEMOCAP for SUPERB emotion recognition (ER), 4 classes, leave-one-session-out folds.

Layout (IEMOCAP_full_release): ``<root>/Session{1..5}/sentences/wav/<dialog>/<utterance>.wav`` and
``<root>/Session{1..5}/dialog/EmoEvaluation/<dialog>.txt`` whose summary lines read
``[6.2901 - 8.2357]<TAB>Ses01F_impro01_F000<TAB>neu<TAB>[2.5000, 2.5000, 2.5000]``.

Labels as in SUPERB: neu, hap, ang, sad, with exc (excited) merged into hap; every other category
(fru, sur, fea, dis, oth, xxx) is dropped. Fold k (subset ``fold<k>``): test = Session k, train =
the other four sessions, dev = every 5th dialog (sorted by name) of those four sessions (about 20%
of the training dialogs; SUPERB takes a random 20% of the training utterances instead — ours is
deterministic and keeps each dialog on one side). ``fold=N`` writes only fold N.
``speaker`` = session + gender of the utterance (``Ses01F``). Audio stays in place.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Optional

from ..data.manifest import Utterance
from .common import (
    CorpusError, LayoutError, check_root, find_nested_root, label_counts, read_text_lines, require_dir,
    with_durations, write_subset,
)

log = logging.getLogger(__name__)

CORPUS = "IEMOCAP"
LAYOUT = ("Session{1..5}/sentences/wav/<dialog>/<utterance>.wav + "
          "Session{1..5}/dialog/EmoEvaluation/<dialog>.txt")
SESSIONS = (1, 2, 3, 4, 5)
EMOTIONS = {"neu": "neu", "hap": "hap", "exc": "hap", "ang": "ang", "sad": "sad"}
DEV_EVERY = 5
_LINE = re.compile(r"^\[\s*([\d.]+)\s*-\s*([\d.]+)\s*\]\s+(\S+)\s+(\S+)")


def read_evaluation(path: Path) -> list[tuple[str, str]]:
    """``[(utterance, category)]`` from the ``[start - end]`` summary lines of an EmoEvaluation file."""
    out = []
    for lineno, line in read_text_lines(path):
        if not line.startswith("["):
            continue  # per-evaluator lines (C-E1:, A-E2: ...) and headers
        m = _LINE.match(line)
        if m is None:
            raise CorpusError(f"{path}:{lineno}: expected '[start - end]<TAB>utterance<TAB>emotion<TAB>[V, A, D]', "
                              f"got {line!r}")
        out.append((m.group(3), m.group(4)))
    return out


def scan_session(root: Path, k: int) -> list[tuple[str, Utterance]]:
    """``[(dialog, row)]`` of the 4-class utterances of Session k (label and speaker set)."""
    eval_dir = require_dir(root, f"Session{k}/dialog/EmoEvaluation", CORPUS, LAYOUT)
    wav_dir = require_dir(root, f"Session{k}/sentences/wav", CORPUS, LAYOUT)
    files = sorted(p for p in eval_dir.glob("*.txt") if not p.name.startswith("."))
    if not files:
        raise LayoutError(f"{CORPUS} root {root}: no <dialog>.txt in {eval_dir} (expected {LAYOUT})")
    out, dropped = [], 0
    for path in files:
        dialog = path.stem
        for utt, category in read_evaluation(path):
            label = EMOTIONS.get(category)
            if label is None:
                dropped += 1
                continue
            audio = wav_dir / dialog / f"{utt}.wav"
            if not audio.is_file():
                raise LayoutError(f"{path}: utterance {utt} has no audio {audio}")
            speaker = f"Ses{k:02d}{utt.rsplit('_', 1)[-1][:1]}"  # Ses01F_impro01_M000 -> Ses01M
            out.append((dialog, Utterance(id=utt, audio=str(audio), label=label, speaker=speaker)))
    log.info("%s Session%d: %d utterances in 4 classes, %d of other categories dropped", CORPUS, k, len(out), dropped)
    return out


def fold_splits(sessions: dict[int, list[tuple[str, Utterance]]], k: int, dev_every: int = DEV_EVERY) -> dict[str, list[Utterance]]:
    """train/dev/test of fold k: test = Session k; dev = every ``dev_every``-th training dialog."""
    train_dialogs = sorted({d for s, rows in sessions.items() if s != k for d, _ in rows})
    dev_dialogs = set(train_dialogs[dev_every - 1::dev_every])
    if not dev_dialogs:
        raise CorpusError(f"{CORPUS} fold {k}: only {len(train_dialogs)} training dialogs, too few for a dev split")
    splits: dict[str, list[Utterance]] = {"train": [], "dev": [], "test": [r for _, r in sessions[k]]}
    for s, rows in sessions.items():
        if s == k:
            continue
        for dialog, row in rows:
            splits["dev" if dialog in dev_dialogs else "train"].append(row)
    return splits


def prepare(root, out_dir, fold: Optional[int] = None, dev_every: int = DEV_EVERY) -> dict[str, dict[str, Path]]:
    """Write ``out_dir/fold<k>/{train,dev,test}.jsonl`` for k = 1..5 (or only ``fold``)."""
    root = find_nested_root(check_root(root, CORPUS, LAYOUT), "Session1", ("IEMOCAP_full_release",))
    folds = SESSIONS if fold is None else (int(fold),)
    if folds[0] not in SESSIONS:
        raise ValueError(f"{CORPUS}: fold must be one of 1-5 (the held-out session), got {fold}")
    if dev_every < 2:
        raise ValueError(f"dev_every must be >= 2, got {dev_every}")
    for k in SESSIONS:  # the whole layout first, before parsing anything
        for rel in (f"Session{k}", f"Session{k}/dialog/EmoEvaluation", f"Session{k}/sentences/wav"):
            require_dir(root, rel, CORPUS, LAYOUT)
    sessions = {k: scan_session(root, k) for k in SESSIONS}
    # durations once for all folds (every utterance is in each fold's train, dev or test)
    timed = iter(with_durations([r for k in SESSIONS for _, r in sessions[k]], desc=CORPUS))
    sessions = {k: [(d, next(timed)) for d, _ in sessions[k]] for k in SESSIONS}
    result = {}
    for k in folds:
        splits = fold_splits(sessions, k, dev_every)
        log.info("%s fold%d: train %s, test %s", CORPUS, k, label_counts(splits["train"]), label_counts(splits["test"]))
        result[f"fold{k}"] = write_subset(Path(out_dir), f"fold{k}", splits, f"{CORPUS} {root}")
    return result
