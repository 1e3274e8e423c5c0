"""Choosing α without probing every α on every task (``--alpha auto``).

Each rule computes a cheap signal over a grid of α from the fine-tuning run itself (no probe is
trained) and picks α from it; the rules form an explicit registry (``auto:RULE[:VALUE]``):

    cka[:C]      (``auto``) the mean over hidden states of the linear CKA between θ̂(α) and θ₀ on the task's
                 dev audio; the largest α whose similarity is at least C (default 0.9). Uses no labels.
    held-out[:D] a few-shot probe on a held-out task (lite-sid; lite-ks when fine-tuning on a speaker
                 task), trained on at most 50 of its train utterances for each θ̂(α); the largest α whose
                 dev metric is within a relative D (default 0.02) of α = 0's. Uses that task's labels.
    ft-dev[:R]   the fine-tuning task's dev metric through the run's own head on the interpolated
                 encoders θ̂(α) = (1-α)θ₀ + αθ′; the smallest α that keeps at least R (default 0.9) of
                 the dev gain that α = 1 has over α = 0. Uses the task's dev labels.
    drift[:A]    per-layer α from the weights alone: each layer group's relative drift
                 d_l = ‖θ′_l − θ₀_l‖/‖θ₀_l‖, and α_l = min(1, A·d̄/d_l) with d̄ the mean drift of the groups
                 that moved (default A = 0.25). No group keeps more drift than A·d̄, what a uniform α = A
                 merge keeps on average: the layers that drifted most are pulled back most, the others
                 keep more of their change. Uses no audio and no labels.

The first three evaluate the same grid (default 0, 0.1, …, 1) on at most ``limit`` dev utterances
(evenly spread, :func:`speechft.probe.runner.subsample`) and choose one α; ``drift`` chooses an α per
layer group (``AutoChoice.layer_alphas``, merged through ``MergeParams.layer_alphas``).
The selection functions are pure (a curve in, an α out) and tested on curves whose answer is known;
the curve functions run the models. Which rule ``auto`` means is set by :data:`DEFAULT_RULE`.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import torch

from ..utils.names import by_name, lookup

log = logging.getLogger(__name__)

GRID = tuple(round(0.1 * i, 1) for i in range(11))


@dataclass(frozen=True)
class AutoRule:
    name: str
    default: float  # the rule's parameter (R, C, D or A) when none is given
    description: str
    per_layer: bool = False  # chooses an α per layer group, not one α on a grid


RULES = by_name([
    AutoRule("ft-dev", 0.9, "smallest α keeping this share of the fine-tuning task's dev gain (α=1 over α=0), "
                            "measured through the fine-tuning head"),
    AutoRule("cka", 0.9, "largest α whose mean linear CKA to θ₀ on the task's dev audio stays at least this"),
    AutoRule("held-out", 0.02, "largest α whose few-shot dev probe on a held-out task loses at most this "
                               "relative share of α = 0's metric"),
    AutoRule("drift", 0.25, "per-layer α = min(1, A·mean drift / the layer's drift): no layer keeps more drift than "
                            "a uniform α = A merge keeps on average", per_layer=True),
], "α rule")
# held-out: the task whose few-shot dev probe guards what fine-tuning on a task may erode. Speaker identity
# for every task but speaker ones (what content fine-tuning erodes most in the study), keywords for those.
HELD_OUT_DEFAULT, HELD_OUT_FOR_SPEAKER = "lite-sid", "lite-ks"
FEW_SHOT = 50  # held-out: at most this many utterances per split of the held-out task
# Chosen on the first alpha_choice run (v2 encoder: best mean Δ over the study's scenarios); the re-run with
# v3 singles out no rule (all within the intervals; docs/merge.md "How the rules compare").
DEFAULT_RULE = "cka"


@dataclass(frozen=True)
class AutoChoice:
    """The chosen α, the rule and parameter that chose it, the signal per α, and its cost. A per-layer
    rule fills ``layer_alphas`` ({layer group: α}) and ``drift`` ({layer group: d_l}) instead of
    ``curve``; ``alpha`` is then the α of groups it does not list (those that did not move)."""
    alpha: float
    rule: str
    value: float  # the rule's parameter
    curve: dict = field(default_factory=dict)  # α -> signal (dev metric, or mean CKA)
    higher_is_better: bool = True
    metric: str = ""
    seconds: float = 0.0
    layer_alphas: Optional[dict] = None  # per-layer rules: layer group -> α
    drift: Optional[dict] = None  # per-layer rules: layer group -> relative drift of θ′ from θ₀

    def on(self, grid: Sequence[float]) -> float:
        """The rule's choice among the α of ``grid`` only (the curve restricted to them; it must hold them)."""
        if self.layer_alphas is not None:
            raise ValueError(f"auto:{self.rule} chooses an α per layer, not one α on a grid")
        return select(self.rule, {a: self.curve[float(a)] for a in grid}, self.higher_is_better, self.value)

    def to_json(self) -> dict:
        out = {"alpha": self.alpha, "rule": self.rule, "value": self.value, "metric": self.metric,
               "higher_is_better": self.higher_is_better, "seconds": round(self.seconds, 2),
               "curve": {f"{a:g}": v for a, v in sorted(self.curve.items())}}
        if self.layer_alphas is not None:
            out["layer_alphas"] = dict(sorted(self.layer_alphas.items()))  # exact: `merge` merges with these
            out["drift"] = {g: round(d, 6) for g, d in sorted((self.drift or {}).items())}
        return out


