"""The table and plots of bench/ablations.py: mean ± std over seeds per cell, one section per group.

    python bench/ablations_report.py --out bench/results/ablations   # redo them from results.jsonl

Writes ``OUT/ablations.md``, ``OUT/ablation_<group>.png`` and ``OUT/meta.json`` (the grid's layout
and how it was run, which this command reads back).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pyro_ssvi.fileio import atomic_write  # noqa: E402

GROUP_TITLES = {
    "a": "(a) removal criterion, 90% sparsity",
    "b": "(b) addition criterion, 90% sparsity",
    "c": "(c) sparsity (0% = dense mean-field VI)",
    "d": "(d) sigma of regrown weights and update interval ΔT, 90% sparsity",
}
METRICS = (("accuracy", "test accuracy (%)", 100.0), ("nll", "test NLL (nats)", 1.0),
           ("ece", "test ECE (15 bins)", 1.0))
DEFAULT_MARK = " (default)"


def cpu_model() -> str:
    """The CPU's model name (lscpu, else /proc/cpuinfo)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        m = re.search(r"Model name:\s*(.+)", out)
        if m:
            return m.group(1).strip()
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        m = re.search(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text())
        return m.group(1).strip() if m else "unknown"
    except OSError:
        return "unknown"


def _mean_std(values: Sequence[float]) -> Tuple[float, float]:
    """Mean and sample standard deviation (ddof 1; 0 for a single value)."""
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return mean, std


def aggregate(records: List[dict], setup: dict) -> Dict[str, dict]:
    """Cell key -> {n, failed, <metric>: (mean, std), train_time_s, seeds} over this data set's runs."""
    by_key: Dict[str, List[dict]] = {}
    for r in records:
        if r["setup"] == setup:
            by_key.setdefault(r["key"], []).append(r)
    out = {}
    for key, runs in by_key.items():
        ok = [r for r in runs if "error" not in r]
        cell = {"n": len(ok), "failed": len(runs) - len(ok), "seeds": sorted(r["seed"] for r in ok),
                "errors": sorted({r["error"] for r in runs if "error" in r})}
        cell["per_seed"] = {r["seed"]: {name: r[name] for name, _, _ in METRICS} for r in ok}
        if ok:
            for name, _, _ in METRICS:
                cell[name] = _mean_std([r[name] for r in ok])
            cell["train_time_s"] = _mean_std([r["train_time_s"] for r in ok])[0]
            cell["sigma_moved"] = _mean_std([r["sigma_moved"] for r in ok])[0]
            cell["mask_updates"] = ok[0]["mask_updates"]
        out[key] = cell
    return out


def _fmt(cell: dict, name: str, scale: float, digits: int) -> str:
    if cell.get("n", 0) == 0:
        return "-"
    mean, std = cell[name]
    return f"{scale * mean:.{digits}f} ± {scale * std:.{digits}f}"


def _is_default(key: str, default_key: str) -> bool:
    return key == default_key


def paired_delta(cell: dict, default: dict, name: str, scale: float, digits: int) -> str:
    """Mean ± std over shared seeds of (cell - default cell): seeds are paired (same init, batches,
    draws), so this is less noisy than comparing the two means."""
    seeds = sorted(set(cell.get("per_seed", {})) & set(default.get("per_seed", {})))
    if not seeds or cell is default:
        return "-"
    mean, std = _mean_std([cell["per_seed"][s][name] - default["per_seed"][s][name] for s in seeds])
    return f"{scale * mean:+.{digits}f} ± {scale * std:.{digits}f}"


def markdown_table(layout: Dict[str, list], cells: Dict[str, dict], default_key: str) -> str:
    """One markdown table per group: setting, accuracy / NLL / ECE as mean ± std, seeds, time."""
    parts = []
    for group, rows in layout.items():
        parts.append(f"### {GROUP_TITLES.get(group, group)}\n")
        parts.append("| setting | accuracy (%) | NLL | ECE | Δ accuracy vs default (pp, paired) | Δ NLL (paired) "
                     "| seeds | mask updates | sigmas moved | train s/run |")
        parts.append("|---|---|---|---|---|---|---|---|---|---|")
        for sub, label, key in rows:
            cell = cells.get(key, {"n": 0, "failed": 0})
            name = f"{sub} = {label}" + (DEFAULT_MARK if _is_default(key, default_key) else "")
            seeds = str(cell["n"]) + (f" ({cell['failed']} failed)" if cell.get("failed") else "")
            extra = ("-", "-", "-") if not cell["n"] else (
                str(cell["mask_updates"]), f"{100 * cell['sigma_moved']:.0f}%", f"{cell['train_time_s']:.0f}")
            default = cells.get(default_key, {})
            deltas = (paired_delta(cell, default, "accuracy", 100, 2), paired_delta(cell, default, "nll", 1, 4))
            parts.append(f"| {name} | {_fmt(cell, 'accuracy', 100, 2)} | {_fmt(cell, 'nll', 1, 4)} | "
                         f"{_fmt(cell, 'ece', 1, 4)} | {' | '.join(deltas)} | {seeds} | {' | '.join(extra)} |")
        for key in {k for _, _, k in rows}:
            for err in cells.get(key, {}).get("errors", []):
                parts.append(f"\nFailed run ({key}): {err}")
        parts.append("")
    return "\n".join(parts)


