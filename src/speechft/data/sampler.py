"""Length-bucketed batching: batches of similar durations under a budget of padded seconds.

Speech utterances vary from under a second to tens of seconds. Batching them at random pads every
row to the longest one in its batch, so most of the compute goes to zeros; a fixed batch size also
either wastes memory on short clips or runs out of it on long ones. :class:`LengthBucketSampler`
sorts utterances by duration (with a little per-epoch jitter, so neighbours change between
epochs), fills each batch while ``len(batch) * longest_duration <= max_batch_seconds`` (the padded
size the model actually sees) and shuffles the order of the batches per epoch.

It is a *batch sampler*: iterating it yields ``list[int]`` of dataset indices, so it goes to
``DataLoader(dataset, batch_sampler=sampler, collate_fn=collate)``.
"""
from __future__ import annotations

import logging
from typing import Iterable, Iterator, Optional, Sequence

import numpy as np
from torch.utils.data import Sampler

log = logging.getLogger(__name__)

# Relative jitter on durations before sorting when shuffling: utterances within ±5% of each other
# can swap places, so batch composition changes between epochs while padding stays small.
_JITTER = 0.05


def pack_batches(order: Iterable[int], sizes: Sequence[float], budget: float,
                 max_items: Optional[int] = None) -> list[list[int]]:
    """Greedy length packing: the one batch packer of the toolkit (sampler, probe, pre-training).

    Walks the indices in ``order`` once and appends each to the current batch unless that would
    make the batch's padded size ``(len(batch) + 1) * max(sizes in batch)`` exceed ``budget`` (or
    the batch already holds ``max_items``); then the batch is closed and the index starts the next.

    Contract:
        * every index of ``order`` lands in exactly one batch, in ``order``'s order: batches are
          consecutive runs of ``order``, so sort (or pool and sort) before packing;
        * an index whose size alone exceeds ``budget`` forms a batch of its own (nothing is dropped);
        * sizes are used as given (seconds, frames, ...): callers floor or clip them beforehand;
        * a pure function: the same arguments give the same batches, bit for bit.
    Returns ``list[list[int]]`` of indices (plain ints).
    """
    batches: list[list[int]] = []
    cur: list[int] = []
    longest = 0.0
    for i in order:
        size = float(sizes[i])
        new_longest = max(longest, size)
        full = max_items is not None and len(cur) >= max_items
        if cur and (full or (len(cur) + 1) * new_longest > budget):
            batches.append(cur)
            cur, new_longest = [], size
        cur.append(int(i))
        longest = new_longest
    if cur:
        batches.append(cur)
    return batches