def parse_rule(spec: str) -> tuple[AutoRule, float]:
    """``'auto'``, ``'auto:cka'``, ``'auto:ft-dev:0.8'`` -> (rule, parameter)."""
    parts = spec.split(":")
    if parts[0] != "auto" or len(parts) > 3:
        raise ValueError(f"--alpha: expected a number or auto[:RULE[:VALUE]], got {spec!r}")
    rule = lookup(RULES, parts[1] if len(parts) > 1 and parts[1] else DEFAULT_RULE, "α rule")
    if len(parts) < 3:
        return rule, rule.default
    try:
        value = float(parts[2])
    except ValueError:
        raise ValueError(f"--alpha {spec}: {parts[2]!r} is not a number") from None
    if not 0.0 < value <= 1.0:
        raise ValueError(f"--alpha {spec}: the {rule.name} value must be in (0, 1], got {value:g}")
    return rule, value


def is_auto(value) -> bool:
    """Whether an α value is an ``auto[:RULE[:VALUE]]`` spec rather than a number."""
    return isinstance(value, str) and value.strip().startswith("auto")


def check_spec(spec: str, where: str) -> str:
    """``spec`` stripped, or a ValueError naming ``where`` when it is not a valid ``auto`` spec."""
    try:
        parse_rule(spec.strip())
    except (ValueError, KeyError) as e:
        raise ValueError(f"{where}: {e.args[0] if e.args else e}") from None
    return spec.strip()


# -- selection (pure) ----------------------------------------------------------------------------------
def choose_by_gain(curve: dict, higher_is_better: bool, keep: float) -> float:
    """The smallest α whose gain over α = 0 is at least ``keep`` × the gain of α = 1. Where fine-tuning
    did not improve the dev metric (gain of α = 1 ≤ 0) nothing is worth keeping and the best α on dev
    is returned (ties: the smallest). ``curve``: α -> dev metric; it must hold α = 0 and α = 1."""
    if 0.0 not in curve or 1.0 not in curve:
        raise ValueError("the curve needs α = 0 and α = 1")
    sign = 1.0 if higher_is_better else -1.0
    oriented = {a: sign * v for a, v in curve.items()}
    full = oriented[1.0] - oriented[0.0]
    alphas = sorted(curve)
    if full <= 0:
        best = max(oriented.values())
        return next(a for a in alphas if oriented[a] == best)
    return next(a for a in alphas if oriented[a] - oriented[0.0] >= keep * full - 1e-12)


def choose_by_drop(curve: dict, higher_is_better: bool, drop: float) -> float:
    """The largest α whose metric is within a relative ``drop`` of α = 0's (α = 0 always qualifies)."""
    if 0.0 not in curve:
        raise ValueError("the curve needs α = 0")
    v0 = curve[0.0]
    ok = [a for a, v in curve.items() if a == 0.0 or
          (v >= v0 - drop * abs(v0) - 1e-12 if higher_is_better else v <= v0 + drop * abs(v0) + 1e-12)]
    return max(ok)


def choose_by_similarity(curve: dict, threshold: float) -> float:
    """The largest α whose similarity to θ₀ is at least ``threshold`` (α = 0 always qualifies)."""
    ok = [a for a, s in curve.items() if a == 0.0 or s >= threshold]
    return max(ok)


def alphas_from_drift(drift: dict, budget: float) -> dict:
    """Per-layer α from each layer group's relative drift ``drift`` ({group: d_l}): α_l = min(1, A·d̄/d_l),
    A = ``budget``, d̄ the mean drift of the groups that moved (d_l > 0). Groups that did not move are left
    out (any α gives θ₀ there). Equal drifts give α_l = A everywhere: the uniform merge."""
    moved = {g: float(d) for g, d in drift.items() if d > 0 and d == d}
    if not moved:
        return {}
    mean = sum(moved.values()) / len(moved)
    return {g: min(1.0, budget * mean / d) for g, d in moved.items()}


