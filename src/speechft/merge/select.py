"""Rules that pick α from sweep records, in an explicit registry.

    mean-normalized                  best mean normalized score across tasks
    ft-task:TASK,max-drop:X          best TASK metric among the α whose every other task drops by at most X
                                     (relative to α=0; X = 0.02 or 2%)

Scores are min-max normalized per (task, metric) over the swept α (1 = best α, 0 = worst; a metric that
does not change scores 1 everywhere), metrics of one task averaged first. Selection reads the dev
values (the probe picks its checkpoint on dev too) and falls back to test values, with a warning, only
when a record has none. Ties go to the smallest α (the closest to the pre-trained model).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Callable, Optional

from ..utils.names import by_name, lookup

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Rule:
    name: str
    fn: Callable[..., dict]
    arg: Optional[str]  # name of the value after "name:", if the rule takes one
    options: tuple[str, ...]
    description: str


def _key(a: float) -> float:
    return round(float(a), 9)


def build_table(records: list[dict]) -> tuple[dict[float, dict[tuple[str, str], float]], dict, str]:
    """({α: {(task, metric): value}}, {(task, metric): higher_is_better}, basis) over the complete α."""
    basis = "dev_value" if records and all(r.get("dev_value") is not None for r in records) else "value"
    if basis == "value" and records:
        log.warning("some sweep records have no dev value: selecting α on test values")
    table: dict[float, dict] = {}
    hib = {}
    for r in records:
        tm = (r["task"], r["metric"])
        table.setdefault(_key(r["alpha"]), {})[tm] = float(r[basis])
        hib[tm] = bool(r["higher_is_better"])
    complete = {a: row for a, row in table.items() if set(row) == set(hib)}
    for a in sorted(set(table) - set(complete)):
        log.warning("α=%g is missing some tasks and is not considered for selection", a)
    if not complete:
        raise ValueError("no α has results for every task: nothing to select from")
    return complete, hib, basis


def normalized(table: dict, hib: dict) -> dict[float, dict[str, float]]:
    """{α: {task: mean over the task's metrics of the min-max normalized, oriented value}}."""
    out: dict[float, dict[str, list]] = {a: {} for a in table}
    for tm, better_high in hib.items():
        vals = {a: (row[tm] if better_high else -row[tm]) for a, row in table.items()}
        lo, hi = min(vals.values()), max(vals.values())
        for a, v in vals.items():
            out[a].setdefault(tm[0], []).append(1.0 if hi == lo else (v - lo) / (hi - lo))
    return {a: {t: sum(v) / len(v) for t, v in tasks.items()} for a, tasks in out.items()}


def _best(scores: dict[float, float]) -> float:
    return min(scores, key=lambda a: (-scores[a], a))


def mean_normalized(records: list[dict]) -> dict:
    table, hib, basis = build_table(records)
    norm = normalized(table, hib)
    scores = {a: sum(t.values()) / len(t) for a, t in norm.items()}
    return {"alpha": _best(scores), "basis": basis, "scores": scores}


def relative_drop(v0: float, v: float, higher_is_better: bool) -> float:
    """How much worse v is than v0, as a fraction of |v0| (absolute when v0 = 0); negative = better."""
    worse = (v0 - v) if higher_is_better else (v - v0)
    return worse / abs(v0) if v0 else worse


def ft_task_max_drop(records: list[dict], task: str, max_drop: float) -> dict:
    table, hib, basis = build_table(records)
    tasks = {t for t, _ in hib}
    if task not in tasks:
        raise ValueError(f"selection rule: task {task!r} is not in the sweep (tasks: {', '.join(sorted(tasks))})")
    if 0.0 not in table:
        raise ValueError("selection rule ft-task needs α=0 in the sweep (drops are measured against it)")
    drops = {a: max([relative_drop(table[0.0][tm], row[tm], hib[tm]) for tm in hib if tm[0] != task], default=0.0)
             for a, row in table.items()}
    eligible = [a for a in table if drops[a] <= max_drop + 1e-12]
    norm = normalized(table, hib)
    scores = {a: norm[a][task] for a in eligible}
    return {"alpha": _best(scores), "basis": basis, "scores": scores, "max_drops": drops,
            "eligible": sorted(eligible)}


def _build(rules: list[Rule]) -> dict[str, Rule]:
    return by_name(rules, "selection rule")


RULES: dict[str, Rule] = _build([
    Rule("mean-normalized", mean_normalized, None, (), "best mean normalized score across tasks"),
    Rule("ft-task", ft_task_max_drop, "task", ("max-drop",),
         "best TASK metric with no other task dropping more than max-drop (relative to α=0)"),
])


def get_rule(name: str) -> Rule:
    return lookup(RULES, name, "selection rule", "known rules")


def parse_fraction(text: str, what: str) -> float:
    t = text.strip()
    try:
        v = float(t[:-1]) / 100 if t.endswith("%") else float(t)
    except ValueError:
        raise ValueError(f"{what}: expected a number like 0.02 or 2%, got {text!r}") from None
    if not math.isfinite(v) or v < 0:
        raise ValueError(f"{what}: must be a non-negative number, got {text!r}")
    return v


def parse_rule(spec: str) -> tuple[Rule, dict]:
    """'ft-task:lite-pr,max-drop:2%' -> (Rule, {'task': 'lite-pr', 'max_drop': 0.02})."""
    parts = [p.strip() for p in spec.split(",") if p.strip()]
    if not parts:
        raise ValueError("empty --select rule")
    name, _, arg = parts[0].partition(":")
    rule = get_rule(name.strip())
    kwargs: dict = {}
    if rule.arg:
        if not arg.strip():
            raise ValueError(f"selection rule {rule.name!r} needs a value: {rule.name}:{rule.arg.upper()}")
        kwargs[rule.arg] = arg.strip()
    elif arg:
        raise ValueError(f"selection rule {rule.name!r} takes no value, got {arg!r}")
    for part in parts[1:]:
        k, _, v = part.partition(":")
        k = k.strip()
        if k not in rule.options:
            allowed = ", ".join(rule.options) or "none"
            raise ValueError(f"selection rule {rule.name!r}: unknown option {k!r} (options: {allowed})")
        kwargs[k.replace("-", "_")] = parse_fraction(v, f"--select {k}")
    missing = [o for o in rule.options if o.replace("-", "_") not in kwargs]
    if missing:
        raise ValueError(f"selection rule {rule.name!r} needs {', '.join(m + ':X' for m in missing)}")
    return rule, kwargs


def select_alpha(records: list[dict], spec: str) -> dict:
    """Apply the rule ``spec`` to sweep records: {'rule', 'alpha', 'basis', 'scores', ...}."""
    rule, kwargs = parse_rule(spec)
    out = rule.fn(records, **kwargs)
    out["scores"] = {f"{a:g}": round(s, 6) for a, s in sorted(out["scores"].items())}
    if "max_drops" in out:
        out["max_drops"] = {f"{a:g}": round(s, 6) for a, s in sorted(out["max_drops"].items())}
    return {"rule": spec, **out}
