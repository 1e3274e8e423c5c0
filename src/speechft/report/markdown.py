"""The `reproduce` report: a paper-style table, plots and a plain-language summary, all from records.

Nothing here holds a number of its own: every figure in ``report.md`` is read from the run's
result records (probe results, sweep records, analysis records, stage timings).
"""
from __future__ import annotations

import math
import platform
import statistics
from pathlib import Path
from typing import Optional, Sequence

from ..utils.io import atomic_write_text, read_jsonl


def _fmt(metric: str, vals: Sequence[float]) -> str:
    scale = 100.0  # accuracy and error rates both shown in %
    m = statistics.fmean(vals) * scale
    if len(vals) > 1:
        return f"{m:.2f} ± {statistics.stdev(vals) * scale:.2f}"
    return f"{m:.2f}"


def collect(results: list[dict]) -> dict:
    """{(model, task): {"metric", "values": [test per seed], "higher_is_better"}}"""
    table: dict = {}
    for r in results:
        key = (r["model"], r["task"])
        e = table.setdefault(key, {"metric": r["metric"], "values": [], "higher_is_better": r["higher_is_better"]})
        e["values"].append(float(r["value"]))
    return table


def task_scores(table: dict, models: Sequence[str], tasks: Sequence[str], fbank: str = "FBANK") -> dict:
    """{(model, task): p} with p = 1000 (s - s_FBANK) / (s_ref - s_FBANK), s_ref the perfect score."""
    from ..probe.score import normalized_score

    out = {}
    for t in tasks:
        fb = table.get((fbank, t))
        if fb is None:
            continue
        for m in models:
            e = table.get((m, t))
            if e is None:
                continue
            out[(m, t)] = normalized_score(statistics.fmean(e["values"]), statistics.fmean(fb["values"]),
                                           e["higher_is_better"])
    return out


def _best(values: dict, higher: bool) -> Optional[str]:
    vals = {k: v for k, v in values.items() if v is not None and not math.isnan(v)}
    if not vals:
        return None
    return (max if higher else min)(vals, key=vals.get)