# -- signals (run the models) --------------------------------------------------------------------------
def _endpoints(pretrained: str, finetuned: str | Path):
    """``(θ₀'s encoder, a copy of θ₀'s weights, θ′'s weights)``: what every signal interpolates between."""
    from ..models.io import load_encoder

    enc = load_encoder(pretrained)
    sd0 = {k: v.clone() for k, v in enc.model.state_dict().items()}
    return enc, sd0, load_encoder(str(finetuned)).model.state_dict()


def _interpolated(base_enc, sd0: dict, sd1: dict, alpha: float):
    from ..analysis.run import interpolate

    base_enc.model.load_state_dict(interpolate(sd0, sd1, alpha))
    return base_enc


def ft_dev_curve(pretrained: str, run_dir: str | Path, grid: Sequence[float] = GRID, limit: Optional[int] = 200,
                 device: str = "cpu") -> tuple[dict, str, bool]:
    """``({α: dev metric}, metric, higher_is_better)``: the run's head on θ̂(α), on its task's dev split."""
    from accelerate import Accelerator

    from ..finetune.data import evaluate, load_task_data
    from ..finetune.model import SpeechFTModel, load_head
    from ..probe.runner import subsample
    from ..finetune.run import load_run

    run_dir = Path(run_dir)
    run, cfg, task = load_run(run_dir)
    head, vocab, _ = load_head(run_dir / "head", task)
    data = load_task_data(task, run.get("size", "default"), run.get("fsdd_root"), bool(run.get("skip_bad")), cfg)
    if list(data.vocab.symbols) != list(vocab.symbols):
        raise ValueError(f"{run_dir}: the task's training data no longer gives the vocabulary the head was trained "
                         f"with (the data changed since fine-tuning)")
    data.dev.rows = subsample(data.dev.rows, limit)
    enc, sd0, sd1 = _endpoints(pretrained, run_dir / "encoder")
    accelerator = Accelerator(cpu=device == "cpu")
    curve = {}
    for a in grid:
        model = SpeechFTModel(_interpolated(enc, sd0, sd1, a), head).to(accelerator.device)
        curve[float(a)] = float(evaluate(model, data, cfg, accelerator)[task.metric])
        log.info("ft-dev: α=%g %s %.4f", a, task.metric, curve[float(a)])
    return curve, task.metric, task.metric == "accuracy"


def cka_curve(pretrained: str, finetuned: str | Path, manifest: str | Path, grid: Sequence[float] = GRID,
              limit: Optional[int] = 200, batch_seconds: float = 40.0, device: str = "cpu") -> dict:
    """``{α: mean over hidden states of linear CKA(θ̂(α), θ₀)}`` on the audio of ``manifest``."""
    import copy

    from ..analysis.run import layer_frames
    from ..analysis.similarity import LinearCKA
    from ..data.validate import load_checked_rows
    from ..probe.runner import subsample

    ref, sd0, sd1 = _endpoints(pretrained, finetuned)
    ref = ref.eval().to(device)
    grid = [float(a) for a in grid]
    models = [_interpolated(copy.deepcopy(ref), sd0, sd1, a).eval() for a in grid]
    L = ref.num_layers + 1
    cka = {a: [LinearCKA(ref.hidden_size, ref.hidden_size) for _ in range(L)] for a in grid}
    for f0, *fa in layer_frames([ref, *models], subsample(load_checked_rows(manifest), limit), batch_seconds, device):
        for a, frames in zip(grid, fa):
            for layer in range(L):
                cka[a][layer].update(f0[layer], frames[layer])
    return {a: float(sum(c.value() for c in cs) / L) for a, cs in cka.items()}


def held_out_task(ft_task: str) -> str:
    """The held-out task of the ``held-out`` rule for a run fine-tuned on ``ft_task``."""
    return HELD_OUT_FOR_SPEAKER if ft_task.endswith("-sid") or ft_task == HELD_OUT_DEFAULT else HELD_OUT_DEFAULT


