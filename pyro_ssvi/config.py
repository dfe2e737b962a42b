"""Run configurations: compose them from ``pyro_ssvi/conf`` and reject bad values before training.

The Hydra configs live in the package (``pyro_ssvi/conf``, also reachable as ``configs/`` at
the repository root) so an installed package can run ``python -m pyro_ssvi.train`` anywhere.

>>> cfg = compose(["method.sparsity=0.95", "train.epochs=2"])
>>> validate(cfg)
>>> cfg.model.name, cfg.data.name, cfg.train.epochs
('mlp', 'digits', 2)
"""

from __future__ import annotations

import difflib
import functools
import re
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, Mapping, Optional, Sequence, Tuple, Union

import torch
from omegaconf import DictConfig, OmegaConf

from .corruptions import select_corruptions
from .criteria import ADDITION_CRITERIA, REMOVAL_CRITERIA
from .surgery_step import ADDITION_WINDOWS
from .variant import get_variant
from .data import DATASETS, TABLES
from .ood import OOD_SETS
from .errors import SSVIConfigError

__all__ = [
    "BEST_NAME", "BEST_ON", "CONFIG_DIR", "CPU_CHANNELS_LAST", "MODELS", "TASKS", "as_config", "channels_last_problem",
    "compose", "flat_items", "flat_values", "resolve_device", "task_of", "validate",
]

CONFIG_DIR = Path(__file__).resolve().parent / "conf"
MODELS = ("mlp", "resnet18")
LOSSES = ("mean_field", "trace")
LR_SCHEDULES = ("cosine", "constant")
OPTIMIZERS = ("sgd", "adam")
PRECISIONS = ("fp32", "bf16")
LOSS_SYNCS = ("auto", "step", "epoch")
_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")

# `hydra.run.dir` in conf/config.yaml: output_dir when set, else Hydra's dated default.
OmegaConf.register_new_resolver("ssvi_or", lambda value, default: value or default, replace=True)


def compose(overrides: Sequence[str] = ()) -> DictConfig:
    """The run config for Hydra-style ``overrides`` (e.g. ``["data=fashion_mnist"]``), resolved.

    Works outside ``@hydra.main`` (tests, notebooks); the ``hydra`` node is dropped.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():  # e.g. called from inside a Hydra app
        GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        cfg = hydra_compose(config_name="config", overrides=list(overrides))
    return as_config(cfg)


def as_config(cfg: Union[DictConfig, Mapping[str, Any]]) -> DictConfig:
    """A resolved, writable copy of ``cfg`` without Hydra's own ``hydra`` node."""
    if isinstance(cfg, DictConfig):
        container = OmegaConf.to_container(cfg, resolve=True)
    elif isinstance(cfg, Mapping):
        container = OmegaConf.to_container(OmegaConf.create(dict(cfg)), resolve=True)
    else:
        raise SSVIConfigError(f"a run config must be a DictConfig or a mapping, got {type(cfg).__name__}")
    container.pop("hydra", None)
    return OmegaConf.create(container)


def resolve_device(name: str) -> torch.device:
    """``auto`` -> ``cuda`` when available, else ``cpu``; ``cuda[:N]`` must exist."""
    if not isinstance(name, str) or not _DEVICE.match(name):
        raise SSVIConfigError(f"device={name!r} is not allowed; use one of: auto, cpu, cuda, cuda:N")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SSVIConfigError(f"device={name!r} but CUDA is not available here; use device=auto or device=cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise SSVIConfigError(
                f"device={name!r} but only {torch.cuda.device_count()} CUDA device(s) exist"
            )
    return device


