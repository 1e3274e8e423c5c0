"""Pre-training targets: frame features -> k-means codebook -> per-utterance cluster-id sequences.

* Iteration 1: MFCC + deltas (39 dims, :mod:`.mfcc`), the HuBERT recipe.
* Iteration 2: hidden states of one layer of an already pre-trained model.

Features are standardised per dimension (statistics of the fitting frames) before clustering, so
that c0's large range does not drown the deltas. The codebook (centres, mean, std, feature source)
is saved as ``kmeans.npz``; its content hash plus a fingerprint of the audio keys the on-disk cache
of target sequences (``$SPEECHFT_HOME/pretrain-targets/<key>.npz``).
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from tqdm.auto import tqdm

from ..paths import data_home
from ..utils.io import atomic_write_bytes
from ..utils.jobs import intra_op_threads
from .data import AudioStore
from .mfcc import mfcc

log = logging.getLogger(__name__)


class FeatureSource:
    """Frame features of a waveform: ``source(wav [S]) -> [T, D]`` float32 at 50 Hz."""

    def __init__(self, model_ref: Optional[str] = None, layer: Optional[int] = None):
        self.model_ref, self.layer, self.encoder = model_ref, layer, None
        if model_ref is not None:
            from ..models.io import load_encoder

            self.encoder = load_encoder(model_ref).eval()
            L = getattr(self.encoder, "num_layers", None)
            if layer is None or L is None or not 0 <= layer <= L:
                raise ValueError(f"--kmeans-layer must be in 0..{L} for {model_ref}, got {layer}")

    def describe(self) -> dict:
        if self.encoder is None:
            return {"type": "mfcc", "dims": 39}
        return {"type": "layer", "model": str(self.model_ref), "layer": self.layer,
                "fingerprint": self.encoder.fingerprint()}

    @torch.no_grad()
    def __call__(self, wav: np.ndarray) -> np.ndarray:
        if self.encoder is None:
            return mfcc(wav)
        x = torch.from_numpy(np.asarray(wav, dtype=np.float32))[None]
        states, lens = self.encoder(x, torch.tensor([x.shape[1]]))
        return states[self.layer][0, : int(lens[0])].float().numpy()


@dataclass
class Codebook:
    centers: np.ndarray  # [K, D]
    mean: np.ndarray  # [D]
    std: np.ndarray  # [D]
    source: dict

    @property
    def k(self) -> int:
        return int(self.centers.shape[0])

    def hash(self) -> str:
        h = hashlib.sha256(json.dumps(self.source, sort_keys=True).encode())
        for a in (self.centers, self.mean, self.std):
            h.update(np.ascontiguousarray(a, dtype=np.float32).tobytes())
        return h.hexdigest()[:16]

    def predict(self, feats: np.ndarray) -> np.ndarray:
        """``[T, D]`` -> nearest centre ``[T]`` int16."""
        z = (feats - self.mean) / self.std
        d = (z ** 2).sum(1, keepdims=True) - 2 * z @ self.centers.T + (self.centers ** 2).sum(1)[None]
        return d.argmin(1).astype(np.int16)

    def save(self, path: str | Path) -> None:
        buf = io.BytesIO()
        np.savez(buf, centers=self.centers, mean=self.mean, std=self.std, source=json.dumps(self.source))
        atomic_write_bytes(path, buf.getvalue())

    @classmethod
    def load(cls, path: str | Path) -> "Codebook":
        try:
            with np.load(path, allow_pickle=False) as z:
                return cls(z["centers"], z["mean"], z["std"], json.loads(str(z["source"])))
        except (OSError, KeyError, ValueError) as e:
            raise ValueError(f"{path}: not a speechft k-means codebook ({e})") from None


def fit_codebook(store: AudioStore, source: FeatureSource, k: int, max_frames: int, batch_size: int,
                 seed: int, keep_features: Optional[list] = None) -> Codebook:
    """MiniBatchKMeans on up to ``max_frames`` frames sampled uniformly over the utterances.

    ``keep_features``: a list that receives every utterance's features (saves a second pass)."""
    from sklearn.cluster import MiniBatchKMeans

    rng = np.random.default_rng(seed)
    total = sum(int(a.shape[0]) // 320 for a in store.audio)
    keep = min(1.0, max_frames / max(total, 1))
    sample = []
    for i in tqdm(range(len(store)), desc="k-means features", leave=False):
        with intra_op_threads(1):  # per-utterance extraction: many small ops
            f = source(store.wav(i))
        if keep_features is not None:
            keep_features.append(f)
        if keep < 1.0:
            f = f[rng.random(f.shape[0]) < keep]
        sample.append(f)
    x = np.concatenate(sample).astype(np.float32)
    if x.shape[0] < k:
        raise ValueError(f"{store.manifest}: only {x.shape[0]} frames for k-means with k={k}; give more audio")
    mean, std = x.mean(0), x.std(0) + 1e-5
    z = (x - mean) / std
    log.info("k-means: k=%d on %d frames of %d dims (%s)", k, z.shape[0], z.shape[1], source.describe()["type"])
    km = MiniBatchKMeans(n_clusters=k, batch_size=batch_size, n_init=3, max_iter=100, random_state=seed,
                         compute_labels=False)
    km.fit(z)
    inertia = float(-km.score(z[: min(len(z), 50_000)]) / min(len(z), 50_000))
    log.debug("k-means done: mean squared distance %.3f per frame (standardised units)", inertia)
    return Codebook(km.cluster_centers_.astype(np.float32), mean.astype(np.float32), std.astype(np.float32),
                    source.describe())


def audio_fingerprint(store: AudioStore) -> str:
    """Manifest identity: path, ids and lengths of the audio actually used."""
    h = hashlib.sha256(",".join(str(Path(m).resolve()) for m in store.manifest.split(",")).encode())
    for uid, a in zip(store.ids, store.audio):
        h.update(f"{uid}:{a.shape[0]};".encode())
    return h.hexdigest()[:16]


def compute_targets(store: AudioStore, codebook: Codebook, source: FeatureSource,
                    cache_dir: Optional[Path] = None, features: Optional[list] = None) -> list:
    """Cluster ids ``[T_i]`` int16 per utterance, cached on disk keyed by audio + codebook."""
    cache_dir = Path(cache_dir) if cache_dir else data_home() / "pretrain-targets"
    path = cache_dir / f"{audio_fingerprint(store)}-{codebook.hash()}.npz"
    if path.exists():
        try:
            with np.load(path, allow_pickle=False) as z:
                ids, flat, offsets = list(z["ids"]), z["labels"], z["offsets"]
            if ids == list(store.ids):
                log.debug("targets: cached %s", path)
                return [flat[offsets[i]:offsets[i + 1]] for i in range(len(ids))]
            log.warning("targets cache %s does not match the manifest; recomputing", path)
        except (OSError, KeyError, ValueError) as e:
            log.warning("targets cache %s unreadable (%s); recomputing", path, e)
    labels = []
    for i in tqdm(range(len(store)), desc="targets", leave=False):
        if features:
            f = features[i]
        else:
            with intra_op_threads(1):  # per-utterance extraction: many small ops
                f = source(store.wav(i))
        labels.append(codebook.predict(f))
    offsets = np.cumsum([0] + [len(x) for x in labels]).astype(np.int64)
    buf = io.BytesIO()
    np.savez(buf, ids=np.array(store.ids), labels=np.concatenate(labels), offsets=offsets)
    atomic_write_bytes(path, buf.getvalue())
    used = np.bincount(np.concatenate(labels).astype(np.int64), minlength=codebook.k)
    log.info("targets: %d frames, %d/%d clusters used, written to %s", offsets[-1], (used > 0).sum(), codebook.k, path)
    return labels
