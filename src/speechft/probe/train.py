"""Train one downstream head on frozen features and report the dev-selected test metric.

Feature sources give the head what it would get from the frozen encoder:

    source.inputs(idx, pooled) -> (states, frame_lens)
        states      list of L+1 FloatTensor [B, T, F]   (T = longest utterance of the batch),
                    or the same stacked in one FloatTensor [L+1, B, T, F] (cached frames),
                    or, for ``pooled=True`` on a cached source, list of L+1 FloatTensor [B, 1, F]
                    holding each utterance's per-layer mean (frame_lens then all ones)
        frame_lens  LongTensor [B]

Mean pooling is linear, so ``head(pooled states, ones)`` equals ``head(frames, frame_lens)`` for the
pooled heads (weighted layer sum, then mean over frames, then linear): the cached source serves
pooled vectors to classification heads and every epoch costs microseconds. :class:`OnlineSource`
runs the frozen encoder at every step instead (the s3prl way); the benchmark compares the two.

Training: Adam, loss summed over the batch and divided by its number of units (tokens for CTC,
utterances otherwise), gradient-norm clip, the dev metric after every epoch picks the checkpoint,
the test metric of that checkpoint is reported.
"""
from __future__ import annotations

import copy
import itertools
import logging
import time
from dataclasses import asdict, dataclass
from typing import Optional, Sequence

import numpy as np
import torch

from ..data.sampler import pack_batches
from ..metrics import accuracy, accuracy_items, error_items, error_rate
from ..utils.jobs import intra_op_threads
from ..utils.names import UnknownNameError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProbeConfig:
    """How a head is trained (what is trained is the task's business, or a probe profile's).

    Batching: pooled heads take ``batch_size`` utterances; frame-level (CTC) heads take batches of
    at most ``batch_seconds`` padded seconds, or, with ``batch_seconds=None``, ``batch_size``
    length-bucketed utterances (s3prl's bucketing). ``grad_accum`` batches make one optimizer step.

    Length and selection: with ``eval_every=None`` the dev metric is measured after every epoch and
    training stops after ``epochs`` epochs or after the epoch that reaches ``max_steps`` optimizer
    steps; with ``eval_every=N`` it is measured every N optimizer steps (and at the end) and training
    stops at exactly ``max_steps`` steps (s3prl's ``total_steps``/``eval_step``). At least one of
    ``epochs`` and ``max_steps`` is set.
    """

    epochs: Optional[int]
    lr: float
    batch_seconds: Optional[float] = 60.0
    batch_size: int = 32
    grad_clip: float = 1.0
    max_steps: Optional[int] = None
    grad_accum: int = 1
    eval_every: Optional[int] = None

    def __post_init__(self):
        if self.epochs is None and self.max_steps is None:
            raise ValueError("a probe needs epochs or max_steps (both unset: it would never stop)")
        for name in ("epochs", "max_steps", "eval_every"):
            v = getattr(self, name)
            if v is not None and int(v) < 1:
                raise ValueError(f"{name} must be at least 1, not {v}")
        if self.grad_accum < 1 or self.batch_size < 1:
            raise ValueError(f"grad_accum and batch_size must be at least 1 (got {self.grad_accum}, {self.batch_size})")
        if self.batch_seconds is not None and self.batch_seconds <= 0:
            raise ValueError(f"batch_seconds must be positive or None, not {self.batch_seconds}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, not {self.lr}")

    def to_dict(self) -> dict:
        return asdict(self)


# Per head type, chosen on speechft-tiny features of the default lite data (docs/probe.md):
# * pooled heads: an epoch over cached pooled vectors costs milliseconds, so many small steps are
#   cheap; with 1e-3 / 40 epochs of 32 the SID dev accuracy was still rising (0.35), 3e-3 / 100 of 16
#   reached 0.54. A 4000-step cap keeps big train sets (FSDD: 2400 utterances) to ~27 epochs.
# * linear CTC: SUPERB's PR learning rate (1e-2); 16-s batches give 4x the steps of 60-s ones for
#   the same compute, which CTC needs to leave its all-blank plateau (PER 0.97 -> 0.90 at 20 epochs).
# * BiLSTM CTC: the most expensive head (sequential recurrence), sized to the time budget: 10 epochs
#   of 30-s batches at 1e-3 beat 15 epochs of 60-s batches at 5e-4 (CER 0.955 vs 0.972) in 58 % of
#   the time.
# Epochs keep the default suite on speechft-tiny within ~10 min on 2 CPU cores; quick mode divides
# them by QUICK_DIVISOR.
HEAD_DEFAULTS = {
    "pool_linear": ProbeConfig(epochs=100, lr=3e-3, batch_size=16, max_steps=4000),
    "slots_linear": ProbeConfig(epochs=100, lr=3e-3, batch_size=16, max_steps=4000),
    "linear_ctc": ProbeConfig(epochs=20, lr=1e-2, batch_seconds=16.0),
    "bilstm_ctc": ProbeConfig(epochs=10, lr=1e-3, batch_seconds=30.0),
}
QUICK_DIVISOR = 4


