"""Train a Bayesian classifier with SSVI from a config: ``python -m pyro_ssvi.train [overrides]``.

:func:`run` does the work and returns the final metrics; :func:`main` is the thin Hydra
entry point around it. A run directory receives ``config.yaml`` (resolved), ``metrics.jsonl``
(one row per epoch), ``metrics.json`` (final metrics and the config), the checkpoint and
plots. Every file is written atomically.

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
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import hydra
import numpy as np
import pyro
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from . import checkpoint, plots
from .build import DataInfo, build_guide, build_model, build_optimizer, build_scheduler, build_svi, setup_guide
from .config import as_config, channels_last_problem, resolve_device, validate
from .data import ArrayDataset, DeviceLoader, load_dataset
from .errors import SSVICheckpointError, SSVIError
from .fileio import atomic_write
from .metrics import classification_metrics, plot_reliability_diagram
from .ood import ood_dataset, ood_metrics
from .predictive import predict

__all__ = ["load_data", "main", "run", "seed_everything"]

log = logging.getLogger(__name__)

# Keys a resumed run takes from the command line; everything else comes from the checkpoint.
RUNTIME_KEYS = ("device", "progress", "output_dir", "resume")


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def load_data(cfg: DictConfig) -> Tuple[ArrayDataset, ArrayDataset]:
    """Train and test splits of ``data.name``, with ``data.normalize`` and ``data.limit_*`` applied."""
    d = cfg.data
    kwargs = dict(root=d.root, download=bool(d.download), cache_dir=d.cache_dir)
    if d.name in ("digits", "fashion_mnist"):
        kwargs = dict(root=d.root)
    splits = []
    for split, limit in (("train", d.limit_train), ("test", d.limit_test)):
        ds = load_dataset(d.name, split=split, **kwargs)
        if d.normalize is not None:
            ds = dataclasses.replace(ds, mean=tuple(d.normalize.mean), std=tuple(d.normalize.std))
        if limit is not None and limit < len(ds):
            # A fixed random subset: archives are sorted by class, so a prefix would be one class.
            ds = ds.subset(torch.randperm(len(ds), generator=torch.Generator().manual_seed(0))[:limit].sort().values)
        splits.append(ds)
    return splits[0], splits[1]


def _whole(data: ArrayDataset, batch_size: int, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
    """All of ``data`` normalized, in order: x float32 [N, C, H, W] and y int64 [N], on ``device``."""
    loader = DeviceLoader(data, batch_size, device=device, shuffle=False, generator=0)
    xs, ys = zip(*loader)
    return torch.cat(xs), torch.cat(ys)


def _output_dir(cfg: DictConfig) -> Path:
    if cfg.output_dir:
        return Path(cfg.output_dir)
    try:
        from hydra.core.hydra_config import HydraConfig

        return Path(HydraConfig.get().runtime.output_dir)
    except ValueError:  # not inside a Hydra app
        return Path("outputs") / time.strftime("run-%Y%m%d-%H%M%S")


def _write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


def _resume_config(cfg: DictConfig) -> Tuple[DictConfig, Optional[dict]]:
    """With ``resume`` set: the checkpoint's config (runtime keys from ``cfg``) and its state."""
    if not cfg.resume:
        return cfg, None
    state = checkpoint.read(cfg.resume)
    # The stored config wins; keys added to pyro_ssvi after the checkpoint was written take
    # this run's values (its defaults or overrides), so older checkpoints stay resumable.
    stored = OmegaConf.merge(OmegaConf.create(OmegaConf.to_container(cfg)), OmegaConf.create(state["config"]))
    for key in RUNTIME_KEYS:
        stored[key] = cfg[key]
    validate(stored)
    return stored, state


def _autocast(cfg: DictConfig, device: torch.device):
    """bf16 autocast around a training step when ``train.precision=bf16``, else nothing."""
    if cfg.train.precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _predict(model, guide, x: torch.Tensor, cfg: DictConfig):
    return predict(model, guide, x, num_samples=int(cfg.eval.num_samples), batch_size=int(cfg.eval.batch_size))


