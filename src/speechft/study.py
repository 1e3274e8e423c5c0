"""`speechft study`: the paper's experiment matrix — scenarios × methods × seeds — in one job graph.

Every scenario fine-tunes θ₀ on its task with each recipe (regular FT, Stable-FT, baselines) and
each fine-tuning seed, merges every Stable-FT model into Speech-FT (α), and probes every model on
every task of the shared suite with every probe seed. θ₀ and FBANK are probed once for all
scenarios. The multitask block merges the Stable-FT models of several scenarios (same fine-tuning
seed) with the paper's mean task vector, TIES and DARE. Per scenario, an α sweep on fine-tuning
seed 0 and the weight/representation analyses.

It is the reproduce pipeline's machinery (:mod:`speechft.pipeline`: the same job functions,
provenance-keyed jobs, one shared probe results file with provenance-keyed records), planned for many
scenarios. A row of the report pools the models of its fine-tuning seeds (record names
``"<scenario> / <method> / ft<k>"``); its intervals resample fine-tuning seeds, probe seeds and test
utterances (:mod:`speechft.probe.stats`).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from . import pipeline as P
from .finetune.recipes import cnn_frozen, get_recipe
from .merge.auto import parse_rule
from .paths import scratch_root
from .study_config import StudyConfig
from .utils.io import atomic_write_text, check_writable, file_name, remove_empty_dir
from .utils.jobs import Job, Stages, default_workers, run_jobs

log = logging.getLogger(__name__)

METHOD_NAMES = {"regular": P.REGULAR, "stable": P.STABLE, "l2sp": "L2-SP", "lora": "LoRA", "dora": "DoRA"}
MULTITASK_NAMES = {"linear": "multitask mean τ", "ties": "multitask TIES", "dare": "multitask DARE"}


@dataclass(frozen=True)
class StudyRow:
    """One row of a scenario's table: a method, pooled over its fine-tuning seeds."""

    scenario: str  # scenario name, "multitask", or "" for the shared rows (FBANK, pre-trained)
    method: str  # FBANK, pre-trained, regular FT, Stable-FT, Speech-FT (α=…), L2-SP, …
    role: str  # as pipeline.Row.role
    models: tuple = ()  # (record name, model reference) per fine-tuning seed
    alpha: Optional[float] = None
    in_table: bool = True
    probe_tasks: tuple = ()  # probed on these tasks only (a continual scenario's intermediate stages); () = by in_table
    stage: Optional[int] = None  # continual: 1-based stage after which the model was taken

    @property
    def label(self) -> str:
        return f"{self.scenario} / {self.method}" if self.scenario else self.method


@dataclass
class StudyPlan:
    jobs: list = field(default_factory=list)
    rows: list = field(default_factory=list)  # StudyRow
    sweeps: dict = field(default_factory=dict)  # scenario -> {α: record name}
    dirs: dict = field(default_factory=dict)  # scenario -> its folder (fine-tunings, models, sweep, analysis)
    alpha_grid: dict = field(default_factory=dict)  # scenario -> {α: record name} probed on every task (alpha_choice)
    alpha_rules: dict = field(default_factory=dict)  # scenario -> {rule: name of the job that chose α by it}
    alpha_models: dict = field(default_factory=dict)  # scenario -> {per-layer rule: record name of its merge}


def _name(scenario: str, method: str, seed: int) -> str:
    return f"{scenario} / {method} / ft{seed}"


def scenario_dir(out: Path, scenario: str) -> Path:
    """``OUT/scenarios/<scenario name as a file name>``."""
    return Path(out) / "scenarios" / file_name(scenario)


def unlabelled_dir(languages, hours: float, seed: int = 0) -> Path:
    """Where the unsupervised scenario's audio is synthesised (in the data home, cached by its options)."""
    from .paths import data_home

    return data_home() / f"pretrain-lite-{'-'.join(languages)}-{hours:g}h-seed{seed}"


def _prepare_audio(languages: list, hours: float, out: str) -> str:
    """Unlabelled speech in ``languages`` (pretrain-lite); the digest of its manifests."""
    from .corpora import pretrain_lite
    from .utils.provenance import file_digest, key_of

    paths = pretrain_lite.prepare(out, hours=hours, seed=0, languages=list(languages))
    return key_of({s: file_digest(p) for s, p in paths["pretrain"].items()})


