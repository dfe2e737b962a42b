"""Train a Bayesian network (a classifier or a regression) with SSVI from a config:
``python -m pyro_ssvi.train [overrides]``.

:func:`run` does the work and returns the final metrics; :func:`main` is the thin Hydra
entry point around it. Everything that can be checked before training is checked first (the
config, the data, the OOD set, the run directory); only then is the run directory claimed
(:mod:`pyro_ssvi.training.rundir`: no run ever replaces another's results) and filled with
``config.yaml`` (resolved), ``overrides.yaml``, ``train.log``, ``metrics.jsonl`` (one row per
epoch), ``metrics.json`` (final metrics and the config), the checkpoint (and ``best.pt``, the
best-validation epoch, with ``data.val_size``) and plots. Every file is written atomically.

>>> from pyro_ssvi.config import compose
>>> final = run(compose(["train.epochs=2", "output_dir=/tmp/run", "progress=false"]))  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import random
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import hydra
import numpy as np
import pyro
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from . import checkpoint, plots
from .build import build_guide, build_model, build_optimizer, build_scheduler, build_svi, setup_guide
from .config import as_config, resolve_device, validate
from .cuda_graph import GraphedSteps
from .diagnostics import not_learned_warning, posterior_diagnostics, sigma_snapshot
from .errors import SSVIConfigError, SSVIError
from .fileio import atomic_write
from .metrics import plot_reliability_diagram
from .ood import ood_metrics
from .training.best import BestTracker, best_base, best_report, restore_best, validate_epoch
from .training.data import RunData, prepare_data, whole
from .training.distributed import Ranks, check_distributed_config
from .training.evaluation import evaluate, predict_fixed, raw_targets, replaced_fractions, summary_table, training_flops
from .training.resume import restore_run, resume_config
from .training.rundir import claim_run_dir, remove_stale_temporaries, run_log
from .training.shift import shift_metrics, shift_sets

__all__ = ["main", "run", "seed_everything"]

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def _warn_about_schedule(cfg: DictConfig, num_steps: int) -> None:
    end = int(float(cfg.method.update_end) * num_steps)
    if cfg.method.sparsity > 0 and end <= int(cfg.method.update_interval):
        log.warning(
            "no mask update will happen: %d steps with updates until step %d, but method.update_interval=%d; "
            "train longer or lower method.update_interval", num_steps, end, cfg.method.update_interval,
        )


#: Device types train.cuda_graph runs on (the tests add "cpu", with an EagerGraph as the recorder).
_GRAPH_DEVICES = ("cuda",)


def _write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


def _autocast(cfg: DictConfig, device: torch.device):
    """bf16 autocast around a training step when ``train.precision=bf16``, else nothing."""
    if cfg.train.precision == "bf16":
        # A CUDA graph must not hold autocast's cached weight casts across replays.
        return torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=not cfg.train.cuda_graph)
    return contextlib.nullcontext()


def _hydra_overrides() -> Optional[List[str]]:
    try:
        from hydra.core.hydra_config import HydraConfig

        return list(HydraConfig.get().overrides.task)
    except ValueError:  # not inside a Hydra app
        return None


def run(cfg: Union[DictConfig, Mapping[str, Any]], overrides: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Train and evaluate as ``cfg`` says; returns the final metrics (also in ``metrics.json``).

    :param overrides: the command-line overrides ``cfg`` was composed with (Hydra's, by
        default); with ``resume`` they decide which keys the user asked to change.
    :raises SSVIConfigError: a bad config value, before anything is trained or written.
    """
    cfg = as_config(cfg)
    validate(cfg)
    check_distributed_config(cfg)
    overrides = _hydra_overrides() if overrides is None else list(overrides)
    cfg, resume_state = resume_config(cfg, overrides)
    device = resolve_device(cfg.device)
    if cfg.train.cuda_graph and device.type not in _GRAPH_DEVICES:
        raise SSVIConfigError(
            f"train.cuda_graph=true needs a CUDA device, but the run is on {device}: set train.cuda_graph=false"
        )
    threads, benchmark = torch.get_num_threads(), torch.backends.cudnn.benchmark
    if device.type == "cpu" and cfg.cpu_threads is not None:
        torch.set_num_threads(int(cfg.cpu_threads))
    if device.type == "cuda":  # every step has the same shapes: let cuDNN pick its fastest kernels once
        torch.backends.cudnn.benchmark = True
    ranks, device = Ranks.start(cfg, device)  # under torchrun: joins the process group
    finished = False
    try:
        if resume_state is not None:
            ranks.check_resume(resume_state, cfg.resume)
        final = _train(cfg, resume_state, device, overrides or [], ranks)
        finished = True
        return final
    finally:
        ranks.close(finished)  # (already closed after training, unless it failed)
        torch.set_num_threads(threads)
        torch.backends.cudnn.benchmark = benchmark


