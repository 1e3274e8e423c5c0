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
from .alpha_choice import alpha_section
from .markdown import Results, _pct, _pts, _verdict, render_table, signed_metric, signed_points, summarize, timing_lines

# The paper's own figures (HuBERT Base, ASR fine-tuning on TED-LIUM), for reference only: another
# model, other data and SUPERB's own probing recipes.
PAPER_REFERENCE = [
    ("PR (PER ↓)", "5.17", "3.94"),
    ("SID (accuracy ↑)", "81.86", "84.11"),
    ("SUPERB_S score ↑", "870.20", "905.79"),
]


def _rows_dict(rows) -> dict:
    return {r.label: [n for n, _ in r.models] for r in rows}


def _delta(res: Results, a: str, b: str, task: str) -> str:
    return signed_metric(res, res.difference(a, b, task), task)


def _score_delta(res: Results, a: str, b: str, tasks: Sequence[str]) -> str:
    return signed_points(res.score_difference(a, b, tasks))


def _method_of(row) -> str:
    """A continual row's method without its stage ("sequential Stable-FT after lite-sid" -> "sequential Stable-FT")."""
    return row.method.rsplit(" after ", 1)[0]


def _continual_summary(res: Results, sc, plan, tasks: Sequence[str]) -> list[str]:
    """Summary-matrix lines of a continual scenario's final models: Δ score over the order's tasks and
    over the other tasks vs the pre-trained model, and the other tasks vs sequential regular FT."""
    order = list(sc.order)
    others = [t for t in tasks if t not in order]
    finals = [r for r in plan.rows if r.scenario == sc.name and r.in_table]
    reg = next((r.label for r in finals if _method_of(r) == "sequential regular FT"), None)
    lines = []
    for r in finals:
        ft = _score_delta(res, r.label, "pre-trained", order) + " (score over the order's tasks)"
        ot = _score_delta(res, r.label, "pre-trained", others)
        vr = "" if r.label == reg else _score_delta(res, r.label, reg, others)
        lines.append(f"| {sc.name} (continual: {' → '.join(order)}) | {_method_of(r)} | {ft} | {ot} | {vr} |")
    return lines


def summary_matrix(res: Results, cfg, plan, tasks: Sequence[str]) -> list[str]:
    """Scenario × method: change vs the pre-trained model on the fine-tuning task (metric points,
    positive = better) and on the other tasks (score points), and Speech-FT vs regular FT."""
    lines = ["| scenario | method | Δ fine-tuning task vs pre-trained | Δ score on the other tasks vs pre-trained | "
             "Δ other tasks vs regular FT |", "|---|---|---|---|---|"]
    for sc in cfg.scenarios:
        if sc.kind == "continual":
            lines += _continual_summary(res, sc, plan, tasks)
            continue
        unsup = sc.kind == "unsupervised"
        others = [t for t in tasks if t != sc.task]
        base = f"{sc.name} / continued (α=1)" if unsup else f"{sc.name} / regular FT"
        for r in plan.rows:
            if r.scenario != sc.name or not r.in_table:
                continue
            ft = "–" if unsup else _delta(res, r.label, "pre-trained", sc.task)
            ot = _score_delta(res, r.label, "pre-trained", others) + (" (all tasks)" if unsup else "")
            vr = "" if r.label == base else _score_delta(res, r.label, base, others) + \
                (" (vs continued)" if unsup else "")
            what = f"{sc.name} (continued pre-training: {', '.join(sc.languages)})" if unsup else f"{sc.name} ({sc.task})"
            lines.append(f"| {what} | {r.method} | {ft} | {ot} | {vr} |")
    mt = [r for r in plan.rows if r.scenario == "multitask"]
    if mt:
        for r in mt:
            lines.append(f"| multitask | {r.method} | | {_score_delta(res, r.label, 'pre-trained', tasks)} (all tasks) | |")
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
    blocks = [(s.name, cfg.seeds_of(s)) for s in cfg.scenarios if s.kind in ("unsupervised", "continual")]
    if cfg.multitask and cfg.multitask.scenarios:
        blocks.append(("multitask", cfg.seeds_of(cfg.multitask)))
    return "".join(f", {n} for {name}" for name, n in blocks if n != cfg.ft_seeds)