def _continue_pretraining(model: str, audio: str, steps: int, lr: float, seed: int, out: str) -> str:
    """Continued HuBERT pre-training of θ₀ on ``audio`` (θ₀'s own k-means targets and pre-training head
    when it ships them, as ``speechft pretrain --init``); the digest of the encoder it wrote."""
    from .pretrain import PretrainConfig, pretrain
    from .utils.provenance import dir_digest

    cfg = PretrainConfig(unmasked_weight=1.0, steps=steps, lr=lr, batch_seconds=12.0, max_seconds=3.0, min_seconds=0.25,
                         seed=seed, checkpoint_every=100, dev_every=0)
    audio_dir = Path(audio) / "pretrain"
    pretrain(str(audio_dir / "train.jsonl"), out, dev=str(audio_dir / "dev.jsonl"), config=cfg, init=model,
             resume=(Path(out) / "checkpoint.pt").exists())
    return dir_digest(Path(out) / "encoder")


def _choose_alpha(model: str, run_dir: str, spec: str, grid: list, limit: int) -> dict:
    """``--alpha <spec>`` for the Stable-FT run ``run_dir``: its signal on the shipped grid and on ``grid``
    (the α probed on every task), the choice on each (``alpha``, ``alpha_on_grid``) and the seconds it took."""
    from .merge.auto import GRID, choose_alpha

    choice = choose_alpha(model, run_dir, spec, grid=sorted({*GRID, *grid}), limit=limit, device=P._device())
    return {**choice.to_json(), "alpha_shipped_grid": choice.on(GRID), "alpha_on_grid": choice.on(grid)}


@dataclass
class _Made:
    """What planning has made so far, shared by the planners of the scenarios, the multitask block and the
    probes: the job that writes each record name's model, the record names whose models keep θ₀'s CNN
    (their features come from one shared extraction pass), and each scenario's Stable-FT encoders."""

    theta0: dict  # the provenance input of every job that reads θ₀: {"model": its weight fingerprint}
    by: dict = field(default_factory=dict)  # record name -> name of the job that writes its model
    shared_cnn: set = field(default_factory=lambda: {P.PRETRAINED})
    stable: dict = field(default_factory=dict)  # (scenario, fine-tuning seed) -> Stable-FT encoder dir

    def add(self, name: str, job: str, shared_cnn: bool = True) -> None:
        """Record that ``job`` writes the model of record ``name`` (with θ₀'s CNN unless ``shared_cnn`` is false)."""
        self.by[name] = job
        if shared_cnn:
            self.shared_cnn.add(name)


def _finetune_job(cfg: StudyConfig, made: _Made, name: str, model: str, task: str, recipe: str, rdir: Path,
                  seed: int, deps: tuple = ("prepare",), save_every: int = 0) -> Job:
    """The job that fine-tunes ``model`` on ``task`` with ``recipe`` into ``rdir``: the config's options for the
    recipe, with the CNN frozen wherever the study's ``freeze_cnn`` asks for it."""
    opts = P.recipe_options(cfg, recipe, seed=seed, save_every=save_every)
    if cfg.freeze_cnn and not get_recipe(recipe).freeze_cnn:
        opts["freeze_cnn"] = True
    return Job(name, P._finetune, dict(model=model, task=task, recipe=recipe, rdir=str(rdir), options=opts,
                                       size=cfg.size, fsdd=cfg.fsdd),
               deps=deps, outputs=(rdir / "encoder" / "config.json",), inputs=made.theta0, owns=(rdir,),
               cost=100 if recipe == "stable" else 170)


def _keeps_cnn(job: Job) -> bool:
    """Whether the fine-tuning ``job`` keeps θ₀'s CNN (its recipe's default unless its options set it)."""
    return cnn_frozen(get_recipe(job.kwargs["recipe"]), job.kwargs["options"].get("freeze_cnn"))


