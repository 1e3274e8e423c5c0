"""Small matplotlib helpers shared by every plot speechft writes."""
from __future__ import annotations

import io
from pathlib import Path


def save_figure(fig, path: str | Path, dpi: int = 110) -> Path:
    """Write ``fig`` as PNG atomically, with the permissions a plain ``open()`` gives (not 0600)."""
    from .io import atomic_write_bytes

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    atomic_write_bytes(path, buf.getvalue())
    return path


def integer_xticks(ax) -> None:
    """Ticks on whole numbers only (layers, steps): never 0.5, 1.5, ..."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def plain_yticks(ax) -> None:
    """Tick labels as plain numbers: no offset (``1e-5+9.999e-1``) and no scientific notation."""
    from matplotlib.ticker import ScalarFormatter

    fmt = ScalarFormatter(useOffset=False)
    fmt.set_scientific(False)
    ax.yaxis.set_major_formatter(fmt)
