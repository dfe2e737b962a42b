"""Training plots from the per-epoch rows of ``metrics.jsonl``: learning curves, per-layer density.

Figures are built on a bare ``matplotlib.figure.Figure`` (Agg, no pyplot global state) and
written atomically. Every figure carries the run's title (:func:`run_title`); epochs are
integer ticks.
"""

from __future__ import annotations

import os
from typing import Dict, List, Optional, Sequence, Union

from .fileio import atomic_write

__all__ = ["plot_density", "plot_learning_curves", "run_title"]

PathLike = Union[str, os.PathLike]


def run_title(cfg) -> str:
    """``data / model / method, sparsity s, N epochs`` of a run config."""
    return (f"{cfg.data.name} / {cfg.model.name} / {cfg.method.name}, sparsity {cfg.method.sparsity:g}, "
            f"{cfg.train.epochs} epochs")


def _save(fig, path: PathLike, title: Optional[str]) -> str:
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png"))
    return os.fspath(path)


def _epoch_axis(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # a 2-epoch run: ticks 1, 2, not 1.25 ...


def _series(rows: Sequence[dict], key: str):
    pts = [(r["epoch"], r[key]) for r in rows if r.get(key) is not None]
    return [p[0] for p in pts], [p[1] for p in pts]


def plot_learning_curves(rows: Sequence[dict], path: PathLike, title: Optional[str] = None) -> str:
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
        _epoch_axis(ax)
        ax.grid(alpha=0.3)
    return _save(fig, path, title)


def plot_density(rows: Sequence[dict], path: PathLike, title: Optional[str] = None) -> str:
    """Per sparse layer: its density (active / total; constant, so one bar per layer) and the
    fraction of its active weights replaced by mask updates in each epoch (one line per layer,
    coloured from the input layer to the output layer); returns ``path``."""
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    density = (rows[-1].get("layer_density") or {}) if rows else {}
    replaced: Dict[str, List] = {}
    for r in rows:
        for name, value in (r.get("layer_replaced") or {}).items():
            replaced.setdefault(name, []).append((r["epoch"], value))
    names = list(density) or list(replaced)
    fig = Figure(figsize=(11, max(4.0, 0.22 * len(names) + 1.5)), dpi=100)
    bars, lines = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1.4]})
    cmap = colormaps["viridis"]
    colors = {name: cmap(i / max(len(names) - 1, 1)) for i, name in enumerate(names)}
    bars.barh(range(len(names)), [density.get(n, 0.0) for n in names], color=[colors[n] for n in names])
    bars.set_yticks(range(len(names)), names, fontsize=7 if len(names) > 8 else 9)
    bars.invert_yaxis()  # input layer on top
    bars.set(xlabel="density (active / total)", xlim=(0, 1.0))
    for i, name in enumerate(names):
        bars.annotate(f"{density.get(name, 0.0):.3f}", (density.get(name, 0.0), i), xytext=(3, 0),
                      textcoords="offset points", va="center", fontsize=7)
    for name in names:
        pts = replaced.get(name, [])
        lines.plot([p[0] for p in pts], [p[1] for p in pts], marker=".", color=colors[name], label=name)
    lines.set(xlabel="epoch", ylabel="fraction of active weights replaced in the epoch")
    _epoch_axis(lines)
    lines.grid(alpha=0.3)
    if 0 < len(names) <= 8:
        lines.legend(fontsize=7)
    elif names:  # too many for a legend: the colour says where the layer sits
        bar = fig.colorbar(ScalarMappable(Normalize(1, len(names)), cmap), ax=lines)
        bar.set_label("layer (1 = input side, as listed on the left)")
    return _save(fig, path, title)