def _plan_unsupervised(cfg: StudyConfig, sc, out: Path, plan: StudyPlan, made: _Made) -> None:
    """Rows of a cross-lingual scenario: continued pre-training (α = 1) and its Speech-FT merge."""
    root = scenario_dir(out, sc.name)
    audio = unlabelled_dir(sc.languages, sc.hours)
    prep = f"{sc.name}: prepare audio"
    plan.jobs.append(Job(prep, _prepare_audio, dict(languages=list(sc.languages), hours=sc.hours, out=str(audio)),
                         always=True, cost=30))
    cont, sft = [], []
    for k in range(cfg.seeds_of(sc)):
        rdir = root / "pretrain" / f"continued-ft{k}"
        job = f"{sc.name}: continued pre-training ft{k}"
        plan.jobs.append(Job(job, _continue_pretraining, dict(model=cfg.model, audio=str(audio), steps=sc.steps, lr=sc.lr,
                                                              seed=k, out=str(rdir)),
                             deps=(prep,), outputs=(rdir / "encoder" / "config.json",), inputs=made.theta0,
                             owns=(rdir,), cost=0.8 * sc.steps))
        name = _name(sc.name, "continued (α=1)", k)
        cont.append((name, str(rdir / "encoder")))
        made.add(name, job, shared_cnn=False)
        mdir = root / "models" / f"speech-ft-ft{k}"
        mjob = f"{sc.name}: merge ft{k}"
        plan.jobs.append(Job(mjob, P._merge, dict(model=cfg.model, finetuned=[str(rdir / "encoder")],
                                                  alphas=[float(cfg.alpha)], outs=[str(mdir)]),
                             deps=(job,), outputs=(mdir / "config.json",), inputs=made.theta0, owns=(mdir,), cost=1))
        name = _name(sc.name, f"{P.SPEECHFT} (α={cfg.alpha:g})", k)
        sft.append((name, str(mdir)))
        made.add(name, mjob, shared_cnn=False)
    plan.rows += [StudyRow(sc.name, "continued (α=1)", P.ROLE_STABLE, tuple(cont), alpha=1.0),
                  StudyRow(sc.name, f"{P.SPEECHFT} (α={cfg.alpha:g})", P.ROLE_SPEECHFT, tuple(sft), alpha=float(cfg.alpha))]


def _probed_on(row: StudyRow, task: str, sweep_tasks: dict) -> bool:
    """Whether ``row``'s models are probed on ``task``: its own task list when it has one (a continual
    scenario's intermediate stages), else every task for table rows and the sweep's tasks for sweep rows."""
    if row.probe_tasks:
        return task in row.probe_tasks
    return row.in_table or task in sweep_tasks.get(row.scenario, [])


# The continual scenario's methods: (key, row name, role). Each fine-tunes the tasks of the order one after
# another; they differ in what starts the next stage and whether each stage is merged.
CONTINUAL_METHODS = (
    ("regular", "sequential regular FT", P.ROLE_REGULAR),  # stage i fine-tunes stage i-1's model, regular recipe
    ("stable", "sequential Stable-FT", P.ROLE_STABLE),  # the same with the stable recipe, never merged
    ("sft-prev", "Speech-FT, merged with the previous stage", P.ROLE_SPEECHFT),  # m_i = (1-α) m_{i-1} + α s_i
    ("sft-theta0", "Speech-FT, merged with θ₀", P.ROLE_SPEECHFT),  # m_i = (1-α) θ₀ + α s_i
    ("multitask", "multitask merge of independent Stable-FT", P.ROLE_SPEECHFT),  # θ₀ + mean τ_i, each from θ₀
)


