"""The `study` report: a summary matrix first, then one paper-style table per scenario, multitask,
plots, measured interval widths, timings, versions and config — every number read from the records.

Rows pool their fine-tuning seeds; cells and differences carry 95 % bootstrap intervals
(:mod:`speechft.probe.stats`); prose orders two models only when the paired interval excludes 0.
"""
from __future__ import annotations

import platform
import statistics
from pathlib import Path
from typing import Optional, Sequence

from ..probe.score import profile_note
from ..utils.io import atomic_write_text, read_jsonl
from .markdown import Results, _pts, _verdict, render_table, summarize, timing_lines

# The paper's own figures (HuBERT Base, ASR fine-tuning on TED-LIUM), for reference only: another
# model, other data and SUPERB's own probing recipes.
PAPER_REFERENCE = [
    ("PR (PER ↓)", "5.17", "3.94"),
    ("SID (accuracy ↑)", "81.86", "84.11"),
    ("SUPERB_S score ↑", "870.20", "905.79"),
]


def _rows_dict(rows) -> dict:
    return {r.label: [n for n, _ in r.models] for r in rows}


def _delta(res: Results, a: str, b: str, task: str) -> Optional[str]:
    d = res.difference(a, b, task)
    if d is None:
        return None
    sign = 100.0 if res.meta(task)[1] else -100.0
    v = d.scaled(sign)
    mark = "" if v.excludes_zero else " (n.s.)"
    return f"{v.mean:+.1f} [{v.lo:+.1f}, {v.hi:+.1f}]{mark}"


def _score_delta(res: Results, a: str, b: str, tasks: Sequence[str]) -> Optional[str]:
    d = res.score_difference(a, b, tasks)
    if d is None:
        return None
    mark = "" if d.excludes_zero else " (n.s.)"
    return f"{d.mean:+.0f} [{d.lo:+.0f}, {d.hi:+.0f}]{mark}"


def summary_matrix(res: Results, cfg, plan, tasks: Sequence[str]) -> list[str]:
    """Scenario × method: change vs the pre-trained model on the fine-tuning task (metric points,
    positive = better) and on the other tasks (score points), and Speech-FT vs regular FT."""
    lines = ["| scenario | method | Δ fine-tuning task vs pre-trained | Δ score on the other tasks vs pre-trained | "
             "Δ other tasks vs regular FT |", "|---|---|---|---|---|"]
    for sc in cfg.scenarios:
        unsup = sc.kind == "unsupervised"
        others = [t for t in tasks if t != sc.task]
        base = f"{sc.name} / continued (α=1)" if unsup else f"{sc.name} / regular FT"
        for r in plan.rows:
            if r.scenario != sc.name or not r.in_table:
                continue
            ft = "–" if unsup else (_delta(res, r.label, "pre-trained", sc.task) or "–")
            ot = (_score_delta(res, r.label, "pre-trained", others) or "–") + (" (all tasks)" if unsup else "")
            vr = "" if r.label == base else (_score_delta(res, r.label, base, others) or "–") + \
                (" (vs continued)" if unsup else "")
            what = f"{sc.name} (continued pre-training: {', '.join(sc.languages)})" if unsup else f"{sc.name} ({sc.task})"
            lines.append(f"| {what} | {r.method} | {ft} | {ot} | {vr} |")
    mt = [r for r in plan.rows if r.scenario == "multitask"]
    if mt:
        for r in mt:
            lines.append(f"| multitask | {r.method} | | {_score_delta(res, r.label, 'pre-trained', tasks) or '–'} (all tasks) | |")
    return lines


def interval_widths(res: Results, tasks: Sequence[str]) -> list[str]:
    """Median 95 % interval width per task (in metric points) over the table's cells."""
    out = ["| task | test utterances | median interval width (points) | cells |", "|---|---|---|---|"]
    for t in tasks:
        widths = [100 * (iv.hi - iv.lo) for (row, task), _ in res.cells.items() if task == t
                  for iv in [res.cell(row, task)] if iv is not None and row != "FBANK"]
        n = next((r["num_utterances"]["test"] for r in res.records if r["task"] == t), None)
        if widths:
            out.append(f"| {t} | {n} | {statistics.median(widths):.1f} | {len(widths)} |")
    return out


def _block_seeds(cfg) -> str:
    """', 1 for multitask, ...': the blocks whose fine-tuning seeds differ from the study's."""
    blocks = [(s.name, cfg.seeds_of(s)) for s in cfg.scenarios if s.kind == "unsupervised"]
    if cfg.multitask and cfg.multitask.scenarios:
        blocks.append(("multitask", cfg.seeds_of(cfg.multitask)))
    return "".join(f", {n} for {name}" for name, n in blocks if n != cfg.ft_seeds)


