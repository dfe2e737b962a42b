"""Training throughput of pyro_ssvi against plain-PyTorch floors, in one process, same data.

Configurations (all CIFAR ResNet-18 at the same width, batch and data):

    (a) ssvi    pyro_ssvi SSVI, --sparsity (default 90%), TraceMeanField_ELBO, foreach SGD
    (b) dense   pyro_ssvi dense VI (sparsity 0) through the same code path
    (e) graph   (a) with its steady-state step replayed from a CUDA graph (CUDA only)
    (c) det     deterministic ResNet-18 (nn.Conv2d)
    (d) plain   plain-PyTorch LRT ResNet-18 (bench/plain_lrt.py), masks at --sparsity

Reported per configuration: images/s (batch / median step time), step time median, IQR and
p10-p90 in ms, peak memory over the timed steps (CUDA max_memory_allocated, or the process's
peak RSS on CPU, reset after the warm-up through /proc/self/clear_refs), and the step-time ratios (a)/(d), (b)/(d),
(c)/(d). Warm-up steps are excluded; on CUDA each step is bracketed by synchronize().

Surgery cost: (a) runs with ΔT = --surgery-interval so that a short run contains update steps;
their mean time minus the median normal step is the surgery's extra cost, which is then
projected onto the paper's schedule (ΔT = 100, updates until 75% of 200 epochs of 50k images at
this batch size) as a share of the total training time.

Configurations are interleaved over --rounds rounds (CPU default: after every step) so that
load from other processes on a shared machine hits every configuration alike; on CPU the
process CPU time per step is reported as well, and torch runs one intra-op thread by default.

    python bench/throughput.py --device cpu --width 0.25 --batch 32 --out bench.json
    python bench/throughput.py --device cuda                      # paper: width 1, batch 128
    python bench/throughput.py --device cuda --batch 512 --channels-last --bf16
    python bench/throughput.py --device cuda --rounds 1 --jsonl r.jsonl  # a line per configuration as it ends
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time
from typing import Dict, List, Optional

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from report import CONFIGS, append_jsonl, format_table, write_json_atomic  # noqa: E402  (bench/ is not a package)
from runners import (  # noqa: E402
    RunOptions,
    Runner,
    UnsupportedOption,
    deterministic_runner,
    plain_lrt_runner,
    ssvi_runner,
    synthetic_batches,
)



# ---------------------------------------------------------------------- measurement helpers
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        try:  # "5" resets the peak RSS (VmHWM) of this process to its current RSS (Linux >= 4.0)
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            pass


def _proc_status_bytes(field: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _peak_bytes(device: torch.device) -> Optional[int]:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return _proc_status_bytes("VmHWM")


def _percentile(values: List[float], q: float) -> float:
    """Linear-interpolated percentile, q in [0, 100]."""
    v = sorted(values)
    if not v:
        return float("nan")
    pos = (len(v) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def _stats_ms(times_s: List[float]) -> Dict[str, float]:
    ms = [t * 1e3 for t in times_s]
    return {
        "median_ms": _percentile(ms, 50),
        "p25_ms": _percentile(ms, 25),
        "p75_ms": _percentile(ms, 75),
        "p10_ms": _percentile(ms, 10),
        "p90_ms": _percentile(ms, 90),
        "mean_ms": sum(ms) / len(ms) if ms else float("nan"),
        "n": len(ms),
    }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


# ---------------------------------------------------------------------- data
def make_batches(args, device: torch.device):
    """``--num-batches`` batches ``(x [B, 3, 32, 32] float, y [B] long)`` on ``device``.

    Synthetic N(0, 1) images with uniform labels, or the first images of ``--data`` (a ``.pt``
    with ``{"x": [N, 3, H, W], "y": [N]}``; uint8 images are scaled to [0, 1]). The benchmark times
    the model, not the loader: every batch is already on the device.
    """
    if not args.data:
        return synthetic_batches(args.batch, args.num_batches, args.num_classes, args.seed, device)
    n = args.batch * args.num_batches
    blob = torch.load(args.data, map_location="cpu")
    x, y = blob["x"][:n], blob["y"][:n].long()
    if len(x) < n:
        raise SystemExit(f"--data has {len(x)} images, need batch * num_batches = {n}")
    x = (x.float() / 255 if x.dtype == torch.uint8 else x.float()).to(device)
    y = y.to(device)
    return [(x[i : i + args.batch], y[i : i + args.batch]) for i in range(0, n, args.batch)]


# ---------------------------------------------------------------------- timing
def _turn(key, runner, r, per_round, args, device, normal, update, normal_cpu, peak) -> None:
    """One runner's share of round ``r``: warm-up (first round only), then timed steps."""
    _sync(device)
    warm = args.warmup if r == 0 else 0
    for _ in range(warm):  # includes one-time costs (allocator, kernels, first trace)
        runner.step()
    _sync(device)
    # After the warm-up: the peak of training steps, not of one-time work such as cuDNN's
    # autotuning (the likely reason why (a), timed first, once peaked 1.8x above (e), its own
    # step replayed from a CUDA graph, at batch 128 on an H200).
    _reset_peak(device)
    todo = min(per_round, args.steps - r * per_round)
    for _ in range(max(0, todo)):
        is_update = runner.is_update_step()
        c0, t0 = time.process_time(), time.perf_counter()
        runner.step()
        _sync(device)
        (update if is_update else normal)[key].append(time.perf_counter() - t0)
        if not is_update:
            normal_cpu[key].append(time.process_time() - c0)
    p = _peak_bytes(device)
    if p is not None:
        peak[key] = max(peak.get(key, 0), p)