def _plan_continual(cfg: StudyConfig, sc, out: Path, plan: StudyPlan, made: _Made) -> None:
    """Rows of a continual scenario: every method of :data:`CONTINUAL_METHODS` after every stage of
    ``sc.order`` (intermediate stages probed on the order's tasks, the last on the whole suite).

    Stage 1 is the same for the stable-recipe methods (Stable-FT of θ₀ on the first task, and its merge
    with θ₀ for both Speech-FT methods): one job each, one record name, shared by their rows. The
    multitask merge takes the first stage's Stable-FT and independent Stable-FTs of θ₀ on the other tasks."""
    root = scenario_dir(out, sc.name)
    order = list(sc.order)
    alpha = float(cfg.alpha)
    mt_alpha = cfg.multitask.alpha if cfg.multitask else 1.0
    per_stage: dict = {}  # (method, stage) -> [(record name, ref)] over seeds

    def finetune(slug: str, stage: int, recipe: str, init: str, init_job: Optional[str], k: int) -> tuple[str, str]:
        rdir = root / "finetune" / f"{slug}-stage{stage}-{order[stage - 1]}-ft{k}"
        job = _finetune_job(cfg, made, f"{sc.name}: finetune {slug} stage {stage} ft{k}", init, order[stage - 1],
                            recipe, rdir, k, deps=("prepare",) + ((init_job,) if init_job else ()))
        if not _keeps_cnn(job):
            raise ValueError(f"scenario {sc.name}: the continual scenario needs freeze_cnn: true (every stage keeps "
                             f"θ₀'s CNN, so that all its models share one feature pass)")
        plan.jobs.append(job)
        return str(rdir / "encoder"), job.name

    def merge(slug: str, stage: int, base: str, base_job: Optional[str], tuned: list, tuned_jobs: list, a: float,
              k: int) -> tuple[str, str]:
        mdir = root / "models" / f"{slug}-stage{stage}-ft{k}"
        job = f"{sc.name}: merge {slug} stage {stage} ft{k}"
        plan.jobs.append(Job(job, P._merge, dict(model=base, finetuned=tuned, alphas=[a], outs=[str(mdir)]),
                             deps=tuple(dict.fromkeys(((base_job,) if base_job else ()) + tuple(tuned_jobs))),
                             outputs=(mdir / "config.json",), inputs=made.theta0, owns=(mdir,), cost=1))
        return str(mdir), job

    def model(method: str, stage: int, k: int, ref: str, job: str, name_method: Optional[str] = None) -> None:
        name = _name(sc.name, f"{name_method or method} stage {stage}", k)
        made.add(name, job)
        per_stage.setdefault((method, stage), []).append((name, ref))

    for k in range(cfg.seeds_of(sc)):
        s1, s1_job = finetune("stable", 1, "stable", cfg.model, None, k)
        m1, m1_job = merge("speech-ft", 1, cfg.model, None, [s1], [s1_job], alpha, k)
        for method in ("stable", "sft-prev", "sft-theta0"):
            if method == "stable":
                model(method, 1, k, s1, s1_job, "sequential Stable-FT")
            else:
                model(method, 1, k, m1, m1_job, f"Speech-FT (α={alpha:g})")
        prev = {"regular": None, "stable": (s1, s1_job), "sft-prev": (m1, m1_job), "sft-theta0": (m1, m1_job)}
        reg, reg_job = finetune("regular", 1, "regular", cfg.model, None, k)
        model("regular", 1, k, reg, reg_job, "sequential regular FT")
        prev["regular"] = (reg, reg_job)
        independent = [(s1, s1_job)]
        for stage in range(2, len(order) + 1):
            ref, job = finetune("regular", stage, "regular", *prev["regular"], k)
            prev["regular"] = (ref, job)
            model("regular", stage, k, ref, job, "sequential regular FT")
            ref, job = finetune("stable", stage, "stable", *prev["stable"], k)
            prev["stable"] = (ref, job)
            model("stable", stage, k, ref, job, "sequential Stable-FT")
            for method, base in (("sft-prev", prev["sft-prev"]), ("sft-theta0", (cfg.model, None))):
                tuned, tjob = finetune(method, stage, "stable", *prev[method], k)
                ref, job = merge(method, stage, base[0], base[1], [tuned], [tjob], alpha, k)
                prev[method] = (ref, job)
                model(method, stage, k, ref, job, "Speech-FT, merged with the previous stage" if method == "sft-prev"
                      else "Speech-FT, merged with θ₀")
            independent.append(finetune("independent", stage, "stable", cfg.model, None, k))
        ref, job = merge("multitask", len(order), cfg.model, None, [r for r, _ in independent],
                         [j for _, j in independent], mt_alpha, k)
        model("multitask", len(order), k, ref, job, "multitask merge of independent Stable-FT")
    last = len(order)
    for key, method, role in CONTINUAL_METHODS:
        for stage in range(1, last + 1):
            models = per_stage.get((key, stage))
            if not models:
                continue
            plan.rows.append(StudyRow(sc.name, f"{method} after {order[stage - 1]}", role, tuple(models),
                                      alpha=mt_alpha if key == "multitask" else (alpha if key.startswith("sft") else None),
                                      in_table=stage == last, probe_tasks=() if stage == last else tuple(order),
                                      stage=stage))


