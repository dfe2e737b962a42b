"""Helpers of bench/gpu_run.sh: the checks before a GPU session (gpu_checks.py) and the steps
between its parts.

    python3 bench/gpu_tools.py check-static            # wheels in .whl/, size of what travels, data archive
    python3 bench/gpu_tools.py check-out OUT_DIR       # what $OUT would send back: count, sizes, names
    python3 bench/gpu_tools.py preflight --device cuda # imports the session needs; exit 1 with a reason
    python3 bench/gpu_tools.py tiny-archive SRC DST --per-class N
    python3 bench/gpu_tools.py epochs RESULTS_JSONL --seconds S --max N
    python3 bench/gpu_tools.py collect-train RUN_DIR RESULTS_JSONL
    python3 bench/gpu_tools.py summary RESULTS_JSONL

Only the standard library and ``packaging`` at import time: ``check-*`` must run where torch or
the project's own dependencies are missing, and say what is missing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tarfile
from pathlib import Path
from typing import Dict, List, Optional, Tuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from gpu_checks import (  # noqa: E402  (bench/ is not a package)
    REPO,
    check_data,
    check_out,
    check_travel,
    check_wheels,
    part_failures,
    setup_requirements,
)


# ------------------------------------------------------------------------------ between parts
def preflight(device: str) -> int:
    """Import what every part needs; print versions. Non-zero exit with the reason on failure."""
    steps = [
        ("torch", "import torch"),
        ("pyro-ppl (wheel)", "import pyro"),
        ("hydra-core, omegaconf, antlr4 (wheels)", "import hydra, omegaconf, antlr4"),
        ("uncertainty-calibration (wheel; pyro_ssvi.metrics.paper_calibration_error)", "import calibration"),
        ("pyro_ssvi and its training app", "import pyro_ssvi, pyro_ssvi.train, pyro_ssvi.metrics"),
    ]
    for what, code in steps:
        try:
            exec(code, {})
        except Exception as exc:  # noqa: BLE001 - any failure here must stop the session with its reason
            print(f"PREFLIGHT FAILED: cannot import {what}: {type(exc).__name__}: {exc}\n"
                  f"Expected the carried wheels (.whl/) installed on PYTHONPATH={os.environ.get('PYTHONPATH')}; "
                  f"run `bash bench/gpu_run.sh --check` here and rebuild .whl/ per the script's header.")
            return 1
    import calibration
    import hydra
    import pyro
    import torch

    from pyro_ssvi.metrics import paper_calibration_error

    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    ce = paper_calibration_error(probs, torch.tensor([0, 1, 1, 1]))  # the library call, not just the import
    print(f"python {sys.version.split()[0]} | torch {torch.__version__} | pyro {pyro.__version__} | "
          f"hydra {hydra.__version__} | calibration {getattr(calibration, '__file__', '?')} | "
          f"paper_calibration_error ok ({ce:.4f})")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            print("PREFLIGHT FAILED: torch.cuda.is_available() is False; expected a GPU machine "
                  "(run with --smoke for a CPU run)")
            return 1
        print(f"cuda {torch.version.cuda} | {torch.cuda.get_device_name(0)} | "
              f"{torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB")
    return 0


def tiny_archive(src: str, dst: str, per_class: int) -> int:
    """The first ``per_class`` images of each class and split of ``src``, as a new .tar.gz."""
    kept: Dict[Tuple[str, str], int] = {}
    with tarfile.open(src) as tin, tarfile.open(dst, "w:gz") as tout:
        for m in tin:
            parts = m.name.split("/")
            if m.isfile() and len(parts) == 4:  # cifar10-jpeg/<split>/<class>/<file>
                k = (parts[1], parts[2])
                if kept.get(k, 0) < per_class:
                    kept[k] = kept.get(k, 0) + 1
                    tout.addfile(m, tin.extractfile(m))
    print(f"tiny archive {dst}: {sum(kept.values())} images, {per_class} per class and split")
    return 0


def choose_epochs(results: Path, seconds: float, most: int, fallback: int, steps_per_epoch: int = 391) -> int:
    """Epochs of the training part that fit in ``seconds``, from the paper part's SSVI step time.

    The paper part times exactly the training step (width 1, batch 128, fp32, 90% sparse);
    an epoch is 391 such steps, plus about 20% for augmentation, mask updates and the test
    evaluation, and the run has about 30 s of fixed costs (imports, model, data, plots).
    """
    step_ms = None
    for line in results.read_text().splitlines() if results.is_file() else []:
        row = json.loads(line)
        res = row.get("result") or {}
        if row.get("config") == "ssvi" and row.get("bench", {}).get("batch") == 128 and res.get("step"):
            step_ms = res["step"]["median_ms"]
    if step_ms is None:
        print(f"epochs: no SSVI batch-128 step time in {results}; using {fallback}", file=sys.stderr)
        return fallback
    per_epoch = steps_per_epoch * step_ms / 1e3 * 1.2
    n = max(1, min(most, int((seconds - 30) / per_epoch)))
    print(f"epochs: SSVI step {step_ms:.1f} ms -> about {per_epoch:.0f} s per epoch; {n} epochs fit in "
          f"{seconds:.0f} s", file=sys.stderr)
    return n


def collect_train(run_dir: Path, results: Path) -> int:
    """Append the training run's per-epoch rows and final metrics to results.jsonl."""
    rows = []
    if (run_dir / "metrics.jsonl").is_file():
        rows += [{"part": "train", "epoch_row": json.loads(line)}
                 for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    final: Optional[dict] = None
    if (run_dir / "metrics.json").is_file():
        final = json.loads((run_dir / "metrics.json").read_text())
        rows.append({"part": "train", "final": final})
    with open(results, "a") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))
    if final is None:
        print(f"train: no metrics.json in {run_dir} (the run did not finish); {len(rows)} epoch rows kept")
        return 1
    return 0  # the summary shows the final metrics