#: Why channels_last is not used on CPU: it is a layout for GPU convolutions, and on CPUs whose
#: oneDNN runs its AVX2 kernels (no AVX-512) the backward of a strided 1x1 NHWC convolution with
#: fewer than 8 input channels corrupts the heap in torch 2.14 (a ResNet-18 shortcut at width
#: 0.0625: "double free or corruption"; reproduced with ONEDNN_MAX_CPU_ISA=AVX2).
CPU_CHANNELS_LAST = (
    "channels_last is a GPU layout and is not used on CPU: oneDNN's AVX2 kernel for the backward of "
    "strided 1x1 channels_last convolutions with < 8 input channels crashes the process (torch 2.14)"
)


def channels_last_problem(device: torch.device) -> Optional[str]:
    """Why ``channels_last`` must not be used on ``device`` (None: it may)."""
    return CPU_CHANNELS_LAST if device.type == "cpu" else None


#: What ``checkpoint.best_on`` may name (validation metrics only: never the test set's).
BEST_ON = ("val_nll", "val_accuracy")
#: The name of the best-validation checkpoint in a run directory.
BEST_NAME = "best.pt"

#: Keys that must be true or false (a string such as "maybe" would otherwise read as true).
BOOLEAN_KEYS = ("progress", "overwrite", "train.channels_last", "train.drop_last", "train.cuda_graph", "method.lrt",
                "data.augment", "data.download")
#: Files of a run directory that a checkpoint must not be named after.
RESERVED_NAMES = ("config.yaml", "overrides.yaml", "metrics.json", "metrics.jsonl", "train.log")


TASKS = ("classification", "regression")


def task_of(cfg: DictConfig) -> str:
    """``task``, or the data set's own (``data.task``) when null."""
    return cfg.task if cfg.task is not None else cfg.data.task


def _check_validation(cfg: DictConfig) -> None:
    """``data.val_size`` (a count, a fraction or 0) and ``checkpoint.best_on``; the size against
    the data is checked when the data are loaded."""
    size = _get(cfg, "data.val_size")
    if isinstance(size, bool) or not (
        (isinstance(size, int) and size >= 0) or (isinstance(size, float) and 0 <= size < 1)
    ):
        raise SSVIConfigError(
            f"data.val_size={size!r} is not allowed; expected an integer count >= 0 (e.g. 300), a fraction in "
            "(0, 1) (e.g. 0.1) or 0 for no validation split"
        )
    _choice(cfg, "checkpoint.best_on", BEST_ON)
    if cfg.checkpoint.best_on == "val_accuracy" and task_of(cfg) == "regression":
        raise SSVIConfigError("checkpoint.best_on=val_accuracy is for classifiers; a regression takes val_nll")


def _check_shift(cfg: DictConfig) -> None:
    names = select_corruptions(_get(cfg, "eval.shift"))
    severities = _get(cfg, "eval.shift_severities")
    if not (OmegaConf.is_list(severities) and len(severities) > 0 and all(
            isinstance(s, int) and not isinstance(s, bool) and 1 <= s <= 5 for s in severities)):
        raise SSVIConfigError(
            f"eval.shift_severities={severities!r} is not allowed; expected a non-empty list of integers 1-5"
        )
    _number(cfg, "eval.shift_limit", low=1, integer=True, none_ok=True)
    if names and task_of(cfg) == "regression":
        raise SSVIConfigError("eval.shift corrupts images; set eval.shift=null for a regression")


def _check_task(cfg: DictConfig) -> None:
    task = _get(cfg, "task")
    if task is not None and task not in TASKS:
        raise SSVIConfigError(f"task={task!r} is not allowed; allowed values: null, {', '.join(TASKS)}")
    if task is not None and task != cfg.data.task:
        kinds = {"classification": ", ".join(DATASETS), "regression": ", ".join(TABLES)}
        raise SSVIConfigError(
            f"task={task} but data={cfg.data.name} is a {cfg.data.task} data set; for {task} use data= one of "
            f"{kinds[task]}"
        )
    if task_of(cfg) == "regression":
        if cfg.model.name != "mlp":
            raise SSVIConfigError(f"model={cfg.model.name} is an image classifier; a regression takes model=mlp")
        if _get(cfg, "eval.ood") is not None:
            raise SSVIConfigError("eval.ood is for classifiers; set eval.ood=null for a regression")
    if cfg.data.name == "table":
        for key in ("data.path", "data.target"):
            if not isinstance(_get(cfg, key), str):
                raise SSVIConfigError(f"data=table needs {key} (data.path=<file.csv|.parquet> data.target=<column>)")
        _number(cfg, "data.test_fraction", low=0, high=1, low_open=True, high_open=True)