def _plan_finetunes(cfg: StudyConfig, sc, plan: StudyPlan, made: _Made) -> dict:
    """Fine-tuning jobs of a supervised scenario, every recipe × fine-tuning seed; its rows by recipe (and
    ``early``: the Stable-FT checkpoints saved at ``cfg.early_step``, when that baseline is asked for)."""
    root = plan.dirs[sc.name]
    recipes = ["regular", "stable"] + [b for b in sc.baselines if b in METHOD_NAMES]
    rows: dict = {}
    for recipe in recipes:
        n_seeds = cfg.ft_seeds if recipe in ("regular", "stable") else cfg.baseline_ft_seeds
        models = []
        for k in range(n_seeds):
            rdir = root / "finetune" / f"{recipe}-ft{k}"
            early = recipe == "stable" and "early" in sc.baselines and k < cfg.baseline_ft_seeds
            job = _finetune_job(cfg, made, f"{sc.name}: finetune-{recipe} ft{k}", cfg.model, sc.task, recipe, rdir, k,
                                save_every=cfg.early_step if early else 0)
            plan.jobs.append(job)
            name = _name(sc.name, METHOD_NAMES[recipe], k)
            models.append((name, str(rdir / "encoder")))
            made.add(name, job.name, shared_cnn=_keeps_cnn(job))
            if recipe == "stable":
                made.stable[(sc.name, k)] = str(rdir / "encoder")
        rows[recipe] = StudyRow(sc.name, METHOD_NAMES[recipe], P.ROLE_REGULAR if recipe == "regular" else
                                P.ROLE_STABLE if recipe == "stable" else P.ROLE_BASELINE, tuple(models))
    if "early" in sc.baselines:
        models = []
        for k in range(cfg.baseline_ft_seeds):
            name = _name(sc.name, f"early (step {cfg.early_step})", k)
            models.append((name, str(root / "finetune" / f"stable-ft{k}" / "early" / f"step-{cfg.early_step}")))
            made.add(name, f"{sc.name}: finetune-stable ft{k}")
        rows["early"] = StudyRow(sc.name, f"early (step {cfg.early_step})", P.ROLE_EARLY, tuple(models))
    return rows


def _plan_alpha_choice(cfg: StudyConfig, sc, plan: StudyPlan, made: _Made, rows: dict, grid: list[float],
                       tasks: list[str]) -> None:
    """The α-choice rules on fine-tuning seed 0: a job that chooses α on ``grid`` per global rule, or, for a
    per-layer rule (whose model is not on the grid), the merge it makes, probed on every task."""
    root = plan.dirs[sc.name]
    run_dir = str(root / "finetune" / "stable-ft0")
    plan.alpha_rules[sc.name] = {}
    plan.alpha_models[sc.name] = {}
    for rule in cfg.alpha_choice.rules:
        if parse_rule(f"auto:{rule}")[0].per_layer:
            job = f"{sc.name}: merge auto:{rule} ft0"
            mdir = root / "models" / "auto" / file_name(rule)
            plan.jobs.append(Job(job, P._merge_auto, dict(model=cfg.model, run_dir=run_dir, spec=f"auto:{rule}",
                                                          out=str(mdir)),
                                 deps=(f"{sc.name}: finetune-stable ft0",), outputs=(mdir / "config.json",),
                                 inputs=made.theta0, owns=(mdir,), cost=2))
            name = _name(sc.name, f"auto:{rule}", 0)
            rows[f"auto {rule}"] = StudyRow(sc.name, f"auto:{rule}", P.ROLE_SWEEP, ((name, str(mdir)),),
                                            in_table=False, probe_tasks=tuple(tasks))
            made.add(name, job)
            plan.alpha_models[sc.name][rule] = name
        else:
            job = f"{sc.name}: alpha auto:{rule} ft0"
            plan.jobs.append(Job(job, _choose_alpha, dict(model=cfg.model, run_dir=run_dir, spec=f"auto:{rule}",
                                                          grid=grid, limit=cfg.alpha_choice.limit),
                                 deps=("prepare", f"{sc.name}: finetune-stable ft0"), inputs=made.theta0, cost=40))
        plan.alpha_rules[sc.name][rule] = job


