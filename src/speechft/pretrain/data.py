"""Pre-training data: unlabelled audio held in memory, deterministic batches by seconds, frame-aligned crops.

Pre-training reads every utterance many times, so the audio is decoded once and kept as int16
(1 h of 16 kHz audio = 115 MB). Batches are a pure function of ``(seed, epoch)``, so the sampler's
whole state is ``(epoch, batch index)`` and a resumed run sees exactly the batches it would have.

Batch contract (B = utterances, S = samples, T = frames):
    wav       FloatTensor [B, S]   16 kHz in [-1, 1], zero-padded on the right
    wav_lens  LongTensor  [B]      real samples per row
    targets   LongTensor  [B, T]   cluster id per frame, -100 past the end of each row
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from ..data.audio import TARGET_SR, AudioError, load_audio
from ..data.manifest import Utterance
from ..data.sampler import pack_batches
from .mfcc import HOP, WIN, num_frames

log = logging.getLogger(__name__)


def read_rows(manifest: str | Path, min_seconds: float, skip_bad: bool = False) -> list[Utterance]:
    """Validated manifest rows: every bad row is listed in one error, or skipped and counted with ``skip_bad``."""
    from ..data.validate import load_checked_rows

    return load_checked_rows(manifest, min_seconds=min(min_seconds, 0.1), skip_bad=skip_bad)


@dataclass
class AudioStore:
    """Decoded audio of one manifest: ``ids[i]`` -> ``audio[i]`` int16 ``[S]`` at 16 kHz."""

    ids: list
    audio: list
    manifest: str

    def __len__(self) -> int:
        return len(self.ids)

    def seconds(self) -> np.ndarray:
        return np.array([a.shape[0] / TARGET_SR for a in self.audio])

    def wav(self, i: int) -> np.ndarray:
        return self.audio[i].astype(np.float32) / 32767.0

    @classmethod
    def load(cls, manifests, min_seconds: float = 0.5, skip_bad: bool = False) -> "AudioStore":
        """Decode every row of one or more manifests (a list, or paths joined by commas)."""
        if isinstance(manifests, (str, Path)):
            manifests = [m for m in str(manifests).split(",") if m.strip()]
        manifest = ",".join(str(m) for m in manifests)
        rows, seen = [], {}
        for m in manifests:
            part = read_rows(m, min_seconds, skip_bad)
            if not part:
                raise ValueError(f"{m}: manifest has no rows")
            for r in part:
                if r.id in seen:
                    raise ValueError(f"{m}: id {r.id!r} also appears in {seen[r.id]}; ids must be unique across manifests")
                seen[r.id] = m
            rows.extend(part)
        ids, audio, short = [], [], []
        for row in rows:
            try:
                wav = load_audio(row.audio)
            except AudioError as e:
                raise AudioError(f"{manifest}: row {row.id!r}: {e}") from None
            if wav.shape[0] < max(min_seconds * TARGET_SR, WIN):
                short.append(row.id)
                continue
            ids.append(row.id)
            audio.append(np.round(wav * 32767.0).astype(np.int16))
        if short:
            log.warning("%s: left out %d utterance(s) shorter than %.2f s (e.g. %s)", manifest, len(short),
                        min_seconds, ", ".join(short[:3]))
        if not ids:
            raise ValueError(f"{manifest}: every utterance is shorter than min_seconds={min_seconds}")
        store = cls(ids=ids, audio=audio, manifest=str(manifest))
        log.info("%s: %d utterances, %.2f h of audio in memory", manifest, len(ids), store.seconds().sum() / 3600)
        return store


def epoch_batches(seconds: np.ndarray, batch_seconds: float, max_seconds: float, seed: int, epoch: int) -> list:
    """Shuffled, length-bucketed batches of indices for one epoch; a pure function of (seed, epoch).

    Utterances are shuffled, grouped in pools of ~50 batches, sorted by length inside a pool (less
    padding), packed greedily so that ``rows x longest (cropped) row <= batch_seconds``, and the
    batch order is shuffled again.
    """
    rng = np.random.default_rng([seed, epoch])
    dur = np.minimum(seconds, max_seconds)
    order = rng.permutation(len(dur))
    per_batch = max(1, int(batch_seconds / max(float(dur.mean()), 1e-3)))
    pool = per_batch * 50
    batches = []
    for start in range(0, len(order), pool):
        batches += pack_batches(sorted(order[start:start + pool], key=lambda i: dur[i]), dur, batch_seconds)
    return [batches[j] for j in rng.permutation(len(batches))]


def crop_plan(num_samples: int, max_samples: int, rng: np.random.Generator) -> tuple[int, int]:
    """A frame-aligned crop ``(start_sample, length)``: cropped frame t is original frame start/HOP + t."""
    if num_samples <= max_samples:
        return 0, num_samples
    keep_frames = num_frames(max_samples)
    start_frame = int(rng.integers(0, num_frames(num_samples) - keep_frames + 1))
    return start_frame * HOP, (keep_frames - 1) * HOP + WIN


def make_batch(store: AudioStore, labels: Sequence[np.ndarray], idx: Sequence[int], max_seconds: float,
               rng: Optional[np.random.Generator]) -> dict:
    """Collate utterances ``idx`` (random frame-aligned crops when longer than ``max_seconds``)."""
    max_samples = int(max_seconds * TARGET_SR)
    pieces = []
    for i in idx:
        n = store.audio[i].shape[0]
        start, length = crop_plan(n, max_samples, rng) if rng is not None else (0, min(n, max_samples))
        wav = store.wav(i)[start:start + length]
        lab = labels[i][start // HOP: start // HOP + num_frames(length)]
        pieces.append((wav, lab))
    S = max(p[0].shape[0] for p in pieces)
    T = max(num_frames(S), max(p[1].shape[0] for p in pieces))
    wav = torch.zeros(len(pieces), S)
    tgt = torch.full((len(pieces), T), -100, dtype=torch.long)
    for b, (w, lab) in enumerate(pieces):
        wav[b, : w.shape[0]] = torch.from_numpy(w)
        tgt[b, : lab.shape[0]] = torch.from_numpy(lab.astype(np.int64))
    return {"wav": wav, "wav_lens": torch.tensor([p[0].shape[0] for p in pieces]), "targets": tgt}


def generate_quick_audio(out_dir: str | Path, num: int = 32, seconds: float = 2.0, seed: int = 0) -> Path:
    """Write ``num`` speech-like utterances (voiced harmonics through moving formants, noise bursts,
    pauses) and their manifest; used by ``--quick`` when no manifest is given. Returns the manifest."""
    from ..data.audio import write_audio
    from ..data.manifest import write_manifest
    from scipy.signal import lfilter

    out_dir = Path(out_dir)
    rng = np.random.default_rng(seed)
    rows = []
    sr = TARGET_SR
    for u in range(num):
        segs = []
        while sum(s.shape[0] for s in segs) < seconds * sr:
            n = int(rng.uniform(0.06, 0.25) * sr)
            kind = rng.choice(["voiced", "voiced", "noise", "pause"])
            if kind == "pause":
                seg = 0.002 * rng.standard_normal(n)
            elif kind == "noise":
                seg = lfilter([1.0], [1.0, -rng.uniform(-0.9, 0.9)], rng.standard_normal(n)) * 0.05
            else:
                f0 = rng.uniform(90, 240) * np.linspace(1.0, rng.uniform(0.8, 1.2), n)
                src = np.sign(np.sin(2 * np.pi * np.cumsum(f0) / sr)) * 0.1
                seg = src
                for formant in rng.uniform([300, 900, 2200], [900, 2200, 3200]):
                    r = 0.97
                    theta = 2 * np.pi * formant / sr
                    seg = lfilter([1 - r], [1.0, -2 * r * np.cos(theta), r * r], seg)
                seg = seg / (np.abs(seg).max() + 1e-6) * rng.uniform(0.2, 0.6)
            segs.append(seg)
        wav = np.concatenate(segs)[: int(seconds * sr)].astype(np.float32)
        path = out_dir / "audio" / f"quick-{u:04d}.wav"
        write_audio(path, wav)
        rows.append(Utterance(id=f"quick-{u:04d}", audio=str(path), duration=wav.shape[0] / sr, sample_rate=sr))
    return write_manifest(out_dir / "train.jsonl", rows)