def _boolean(cfg: DictConfig, key: str) -> None:
    value = _get(cfg, key)
    if not isinstance(value, bool):
        raise SSVIConfigError(f"{key}={value!r} is not allowed; allowed values: true, false")


def flat_items(node: dict, prefix: str = "") -> Iterator[Tuple[str, Any]]:
    """``(dotted path, value)`` of every key in the plain container ``node``, mappings included
    (before their own keys); lists are values."""
    for key, value in node.items():
        path = f"{prefix}{key}"
        yield path, value
        if isinstance(value, dict):
            yield from flat_items(value, path + ".")


def flat_values(node: dict) -> Dict[str, Any]:
    """Dotted path -> value of every key of ``node`` that holds a value rather than a mapping."""
    return {path: value for path, value in flat_items(node) if not isinstance(value, dict)}


def _flat_keys(node: dict) -> Iterator[Tuple[str, bool]]:
    """``(dotted path, is a mapping)`` of every key in ``node``."""
    return ((path, isinstance(value, dict)) for path, value in flat_items(node))


@functools.lru_cache(maxsize=1)
def known_keys() -> Tuple[frozenset, frozenset]:
    """``(keys, leaves)``: every key some shipped configuration defines (each group option in
    turn), and those among them that hold a value rather than a mapping there."""
    options = [[]] + [[f"model={m}"] for m in MODELS] + [[f"data={d}"] for d in DATASETS + TABLES]
    for group in ("experiment", "method"):
        options += [[f"{group}={p.stem}"] for p in sorted((CONFIG_DIR / group).glob("*.yaml"))]
    pairs = [kv for overrides in options for kv in _flat_keys(OmegaConf.to_container(compose(overrides)))]
    return frozenset(k for k, _ in pairs), frozenset(k for k, nested in pairs if not nested)


