"""The study report's α-choice section: every ``auto`` rule against the fixed α and the oracle α.

Per scenario, the Stable-FT model of fine-tuning seed 0 is merged at every α of the block's grid and
each merge is probed on every task. A rule's choice *on that grid* (its signal restricted to the grid)
is then one of those probed models, so the rules, the fixed α and the oracle are compared on the same
models with paired intervals. A per-layer rule's model (one α per layer group) is not on the grid: the
study merges it and probes it on every task on its own (``plan.alpha_models``). The oracle is the grid's
best on test (score over all tasks), which no user can know. Cost: each rule's job seconds next to what a
6-point sweep with probes would cost, summed from the same run's own job times (probe jobs of the grid models, plus each model's share of
its task's feature-extraction pass).
"""
from __future__ import annotations

from typing import Optional, Sequence

from .markdown import Results, _pct, _pts, signed_metric, signed_points


def grid_label(a: float) -> str:
    return f"α={a:g}"


def oracle(res: Results, labels: dict, tasks: Sequence[str]) -> Optional[float]:
    """The grid's α with the highest mean score over ``tasks`` (ties: the smallest α); None without scores."""
    scores = {a: res.score(lab, tasks) for a, lab in labels.items()}
    scores = {a: s.mean for a, s in scores.items() if s is not None}
    if not scores:
        return None
    best = max(scores.values())
    return min(a for a, v in scores.items() if v == best)


def sweep_seconds(timings: dict, plan, names: Sequence[str], tasks: Sequence[str]) -> Optional[float]:
    """Job seconds a sweep over the models ``names`` with probes on ``tasks`` costs in this run: their probe
    jobs plus each model's share of its task's extraction pass (the pass's seconds over the models in it)."""
    refs = {j.name: len(j.kwargs.get("refs", ())) for j in plan.jobs if j.name.startswith("extract / ")}
    total = 0.0
    for t in tasks:
        ext = timings.get(f"extract / {t}")
        share = ext["seconds"] / refs[f"extract / {t}"] if ext and refs.get(f"extract / {t}") else 0.0
        for n in names:
            rec = timings.get(f"probe {n} / {t}")
            if rec is None:
                return None
            total += rec["seconds"] + share
    return total