class LengthBucketSampler(Sampler):
    """Batch sampler over ``durations`` (seconds, one per dataset index).

    Args:
        durations: duration in seconds of every dataset item (e.g. ``AudioDataset.durations()``).
        max_batch_seconds: budget on the *padded* batch, ``len(batch) * max(durations in batch)``.
            An item longer than the budget forms a batch of its own; nothing is dropped silently.
        shuffle: jitter the sort and shuffle batch order per epoch, deterministically from
            ``(seed, epoch)``. Without it batches come shortest-first, identical every epoch.
        seed: base seed; every rank must use the same one.
        num_replicas, rank: distributed data parallel. The epoch's batches are split round-robin;
            every rank gets the same number of batches. When the count does not divide evenly,
            ``drop_last=False`` pads by repeating the first batches of the (shuffled) epoch, and
            ``drop_last=True`` drops the last ones of the epoch (which ones changes per epoch).
            All ranks compute the same plan from ``(seed, epoch)``, so no communication is needed.
        max_batch_size: optional cap on the number of items per batch.

    Resuming: ``state_dict()`` returns ``{"epoch", "batches_done", "seed"}``; after
    ``load_state_dict`` the next iteration skips the ``batches_done`` batches already consumed
    and yields exactly the remaining ones of that epoch. Pass the count your training loop really
    consumed (``state_dict(batches_done=step_in_epoch)``) when a DataLoader with workers prefetches
    ahead of the loop.
    """

    def __init__(
        self,
        durations: Sequence[float],
        max_batch_seconds: float,
        shuffle: bool = True,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        drop_last: bool = False,
        max_batch_size: Optional[int] = None,
    ):
        self.durations = np.asarray(durations, dtype=np.float64)
        if self.durations.ndim != 1 or self.durations.size == 0:
            raise ValueError("LengthBucketSampler: durations must be a non-empty 1-D sequence of seconds")
        if not np.isfinite(self.durations).all() or (self.durations < 0).any():
            bad = int(np.flatnonzero(~np.isfinite(self.durations) | (self.durations < 0))[0])
            raise ValueError(f"LengthBucketSampler: duration of item {bad} is {self.durations[bad]!r}; "
                             "expected a finite number of seconds >= 0")
        if not max_batch_seconds > 0:
            raise ValueError(f"LengthBucketSampler: max_batch_seconds must be > 0, got {max_batch_seconds!r}")
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"LengthBucketSampler: need 0 <= rank < num_replicas, got rank={rank}, "
                             f"num_replicas={num_replicas}")
        if max_batch_size is not None and max_batch_size < 1:
            raise ValueError(f"LengthBucketSampler: max_batch_size must be >= 1, got {max_batch_size}")
        self.max_batch_seconds = float(max_batch_seconds)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)
        self.drop_last = drop_last
        self.max_batch_size = max_batch_size
        self.epoch = 0
        self.batches_done = 0
        self._plan_cache: tuple[int, list[list[int]]] | None = None

    # -- planning -------------------------------------------------------------------------------
    def _rng(self, epoch: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, epoch])

    def _epoch_batches(self, epoch: int) -> list[list[int]]:
        """All batches of one epoch (every rank), in the order they are dealt out."""
        rng = self._rng(epoch)
        d = self.durations
        if self.shuffle:
            key = d * (1.0 + rng.uniform(-_JITTER, _JITTER, size=d.shape))
            order = np.argsort(key, kind="stable")
        else:
            order = np.argsort(d, kind="stable")
        batches = pack_batches(order.tolist(), d, self.max_batch_seconds, self.max_batch_size)
        if self.shuffle:
            perm = rng.permutation(len(batches))
            batches = [batches[j] for j in perm]
        R = self.num_replicas
        rem = len(batches) % R
        if rem:
            if self.drop_last and len(batches) >= R:
                batches = batches[: len(batches) - rem]
            else:  # pad by repeating from the start so every rank takes the same number of steps
                need = R - rem
                batches = batches + [batches[j % len(batches)] for j in range(need)]
        return batches

    def _rank_batches(self, epoch: int) -> list[list[int]]:
        if self._plan_cache is None or self._plan_cache[0] != epoch:
            self._plan_cache = (epoch, self._epoch_batches(epoch)[self.rank :: self.num_replicas])
        return self._plan_cache[1]

    # -- torch Sampler protocol -----------------------------------------------------------------
    def __iter__(self) -> Iterator[list[int]]:
        batches = self._rank_batches(self.epoch)
        start = self.batches_done
        if start > len(batches):
            raise ValueError(f"LengthBucketSampler: resume state says {start} batches done but epoch "
                             f"{self.epoch} has only {len(batches)} on rank {self.rank}")
        for k in range(start, len(batches)):
            self.batches_done = k + 1
            yield list(batches[k])
        # The epoch is complete: a later iteration without set_epoch() starts it from the top.
        self.batches_done = 0

    def __len__(self) -> int:
        """Batches the next iteration yields on this rank (an epoch minus any resumed-over ones)."""
        return len(self._rank_batches(self.epoch)) - self.batches_done

    def num_batches(self, epoch: Optional[int] = None) -> int:
        """Batches of a whole epoch on this rank (may differ by a few between epochs when shuffling)."""
        return len(self._rank_batches(self.epoch if epoch is None else epoch))

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's plan. Re-selecting the current epoch keeps a resumed position."""
        if epoch != self.epoch:
            self.epoch = int(epoch)
            self.batches_done = 0

    def state_dict(self, batches_done: Optional[int] = None) -> dict:
        """``{"epoch", "batches_done", "seed"}``; ``batches_done`` overrides the sampler's own count."""
        done = self.batches_done if batches_done is None else int(batches_done)
        return {"epoch": self.epoch, "batches_done": done, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        for key in ("epoch", "batches_done"):
            if key not in state:
                raise KeyError(f"LengthBucketSampler state is missing {key!r} (got keys {sorted(state)})")
        if "seed" in state and int(state["seed"]) != self.seed:
            raise ValueError(f"LengthBucketSampler state was saved with seed {state['seed']}, "
                             f"this sampler has seed {self.seed}; resuming would replay different batches")
        self.epoch = int(state["epoch"])
        self.batches_done = int(state["batches_done"])
        if not 0 <= self.batches_done <= self.num_batches():
            raise ValueError(f"LengthBucketSampler state: batches_done={self.batches_done} outside "
                             f"0..{self.num_batches()} for epoch {self.epoch}")


def padding_fraction(batches: Sequence[Sequence[int]], durations: Sequence[float]) -> float:
    """Share of padded time: ``sum(B*max - sum) / sum(B*max)`` over ``batches`` of indices."""
    d = np.asarray(durations, dtype=np.float64)
    total = padded = 0.0
    for b in batches:
        if len(b) == 0:
            continue
        db = d[np.asarray(b, dtype=np.int64)]
        size = len(b) * float(db.max())
        total += size
        padded += size - float(db.sum())
    return padded / total if total > 0 else 0.0


def random_batches(durations: Sequence[float], max_batch_seconds: float, seed: int = 0) -> list[list[int]]:
    """Baseline: shuffle, then fill batches under the same padded-seconds budget (for comparison)."""
    d = np.asarray(durations, dtype=np.float64)
    return pack_batches(np.random.default_rng(seed).permutation(len(d)).tolist(), d, max_batch_seconds)