def plot_group(group: str, rows: list, cells: Dict[str, dict], default_key: str, path: Path, title: str) -> None:
    """A row of (accuracy, NLL, ECE) panels per sub-group; error bars are ± one std over seeds."""
    from matplotlib.figure import Figure

    subs = list(dict.fromkeys(sub for sub, _, _ in rows))
    fig = Figure(figsize=(12, 3.2 * len(subs)))
    axes = fig.subplots(len(subs), len(METRICS), squeeze=False)
    for i, sub in enumerate(subs):
        mine = [(label, key) for s, label, key in rows if s == sub and cells.get(key, {}).get("n")]
        for j, (name, ylabel, scale) in enumerate(METRICS):
            ax = axes[i][j]
            xs = list(range(len(mine)))
            means = [scale * cells[k][name][0] for _, k in mine]
            stds = [scale * cells[k][name][1] for _, k in mine]
            ordered = sub in ("sparsity", "update_interval")  # a line only where the x axis has an order
            ax.errorbar(xs, means, yerr=stds, fmt="o-" if ordered else "o", capsize=3, color="tab:blue")
            for x, (_, k), m in zip(xs, mine, means):
                if _is_default(k, default_key):
                    ax.plot([x], [m], "s", color="tab:red", markersize=8, label="default cell")
            ax.set_xticks(xs)
            ax.set_xticklabels([label for label, _ in mine], rotation=30 if len(mine) > 4 else 0, fontsize=8)
            ax.set_xlabel(sub)
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
        axes[i][0].legend(fontsize=8, loc="best")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=90))


def write_report(out: Path, layout: Dict[str, list], records: List[dict], meta: dict, *, setup: dict,
                 default_key: str) -> str:
    """Write ``ablations.md``, one PNG per group and ``meta.json`` into ``out``; returns the markdown.
    ``default_key`` names the default cell, marked in the table and plots."""
    cells = aggregate(records, setup)
    runs = [r for r in records if r["setup"] == setup]
    data, epochs = setup["data"], setup["epochs"]
    total_train = sum(r["train_time_s"] for r in runs)
    head = [
        f"# SSVI ablations: {data}, Bayesian MLP {setup['hidden']}, {epochs} epochs, initial sigma "
        f"{setup['init_scale']}\n",
        f"Command: `{meta.get('command')}`  ",
        f"Hardware: {meta.get('cpu')}, {meta.get('cpus')} CPUs visible, {meta.get('workers')} worker processes "
        "with 1 torch thread each  ",
        f"Wall time of the last invocation: {meta.get('wall_time_s', float('nan')):.0f} s for "
        f"{meta.get('runs_this_invocation')} runs; training time of all {len(runs)} runs summed: "
        f"{total_train:.0f} s  ",
        f"Cells: mean ± sample std over seeds; accuracy, NLL and ECE of the {meta.get('eval_samples')}-draw "
        "posterior predictive on the test split. Each seed fixes initial weights, masks, batch order and "
        "predictive draws, so the Δ columns are differences to the default cell seed by seed.\n",
    ]
    body = markdown_table(layout, cells, default_key)
    text = "\n".join(head) + "\n" + body
    atomic_write(out / "ablations.md", lambda f: f.write(text.encode()))
    for group, rows in layout.items():
        plot_group(group, rows, cells, default_key, out / f"ablation_{group}.png",
                   f"{GROUP_TITLES.get(group, group)} - {data}, {epochs} epochs")
    meta = {**meta, "layout": layout}
    atomic_write(out / "meta.json", lambda f: f.write(json.dumps(meta, indent=2).encode()))
    return text


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description="Redo the ablation table and plots from OUT/results.jsonl")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    from ablations import cell_key, default_cell, load_results

    meta = json.loads((args.out / "meta.json").read_text())
    layout = {g: [tuple(row) for row in rows] for g, rows in meta.pop("layout").items()}
    write_report(args.out, layout, load_results(args.out / "results.jsonl"), meta, setup=meta["setup"],
                 default_key=cell_key(default_cell(meta.get("quick", False))))
    print(args.out / "ablations.md")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "bench"))
    sys.exit(main())