def write_study_report(out: Path, cfg, plan, tasks: Sequence[str], dropped: Sequence[str], timings: dict,
                       run_info: Optional[dict] = None, probe_keys: Optional[set] = None) -> Path:
    import torch
    import transformers

    from .. import __version__

    out = Path(out)
    records = [r for r in read_jsonl(out / "probe" / "results.jsonl") if probe_keys is None or r.get("key") in probe_keys]
    table_rows = [r for r in plan.rows if r.in_table]
    res = Results(records, _rows_dict(table_rows), tasks)
    lines = ["# speechft study report", "",
             f"Pre-trained model **{cfg.model}**; {len(cfg.scenarios)} fine-tuning scenario(s); "
             f"{cfg.ft_seeds} fine-tuning seed(s) for regular FT / Stable-FT / Speech-FT "
             f"({cfg.baseline_ft_seeds} for baselines{_block_seeds(cfg)}), {cfg.probe_seeds} probe seed(s) per model "
             "and task; "
             f"{cfg.ft_steps} fine-tuning steps at lr {cfg.ft_lr:g} (head {cfg.ft_lr if cfg.ft_head_lr is None else cfg.ft_head_lr:g}); Speech-FT α = {cfg.alpha:g}; lite data size "
             f"**{cfg.size}**.", "",
             "Every cell: mean over fine-tuning seeds of the mean over probe seeds, with its 95 % bootstrap interval "
             "(fine-tuning seeds, probe seeds and test utterances resampled). Differences: paired bootstrap on the same "
             "test utterances; **(n.s.)** = the interval contains 0 (no significant difference).", ""]
    lines += ["## Summary", ""] + summary_matrix(res, cfg, plan, tasks) + [""]
    lines += ["Δ fine-tuning task: change of the task's metric in points (positive = better, error rates sign-flipped). "
              "Δ score: change of the SUPERB-style score (mean over the other tasks of "
              "1000·(s − s_FBANK)/(s_ref − s_FBANK)).", "", profile_note(res.profile, tasks), ""]
    lines += ["### The paper's figures, for reference", "",
              "From the Speech-FT paper (HuBERT Base fine-tuned for ASR on TED-LIUM; SUPERB's own probes). Not "
              "comparable in scale or data with the numbers above; shown so the direction of each effect can be set "
              "beside the paper's.", "", "| (paper) | HuBERT | Speech-FT |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in PAPER_REFERENCE] + [""]
    for sc in cfg.scenarios:
        rows = [r for r in table_rows if r.scenario in ("", sc.name)]
        labels = [r.label for r in rows]
        if sc.kind == "unsupervised":
            lines += [f"## Scenario {sc.name}: continued pre-training on {', '.join(sc.languages)} "
                      f"({sc.hours:g} h, {sc.steps} steps)", ""]
        else:
            lines += [f"## Scenario {sc.name}: fine-tuning on {sc.task}", ""]
        if sc.description:
            lines += [sc.description, ""]
        lines += ["Test metrics in %, 95 % intervals in brackets; score over all tasks.", "",
                  render_table(res, labels, tasks), ""]
        if sc.kind == "unsupervised":
            cont, sft = (next(r.label for r in rows if r.role == role) for role in ("stable", "speech-ft"))
            for a, b in ((cont, "pre-trained"), (sft, "pre-trained"), (sft, cont)):
                d = res.score_difference(a, b, tasks)
                if d is not None:
                    lines.append(f"- On all tasks, {a} {_verdict(d, 'is above', 'is below')} {b} "
                                 f"(difference {d.mean:+.0f} points, 95 % CI [{d.lo:+.0f}, {d.hi:+.0f}]).")
            lines.append("")
        else:
            names = {"pre": "pre-trained", "regular": f"{sc.name} / regular FT", "stable": f"{sc.name} / Stable-FT",
                     "speechft": next(r.label for r in rows if r.role == "speech-ft"),
                     "tuned": [r.label for r in rows if r.scenario == sc.name]}
            lines += [f"- {s}" for s in summarize(res, tasks, sc.task, names)] + [""]
        slug = plan.dirs[sc.name].relative_to(out)
        for rel, title in [(slug / "sweep" / "sweep.png", "α sweep (fine-tuning seed 0)"),
                           (slug / "analysis" / "similarity.png", "Per-layer similarity to the pre-trained model"),
                           (slug / "analysis" / "weight_distance.png", "Relative weight distance per layer group")]:
            if (out / rel).exists():
                lines += [f"![{sc.name}: {title}]({rel.as_posix()})", ""]
    mt = [r for r in table_rows if r.scenario == "multitask"]
    if mt:
        stables = [r for r in table_rows if r.role == "stable"]
        labels = ["FBANK", "pre-trained"] + [r.label for r in stables] + [r.label for r in mt]
        lines += ["## Multitask: merging the Stable-FT models of several scenarios", "",
                  f"θ̂ = θ₀ + α·merge(τᵢ) over {', '.join(cfg.multitask.scenarios)} (same fine-tuning seed), "
                  f"α = {cfg.multitask.alpha:g}; TIES/DARE density {cfg.multitask.density:g}.", "",
                  render_table(res, labels, tasks), ""]
        for r in mt:
            d = res.score_difference(r.label, "pre-trained", tasks)
            if d is not None:
                lines.append(f"- {r.method} {_verdict(d, 'is above', 'is below')} the pre-trained model on the score "
                             f"over all tasks ({_pts(d)}).")
        lines.append("")
    lines += ["## Interval widths", "", "How precisely the test sets resolve differences at this size:", ""]
    lines += interval_widths(res, tasks) + [""]
    if dropped:
        lines += [f"Skipped (no FSDD copy found): {', '.join(dropped)}.", ""]
    lines += timing_lines(timings, run_info)
    lines += ["## Environment", "", f"speechft {__version__}, torch {torch.__version__}, transformers "
              f"{transformers.__version__}, Python {platform.python_version()}, {platform.machine()} with "
              f"{__import__('os').cpu_count()} CPU cores.", ""]
    lines += ["## Config", "", "```yaml", cfg.to_yaml().rstrip(), "```", ""]
    path = out / "report.md"
    atomic_write_text(path, "\n".join(lines))
    return path