def alpha_section(records: Sequence[dict], cfg, plan, tasks: Sequence[str], timings: dict) -> list[str]:
    """The α-choice section (empty when the study has no ``alpha_choice`` block)."""
    if not plan.alpha_grid:
        return []
    ac = cfg.alpha_choice
    fixed = float(cfg.alpha)
    lines = ["## Choosing α automatically", "",
             f"Per scenario, the Stable-FT model of fine-tuning seed 0 merged at α ∈ {{{', '.join(f'{a:g}' for a in ac.grid)}}}, "
             f"each merge probed on every task ({cfg.probe_seeds} probe seeds). Each rule computes its signal from "
             f"the fine-tuning run alone (at most {ac.limit} dev utterances, no probe) and its choice is taken on "
             "this grid, so every choice is a probed model; `α (11-point)` is what `--alpha auto:RULE` picks on its "
             "own grid 0, 0.1, …, 1. A per-layer rule (`drift`) gives one α per layer group, so its model is "
             "merged and probed on every task on its own; its α column gives the range of its layers' α. "
             "The oracle is the grid's best score over all tasks on test, which no user "
             f"can know. Intervals: probe seeds and test utterances (one fine-tuning seed); Δ: paired bootstrap "
             f"against the fixed α = {fixed:g} on the same test utterances.", "",
             "| scenario | choice | α | α (11-point) | fine-tuning task | score, other tasks | score, all tasks | "
             f"Δ all tasks vs α={fixed:g} | Δ fine-tuning task vs α={fixed:g} |",
             "|---|---|---|---|---|---|---|---|---|"]
    costs = []
    fbank = {r.label: [n for n, _ in r.models] for r in plan.rows if r.role == "fbank"}  # the scores' floor
    for sc in cfg.scenarios:
        if sc.name not in plan.alpha_grid:
            continue
        grid = plan.alpha_grid[sc.name]
        labels = {a: grid_label(a) for a in grid}
        per_layer = {f"auto:{rule}": [n] for rule, n in plan.alpha_models.get(sc.name, {}).items()}
        res = Results(records, {**fbank, **{labels[a]: [n] for a, n in grid.items()}, **per_layer}, tasks)
        others = [t for t in tasks if t != sc.task]
        # (choice, its model's label or None, α shown, α on the 11-point grid)
        choices = [(f"fixed α={fixed:g}", labels.get(fixed), f"{fixed:g}", "")]
        for rule, job in plan.alpha_rules[sc.name].items():
            rec = (timings.get(job) or {}).get("result") or {}
            if f"auto:{rule}" in per_layer:
                shown = rec.get("layer_alphas")
                span = f"{min(shown.values()):.2g}–{max(shown.values()):.2g} per layer" if shown else "–"
                choices.append((f"auto:{rule}", f"auto:{rule}" if shown else None, span, ""))
                continue
            a = rec.get("alpha_on_grid")
            choices.append((f"auto:{rule}", labels.get(a), "–" if a is None else f"{a:g}",
                            f"{rec['alpha']:g}" if "alpha" in rec else "–"))
        best = oracle(res, labels, tasks)
        choices.append(("oracle (best on test)", labels.get(best), "–" if best is None else f"{best:g}", ""))
        ref = labels.get(fixed)
        for what, lab, shown, a11 in choices:
            if lab is None:
                lines.append(f"| {sc.name} ({sc.task}) | {what} | – | {a11} | – | – | – | – | – |")
                continue
            same = lab == ref
            d_all = "" if same or ref is None else signed_points(res.score_difference(lab, ref, tasks))
            d_ft = "" if same or ref is None else signed_metric(res, res.difference(lab, ref, sc.task), sc.task)
            lines.append(f"| {sc.name} ({sc.task}) | {what} | {shown} | {a11} | {_pct(res.cell(lab, sc.task))} | "
                         f"{_pts(res.score(lab, others))} | {_pts(res.score(lab, tasks))} | {d_all} | {d_ft} |")
        names = list(grid.values())
        own, every = sweep_seconds(timings, plan, names, [sc.task]), sweep_seconds(timings, plan, names, tasks)
        for rule, job in plan.alpha_rules[sc.name].items():
            secs = (timings.get(job) or {}).get("seconds")
            costs.append((sc.name, rule, secs, own, every, len(names)))
    lines += ["", "Fine-tuning task: its test metric in % (95 % interval). Scores: the SUPERB-style score (mean "
              "points over the tasks). A rule whose Δ is (n.s.) is indistinguishable from the fixed α on this data.", ""]
    if costs:
        lines += ["### Cost", "",
                  "Seconds of the rule's job (its signal on the 11-point grid plus the study grid's extra points) next "
                  "to a sweep over the grid's models with probes, summed from this run's job times: the probe jobs "
                  "of those models plus each model's share of its task's feature-extraction pass (all jobs on the "
                  "same workers, at the same time).", "",
                  "| scenario | rule | rule (s) | sweep, probes on the fine-tuning task (s) | ratio | "
                  "sweep, probes on every task (s) | ratio |", "|---|---|---|---|---|---|---|"]
        for name, rule, secs, own, every, n in costs:
            r1 = f"{secs / own:.3f}" if secs and own else "–"
            r2 = f"{secs / every:.3f}" if secs and every else "–"
            lines.append(f"| {name} | auto:{rule} | {secs:.0f} | {own:.0f} ({n} points) | {r1} | {every:.0f} | {r2} |"
                         if secs is not None and own is not None and every is not None else
                         f"| {name} | auto:{rule} | – | – | – | – | – |")
        lines.append("")
    return lines
