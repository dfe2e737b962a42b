"""SSVI's ablations at CPU scale: removal and addition criteria, sparsity, sigma_init, update interval.

The shape of the paper's ablations (Li et al., ICLR 2024, sec. 5 and Fig. 2) on a Bayesian MLP,
trained through the library API with the data set's recipe (docs/small_data_recipes.md: exact
ELBO, SGD with momentum and a cosine schedule, rho at its own learning rate). Every cell differs
from the default (90% sparsity, ``snr_abs`` removal, ``grad`` addition, ``sigma_init="mean"``,
ΔT = 100) in one setting, so the default cell is trained once and shared by every group:

- ``a``: each removal criterion of :data:`pyro_ssvi.criteria.REMOVAL_CRITERIA`;
- ``b``: each addition criterion of :data:`pyro_ssvi.criteria.ADDITION_CRITERIA` (read at run time);
- ``c``: sparsity 0 (dense VI through the same code path) to 99%;
- ``d``: sigma of regrown weights, and the update interval ΔT.

Each (cell, seed) is one run in a worker process with one torch thread; a seed fixes the
initial weights, masks, batch order and predictive draws, so cells are compared seed by seed.
A finished run is added to ``OUT/results.jsonl`` at once (the whole file replaced atomically);
``--resume`` skips the runs found there. At the end ``OUT/ablations.md`` and ``OUT/*.png`` are
written (bench/ablations_report.py; also runnable on its own).

    python bench/ablations.py --data fashion_mnist --seeds 3 --epochs 3 --out bench/results/ablations
    python bench/ablations.py --data digits --quick --seeds 1 --out /tmp/abl   # seconds
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import math
import multiprocessing
import os
import platform
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's pyro_ssvi, whatever is installed
sys.path.insert(0, str(ROOT / "bench"))  # bench/ is not a package
# pyro_ssvi (torch, pyro) is imported where it is used, so that refusing a command costs no import.

GROUPS = ("a", "b", "c", "d")
DEFAULT_CELL = {"sparsity": 0.9, "removal": "snr_abs", "addition": "grad", "sigma_init": "mean",
                "update_interval": 100}
# --quick trains a few dozen steps per epoch: ΔT 20 there, so that masks do change.
QUICK_INTERVALS = (10, 20)
# The data sets' recipes (pyro_ssvi/conf/data/*.yaml); epochs come from the command line.
RECIPES = {
    # Hidden 256-256, not the recipe's 400-400: 1.7x faster per step, so the grid fits an hour on 2 cores.
    "fashion_mnist": {"hidden": [256, 256], "batch_size": 128, "lr": 0.05, "sigma_lr": 5.0},
    "digits": {"hidden": [256, 256], "batch_size": 64, "lr": 0.05, "sigma_lr": 1.0},
}
MOMENTUM, WEIGHT_DECAY, INIT_SCALE, EVAL_SAMPLES = 0.9, 5e-4, 1e-3, 5


def default_cell(quick: bool = False) -> dict:
    """The cell every group varies one setting of."""
    return {**DEFAULT_CELL, "update_interval": QUICK_INTERVALS[1]} if quick else dict(DEFAULT_CELL)


def group_cells(group: str, quick: bool = False) -> List[Tuple[str, str, dict]]:
    """The cells of one group: (sub-group, label of the varied value, overrides of the default)."""
    from pyro_ssvi.criteria import ADDITION_CRITERIA, REMOVAL_CRITERIA

    if group == "a":
        names = list(REMOVAL_CRITERIA)
        if quick:
            names = [DEFAULT_CELL["removal"], next(n for n in names if n != DEFAULT_CELL["removal"])]
        return [("removal", n, {"removal": n}) for n in names]
    if group == "b":
        names = list(ADDITION_CRITERIA)  # whatever the library defines now
        return [("addition", n, {"addition": n}) for n in (names[:2] if quick else names)]
    if group == "c":
        levels = [0.0, 0.9] if quick else [0.0, 0.5, 0.8, 0.9, 0.95, 0.98, 0.99]
        return [("sparsity", f"{100 * s:g}%", {"sparsity": s}) for s in levels]
    if group == "d":
        sigmas = ["mean", 0.01] if quick else ["mean", 1e-3, 1e-2, 1e-1]
        intervals = QUICK_INTERVALS if quick else [25, 50, 100, 200, 500]
        return ([("sigma_init", str(s), {"sigma_init": s}) for s in sigmas]
                + [("update_interval", str(t), {"update_interval": t}) for t in intervals])
    raise ValueError(f"unknown group {group!r}; known: {', '.join(GROUPS)}")


def cell_key(settings: dict) -> str:
    """A cell's identity: its full settings, canonical (the default cell has one key in every group)."""
    return json.dumps(settings, sort_keys=True)


