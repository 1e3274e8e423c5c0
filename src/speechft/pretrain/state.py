"""Checkpoints (atomic, resumable to the bit), the pre-training head file, metrics and the curve plot.

A checkpoint holds everything the next step depends on: encoder + head weights, optimizer and LR
scheduler, the sampler position ``(epoch, batch)``, and every random state (torch, numpy global,
python ``random``, and the run's own numpy generators for masks and crops). It is written to a
temporary name, fsync'ed and renamed, so a kill at any moment leaves the previous one intact.
"""
from __future__ import annotations

import io
import logging
import random
from pathlib import Path

import numpy as np
import torch

from ..utils.io import atomic_write_bytes, read_jsonl

log = logging.getLogger(__name__)
CHECKPOINT = "checkpoint.pt"
HEAD_FILE = "pretrain_head.safetensors"


def _np_global_state() -> list:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return [name, keys.tolist(), int(pos), int(has_gauss), float(cached)]


def _set_np_global_state(s: list) -> None:
    np.random.set_state((s[0], np.array(s[1], dtype=np.uint32), s[2], s[3], s[4]))


def save_checkpoint(path: Path, *, model, head, optimizer, scheduler, step: int, epoch: int, batch: int,
                    rngs: dict, extra: dict) -> None:
    state = {
        "step": step, "epoch": epoch, "batch": batch,
        "model": model.state_dict(), "head": head.state_dict(),
        "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
        "rng": {
            "torch": torch.get_rng_state(),
            "numpy": _np_global_state(),
            "python": list(random.getstate()),
            **{k: g.bit_generator.state for k, g in rngs.items()},
        },
        "extra": extra,
    }
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: Path, *, model, head, optimizer, scheduler, rngs: dict) -> dict:
    """Restore everything in place; returns ``{"step", "epoch", "batch", "extra"}``."""
    try:
        # weights_only: a planted or tampered checkpoint can never run code on resume
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means a bad file
        raise ValueError(f"{path}: unreadable checkpoint ({e}); delete it to start over") from None
    model.load_state_dict(state["model"])
    head.load_state_dict(state["head"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    r = state["rng"]
    torch.set_rng_state(r["torch"])
    _set_np_global_state(r["numpy"])
    py = r["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    for k, g in rngs.items():
        g.bit_generator.state = r[k]
    return {k: state[k] for k in ("step", "epoch", "batch", "extra")}


def save_head(head, path: Path, meta: dict) -> None:
    from safetensors.torch import save as st_save

    tensors = {k: v.detach().contiguous() for k, v in head.state_dict().items()}
    atomic_write_bytes(path, st_save(tensors, metadata={k: str(v) for k, v in meta.items()}))


def load_head(head, path: Path) -> bool:
    """Load a ``pretrain_head.safetensors`` into ``head`` when the shapes match; False otherwise."""
    from safetensors.torch import load_file

    tensors = load_file(str(path))
    own = head.state_dict()
    if set(tensors) != set(own) or any(tensors[k].shape != own[k].shape for k in own):
        log.warning("%s: head shapes do not match this run (clusters/proj_dim differ); starting a fresh head", path)
        return False
    head.load_state_dict(tensors)
    return True


def plot_curve(metrics_path: Path, out_png: Path, title: str = "pre-training") -> None:
    """Training curve from the metrics JSONL only: loss and masked accuracy (train and dev)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = read_jsonl(metrics_path)
    tr = [r for r in recs if r.get("split") == "train"]
    dv = [r for r in recs if r.get("split") == "dev"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, key, label in ((axes[0], "loss", "masked-prediction loss"), (axes[1], "acc", "masked accuracy")):
        if tr:
            k = "masked_loss" if key == "loss" and "masked_loss" in tr[0] else key  # dev loss is masked-only too
            ax.plot([r["step"] for r in tr], [r[k] for r in tr], label="train", lw=1)
        if dv:
            ax.plot([r["step"] for r in dv], [r[key] for r in dv], "o-", label="dev", ms=3)
        ax.set_xlabel("step")
        ax.set_title(label)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(out_png, buf.getvalue())
