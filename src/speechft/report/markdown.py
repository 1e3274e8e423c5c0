"""The `reproduce` report: a paper-style table with intervals, plots and a significance-aware summary.

Nothing here holds a number of its own: every figure in ``report.md`` is read from the run's
result records (probe results, sweep records, analysis records, stage timings), scored by
:mod:`speechft.probe.score` (the same path as ``speechft probe``) with bootstrap intervals from
:mod:`speechft.probe.stats`. The rows come typed from the pipeline (:class:`speechft.pipeline.Row`).
"""
from __future__ import annotations

import platform
import statistics
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..merge.keys import layer_group_order
from ..probe import stats
from ..probe.score import check_groups, is_fbank_record, profile_note, profile_of, superb_score
from ..utils.io import atomic_write_text, read_jsonl

class Results:
    """Probe records of one report grouped into rows, with scores and intervals.

    ``rows``: row labels in table order, or ``{label: [model names in the records]}`` when a row
    pools several models (one per fine-tuning seed); a model may stand in several rows (a continual
    scenario's first Speech-FT merge starts both of its Speech-FT chains). A cell is the row's records on one task; its
    point is the mean over models of the mean over probe seeds (:func:`speechft.probe.stats.point`).
    Points per task come from :func:`speechft.probe.score.superb_score` (the reference points each
    task declares; FBANK records on the same data), the same path as ``speechft probe``."""

    def __init__(self, records: Sequence[dict], rows, tasks: Sequence[str]):
        groups = rows if isinstance(rows, dict) else {m: [m] for m in rows}
        self.models, self.tasks = list(groups), list(tasks)
        owners: dict = {}  # model name -> the rows it belongs to (one model may stand in several rows)
        for label, ms in groups.items():
            for m in ms:
                owners.setdefault(m, []).append(label)
        self.records = [r for r in records if r["model"] in owners and r["task"] in self.tasks]
        self.cells: dict = {}
        for r in self.records:
            for label in owners[r["model"]]:
                self.cells.setdefault((label, r["task"]), []).append(r)
        check_groups(self.records)  # refuses records of one model and task made from other inputs
        self.profile = profile_of(self.records)  # refuses records of several probe profiles
        self._fb = {t: [r for r in self.records if is_fbank_record(r) and r["task"] == t] for t in self.tasks}
        self._reps: dict = {}
        self._refs: dict = {}

    def meta(self, task: str) -> tuple[str, bool]:
        r = next((r for r in self.records if r["task"] == task), None)
        return (r["metric"], bool(r["higher_is_better"])) if r else ("?", True)

    def cell(self, row: str, task: str) -> Optional[stats.Interval]:
        recs = self.cells.get((row, task))
        if not recs:
            return None
        return stats.cell(recs) or stats.Interval(*(3 * [stats.point(recs)]))

    def reference(self, task: str, data_key) -> Optional[tuple[float, float]]:
        """(s_FBANK, s_ref) of ``task`` on the test set ``data_key``, as probe.score scores it."""
        if (task, data_key) not in self._refs:
            fb = [float(r["value"]) for r in self._fb.get(task, []) if r.get("data_key") == data_key]
            metric, higher = self.meta(task)
            sc = superb_score({task: [0.0]}, fbank={task: fb} if fb else None, metrics={task: (metric, higher)},
                              profile=self.profile)
            info = sc["tasks"].get(task)
            self._refs[(task, data_key)] = (info["fbank"], info["reference"]) if info else None
        return self._refs[(task, data_key)]

    def points(self, row: str, task: str) -> Optional[float]:
        recs = self.cells.get((row, task))
        ref = self.reference(task, recs[0].get("data_key")) if recs else None
        return None if ref is None else 1000.0 * (stats.point(recs) - ref[0]) / (ref[1] - ref[0])

    def _point_reps(self, row: str, task: str) -> Optional[np.ndarray]:
        """Bootstrap replicates of the row's points on one task (FBANK and the reference fixed)."""
        key = (row, task)
        if key not in self._reps:
            recs = self.cells.get(key)
            ref = self.reference(task, recs[0].get("data_key")) if recs else None
            reps = stats.replicates(recs) if ref is not None else None
            self._reps[key] = None if reps is None else 1000.0 * (reps - ref[0]) / (ref[1] - ref[0])
        return self._reps[key]

    def score(self, row: str, tasks: Sequence[str]) -> Optional[stats.Interval]:
        """Mean points over ``tasks`` with its interval (tasks resampled independently)."""
        pts = [self.points(row, t) for t in tasks]
        if not tasks or any(p is None for p in pts):
            return None
        mean = statistics.fmean(pts)
        reps = [self._point_reps(row, t) for t in tasks]
        if any(r is None for r in reps):
            return stats.Interval(mean, mean, mean)
        return stats.interval(mean, np.mean(reps, axis=0))

    def score_difference(self, a: str, b: str, tasks: Sequence[str]) -> Optional[stats.Interval]:
        """Paired bootstrap of score(a) − score(b) over ``tasks``."""
        sa, sb = self.score(a, tasks), self.score(b, tasks)
        if sa is None or sb is None:
            return None
        ra = [self._point_reps(a, t) for t in tasks]
        rb = [self._point_reps(b, t) for t in tasks]
        if any(r is None for r in ra + rb):
            return None
        return stats.interval(sa.mean - sb.mean, np.mean(ra, axis=0) - np.mean(rb, axis=0))

    def difference(self, a: str, b: str, task: str) -> Optional[stats.Interval]:
        ca, cb = self.cells.get((a, task)), self.cells.get((b, task))
        return stats.difference(ca, cb) if ca and cb else None


