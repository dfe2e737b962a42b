"""Host-side cost of one training step: ATen ops, Python calls, and ops that would sync a GPU.

On a GPU the steps of pyro_ssvi and of the plain LRT network are host-bound (the H100 runs
the plain LRT step at ~29 us of host time per op), so how many kernels a step launches and how
much Python it runs set the speed. Both are properties of the program, not of the device, so
they are counted here on CPU, at any width (a count does not depend on the layer widths):

- ``compute_ops``: ATen operators dispatched (``TorchDispatchMode``), views and other
  metadata-only operators excluded: each is roughly one kernel launch on CUDA;
- ``python_calls``: calls made by Python code, to Python functions and to C functions
  (``sys.setprofile`` "call" and "c_call" events; ``python_function_calls``: the former only);
- ``syncs``: operators that make the host wait for a CUDA device: reading a value
  (``_local_scalar_dense``: ``.item()``, ``bool()``, ``float()``; ``tolist``, ``numpy``),
  data-dependent output shapes (``nonzero``, ``masked_select``, boolean indexing, ``unique``, ...).

Configurations: (a) SSVI ``step_async`` at 90% sparsity, (b) dense VI through the same path,
(c) deterministic ResNet-18, (d) plain-PyTorch LRT (bench/plain_lrt.py), (s) an SSVI surgery
step. Each is measured on a steady-state step (after ``--warmup`` steps, so one-time set-up and
first-step checks are not counted).

    python bench/opcount.py --width 1 --batch 128 --out bench/results/opcount.json
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import os
import sys
from typing import Callable, Dict

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from report import write_json_atomic  # noqa: E402  (bench/ is not a package)
from runners import (  # noqa: E402
    RunOptions,
    deterministic_runner,
    plain_lrt_runner,
    ssvi_runner,
    synthetic_batches,
)

from pyro_ssvi.sync_check import SYNC_OPS  # noqa: E402

__all__ = ["SYNC_OPS", "OpCounter", "count_step", "main"]

aten = torch.ops.aten
# Metadata-only operators that are not views by schema but launch no kernel.
_FREE_OPS = frozenset({aten.detach.default, aten.lift_fresh.default, aten.alias.default,
                       aten._unsafe_view.default, aten.empty.memory_format, aten.empty_strided.default,
                       aten.set_.source_Storage_storage_offset, aten.resize_.default})


class OpCounter(TorchDispatchMode):
    """Counts compute ops (per name) and would-be syncs dispatched inside the ``with`` block."""

    def __init__(self) -> None:
        super().__init__()
        self.compute: collections.Counter = collections.Counter()
        self.syncs: collections.Counter = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in SYNC_OPS:
            self.syncs[str(func.overloadpacket.__name__)] += 1
        if not func.is_view and func not in _FREE_OPS:
            self.compute[str(func.overloadpacket.__name__)] += 1
        return func(*args, **(kwargs or {}))


class HostReadCounter(TorchFunctionMode):
    """Counts whole-tensor reads to the host (``tolist``, ``numpy``), which a dispatch mode does
    not see; on CUDA each is a device-to-host copy that waits for the device."""

    READS = (torch.Tensor.tolist, torch.Tensor.numpy)

    def __init__(self) -> None:
        super().__init__()
        self.reads: collections.Counter = collections.Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in self.READS:
            self.reads[func.__name__] += 1
        return func(*args, **(kwargs or {}))


class PythonCallCounter:
    """Counts Python function calls (not C calls) inside the ``with`` block."""

    def __init__(self) -> None:
        self.calls = 0
        self.c_calls = 0

    def _profile(self, frame, event, arg):
        if event == "call":
            self.calls += 1
        elif event == "c_call":
            self.c_calls += 1

    def __enter__(self):
        sys.setprofile(self._profile)
        return self

    def __exit__(self, *exc):
        sys.setprofile(None)


def count_step(step: Callable[[], None]) -> Dict[str, object]:
    """Run ``step`` twice, once under each counter (counting ops doubles Python calls)."""
    with OpCounter() as ops, HostReadCounter() as reads:
        step()
    with PythonCallCounter() as calls:
        step()
    return {
        "compute_ops": sum(ops.compute.values()),
        "python_calls": calls.calls + calls.c_calls,
        "python_function_calls": calls.calls,
        "syncs": sum(ops.syncs.values()) + sum(reads.reads.values()),
        "sync_ops": dict(ops.syncs) | dict(reads.reads),
        "top_ops": dict(ops.compute.most_common(15)),
    }


def measure(width: float = 1.0, batch: int = 128, warmup: int = 2, configs: str = "a,b,c,d,s") -> Dict[str, dict]:
    """``{config: counts}`` for the configurations named in ``configs``."""
    opts = RunOptions(device=torch.device("cpu"), width=width, surgery_interval=10**6)
    batches = synthetic_batches(batch, 2, opts.num_classes, opts.seed)
    results: Dict[str, dict] = {}
    wanted = configs.split(",")
    builders = {
        "a": lambda: ssvi_runner("ssvi", opts.sparsity, batches, opts),
        "b": lambda: ssvi_runner("dense", 0.0, batches, opts),
        "c": lambda: deterministic_runner("det", batches, opts),
        "d": lambda: plain_lrt_runner("plain", batches, opts),
    }
    for key in ("a", "b", "c", "d"):
        if key in wanted:
            runner = builders[key]()
            for _ in range(warmup):
                runner.step()
            results[key] = count_step(runner.step)
    if "s" in wanted:
        runner = builders["a"]()
        svi = runner.svi
        for _ in range(warmup):
            runner.step()
        # Every step from here on is an update step; each is counted on its own.
        svi.schedule = dataclasses.replace(svi.schedule, update_interval=1)
        results["s"] = count_step(runner.step)
    return results


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--configs", default="a,b,c,d,s")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    results = measure(args.width, args.batch, args.warmup, args.configs)
    plain = results.get("d")
    report = {"width": args.width, "batch": args.batch, "torch": torch.__version__, "results": results}
    if plain:
        report["ratios_to_plain"] = {
            k: {"compute_ops": r["compute_ops"] / plain["compute_ops"],
                "python_calls": r["python_calls"] / plain["python_calls"]}
            for k, r in results.items()
        }
    print(json.dumps({k: {f: v[f] for f in ("compute_ops", "python_calls", "syncs")} for k, v in results.items()},
                     indent=1))
    if plain:
        print(json.dumps(report["ratios_to_plain"], indent=1))
    if args.out:
        write_json_atomic(args.out, report)
    return report


if __name__ == "__main__":
    main()