def time_runners(runners: Dict[str, Runner], args, device: torch.device, on_result=None) -> Dict[str, dict]:
    """Warm each runner up, then time ``--steps`` steps each, interleaved over ``--rounds``.

    ``on_result(key, result)`` is called as soon as a configuration's last turn is done (or it
    failed), so that a caller can keep each result even if a later configuration never ends.
    """
    normal: Dict[str, List[float]] = {k: [] for k in runners}
    update: Dict[str, List[float]] = {k: [] for k in runners}
    # Process CPU time as well as wall time: on a shared CPU machine other tenants stretch wall
    # time, not the CPU time this process spends (with one intra-op thread it is the work done).
    normal_cpu: Dict[str, List[float]] = {k: [] for k in runners}
    # On CUDA the peak is per configuration (reset before each turn). On CPU it is the process's
    # peak RSS during the configuration's turns, which includes every runner's model and the
    # heap that earlier turns left allocated: a process-wide figure, not a per-configuration one.
    peak: Dict[str, int] = {}
    per_round = max(1, math.ceil(args.steps / args.rounds))
    failed: Dict[str, str] = {}
    results = {}
    for r in range(args.rounds):
        for key, runner in runners.items():
            if key in failed:
                continue
            try:
                _turn(key, runner, r, per_round, args, device, normal, update, normal_cpu, peak)
            except Exception as e:  # one broken configuration must not lose the others' numbers
                failed[key] = f"{type(e).__name__}: {e}"[:500]
                print(f"{CONFIGS[key]} failed: {failed[key]}", file=sys.stderr)
            if r == args.rounds - 1 or key in failed:
                results[key] = _summarize(key, runners, args, device, normal, update, normal_cpu, peak, failed)
                if on_result is not None:
                    on_result(key, results[key])
    return {key: results[key] for key in runners}


def _summarize(key, runners, args, device, normal, update, normal_cpu, peak, failed) -> dict:
    """One configuration's entry of the report, from its recorded step times."""
    if key in failed:
        return {"label": CONFIGS[key], "skipped": "failed: " + failed[key]}
    s = _stats_ms(normal[key])
    res = {
        "label": CONFIGS[key],
        "step": s,
        "images_per_s": args.batch / (s["median_ms"] / 1e3) if s["n"] else None,
        "peak_memory_bytes": peak.get(key),
        "peak_memory_kind": "cuda_max_memory_allocated" if device.type == "cuda" else "process_peak_rss",
        "notes": runners[key].notes,
    }
    if update[key]:
        res["update_step"] = _stats_ms(update[key])
    if device.type == "cpu":
        res["step_process_cpu"] = _stats_ms(normal_cpu[key])
    return res


