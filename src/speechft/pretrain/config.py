"""Pre-training configuration: a frozen dataclass loaded from YAML.

What to run (data, init model, steps) comes from the command line; how to run it (architecture,
targets, masking, optimisation) lives here. The resolved config is saved next to every artifact
as ``pretrain_config.yaml`` so a run can be reproduced and resumed exactly.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import yaml

from ..utils.names import check_known_keys, read_yaml_mapping


@dataclass(frozen=True)
class PretrainConfig:
    # -- architecture (ignored when continuing from --init) -------------------------------------
    # Overrides of ``speechft.models.io.tiny_config()`` (the default 4 x 256 HuBERT).
    model: dict = field(default_factory=dict)
    # -- targets: HuBERT iteration 1 (MFCC + deltas -> k-means) or iteration 2 (a model's layer) --
    num_clusters: int = 100
    kmeans_max_frames: int = 200_000  # frames sampled (uniformly over the data) to fit k-means
    kmeans_batch_size: int = 10_000
    kmeans_from: Optional[str] = None  # iteration 2: model whose layer is clustered
    kmeans_layer: Optional[int] = None  # hidden-state index (0 = CNN projection, L = last layer)
    # -- masked prediction ----------------------------------------------------------------------
    # HuBERT paper's p: each frame starts a masked span with probability p (span 10 -> ~50% masked)
    mask_prob: float = 0.08
    mask_length: int = 10
    mask_min_spans: int = 2
    proj_dim: int = 128  # final_proj output / cluster-embedding size
    logit_temp: float = 0.1
    unmasked_weight: float = 0.0  # HuBERT's alpha for the loss on unmasked frames
    # -- optimisation ---------------------------------------------------------------------------
    steps: int = 1000
    lr: float = 5e-4
    warmup_frac: float = 0.08  # linear warm-up, then linear decay to 0 at the last step
    weight_decay: float = 0.01
    betas: tuple = (0.9, 0.98)
    eps: float = 1e-6
    grad_clip: float = 10.0
    batch_seconds: float = 16.0  # audio per batch (padding included)
    max_seconds: float = 4.0  # longer utterances are randomly cropped (frame-aligned)
    min_seconds: float = 0.5  # shorter utterances are left out (logged, never silently)
    # -- input augmentation (speechft.pretrain.augment): targets stay those of the clean audio ------
    noise_prob: float = 0.0  # share of utterances with coloured Gaussian noise added
    noise_snr: tuple = (5.0, 20.0)  # its SNR in dB, drawn uniformly
    mix_prob: float = 0.0  # share of utterances with a segment of another utterance of the batch mixed in
    mix_snr: tuple = (0.0, 10.0)  # its SNR in dB (the utterance's own speaker stays dominant)
    # -- bookkeeping ----------------------------------------------------------------------------
    seed: int = 0
    checkpoint_every: int = 100
    log_every: int = 10
    dev_every: int = 0  # 0: evaluate dev at every checkpoint and at the end
    num_threads: int = 0  # torch threads; 0 = leave torch's default

    def __post_init__(self):
        errors = []
        if self.num_clusters < 2:
            errors.append("num_clusters must be >= 2")
        if not 0.0 < self.mask_prob < 1.0:
            errors.append("mask_prob must be in (0, 1)")
        if self.mask_length < 1:
            errors.append("mask_length must be >= 1")
        if self.steps < 1:
            errors.append("steps must be >= 1")
        if self.lr <= 0:
            errors.append("lr must be > 0")
        if not 0.0 <= self.warmup_frac < 1.0:
            errors.append("warmup_frac must be in [0, 1)")
        if self.batch_seconds < self.max_seconds:
            errors.append("batch_seconds must be >= max_seconds (one cropped utterance must fit)")
        if self.checkpoint_every < 1 or self.log_every < 1:
            errors.append("checkpoint_every and log_every must be >= 1")
        if (self.kmeans_from is None) != (self.kmeans_layer is None):
            errors.append("kmeans_from and kmeans_layer go together (iteration 2 needs both)")
        if self.unmasked_weight < 0:
            errors.append("unmasked_weight must be >= 0")
        for name in ("noise_prob", "mix_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                errors.append(f"{name} must be in [0, 1]")
        for name in ("noise_snr", "mix_snr"):
            v = getattr(self, name)
            if (not isinstance(v, (list, tuple)) or len(v) != 2 or any(isinstance(x, bool) or not isinstance(x, (int, float))
                                                                       for x in v) or v[0] > v[1]):
                errors.append(f"{name} must be [low, high] in dB with low <= high")
        if errors:
            raise ValueError("invalid pre-training config: " + "; ".join(errors))
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
        object.__setattr__(self, "noise_snr", tuple(float(x) for x in self.noise_snr))
        object.__setattr__(self, "mix_snr", tuple(float(x) for x in self.mix_snr))
        object.__setattr__(self, "model", dict(self.model or {}))

    def replace(self, **kw) -> "PretrainConfig":
        return dataclasses.replace(self, **{k: v for k, v in kw.items() if v is not None})

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        d["noise_snr"], d["mix_snr"] = list(self.noise_snr), list(self.mix_snr)
        return d


def load_config(path: str | Path | None = None, **overrides) -> PretrainConfig:
    """Read a YAML file into a :class:`PretrainConfig`; unknown keys are errors naming the file."""
    data: dict = {}
    if path is not None:
        data = read_yaml_mapping(path)
        check_known_keys(data, [f.name for f in dataclasses.fields(PretrainConfig)], str(path), "key")
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return PretrainConfig(**data)
    except TypeError as e:
        raise ValueError(f"{path or 'config'}: {e}") from None


def save_config(cfg: PretrainConfig, path: str | Path) -> None:
    from ..utils.io import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))


# Small enough for the test suite: a 2 x 64 HuBERT, 16 clusters, 30 steps.
QUICK = dict(
    model=dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
               conv_dim=[32] * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4),
    num_clusters=16, kmeans_max_frames=20_000, proj_dim=32, steps=30, lr=1e-3, batch_seconds=8.0,
    max_seconds=2.0, checkpoint_every=10, log_every=5,
)
