"""Evaluation of a training run: predictive metrics that depend only on the parameters, FLOPs,
and the summary table.

Each evaluation draws its posterior samples from a generator seeded by ``(seed, epoch)`` (the
training stream is left as it was), so a resumed run, or a run re-evaluated from its checkpoint,
reports exactly the numbers the uninterrupted run wrote.
"""

from __future__ import annotations

import contextlib
from typing import Any, Dict, Mapping, Tuple

import torch
from omegaconf import DictConfig

from ..build import DataInfo
from ..metrics import classification_metrics
from ..predictive import ClassPrediction, predict

__all__ = ["evaluate", "predict_fixed", "replaced_fractions", "summary_table", "training_flops"]


@contextlib.contextmanager
def _seeded(seed: int, device: torch.device):
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


def predict_fixed(model, guide, x: torch.Tensor, cfg: DictConfig, epoch: int, stream: int = 0) -> ClassPrediction:
    """``predict`` with ``eval.*`` settings and draws fixed by ``(seed, epoch, stream)``."""
    seed = (int(cfg.seed) * 1_000_003 + epoch * 101 + stream) % 2**63
    with _seeded(seed, x.device):
        return predict(model, guide, x, num_samples=int(cfg.eval.num_samples), batch_size=int(cfg.eval.batch_size))


def evaluate(model, guide, x: torch.Tensor, y: torch.Tensor, cfg: DictConfig, epoch: int) -> Tuple[dict, ClassPrediction]:
    """Classification metrics of the predictive after ``epoch``: (metrics dict, ClassPrediction)."""
    result = predict_fixed(model, guide, x, cfg, epoch)
    return classification_metrics(result.probs.cpu(), y.cpu()), result


def replaced_fractions(svi, guide, first_step: int, last_step: int) -> Dict[str, float]:
    """Per sparse site: removed entries over steps [first, last) / active entries."""
    out = {name: 0.0 for name, info in guide.sites.items() if info.sparse}
    for record in svi.surgery_log:
        if first_step <= record["step"] < last_step:
            for name, change in record["sites"].items():
                out[name] += change["removed"] / guide.sites[name].num_active
    return out


def training_flops(model, guide, svi, cfg: DictConfig, info: DataInfo, num_steps: int, device: torch.device) -> Dict[str, Any]:
    """Training FLOPs relative to dense VI (:func:`pyro_ssvi.flops.training_flops`; its docstring has the formula).

    ``training_flops_relative`` is the paper's accounting (sparse layers at their density);
    ``training_flops_relative_executed`` what masked dense kernels actually run here.
    """
    from ..flops import training_flops as count

    was_training = model.training
    model.eval()  # its forward pass must not touch BatchNorm statistics
    try:
        with _seeded(0, device):  # nor the RNG
            f = count(
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


def summary_table(final: Mapping[str, Any], cfg: DictConfig) -> str:
    """The run's final numbers, one per line, for the console and train.log."""
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
