"""Encoder + task head as one module (one DDP wrapper, one optimizer), and the saved head.

    logits, frame_lens = model(wav, wav_lens, train_encoder)
        wav            FloatTensor [B, S]   16 kHz, zero-padded
        wav_lens       LongTensor  [B]      real samples per row
        train_encoder  bool                 False: the encoder runs under ``torch.no_grad`` (the
                                            head-only phase), so its parameters get no ``.grad``
        logits         head output (see :mod:`speechft.models.heads`)
        frame_lens     LongTensor  [B]

Saved head folder (``OUT/head``)::

    head.safetensors   the head's state dict
    head.json          task, head type and options, input size, number of hidden states
    vocab.json         the target vocabulary built from the train manifest
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from ..utils.io import atomic_dir

HEAD_WEIGHTS = "head.safetensors"
HEAD_META = "head.json"
VOCAB_FILE = "vocab.json"


class SpeechFTModel(nn.Module):
    """``augment``: an optional module applied to the hidden states in training (SpecAugment)."""

    def __init__(self, encoder, head, augment: nn.Module | None = None):
        super().__init__()
        self.encoder = encoder
        self.head = head
        self.augment = augment

    def forward(self, wav: torch.Tensor, wav_lens: torch.Tensor, train_encoder: bool = True):
        # Head-only phase: no graph through the encoder, which is cheaper and leaves every encoder
        # parameter's .grad at None, so Adam skips them and they stay bit-identical to theta0.
        with torch.set_grad_enabled(train_encoder and torch.is_grad_enabled()):
            states, frame_lens = self.encoder(wav, wav_lens)
        if self.augment is not None:
            states = self.augment(states, frame_lens)
        return self.head(states, frame_lens), frame_lens


def head_meta(task, head_options: dict, in_dim: int, num_states: int, layer_sum: bool) -> dict:
    return {"task": task.name, "kind": task.kind, "head": task.head, "options": head_options,
            "in_dim": in_dim, "num_states": num_states, "layer_sum": layer_sum,
            "target_field": task.target_field, "metric": task.metric}


def save_head(head: nn.Module, vocab, meta: dict, out_dir: str | Path) -> Path:
    """Write ``out_dir`` (see module docstring) atomically."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}, str(tmp / HEAD_WEIGHTS))
        (tmp / HEAD_META).write_text(json.dumps(meta, indent=2) + "\n")
        (tmp / VOCAB_FILE).write_text(json.dumps(vocab.to_json(), ensure_ascii=False) + "\n")
    return out_dir


def load_head(path: str | Path, task=None):
    """``(head, vocab, meta)`` from a saved head folder. ``task`` defaults to the registered task
    named in ``head.json`` (pass the :class:`~speechft.tasks.Task` for user tasks)."""
    from safetensors.torch import load_file

    from ..models.heads import build_head
    from ..tasks import get_task
    from ..vocab import Vocab

    path = Path(path)
    for name in (HEAD_WEIGHTS, HEAD_META, VOCAB_FILE):
        if not (path / name).exists():
            raise FileNotFoundError(f"{path}: not a saved fine-tuning head (no {name})")
    meta = json.loads((path / HEAD_META).read_text())
    vocab = Vocab.load(path / VOCAB_FILE)
    task = task or get_task(meta["task"])
    head = build_head(task, meta["in_dim"], meta["num_states"], vocab, layer_sum=meta["layer_sum"],
                      **meta["options"])
    head.load_state_dict(load_file(str(path / HEAD_WEIGHTS)))
    return head, vocab, meta