def held_out_curve(pretrained: str, run_dir: str | Path, grid: Sequence[float] = GRID, limit: Optional[int] = 200,
                   device: str = "cpu") -> tuple[dict, str, bool]:
    """``({α: dev metric}, metric, higher_is_better)`` of a few-shot probe (one seed, at most
    min(``limit``, :data:`FEW_SHOT`) utterances per split) on the held-out task, trained on each θ̂(α)'s
    features (in a temporary cache)."""
    import copy
    import tempfile

    from ..finetune.run import load_run
    from ..probe import run_probe

    run, _, task = load_run(run_dir)
    held = held_out_task(task.name)
    ref, sd0, sd1 = _endpoints(pretrained, Path(run_dir) / "encoder")
    ref = ref.eval()
    curve, metric, hib = {}, "", True
    with tempfile.TemporaryDirectory() as tmp:
        for a in grid:
            enc = _interpolated(copy.deepcopy(ref), sd0, sd1, float(a)).eval()
            rec = run_probe(enc, [held], tmp, seeds=(0,), size=run.get("size", "default"), fsdd_root=run.get("fsdd_root"),
                            limit=min(limit or FEW_SHOT, FEW_SHOT), model_name=f"alpha-{a:g}", device=device, replace=True,
                            cache_dir=str(Path(tmp) / "features"))[0]
            curve[float(a)], metric, hib = float(rec["dev_value"]), rec["metric"], bool(rec["higher_is_better"])
            log.info("held-out %s: α=%g dev %s %.4f", held, a, metric, curve[float(a)])
    return curve, f"{held} {metric}", hib


def run_folder(ref: str | Path) -> Path:
    """The fine-tuning run folder of ``ref``: the folder itself, or the run around ``RUN/encoder``."""
    p = Path(ref)
    return p.parent if p.name == "encoder" and (p.parent / "head").is_dir() else p


def drift_choice(pretrained: str, finetuned: str | Path, budget: float) -> AutoChoice:
    """The ``drift`` rule: per-layer α from the relative weight drift of ``finetuned`` from ``pretrained``."""
    from ..analysis.run import weight_distances

    t0 = time.perf_counter()
    _, sd0, sd1 = _endpoints(pretrained, finetuned)
    drift = {r["group"]: r["relative"] for r in weight_distances(sd0, sd1)}
    layer = alphas_from_drift(drift, budget)
    log.info("drift: %s", ", ".join(f"{g} d={drift[g]:.4g} α={a:.3f}" for g, a in sorted(layer.items())))
    return AutoChoice(budget, "drift", budget, {}, True, "relative drift", time.perf_counter() - t0,
                      layer_alphas=layer, drift={g: d for g, d in drift.items() if d == d})


def choose_alpha(pretrained: str, run_dir: str | Path, spec: str = "auto", grid: Sequence[float] = GRID,
                 limit: Optional[int] = 200, device: str = "cpu") -> AutoChoice:
    """α for the fine-tuning run ``run_dir`` (a ``speechft finetune`` output folder) by rule ``spec``.
    ``drift`` needs only the run's encoder (``run_dir/encoder``, or ``run_dir`` itself if it is a model)."""
    run_dir = Path(run_dir)
    rule, value = parse_rule(spec)
    if rule.name == "drift":
        return drift_choice(pretrained, run_dir / "encoder" if (run_dir / "encoder").is_dir() else run_dir, value)
    for need in ("encoder/config.json", "head", "config.yaml"):
        if not (run_dir / need).exists():
            raise FileNotFoundError(f"{run_dir}: --alpha auto needs a fine-tuning run folder (no {need}); "
                                    f"pass the folder `speechft finetune --out` wrote")
    grid = sorted({float(a) for a in grid} | {0.0, 1.0})
    t0 = time.perf_counter()
    if rule.name == "ft-dev":
        curve, metric, hib = ft_dev_curve(pretrained, run_dir, grid, limit, device)
    elif rule.name == "held-out":
        curve, metric, hib = held_out_curve(pretrained, run_dir, grid, limit, device)
    else:
        from ..finetune.run import load_run

        run, _, task = load_run(run_dir)
        manifest = task.resolve_manifests(size=run.get("size", "default"), fsdd_root=run.get("fsdd_root"))["dev"]
        curve, metric, hib = cka_curve(pretrained, run_dir / "encoder", manifest, grid, limit, device=device), "cka", True
    alpha = select(rule.name, curve, hib, value)
    return AutoChoice(alpha, rule.name, value, curve, hib, metric, time.perf_counter() - t0)


def select(rule: str, curve: dict, higher_is_better: bool, value: float) -> float:
    """Rule ``rule``'s α from its signal ``curve`` (α -> signal) with parameter ``value`` (pure)."""
    if rule == "ft-dev":
        return choose_by_gain(curve, higher_is_better, value)
    if rule == "held-out":
        return choose_by_drop(curve, higher_is_better, value)
    if rule == "cka":
        return choose_by_similarity(curve, value)
    raise ValueError(f"auto:{rule} chooses an α per layer, not one α from a curve")

