"""TED-LIUM release 3 for ASR (the corpus Speech-FT fine-tunes on), legacy split.

Layout (TEDLIUM_release-3, extracted): ``<root>/legacy/{train,dev,test}/sph/<talk>.sph`` and
``<root>/legacy/{train,dev,test}/stm/<talk>.stm`` with STM lines
``<talk> <channel> <speaker> <start> <end> [<label>] <transcript>``.

Each talk is cut at its STM segments into 16 kHz mono WAV files
``out_dir/asr/wav/<split>/<talk>/<talk>-<start cs>-<end cs>.wav`` (re-runs keep clips that are
already complete). Segments whose transcript is ``ignore_time_segment_in_scoring`` or empty after
normalisation are skipped. Transcript normalisation (:func:`normalize_text`), in order:
  1. tokens in angle, curly, square or round brackets are removed (``<unk>``, ``{NOISE}`` ...);
  2. a token starting with an apostrophe is joined to the previous one (``it 's`` -> ``it's``,
     ``we 're`` -> ``we're``), as Kaldi's TED-LIUM recipe does;
  3. upper case; every character other than A-Z and the apostrophe becomes a space
     (``twenty-one`` -> ``TWENTY ONE``);
  4. tokens made only of apostrophes are dropped and runs of spaces collapse to one.
Besides the full ``asr`` subset, ``asr-10h`` is the official Speech-FT code's fine-tuning set: a
subset of the training set of ``subset_hours`` (10) hours, drawn in a seeded random order from the
utterances of 1-60 s whose transcript has no ``<unk>``; its dev and test are the full ones.
SPHERE files are read with soundfile (libsndfile reads uncompressed NIST SPHERE, as distributed in
release 3; shorten-compressed SPHERE must first be converted, e.g. with ``sph2pipe -f wav``).
"""
from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import soundfile as sf

from ..data.audio import TARGET_SR, resample, to_mono
from ..data.manifest import Utterance
from .common import (
    SPLITS, CorpusError, LayoutError, check_root, find_nested_root, has_frames, progress, read_text_lines,
    require_dir, write_subset, write_wav_atomic,
)

log = logging.getLogger(__name__)

CORPUS = "TED-LIUM 3"
LAYOUT = "<root>/legacy/{train,dev,test}/{sph/<talk>.sph, stm/<talk>.stm}"
IGNORE = "ignore_time_segment_in_scoring"
SUBSET = "asr"
SUBSET_10H = "asr-10h"
UNK = "<unk>"
_BRACKETED = re.compile(r"^(<[^>]*>|\{[^}]*\}|\[[^\]]*\]|\([^)]*\))$")
_NOT_ALLOWED = re.compile(r"[^A-Z' ]")


def normalize_text(text: str) -> str:
    """TED-LIUM transcript -> upper-case A-Z/apostrophe/space text (steps in the module doc)."""
    tokens = [t for t in text.split() if not _BRACKETED.match(t)]
    joined: list[str] = []
    for tok in tokens:
        if tok.startswith("'") and joined and len(tok) > 1:
            joined[-1] += tok
        else:
            joined.append(tok)
    upper = _NOT_ALLOWED.sub(" ", " ".join(joined).upper())
    return " ".join(t for t in upper.split() if t.strip("'"))


def read_stm(path: Path) -> list[tuple[float, float, str, str]]:
    """``[(start, end, speaker, raw transcript)]`` of an STM file (``;;`` comment lines skipped)."""
    out = []
    for lineno, line in read_text_lines(path):
        if line.startswith(";;"):
            continue
        parts = line.split(maxsplit=6)
        if len(parts) < 5:
            raise CorpusError(f"{path}:{lineno}: expected '<talk> <channel> <speaker> <start> <end> [<label>] text'")
        try:
            start, end = float(parts[3]), float(parts[4])
        except ValueError:
            raise CorpusError(f"{path}:{lineno}: start/end times {parts[3]!r} {parts[4]!r} are not numbers") from None
        rest = parts[5:]
        if rest and rest[0].startswith("<") and rest[0].endswith(">"):
            rest = rest[1:]  # the optional <o,f0,male> label
        out.append((start, end, parts[2], " ".join(rest)))
    return out