def render_table(table: dict, scores: dict, models: Sequence[str], tasks: Sequence[str]) -> str:
    head = ["model"] + [f"{t} ({table.get((models[0], t), {}).get('metric', '?')}{'↑' if table.get((models[0], t), {}).get('higher_is_better', True) else '↓'})" for t in tasks] + ["score ↑"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    means = {}
    for t in tasks:
        col = {m: statistics.fmean(table[(m, t)]["values"]) for m in models if (m, t) in table and m != "FBANK"}
        hib = next((table[(m, t)]["higher_is_better"] for m in models if (m, t) in table), True)
        means[t] = _best(col, hib)
    score_mean = {m: statistics.fmean([scores[(m, t)] for t in tasks if (m, t) in scores])
                  for m in models if any((m, t) in scores for t in tasks)}
    best_score = _best({m: v for m, v in score_mean.items() if m != "FBANK"}, True)
    for m in models:
        cells = [m]
        for t in tasks:
            e = table.get((m, t))
            if e is None:
                cells.append("–")
                continue
            s = _fmt(e["metric"], e["values"])
            cells.append(f"**{s}**" if means[t] == m else s)
        sc = score_mean.get(m)
        sc_s = "–" if sc is None else f"{sc:.0f}"
        cells.append(f"**{sc_s}**" if m == best_score else sc_s)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summarize(table: dict, scores: dict, models: Sequence[str], tasks: Sequence[str], ft_task: str,
              names: dict) -> list[str]:
    """Plain-language statements derived from the numbers (never assumed)."""
    pre, reg, stab, sft = names["pre"], names["regular"], names["stable"], names["speechft"]
    out = []

    def mean(m, t):
        e = table.get((m, t))
        return statistics.fmean(e["values"]) if e else None

    def better(a, b, t):
        hib = table[(models[1], t)]["higher_is_better"]
        return (a > b) if hib else (a < b)

    ft_vals = {m: mean(m, ft_task) for m in (pre, reg, stab, sft)}
    if None not in ft_vals.values():
        metric = table[(pre, ft_task)]["metric"]
        for m in (reg, stab, sft):
            verdict = "improves on" if better(ft_vals[m], ft_vals[pre], ft_task) else "does not improve on"
            out.append(f"On the fine-tuning task {ft_task}, {m} {verdict} the pre-trained model "
                       f"({metric} {100 * ft_vals[m]:.2f} vs {100 * ft_vals[pre]:.2f}).")
    others = [t for t in tasks if t != ft_task]

    def cross(m):
        vals = [scores[(m, t)] for t in others if (m, t) in scores]
        return statistics.fmean(vals) if vals else None

    cs = {m: cross(m) for m in (pre, reg, stab, sft)}
    if None not in cs.values() and others:
        out.append(f"Mean score on the other tasks ({', '.join(others)}): pre-trained {cs[pre]:.0f}, "
                   f"{reg} {cs[reg]:.0f}, {stab} {cs[stab]:.0f}, {sft} {cs[sft]:.0f}.")
        out.append(f"{sft} {'beats' if cs[sft] > cs[reg] else 'does not beat'} regular fine-tuning on the cross-task score"
                   f" ({cs[sft]:.0f} vs {cs[reg]:.0f}), and {'stays above' if cs[sft] >= cs[pre] else 'falls below'} "
                   f"the pre-trained model ({cs[pre]:.0f}).")
        drops = [t for t in others if (reg, t) in scores and (pre, t) in scores and scores[(reg, t)] < scores[(pre, t)]]
        if drops:
            out.append(f"Regular fine-tuning lowers the score of the pre-trained model on: {', '.join(drops)}.")
    return out


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


def write_report(out: Path, cfg, models: Sequence[str], tasks: Sequence[str], dropped: Sequence[str],
                 timings: dict, run_info: Optional[dict] = None) -> Path:
    import torch
    import transformers

    from .. import __version__

    results = read_jsonl(out / "probe" / "results.jsonl")
    table = collect(results)
    scores = task_scores(table, models, tasks)
    speechft_name = next(m for m in models if m.startswith("Speech-FT"))
    names = {"pre": "pre-trained", "regular": "regular FT", "stable": "Stable-FT", "speechft": speechft_name}
    lines = ["# speechft reproduce report", ""]
    lines += [f"Pre-trained model **{cfg.model}**, fine-tuned on **{cfg.ft_task}** for {cfg.ft_steps} steps; "
              f"Speech-FT merges with α = {cfg.alpha:g}; lite data size **{cfg.size}**; {cfg.seeds} probe seed(s).", ""]
    lines += ["## Results", "",
              "Test metrics in % (error rates ↓, accuracies ↑); score = mean over tasks of "
              "1000·(s − s_FBANK)/(s_perfect − s_FBANK) with FBANK probed by the same harness. "
              "Best non-FBANK value per column in bold.", "",
              render_table(table, scores, models, tasks), ""]
    if dropped:
        lines += [f"Skipped (no FSDD copy found): {', '.join(dropped)}.", ""]
    lines += ["## What the numbers show", ""] + [f"- {s}" for s in summarize(table, scores, models, tasks, cfg.ft_task, names)] + [""]
    figs = [("sweep/sweep.png", "α sweep: metric vs α per task"),
            ("analysis/similarity.png", "Per-layer similarity to the pre-trained model"),
            ("analysis/llfc.png", "LLFC: R² of interpolated features per layer"),
            ("analysis/weight_distance.png", "Relative weight distance per layer group"),
            ("probe/layer_weights.png", "Learned layer weights of the probes")]
    lines += ["## Plots", ""]
    for rel, title in figs:
        if (out / rel).exists():
            lines += [f"### {title}", "", f"![{title}]({rel})", ""]
    lines += timing_lines(timings, run_info)
    lines += ["## Environment", "", f"speechft {__version__}, torch {torch.__version__}, transformers {transformers.__version__}, "
              f"Python {platform.python_version()}, {platform.machine()} with {__import__('os').cpu_count()} CPU cores.", ""]
    lines += ["## Config", "", "```yaml", cfg.to_yaml().rstrip(), "```", ""]
    path = out / "report.md"
    atomic_write_text(path, "\n".join(lines))
    return path
