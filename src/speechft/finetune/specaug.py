"""SpecAugment on the encoder's representations (training only), as s3prl's ASR downstream does.

s3prl ``downstream/asr/config.yaml`` (``specaug:``): time warp with window 5, 2 time masks of
0-40 frames, 4 feature masks of 0-50 dimensions. Here the same masks are applied to every hidden
state the head reads, so a learnable layer sum sees one consistent augmentation.

    states_out = augment(states, frame_lens)
        states      list of L+1 FloatTensor [B, T, F]  (or one tensor; the list form is returned as a list)
        frame_lens  LongTensor [B]   real frames per row; masks and the warp stay inside them
        states_out  same shapes; unchanged in eval mode or when every count is 0

Randomness comes from torch's global generator, which fine-tuning checkpoints save, so a resumed
run draws the same masks.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

# s3prl downstream/asr/config.yaml, specaug section
S3PRL_ASR = dict(time_warp=5, time_masks=2, time_mask_width=40, freq_masks=4, freq_mask_width=50)
KEYS = tuple(S3PRL_ASR)


@dataclass(frozen=True)
class SpecAugmentConfig:
    time_warp: int = 0        # max warp distance in frames (0 = off)
    time_masks: int = 0       # number of time masks per utterance
    time_mask_width: int = 0  # max width of each, frames
    freq_masks: int = 0       # number of feature masks per utterance
    freq_mask_width: int = 0  # max width of each, feature dimensions

    def __post_init__(self):
        for k in KEYS:
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"invalid fine-tuning config: specaugment.{k} must be an integer >= 0, not {v!r}")

    @classmethod
    def from_option(cls, value) -> "SpecAugmentConfig | None":
        """``None``/``False``/``{}``: off; ``"s3prl"`` or ``True``: s3prl's ASR values; a mapping: those keys."""
        if value in (None, False, {}, "none", "off"):
            return None
        if value is True or value == "s3prl":
            return cls(**S3PRL_ASR)
        if isinstance(value, dict):
            unknown = sorted(set(value) - set(KEYS))
            if unknown:
                raise ValueError(f"invalid fine-tuning config: unknown specaugment key(s) {unknown}; known: {list(KEYS)}")
            return cls(**value)
        raise ValueError(f"invalid fine-tuning config: specaugment must be 's3prl', a mapping of {list(KEYS)} "
                         f"or null, not {value!r}")

    @property
    def active(self) -> bool:
        return bool(self.time_warp or (self.time_masks and self.time_mask_width)
                    or (self.freq_masks and self.freq_mask_width))


def _warp(x: torch.Tensor, n: int, window: int) -> torch.Tensor:
    """Warp the first ``n`` frames of ``x`` [T, C]: the frames before a random centre are stretched
    or squeezed by up to ``window`` frames (linear interpolation), the rest fill the remaining length."""
    if n <= 2 * window + 1:
        return x
    centre = int(torch.randint(window + 1, n - window, (1,)))
    new = centre + int(torch.randint(-window, window + 1, (1,)))
    new = min(max(new, 1), n - 1)
    seg = x[:n].t()[None]  # [1, C, n]
    left = F.interpolate(seg[..., :centre], size=new, mode="linear", align_corners=False)
    right = F.interpolate(seg[..., centre:], size=n - new, mode="linear", align_corners=False)
    out = x.clone()
    out[:n] = torch.cat([left, right], -1)[0].t()
    return out


class SpecAugment(nn.Module):
    def __init__(self, cfg: SpecAugmentConfig):
        super().__init__()
        self.cfg = cfg

    def forward(self, states, frame_lens: torch.Tensor):
        if not self.training or not self.cfg.active:
            return states
        single = isinstance(states, torch.Tensor)
        xs = [states] if single else list(states)
        B, T, Fdim = xs[0].shape
        L = len(xs)
        x = torch.stack(xs, 2)  # [B, T, L, F]: one warp and one set of masks for every state
        keep = torch.ones(B, T, 1, Fdim, dtype=x.dtype, device=x.device)
        rows = []
        for b in range(B):
            n = max(1, min(int(frame_lens[b]), T))
            xb = x[b]
            if self.cfg.time_warp:
                xb = _warp(xb.reshape(T, L * Fdim), n, self.cfg.time_warp).reshape(T, L, Fdim)
            rows.append(xb)
            for _ in range(self.cfg.time_masks if self.cfg.time_mask_width else 0):
                w = int(torch.randint(0, min(self.cfg.time_mask_width, n) + 1, (1,)))
                t0 = int(torch.randint(0, n - w + 1, (1,)))
                keep[b, t0:t0 + w] = 0
            for _ in range(self.cfg.freq_masks if self.cfg.freq_mask_width else 0):
                w = int(torch.randint(0, min(self.cfg.freq_mask_width, Fdim) + 1, (1,)))
                f0 = int(torch.randint(0, Fdim - w + 1, (1,)))
                keep[b, :, :, f0:f0 + w] = 0
        x = torch.stack(rows, 0) * keep
        out = list(x.unbind(2))
        return out[0] if single else out
