"""Log-mel filterbank frames: SUPERB's FBANK lower reference, as a :class:`SpeechEncoder`.

    states, frame_lens = FbankEncoder()(wav, wav_lens)
        wav        FloatTensor [B, S]   16 kHz (padding beyond wav_lens is ignored)
        wav_lens   LongTensor  [B]      real samples per row
        states     [FloatTensor [B, T, F]]  one state (num_layers = 0), F = 80 (or 240 with deltas=2)
        frame_lens LongTensor  [B]      real frames per row; frames beyond it are 0

The features follow Kaldi's ``compute-fbank-feats`` defaults, which is what s3prl's FBANK baseline
computes through ``torchaudio.compliance.kaldi.fbank``: 25 ms frames every 10 ms without padding at the
edges (``snip_edges``), DC offset removed per frame, pre-emphasis 0.97, Povey window, 512-point power
spectrum, 80 triangular filters on Kaldi's mel scale between 20 Hz and 8 kHz, natural log floored at
float32 epsilon, no dither. Each utterance is then normalised to zero mean and unit variance per
dimension over its real frames (CMVN). s3prl's SUPERB config also appends Δ and ΔΔ (240 dims):
``FbankEncoder(deltas=2)`` does that; the default is the plain 80-dim filterbank.

Everything is plain torch (no torchaudio) and has no trainable parameters.
"""
from __future__ import annotations

import hashlib
import json
import math
from typing import Optional

import torch
import torch.nn.functional as F

from .encoder import SpeechEncoder

FBANK_VERSION = "fbank-v1"  # bump when the computed numbers change (it keys feature caches)
_EPS = float(torch.finfo(torch.float32).eps)  # Kaldi's log floor


def _kaldi_mel(freq: torch.Tensor) -> torch.Tensor:
    return 1127.0 * torch.log1p(freq / 700.0)


