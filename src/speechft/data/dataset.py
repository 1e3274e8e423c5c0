"""Dataset and collate for waveforms + targets.

Tensor contract of a collated batch (B = batch size, S = max samples in the batch):

    batch = {
        "ids":            list[str]            length B
        "wav":            FloatTensor [B, S]   16 kHz mono in [-1, 1], zero-padded on the right
        "wav_lens":       LongTensor  [B]      number of real samples per row
        "attention_mask": LongTensor  [B, S]   1 for real samples, 0 for padding
        "targets":        list                 length B, whatever ``target_fn`` returned per row
                                               (None when the dataset has no target_fn)
    }
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from .audio import TARGET_SR, load_audio
from .manifest import Utterance


class AudioDataset(Dataset):
    """Rows of a manifest -> ``{"id", "wav" [S] float32, "target"}``.

    ``target_fn(row)`` maps an :class:`Utterance` to the training target (token ids, class index...).
    ``max_seconds`` crops longer audio from the start (None keeps everything).
    """

    def __init__(
        self,
        rows: Sequence[Utterance],
        target_fn: Optional[Callable[[Utterance], object]] = None,
        sample_rate: int = TARGET_SR,
        max_seconds: Optional[float] = None,
    ):
        self.rows = list(rows)
        self.target_fn = target_fn
        self.sample_rate = sample_rate
        self.max_samples = int(max_seconds * sample_rate) if max_seconds else None

    def __len__(self) -> int:
        return len(self.rows)

    def durations(self) -> list[float]:
        """Durations in seconds (from the manifest when present, else read from the file header)."""
        import soundfile as sf

        out = []
        for r in self.rows:
            if r.duration is not None:
                out.append(float(r.duration))
            else:
                info = sf.info(r.audio)
                out.append(info.frames / info.samplerate)
        if self.max_samples:
            cap = self.max_samples / self.sample_rate
            out = [min(d, cap) for d in out]
        return out

    def __getitem__(self, i: int) -> dict:
        row = self.rows[i]
        wav = load_audio(row.audio, self.sample_rate)
        if self.max_samples and wav.shape[0] > self.max_samples:
            wav = wav[: self.max_samples]
        return {"id": row.id, "wav": wav, "target": self.target_fn(row) if self.target_fn else None}


def collate(items: Sequence[dict]) -> dict:
    """Pad a list of dataset items into the batch dict described in the module docstring."""
    lens = [int(it["wav"].shape[0]) for it in items]
    S = max(lens)
    wav = torch.zeros(len(items), S, dtype=torch.float32)
    mask = torch.zeros(len(items), S, dtype=torch.long)
    for b, it in enumerate(items):
        w = it["wav"]
        wav[b, : lens[b]] = torch.from_numpy(np.asarray(w, dtype=np.float32)) if not torch.is_tensor(w) else w
        mask[b, : lens[b]] = 1
    return {
        "ids": [it["id"] for it in items],
        "wav": wav,
        "wav_lens": torch.tensor(lens, dtype=torch.long),
        "attention_mask": mask,
        "targets": [it.get("target") for it in items],
    }
