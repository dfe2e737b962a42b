"""Where a training step's device time goes: torch.profiler over steady-state steps, per kernel.

The throughput benchmark says how long a step takes; this says which kernels fill it, which is
what deciding what to fuse next needs (issue 9: the LRT noise path's elementwise ops). It runs
(a) SSVI and (d) the plain-PyTorch LRT network (the same kernels without Pyro) eagerly, profiles
``--steps`` steps after ``--warmup``, and reports per configuration:

- ``device_ms_per_step``: kernel time per step (CUDA; on CPU the operators' self CPU time);
- ``events_per_step``: kernels per step on CUDA (operator calls, nested ones included, on CPU);
- ``groups``: that time split into convolution / matmul, normalization, random numbers,
  optimizer (multi-tensor) and other elementwise kernels, by kernel name;
- ``top``: the ``--top`` kernels by total time, with their count per step.

    python bench/kernel_profile.py --device cuda --batch 128 --jsonl results.jsonl
    python bench/kernel_profile.py --device cpu --width 0.0625 --batch 4 --steps 2   # a smoke test
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
from typing import Dict, List, Optional

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from report import append_jsonl  # noqa: E402  (bench/ is not a package)
from runners import RunOptions, plain_lrt_runner, ssvi_runner, synthetic_batches  # noqa: E402

__all__ = ["GROUPS", "group_of", "profile_steps"]

#: Kernel-name fragments (lower case) per group, first match wins; anything else is "elementwise".
GROUPS = (  # normalization first: cuDNN's batch-norm kernels are named cudnn::bn_...
    ("normalization", ("batch_norm", "batchnorm", "bn_fw", "bn_bw")),
    ("conv / matmul", ("conv", "gemm", "cudnn", "cutlass", "xmma", "wgrad", "dgrad", "sm80_", "sm90_", "aten::mm",
                       "addmm", "mkldnn")),
    ("random", ("philox", "randn", "normal", "curand")),
    ("optimizer", ("multi_tensor", "foreach")),
)


def group_of(kernel: str) -> str:
    """The :data:`GROUPS` name of a kernel (``"elementwise"`` if none matches)."""
    name = kernel.lower()
    for group, fragments in GROUPS:
        if any(f in name for f in fragments):
            return group
    return "elementwise"


def profile_steps(runner, steps: int, device: torch.device, top: int) -> Dict[str, object]:
    """Profile ``steps`` calls of ``runner.step()`` (already warmed up); see the module docstring."""
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            runner.step()
        if cuda:
            torch.cuda.synchronize(device)
    totals: Dict[str, float] = collections.Counter()
    counts: Dict[str, int] = collections.Counter()
    for event in prof.events():
        if cuda:
            if event.device_type != torch.autograd.DeviceType.CUDA:
                continue
            us = event.device_time_total if hasattr(event, "device_time_total") else event.cuda_time_total
        else:
            us = event.self_cpu_time_total
        if us <= 0:
            continue
        totals[event.name] += us
        counts[event.name] += 1
    per_step_ms = {name: us / 1000 / steps for name, us in totals.items()}
    groups: Dict[str, float] = collections.Counter()
    for name, ms in per_step_ms.items():
        groups[group_of(name)] += ms
    ranked = sorted(per_step_ms.items(), key=lambda kv: kv[1], reverse=True)[:top]
    return {
        "device_ms_per_step": sum(per_step_ms.values()),
        "events_per_step": sum(counts.values()) / steps,
        "groups": {g: round(ms, 4) for g, ms in sorted(groups.items(), key=lambda kv: -kv[1])},
        "top": [{"kernel": name[:120], "ms_per_step": round(ms, 4), "per_step": counts[name] / steps}
                for name, ms in ranked],
        "time_kind": "CUDA kernel time" if cuda else "operator self CPU time",
    }


def main(argv: Optional[List[str]] = None) -> Dict[str, dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--jsonl", default=None, help="append one line per configuration here")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as the training app and the throughput benchmark
    # No mask update among the profiled steps: their kernels are the steady state's.
    opts = RunOptions(device=device, width=args.width, surgery_interval=10**6)
    batches = synthetic_batches(args.batch, 2, opts.num_classes, opts.seed, device)
    builders = {"ssvi": lambda: ssvi_runner("ssvi", opts.sparsity, batches, opts),
                "plain": lambda: plain_lrt_runner("plain", batches, opts)}
    reports = {}
    for key, build in builders.items():
        runner = build()
        for _ in range(args.warmup):
            runner.step()
        reports[key] = profile_steps(runner, args.steps, device, args.top)
        r = reports[key]
        print(f"{key}: {r['device_ms_per_step']:.2f} ms/step of {r['time_kind']}, "
              f"{r['events_per_step']:.0f} {'kernels' if device.type == 'cuda' else 'operator calls'}/step; "
              f"by group (ms): {r['groups']}")
        for row in r["top"][:10]:
            print(f"    {row['ms_per_step']:8.3f} ms  x{row['per_step']:<5g} {row['kernel'][:90]}")
        if args.jsonl:
            append_jsonl(args.jsonl, {"profile": {"config": key, "device": args.device, "width": args.width,
                                                  "batch": args.batch, "steps": args.steps}, "result": r})
        del runner
    return reports


if __name__ == "__main__":
    main()