def _check_known_keys(cfg: DictConfig) -> None:
    """Refuse keys no shipped config defines (e.g. ``+train.epoch=3``, a typo the ``+`` let in).
    Below a key that holds a value (``data.normalize: null``) any mapping may go."""
    keys, leaves = known_keys()
    for key, _ in _flat_keys(OmegaConf.to_container(cfg)):
        parts = key.split(".")
        if key in keys or any(".".join(parts[:i]) in leaves for i in range(1, len(parts))):
            continue
        close = difflib.get_close_matches(key, keys, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else "; see pyro_ssvi/conf/config.yaml for the keys"
        raise SSVIConfigError(f"unknown config key {key!r}{hint}")


def _get(cfg: DictConfig, key: str) -> Any:
    node: Any = cfg
    for part in key.split("."):
        if not isinstance(node, DictConfig) or part not in node:
            raise SSVIConfigError(f"config key {key!r} is missing; see pyro_ssvi/conf/config.yaml for its default")
        node = node[part]
    return node


def _choice(cfg: DictConfig, key: str, allowed: Iterable[str]) -> None:
    allowed = tuple(allowed)
    value = _get(cfg, key)
    if value not in allowed:
        raise SSVIConfigError(f"{key}={value!r} is not allowed; allowed values: {', '.join(allowed)}")


def _number(cfg: DictConfig, key: str, *, low: float, high: float = float("inf"), low_open: bool = False,
            high_open: bool = False, integer: bool = False, none_ok: bool = False) -> None:
    value = _get(cfg, key)
    if value is None and none_ok:
        return
    kind = int if integer else (int, float)
    ok = isinstance(value, kind) and not isinstance(value, bool)
    if ok:
        ok = (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        fmt = (lambda v: str(int(v)) if abs(v) != float("inf") else "inf") if integer else (lambda v: f"{v:g}")
        lo, hi = ("(" if low_open else "[") + fmt(low), fmt(high) + (")" if high_open else "]")
        what = "an integer" if integer else "a number"
        extra = " or null" if none_ok else ""
        raise SSVIConfigError(f"{key}={value!r} is not allowed; expected {what} in {lo}, {hi}{extra}")


def _check_addition_and_variant(cfg: DictConfig) -> None:
    """``method.addition_samples``, ``addition_window`` and ``variant``; configs written before
    they existed lack them (the defaults apply)."""
    method = cfg.method
    if "addition_samples" in method:
        _number(cfg, "method.addition_samples", low=1, integer=True)
    if "addition_window" in method:
        _choice(cfg, "method.addition_window", ADDITION_WINDOWS)
        if method.addition_window == "recent" and method.get("addition_samples", 4) > method.update_interval:
            raise SSVIConfigError(
                f"method.addition_window=recent averages over the method.addition_samples="
                f"{method.get('addition_samples', 4)} most recent minibatches before an update, which must be <= "
                f"method.update_interval={method.update_interval}"
            )
    if "variant" in method:
        variant = method.variant
        try:
            get_variant(OmegaConf.to_container(variant) if OmegaConf.is_config(variant) else variant)
        except SSVIConfigError as exc:
            raise SSVIConfigError(f"method.variant={variant!r}: {exc}") from None


def validate(cfg: DictConfig) -> None:
    """Raise :class:`SSVIConfigError` naming the first bad key and its allowed values.

    Checks only what can be checked without data (data-dependent checks happen at load time,
    still before the first training step).
    """
    _check_known_keys(cfg)
    for key in BOOLEAN_KEYS:
        _boolean(cfg, key)
    _choice(cfg, "model.name", MODELS)
    _choice(cfg, "data.name", DATASETS + TABLES)
    _check_task(cfg)
    resolve_device(_get(cfg, "device"))
    _number(cfg, "seed", low=0, high=2**32 - 1, integer=True)  # numpy's seed range
    _number(cfg, "cpu_threads", low=1, integer=True, none_ok=True)
    _number(cfg, "train.epochs", low=1, integer=True)
    _number(cfg, "train.batch_size", low=1, integer=True)
    _number(cfg, "train.lr", low=0, low_open=True)
    _number(cfg, "train.sigma_lr", low=0, low_open=True)
    _number(cfg, "train.momentum", low=0, high=1, high_open=True)
    _number(cfg, "train.weight_decay", low=0)
    _number(cfg, "train.sigma_weight_decay", low=0)
    _choice(cfg, "train.lr_schedule", LR_SCHEDULES)
    _choice(cfg, "train.optimizer", OPTIMIZERS)
    _choice(cfg, "train.precision", PRECISIONS)
    _choice(cfg, "train.loss_sync", LOSS_SYNCS)
    _number(cfg, "method.sparsity", low=0, high=1, high_open=True)
    _number(cfg, "method.update_interval", low=1, integer=True)
    if cfg.method.update_interval == 1 and cfg.method.sparsity > 0:
        raise SSVIConfigError(
            "method.update_interval=1 is not allowed with method.sparsity > 0: every step would be a mask "
            "update (no parameter step) until method.update_end. Use 2 or more (the paper: 100)"
        )
    _number(cfg, "method.drop_fraction", low=0, high=1)
    _number(cfg, "method.update_end", low=0, high=1, low_open=True)
    _choice(cfg, "method.removal", REMOVAL_CRITERIA)
    _number(cfg, "method.removal_lambda", low=0, low_open=True, none_ok=True)
    if _get(cfg, "method.removal_lambda") is not None and cfg.method.removal not in ("mean_exp_abs", "snr_exp_abs"):
        raise SSVIConfigError(
            f"method.removal_lambda applies to mean_exp_abs and snr_exp_abs only; method.removal is "
            f"{cfg.method.removal!r}: set method.removal_lambda=null or pick an exp criterion"
        )
    _choice(cfg, "method.addition", ADDITION_CRITERIA)
    _check_addition_and_variant(cfg)
    sigma_init = _get(cfg, "method.sigma_init")
    if sigma_init != "mean":
        _number(cfg, "method.sigma_init", low=0, low_open=True)
    _number(cfg, "method.kl_max", low=0)
    _number(cfg, "method.kl_warmup", low=0, high=1)
    _choice(cfg, "method.loss", LOSSES)
    _number(cfg, "model.prior_scale", low=0, low_open=True)
    _number(cfg, "model.init_loc_std", low=0, low_open=True, none_ok=True)
    init_scale = _get(cfg, "model.init_scale")
    if not (isinstance(init_scale, (int, float)) and init_scale > 0) and not (
        OmegaConf.is_list(init_scale) and len(init_scale) == 2
        and all(isinstance(v, (int, float)) and v >= 0 for v in init_scale)
    ):
        raise SSVIConfigError(
            f"model.init_scale={init_scale!r} is not allowed; expected a positive float or [mean, std] >= 0"
        )
    if cfg.model.name == "mlp":
        hidden = _get(cfg, "model.hidden")
        if not OmegaConf.is_list(hidden) or not all(isinstance(h, int) and h > 0 for h in hidden):
            raise SSVIConfigError(f"model.hidden={hidden!r} is not allowed; expected a list of positive ints")
    else:
        _number(cfg, "model.width", low=0, low_open=True)
    _number(cfg, "data.pad", low=0, integer=True)
    _number(cfg, "data.limit_train", low=1, integer=True, none_ok=True)
    _number(cfg, "data.limit_test", low=1, integer=True, none_ok=True)
    normalize = _get(cfg, "data.normalize")
    if normalize is not None and not (
        isinstance(normalize, DictConfig) and set(normalize) == {"mean", "std"}
        and all(OmegaConf.is_list(normalize[k]) for k in ("mean", "std"))
        and all(s > 0 for s in normalize.std)
    ):
        raise SSVIConfigError(
            f"data.normalize={normalize!r} is not allowed; expected null or {{mean: [...], std: [...]}} with std > 0"
        )
    _number(cfg, "eval.num_samples", low=1, integer=True)
    _number(cfg, "eval.batch_size", low=1, integer=True)
    ood = _get(cfg, "eval.ood")
    if ood is not None and ood not in OOD_SETS + DATASETS:
        raise SSVIConfigError(
            f"eval.ood={ood!r} is not allowed; allowed values: null, {', '.join(OOD_SETS + DATASETS)}"
        )
    for key in ("eval.ood_root", "data.root", "data.cache_dir", "output_dir"):
        value = _get(cfg, key)
        if value is not None and not (isinstance(value, str) and value.strip()):
            raise SSVIConfigError(f"{key}={value!r} is not allowed; expected a path or null")
    _number(cfg, "eval.every", low=1, integer=True)
    _check_validation(cfg)
    _check_shift(cfg)
    _number(cfg, "checkpoint.every", low=0, integer=True)
    name = _get(cfg, "checkpoint.name")
    if (not isinstance(name, str) or not name or name.startswith(".") or "/" in name or "\\" in name
            or name in RESERVED_NAMES + (BEST_NAME,)):
        raise SSVIConfigError(
            f"checkpoint.name={name!r} is not allowed; expected a plain file name such as checkpoint.pt (not "
            f"hidden, no '/', none of {', '.join(RESERVED_NAMES + (BEST_NAME,))})"
        )
    resume = _get(cfg, "resume")
    if resume is not None and not Path(str(resume)).is_file():
        raise SSVIConfigError(f"resume={resume!r}: no such checkpoint file")
