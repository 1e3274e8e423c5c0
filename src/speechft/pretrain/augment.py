"""Input augmentation for pre-training: the model hears corrupted audio, the targets stay the clean ones.

HuBERT's targets are computed once from the clean audio (k-means of MFCC frames, or of a model's layer).
Augmenting only the input turns masked prediction into *denoising* masked prediction (as in WavLM):
the model must predict the clean utterance's clusters through the corruption, which rewards features
that separate the speech from what is mixed into it. Both corruptions keep the samples where they are,
so the frame-aligned targets stay valid (a speed change would move them; it is not offered).

    noise  (per utterance, probability ``noise_prob``): coloured Gaussian noise, white to brown (a random
           one-pole low-pass), at an SNR drawn uniformly from ``noise_snr`` dB over the utterance's real samples.
    mix    (per utterance, probability ``mix_prob``): a segment of another utterance of the batch, at most
           half the utterance's length, at an SNR drawn uniformly from ``mix_snr`` dB (the primary speaker
           stays dominant), at a random position.

Contract: ``augment_batch(batch, rng, cfg)`` takes the collated batch of :func:`.data.make_batch`
(``wav`` FloatTensor [B, S], ``wav_lens`` LongTensor [B]) and returns a new batch whose ``wav`` differs
only in each row's real samples (padding stays zero); ``targets`` and ``wav_lens`` are the same objects.
Every random draw comes from ``rng`` in a fixed order, so a resumed run repeats it exactly.
"""
from __future__ import annotations

import numpy as np
import torch
from scipy.signal import lfilter

MIX_MAX_SHARE = 0.5  # a mixed-in segment covers at most this share of the utterance


def _power(x: np.ndarray) -> float:
    return float(np.mean(x.astype(np.float64) ** 2)) if x.size else 0.0


def scaled_to_snr(signal: np.ndarray, other: np.ndarray, snr_db: float) -> np.ndarray:
    """``other`` scaled so that power(signal) / power(other) = ``snr_db`` (zero if either is silent)."""
    ps, po = _power(signal), _power(other)
    if ps <= 0.0 or po <= 0.0:
        return np.zeros_like(other)
    return other * np.sqrt(ps / (po * 10.0 ** (snr_db / 10.0)))


def coloured_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` samples of Gaussian noise through a one-pole low-pass with a random pole in [0, 0.95):
    white at 0, close to brown near 0.95."""
    pole = float(rng.uniform(0.0, 0.95))
    return lfilter([1.0], [1.0, -pole], rng.standard_normal(n)).astype(np.float32)


def augment_batch(batch: dict, rng: np.random.Generator, cfg) -> dict:
    """The batch with noise and other-utterance mixing added to its input (see the module docstring).
    ``cfg``: anything with ``noise_prob``, ``noise_snr``, ``mix_prob`` and ``mix_snr``."""
    wav = batch["wav"].numpy()
    lens = batch["wav_lens"].tolist()
    out = wav.copy()
    B = len(lens)
    for b in range(B):
        n = lens[b]
        clean = wav[b, :n]
        if rng.random() < cfg.mix_prob and B > 1:
            j = int(rng.integers(0, B - 1))
            j += j >= b  # another row of the batch
            seg_len = min(lens[j], max(1, int(rng.uniform(0.0, MIX_MAX_SHARE) * n)))
            src = int(rng.integers(0, lens[j] - seg_len + 1))
            dst = int(rng.integers(0, n - seg_len + 1))
            seg = wav[j, src:src + seg_len]
            out[b, dst:dst + seg_len] += scaled_to_snr(clean[dst:dst + seg_len], seg, rng.uniform(*cfg.mix_snr))
        if rng.random() < cfg.noise_prob:
            out[b, :n] += scaled_to_snr(clean, coloured_noise(n, rng), rng.uniform(*cfg.noise_snr))
    return {**batch, "wav": torch.from_numpy(out)}


def is_on(cfg) -> bool:
    """Whether ``cfg`` asks for any augmentation."""
    return cfg.noise_prob > 0.0 or cfg.mix_prob > 0.0
