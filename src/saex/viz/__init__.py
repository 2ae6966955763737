"""Plots (matplotlib, written as PNG beside the JSON they are drawn from) and the static dashboard site."""

from __future__ import annotations

from pathlib import Path

from saex.files import write_json_atomic


def save_figure(fig, path: Path, data, dpi: int = 110, tight: bool = True) -> Path:
    """Write ``fig`` as ``path`` (PNG) and ``data``, exactly the plotted numbers, as the JSON beside it; close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight" if tight else None)
    plt.close(fig)
    write_json_atomic(path.with_suffix(".json"), data)
    return path
