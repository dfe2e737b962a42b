"""Output of bench/throughput.py: the printed table and the atomically written JSON report."""

from __future__ import annotations

import json
import os
from typing import Optional

from pyro_ssvi.fileio import atomic_write

# Row labels of the configurations, in table order.
CONFIGS = {
    "ssvi": "(a) pyro_ssvi SSVI",
    "dense": "(b) pyro_ssvi dense VI",
    "det": "(c) deterministic ResNet-18",
    "plain": "(d) plain-PyTorch LRT",
    "graph": "(e) SSVI, CUDA graph",
}


def _fmt_mem(b: Optional[int]) -> str:
    return "-" if b is None else f"{b / 2**20:,.0f} MiB"


def format_table(report: dict) -> str:
    kind = "GPU max allocated" if report["meta"]["device"].startswith("cuda") else "process RSS"
    lines = [
        f"{'configuration':32s} {'img/s':>9s} {'median ms':>10s} {'IQR ms':>16s} {'p10-p90 ms':>18s} "
        f"{'peak ' + kind:>24s} {'x/(d)':>7s}"
    ]
    rat = {"ssvi": "a/d", "dense": "b/d", "det": "c/d", "graph": "e/d", "plain": None}
    for key, res in report["results"].items():
        if "skipped" in res or not res.get("images_per_s"):
            lines.append(f"{CONFIGS[key]:32s} skipped: {res.get('skipped', 'no ordinary step timed')}")
            continue
        s = res["step"]
        r = report["ratios"].get(rat[key]) if rat[key] else 1.0
        lines.append(
            f"{res['label']:32s} {res['images_per_s']:9.1f} {s['median_ms']:10.1f} "
            f"{s['p25_ms']:7.1f}-{s['p75_ms']:<8.1f} {s['p10_ms']:8.1f}-{s['p90_ms']:<9.1f} "
            f"{_fmt_mem(res['peak_memory_bytes']):>24s} {('-' if r is None else f'{r:.3f}'):>7s}"
        )
    piped = [(res["label"], res["pipelined"]) for res in report["results"].values() if "pipelined" in res]
    if piped:
        lines.append("pipelined (steps back to back, one sync per block): " + "; ".join(
            f"{label} {p['images_per_s']:.1f} img/s ({p['steps']} steps, {p['update_steps']} updates)"
            for label, p in piped))
    if "ratios_process_cpu_time" in report:
        rc = report["ratios_process_cpu_time"]
        lines.append("ratios of median process CPU time per step (robust to other tenants): " + ", ".join(
            f"{k} {v:.3f}" for k, v in rc.items() if v is not None))
    sg = report.get("surgery")
    if sg:
        ps = sg["paper_schedule"]
        lines.append(
            f"surgery: update step {sg['update_step_mean_ms']:.1f} ms (mean of {sg['measured_update_steps']}) vs "
            f"normal {sg['normal_step_median_ms']:.1f} ms -> {sg['extra_ms_per_update']:+.1f} ms per update; "
            f"on the paper's schedule ({ps['num_updates']} updates in {ps['num_steps']} steps, ΔT=100): "
            f"{100 * sg['share_of_training_time']:.2f}% of training time"
        )
    return "\n".join(lines)


def write_json_atomic(path: str, obj: dict) -> None:
    """Write to a temporary file in the same directory, then rename: never a half-written file."""
    atomic_write(path, lambda f: f.write(json.dumps(obj, indent=2).encode()))


def append_jsonl(path: str, obj: dict) -> None:
    """Append ``obj`` as one JSON line and flush it to disk: a later crash or kill keeps it."""
    with open(path, "a") as f:
        f.write(json.dumps(obj) + "\n")
        f.flush()
        os.fsync(f.fileno())