def continual_section(records: Sequence[dict], plan, sc, tasks: Sequence[str], out: Path) -> list[str]:
    """A continual scenario: its final models on every task, the forgetting matrix (every method after every
    stage on the order's tasks), forgetting per task with paired intervals, and forgetting.png."""
    order = list(sc.order)
    rows = [r for r in plan.rows if r.scenario == sc.name]
    shared = [r for r in plan.rows if r.scenario == ""]
    res = Results(records, _rows_dict(shared + rows), tasks)
    finals = [r for r in rows if r.in_table]
    lines = [f"## Scenario {sc.name}: continual fine-tuning {' → '.join(order)}", ""]
    if sc.description:
        lines += [sc.description, ""]
    lines += ["Every method after the last stage, on every task (test metrics in %, 95 % intervals; score over all "
              "tasks):", "", render_table(res, [r.label for r in shared] + [r.label for r in finals], tasks), ""]
    final = {_method_of(r): r.label for r in finals}
    reg = final.get("sequential regular FT")
    pairs = [(r.label, other, what) for r in finals
             for other, what in (("pre-trained", "the pre-trained model"), (reg, "sequential regular FT"))
             if other is not None and other != r.label]
    prev, theta0 = (final.get(f"Speech-FT, merged with {x}") for x in ("the previous stage", "θ₀"))
    if prev and theta0:  # the two ways of merging each stage
        pairs.append((prev, theta0, "Speech-FT merged with θ₀"))
    for a, other, what in pairs:
        d = res.score_difference(a, other, tasks)
        if d is not None:
            name = next(_method_of(r) for r in finals if r.label == a)
            lines.append(f"- On all tasks, {name} {_verdict(d, 'is above', 'is below')} {what} ({_pts(d)}).")
    lines += ["", "### Forgetting matrix", "",
              "Each method after each stage, on the tasks of the order (test metrics in %, 95 % intervals). Tasks not "
              "yet fine-tuned show what the earlier stages transfer.", "",
              "| method | after | " + " | ".join(f"{t} ({res.meta(t)[0]})" for t in order) + " |",
              "|---|---|" + "---|" * len(order)]
    methods = list(dict.fromkeys(_method_of(r) for r in rows))
    by = {(_method_of(r), r.stage): r.label for r in rows}
    for m in methods:
        for stage in range(1, len(order) + 1):
            if (m, stage) in by:
                cells = [_pct(res.cell(by[(m, stage)], t)) for t in order]
                lines.append(f"| {m} | {stage}: {order[stage - 1]} | " + " | ".join(cells) + " |")
    last = len(order)
    lines += ["", "Forgetting: a task's metric after the last stage minus right after it was fine-tuned (points, "
              "positive = better; paired bootstrap on the same test utterances):", "",
              "| method | " + " | ".join(order[:-1]) + " |", "|---|" + "---|" * (len(order) - 1)]
    for m in methods:
        if (m, last) not in by:
            continue
        cells = [_delta(res, by[(m, last)], by[(m, i)], order[i - 1])
                 if (m, i) in by else "–" for i in range(1, last)]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    png = plot_forgetting(res, order, methods, by, plan.dirs[sc.name] / "forgetting.png")
    lines += ["", f"![{sc.name}: forgetting]({png.relative_to(out).as_posix()})", ""]
    return lines


def plot_forgetting(res: Results, order: Sequence[str], methods: Sequence[str], by: dict, path: Path) -> Path:
    """One panel per task of the order: its test metric (%, 95 % interval) after each stage, per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..utils.plots import integer_xticks, save_figure

    fig, axes = plt.subplots(1, len(order), figsize=(4.2 * len(order), 3.6), squeeze=False)
    for ax, t in zip(axes[0], order):
        for m in methods:
            pts = [(s, res.cell(by[(m, s)], t)) for s in range(1, len(order) + 1) if (m, s) in by]
            pts = [(s, iv.scaled(100.0)) for s, iv in pts if iv is not None]
            if not pts:
                continue
            xs = [s for s, _ in pts]
            ax.errorbar(xs, [v.mean for _, v in pts], yerr=[[v.mean - v.lo for _, v in pts], [v.hi - v.mean for _, v in pts]],
                        marker="o", capsize=3, label=m)
        ax.set_title(f"{t} ({res.meta(t)[0]}{'↑' if res.meta(t)[1] else '↓'})")
        ax.set_xlabel("after stage")
        ax.set_xticks(range(1, len(order) + 1))
        integer_xticks(ax)
    axes[0][0].set_ylabel("test metric (%)")
    axes[0][-1].legend(fontsize=7, loc="best")
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return path


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
        if sc.kind == "continual":
            lines += continual_section(records, plan, sc, tasks, out)
            continue
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
        merged = set(cfg.multitask.scenarios)
        stables = [r for r in table_rows if r.role == "stable" and r.scenario in merged]
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
    lines += alpha_section(records, cfg, plan, tasks, timings)
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
