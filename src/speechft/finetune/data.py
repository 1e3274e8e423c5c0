"""Task data for fine-tuning: validated rows, vocabulary, length-bucketed batches, dev evaluation.

Every split is validated up front (:func:`speechft.data.validate.load_checked_rows`), so a bad
file fails the run in seconds instead of an hour in. Training batches come from a
:class:`~speechft.data.sampler.LengthBucketSampler` (padded seconds per batch), sharded over
processes by the sampler itself; :class:`BatchStream` turns it into an endless stream over epochs
whose position ``(epoch, batches consumed)`` is part of every checkpoint.

Batch dict: see :mod:`speechft.data.dataset` (``wav`` [B, S], ``wav_lens`` [B], ``targets``).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..data.dataset import AudioDataset, collate
from ..data.sampler import LengthBucketSampler
from ..data.validate import load_checked_rows
from ..metrics import accuracy, error_rate
from ..vocab import Vocab

log = logging.getLogger(__name__)


@dataclass
class TaskData:
    task: object
    vocab: Vocab
    train: AudioDataset
    dev: AudioDataset
    manifests: dict


def encode_dev(task, vocab: Vocab, row):
    """Dev targets: a class never seen in training becomes -1 (counted wrong, never a crash)."""
    try:
        return vocab.encode(task, row)
    except ValueError:
        return [-1] * len(vocab.symbols) if task.kind == "slots" else -1


def drop_long(rows: list, max_seconds: float, where: str) -> list:
    """The rows at most ``max_seconds`` long (logged: how many were dropped). Raises when none is left."""
    durs = AudioDataset(rows).durations()
    kept = [r for r, d in zip(rows, durs) if d <= max_seconds]
    if len(kept) < len(rows):
        log.warning("%s: dropped %d of %d utterances longer than max_seconds=%g (long_utterances: drop)",
                    where, len(rows) - len(kept), len(rows), max_seconds)
    if not kept:
        raise ValueError(f"{where}: every utterance is longer than max_seconds={max_seconds:g}; raise max_seconds "
                         f"or set long_utterances: crop")
    return kept


def load_task_data(task, size: str, fsdd_root: Optional[str], skip_bad: bool, cfg) -> TaskData:
    manifests = task.resolve_manifests(size=size, fsdd_root=fsdd_root)
    rows = {}
    for split in ("train", "dev"):
        # max_seconds is not a validation limit here: longer utterances are dropped or cropped, not errors.
        rows[split] = load_checked_rows(manifests[split], task=task, skip_bad=skip_bad, min_seconds=cfg.min_seconds)
    policy = cfg.long_utterance_policy(task)
    if policy == "drop" and cfg.max_seconds is not None:
        rows["train"] = drop_long(rows["train"], cfg.max_seconds, f"{task.name} train")
    vocab = Vocab.build(task, rows["train"])
    crop = cfg.max_seconds if policy == "crop" else None  # dropping: dev utterances are evaluated whole
    train = AudioDataset(rows["train"], lambda r: vocab.encode(task, r), max_seconds=crop)
    dev = AudioDataset(rows["dev"], lambda r: encode_dev(task, vocab, r), max_seconds=crop)
    log.info("task %s: %d train / %d dev utterances (%.2f h train), %d targets", task.name, len(train), len(dev),
             sum(train.durations()) / 3600, len(vocab))
    return TaskData(task, vocab, train, dev, {k: str(v) for k, v in manifests.items()})


class BatchStream:
    """Endless training batches: epoch after epoch of the sampler's plan, resumable mid-epoch."""

    def __init__(self, dataset: AudioDataset, cfg, num_replicas: int, rank: int):
        self.sampler = LengthBucketSampler(dataset.durations(), cfg.batch_seconds, shuffle=True, seed=cfg.seed,
                                           num_replicas=num_replicas, rank=rank, drop_last=False,
                                           max_batch_size=cfg.max_batch_size)
        self.loader = DataLoader(dataset, batch_sampler=self.sampler, collate_fn=collate,
                                 num_workers=cfg.num_workers, persistent_workers=False)
        self.epoch, self.consumed = 0, 0  # batches of this epoch handed to the training loop
        self._it = None

    def next(self) -> dict:
        while True:
            if self._it is None:
                self.sampler.set_epoch(self.epoch)
                self._it = iter(self.loader)
            try:
                batch = next(self._it)
            except StopIteration:  # epoch done: the next one's plan is a pure function of (seed, epoch)
                self._it, self.epoch, self.consumed = None, self.epoch + 1, 0
                continue
            self.consumed += 1
            return batch

    def state_dict(self) -> dict:
        # The count the loop consumed, not the sampler's own (DataLoader workers prefetch ahead).
        return self.sampler.state_dict(batches_done=self.consumed)

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state)
        self.epoch, self.consumed, self._it = int(state["epoch"]), int(state["batches_done"]), None


