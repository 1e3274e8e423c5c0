"""Resumable checkpoints: atomic, complete, and exact to the bit on CPU.

``OUT/checkpoints/step-0000120/`` holds everything the next step depends on:

    state.pt   encoder + head weights (adapters unmerged), optimizer, LR scheduler, step,
               sampler position per process, best dev metric so far, world size
    rng.pt     every process's random states: torch (CPU and CUDA), numpy, python ``random``

A checkpoint folder is written under a temporary name, fsync'ed and renamed (``atomic_dir``), so
a kill at any moment leaves the previous checkpoints intact and never a half-written one that
looks valid. Only the newest ``keep`` are kept.
"""
from __future__ import annotations

import logging
import random
import shutil
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..utils.io import atomic_dir

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
PREFIX = "step-"


def checkpoint_dir(out: Path, step: int) -> Path:
    return Path(out) / CHECKPOINTS / f"{PREFIX}{step:07d}"


def list_checkpoints(out: Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary folders start with '.' and are ignored)."""
    root = Path(out) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and p.name[len(PREFIX):].isdigit()
             and (p / "state.pt").exists() and (p / "rng.pt").exists()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX):]))


def latest_checkpoint(out: Path) -> Optional[Path]:
    found = list_checkpoints(out)
    return found[-1] if found else None


def capture_rng() -> dict:
    """This process's random states."""
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": _np_state(),
        "python": _py_state(),
    }


# RNG states are stored as tensors, ints and lists only, so checkpoints load with weights_only=True
# (a checkpoint can then never run code when resumed).
def _np_state() -> list:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)]


def _py_state() -> list:
    version, internal, gauss = random.getstate()
    return [version, torch.tensor(internal, dtype=torch.int64), gauss]


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(int(x) for x in internal.tolist()), gauss))


def save_checkpoint(out: Path, step: int, state: dict, rng_states: list, keep: int) -> Path:
    """Write checkpoint ``step`` atomically (main process only), then drop all but the newest ``keep``."""
    path = checkpoint_dir(out, step)
    with atomic_dir(path) as tmp:
        torch.save(state, tmp / "state.pt")
        torch.save(rng_states, tmp / "rng.pt")
    for old in list_checkpoints(out)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return path


def load_checkpoint(path: Path) -> tuple[dict, list]:
    """``(state, rng states of every process)``; a damaged file is an error naming it."""
    out = []
    for name in ("state.pt", "rng.pt"):
        try:
            # weights_only: a planted or tampered checkpoint can never run code on resume
            out.append(torch.load(Path(path) / name, map_location="cpu", weights_only=True))
        except Exception as e:  # noqa: BLE001 - any unpickling failure means a damaged file
            raise ValueError(f"{Path(path) / name}: unreadable checkpoint ({e}); delete {path} to resume "
                             "from the one before it") from None
    return out[0], out[1]