def _plan_sweep(cfg: StudyConfig, sc, plan: StudyPlan, made: _Made, rows: dict, tasks: list[str]) -> None:
    """The α sweep on fine-tuning seed 0 (α = 0, α and 1 are θ₀, Speech-FT and Stable-FT bit for bit; the
    other α are merged), joined by the α-choice grid, whose models are probed on every task."""
    root = plan.dirs[sc.name]
    sweep = {0.0: P.PRETRAINED, 1.0: _name(sc.name, P.STABLE, 0), float(cfg.alpha): rows["speech-ft"].models[0][0]}
    grid = [float(a) for a in cfg.alpha_choice.grid] if sc.name in cfg.alpha_scenarios() else []
    sweep_alphas = sorted({float(a) for a in (*cfg.sweep_alphas, *grid)})
    extra = [a for a in sweep_alphas if a not in sweep]
    if extra:
        dirs = [str(root / "models" / "sweep" / f"alpha-{a:g}") for a in extra]
        job = f"{sc.name}: merge sweep"
        plan.jobs.append(Job(job, P._merge, dict(model=cfg.model, finetuned=[made.stable[(sc.name, 0)]],
                                                 alphas=extra, outs=dirs),
                             deps=(f"{sc.name}: finetune-stable ft0",), inputs=made.theta0,
                             outputs=tuple(Path(d) / "config.json" for d in dirs), owns=tuple(Path(d) for d in dirs),
                             cost=len(extra)))
        for a, d in zip(extra, dirs):
            name = _name(sc.name, f"sweep α={a:g}", 0)
            rows[f"sweep {a:g}"] = StudyRow(sc.name, f"sweep α={a:g}", P.ROLE_SWEEP, ((name, d),), alpha=a,
                                            in_table=False, probe_tasks=tuple(tasks) if a in grid else ())
            made.add(name, job)
            sweep[a] = name
    plan.sweeps[sc.name] = {a: sweep[a] for a in sweep_alphas}
    if grid:
        plan.alpha_grid[sc.name] = {a: sweep[a] for a in grid}
        _plan_alpha_choice(cfg, sc, plan, made, rows, grid, tasks)


def _plan_supervised(cfg: StudyConfig, sc, plan: StudyPlan, made: _Made, tasks: list[str]) -> None:
    """Rows of a supervised scenario: every recipe × fine-tuning seed, each Stable-FT model merged into
    Speech-FT (α), the α sweep and α choice on seed 0, and the weight/representation analysis."""
    root = plan.dirs[sc.name]
    rows = _plan_finetunes(cfg, sc, plan, made)
    sft = f"{P.SPEECHFT} (α={cfg.alpha:g})"
    models = []
    for k in range(cfg.ft_seeds):
        mdir = root / "models" / f"speech-ft-ft{k}"
        job = f"{sc.name}: merge ft{k}"
        plan.jobs.append(Job(job, P._merge, dict(model=cfg.model, finetuned=[made.stable[(sc.name, k)]],
                                                 alphas=[float(cfg.alpha)], outs=[str(mdir)]),
                             deps=(f"{sc.name}: finetune-stable ft{k}",), outputs=(mdir / "config.json",),
                             inputs=made.theta0, owns=(mdir,), cost=1))
        name = _name(sc.name, sft, k)
        models.append((name, str(mdir)))
        made.add(name, job)
    rows["speech-ft"] = StudyRow(sc.name, sft, P.ROLE_SPEECHFT, tuple(models), alpha=float(cfg.alpha))
    _plan_sweep(cfg, sc, plan, made, rows, tasks)
    plan.rows += list(rows.values())
    analyzed = [(P.PRETRAINED, cfg.model), rows["regular"].models[0], rows["stable"].models[0],
                rows["speech-ft"].models[0]]
    plan.jobs.append(Job(f"{sc.name}: analyze", P._analyze,
                         dict(models=[r for _, r in analyzed], names=[n.split(" / ")[-2] if " / " in n else n
                                                                    for n, _ in analyzed],
                              task=sc.task, size=cfg.size, fsdd=cfg.fsdd, limit=cfg.analysis_limit,
                              out=str(root / "analysis")),
                         deps=("prepare", f"{sc.name}: finetune-regular ft0", f"{sc.name}: merge ft0"),
                         outputs=(root / "analysis" / "analysis.jsonl",), inputs=made.theta0, owns=(root / "analysis",),
                         cost=60))