def _pct(iv: Optional[stats.Interval]) -> str:
    if iv is None:
        return "–"
    v = iv.scaled(100.0)
    return f"{v.mean:.1f} [{v.lo:.1f}, {v.hi:.1f}]" if v.hi > v.lo else f"{v.mean:.1f}"


def _pts(iv: Optional[stats.Interval]) -> str:
    if iv is None:
        return "–"
    return f"{iv.mean:.0f} [{iv.lo:.0f}, {iv.hi:.0f}]" if iv.hi > iv.lo else f"{iv.mean:.0f}"


def signed_points(d: Optional[stats.Interval], digits: int = 0) -> str:
    """A difference with its sign and interval, and (n.s.) when the interval contains 0; "–" without one."""
    if d is None:
        return "–"
    return f"{d.mean:+.{digits}f} [{d.lo:+.{digits}f}, {d.hi:+.{digits}f}]" + ("" if d.excludes_zero else " (n.s.)")


def signed_metric(res: "Results", d: Optional[stats.Interval], task: str) -> str:
    """A metric difference on ``task`` in points (%), positive = better (error rates sign-flipped)."""
    return "–" if d is None else signed_points(d.scaled(100.0 if res.meta(task)[1] else -100.0), 1)


def render_table(res: Results, models: Sequence[str], tasks: Sequence[str]) -> str:
    """Markdown table: test metric in % with its 95 % interval per task, and the score over all tasks.
    The best non-FBANK mean per column is bold."""
    head = ["model"] + [f"{t} ({res.meta(t)[0]}{'↑' if res.meta(t)[1] else '↓'})" for t in tasks] + ["score ↑"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    best = {}
    for t in tasks:
        col = {m: res.cell(m, t).mean for m in models if res.cell(m, t) is not None and m != "FBANK"}
        if col:
            best[t] = (max if res.meta(t)[1] else min)(col, key=col.get)
    scores = {m: res.score(m, tasks) for m in models}
    ranked = {m: v.mean for m, v in scores.items() if v is not None and m != "FBANK"}
    best_score = max(ranked, key=ranked.get) if ranked else None
    for m in models:
        cells = [m]
        for t in tasks:
            c = _pct(res.cell(m, t))
            cells.append(f"**{c}**" if best.get(t) == m else c)
        sc = _pts(scores[m])
        cells.append(f"**{sc}**" if m == best_score else sc)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _verdict(iv: Optional[stats.Interval], better: str, worse: str) -> str:
    if iv is None:
        return "cannot be compared (no per-utterance results)"
    if not iv.excludes_zero:
        return "shows no significant difference from"
    return better if iv.mean > 0 else worse


def summarize(res: Results, tasks: Sequence[str], ft_task: str, names: dict) -> list[str]:
    """Plain-language statements derived from the numbers: an ordering only when the 95 % interval
    of the paired difference excludes 0, otherwise "no significant difference"."""
    pre, reg, sft = names["pre"], names["regular"], names["speechft"]
    tuned = [m for m in names.get("tuned", [reg, names["stable"], sft]) if any(k[0] == m for k in res.cells)]
    out = []
    metric, higher = res.meta(ft_task)
    sign = 1.0 if higher else -1.0
    for m in tuned:
        d = res.difference(m, pre, ft_task)
        if d is None or (m, ft_task) not in res.cells or (pre, ft_task) not in res.cells:
            continue
        v = d.scaled(100.0 * sign)
        verdict = _verdict(v, "improves on", "is worse than")
        out.append(f"On the fine-tuning task {ft_task}, {m} {verdict} the pre-trained model "
                   f"({metric} {100 * res.cell(m, ft_task).mean:.1f} vs {100 * res.cell(pre, ft_task).mean:.1f}; "
                   f"improvement {v.mean:+.1f} points, 95 % CI [{v.lo:+.1f}, {v.hi:+.1f}]).")
    others = [t for t in tasks if t != ft_task]
    if others:
        cs = {m: res.score(m, others) for m in [pre] + tuned}
        if all(v is not None for v in cs.values()):
            out.append(f"Score on the other tasks ({', '.join(others)}): "
                       + ", ".join(f"{m} {_pts(v)}" for m, v in cs.items()) + ".")
            for a, b in [(m, pre) for m in tuned] + ([(sft, reg)] if sft in tuned and reg in tuned else []):
                d = res.score_difference(a, b, others)
                if d is not None:
                    verdict = _verdict(d, "is above", "is below")
                    out.append(f"On the other tasks, {a} {verdict} {b} (difference {d.mean:+.0f} points, "
                               f"95 % CI [{d.lo:+.0f}, {d.hi:+.0f}]).")
        drops = []
        for t in others:
            d = res.difference(reg, pre, t)
            if d is not None and d.excludes_zero and (d.mean > 0) != higher_is(res, t):
                drops.append(t)
        if drops:
            out.append(f"Regular fine-tuning significantly lowers the pre-trained model's result on: {', '.join(drops)}.")
    return out


def higher_is(res: Results, task: str) -> bool:
    return res.meta(task)[1]


def timing_lines(stages: dict, run_info: Optional[dict] = None) -> list[str]:
    """The report's timing section from ``stages.jsonl`` records (name -> record or seconds).

    Jobs named ``"<stage> / <task>"`` are summed per stage. With several workers the sum of job times
    exceeds the wall clock, so the span from the first job's start to the last one's end is given too."""
    from ..utils.jobs import seconds_by_stage

    recs = {k: {"stage": k, **(v if isinstance(v, dict) else {"seconds": v})} for k, v in stages.items()}
    groups = seconds_by_stage(recs.values())
    lines = ["## Timings", ""]
    if run_info:
        lines += [f"{run_info['jobs']} jobs on {run_info['workers']} worker process(es) x {run_info['threads']} "
                  f"torch thread(s) each.", ""]
    lines += ["| stage | jobs | seconds (sum) |", "|---|---|---|"]
    lines += [f"| {k} | {len(v)} | {sum(v):.0f} |" for k, v in groups.items()]
    total = sum(r["seconds"] for r in recs.values())
    lines += [f"| **all jobs** | {len(recs)} | {total:.0f} |"]
    starts = [r["started"] for r in recs.values() if "started" in r]
    ends = [r["finished"] for r in recs.values() if "finished" in r]
    if starts and len(starts) == len(recs):
        span = max(ends) - min(starts)
        lines += [f"| **wall clock** (first start to last end) | | {span:.0f} ({span / 60:.1f} min) |"]
    return lines + [""]


def layer_alpha_text(layer_alphas: dict) -> str:
    """``proj 1, layer1 0.31, …``: per-layer α in the model's order (:func:`..merge.keys.layer_group_order`)."""
    return ", ".join(f"{g} {a:.2g}" for g, a in sorted(layer_alphas.items(), key=lambda kv: layer_group_order(kv[0])))


def _alpha_text(cfg, layout) -> str:
    """``0.25``, or ``0.4 (chosen by auto:cka: …)`` from the merged model's card when α was chosen at run time."""
    if cfg.fixed_alpha is not None:
        return f"{cfg.fixed_alpha:g}"
    import json

    card = layout.speechft / "speechft_card.json"
    auto = json.loads(card.read_text()).get("alpha_auto", {}) if card.exists() else {}
    if not auto:
        return f"{cfg.alpha} (not chosen yet)"
    if auto.get("layer_alphas"):
        return (f"per layer, chosen by `{cfg.alpha}` ({auto['rule']} {auto['value']:g}): {layer_alpha_text(auto['layer_alphas'])}"
                " (each layer's drift is in the merged model's card)")
    return (f"{auto['alpha']:g}, chosen by `{cfg.alpha}` ({auto['rule']} {auto['value']:g}, {auto['seconds']:.0f} s; "
            f"its {auto['metric']} per α is in the merged model's card)")


def write_report(layout, cfg, rows: Sequence, tasks: Sequence[str], dropped: Sequence[str], timings: dict,
                 run_info: Optional[dict] = None, probe_keys: Optional[set] = None) -> Path:
    """``layout.report`` from the run's records. ``rows``: the pipeline's typed rows (those with
    ``in_table`` are the table); ``probe_keys``: provenance keys of the current jobs' records (only
    those are shown)."""
    import torch
    import transformers

    from .. import __version__

    records = [r for r in read_jsonl(layout.results) if probe_keys is None or r.get("key") in probe_keys]
    table_rows = [r for r in rows if r.in_table]
    models = [r.name for r in table_rows]
    res = Results(records, models, tasks)
    role = {r.role: r.name for r in table_rows}
    names = {"pre": role["pre-trained"], "regular": role["regular"], "stable": role["stable"],
             "speechft": role["speech-ft"],
             "tuned": [r.name for r in table_rows if r.role in ("regular", "stable", "speech-ft", "baseline", "early")]}
    n_seeds = sorted({len(v) for v in res.cells.values()})
    lines = ["# speechft reproduce report", ""]
    lines += [f"Pre-trained model **{cfg.model}**, fine-tuned on **{cfg.ft_task}** for {cfg.ft_steps} steps; "
              f"Speech-FT merges with α = {_alpha_text(cfg, layout)}; lite data size **{cfg.size}**; {cfg.seeds} probe "
              "seed(s).", ""]
    sizes = {t: next((r["num_utterances"]["test"] for r in res.records if r["task"] == t), None) for t in tasks}
    lines += ["## Results", "",
              "Test metrics in % (error rates ↓, accuracies ↑), mean over probe seeds with its 95 % bootstrap "
              "interval [low, high] (test utterances resampled, and probe seeds resampled when there are several); "
              "score = mean over tasks of 1000·(s − s_FBANK)/(s_ref − s_FBANK). Best non-FBANK mean per column in "
              "bold.", "", profile_note(res.profile, tasks), "",
              render_table(res, models, tasks), "",
              f"Seeds per cell: {', '.join(map(str, n_seeds)) or '–'}; test utterances per task: "
              + ", ".join(f"{t} {n}" for t, n in sizes.items() if n) + ".", ""]
    if dropped:
        lines += [f"Skipped (no FSDD copy found): {', '.join(dropped)}.", ""]
    lines += ["## What the numbers show", "",
              "An ordering is stated only when the 95 % interval of the paired difference (same test utterances) "
              "excludes 0.", ""]
    lines += [f"- {s}" for s in summarize(res, tasks, cfg.ft_task, names)] + [""]
    figs = [("sweep/sweep.png", "α sweep: metric vs α per task"),
            ("analysis/similarity.png", "Per-layer similarity to the pre-trained model"),
            ("analysis/llfc.png", "LLFC: R² of interpolated features per layer"),
            ("analysis/weight_distance.png", "Relative weight distance per layer group"),
            ("probe/layer_weights.png", "Learned layer weights of the probes")]
    lines += ["## Plots", ""]
    for rel, title in figs:
        if (layout.out / rel).exists():
            lines += [f"### {title}", "", f"![{title}]({rel})", ""]
    lines += timing_lines(timings, run_info)
    lines += ["## Environment", "", f"speechft {__version__}, torch {torch.__version__}, transformers {transformers.__version__}, "
              f"Python {platform.python_version()}, {platform.machine()} with {__import__('os').cpu_count()} CPU cores.", ""]
    lines += ["## Config", "", "```yaml", cfg.to_yaml().rstrip(), "```", ""]
    atomic_write_text(layout.report, "\n".join(lines))
    return layout.report