def pipelined_throughput(runners: Dict[str, Runner], results: Dict[str, dict], args, device) -> None:
    """Images/s over ``--block`` consecutive steps with one synchronization at each end.

    The per-step timing synchronizes after every step, which hides how well a configuration
    keeps a GPU's queue full while Python prepares the next step (on CPU both are the same).
    Update steps falling inside the block are counted and reported.
    """
    for key, runner in runners.items():
        res = results.get(key)
        if not args.block or not res or "skipped" in res:
            continue
        updates = 0
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(args.block):
            updates += runner.is_update_step()
            runner.step()
        _sync(device)
        res["pipelined"] = {"steps": args.block, "update_steps": updates,
                            "images_per_s": args.block * args.batch / (time.perf_counter() - t0)}


def surgery_share(results: Dict[str, dict], args) -> Optional[dict]:
    """Surgery's extra time on the paper's schedule, as a share of total training time.

    ``extra = mean(update step) - median(normal step)``; the paper's run has
    ``steps = 200 * ceil(50000 / batch)`` and an update every 100 steps before 75% of them.
    """
    res = results.get("ssvi")
    if not res or "update_step" not in res:
        return None
    from pyro_ssvi.schedule import SurgerySchedule

    steps = 200 * math.ceil(50_000 / args.batch)
    schedule = SurgerySchedule(update_interval=100, drop_fraction=0.3, update_end=0.75, num_steps=steps)
    n_updates = schedule.num_updates()
    normal_ms = res["step"]["median_ms"]
    extra_ms = res["update_step"]["mean_ms"] - normal_ms
    total_ms = steps * normal_ms + n_updates * extra_ms
    return {
        "update_step_mean_ms": res["update_step"]["mean_ms"],
        "normal_step_median_ms": normal_ms,
        "extra_ms_per_update": extra_ms,
        "measured_update_steps": res["update_step"]["n"],
        "paper_schedule": {"num_steps": steps, "update_interval": 100, "update_end": 0.75, "num_updates": n_updates},
        "share_of_training_time": n_updates * extra_ms / total_ms,
    }