def _plan_multitask(cfg: StudyConfig, out: Path, plan: StudyPlan, made: _Made) -> None:
    """The multitask rows: per method and fine-tuning seed, one merge of the scenarios' Stable-FT models."""
    mt = cfg.multitask
    for method in mt.methods:
        models = []
        for k in range(cfg.seeds_of(mt)):
            mdir = out / "multitask" / f"{method}-ft{k}"
            job = f"multitask: merge {method} ft{k}"
            n = len(mt.scenarios)
            opts = {"weights": [1.0 / n] * n} if method == "dare" else {}
            if method in ("ties", "dare"):
                opts["density"] = mt.density
            tuned = [made.stable[(s, k)] for s in mt.scenarios]
            plan.jobs.append(Job(job, P._merge, dict(model=cfg.model, finetuned=tuned, alphas=[mt.alpha], outs=[str(mdir)],
                                                     method=method, options=opts),
                                 deps=tuple(f"{s}: finetune-stable ft{k}" for s in mt.scenarios),
                                 outputs=(mdir / "config.json",), inputs=made.theta0, owns=(mdir,), cost=2))
            name = _name("multitask", MULTITASK_NAMES[method], k)
            models.append((name, str(mdir)))
            made.add(name, job)
        plan.rows.append(StudyRow("multitask", MULTITASK_NAMES[method], P.ROLE_SPEECHFT, tuple(models),
                                  alpha=mt.alpha))


def _plan_probes(cfg: StudyConfig, out: Path, plan: StudyPlan, made: _Made, tasks: list[str]) -> None:
    """Per task: one feature pass for every model with θ₀'s CNN, a probe job per model that the task concerns,
    then per supervised scenario the sweep table over its probed α."""
    results = out / "probe" / "results.jsonl"
    probe_kw = dict(probe_dir=str(out / "probe"), seeds=cfg.probe_seeds, limit=cfg.probe_limit,
                    epochs=cfg.probe_epochs, size=cfg.size, fsdd=cfg.fsdd)
    sweep_tasks = {sc.name: [t for t in dict.fromkeys((sc.task, *cfg.sweep_tasks)) if t in tasks]
                   for sc in cfg.scenarios if sc.kind == "supervised"}
    for task in tasks:
        wanted = list(dict.fromkeys((n, ref) for r in plan.rows for n, ref in r.models
                                    if _probed_on(r, task, sweep_tasks)))
        shared = [(n, ref) for n, ref in wanted if n in made.shared_cnn]
        plan.jobs.append(Job(f"extract / {task}", P._extract,
                             dict(refs=[ref for _, ref in shared], task=task, size=cfg.size, fsdd=cfg.fsdd,
                                  limit=cfg.probe_limit),
                             deps=tuple(dict.fromkeys(["prepare"] + [made.by[n] for n, _ in shared if n in made.by])),
                             inputs=made.theta0, cost=10 * len(shared)))
        for n, ref in wanted:
            deps = ("prepare",) + ((made.by[n],) if n in made.by else ()) + \
                ((f"extract / {task}",) if n in made.shared_cnn else ())
            plan.jobs.append(Job(f"probe {n} / {task}", P._probe, dict(name=n, ref=ref, task=task, **probe_kw),
                                 deps=deps, outputs=(results,), inputs=made.theta0 if n == P.PRETRAINED else {},
                                 cost=10 * cfg.probe_seeds))
    for sc in cfg.scenarios:
        if sweep_tasks.get(sc.name):
            models = plan.sweeps[sc.name]
            root = plan.dirs[sc.name]
            plan.jobs.append(Job(f"{sc.name}: sweep", P._sweep,
                                 dict(models={f"{a:g}": n for a, n in models.items()}, tasks=sweep_tasks[sc.name],
                                      results=str(results), out=str(root / "sweep")),
                                 deps=tuple(f"probe {n} / {t}" for n in models.values() for t in sweep_tasks[sc.name]),
                                 owns=(root / "sweep",), cost=2))


