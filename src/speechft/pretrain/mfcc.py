"""MFCC + deltas at the encoder's frame rate (HuBERT iteration-1 features), numpy/scipy only.

The frames line up with a wav2vec 2.0 / HuBERT CNN (receptive field 400 samples, hop 320 at 16 kHz):
frame t covers samples ``[320 t, 320 t + 400)``, so an utterance of S samples gives
``floor((S - 400) / 320) + 1`` frames, exactly the CNN's output length. No centre padding.

Recipe (as Kaldi/HuBERT's ``dump_mfcc_feature``, minus dither): pre-emphasis 0.97, Hamming
window of 25 ms, 512-point power spectrum, 23 mel bands (20 Hz - 8 kHz), log, DCT-II (ortho),
13 coefficients, liftering 22; then deltas and delta-deltas over +-2 frames -> 39 dims.
"""
from __future__ import annotations

import numpy as np
import torch
from scipy.fft import dct

SR = 16000
WIN = 400  # 25 ms
HOP = 320  # 20 ms = the CNN's stride
NFFT = 512
NUM_MEL = 23
NUM_CEPS = 13
DIM = 3 * NUM_CEPS


def num_frames(num_samples: int) -> int:
    return 0 if num_samples < WIN else (num_samples - WIN) // HOP + 1


def _hz_to_mel(f):
    return 1127.0 * np.log1p(np.asarray(f) / 700.0)


def _mel_to_hz(m):
    return 700.0 * (np.exp(np.asarray(m) / 1127.0) - 1.0)


def mel_filterbank(num_mel: int = NUM_MEL, nfft: int = NFFT, sr: int = SR, fmin: float = 20.0,
                   fmax: float | None = None) -> np.ndarray:
    """Triangular filters ``[num_mel, nfft // 2 + 1]`` on the mel scale."""
    fmax = fmax or sr / 2
    edges = _mel_to_hz(np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), num_mel + 2))
    freqs = np.linspace(0, sr / 2, nfft // 2 + 1)
    fb = np.zeros((num_mel, freqs.size), dtype=np.float64)
    for m in range(num_mel):
        lo, mid, hi = edges[m], edges[m + 1], edges[m + 2]
        up = (freqs - lo) / (mid - lo)
        down = (hi - freqs) / (hi - mid)
        fb[m] = np.maximum(0.0, np.minimum(up, down))
    return fb


_LIFTER = 1.0 + 11.0 * np.sin(np.pi * np.arange(NUM_CEPS) / 22.0)
# float32 torch constants: the whole transform is a few batched ops (much faster than float64 numpy)
_FB = torch.from_numpy(mel_filterbank().T.astype(np.float32))  # [257, 23]
_WINDOW = torch.from_numpy(np.hamming(WIN).astype(np.float32))
_DCT = torch.from_numpy((dct(np.eye(NUM_MEL), type=2, axis=1, norm="ortho")[:, :NUM_CEPS] * _LIFTER).astype(np.float32))


def deltas(x: np.ndarray, n: int = 2) -> np.ndarray:
    """Regression deltas over +-n frames with edge replication: ``[T, D] -> [T, D]``."""
    if x.shape[0] == 0:
        return x.copy()
    pad = np.pad(x, ((n, n), (0, 0)), mode="edge")
    denom = 2.0 * sum(i * i for i in range(1, n + 1))
    T = x.shape[0]
    out = np.zeros_like(x)
    for i in range(1, n + 1):
        out += i * (pad[n + i: n + i + T] - pad[n - i: n - i + T])
    return out / denom


def mfcc(wav: np.ndarray, with_deltas: bool = True) -> np.ndarray:
    """16 kHz float waveform ``[S]`` -> features ``[T, 39]`` float32 (``[T, 13]`` without deltas)."""
    wav = np.asarray(wav, dtype=np.float32)
    if wav.ndim != 1:
        raise ValueError(f"mfcc expects a mono waveform [S], got shape {wav.shape}")
    T = num_frames(wav.shape[0])
    if T == 0:
        return np.zeros((0, DIM if with_deltas else NUM_CEPS), dtype=np.float32)
    with torch.no_grad():
        frames = torch.from_numpy(wav).unfold(0, WIN, HOP)  # [T, 400]
        frames = frames - frames.mean(dim=1, keepdim=True)  # remove DC per frame (Kaldi does)
        frames = torch.cat([frames[:, :1] * (1 - 0.97), frames[:, 1:] - 0.97 * frames[:, :-1]], dim=1)
        spec = torch.fft.rfft(frames * _WINDOW, n=NFFT).abs() ** 2
        mel = torch.log(torch.clamp(spec @ _FB, min=1e-10))
        ceps = (mel @ _DCT).double().numpy()
    if with_deltas:
        d1 = deltas(ceps)
        ceps = np.concatenate([ceps, d1, deltas(d1)], axis=1)
    return ceps.astype(np.float32)