def ratios(results: Dict[str, dict], stat: str = "step") -> Dict[str, Optional[float]]:
    """Median step-time ratios x/(d) for x in (a), (b), (c); ``stat="step_process_cpu"`` uses CPU time."""
    base = results.get("plain", {}).get(stat, {}).get("median_ms")
    out = {}
    for key, name in (("ssvi", "a/d"), ("dense", "b/d"), ("det", "c/d"), ("graph", "e/d")):
        t = results.get(key, {}).get(stat, {}).get("median_ms")
        out[name] = t / base if (t and base) else None
    return out


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--width", type=float, default=1.0, help="ResNet-18 channel multiplier (1 = paper)")
    p.add_argument("--batch", type=int, default=128, help="images per step (paper: 128)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per configuration (default: 30 CPU, 100 CUDA)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default: 3 CPU, 15 CUDA)")
    p.add_argument("--rounds", type=int, default=None,
                   help="interleaving rounds (default: every step on CPU, 5 on CUDA)")
    p.add_argument("--sparsity", type=float, default=0.9, help="(a)'s and (d)'s inactive fraction")
    p.add_argument("--surgery-interval", type=int, default=None,
                   help="ΔT inside the benchmark for (a) (default: steps // 3, at least 2)")
    p.add_argument("--configs", default="ssvi,dense,det,plain", help="comma-separated subset of " + ",".join(CONFIGS))
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast around forward/backward")
    p.add_argument("--library-options", action="store_true",
                   help="apply --channels-last/--bf16 to (a)/(b) from outside the library too")
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads; default 1 on CPU: on a shared machine OpenMP threads "
                        "spin-wait on busy cores (measured here: 6x slower steps with 2 threads under load)")
    p.add_argument("--block", type=int, default=None,
                   help="steps timed back to back with one sync (default: 60 on CUDA, 0 = off on CPU)")
    p.add_argument("--num-batches", type=int, default=4, help="distinct batches cycled through")
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--data", default=None, help=".pt file with {'x', 'y'} instead of synthetic data")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write the report as JSON here (atomically)")
    p.add_argument("--jsonl", default=None,
                   help="append one JSON line per configuration as it finishes, then one with the whole report "
                        "(a run cut short keeps what finished)")
    args = p.parse_args(argv)
    cuda = args.device.startswith("cuda")
    args.steps = args.steps or (100 if cuda else 30)
    args.warmup = args.warmup if args.warmup is not None else (15 if cuda else 3)
    args.rounds = max(1, min(args.rounds or (5 if cuda else args.steps), args.steps))
    args.surgery_interval = args.surgery_interval or max(2, args.steps // 3)
    args.block = args.block if args.block is not None else (60 if cuda else 0)
    unknown = set(args.configs.split(",")) - set(CONFIGS)
    if unknown:
        p.error(f"unknown --configs {sorted(unknown)}; choose from {sorted(CONFIGS)}")
    return args


def device_is_cpu(args) -> bool:
    return torch.device(args.device).type == "cpu"


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads or device_is_cpu(args):
        torch.set_num_threads(args.threads or 1)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest kernels (all configs)
    torch.manual_seed(args.seed)
    batches = make_batches(args, device)
    opts = RunOptions(device=device, width=args.width, num_classes=args.num_classes, sparsity=args.sparsity,
                      channels_last=args.channels_last, bf16=args.bf16, library_options=args.library_options,
                      surgery_interval=args.surgery_interval, seed=args.seed)
    builders = {
        "ssvi": lambda: ssvi_runner("ssvi", args.sparsity, batches, opts),
        "dense": lambda: ssvi_runner("dense", 0.0, batches, opts),
        "graph": lambda: ssvi_runner("graph", args.sparsity, batches, opts, cuda_graph=True),
        "det": lambda: deterministic_runner("det", batches, opts),
        "plain": lambda: plain_lrt_runner("plain", batches, opts),
    }
    runners, skipped = {}, {}
    for key in args.configs.split(","):
        try:
            runners[key] = builders[key]()
        except UnsupportedOption as e:
            skipped[key] = str(e)
    stream = None
    if args.jsonl:
        setup = {k: getattr(args, k) for k in ("device", "width", "batch", "bf16", "channels_last", "library_options")}

        def stream(key, res):
            append_jsonl(args.jsonl, {"bench": setup, "config": key, "result": res})

    t0 = time.perf_counter()
    results = time_runners(runners, args, device, on_result=stream)
    pipelined_throughput(runners, results, args, device)
    for key, why in skipped.items():
        results[key] = {"label": CONFIGS[key], "skipped": why}
    import pyro

    meta = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_model(),
        "cpu_model": _cpu_model(),
        "torch": torch.__version__,
        "pyro": pyro.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "timed_seconds": time.perf_counter() - t0,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "args": vars(args),
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
    }
    report = {"meta": meta, "results": results, "ratios": ratios(results), "surgery": surgery_share(results, args)}
    if device.type == "cpu":
        report["ratios_process_cpu_time"] = ratios(results, "step_process_cpu")
    print(f"{meta['device_name']} | torch {meta['torch']} | pyro {meta['pyro']} | width {args.width} | "
          f"batch {args.batch} | {args.steps} timed steps after {args.warmup} warm-up | "
          f"channels_last={args.channels_last} bf16={args.bf16}")
    print(format_table(report))
    if args.out:
        write_json_atomic(args.out, report)
    if args.jsonl:
        append_jsonl(args.jsonl, {"report": report})
    return report


if __name__ == "__main__":
    main()