def to_device(batch: dict, device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


@torch.no_grad()
def evaluate(model, data: TaskData, cfg, accelerator, progress: bool = False) -> dict:
    """Dev loss per unit and the task metric, the dev set sharded over processes (``progress``: a
    transient bar, so a long evaluation after the training bar's 100 % shows it is working).

    ``model`` is the unwrapped :class:`~speechft.finetune.model.SpeechFTModel`; it runs in eval
    mode (no dropout) and is put back in train mode.
    """
    task, vocab = data.task, data.vocab
    rank, world = accelerator.process_index, accelerator.num_processes
    idx = list(range(rank, len(data.dev), world))
    durs = data.dev.durations()
    shard = torch.utils.data.Subset(data.dev, idx)
    batches = LengthBucketSampler([durs[i] for i in idx] or [0.0], cfg.batch_seconds, shuffle=False,
                                  max_batch_size=cfg.max_batch_size)
    records = []  # (id, loss, units, prediction, gold) per utterance
    model.eval()
    bar = tqdm(total=len(idx), desc="dev evaluation", unit="utt", leave=False, disable=not progress)
    if idx:
        for batch in DataLoader(shard, batch_sampler=batches, collate_fn=collate, num_workers=cfg.num_workers):
            bar.update(len(batch["ids"]))
            batch = to_device(batch, accelerator.device)
            with accelerator.autocast():
                logits, frame_lens = model(batch["wav"], batch["wav_lens"], train_encoder=False)
            head = model.head
            known = [b for b, t in enumerate(batch["targets"]) if not _unseen(t)]
            loss, units = 0.0, 0
            if known:
                sub = _select(logits, known)
                tg = [batch["targets"][b] for b in known]
                loss = float(head.loss(sub, frame_lens[known], tg, reduction="sum"))
                units = head.num_units(tg)
            preds = head.predict(logits, frame_lens)
            for b, uid in enumerate(batch["ids"]):
                # the batch's loss is kept on its first row so the sums come out right
                records.append((uid, loss if b == 0 else 0.0, units if b == 0 else 0, preds[b], batch["targets"][b]))
    bar.close()
    model.train()
    if world > 1:
        from accelerate.utils import gather_object

        records = gather_object(records)
    loss = sum(r[1] for r in records) / max(1, sum(r[2] for r in records))
    out = {"loss": loss, "utterances": len(records)}
    if task.kind == "ctc":
        rows = {r.id: r for r in data.dev.rows}
        refs = [vocab.reference(task, rows[r[0]]) for r in records]
        hyps = [vocab.decode_ctc(r[3], task) for r in records]
        out[task.metric] = error_rate(task.metric, refs, hyps)
    else:
        out[task.metric] = accuracy([r[3] for r in records], [r[4] for r in records])
    return out


def _unseen(target) -> bool:
    """A dev class never seen in training (see :func:`encode_dev`); CTC targets never are."""
    return target == -1 or (isinstance(target, list) and len(target) > 0 and target[0] == -1)


def _select(logits, rows: list):
    return [lg[rows] for lg in logits] if isinstance(logits, list) else logits[rows]
