"""Evaluation of a training run: predictive metrics that depend only on the parameters, FLOPs,
and the summary table.

Each evaluation draws its posterior samples from a generator seeded by ``(seed, epoch)`` (the
training stream is left as it was), so a resumed run, or a run re-evaluated from its checkpoint,
reports exactly the numbers the uninterrupted run wrote.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Dict, Mapping, Tuple

import torch
from omegaconf import DictConfig

from ..build import DataInfo
from ..metrics import classification_metrics
from ..predictive import ClassPrediction, RegressionPrediction, predict
from ..regression_metrics import regression_metrics

__all__ = [
    "STREAMS", "evaluate", "predict_fixed", "raw_targets", "replaced_fractions", "summary_table", "training_flops",
]


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


#: The ``stream`` of each evaluation split's posterior draws (eval.ood uses 1, eval.shift 3).
STREAMS = {"test": 0, "val": 2}


def raw_targets(data, split: str = "test") -> torch.Tensor:
    """The targets of ``split`` (test or val) in their own units (a regression's are standardized
    for the model)."""
    y = data.test_y if split == "test" else data.val_y
    if not data.regression:
        return y
    return y * data.train.target_std + data.train.target_mean


def _in_target_units(prediction: RegressionPrediction, data) -> RegressionPrediction:
    scale, shift = data.train.target_std, data.train.target_mean
    return dataclasses.replace(
        prediction, mixture=prediction.mixture.affine(scale, shift),
        intervals={level: (lo * scale + shift, hi * scale + shift) for level, (lo, hi) in prediction.intervals.items()},
        returns=None if prediction.returns is None else prediction.returns * scale + shift,
    )


def evaluate(model, guide, data, cfg: DictConfig, epoch: int, split: str = "test") -> Tuple[dict, Any]:
    """Metrics of the predictive on ``split`` (``test``, or ``val``: the held-out part of the
    training split) after ``epoch``: (metrics dict, prediction). A regression's prediction and
    metrics are in the target's own units."""
    x = data.test_x if split == "test" else data.val_x
    result = predict_fixed(model, guide, x, cfg, epoch, stream=STREAMS[split])
    if data.regression:
        result = _in_target_units(result, data)
        metrics = regression_metrics(result, raw_targets(data, split).cpu())
        if "sigma" in getattr(guide, "latent_sites", {}):  # the likelihood's learned noise scale
            metrics["noise_sigma"] = float(guide.median()["sigma"]) * data.train.target_std
        return metrics, result
    return classification_metrics(result.probs.cpu(), raw_targets(data, split).cpu()), result


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


def _task_rows(final: Mapping[str, Any], cfg: DictConfig) -> list:
    if "rmse" in final:  # a regression, in the target's units
        rows = [
            ("RMSE / MAE (%d draws)" % cfg.eval.num_samples, f"{final['rmse']:.4f} / {final['mae']:.4f}"),
            ("NLL (nats)", f"{final['nll']:.4f}"),
            ("coverage of 50 / 90 / 95% intervals",
             " / ".join(f"{final[f'coverage_{p}']:.3f}" for p in (50, 90, 95))),
            ("mean width of the 90% interval", f"{final['width_90']:.4f}"),
            ("quantile calibration error", f"{final['quantile_calibration_error']:.4f}"),
            ("CRPS", f"{final['crps']:.4f}"),
        ]
        if "noise_sigma" in final:
            rows.append(("noise sigma (posterior median)", f"{final['noise_sigma']:.4f}"))
        return rows
    return [
        ("accuracy (%d draws)" % cfg.eval.num_samples, f"{final['accuracy']:.4f}"),
        ("NLL (nats)", f"{final['nll']:.4f}"),
        ("ECE (15-bin, top-label, L1)", f"{final['ece_top_label_l1_15bin']:.4f}"),
        ("calibration error (paper)", f"{final.get('calibration_error_paper', float('nan')):.4f}"),
        *[(f"OOD AUROC ({cfg.eval.ood}, {k})", f"{final[f'ood_auroc_{k}']:.4f}")
          for k in ("entropy", "mutual_information") if f"ood_auroc_{k}" in final],
    ]


def summary_table(final: Mapping[str, Any], cfg: DictConfig) -> str:
    """The run's final numbers, one per line, for the console and train.log."""
    rows = _task_rows(final, cfg)
    if "best" in final:  # data.val_size > 0: the epoch chosen on validation data, and its test scores
        best, key = final["best"], "rmse" if "rmse" in final else "accuracy"
        rows.append((f"best epoch on {best['on']} (best.pt)", f"{best['epoch']} ({best['on']} {best['value']:.4f})"))
        rows.append((f"test {key} / NLL at that epoch", f"{best['test'][key]:.4f} / {best['test']['nll']:.4f}"))
    if "shift" in final:
        mean = final["shift"]["mean"]
        rows.append((f"shift: mean accuracy, severity {' / '.join(mean)}",
                     " / ".join(f"{m['accuracy']:.3f}" for m in mean.values())))
        rows.append(("shift: mean ECE (15-bin), same severities",
                     " / ".join(f"{m['ece_top_label_l1_15bin']:.3f}" for m in mean.values())))
    rows.append(("active sigmas moved > 10% (learned?)", f"{100 * final['posterior_sigma_moved']:.1f}% "
                                                         f"({'yes' if final['posterior_learned'] else 'NO'})"))
    if "mean_mi_ood" in final:
        rows.append((f"mean MI, test / {cfg.eval.ood}", f"{final['mean_mi_test']:.4f} / {final['mean_mi_ood']:.4f}"))
    rows += [
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
