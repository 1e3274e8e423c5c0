"""Plot of metric vs α per task, drawn from sweep records only."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional


def series(records: list[dict]) -> dict[tuple[str, str], dict]:
    """{(task, metric): {'alpha': [...], 'value': [...], 'std': [...], 'dev': [...], 'higher_is_better'}} by α."""
    out: dict[tuple[str, str], dict] = {}
    for r in sorted(records, key=lambda r: float(r["alpha"])):
        s = out.setdefault((r["task"], r["metric"]), {"alpha": [], "value": [], "std": [], "dev": [],
                                                      "higher_is_better": bool(r["higher_is_better"])})
        s["alpha"].append(float(r["alpha"]))
        s["value"].append(float(r["value"]))
        s["std"].append(float(r.get("std") or 0.0))
        dev = r.get("dev_value")
        s["dev"].append(float(dev) if dev is not None else math.nan)
    return out


def plot_sweep(records: list[dict], path: str | Path, selected_alpha: Optional[float] = None,
               title: str = "") -> Path:
    """One panel per (task, metric): test value (± std over seeds) and dev value vs α; written atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    data = series(records)
    if not data:
        raise ValueError("no sweep records to plot")
    n = len(data)
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(4.2 * cols, 3.2 * rows))
    FigureCanvasAgg(fig)
    for i, ((task, metric), s) in enumerate(sorted(data.items())):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.errorbar(s["alpha"], s["value"], yerr=s["std"] if any(s["std"]) else None, marker="o", label="test")
        if not all(math.isnan(d) for d in s["dev"]):
            ax.plot(s["alpha"], s["dev"], marker=".", linestyle="--", alpha=0.7, label="dev")
        if selected_alpha is not None:
            ax.axvline(selected_alpha, color="tab:red", linestyle=":", label=f"selected α={selected_alpha:g}")
        arrow = "↑" if s["higher_is_better"] else "↓"
        ax.set_title(f"{task}")
        ax.set_xlabel("α")
        ax.set_ylabel(f"{metric} {arrow}")
        ax.grid(alpha=0.3)
        if i == 0:
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    from ..utils.plots import save_figure

    return save_figure(fig, path, dpi=100)  # atomic, and 0644-style permissions (mkstemp alone gives 0600)