def _evaluate(model, guide, x: torch.Tensor, y: torch.Tensor, cfg: DictConfig):
    """Predictive over ``eval.num_samples`` draws: (metrics dict, PredictiveResult)."""
    result = _predict(model, guide, x, cfg)
    return classification_metrics(result.probs.cpu(), y.cpu()), result


def _replaced_fractions(svi, guide, first_step: int, last_step: int) -> Dict[str, float]:
    """Per sparse site: removed entries over steps [first, last) / active entries."""
    out = {name: 0.0 for name, info in guide.sites.items() if info.sparse}
    for record in svi.surgery_log:
        if first_step <= record["step"] < last_step:
            for name, change in record["sites"].items():
                out[name] += change["removed"] / guide.sites[name].num_active
    return out


def _flops(model, guide, svi, cfg: DictConfig, info: DataInfo, num_steps: int, device: torch.device) -> Dict[str, Any]:
    """Training FLOPs relative to dense VI (:func:`pyro_ssvi.flops.training_flops`; its docstring has the formula).

    ``training_flops_relative`` is the paper's accounting (sparse layers at their density);
    ``training_flops_relative_executed`` what masked dense kernels actually run here.
    """
    from .flops import training_flops

    was_training = model.training
    model.eval()  # its forward pass must not touch BatchNorm statistics
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):  # nor the RNG
            f = training_flops(
                model, guide, torch.zeros(1, *info.input_shape, device=device), num_steps,
                int(cfg.train.batch_size), update_interval=int(cfg.method.update_interval),
                update_end=float(cfg.method.update_end), addition_samples=svi.addition_samples,
            )
    finally:
        model.train(was_training)
    return {
        "training_flops_relative": f["relative_theoretical"],
        "training_flops_relative_executed": f["relative_executed"],
        "training_flops_dense_vi": f["dense_vi_flops"],
        "training_flops_ssvi": f["ssvi_theoretical_flops"],
    }


def _table(final: Mapping[str, Any], cfg: DictConfig) -> str:
    rows = [
        ("accuracy (%d draws)" % cfg.eval.num_samples, f"{final['accuracy']:.4f}"),
        ("NLL (nats)", f"{final['nll']:.4f}"),
        ("ECE (15-bin, top-label, L1)", f"{final['ece_top_label_l1_15bin']:.4f}"),
        ("calibration error (paper)", f"{final.get('calibration_error_paper', float('nan')):.4f}"),
        *[(f"OOD AUROC ({cfg.eval.ood}, {k})", f"{final[f'ood_auroc_{k}']:.4f}")
          for k in ("entropy", "mutual_information") if f"ood_auroc_{k}" in final],
        ("density", f"{final['density']:.4f}"),
        ("training FLOPs / dense VI", f"{final['training_flops_relative']:.3f} theoretical, "
                                      f"{final['training_flops_relative_executed']:.3f} executed"),
        ("training time (s)", f"{final['train_time_s']:.1f}"),
        ("total time (s)", f"{final['elapsed_s']:.1f}"),
    ]
    head = (f"{cfg.data.name} / {cfg.model.name} / {cfg.method.name} (sparsity {cfg.method.sparsity:g}, "
            f"{cfg.train.epochs} epochs, {final['device']})")
    width = max(len(k) for k, _ in rows)
    return "\n".join([head] + [f"  {k:<{width}}  {v}" for k, v in rows] + [f"  run dir: {final['run_dir']}"])


def run(cfg: Union[DictConfig, Mapping[str, Any]]) -> Dict[str, Any]:
    """Train and evaluate as ``cfg`` says; returns the final metrics (also in ``metrics.json``).

    :raises SSVIConfigError: a bad config value, before anything is trained.
    """
    cfg = as_config(cfg)
    validate(cfg)
    cfg, resume_state = _resume_config(cfg)
    device = resolve_device(cfg.device)
    threads = torch.get_num_threads()
    if device.type == "cpu" and cfg.cpu_threads is not None:
        torch.set_num_threads(int(cfg.cpu_threads))
    try:
        return _train(cfg, resume_state, device)
    finally:
        torch.set_num_threads(threads)