def plan(groups: List[str], quick: bool) -> Tuple[List[dict], Dict[str, List[Tuple[str, str, str]]]]:
    """(unique cells in first-seen order, group -> [(sub-group, label, cell key)])."""
    cells: Dict[str, dict] = {}
    layout: Dict[str, List[Tuple[str, str, str]]] = {}
    for g in groups:
        layout[g] = []
        for sub, label, overrides in group_cells(g, quick):
            settings = {**default_cell(quick), **overrides}
            key = cell_key(settings)
            cells.setdefault(key, settings)
            layout[g].append((sub, label, key))
    return list(cells.values()), layout


# ----------------------------------------------------------------------------- one run (worker)
_DATA: Dict[str, tuple] = {}  # per worker process: data set name -> (train, test_x, test_y)


def _worker_init() -> None:
    import torch

    # Small models are Python-bound; a second intra-op thread only spins against the other worker.
    torch.set_num_threads(1)


def _data(name: str):
    if name not in _DATA:
        import torch

        from pyro_ssvi.data import load_dataset

        train, test = load_dataset(name, split="train"), load_dataset(name, split="test")
        # The training split's statistics, as the loader uses for training batches.
        mean = torch.tensor(train.mean).view(1, -1, 1, 1)
        std = torch.tensor(train.std).view(1, -1, 1, 1)
        test_x = (test.images.float() / test.scale - mean) / std
        _DATA[name] = (train, test_x, test.labels)
    return _DATA[name]


