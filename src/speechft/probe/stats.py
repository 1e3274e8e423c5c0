"""Bootstrap intervals for probe results (DESIGN §5): test-set sampling and seed variation.

A cell (one model, one task) is the mean over seeds of the test metric. Its bootstrap replicate
draws the test utterances with replacement (the same draw for every seed) and the seeds with
replacement, and averages the seeds' metrics on the drawn utterances. Error rates are corpus-level
(``sum(errors) / sum(lengths)`` over the drawn utterances), accuracies the mean correctness.

The utterance draws depend only on the test set (the records' ``data_key``) and the replicate
count, so two models probed on the same data see *identical* draws: the difference of their
replicates is a paired bootstrap of the difference. Replicates of several tasks (different test
sets, independent draws) are combined replicate by replicate, e.g. into a SUPERB-style score.

Records need per-utterance ``test_items`` (written by :func:`speechft.probe.run_probe` since record
schema 2); without them no interval is given (``None``).
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

N_BOOT = 1000
LEVEL = 0.95


@dataclass(frozen=True)
class Interval:
    """A point estimate with its bootstrap interval (same units as the metric)."""

    mean: float
    lo: float
    hi: float

    @property
    def excludes_zero(self) -> bool:
        return self.lo > 0 or self.hi < 0

    def scaled(self, k: float) -> "Interval":
        lo, hi = sorted((self.lo * k, self.hi * k))
        return Interval(self.mean * k, lo, hi)


def _seed_of(text: str) -> int:
    return zlib.crc32(text.encode())


def _utterance_draws(data_key: str, n_items: int, n_boot: int) -> np.ndarray:
    """``[n_boot, n_items]`` indices: a function of the test set only (pairs models on the same data)."""
    rng = np.random.default_rng(_seed_of(f"utts|{data_key}|{n_items}"))
    return rng.integers(0, n_items, size=(n_boot, n_items))


def _per_seed(records: Sequence[dict], idx: np.ndarray) -> np.ndarray:
    """``[n_seeds, n_boot]`` metric of each seed's items on each utterance draw."""
    out = []
    for r in records:
        it = r["test_items"]
        if "correct" in it:
            out.append(np.asarray(it["correct"], dtype=np.float64)[idx].mean(axis=1))
        else:
            e, n = np.asarray(it["errors"], dtype=np.float64), np.asarray(it["lengths"], dtype=np.float64)
            out.append(e[idx].sum(axis=1) / np.maximum(n[idx].sum(axis=1), 1.0))
    return np.stack(out)


def has_items(records: Sequence[dict]) -> bool:
    return bool(records) and all(r.get("test_items") for r in records)


def replicates(records: Sequence[dict], n_boot: int = N_BOOT) -> Optional[np.ndarray]:
    """``[n_boot]`` bootstrap replicates of the mean metric of one cell, or None without
    per-utterance items. ``records``: one per seed of one model (equal ``group_key``), or of several
    models of one row (e.g. one per fine-tuning seed, each with its probe seeds): the replicate then
    resamples the models, and within each model its probe seeds, on one utterance draw."""
    if not has_items(records):
        return None
    n_items = {len(next(iter(r["test_items"].values()))) for r in records}
    if len(n_items) != 1 or len({r.get("data_key") for r in records}) != 1:
        raise ValueError("records of one cell come from different test sets")
    data_key = str(records[0].get("data_key"))
    idx = _utterance_draws(data_key, n_items.pop(), n_boot)
    groups: dict = {}
    for r in records:
        groups.setdefault(r.get("group_key"), []).append(r)
    per_group = []
    for g, recs in groups.items():
        per_seed = _per_seed(recs, idx)
        rng = np.random.default_rng(_seed_of(f"seeds|{data_key}|{g}"))
        pick = rng.integers(0, len(recs), size=(n_boot, len(recs)))
        per_group.append(per_seed[pick, np.arange(n_boot)[:, None]].mean(axis=1))
    per_group = np.stack(per_group)  # [G, n_boot]
    if len(per_group) == 1:
        return per_group[0]
    rng = np.random.default_rng(_seed_of(f"groups|{data_key}|{sorted(map(str, groups))}"))
    pick = rng.integers(0, len(per_group), size=(n_boot, len(per_group)))
    return per_group[pick, np.arange(n_boot)[:, None]].mean(axis=1)


def point(records: Sequence[dict]) -> float:
    """The cell's point estimate: mean over models (groups) of the mean over their seeds."""
    groups: dict = {}
    for r in records:
        groups.setdefault(r.get("group_key"), []).append(float(r["value"]))
    return float(np.mean([np.mean(v) for v in groups.values()]))


def interval(point: float, reps: Optional[np.ndarray], level: float = LEVEL) -> Optional[Interval]:
    """Percentile interval of ``reps`` around the point estimate (None without replicates)."""
    if reps is None:
        return None
    a = (1 - level) / 2
    lo, hi = np.quantile(reps, [a, 1 - a])
    return Interval(float(point), float(lo), float(hi))


def cell(records: Sequence[dict], n_boot: int = N_BOOT) -> Optional[Interval]:
    """Seed-mean test metric of one cell with its interval."""
    return interval(point(records), replicates(records, n_boot))


def difference(a: Sequence[dict], b: Sequence[dict], n_boot: int = N_BOOT) -> Optional[Interval]:
    """Paired bootstrap of mean(a) − mean(b) on one task (both probed on the same test set)."""
    if {r.get("data_key") for r in a} != {r.get("data_key") for r in b}:
        raise ValueError("a paired difference needs both models probed on the same test data")
    ra, rb = replicates(a, n_boot), replicates(b, n_boot)
    return interval(point(a) - point(b), None if ra is None or rb is None else ra - rb)