def cut_talk(sph: Path, segments, out_folder: Path, talk: str) -> tuple[list[Utterance], int, set]:
    """Write one WAV per kept segment of ``sph``; ``(rows, skipped, ids of rows whose raw transcript
    held <unk>)``."""
    rows, skipped, unk = [], 0, set()
    try:
        f = sf.SoundFile(str(sph))
    except (RuntimeError, sf.LibsndfileError, OSError) as e:
        raise CorpusError(f"{sph}: not readable as NIST SPHERE/audio ({e}); shorten-compressed SPHERE "
                          "must be converted first (sph2pipe -f wav)") from None
    with f:
        sr, total = f.samplerate, f.frames
        for start, end, speaker, raw in segments:
            if raw.strip() == IGNORE:
                skipped += 1
                continue
            text = normalize_text(raw)
            a, b = max(0, int(round(start * sr))), min(total, int(round(end * sr)))
            if not text or b - a < sr // 100:  # empty transcript, or under 10 ms inside the file
                skipped += 1
                continue
            utt_id = f"{talk}-{int(round(start * 100)):07d}-{int(round(end * 100)):07d}"
            path = out_folder / f"{utt_id}.wav"
            frames = b - a if sr == TARGET_SR else None
            if frames is None or not has_frames(path, frames):
                f.seek(a)
                wav = resample(to_mono(f.read(b - a, dtype="float32", always_2d=False)), sr, TARGET_SR)
                frames = len(wav)
                write_wav_atomic(path, np.clip(wav, -1.0, 1.0), TARGET_SR)
            rows.append(Utterance(id=utt_id, audio=str(path), text=text, speaker=speaker,
                                  duration=round(frames / TARGET_SR, 4), sample_rate=TARGET_SR))
            if UNK in raw.split():
                unk.add(utt_id)
    return rows, skipped, unk


def hours_subset(rows: list[Utterance], unk: set, hours: float, min_seconds: float, max_seconds: float,
                 seed: int = 0) -> list[Utterance]:
    """``hours`` of ``rows`` (seeded random order, kept in corpus order) among those of
    ``min_seconds``-``max_seconds`` without ``<unk>``; all of them when they hold less."""
    pool = [r for r in rows if min_seconds <= r.duration <= max_seconds and r.id not in unk]
    order = np.random.default_rng(seed).permutation(len(pool))
    chosen, total = set(), 0.0
    for i in order:
        if total >= hours * 3600:
            break
        chosen.add(int(i))
        total += pool[int(i)].duration
    if total < hours * 3600:
        log.warning("%s: only %.2f h of eligible training utterances (%g-%g s, no <unk>) for the %g h subset",
                    CORPUS, total / 3600, min_seconds, max_seconds, hours)
    return [r for i, r in enumerate(pool) if i in chosen]


def prepare(root, out_dir, subset_hours: float = 10.0, subset_min_seconds: float = 1.0,
            subset_max_seconds: float = 60.0) -> dict[str, dict[str, Path]]:
    """Cut and write ``out_dir/asr/{train,dev,test}.jsonl`` + WAV clips and the ``asr-10h`` subset
    (module doc); returns ``{"asr": {split: path}, "asr-10h": {split: path}}``."""
    if subset_hours <= 0 or not 0 <= subset_min_seconds < subset_max_seconds:
        raise ValueError(f"{CORPUS}: need subset_hours > 0 and 0 <= subset_min_seconds < subset_max_seconds")
    root = check_root(root, CORPUS, LAYOUT)
    root = find_nested_root(root, "legacy", ("TEDLIUM_release-3", "TEDLIUM_release3"))
    if not (root / "legacy").is_dir() and (root / "train" / "stm").is_dir():
        legacy = root  # the user pointed at the legacy folder itself
    else:
        legacy = require_dir(root, "legacy", CORPUS, LAYOUT)
    out_dir = Path(out_dir)
    splits: dict[str, list[Utterance]] = {}
    unk: set = set()
    for split in SPLITS:
        stm_dir = require_dir(legacy, f"{split}/stm", CORPUS, LAYOUT)
        sph_dir = require_dir(legacy, f"{split}/sph", CORPUS, LAYOUT)
        stms = sorted(p for p in stm_dir.glob("*.stm") if not p.name.startswith("."))
        if not stms:
            raise LayoutError(f"{CORPUS} root {root}: no *.stm in {stm_dir} (expected {LAYOUT})")
        rows, skipped = [], 0
        for stm in progress(stms, desc=f"{CORPUS} {split}", unit="talk"):
            sph = sph_dir / f"{stm.stem}.sph"
            if not sph.is_file():
                raise LayoutError(f"{CORPUS}: {stm} has no audio {sph}")
            talk_rows, talk_skipped, talk_unk = cut_talk(sph, read_stm(stm), out_dir / SUBSET / "wav" / split / stm.stem,
                                                         stm.stem)
            rows += talk_rows
            skipped += talk_skipped
            unk |= talk_unk
        hours = sum(r.duration for r in rows) / 3600
        log.info("%s %s: %d segments (%.2f h) from %d talks, %d skipped (ignored/empty)",
                 CORPUS, split, len(rows), hours, len(stms), skipped)
        splits[split] = rows
    out = {SUBSET: write_subset(out_dir, SUBSET, splits, f"{CORPUS} {root}")}
    small = hours_subset(splits["train"], unk, subset_hours, subset_min_seconds, subset_max_seconds)
    if not small:
        log.warning("%s: no training utterance of %g-%g s without <unk>: subset %s not written", CORPUS,
                    subset_min_seconds, subset_max_seconds, SUBSET_10H)
        return out
    log.info("%s %s: %d train utterances (%.2f h)", CORPUS, SUBSET_10H, len(small), sum(r.duration for r in small) / 3600)
    out[SUBSET_10H] = write_subset(out_dir, SUBSET_10H, {**splits, "train": small}, f"{CORPUS} {root} ({SUBSET_10H})")
    return out