def kaldi_mel_banks(num_bins: int, n_fft: int, sample_rate: int, low_freq: float, high_freq: float) -> torch.Tensor:
    """Triangular filters, triangular in Kaldi's mel scale: FloatTensor [num_bins, n_fft // 2 + 1]."""
    nyquist = 0.5 * sample_rate
    if high_freq <= 0:
        high_freq += nyquist  # Kaldi: non-positive means an offset from Nyquist
    if not 0.0 <= low_freq < high_freq <= nyquist:
        raise ValueError(f"fbank: need 0 <= low_freq < high_freq <= {nyquist}, got {low_freq}, {high_freq}")
    mel_low, mel_high = _kaldi_mel(torch.tensor(low_freq, dtype=torch.float64)), _kaldi_mel(
        torch.tensor(high_freq, dtype=torch.float64)
    )
    delta = (mel_high - mel_low) / (num_bins + 1)
    left = mel_low + delta * torch.arange(num_bins, dtype=torch.float64)[:, None]
    center, right = left + delta, left + 2 * delta
    # Kaldi evaluates the filters on the first n_fft/2 FFT bins and leaves the Nyquist bin at zero.
    mel = _kaldi_mel(sample_rate / n_fft * torch.arange(n_fft // 2, dtype=torch.float64))[None, :]
    up = (mel - left) / (center - left)
    down = (right - mel) / (right - center)
    banks = torch.clamp(torch.minimum(up, down), min=0.0)
    return F.pad(banks, (0, 1)).float()


def povey_window(length: int) -> torch.Tensor:
    n = torch.arange(length, dtype=torch.float64)
    return (0.5 - 0.5 * torch.cos(2 * math.pi * n / (length - 1))).pow(0.85).float()


def deltas(x: torch.Tensor, win: int = 2) -> torch.Tensor:
    """Regression deltas over time of [B, T, F] (edges replicated, as torchaudio's ComputeDeltas)."""
    denom = 2 * sum(n * n for n in range(1, win + 1))
    padded = F.pad(x.transpose(1, 2), (win, win), mode="replicate")  # [B, F, T + 2win]
    out = torch.zeros_like(x.transpose(1, 2))
    t = x.shape[1]
    for n in range(1, win + 1):
        out = out + n * (padded[..., win + n: win + n + t] - padded[..., win - n: win - n + t])
    return (out / denom).transpose(1, 2)


class FbankEncoder(SpeechEncoder):
    """Kaldi-style log-mel filterbank with per-utterance mean/variance normalisation (no parameters)."""

    def __init__(
        self,
        num_mel_bins: int = 80,
        sample_rate: int = 16000,
        frame_length_ms: float = 25.0,
        frame_shift_ms: float = 10.0,
        low_freq: float = 20.0,
        high_freq: float = 0.0,
        preemphasis: float = 0.97,
        cmvn: bool = True,
        deltas: int = 0,
    ):
        super().__init__()
        if deltas not in (0, 1, 2):
            raise ValueError(f"fbank: deltas must be 0, 1 or 2, got {deltas}")
        self.config = dict(
            num_mel_bins=int(num_mel_bins), sample_rate=int(sample_rate), frame_length_ms=float(frame_length_ms),
            frame_shift_ms=float(frame_shift_ms), low_freq=float(low_freq), high_freq=float(high_freq),
            preemphasis=float(preemphasis), cmvn=bool(cmvn), deltas=int(deltas),
        )
        self.win = int(round(sample_rate * frame_length_ms / 1000.0))
        self.hop = int(round(sample_rate * frame_shift_ms / 1000.0))
        self.n_fft = 1 << (self.win - 1).bit_length()  # Kaldi rounds the FFT up to a power of two
        self.preemphasis = float(preemphasis)
        self.cmvn = bool(cmvn)
        self.num_deltas = int(deltas)
        self.name = "fbank"
        self.num_layers = 0
        self.hidden_size = int(num_mel_bins) * (1 + self.num_deltas)
        self.frame_rate = sample_rate / self.hop
        # Buffers, not parameters: nothing to train, they follow .to(device), and stay out of state_dict.
        self.register_buffer("window", povey_window(self.win), persistent=False)
        self.register_buffer(
            "mel_banks", kaldi_mel_banks(num_mel_bins, self.n_fft, sample_rate, low_freq, high_freq), persistent=False
        )

    # --- SpeechEncoder interface -------------------------------------------------------------------
    def freeze_feature_extractor(self, freeze: bool = True) -> None:
        """Nothing to freeze: the filterbank has no parameters."""

    def feature_extractor_parameters(self):
        return []

    def fingerprint(self) -> str:
        blob = json.dumps(self.config, sort_keys=True).encode()
        return f"{FBANK_VERSION}-{hashlib.sha256(blob).hexdigest()[:12]}"

    def frame_lengths(self, wav_lens: torch.Tensor) -> torch.Tensor:
        """Kaldi ``snip_edges``: 1 + (n - win) // hop frames; clips shorter than one window give 1 frame."""
        n = wav_lens.long()
        return torch.where(n >= self.win, 1 + (n - self.win) // self.hop, torch.ones_like(n))

    @torch.no_grad()
    def forward(self, wav: torch.Tensor, wav_lens: Optional[torch.Tensor] = None):
        if wav.dim() != 2:
            raise ValueError(f"fbank: expected wav [B, S], got shape {tuple(wav.shape)}")
        b, s = wav.shape
        if wav_lens is None:
            wav_lens = torch.full((b,), s, dtype=torch.long, device=wav.device)
        wav_lens = wav_lens.to(wav.device).long()
        frame_lens = self.frame_lengths(wav_lens)
        t = int(frame_lens.max()) if b else 0
        # Zero everything past each row's length so a frame never sees another row's padding values
        # (a clip shorter than one window is zero-padded, the same whether batched or alone).
        x = wav.float() * (torch.arange(s, device=wav.device)[None, :] < wav_lens[:, None])
        need = (t - 1) * self.hop + self.win
        if s < need:
            x = F.pad(x, (0, need - s))
        frames = x.unfold(1, self.win, self.hop)[:, :t]  # [B, T, win]
        frames = frames - frames.mean(dim=-1, keepdim=True)  # remove DC offset per frame
        if self.preemphasis:
            prev = torch.cat([frames[..., :1], frames[..., :-1]], dim=-1)  # Kaldi replicates sample 0
            frames = frames - self.preemphasis * prev
        spec = torch.fft.rfft(frames * self.window, n=self.n_fft)  # [B, T, n_fft/2 + 1]
        power = spec.real.square() + spec.imag.square()
        feats = torch.log(torch.clamp(power @ self.mel_banks.T, min=_EPS))  # [B, T, mel]
        valid = (torch.arange(t, device=wav.device)[None, :] < frame_lens[:, None])[..., None]  # [B, T, 1]
        if self.num_deltas:
            feats = self._with_deltas(feats, frame_lens)
        if self.cmvn:
            n = frame_lens.clamp(min=1).to(feats.dtype)[:, None, None]
            mean = (feats * valid).sum(1, keepdim=True) / n
            std = ((((feats - mean) * valid) ** 2).sum(1, keepdim=True) / n).sqrt()
            feats = (feats - mean) / (std + 1e-10)
        return [feats * valid], frame_lens

    def _with_deltas(self, feats: torch.Tensor, frame_lens: torch.Tensor) -> torch.Tensor:
        # Deltas per row over its real frames only, so padding never leaks into the last frames.
        out = torch.zeros(*feats.shape[:2], feats.shape[2] * (1 + self.num_deltas), dtype=feats.dtype,
                          device=feats.device)
        for i, n in enumerate(frame_lens.tolist()):
            parts = [feats[i: i + 1, :n]]
            for _ in range(self.num_deltas):
                parts.append(deltas(parts[-1]))
            out[i, :n] = torch.cat(parts, dim=-1)[0]
        return out

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.config.items())