def summary(results: Path) -> int:
    """A few lines for the console: each part's rc, images/s per configuration, the final metrics."""
    for line in results.read_text().splitlines() if results.is_file() else []:
        row = json.loads(line)
        if row.get("event") == "start":
            print(f"{row['part']}:")
        elif row.get("event") == "end":
            print(f"  rc={row['rc']} in {row['seconds']} s")
        elif "config" in row:
            b, res = row["bench"], row["result"]
            what = f"batch {b['batch']}{' bf16' if b['bf16'] else ''}{' channels_last' if b['channels_last'] else ''}"
            if res.get("images_per_s"):
                print(f"  {what:32s} {res['label']:30s} {res['images_per_s']:9.1f} img/s "
                      f"(median step {res['step']['median_ms']:.1f} ms)")
            else:
                print(f"  {what:32s} {res['label']:30s} {res.get('skipped', 'no step timed')}")
        elif "profile" in row:
            r = row["result"]
            print(f"  {row['profile']['config']:6s} {r['device_ms_per_step']:.2f} ms/step of {r['time_kind']}, "
                  f"{r['events_per_step']:.0f} events/step; by group (ms): {r['groups']}")
        elif "report" in row:
            ratios = {k: round(v, 3) for k, v in (row["report"].get("ratios") or {}).items() if v is not None}
            piped = {k: round(v["pipelined"]["images_per_s"]) for k, v in row["report"]["results"].items()
                     if "pipelined" in v}
            print(f"  step-time ratios {ratios}; pipelined img/s {piped}")
        elif "final" in row:
            final = row["final"]
            epochs = (final.get("config") or {}).get("train", {}).get("epochs")
            shown = {k: round(v, 4) for k, v in final.items() if k != "config" and isinstance(v, (int, float))}
            print(f"  train final ({epochs} epochs): {shown}")
    return 0


# ------------------------------------------------------------------------------ command line
def _report(title: str, errors: List[str], notes: List[str]) -> bool:
    for n in notes:
        print(f"  {n}")
    for e in errors:
        print(f"  FAIL: {e}")
    print(f"{title}: {'FAILED' if errors else 'ok'}")
    return not errors


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("check-static")
    s.add_argument("--repo", type=Path, default=REPO)
    s.add_argument("--whl", type=Path, default=None, help="wheel folder (default: REPO/.whl)")
    s.add_argument("--carry", default=".whl,.data")
    s = sub.add_parser("check-out")
    s.add_argument("out", type=Path)
    s = sub.add_parser("preflight")
    s.add_argument("--device", default="cuda")
    s = sub.add_parser("tiny-archive")
    s.add_argument("src")
    s.add_argument("dst")
    s.add_argument("--per-class", type=int, default=8)
    s = sub.add_parser("epochs")
    s.add_argument("results", type=Path)
    s.add_argument("--seconds", type=float, required=True)
    s.add_argument("--max", type=int, default=10)
    s.add_argument("--fallback", type=int, default=6)
    s = sub.add_parser("summary")
    s.add_argument("results", type=Path)
    s = sub.add_parser("collect-train")
    s.add_argument("run_dir", type=Path)
    s.add_argument("results", type=Path)
    a = p.parse_args(argv)

    if a.cmd == "check-static":
        ok = _report("wheels", *check_wheels(a.whl or a.repo / ".whl", setup_requirements(a.repo / "setup.py")))
        ok &= _report("data", *check_data(a.repo))
        ok &= _report("size", *check_travel(a.repo, [c for c in a.carry.split(",") if c]))
        return 0 if ok else 1
    if a.cmd == "check-out":
        errors, notes = check_out(a.out)
        errors += part_failures(a.out / "results.jsonl")
        return 0 if _report("$OUT", errors, notes) else 1
    if a.cmd == "preflight":
        return preflight(a.device)
    if a.cmd == "tiny-archive":
        return tiny_archive(a.src, a.dst, a.per_class)
    if a.cmd == "epochs":
        print(choose_epochs(a.results, a.seconds, a.max, a.fallback))
        return 0
    if a.cmd == "summary":
        return summary(a.results)
    return collect_train(a.run_dir, a.results)


if __name__ == "__main__":
    sys.exit(main())
