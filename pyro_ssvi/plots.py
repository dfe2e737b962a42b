"""Training plots from the per-epoch rows of ``metrics.jsonl``: learning curves, per-layer density.

Figures are built on a bare ``matplotlib.figure.Figure`` (Agg, no pyplot global state) and
written atomically. Every figure carries the run's title (:func:`run_title`); epochs are
integer ticks.
"""

from __future__ import annotations

import os
from typing import Dict, List, Optional, Sequence, Union

from .fileio import atomic_write

__all__ = ["plot_density", "plot_learning_curves", "plot_posterior", "plot_regression", "plot_shift", "run_title"]

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


def plot_learning_curves(rows: Sequence[dict], path: PathLike, title: Optional[str] = None,
                         task: str = "classification") -> str:
    """Train loss and three test metrics against epoch (accuracy, NLL, ECE; or for a regression
    RMSE, NLL and the coverage of the 90% interval); returns ``path``."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 7), dpi=100)
    panels = [("train_loss", "train loss (per datum, incl. beta KL)")]
    if task == "regression":
        panels += [("test_rmse", "test RMSE (target units)"), ("test_nll", "test NLL (nats)"),
                   ("test_coverage_90", "test coverage of the 90% interval")]
    else:
        panels += [("test_accuracy", "test accuracy"), ("test_nll", "test NLL (nats)"),
                   ("test_ece", "test ECE (15 bins, top label, L1)")]
    for i, (key, label) in enumerate(panels):
        ax = fig.add_subplot(2, 2, i + 1)
        x, y = _series(rows, key)
        ax.plot(x, y, marker="o" if len(x) <= 100 else None, markersize=3, label="test")
        vx, vy = _series(rows, "val_" + key[len("test_"):]) if key.startswith("test_") else ([], [])
        if vx:  # data.val_size > 0: the validation split beside the test set
            ax.plot(vx, vy, marker="s" if len(vx) <= 100 else None, markersize=3, label="validation")
            ax.legend(fontsize=8)
        ax.set(xlabel="epoch", ylabel=label.replace("test ", "") if vx else label)
        _epoch_axis(ax)
        ax.grid(alpha=0.3)
    return _save(fig, path, title)


def plot_shift(shift: Dict, path: PathLike, title: Optional[str] = None) -> str:
    """Accuracy and ECE (15 bins, top label) against corruption severity (0: clean), one thin line
    per corruption and the mean over corruptions in black (``shift`` as
    :func:`pyro_ssvi.training.shift.shift_metrics` returns it); returns ``path``."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.5), dpi=100)
    panels = fig.subplots(1, 2)
    severities = [0] + list(shift["severities"])
    keys = (("accuracy", "accuracy"), ("ece_top_label_l1_15bin", "ECE (15 bins, top label, L1)"))
    for ax, (key, label) in zip(panels, keys):
        for i, (name, by_severity) in enumerate(shift["corruptions"].items()):
            values = [shift["clean"][key]] + [by_severity[str(s)][key] for s in shift["severities"]]
            ax.plot(severities, values, marker=".", linewidth=1, alpha=0.8, label=name, color=colormaps["tab20"](i % 20))
        ax.plot(severities, [shift["mean"][str(s)][key] for s in severities], "k-o", linewidth=2.5, label="mean")
        ax.set(xlabel="severity (0: clean test set)", ylabel=label, xticks=severities)
        ax.grid(alpha=0.3)
    panels[1].legend(fontsize=7, ncol=2)
    return _save(fig, path, (f"{title}\n" if title else "") + f"distribution shift: {shift['images']} test images, "
                 "CIFAR-10-C-style corruptions (not the official files)")


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


