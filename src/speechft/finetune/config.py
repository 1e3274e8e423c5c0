"""Fine-tuning configuration: a frozen dataclass loaded from YAML.

What to run (model, task, recipe, output folder) comes from the command line or the
:func:`speechft.finetune.finetune` call; how to run it (optimisation, schedule, batching,
bookkeeping) lives here. Recipe knobs left at ``None`` take the recipe's value (see
:mod:`speechft.finetune.recipes`). The resolved config is saved as ``OUT/config.yaml`` next to the
artifacts, under ``config:``, beside a ``run:`` section that records what was run; such a file can
be passed back as ``--config`` (its ``run:`` section is then ignored).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import yaml

from ..utils.names import check_known_keys, read_yaml_mapping

# The attention and feed-forward projections of HuBERT / wav2vec 2.0 / WavLM layers.
DEFAULT_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj", "intermediate_dense", "output_dense")
MIXED_PRECISION = ("auto", "no", "bf16", "fp16")
LONG_UTTERANCES = ("auto", "drop", "crop")
SELECT = ("last", "best")


@dataclass(frozen=True)
class FinetuneConfig:
    # -- optimisation (the paper: Adam, lr 1e-4, clip 1.0, tri-stage 10/40/50) -------------------
    steps: int = 400  # optimizer steps T
    lr: float = 1e-4  # encoder peak learning rate
    head_lr: Optional[float] = 1e-3  # head (task prediction model D) peak lr; None = same as lr
    betas: tuple = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0  # Adam (coupled) weight decay; only parameters with a gradient see it
    grad_clip: float = 1.0  # max global grad norm
    warmup_frac: float = 0.1  # tri-stage: linear warm-up ...
    hold_frac: float = 0.4  # ... constant ...
    decay_frac: float = 0.5  # ... linear decay to 0 at the end (the three must sum to 1)
    # -- recipe knobs (None = the recipe's default) --------------------------------------------
    beta: Optional[float] = None  # share of steps where only the head learns (stable: 0.1)
    freeze_cnn: Optional[bool] = None  # keep the CNN feature extractor frozen (stable: yes)
    l2sp_lambda: float = 1.0  # l2sp: weight of the ||theta - theta0||^2 penalty on encoder weights
    lora_rank: int = 8
    lora_alpha: Optional[float] = None  # None = 2 * rank
    lora_dropout: float = 0.0
    lora_targets: tuple = DEFAULT_LORA_TARGETS
    # -- head ----------------------------------------------------------------------------------
    layer_sum: bool = False  # False: last hidden state; True: learnable softmax-weighted layer sum
    head: dict = field(default_factory=dict)  # overrides of the task's head options (hidden, layers, proj, dropout)
    specaugment: object = None  # SpecAugment on the representations in training: null (off), "s3prl" or a mapping
    # -- data ----------------------------------------------------------------------------------
    batch_seconds: float = 16.0  # padded audio seconds per micro-batch (per process)
    max_batch_size: Optional[int] = None  # cap on utterances per micro-batch
    grad_accum: int = 1  # micro-batches per optimizer step (per process)
    max_seconds: Optional[float] = 20.0  # limit for train utterances (see long_utterances)
    long_utterances: str = "auto"  # over max_seconds: "drop" them, "crop" from the start; auto = drop for
    # CTC tasks (a cropped utterance keeps its whole transcript: label noise), crop for utterance labels
    min_seconds: float = 0.1  # shorter ones are invalid (reported by validation)
    num_workers: int = 0  # DataLoader workers (0: load in the training process)
    # -- bookkeeping ---------------------------------------------------------------------------
    seed: int = 0
    log_every: int = 10
    eval_every: int = 100  # dev evaluation every K steps (and at the end); 0 = only at the end
    checkpoint_every: int = 100  # resumable checkpoint every K steps (and at the end)
    keep_checkpoints: int = 2  # resumable checkpoints kept on disk (newest)
    save_every: int = 0  # early-checkpoint baseline: keep the encoder every K steps (0 = off)
    select: str = "last"  # the saved encoder/head: "last" step or "best" dev metric
    mixed_precision: str = "auto"  # auto = bf16 on a GPU that has it, else fp32
    tensorboard: bool = True  # also write OUT/tensorboard when the package is installed
    num_threads: int = 0  # torch CPU threads; 0 = torch's default

    def __post_init__(self):
        _coerce_numbers(self)
        errors = []
        if self.steps < 1:
            errors.append("steps must be >= 1")
        if self.lr <= 0 or (self.head_lr is not None and self.head_lr <= 0):
            errors.append("lr and head_lr must be > 0")
        if min(self.warmup_frac, self.hold_frac, self.decay_frac) < 0 or \
                abs(self.warmup_frac + self.hold_frac + self.decay_frac - 1.0) > 1e-6:
            errors.append("warmup_frac + hold_frac + decay_frac must be 1 (each >= 0)")
        if self.beta is not None and not 0.0 <= self.beta < 1.0:
            errors.append("beta must be in [0, 1)")
        if self.grad_clip <= 0:
            errors.append("grad_clip must be > 0")
        if self.l2sp_lambda < 0:
            errors.append("l2sp_lambda must be >= 0")
        if self.lora_rank < 1:
            errors.append("lora_rank must be >= 1")
        if self.batch_seconds <= 0 or self.grad_accum < 1:
            errors.append("batch_seconds must be > 0 and grad_accum >= 1")
        if self.max_seconds is not None and self.max_seconds <= self.min_seconds:
            errors.append("max_seconds must be > min_seconds")
        for key in ("log_every", "checkpoint_every", "keep_checkpoints"):
            if getattr(self, key) < 1:
                errors.append(f"{key} must be >= 1")
        if self.eval_every < 0 or self.save_every < 0:
            errors.append("eval_every and save_every must be >= 0")
        if self.select not in SELECT:
            errors.append(f"select must be one of {', '.join(SELECT)}")
        if self.long_utterances not in LONG_UTTERANCES:
            errors.append(f"long_utterances must be one of {', '.join(LONG_UTTERANCES)}")
        try:
            from .specaug import SpecAugmentConfig

            SpecAugmentConfig.from_option(self.specaugment)
        except ValueError as e:
            errors.append(str(e).replace("invalid fine-tuning config: ", ""))
        if self.mixed_precision not in MIXED_PRECISION:
            errors.append(f"mixed_precision must be one of {', '.join(MIXED_PRECISION)}")
        if errors:
            raise ValueError("invalid fine-tuning config: " + "; ".join(errors))
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
        object.__setattr__(self, "lora_targets", tuple(str(t) for t in self.lora_targets))
        object.__setattr__(self, "head", dict(self.head or {}))

    @property
    def effective_head_lr(self) -> float:
        return self.lr if self.head_lr is None else self.head_lr

    def long_utterance_policy(self, task) -> str:
        """What happens to a training utterance over ``max_seconds``: "drop" or "crop"."""
        if self.long_utterances != "auto":
            return self.long_utterances
        return "drop" if task.kind == "ctc" else "crop"

    def replace(self, **kw) -> "FinetuneConfig":
        return dataclasses.replace(self, **{k: v for k, v in kw.items() if v is not None})

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        d["lora_targets"] = list(self.lora_targets)
        return d


_FLOATS = ("lr", "head_lr", "eps", "weight_decay", "grad_clip", "warmup_frac", "hold_frac", "decay_frac", "beta",
           "l2sp_lambda", "lora_alpha", "lora_dropout", "batch_seconds", "max_seconds", "min_seconds")
_INTS = ("steps", "lora_rank", "max_batch_size", "grad_accum", "num_workers", "seed", "log_every", "eval_every",
         "checkpoint_every", "keep_checkpoints", "save_every", "num_threads")


def _coerce_numbers(cfg) -> None:
    """YAML reads ``1e-4`` (no dot) as a string; accept numbers written any usual way."""
    for names, kind in ((_FLOATS, float), (_INTS, int)):
        for name in names:
            v = getattr(cfg, name)
            if v is None or isinstance(v, bool):
                continue
            try:
                n = kind(v) if not (kind is int and isinstance(v, float) and not v.is_integer()) else None
            except (TypeError, ValueError):
                n = None
            if n is None:
                raise ValueError(f"invalid fine-tuning config: {name} must be a{'n integer' if kind is int else ' number'}, "
                                 f"not {v!r}")
            object.__setattr__(cfg, name, n)


KNOWN_KEYS = tuple(f.name for f in dataclasses.fields(FinetuneConfig))


def check_keys(keys, where: str) -> None:
    """Unknown config keys are errors with a "did you mean"."""
    check_known_keys(keys, KNOWN_KEYS, where, "fine-tuning config key")


def load_config(path: str | Path | None = None, base: Optional[dict] = None, **overrides) -> FinetuneConfig:
    """A :class:`FinetuneConfig`: defaults < ``base`` (e.g. :data:`QUICK`) < the YAML file < non-None
    ``overrides``. Accepts a plain mapping of keys or a saved ``OUT/config.yaml`` (``config:`` + ``run:``)."""
    data: dict = {}
    where = str(path) if path is not None else "overrides"
    if path is not None:
        data = read_yaml_mapping(path)
        if "config" in data and isinstance(data["config"], dict):  # a saved OUT/config.yaml
            data = dict(data["config"])
    check_keys(data, where)
    check_keys(overrides, "overrides")
    data = {**(base or {}), **data, **{k: v for k, v in overrides.items() if v is not None}}
    try:
        return FinetuneConfig(**data)
    except TypeError as e:
        raise ValueError(f"{where}: {e}") from None


def save_run_config(path: str | Path, cfg: FinetuneConfig, run: dict) -> None:
    """Write ``{"run": what was run, "config": how}`` atomically as YAML."""
    from ..utils.io import atomic_write_text

    atomic_write_text(path, yaml.safe_dump({"run": run, "config": cfg.to_dict()}, sort_keys=False))


# ``--quick``: quick lite data and a short run (smoke tests, CI, the first try of a new setup).
QUICK = dict(steps=40, eval_every=20, checkpoint_every=20, log_every=5)