def run_one(setup: dict, settings: dict, seed: int) -> dict:
    """Train one cell at one seed and evaluate it on the test split; returns the result record.

    ``setup`` is what every cell of a grid shares: data set, epochs, hidden widths, initial sigma
    (a float, or [mean, std] for a random |N(mean, std^2)| per weight, as in the paper)."""
    import pyro
    import torch
    from pyro.infer import TraceMeanField_ELBO

    from pyro_ssvi import SSVI, MaskedAutoNormal, models
    from pyro_ssvi.data import DeviceLoader
    from pyro_ssvi.diagnostics import posterior_diagnostics, sigma_snapshot
    from pyro_ssvi.errors import NonFiniteLossError, NonFiniteOutputError
    from pyro_ssvi.metrics import classification_metrics
    from pyro_ssvi.predictive import predict

    data, epochs, recipe = setup["data"], setup["epochs"], RECIPES[setup["data"]]
    init_scale = setup["init_scale"] if isinstance(setup["init_scale"], float) else tuple(setup["init_scale"])
    train, test_x, test_y = _data(data)
    t0 = time.perf_counter()
    pyro.clear_param_store()
    pyro.enable_validation(False)  # validation checks cost time every step
    torch.manual_seed(seed)
    loader = DeviceLoader(train, recipe["batch_size"], device="cpu", generator=seed)
    model = models.mlp([math.prod(train.images.shape[1:]), *setup["hidden"], train.num_classes],
                       num_data=len(train))
    guide = MaskedAutoNormal(model, sparsity=settings["sparsity"], init_scale=init_scale, seed=seed)
    x0, y0 = next(iter(DeviceLoader(train, 2, device="cpu", shuffle=False)))
    guide(x0, y0)  # set the guide up before the optimizer sees its parameters
    num_steps = epochs * len(loader)
    optim = torch.optim.SGD([
        {"params": guide.loc_parameters() + list(model.parameters()), "lr": recipe["lr"],
         "weight_decay": WEIGHT_DECAY},
        {"params": guide.rho_parameters(), "lr": recipe["sigma_lr"], "weight_decay": 0.0},
    ], lr=recipe["lr"], momentum=MOMENTUM)
    cosine = torch.optim.lr_scheduler.LambdaLR(
        optim, lambda t: 0.5 * (1 + math.cos(math.pi * min(t, num_steps) / num_steps)))
    sigma_init = settings["sigma_init"] if settings["sigma_init"] == "mean" else float(settings["sigma_init"])
    svi = SSVI(model, guide, optim, TraceMeanField_ELBO(), num_steps=num_steps,
               update_interval=int(settings["update_interval"]), removal=settings["removal"],
               addition=settings["addition"], sigma_init=sigma_init, kl_max=1.0, kl_warmup=0.0,
               num_data=len(train))
    sigma_start = sigma_snapshot(guide)
    record = {"setup": setup, "seed": seed, "settings": settings, "key": cell_key(settings)}
    try:
        for _ in range(epochs):
            for x, y in loader:
                svi.step(x, y)
                cosine.step()
        train_time = time.perf_counter() - t0
        with torch.random.fork_rng():
            torch.manual_seed(1_000_003 + seed)  # the same predictive draws for every cell of a seed
            probs = predict(model, guide, test_x, num_samples=EVAL_SAMPLES).probs
    except (NonFiniteLossError, NonFiniteOutputError) as exc:  # a diverged cell is a result, not a crash
        return {**record, "error": f"{type(exc).__name__}: {exc}"[:500], "train_time_s": time.perf_counter() - t0}
    metrics = classification_metrics(probs, test_y)
    posterior = posterior_diagnostics(guide, sigma_start)
    return {
        **record, "accuracy": metrics["accuracy"], "nll": metrics["nll"], "ece": metrics["ece_top_label_l1_15bin"],
        "calibration_error_paper": metrics.get("calibration_error_paper"),
        "density": guide.density(), "mask_updates": len(svi.surgery_log), "steps": svi.step_count,
        "sigma_moved": posterior["moved"],
        # Per layer, over active weights: how much sigma varies decides whether SNR and |mu| rank alike.
        "sigma_end": {site: layer["sigma_end"] for site, layer in posterior["layers"].items()},
        "train_time_s": train_time, "run_time_s": time.perf_counter() - t0,
    }


# ----------------------------------------------------------------------------- results file
def load_results(path: Path) -> List[dict]:
    """The records of ``path`` (none if it does not exist)."""
    if not path.exists():
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def save_results(path: Path, records: List[dict]) -> None:
    """Replace ``path`` with all records, one JSON line each (atomic: never half a file)."""
    from pyro_ssvi.fileio import atomic_write

    text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in records)
    atomic_write(path, lambda f: f.write(text.encode()))


def run_grid(args, jobs: List[Tuple[dict, int]], records: List[dict], results_path: Path) -> None:
    """Run ``jobs`` (settings, seed) on ``args.workers`` processes, saving after each one."""
    if not jobs:
        return
    # fork: workers start without importing torch and pyro again (seconds each on a busy machine).
    # Safe because the parent runs no torch op before this point, so no OpenMP pool exists yet.
    ctx = multiprocessing.get_context("fork")
    start, done = time.perf_counter(), 0
    pool = cf.ProcessPoolExecutor(max_workers=args.workers, mp_context=ctx, initializer=_worker_init)
    try:
        futures = [pool.submit(run_one, run_setup(args), s, seed) for s, seed in jobs]
        for fut in cf.as_completed(futures):
            rec = fut.result()
            records.append(rec)
            save_results(results_path, records)
            done += 1
            status = rec.get("error") or f"acc {100 * rec['accuracy']:.2f}%, nll {rec['nll']:.3f}"
            print(f"[{done}/{len(jobs)} {time.perf_counter() - start:6.0f}s] seed {rec['seed']} "
                  f"{rec['key']}: {status} ({rec['train_time_s']:.0f}s)", flush=True)
    finally:
        # On an interrupt or error, drop the queued runs rather than wait for them (what finished is saved).
        pool.shutdown(wait=True, cancel_futures=True)