def plot_posterior(layers: Dict[str, dict], path: PathLike, title: Optional[str] = None) -> str:
    """Per weight site: sigma before and after training (median, 10-90% range, log scale), the
    fraction of active sigmas that moved by more than 10%, and the median ``|mu| / sigma``
    (from :func:`pyro_ssvi.diagnostics.posterior_diagnostics`); returns ``path``."""
    from matplotlib.figure import Figure

    names = list(layers)
    rows = range(len(names))
    fig = Figure(figsize=(12, max(3.5, 0.25 * len(names) + 1.5)), dpi=100)
    sig, moved, snr = fig.subplots(1, 3, sharey=True, gridspec_kw={"width_ratios": [1.6, 1, 1]})
    for key, color, offset in (("sigma_start", "tab:gray", -0.15), ("sigma_end", "tab:blue", 0.15)):
        q = [layers[n][key] for n in names]
        med = [v["median"] for v in q]
        err = [[m - v["q10"] for m, v in zip(med, q)], [v["q90"] - m for m, v in zip(med, q)]]
        sig.errorbar(med, [r + offset for r in rows], xerr=err, fmt="o", color=color, markersize=3,
                     label="start" if key == "sigma_start" else "end", capsize=2)
    sig.set(xscale="log", xlabel="sigma of active weights (median, 10-90%)")
    sig.set_yticks(list(rows), names, fontsize=7 if len(names) > 8 else 9)
    sig.invert_yaxis()
    sig.legend(fontsize=8)
    moved.barh(list(rows), [layers[n]["moved"] for n in names], color="tab:green")
    moved.axvline(0.1, color="k", linestyle="--", linewidth=0.8)
    moved.set(xlabel="active sigmas moved > 10%", xlim=(0, 1))
    snr.barh(list(rows), [layers[n]["snr_median"] for n in names], color="tab:purple")
    snr.set(xlabel="median |mu| / sigma", xscale="log")
    for ax in (sig, moved, snr):
        ax.grid(alpha=0.3, axis="x")
    return _save(fig, path, title)


def plot_regression(prediction, y, path: PathLike, title: Optional[str] = None) -> str:
    """A regression's test predictions: predicted mean against the truth with 90% intervals, and
    its calibration, the observed coverage of central intervals (and the fraction of targets
    below each predictive quantile) against the nominal level; returns ``path``."""
    import torch
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 5), dpi=100)
    scatter, calib = fig.subplots(1, 2)
    y = y.detach().cpu().double()
    mean = prediction.mean.detach().cpu().double()
    lower, upper = (t.detach().cpu().double() for t in prediction.mixture.interval(0.9))
    inside = (y >= lower) & (y <= upper)
    for selected, color, label in ((inside, "tab:blue", "true value inside the 90% interval"),
                                   (~inside, "tab:red", "outside")):
        scatter.errorbar(y[selected], mean[selected], yerr=[(mean - lower)[selected], (upper - mean)[selected]],
                         fmt="o", markersize=3, color=color, ecolor=color, alpha=0.6, elinewidth=0.8, label=label)
    low, high = float(torch.minimum(y.min(), lower.min())), float(torch.maximum(y.max(), upper.max()))
    scatter.plot([low, high], [low, high], "k--", linewidth=1)
    scatter.set(xlabel="true value", ylabel="predicted mean (90% interval)")
    scatter.legend(fontsize=8)
    pit = prediction.mixture.cdf(y.to(prediction.mean.dtype).to(prediction.mean.device)).detach().cpu().double()
    levels = torch.linspace(0.05, 0.95, 19, dtype=torch.float64)
    coverage = [(2 * (pit - 0.5).abs() <= level).double().mean().item() for level in levels]
    below = [(pit <= level).double().mean().item() for level in levels]
    calib.plot(levels, coverage, "o-", markersize=3, label="central interval coverage")
    calib.plot(levels, below, "s-", markersize=3, label="fraction below the quantile")
    calib.plot([0, 1], [0, 1], "k--", linewidth=1, label="calibrated")
    calib.set(xlabel="nominal level", ylabel="observed fraction", xlim=(0, 1), ylim=(0, 1))
    calib.legend(fontsize=8)
    for ax in (scatter, calib):
        ax.grid(alpha=0.3)
    return _save(fig, path, title)
