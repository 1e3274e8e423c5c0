"""Configuration of `speechft study`: the paper's experiment matrix in one YAML file.

Shared settings (θ₀, probe suite, seeds, fine-tuning budget) plus named scenarios, each one
fine-tuning task with its rows (regular FT, Stable-FT, Speech-FT and any baselines), and an optional
multitask block merging the Stable-FT models of several scenarios. Frozen and validated: unknown
keys, unknown scenario keys, unknown tasks and baselines are errors that name the file.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Optional

import yaml

from .utils.names import check_known_keys, read_yaml_mapping

BASELINES = ("l2sp", "lora", "dora", "early")
MULTITASK_METHODS = ("linear", "ties", "dare")


KINDS = ("supervised", "unsupervised", "continual")


def _alpha_choice(block, supervised: list, where: str) -> "AlphaChoice":
    """The validated ``alpha_choice`` block (rules known, grid in [0, 1] with 0 and 1, scenarios supervised)."""
    from .merge.auto import check_spec

    if not isinstance(block, dict):
        raise ValueError(f"{where} must be a mapping (rules, grid, scenarios, limit)")
    check_known_keys(block, [f.name for f in fields(AlphaChoice)], where, "alpha_choice key")
    rules = block.get("rules", list(AlphaChoice.rules))
    if not isinstance(rules, list) or not rules:
        raise ValueError(f"{where}: rules must list at least one rule (e.g. [ft-dev, cka])")
    for r in rules:
        check_spec(f"auto:{r}", f"{where}: rules")
    grid = block.get("grid", list(ALPHA_GRID))
    if (not isinstance(grid, list) or any(isinstance(a, bool) or not isinstance(a, (int, float)) for a in grid)
            or any(not 0.0 <= float(a) <= 1.0 for a in grid) or not {0.0, 1.0} <= {float(a) for a in grid}):
        raise ValueError(f"{where}: grid must list numbers in [0, 1] including 0 and 1, got {grid!r}")
    unknown = [s for s in block.get("scenarios") or [] if s not in supervised]
    if unknown:
        raise ValueError(f"{where}: unknown scenario(s) {unknown}; known supervised ones: {', '.join(supervised)}")
    limit = block.get("limit", AlphaChoice.limit)
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        raise ValueError(f"{where}: limit must be a whole number of at least 1, not {limit!r}")
    return AlphaChoice(rules=tuple(str(r) for r in rules), grid=tuple(sorted({float(a) for a in grid})),
                       scenarios=tuple(block.get("scenarios") or ()), limit=limit)


def _seeds(value, where: str) -> Optional[int]:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{where} must be a whole number of at least 1, not {value!r}")
    return value


@dataclass(frozen=True)
class Scenario:
    name: str
    task: Optional[str] = None  # supervised: the fine-tuning task
    baselines: tuple = ()  # supervised: any of BASELINES
    description: str = ""
    kind: str = "supervised"  # unsupervised: continued HuBERT pre-training of θ₀ (`pretrain --init`) on new audio
    languages: tuple = ()  # unsupervised: pretrain-lite languages of that audio (e.g. the unseen ones)
    hours: float = 0.5  # unsupervised: hours of that audio
    steps: int = 300  # unsupervised: continued pre-training steps
    lr: float = 2e-4  # unsupervised: peak learning rate of the continued pre-training
    ft_seeds: Optional[int] = None  # unsupervised/continual: fine-tuning seeds (None: the study's ft_seeds)
    order: tuple = ()  # continual: the tasks fine-tuned one after another (A -> B -> C)

    def tasks_used(self) -> tuple:
        """The tasks this scenario fine-tunes on (its task, or its order)."""
        return tuple(self.order) if self.kind == "continual" else ((self.task,) if self.task else ())


@dataclass(frozen=True)
class Multitask:
    scenarios: tuple = ()  # names of the scenarios whose Stable-FT models are merged (same fine-tuning seed)
    methods: tuple = MULTITASK_METHODS
    alpha: float = 1.0  # θ₀ + α·mean τᵢ (the paper's multitask merge: the mean task vector)
    density: float = 0.5  # ties / dare
    ft_seeds: Optional[int] = None  # merges of Stable-FT seeds 0..N-1 (None: the study's ft_seeds)


ALPHA_GRID = (0.0, 0.1, 0.25, 0.5, 0.75, 1.0)


@dataclass(frozen=True)
class AlphaChoice:
    """Choosing α automatically, evaluated: per scenario (Stable-FT of fine-tuning seed 0) every ``auto``
    rule's curve, and the merged models at every α of ``grid`` probed on every task, so each rule's choice
    on the grid, the fixed α and the oracle (the grid's best on test) are compared on the same models."""
    rules: tuple = ("ft-dev", "cka")  # RULE[:VALUE] as in --alpha auto:RULE[:VALUE]
    grid: tuple = ALPHA_GRID  # the α probed on every task (it holds 0 and 1)
    scenarios: tuple = ()  # supervised scenario names; () = every supervised scenario
    limit: int = 200  # dev utterances the rules' signals use


@dataclass(frozen=True)
class StudyConfig:
    model: str = "speechft-tiny"
    tasks: tuple = ("lite-pr", "lite-asr", "lite-ks", "lite-sid", "lite-lid", "lite-ic", "lite-style", "fsdd-ks", "fsdd-sid")
    scenarios: tuple = ()  # Scenario, ...
    multitask: Optional[Multitask] = None
    alpha_choice: Optional[AlphaChoice] = None
    size: str = "default"
    ft_seeds: int = 2
    probe_seeds: int = 3
    baseline_ft_seeds: int = 1  # baselines are single-seed by default (their cost is the same per seed)
    ft_steps: int = 300
    ft_lr: float = 1e-4
    ft_head_lr: Optional[float] = 1e-3  # the head's peak lr; null = ft_lr (the official code's single lr)
    ft_batch_seconds: float = 8.0
    beta: float = 0.1
    alpha: float = 0.25
    l2sp_lambda: float = 1.0
    # keep θ₀'s CNN frozen in every recipe (regular FT and L2-SP too), as the official Speech-FT code path
    # does (its CNN never receives gradients); false: those recipes train it (speechft finetune's default)
    freeze_cnn: bool = True
    lora_rank: int = 8
    early_step: int = 100  # the early-stop baseline: Stable-FT's encoder at this step
    sweep_alphas: tuple = (0.0, 0.25, 0.5, 1.0)  # per scenario, on fine-tuning seed 0
    sweep_tasks: tuple = ()  # besides each scenario's own task
    probe_epochs: Optional[int] = None
    probe_limit: Optional[int] = None
    analysis_limit: int = 60
    fsdd: Optional[str] = None

    @classmethod
    def load(cls, path: Optional[str | Path] = None, **overrides) -> "StudyConfig":
        from .tasks import get_task

        where = str(path) if path is not None else "study config"
        data = read_yaml_mapping(path) if path is not None else {}
        check_known_keys(data, [f.name for f in fields(cls)], where)
        data.update({k: v for k, v in overrides.items() if v is not None})
        for k in ("tasks", "sweep_alphas", "sweep_tasks"):
            if isinstance(data.get(k), list):
                data[k] = tuple(data[k])
        scen = []
        for i, s in enumerate(data.get("scenarios") or []):
            if not isinstance(s, dict):
                raise ValueError(f"{where}: scenarios[{i}] must be a mapping with name and task")
            check_known_keys(s, [f.name for f in fields(Scenario)], f"{where}: scenarios[{i}]", "scenario key")
            kind = s.get("kind", "supervised")
            if kind not in KINDS:
                raise ValueError(f"{where}: scenarios[{i}]: kind must be one of {', '.join(KINDS)}, not {kind!r}")
            if "name" not in s or (kind == "supervised" and "task" not in s):
                raise ValueError(f"{where}: scenarios[{i}] needs a name and (supervised) a task")
            if kind == "supervised":
                get_task(s["task"])
            elif kind == "continual":
                order = s.get("order") or []
                if not isinstance(order, list) or len(order) < 2 or len(set(order)) != len(order):
                    raise ValueError(f"{where}: scenario {s['name']}: order must list at least two different tasks "
                                     f"(fine-tuned one after another), got {order!r}")
                for t in order:
                    get_task(t)
                extra = [k for k in ("task", "baselines", "languages") if s.get(k)]
                if extra:
                    raise ValueError(f"{where}: scenario {s['name']}: {', '.join(extra)} do not apply to a continual "
                                     f"scenario (its tasks are its order)")
            else:
                from .corpora import text

                known = text.all_languages()
                bad = [c for c in s.get("languages") or [] if c not in known]
                if bad or not s.get("languages"):
                    raise ValueError(f"{where}: scenario {s['name']}: languages must be codes among "
                                     f"{', '.join(known)} (got {s.get('languages')})")
                if s.get("baselines"):
                    raise ValueError(f"{where}: scenario {s['name']}: baselines apply to supervised scenarios only")
            bad = [b for b in s.get("baselines") or [] if b not in BASELINES]
            if bad:
                raise ValueError(f"{where}: scenario {s['name']}: unknown baseline(s) {bad}; known: {', '.join(BASELINES)}")
            scen.append(Scenario(name=str(s["name"]), task=s.get("task"), baselines=tuple(s.get("baselines") or ()),
                                 description=str(s.get("description", "")), kind=kind,
                                 languages=tuple(s.get("languages") or ()), hours=float(s.get("hours", 0.5)),
                                 steps=int(s.get("steps", 300)), lr=float(s.get("lr", 2e-4)),
                                 ft_seeds=_seeds(s.get("ft_seeds"), f"{where}: scenario {s['name']}: ft_seeds"),
                                 order=tuple(s.get("order") or ())))
        names = [s.name for s in scen]
        if len(set(names)) != len(names):
            raise ValueError(f"{where}: scenario names must be unique, got {names}")
        data["scenarios"] = tuple(scen)
        mt = data.get("multitask")
        if mt:
            check_known_keys(mt, [f.name for f in fields(Multitask)], f"{where}: multitask", "multitask key")
            supervised = [x.name for x in scen if x.kind == "supervised"]
            unknown = [s for s in mt.get("scenarios", []) if s not in supervised]
            if unknown:
                raise ValueError(f"{where}: multitask: unknown scenario(s) {unknown}; known supervised ones: "
                                 f"{', '.join(supervised)}")
            bad = [m for m in mt.get("methods", MULTITASK_METHODS) if m not in MULTITASK_METHODS]
            if bad:
                raise ValueError(f"{where}: multitask: unknown method(s) {bad}; known: {', '.join(MULTITASK_METHODS)}")
            data["multitask"] = Multitask(scenarios=tuple(mt.get("scenarios", supervised)),
                                          methods=tuple(mt.get("methods", MULTITASK_METHODS)),
                                          alpha=float(mt.get("alpha", 1.0)), density=float(mt.get("density", 0.5)),
                                          ft_seeds=_seeds(mt.get("ft_seeds"), f"{where}: multitask: ft_seeds"))
        if data.get("alpha_choice"):
            data["alpha_choice"] = _alpha_choice(data["alpha_choice"], [x.name for x in scen if x.kind == "supervised"],
                                                 f"{where}: alpha_choice")
        cfg = cls(**data)
        for t in cfg.tasks:
            get_task(t)
        if not cfg.scenarios:
            raise ValueError(f"{where}: at least one scenario is needed")
        if cfg.ft_seeds < 1 or cfg.probe_seeds < 1 or cfg.baseline_ft_seeds < 1:
            raise ValueError(f"{where}: ft_seeds, probe_seeds and baseline_ft_seeds must be at least 1")
        if cfg.multitask and cfg.multitask.ft_seeds and cfg.multitask.ft_seeds > cfg.ft_seeds:
            raise ValueError(f"{where}: multitask: ft_seeds ({cfg.multitask.ft_seeds}) cannot exceed the study's "
                             f"ft_seeds ({cfg.ft_seeds}): it merges those Stable-FT models")
        return cfg

    def alpha_scenarios(self) -> tuple:
        """The scenarios the α-choice block evaluates (its list, else every supervised scenario)."""
        if self.alpha_choice is None:
            return ()
        return self.alpha_choice.scenarios or tuple(s.name for s in self.scenarios if s.kind == "supervised")

    def seeds_of(self, block) -> int:
        """Fine-tuning seeds of an unsupervised/continual scenario or the multitask block (its own, else the
        study's)."""
        return block.ft_seeds or self.ft_seeds

    @classmethod
    def default(cls) -> "StudyConfig":
        """The built-in study (the same as ``configs/study.yaml``; a test keeps them equal)."""
        scen = (Scenario("content", "lite-asr", ("l2sp", "lora", "dora", "early"),
                         "Supervised fine-tuning on characters of synthetic English (the paper's ASR case)."),
                Scenario("speaker", "lite-sid", ("l2sp", "lora", "dora", "early"),
                         "Supervised fine-tuning on speaker identity."),
                Scenario("paralinguistic", "lite-style", (),
                         "Supervised fine-tuning on speaking style (the emotion-recognition analogue)."),
                Scenario("real-speech", "fsdd-ks", (), "Supervised fine-tuning on real recorded digits (FSDD)."))
        unsup = Scenario("cross-lingual", None, (), "Unsupervised fine-tuning: continued HuBERT pre-training of θ₀ on "
                         "speech in six languages it never heard (hu, tr, sw, id, cs, vi), then Speech-FT's merge.",
                         kind="unsupervised", languages=("hu", "tr", "sw", "id", "cs", "vi"), hours=0.5, steps=300,
                         ft_seeds=1)
        return cls(scenarios=scen + (unsup,), multitask=Multitask(scenarios=tuple(s.name for s in scen), ft_seeds=1),
                   size="study", ft_batch_seconds=6.0)

    @classmethod
    def quick(cls, base: "StudyConfig") -> "StudyConfig":
        """The CI-sized variant: quick lite data, few steps, short probes; every section still produced."""
        scen = tuple(dataclasses.replace(s, baselines=tuple(b for b in s.baselines if b in ("l2sp", "early")),
                                         hours=min(s.hours, 0.02), steps=min(s.steps, 6))
                     for s in base.scenarios)
        tasks = tuple(dict.fromkeys(t for s in scen for t in s.tasks_used()))  # the probe suite: the scenarios' tasks
        return dataclasses.replace(base, size="quick", ft_steps=min(base.ft_steps, 12), probe_epochs=2,
                                   ft_seeds=min(base.ft_seeds, 2), probe_seeds=min(base.probe_seeds, 2),
                                   baseline_ft_seeds=1, scenarios=scen, tasks=tasks, sweep_tasks=(),
                                   early_step=min(base.early_step, 6), sweep_alphas=(0.0, 0.5, 1.0), analysis_limit=8,
                                   alpha_choice=base.alpha_choice and dataclasses.replace(
                                       base.alpha_choice, limit=min(base.alpha_choice.limit, 8)))

    def to_yaml(self) -> str:
        def plain(v):
            if dataclasses.is_dataclass(v):
                return {k: plain(x) for k, x in dataclasses.asdict(v).items()}
            if isinstance(v, tuple):
                return [plain(x) for x in v]
            return v

        return yaml.safe_dump({f.name: plain(getattr(self, f.name)) for f in fields(self)}, sort_keys=False,
                              allow_unicode=True)
