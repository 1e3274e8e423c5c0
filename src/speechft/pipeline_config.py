"""Configuration of `speechft reproduce`: a frozen dataclass loaded from YAML.

What to run (models, tasks, recipes, α) is separate from how much (sizes, steps); `--quick` swaps
in the quick sizes. The resolved config is saved as ``OUT/config.yaml`` next to the report.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Optional

import yaml

from .utils.names import check_known_keys, read_yaml_mapping


def _alpha(value, where: str) -> float | str:
    """A number in [0, 1], or a valid ``auto[:RULE[:VALUE]]`` spec."""
    from .merge.auto import check_spec, is_auto

    if is_auto(value):
        return check_spec(value, f"{where}: alpha")
    if isinstance(value, str):  # from the command line
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{where}: alpha must be a number in [0, 1] or auto[:RULE[:VALUE]], not {value!r}")
    return float(value)


@dataclass(frozen=True)
class ReproduceConfig:
    model: str = "speechft-tiny"  # pre-trained θ₀
    ft_task: str = "lite-asr"  # the fine-tuning task (the paper fine-tunes on ASR)
    tasks: tuple = ("lite-pr", "lite-asr", "lite-ks", "lite-sid", "lite-lid", "lite-ic", "lite-style", "fsdd-ks", "fsdd-sid")
    baselines: tuple = ()  # besides regular FT: any of l2sp, lora, dora, early (each adds a fine-tune + a probe)
    alpha: float | str = 0.25  # or auto[:RULE[:VALUE]]: chosen from the Stable-FT run (speechft.merge.auto)
    sweep_alphas: tuple = (0.0, 0.25, 0.5, 1.0)  # 0, alpha and 1 reuse the probes of θ₀, Speech-FT, Stable-FT
    sweep_tasks: tuple = ("lite-asr", "lite-pr", "lite-sid", "fsdd-ks")
    size: str = "default"  # lite (and FSDD) data size: default | quick
    ft_steps: int = 300
    ft_lr: float = 1e-4
    ft_head_lr: Optional[float] = 1e-3  # the head's peak lr; null = ft_lr (the official code's single lr)
    ft_batch_seconds: float = 8.0  # padded audio seconds per fine-tuning batch
    beta: float = 0.1
    l2sp_lambda: float = 1.0
    lora_rank: int = 8
    early_every: int = 0  # 0 = early checkpoints baseline off (or every K steps when "early" is listed)
    probe_epochs: Optional[int] = None  # None = each task's default
    probe_limit: Optional[int] = None
    seeds: int = 1
    analysis_limit: int = 100
    fsdd: Optional[str] = None

    @classmethod
    def load(cls, path: Optional[str | Path] = None, **overrides) -> "ReproduceConfig":
        data = {}
        if path is not None:
            data = read_yaml_mapping(path)
        check_known_keys(data, [f.name for f in fields(cls)], str(path) if path is not None else "config")
        data.update({k: v for k, v in overrides.items() if v is not None})
        for k in ("tasks", "baselines", "sweep_alphas", "sweep_tasks"):
            if k in data and isinstance(data[k], list):
                data[k] = tuple(data[k])
        if "alpha" in data:
            data["alpha"] = _alpha(data["alpha"], str(path) if path is not None else "config")
        return cls(**data)

    @property
    def fixed_alpha(self) -> Optional[float]:
        """Speech-FT's α when it is a number; None when ``auto…`` chooses it at run time."""
        return None if isinstance(self.alpha, str) else float(self.alpha)

    @property
    def alpha_label(self) -> str:
        """``0.25`` or ``auto:cka``: how the report names Speech-FT's α."""
        return self.alpha if isinstance(self.alpha, str) else f"{self.alpha:g}"

    @classmethod
    def quick(cls, base: "ReproduceConfig") -> "ReproduceConfig":
        """The CI-sized variant: quick lite data, few steps, short probes, a coarse sweep."""
        return dataclasses.replace(
            base, size="quick", ft_steps=min(base.ft_steps, 20), ft_batch_seconds=min(base.ft_batch_seconds, 8.0),
            probe_epochs=base.probe_epochs or 3,
            sweep_alphas=(0.0, 0.25, 1.0), sweep_tasks=tuple(t for t in base.sweep_tasks[:2]), analysis_limit=20,
            baselines=tuple(b for b in base.baselines if b in ("l2sp",)),
        )

    def to_yaml(self) -> str:
        d = dataclasses.asdict(self)
        return yaml.safe_dump({k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}, sort_keys=False)