def _train(cfg: DictConfig, resume_state: Optional[dict], device: torch.device, overrides: List[str],
           ranks: Ranks) -> Dict[str, Any]:
    start_time = time.perf_counter()
    seed_everything(int(cfg.seed))  # the same on every rank (rank 0's state is copied to all anyway)
    data = prepare_data(cfg, device, ranks)
    info, loader = data.info, data.loader
    num_steps = int(cfg.train.epochs) * len(loader)
    _warn_about_schedule(cfg, num_steps)

    model = ranks.convert_sync_batchnorm(build_model(cfg, info).to(device), cfg, device)
    if data.channels_last:
        model = model.to(memory_format=torch.channels_last)
    guide = build_guide(cfg, model)
    setup_guide(guide, model, info.input_shape, device)
    if data.channels_last:  # the guide's 4-D means and sigmas too, so LRT's convolutions get NHWC weights
        guide.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(cfg, model, guide)
    scheduler = build_scheduler(cfg, optimizer, num_steps)
    svi = build_svi(cfg, model, guide, optimizer, num_steps, info.num_data, distributed=ranks.sync)
    history: List[dict] = []
    start_epoch, elapsed_before = 0, 0.0
    sigma_start = sigma_snapshot(guide)
    best = BestTracker(cfg.checkpoint.best_on) if data.val is not None else None
    shift = shift_sets(cfg, data.test) if cfg.eval.shift else None
    if shift is not None:
        shift.prepare()  # generated (or read from the cache) now: a failure here costs no training
    if resume_state is not None:
        restore_run(resume_state, model, guide, optimizer, scheduler, svi, loader, cfg.resume, num_steps)
        history = list(resume_state.get("history", []))
        start_epoch = int(resume_state["epoch"])
        elapsed_before = history[-1]["elapsed_s"] if history else 0.0
        sigma_start = {k: v.to(device) for k, v in resume_state.get("sigma_start", sigma_start).items()}
        if best is not None and resume_state.get("best", {}).get("epoch") is not None:
            best.load_state_dict(resume_state["best"])
        ranks.restore(resume_state, loader, cfg.resume)  # this rank's own loader and random state
    else:
        ranks.seed_rank_streams(int(cfg.seed))  # ranks > 0: their own noise from here on
    if not ranks.is_main:  # rank 0 alone writes
        parts = _Run(None, data, model, guide, optimizer, scheduler, svi, num_steps, history, start_epoch,
                     elapsed_before, start_time, sigma_start, best, shift, ranks)
        return _loop(cfg, device, parts)[0]

    run_dir = claim_run_dir(cfg)  # everything above could fail without leaving a trace
    out = run_dir.path
    try:
        stale = remove_stale_temporaries(out)
        _write_text(out / "config.yaml", OmegaConf.to_yaml(cfg))
        _write_text(out / "overrides.yaml", OmegaConf.to_yaml(OmegaConf.create(overrides)))
        restore_best(best, out, best_base(cfg, data))
    except BaseException:
        run_dir.discard_if_empty()
        raise
    parts = _Run(out, data, model, guide, optimizer, scheduler, svi, num_steps, history, start_epoch, elapsed_before,
                 start_time, sigma_start, best, shift, ranks)
    with run_log(out / "train.log") as log_file:
        if stale:
            log.info("removed %d temporary file(s) an interrupted write left in %s", len(stale), out)
        if resume_state is not None:
            log.info("resumed from %s after epoch %d of %d", cfg.resume, start_epoch, cfg.train.epochs)
        final, table = _loop(cfg, device, parts)
        log_file.handle(logging.LogRecord(log.name, logging.INFO, __file__, 0, "final metrics\n%s", (table,), None))
    print(table, flush=True)
    return final


