"""Probe reports drawn from ``results.jsonl`` only: console table, ``summary.md``, ``layer_weights.png``.

Raw metrics are always shown next to the SUPERB score (as percentages: accuracy ↑, error rates ↓),
mean ± std over seeds.
"""
from __future__ import annotations

import statistics
from pathlib import Path
from typing import Optional, Sequence

from ..utils.io import atomic_write_text, read_jsonl
from .score import profile_note, profile_of, reference_point, score_table

ARROW = {True: "↑", False: "↓"}


def _cell(e: Optional[dict]) -> str:
    if e is None:
        return "–"
    s = f"{100 * e['mean']:.2f}"
    if e["n"] > 1:
        s += f" ± {100 * e['std']:.2f}"
    return s


def _tasks(records: Sequence[dict]) -> list[str]:
    return list(dict.fromkeys(r["task"] for r in records))


def _header(records: Sequence[dict], tasks: Sequence[str]) -> list[str]:
    meta = {r["task"]: (r["metric"], r["higher_is_better"]) for r in records}
    return [f"{t} {meta[t][0].upper() if meta[t][0] != 'accuracy' else 'acc'} % {ARROW[bool(meta[t][1])]}" for t in tasks]


def table_rows(records: Sequence[dict]) -> tuple[list[str], list[list[str]]]:
    """Header and rows: model, SUPERB score, one raw-metric cell per task."""
    tasks = _tasks(records)
    header = ["model", "SUPERB score"] + _header(records, tasks)
    rows = []
    for row in score_table(records):
        n_scored = sum(1 for t in row["tasks"] if row["tasks"][t]["points"] is not None)
        score = "–" if row["score"] is None else f"{row['score']:.0f}"
        if row["score"] is not None and n_scored < len(row["tasks"]):
            score += f" ({n_scored}/{len(row['tasks'])} tasks)"
        rows.append([row["model"], score] + [_cell(row["tasks"].get(t)) for t in tasks])
    return header, rows


def format_table(records: Sequence[dict]) -> str:
    """Plain-text table for the terminal."""
    header, rows = table_rows(records)
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths))  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def _md(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def write_summary(out_dir: str | Path) -> Path:
    """Write ``summary.md`` (score table, per-task points, reference points) from the records."""
    out_dir = Path(out_dir)
    records = read_jsonl(out_dir / "results.jsonl")
    if not records:
        raise FileNotFoundError(f"no probe results in {out_dir / 'results.jsonl'}")
    header, rows = table_rows(records)
    tasks = _tasks(records)
    profile = profile_of(records)
    lines = ["# Probe results", "",
             "Frozen encoders, learnable weighted sum of all hidden states, head trained from scratch, "
             "dev-selected checkpoint, test metric (%, mean ± std over seeds).", "", profile_note(profile, tasks), "",
             _md(header, rows), ""]
    table = score_table(records)
    pts_rows = [[r["model"]] + [("–" if r["tasks"].get(t, {}).get("points") is None else f"{r['tasks'][t]['points']:.0f}")
                                for t in tasks] for r in table]
    lines += ["## SUPERB points per task", "",
              "p = 1000 · (s − s_FBANK) / (s_ref − s_FBANK); FBANK = 0, reference = 1000.", "",
              _md(["model"] + list(tasks), pts_rows), ""]
    meta = {r["task"]: (r["metric"], bool(r["higher_is_better"])) for r in records}
    refs = {t: reference_point(t, *meta[t], None, profile) for t in tasks}
    lines += ["## Reference points", "", _md(["task", "s_FBANK", "s_ref", "source"], [
        [t, "harness" if rp.fbank is None else f"{rp.fbank:g}", f"{rp.reference:g}", rp.source]
        for t, rp in refs.items()]), ""]
    missing = {(r["model"], t): why for r in table for t, why in r["missing"].items()}
    if missing:
        lines += ["## Not scored", ""] + [f"- {m} / {t}: {why}" for (m, t), why in missing.items()] + [""]
    seeds = sorted({r["seed"] for r in records})
    versions = sorted({str(r.get("package_version")) for r in records})
    gits = sorted({str(r.get("git_hash")) for r in records})
    lines += ["## Provenance", "", f"- records: {len(records)}, seeds: {seeds}",
              f"- package version(s): {', '.join(versions)}; git: {', '.join(gits)}", ""]
    path = out_dir / "summary.md"
    atomic_write_text(path, "\n".join(lines))
    return path


def plot_layer_weights(out_dir: str | Path, path: Optional[str | Path] = None) -> Optional[Path]:
    """``layer_weights.png``: softmax layer weights per task (one panel each), one line per model
    (mean over seeds), from the records only. Returns None when no record has layer weights."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    records = [r for r in read_jsonl(out_dir / "results.jsonl") if r.get("layer_weights")]
    if not records:
        return None
    tasks = _tasks(records)
    cols = min(4, len(tasks))
    nrows = (len(tasks) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(3.6 * cols, 2.8 * nrows), squeeze=False)
    for ax, t in zip(axes.flat, tasks):
        for model in dict.fromkeys(r["model"] for r in records if r["task"] == t):
            ws = [r["layer_weights"] for r in records if r["task"] == t and r["model"] == model]
            if len(ws[0]) < 2:  # a single state (FBANK) has nothing to weigh
                continue
            mean = [statistics.fmean(col) for col in zip(*ws)]
            ax.plot(range(len(mean)), mean, marker="o", label=model)
        ax.set_title(t, fontsize=10)
        ax.set_xlabel("hidden state (0 = CNN projection)", fontsize=8)
        ax.set_ylabel("softmax weight", fontsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(tasks):]:
        ax.axis("off")
    seen: dict = {}
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(lab, h)
    labels, handles = list(seen), list(seen.values())
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), fontsize=8)
    fig.tight_layout(rect=(0, 0.08 if handles else 0, 1, 1))
    path = Path(path) if path else out_dir / "layer_weights.png"
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path


def write_reports(out_dir: str | Path) -> dict:
    """summary.md + layer_weights.png; returns their paths and the console table."""
    out_dir = Path(out_dir)
    records = read_jsonl(out_dir / "results.jsonl")
    return {"summary": write_summary(out_dir), "plot": plot_layer_weights(out_dir), "table": format_table(records),
            "profile": profile_note(profile_of(records), _tasks(records)).replace("**", "")}
