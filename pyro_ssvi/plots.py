"""Training plots from the per-epoch rows of ``metrics.jsonl``: learning curves, per-layer density.

Figures are built on a bare ``matplotlib.figure.Figure`` (Agg, no pyplot global state) and
written atomically.
"""

from __future__ import annotations

import os
from typing import Dict, List, Sequence, Union

from .fileio import atomic_write

__all__ = ["plot_density", "plot_learning_curves"]

PathLike = Union[str, os.PathLike]


def _save(fig, path: PathLike) -> str:
    atomic_write(path, lambda f: fig.savefig(f, format="png"))
    return os.fspath(path)


def _series(rows: Sequence[dict], key: str):
    pts = [(r["epoch"], r[key]) for r in rows if r.get(key) is not None]
    return [p[0] for p in pts], [p[1] for p in pts]


def plot_learning_curves(rows: Sequence[dict], path: PathLike) -> str:
    """Train loss, test accuracy, test NLL and ECE (15-bin) against epoch; returns ``path``."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 7), dpi=100)
    panels = [
        ("train_loss", "train loss (per datum, incl. beta KL)"),
        ("test_accuracy", "test accuracy"),
        ("test_nll", "test NLL (nats)"),
        ("test_ece", "test ECE (15 bins, top label, L1)"),
    ]
    for i, (key, label) in enumerate(panels):
        ax = fig.add_subplot(2, 2, i + 1)
        x, y = _series(rows, key)
        ax.plot(x, y, marker="o", markersize=3)
        ax.set(xlabel="epoch", ylabel=label)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def plot_density(rows: Sequence[dict], path: PathLike) -> str:
    """Per sparse layer: density (active / total) and the fraction of its active weights
    replaced by mask updates in each epoch; returns ``path``."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4), dpi=100)
    for i, (key, label) in enumerate(
        [("layer_density", "density (active / total)"), ("layer_replaced", "fraction of active replaced this epoch")]
    ):
        ax = fig.add_subplot(1, 2, i + 1)
        layers: Dict[str, List] = {}
        for r in rows:
            for name, value in (r.get(key) or {}).items():
                layers.setdefault(name, []).append((r["epoch"], value))
        for name, pts in layers.items():
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=".", label=name)
        ax.set(xlabel="epoch", ylabel=label, ylim=(0, 1.05 if key == "layer_density" else None))
        ax.ticklabel_format(axis="y", useOffset=False)
        ax.grid(alpha=0.3)
        if layers and len(layers) <= 12:
            ax.legend(fontsize=6)
    fig.tight_layout()
    return _save(fig, path)