def plan_study(cfg: StudyConfig, out: Path, tasks: list[str], model_fingerprint: str = "") -> StudyPlan:
    """The job graph and rows of one study (``tasks``: the probe suite actually available)."""
    out = Path(out)
    plan = StudyPlan()
    made = _Made(theta0={"model": model_fingerprint})
    ft_tasks = list(dict.fromkeys(t for s in cfg.scenarios for t in s.tasks_used()))
    plan.jobs.append(Job("prepare", P._prepare, dict(tasks=list(dict.fromkeys(ft_tasks + list(tasks))),
                                                     size=cfg.size, fsdd=cfg.fsdd), always=True, cost=15))
    plan.rows += [StudyRow("", P.FBANK, P.ROLE_FBANK, ((P.FBANK, "fbank"),)),
                  StudyRow("", P.PRETRAINED, P.ROLE_PRETRAINED, ((P.PRETRAINED, cfg.model),))]
    for sc in cfg.scenarios:
        plan.dirs[sc.name] = scenario_dir(out, sc.name)
        if sc.kind == "unsupervised":
            _plan_unsupervised(cfg, sc, out, plan, made)
        elif sc.kind == "continual":
            _plan_continual(cfg, sc, out, plan, made)
        else:
            _plan_supervised(cfg, sc, plan, made, tasks)
    if cfg.multitask and cfg.multitask.scenarios:
        _plan_multitask(cfg, out, plan, made)
    _plan_probes(cfg, out, plan, made, tasks)
    plan.jobs += P.scratch_features(plan.jobs, out, cfg.size, made=set(made.by))
    return plan


def study(cfg: StudyConfig, out_dir: str | Path, quick: bool = False, workers: Optional[int] = None) -> Path:
    """Run the study; returns the path of ``OUT/report.md``. Rerunning resumes (provenance-keyed)."""
    from .models.io import load_encoder
    from .report.study import write_study_report

    if quick:
        cfg = StudyConfig.quick(cfg)
    out = Path(out_dir)
    check_writable(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "config.yaml", cfg.to_yaml())
    tasks, dropped = P.available_tasks([*(t for s in cfg.scenarios for t in s.tasks_used()), *cfg.tasks], cfg.fsdd)
    if dropped:
        log.warning("no FSDD copy found (pass --fsdd PATH or set SPEECHFT_FSDD): skipping %s", ", ".join(dropped))
    missing = [s.name for s in cfg.scenarios if any(t not in tasks for t in s.tasks_used())]
    if missing:
        raise ValueError(f"scenario(s) {', '.join(missing)} fine-tune on a task that is not available "
                         f"(FSDD not found?): pass --fsdd PATH")
    workers, threads = default_workers(workers)
    plan = plan_study(cfg, out, tasks, model_fingerprint=load_encoder(cfg.model).fingerprint())
    P._prune_records(P.Layout(out), plan.jobs)
    P.prune_scratch(out, plan.jobs)
    stages = Stages(out)
    log.info("study: %d scenarios, %d jobs on %d worker(s) x %d thread(s)", len(cfg.scenarios), len(plan.jobs),
             workers, threads)
    results = run_jobs(plan.jobs, stages, workers=workers, threads=threads)
    remove_empty_dir(scratch_root(out))  # emptied by the drop jobs
    current = {k for j in plan.jobs if j.fn is P._probe for k in results[j.name]}
    report = write_study_report(out, cfg, plan, tasks, dropped, {j.name: stages.done[j.name] for j in plan.jobs},
                                run_info={"workers": workers, "threads": threads, "jobs": len(plan.jobs)},
                                probe_keys=current)
    log.info("report written to %s", report)
    return report
