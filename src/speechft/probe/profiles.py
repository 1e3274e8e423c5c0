"""Probe profiles: how every task's head is built and trained, and which reference points score it.

* ``fast`` (the default): speechft's own heads and training lengths (:data:`~speechft.probe.train.HEAD_DEFAULTS`
  and each task's head options), sized so the built-in suite probes a small model in minutes on a
  CPU. Every task, real SUPERB ones included, is scored against FBANK probed with this same profile
  and a perfect score: a fast-profile score is never set beside SUPERB's published numbers.
* ``superb``: the real SUPERB tasks (``pr``, ``asr``, ``ks``, ``sid``, ``er``, ``ic``) with s3prl's
  downstream recipes (head architecture, optimizer, learning rate, steps, batch size, gradient
  accumulation, dev evaluation interval, SpecAugment for ASR), each cited below by its config
  file, and scored against the published reference points (:data:`speechft.probe.score.OFFICIAL`).
  It has no settings for other tasks: their published protocol does not exist.

What remains different from s3prl in the superb profile (docs/probe.md): the loss of a batch is
summed and divided by its tokens (CTC) or utterances, where s3prl averages per utterance; VoxCeleb1
training utterances are not randomly cropped to 8 s (the head reads cached whole-utterance features);
CTC decoding is greedy without a language model, as SUPERB's PR/ASR numbers without LM are.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional

from ..utils.names import by_name, lookup
from .train import ProbeConfig, adjust_config, default_config

S3PRL = "s3prl/s3prl, s3prl/downstream/"


@dataclass(frozen=True)
class Recipe:
    """One task's settings in a profile: head options (passed to :func:`speechft.models.heads.build_head`)
    and training, with the file they follow."""

    config: ProbeConfig
    head_options: tuple  # sorted ((key, value), ...)
    source: str

    def options(self) -> dict:
        return dict(self.head_options)


def _recipe(source: str, *, lr: float, batch_size: int, total_steps: int, eval_step: int, grad_accum: int = 1,
            **head) -> Recipe:
    cfg = ProbeConfig(epochs=None, lr=lr, batch_seconds=None, batch_size=batch_size, grad_clip=1.0,
                      max_steps=total_steps, grad_accum=grad_accum, eval_every=eval_step)
    return Recipe(cfg, tuple(sorted(head.items())), S3PRL + source)


# Transcribed from s3prl's downstream configs (runner.total_steps, runner.gradient_clipping = 1 in all,
# runner.gradient_accumulate_steps, runner.eval_step, optimizer Adam lr, the train batch size, and the
# model block); the featurizer's learnable softmax-weighted layer sum is what every speechft head uses.
SUPERB_RECIPES: dict[str, Recipe] = {
    # ctc/libriphone.yaml: projector Linear(D, 256) -> FrameLevel (one Linear), Adam 1e-2, batch 16 x 2
    "pr": _recipe("ctc/libriphone.yaml", lr=1e-2, batch_size=16, grad_accum=2, total_steps=100_000, eval_step=1000,
                  proj=256),
    # asr/config.yaml: project_dim 1024 -> 2-layer BiLSTM 1024 (dropout 0.2 after each), Adam 1e-4, batch 32,
    # SpecAugment (time warp 5, 2 time masks <= 40, 4 frequency masks <= 50)
    "asr": _recipe("asr/config.yaml", lr=1e-4, batch_size=32, total_steps=200_000, eval_step=2000,
                   proj=1024, hidden=1024, layers=2, dropout=0.2, final_dropout=0.2, specaugment="s3prl"),
    # speech_commands/config.yaml: projector_dim 256, UtteranceLevel MeanPooling, Adam 1e-4, batch 32
    "ks": _recipe("speech_commands/config.yaml", lr=1e-4, batch_size=32, total_steps=200_000, eval_step=4000, proj=256),
    # voxceleb1/config.yaml: projector_dim 256, MeanPooling, Adam 1e-4, batch 8 x 4
    "sid": _recipe("voxceleb1/config.yaml", lr=1e-4, batch_size=8, grad_accum=4, total_steps=200_000, eval_step=4000,
                   proj=256),
    # emotion/config.yaml: projector_dim 256, MeanPooling, Adam 1e-4, batch 4 x 8, 30k steps
    "er": _recipe("emotion/config.yaml", lr=1e-4, batch_size=4, grad_accum=8, total_steps=30_000, eval_step=1000,
                  proj=256),
    # fluent_commands/config.yaml: projector_dim 256, MeanPooling, Adam 1e-4, batch 32
    "ic": _recipe("fluent_commands/config.yaml", lr=1e-4, batch_size=32, total_steps=200_000, eval_step=4000, proj=256),
}


@dataclass(frozen=True)
class ProbeProfile:
    name: str
    description: str
    published_references: bool  # True: real SUPERB tasks are scored against the published points
    recipes: Optional[Mapping[str, Recipe]] = None  # None: every task, by its head type (fast)

    def settings(self, task, quick: bool = False, epochs: Optional[int] = None, **overrides) -> tuple[ProbeConfig, dict]:
        """``(training config, head options)`` of ``task`` under this profile, with quick mode,
        ``epochs`` and per-field overrides applied (see :func:`speechft.probe.train.adjust_config`)."""
        if self.recipes is None:
            return default_config(task, quick=quick, epochs=epochs, **overrides), task.head_options()
        recipe = self.recipes.get(task.name)
        if recipe is None:
            raise ValueError(f"probe profile {self.name!r} has settings for {', '.join(self.recipes)} only "
                             f"(s3prl's recipes of the real SUPERB tasks), not for task {task.name!r}: use --profile fast")
        if quick:
            raise ValueError(f"probe profile {self.name!r} follows s3prl's step counts; --quick shortens the fast "
                             "profile only (shorten a superb run with --epochs or max_steps)")
        return adjust_config(recipe.config, epochs=epochs, **overrides), recipe.options()

    def source(self, task_name: str) -> str:
        """Where the task's settings come from, for reports."""
        if self.recipes is None:
            return "speechft fast profile (docs/probe.md)"
        return self.recipes[task_name].source


FAST = ProbeProfile("fast", "speechft's own heads and training lengths (docs/probe.md), minutes on a CPU; "
                    "every task scored against FBANK probed with this profile", published_references=False)
SUPERB = ProbeProfile("superb", "s3prl's downstream recipes for the real SUPERB tasks, scored against the "
                      "published reference points", published_references=True, recipes=SUPERB_RECIPES)
PROFILES: dict[str, ProbeProfile] = by_name([FAST, SUPERB], "probe profile")
DEFAULT_PROFILE = "fast"


def get_profile(name: str) -> ProbeProfile:
    return lookup(PROFILES, name, "probe profile", "known profiles")


def record_profile(record: Mapping) -> str:
    """The profile a probe record was made with (records from before profiles: ``fast``)."""
    return record.get("profile") or DEFAULT_PROFILE

