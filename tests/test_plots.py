"""The plots read well: checked on the matplotlib objects (and the file mode), not on pixels.

* weight_distance.png: layer groups are categories: bars, no line joining them, labels that do not
  overlap;
* llfc.png: R² values near 1 are plain numbers on the y axis (no ``1e-5+9.999e-1`` offset) over a
  sensible range;
* similarity.png and llfc.png: layers are whole numbers, so are their ticks;
* sweep.png (and the analysis plots): the permissions of a normal file, not mkstemp's 0600.
"""
from __future__ import annotations

import json
import os
import stat

import pytest

GROUPS = ["masked_spec_embed", "cnn", "proj", "pos_conv_embed", "other", "layer1", "layer2", "layer3", "layer4"]
MODELS = ["regular FT", "Stable-FT", "Speech-FT (α=0.25)"]


def _records() -> list[dict]:
    recs = []
    for m, model in enumerate(MODELS):
        for layer in range(3):
            recs.append({"kind": "similarity", "reference": "M0", "model": model, "layer": layer,
                         "cosine": 0.9 - 0.1 * layer * m, "cka": 0.8 - 0.05 * layer})
            for a in (0.0, 0.5, 1.0):
                r2 = 1.0 if a in (0.0, 1.0) else 0.99999 - 1e-5 * layer  # Speech-FT-like: all round to 1
                recs.append({"kind": "llfc", "reference": "M0", "model": model, "alpha": a, "layer": layer, "r2": r2})
        for g, group in enumerate(GROUPS):
            recs.append({"kind": "weight_distance", "reference": "M0", "model": model, "group": group,
                         "l2": 1.0, "relative": 0.01 * (g + 1) * (m + 1)})
    return recs


@pytest.fixture
def figures(tmp_path, monkeypatch):
    """{file name: figure} as plot_analysis draws them (the figures are kept open for inspection)."""
    from speechft.analysis import run

    path = tmp_path / "analysis.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _records()))
    figs = {}
    real_save = run._save

    def keep(fig, p):
        figs[p.name] = fig
        fig.tight_layout()
        fig.canvas.draw()
        return p

    monkeypatch.setattr(run, "_save", keep)
    run.plot_analysis(path, tmp_path)
    assert set(figs) == {"similarity.png", "llfc.png", "weight_distance.png"}
    yield figs
    import matplotlib.pyplot as plt

    monkeypatch.setattr(run, "_save", real_save)
    for f in figs.values():
        plt.close(f)


def _overlaps(boxes) -> list:
    return [(i, j) for i in range(len(boxes)) for j in range(i + 1, len(boxes)) if boxes[i].overlaps(boxes[j])]


def test_weight_distance_is_bars_with_readable_labels(figures):
    ax = figures["weight_distance.png"].axes[0]
    joined = [ln for ln in ax.get_lines() if len(ln.get_xdata()) > 1 and ln.get_linestyle() not in ("None", "")]
    assert joined == [], "categories are joined by a line"
    assert len(ax.patches) == len(GROUPS) * len(MODELS)
    labels = [t for t in ax.get_xticklabels() if t.get_text()]
    assert [t.get_text() for t in labels] == GROUPS
    renderer = figures["weight_distance.png"].canvas.get_renderer()
    boxes = [t.get_window_extent(renderer) for t in labels]
    assert _overlaps(boxes) == [], "x labels overlap"


def test_llfc_y_axis_is_plain_numbers_over_a_sensible_range(figures):
    fig = figures["llfc.png"]
    assert len(fig.axes) == len(MODELS)
    shown = []
    for ax in fig.axes:
        fmt = ax.yaxis.get_major_formatter()
        assert fmt.get_offset() == "", f"offset {fmt.get_offset()!r} on the y axis"
        labels = [t.get_text() for t in ax.get_yticklabels() if t.get_visible() and t.get_text()]
        assert not any("e" in s.lower() for s in labels), labels
        shown += labels
        lo, hi = ax.get_ylim()
        assert lo < 0.99999 - 3e-5 and 1.0 < hi <= 1.01
        assert hi - lo >= 0.01, "a range that blows up differences below 1e-4"
    assert shown, "no y tick labels at all"


@pytest.mark.parametrize("name", ["similarity.png", "llfc.png"])
def test_layer_axes_tick_whole_numbers(figures, name):
    for ax in figures[name].axes:
        lo, hi = ax.get_xlim()
        ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks


def test_plots_are_written_with_normal_permissions(tmp_path):
    from speechft.analysis.run import plot_analysis
    from speechft.merge.plot import plot_sweep

    old = os.umask(0o022)
    try:
        recs = [{"task": "lite-ks", "metric": "accuracy", "alpha": a, "value": 0.5, "higher_is_better": True}
                for a in (0.0, 0.5, 1.0)]
        written = [plot_sweep(recs, tmp_path / "sweep" / "sweep.png")]
        (tmp_path / "analysis.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _records()))
        written += plot_analysis(tmp_path / "analysis.jsonl", tmp_path)
    finally:
        os.umask(old)
    assert len(written) == 4
    for p in written:
        assert stat.S_IMODE(p.stat().st_mode) == 0o644, f"{p.name}: {oct(stat.S_IMODE(p.stat().st_mode))}"
    assert [p.name for p in (tmp_path / "sweep").iterdir()] == ["sweep.png"], "a temporary file was left behind"