@dataclasses.dataclass
class _Run:
    """What the training loop works on."""

    out: Optional[Path]  # None on ranks other than 0, which write nothing
    data: RunData
    model: Any
    guide: Any
    optimizer: torch.optim.Optimizer
    scheduler: Any
    svi: Any
    num_steps: int
    history: List[dict]
    start_epoch: int
    elapsed_before: float
    start_time: float
    sigma_start: Dict[str, torch.Tensor]  # the guide's sigmas before training (posterior diagnostics)
    best: Optional[BestTracker]  # the best-validation epoch (data.val_size > 0), else None
    shift: Any  # eval.shift's ShiftSets, or None
    ranks: Ranks  # this process among the training processes (one without torchrun)


def _loop(cfg: DictConfig, device: torch.device, run: _Run) -> Tuple[Dict[str, Any], str]:
    """Train from ``run.start_epoch`` to ``train.epochs``, then evaluate and write the outputs;
    returns (final metrics, summary table)."""
    out, model, guide, svi, optimizer, history = run.out, run.model, run.guide, run.svi, run.optimizer, run.history
    data = run.data

    def state(epoch: int) -> dict:
        return {
            "config": OmegaConf.to_container(cfg), "data_info": dataclasses.asdict(data.info), "epoch": epoch,
            "normalization": data.normalization,
            "guide": guide.state_dict(), "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": run.scheduler.state_dict(),
            "svi": svi.state_dict(),
            "loader": data.loader.state_dict(), "rng": checkpoint.get_rng_state(), "history": history,
            "sigma_start": run.sigma_start,
            **({"best": run.best.state_dict()} if run.best is not None else {}),
            **run.ranks.checkpoint_fields(data.loader),  # world size; every rank's loader and RNG
        }

    headline, headline_label = ("rmse", "RMSE") if data.regression else ("accuracy", "accuracy")  # per-epoch score
    lazy = cfg.train.loss_sync == "epoch" or (cfg.train.loss_sync == "auto" and device.type == "cuda")
    step = svi.step_async if lazy else svi.step
    if cfg.train.cuda_graph:
        step = GraphedSteps(svi).step
    epochs, result, test_metrics = int(cfg.train.epochs), None, {}
    last_score = history[-1].get(f"test_{headline}") if history else None
    train_time = sum(r["epoch_time_s"] for r in history)
    main = run.ranks.is_main  # ranks > 0 only train: no evaluation, no file
    with pyro.validation_enabled(False):  # validation checks cost time on every step
        for epoch in range(run.start_epoch + 1, epochs + 1):
            model.train()
            first_step, t0, loss_sum, n = svi.step_count, time.perf_counter(), 0.0, 0
            # disable=None: no bar when stderr is not a terminal (a log file gets the epoch lines).
            bar = tqdm(data.loader, desc=f"epoch {epoch}/{epochs}", disable=None if cfg.progress and main else True,
                       leave=False, dynamic_ncols=True, mininterval=0.5)
            for x, y in bar:
                with _autocast(cfg, device):
                    loss_sum += step(x, y)  # a float, or a device tensor under step_async
                run.scheduler.step()
                n += 1
                if not bar.disable and n % 10 == 0:
                    # Under step_async the running loss lives on the device and reading it would
                    # stall the GPU's queue: the bar shows the last epoch's loss instead.
                    shown = (history[-1]["train_loss"] if history else float("nan")) if lazy else loss_sum / n
                    postfix = {"loss": f"{shown:.4f}", "density": f"{guide.density():.3f}"}
                    if last_score is not None:
                        postfix[headline_label] = last_score
                    bar.set_postfix(postfix)
            bar.close()
            svi.check_finite()
            loss_sum = float(loss_sum)
            epoch_time = time.perf_counter() - t0
            train_time += epoch_time
            row = {"epoch": epoch, "step": svi.step_count, "train_loss": loss_sum / max(n, 1)}
            if main and (epoch % int(cfg.eval.every) == 0 or epoch == epochs):
                test_metrics, result = evaluate(model, guide, data, cfg, epoch)
                last_score = round(test_metrics[headline], 4)
                row.update({f"test_{k}": v for k, v in test_metrics.items()})
                if not data.regression:
                    row["test_ece"] = test_metrics["ece_top_label_l1_15bin"]
                if run.best is not None:
                    row.update(validate_epoch(cfg, run.model, run.guide, data, run.best, out, epoch))
            row.update({
                "density": guide.density(),
                # Constant by construction (surgery keeps every count): no need to read the masks.
                "layer_density": {k: i.num_active / i.numel for k, i in guide.sites.items() if i.sparse},
                "layer_replaced": replaced_fractions(svi, guide, first_step, svi.step_count),
                "r_t": svi.drop_fraction(), "beta": svi.kl_weight(),
                # float(): a CUDA-graph run keeps the learning rates in device tensors.
                "lr": float(optimizer.param_groups[0]["lr"]), "sigma_lr": float(optimizer.param_groups[1]["lr"]),
                "images_per_s": len(data.train) / epoch_time, "epoch_time_s": epoch_time,
                "elapsed_s": run.elapsed_before + time.perf_counter() - run.start_time,
            })
            history.append(row)
            every = int(cfg.checkpoint.every)
            save = epoch == epochs or (every and epoch % every == 0)
            if main and (save or "test_nll" in row):  # (rows of the other epochs come with the next write)
                _write_text(out / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in history))
            if save:
                saved = state(epoch)  # on every rank: it gathers the ranks' loader and RNG states
                if main:
                    checkpoint.save(out / cfg.checkpoint.name, saved)
            if not main or ("test_nll" not in row and not save):
                continue
            score = row.get(f"test_{headline}")
            val = "" if "val_nll" not in row else (f", val {headline_label} {row[f'val_{headline}']:.4f} "
                                                   f"NLL {row['val_nll']:.4f}")
            log.info("epoch %d/%d: loss %.4f, test %s %s%s, %.0f examples/s", epoch, epochs, row["train_loss"],
                     headline_label, "-" if score is None else f"{score:.4f}", val, row["images_per_s"])

    run.ranks.close()  # all ranks are done with each other; rank 0 evaluates and writes alone
    if not main:
        return {}, ""
    if result is None:  # resumed from a finished run: the last epoch's evaluation, reproduced
        test_metrics, result = evaluate(model, guide, data, cfg, epochs)
    if data.ood is not None:
        ood_x, _ = whole(data.ood, int(cfg.eval.batch_size), device)
        ood_result = predict_fixed(model, guide, ood_x, cfg, epochs, stream=1)
        test_metrics = {**test_metrics, **ood_metrics(result, ood_result),
                        "mean_mi_test": float(result.mutual_information.mean()),
                        "mean_mi_ood": float(ood_result.mutual_information.mean())}
    if run.shift is not None:
        test_metrics = {**test_metrics, "shift": shift_metrics(model, guide, run.shift, cfg, epochs, device)}
    if run.best is not None:
        test_metrics = {**test_metrics, **best_report(run.best, history)}
    posterior = posterior_diagnostics(guide, run.sigma_start)
    warning = not_learned_warning(posterior)
    if warning:
        log.warning(warning)
    final = {
        **test_metrics, "density": guide.density(), "epochs": epochs, "steps": svi.step_count,
        "train_time_s": train_time, "elapsed_s": run.elapsed_before + time.perf_counter() - run.start_time,
        "device": str(device), "run_dir": str(out),
        "world_size": run.ranks.world_size, "global_batch_size": int(cfg.train.batch_size),
        **training_flops(model, guide, svi, cfg, data.info, run.num_steps, device),
        "posterior_sigma_moved": posterior["moved"], "posterior_learned": posterior["learned"],
        "posterior": posterior["layers"],
    }
    title = plots.run_title(cfg)
    if data.regression:
        plots.plot_regression(result, raw_targets(data), out / "predictions.png", title=title)
    else:
        plot_reliability_diagram(result.probs.cpu(), data.test_y.cpu(), out / "reliability.png", title=title)
    plots.plot_learning_curves(history, out / "learning_curves.png", title=title, task=data.info.task)
    plots.plot_density(history, out / "density.png", title=title)
    plots.plot_posterior(posterior["layers"], out / "posterior.png", title=title)
    if "shift" in final:
        plots.plot_shift(final["shift"], out / "shift.png", title=title)
    _write_text(out / "metrics.json", json.dumps({**final, "config": OmegaConf.to_container(cfg)}, indent=2))
    return final, summary_table(final, cfg)


@hydra.main(version_base=None, config_path="conf", config_name="config")
def _hydra_main(cfg: DictConfig) -> None:
    try:
        run(cfg)
    except SSVIError as exc:  # a config, data or file problem: the message says it all, no traceback
        print(f"error: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None


def main() -> None:
    """Command-line entry point (Hydra parses ``sys.argv``)."""
    _hydra_main()


if __name__ == "__main__":
    main()