def run_setup(args) -> dict:
    """What all cells of this grid share; runs of another setup in the results file are ignored."""
    return {"data": args.data, "epochs": args.epochs, "hidden": args.hidden, "init_scale": args.init_scale}


def _floats(text: str) -> List[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", choices=sorted(RECIPES), default="fashion_mnist")
    p.add_argument("--seeds", type=int, default=3, help="number of seeds (0 .. N-1)")
    p.add_argument("--epochs", type=int, default=None, help="default: 3 (fashion_mnist), 60 (digits), 5 with --quick")
    p.add_argument("--hidden", type=_floats, default=None, help="hidden widths, e.g. 400,400 (default: 256,256)")
    p.add_argument("--init-scale", type=_floats, default=[INIT_SCALE],
                   help="initial sigma, or MEAN,STD for a random |N(MEAN, STD^2)| per weight (the paper: 6e-4,5e-4)")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "ablations")
    p.add_argument("--quick", action="store_true", help="two values per sub-group (for tests)")
    p.add_argument("--groups", default="a,b,c,d", help="comma-separated subset of a,b,c,d")
    p.add_argument("--workers", type=int, default=2, help="parallel worker processes")
    p.add_argument("--resume", action="store_true", help="keep OUT/results.jsonl and skip the runs it holds")
    args = p.parse_args(argv)
    args.groups = [g.strip() for g in args.groups.split(",") if g.strip()]
    bad = [g for g in args.groups if g not in GROUPS]
    if bad or not args.groups:
        p.error(f"--groups: unknown {bad or 'empty'}; choose from {','.join(GROUPS)}")
    if args.seeds < 1 or args.workers < 1:
        p.error("--seeds and --workers must be >= 1")
    args.hidden = [int(h) for h in (args.hidden or RECIPES[args.data]["hidden"])]
    if len(args.init_scale) not in (1, 2) or min(args.init_scale) < 0 or args.init_scale[0] <= 0:
        p.error("--init-scale: one positive float, or MEAN,STD")
    args.init_scale = args.init_scale[0] if len(args.init_scale) == 1 else args.init_scale
    if args.epochs is None:
        args.epochs = 5 if args.quick else {"fashion_mnist": 3, "digits": 60}[args.data]
    return args


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    results_path = args.out / "results.jsonl"
    records = load_results(results_path)
    if records and not args.resume:
        print(f"error: {results_path} holds {len(records)} runs; pass --resume to continue them or "
              "choose another --out", file=sys.stderr)
        return 2
    import ablations_report  # after the checks: it imports pyro_ssvi and matplotlib

    cells, layout = plan(args.groups, args.quick)
    setup = run_setup(args)
    done = {(r["key"], r["seed"]) for r in records if r["setup"] == setup}
    # Seed-major: an interrupted grid has every cell at its first seeds rather than some at all.
    jobs = [(s, seed) for seed in range(args.seeds) for s in cells if (cell_key(s), seed) not in done]
    print(f"{len(cells)} cells x {args.seeds} seeds: {len(jobs)} runs to do "
          f"({args.seeds * len(cells) - len(jobs)} found), {args.workers} workers", flush=True)
    start = time.perf_counter()
    run_grid(args, jobs, records, results_path)
    wall = time.perf_counter() - start
    meta = {"command": " ".join([os.path.basename(sys.executable), *sys.argv]), "wall_time_s": wall,
            "runs_this_invocation": len(jobs), "cpu": ablations_report.cpu_model(), "cpus": os.cpu_count(),
            "python": platform.python_version(), "setup": setup,
            "seeds": args.seeds, "workers": args.workers, "quick": args.quick,
            "recipe": {k: v for k, v in RECIPES[args.data].items() if k != "hidden"},
            "addition_criteria": [label for _, label, _ in group_cells("b")], "eval_samples": EVAL_SAMPLES}
    ablations_report.write_report(args.out, layout, records, meta, setup=setup,
                                  default_key=cell_key(default_cell(args.quick)))
    print(f"done in {wall:.0f} s; table: {args.out / 'ablations.md'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