def _train(cfg: DictConfig, resume_state: Optional[dict], device: torch.device) -> Dict[str, Any]:
    out = _output_dir(cfg)
    out.mkdir(parents=True, exist_ok=True)
    start_time = time.perf_counter()

    seed_everything(int(cfg.seed))
    train_data, test_data = load_data(cfg)
    # Built now so that a bad OOD set fails before training, not after it.
    ood_data = ood_dataset(cfg.eval.ood, test_data, None, int(cfg.seed)) if cfg.eval.ood else None  # default roots
    info = DataInfo(train_data.image_shape, train_data.num_classes, len(train_data))
    channels_last = bool(cfg.train.channels_last) and len(info.input_shape) == 3
    if channels_last and channels_last_problem(device):
        log.warning("train.channels_last=true is ignored: %s", channels_last_problem(device))
        channels_last = False
    loader = DeviceLoader(
        train_data, int(cfg.train.batch_size), device=device, shuffle=True,
        augment=bool(cfg.data.augment), pad=int(cfg.data.pad), generator=int(cfg.seed) + 1,
        channels_last=channels_last,
    )
    test_x, test_y = _whole(test_data, int(cfg.eval.batch_size), device)
    num_steps = int(cfg.train.epochs) * len(loader)

    model = build_model(cfg, info).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    guide = build_guide(cfg, model)
    setup_guide(guide, info.input_shape, device)
    optimizer = build_optimizer(cfg, model, guide)
    scheduler = build_scheduler(cfg, optimizer, num_steps)
    svi = build_svi(cfg, model, guide, optimizer, num_steps, len(train_data))

    history: List[dict] = []
    start_epoch, elapsed_before = 0, 0.0
    if resume_state is not None:
        _restore(resume_state, model, guide, optimizer, scheduler, svi, loader, cfg.resume)
        history = list(resume_state.get("history", []))
        start_epoch = int(resume_state["epoch"])
        elapsed_before = history[-1]["elapsed_s"] if history else 0.0
    _write_text(out / "config.yaml", OmegaConf.to_yaml(cfg))

    def state(epoch: int) -> dict:
        return {
            "config": OmegaConf.to_container(cfg), "data_info": dataclasses.asdict(info), "epoch": epoch,
            "normalization": {"mean": list(train_data.mean), "std": list(train_data.std), "scale": train_data.scale},
            "guide": guide.state_dict(), "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "svi": svi.state_dict(),
            "loader": loader.state_dict(), "rng": checkpoint.get_rng_state(), "history": history,
        }

    lazy = cfg.train.loss_sync == "epoch" or (cfg.train.loss_sync == "auto" and device.type == "cuda")
    step = svi.step_async if lazy else svi.step
    epochs, result, test_metrics = int(cfg.train.epochs), None, {}
    last_acc = history[-1].get("test_accuracy") if history else None
    train_time = sum(r["epoch_time_s"] for r in history)
    with pyro.validation_enabled(False):  # validation checks cost time on every step
        for epoch in range(start_epoch + 1, epochs + 1):
            model.train()
            first_step, t0, loss_sum, n = svi.step_count, time.perf_counter(), 0.0, 0
            bar = tqdm(loader, desc=f"epoch {epoch}/{epochs}", disable=not cfg.progress, leave=False,
                       dynamic_ncols=True, mininterval=0.5)
            for x, y in bar:
                with _autocast(cfg, device):
                    loss_sum += step(x, y)  # a float, or a device tensor under step_async
                scheduler.step()
                n += 1
                if cfg.progress and n % 10 == 0:
                    bar.set_postfix(loss=f"{float(loss_sum) / n:.4f}", acc=last_acc, density=f"{guide.density():.3f}")
            bar.close()
            svi.check_finite()
            loss_sum = float(loss_sum)
            epoch_time = time.perf_counter() - t0
            train_time += epoch_time
            row = {"epoch": epoch, "step": svi.step_count, "train_loss": loss_sum / max(n, 1)}
            if epoch % int(cfg.eval.every) == 0 or epoch == epochs:
                test_metrics, result = _evaluate(model, guide, test_x, test_y, cfg)
                last_acc = round(test_metrics["accuracy"], 4)
                row.update({f"test_{k}": v for k, v in test_metrics.items()})
                row["test_ece"] = test_metrics["ece_top_label_l1_15bin"]
            row.update({
                "density": guide.density(),
                # Constant by construction (surgery keeps every count): no need to read the masks.
                "layer_density": {k: i.num_active / i.numel for k, i in guide.sites.items() if i.sparse},
                "layer_replaced": _replaced_fractions(svi, guide, first_step, svi.step_count),
                "r_t": svi.drop_fraction(), "beta": svi.kl_weight(),
                "lr": optimizer.param_groups[0]["lr"], "sigma_lr": optimizer.param_groups[1]["lr"],
                "images_per_s": len(train_data) / epoch_time, "epoch_time_s": epoch_time,
                "elapsed_s": elapsed_before + time.perf_counter() - start_time,
            })
            history.append(row)
            _write_text(out / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in history))
            every = int(cfg.checkpoint.every)
            if epoch == epochs or (every and epoch % every == 0):
                checkpoint.save(out / cfg.checkpoint.name, state(epoch))
            accuracy = row.get("test_accuracy")
            log.info("epoch %d/%d: loss %.4f, test accuracy %s, %.0f images/s", epoch, epochs, row["train_loss"],
                     "-" if accuracy is None else f"{accuracy:.4f}", row["images_per_s"])

    if result is None:  # resumed from a finished run: evaluate once more for the final numbers
        test_metrics, result = _evaluate(model, guide, test_x, test_y, cfg)
    if ood_data is not None:
        ood_x, _ = _whole(ood_data, int(cfg.eval.batch_size), device)
        test_metrics = {**test_metrics, **ood_metrics(result, _predict(model, guide, ood_x, cfg))}
    final = {
        **test_metrics, "density": guide.density(), "epochs": epochs, "steps": svi.step_count,
        "train_time_s": train_time, "elapsed_s": elapsed_before + time.perf_counter() - start_time,
        "device": str(device), "run_dir": str(out), **_flops(model, guide, svi, cfg, info, num_steps, device),
    }
    plot_reliability_diagram(result.probs.cpu(), test_y.cpu(), out / "reliability.png")
    plots.plot_learning_curves(history, out / "learning_curves.png")
    plots.plot_density(history, out / "density.png")
    _write_text(out / "metrics.json", json.dumps({**final, "config": OmegaConf.to_container(cfg)}, indent=2))
    print(_table(final, cfg), flush=True)
    return final


def _restore(state: dict, model, guide, optimizer, scheduler, svi, loader: DeviceLoader, path) -> None:
    """Put every piece of a run back to where ``state`` (a checkpoint) left it."""
    try:
        model.load_state_dict(state["model"])
        guide.load_state_dict(state["guide"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        loader.load_state_dict(state["loader"])
    except (RuntimeError, KeyError, ValueError) as exc:
        raise SSVICheckpointError(
            f"checkpoint {str(path)!r} does not match this run: {str(exc).splitlines()[0]}"
        ) from None
    svi.load_state_dict(state["svi"])
    checkpoint.set_rng_state(state["rng"])


@hydra.main(version_base=None, config_path="conf", config_name="config")
def _hydra_main(cfg: DictConfig) -> None:
    try:
        run(cfg)
    except SSVIError as exc:  # a config or data problem: the message says it all, no traceback
        print(f"error: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None


def main() -> None:
    """Command-line entry point (Hydra parses ``sys.argv``)."""
    _hydra_main()


if __name__ == "__main__":
    main()