def default_config(task, quick: bool = False, epochs: Optional[int] = None, **overrides) -> ProbeConfig:
    """The fast profile's training settings of ``task`` (its head type's :data:`HEAD_DEFAULTS`)."""
    base = HEAD_DEFAULTS.get(task.head)
    if base is None:
        raise UnknownNameError(f"task {task.name}: no training defaults for head {task.head!r}; known: {', '.join(HEAD_DEFAULTS)}")
    return adjust_config(base, quick=quick, epochs=epochs, **overrides)


def adjust_config(base: ProbeConfig, quick: bool = False, epochs: Optional[int] = None, **overrides) -> ProbeConfig:
    """``base`` with quick mode (epochs / QUICK_DIVISOR), an exact number of epochs (no step cap)
    and per-field overrides (None values ignored) applied."""
    kw = base.to_dict()
    if quick and base.epochs is not None:
        kw["epochs"] = max(3, base.epochs // QUICK_DIVISOR)
    if epochs is not None:  # an explicit number of epochs is honoured exactly (no step cap)
        if epochs < 1:
            raise ValueError(f"epochs must be at least 1, not {epochs}")
        kw["epochs"] = int(epochs)
        kw["max_steps"] = None
    unknown = set(overrides) - set(kw)
    if unknown:
        raise TypeError(f"unknown probe training option(s) {sorted(unknown)}; known: {sorted(kw)}")
    kw.update({k: v for k, v in overrides.items() if v is not None})
    return ProbeConfig(**kw)


def uses_pooled(task) -> bool:
    return task.kind in ("classify", "slots")


# -- feature sources ---------------------------------------------------------------------------
class CachedSource:
    """Features of one split read from a :class:`~speechft.probe.cache.FeatureCache`."""

    # A split whose pooled vectors (lite: ~3 MB per split), resp. frames as float32 (lite-pr, 60
    # utterances: ~36 MB), fit in this many bytes is read once into RAM, the frames converted to
    # float32 and laid out [L+1, frames, F] once; a bigger one is read per batch from the
    # memory-mapped shards. Reading, converting and padding float16 frames at every batch was a third
    # of a linear CTC head's training time.
    POOLED_IN_RAM_BYTES = 256 * 2**20
    FRAMES_IN_RAM_BYTES = 512 * 2**20

    def __init__(self, cache, ids: Sequence[str]):
        self.cache = cache
        self.ids = list(ids)
        self.lengths = [cache.num_frames(u) for u in self.ids]
        self._pooled_all: Optional[torch.Tensor] = None
        self._frames_all: Optional[torch.Tensor] = None  # [L+1, Σ frames, F] float32
        self._offsets = [0, *itertools.accumulate(self.lengths)][:-1]  # utterance i's first frame in it

    def __len__(self) -> int:
        return len(self.ids)

    def inputs(self, idx: Sequence[int], pooled: bool):
        ids = [self.ids[i] for i in idx]
        if pooled:
            p = self._pooled_rows(idx, ids)  # [B, L+1, F]
            return list(p[:, :, None, :].unbind(1)), torch.ones(len(ids), dtype=torch.long)
        frames = self._frame_rows(idx, ids)  # list of [L+1, T_i, F]
        T = max(f.shape[1] for f in frames)
        x = torch.zeros((frames[0].shape[0], len(frames), T, frames[0].shape[2]), dtype=torch.float32)
        for b, f in enumerate(frames):
            x[:, b, : f.shape[1]] = f  # float16 -> float32 as it is copied, when read per batch
        return x, torch.tensor([f.shape[1] for f in frames], dtype=torch.long)  # x: [L+1, B, T, F]

    def _frame_rows(self, idx: Sequence[int], ids: Sequence[str]) -> list[torch.Tensor]:
        if self._frames_all is None and self.ids:
            one = self.cache.frames(self.ids[:1])[0]  # [T, L+1, F] float16
            per_frame = one[0].size * 4
            if per_frame * sum(self.lengths) <= self.FRAMES_IN_RAM_BYTES:
                everything = torch.empty((one.shape[1], sum(self.lengths), one.shape[2]), dtype=torch.float32)
                for start in range(0, len(self.ids), 256):
                    for i, f in enumerate(self.cache.frames(self.ids[start: start + 256]), start):
                        everything[:, self._offsets[i]: self._offsets[i] + f.shape[0]] = torch.from_numpy(f).transpose(0, 1)
                self._frames_all = everything
        if self._frames_all is not None:
            return [self._frames_all[:, self._offsets[i]: self._offsets[i] + self.lengths[i]] for i in idx]
        return [torch.from_numpy(f).transpose(0, 1) for f in self.cache.frames(ids)]


    def _pooled_rows(self, idx: Sequence[int], ids: Sequence[str]) -> torch.Tensor:
        if self._pooled_all is None and self.ids:
            one = self.cache.pooled(self.ids[:1])  # [1, L+1, F] float32
            if one.nbytes * len(self.ids) <= self.POOLED_IN_RAM_BYTES:
                self._pooled_all = torch.from_numpy(self.cache.pooled(self.ids))
        if self._pooled_all is not None:
            return self._pooled_all[torch.as_tensor(list(idx), dtype=torch.long)]
        return torch.from_numpy(self.cache.pooled(ids))


class OnlineSource:
    """Runs the frozen encoder on the audio of every batch (no cache): the s3prl way."""

    def __init__(self, encoder, rows, device: str = "cpu"):
        from ..data.dataset import AudioDataset

        self.encoder, self.device = encoder.eval(), device
        self.ds = AudioDataset(rows)
        self.ids = [r.id for r in rows]
        self.lengths = [d * encoder.frame_rate for d in self.ds.durations()]
        self.forwards = 0
        # The encoder keeps the thread count it has now, even inside head training's single-thread block.
        self.threads = torch.get_num_threads()

    def __len__(self) -> int:
        return len(self.ids)

    def inputs(self, idx: Sequence[int], pooled: bool):
        from ..data.dataset import collate

        batch = collate([self.ds[i] for i in idx])
        with torch.inference_mode(), intra_op_threads(self.threads):
            states, frame_lens = self.encoder(batch["wav"].to(self.device), batch["wav_lens"].to(self.device))
        self.forwards += 1
        T = states[0].shape[1]  # clone: plain tensors (usable by autograd) on the encoder's device
        return [s.float().clone() for s in states], frame_lens.clamp(min=1, max=T)


# -- batching ----------------------------------------------------------------------------------
def frame_batches(lengths: Sequence[float], max_frames: float, rng: Optional[np.random.Generator]) -> list[list[int]]:
    """Length-bucketed batches with at most ``max_frames`` padded frames (one longer utterance alone).
    With ``rng``: shuffled pools of similar lengths and shuffled batch order; without: length-sorted."""
    n = len(lengths)
    if rng is None:
        order = sorted(range(n), key=lambda i: (lengths[i], i))
        pools = [order]
    else:
        perm = rng.permutation(n).tolist()
        size = 64  # sort within pools of 64 random utterances: little padding, still random batches
        pools = [sorted(perm[i: i + size], key=lambda j: lengths[j]) for i in range(0, n, size)]
    sizes = [max(float(L), 1.0) for L in lengths]  # an empty utterance still counts one frame
    batches = [b for pool in pools for b in pack_batches(pool, sizes, max_frames)]
    if rng is not None:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def bucket_batches(lengths: Sequence[float], batch_size: int, rng: Optional[np.random.Generator]) -> list[list[int]]:
    """Batches of ``batch_size`` utterances of similar lengths: with ``rng``, shuffled pools of
    64 utterances sorted by length, then shuffled batch order; without, length-sorted."""
    n = len(lengths)
    if rng is None:
        pools = [sorted(range(n), key=lambda i: (lengths[i], i))]
    else:
        perm = rng.permutation(n).tolist()
        size = max(64, batch_size)
        pools = [sorted(perm[i: i + size], key=lambda j: lengths[j]) for i in range(0, n, size)]
    batches = [pool[i: i + batch_size] for pool in pools for i in range(0, len(pool), batch_size)]
    if rng is not None:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def count_batches(n: int, batch_size: int, rng: Optional[np.random.Generator]) -> list[list[int]]:
    order = rng.permutation(n).tolist() if rng is not None else list(range(n))
    return [order[i: i + batch_size] for i in range(0, n, batch_size)]


# -- evaluation --------------------------------------------------------------------------------
@torch.no_grad()
def evaluate(head, task, vocab, source, targets: Sequence, refs: Optional[Sequence[str]], cfg: ProbeConfig,
             frame_rate: float, pooled: bool, device: str = "cpu", items: bool = False):
    """The task metric of ``head`` on one split (error rate as a fraction, or accuracy); with
    ``items``, ``(metric, per-utterance items)`` (:func:`speechft.metrics.error_items` /
    :func:`~speechft.metrics.accuracy_items`, in the split's row order) for bootstrap intervals."""
    head.eval()
    if pooled:
        batches = count_batches(len(source), max(cfg.batch_size, 128), None)
    elif cfg.batch_seconds is None:
        batches = bucket_batches(source.lengths, cfg.batch_size, None)
    else:
        batches = frame_batches(source.lengths, cfg.batch_seconds * frame_rate, None)
    preds: list = [None] * len(source)
    for idx in batches:
        states, frame_lens = _to(source.inputs(idx, pooled), device)
        out = head.predict(head(states, frame_lens), frame_lens)
        for i, p in zip(idx, out):
            preds[i] = p
    if task.kind == "ctc":
        hyps = [vocab.decode_ctc(p, task) for p in preds]
        value = error_rate(task.metric, list(refs), hyps)
        return (value, error_items(task.metric, list(refs), hyps)) if items else value
    value = accuracy(preds, list(targets))
    return (value, accuracy_items(preds, list(targets))) if items else value


def head_threads(head, pooled: bool, device: str) -> Optional[int]:
    """torch threads while ``head`` trains on CPU: 1 for heads made of small operations, the caller's
    (None) for a linear head on frames: its [B·T, (L+1)·F] products are big enough to share out
    (linear CTC on lite-pr, 2 idle cores: 1.2 s with 2 threads, 1.6 s with 1).

    Small operations: a pooled linear on [B, L+1, F], a BiLSTM's per-frame [B, H] recurrence.
    Measured on 2 busy cores: a [8, 32] linear took 24 ms with 2 threads and microseconds with 1; a
    BiLSTM step (27 x 110 frames, 1 x 128) 0.3 s with 1 thread and 0.8-5 s with 2 (3x the CPU time)."""
    if device != "cpu":
        return None
    return 1 if pooled or getattr(head, "rnn", None) is not None or getattr(head, "kind", None) != "ctc" else None


def _better(a: float, b: Optional[float], higher: bool) -> bool:
    return b is None or (a > b if higher else a < b)


def train_head(head, task, vocab, sources: dict, targets: dict, refs: dict, cfg: ProbeConfig, seed: int,
               frame_rate: float, pooled: Optional[bool] = None, progress: bool = True, desc: str = "probe",
               device: str = "cpu") -> dict:
    """Train ``head`` on ``sources["train"]``; select on dev each epoch; return the test result.

    ``targets[split]`` are the encoded targets per utterance (token-id lists, class indices, slot
    index lists; -1 marks a dev/test label never seen in training, which can only count as wrong);
    ``refs[split]`` are the reference strings of CTC tasks. Deterministic for a seed.
    """
    pooled = uses_pooled(task) and isinstance(sources["train"], CachedSource) if pooled is None else pooled
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    head.to(device)
    with intra_op_threads(head_threads(head, pooled, device)):
        return _train(head, task, vocab, sources, targets, refs, cfg, rng, frame_rate, pooled, progress, desc, device)


def _to(batch, device: str):
    states, frame_lens = batch
    if device == "cpu":
        return states, frame_lens
    if torch.is_tensor(states):
        return states.to(device, non_blocking=True), frame_lens.to(device)
    return [s.to(device, non_blocking=True) for s in states], frame_lens.to(device)


def epoch_batches(task, source, cfg: ProbeConfig, frame_rate: float, pooled: bool,
                  rng: Optional[np.random.Generator]) -> list[list[int]]:
    """One epoch's training batches (index lists into ``source``), as :class:`ProbeConfig` says."""
    if pooled or task.kind != "ctc":
        return count_batches(len(source), cfg.batch_size, rng)
    if cfg.batch_seconds is None:
        return bucket_batches(source.lengths, cfg.batch_size, rng)
    return frame_batches(source.lengths, cfg.batch_seconds * frame_rate, rng)


def epochs_to_run(cfg: ProbeConfig, batches_per_epoch: int) -> Optional[int]:
    """Epochs of a per-epoch schedule (``cfg.epochs`` capped by ``max_steps``); None for a step
    schedule without an epoch limit."""
    per_epoch = max(1, -(-batches_per_epoch // cfg.grad_accum))
    cap = -(-cfg.max_steps // per_epoch) if cfg.max_steps else None
    if cfg.epochs is None:
        return None if cfg.eval_every else cap
    return max(1, min(cfg.epochs, cap)) if cap and not cfg.eval_every else cfg.epochs


def _train(head, task, vocab, sources, targets, refs, cfg, rng, frame_rate, pooled, progress, desc, device) -> dict:
    from tqdm.auto import tqdm

    opt = torch.optim.Adam(head.parameters(), lr=cfg.lr)
    higher = task.higher_is_better
    sel = {"best": None, "state": None, "epoch": -1, "step": 0}
    history: list = []
    train_src, train_tgt = sources["train"], targets["train"]
    t0 = time.perf_counter()
    step_schedule = cfg.eval_every is not None
    epochs = epochs_to_run(cfg, len(epoch_batches(task, train_src, cfg, frame_rate, pooled, None)))
    bar = tqdm(total=cfg.max_steps if step_schedule else epochs, desc=desc, unit="step" if step_schedule else "epoch",
               disable=not progress, leave=False)

    def select(epoch: int, step: int, loss: float) -> None:
        dev = evaluate(head, task, vocab, sources["dev"], targets["dev"], refs.get("dev"), cfg, frame_rate, pooled, device)
        head.train()
        history.append({"epoch": epoch, "step": step, "train_loss": loss, "dev": dev})
        if _better(dev, sel["best"], higher):
            sel.update(best=dev, epoch=epoch, step=step, state=copy.deepcopy(head.state_dict()))
        bar.set_postfix(loss=f"{loss:.3f}", dev=f"{dev:.4f}")

    steps, micro, epoch, done = 0, 0, 0, False
    while not done:
        epoch += 1
        head.train()
        total, units = 0.0, 0
        for idx in epoch_batches(task, train_src, cfg, frame_rate, pooled, rng):
            states, frame_lens = _to(train_src.inputs(idx, pooled), device)
            tgt = [train_tgt[i] for i in idx]
            logits = head(states, frame_lens)
            n = max(1, head.num_units(tgt))
            # Summed loss over the batch divided by its real units (tokens / utterances).
            loss = head.loss(logits, frame_lens, tgt, reduction="sum") / n
            (loss / cfg.grad_accum if cfg.grad_accum > 1 else loss).backward()
            total += float(loss.detach()) * n
            units += n
            micro += 1
            if micro % cfg.grad_accum:  # accumulate (across epochs too, as s3prl's runner does)
                continue
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(head.parameters(), cfg.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
            steps += 1
            if step_schedule:
                bar.update(1)
                if steps % cfg.eval_every == 0:
                    select(epoch, steps, total / max(units, 1))
                if cfg.max_steps and steps >= cfg.max_steps:
                    done = True
                    break
        if not step_schedule:
            select(epoch, steps, total / max(units, 1))
            bar.update(1)
        if epochs is not None and epoch >= epochs:
            done = True
    if not history or history[-1]["step"] != steps:
        select(epoch, steps, total / max(units, 1))
    bar.close()
    best, best_epoch, best_state = sel["best"], sel["epoch"], sel["state"]
    head.load_state_dict(best_state)
    test, test_items = evaluate(head, task, vocab, sources["test"], targets["test"], refs.get("test"), cfg, frame_rate,
                                pooled, device, items=True)
    return {
        "value": test,
        "test_items": test_items,
        "dev_value": best,
        "best_epoch": best_epoch,
        "best_step": sel["step"],
        "layer_weights": head.layer_weights(),
        "history": history,
        "epochs_run": epoch,
        "steps_run": steps,
        "train_seconds": round(time.perf_counter() - t0, 3),
        "pooled_features": bool(pooled),
    }
