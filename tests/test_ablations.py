"""bench/ablations.py --quick on digits: the grid runs, shares the default cell, resumes, and reports."""

import json
import math
import os
import re
import subprocess
import sys

import pytest

from pyro_ssvi.criteria import ADDITION_CRITERIA, REMOVAL_CRITERIA

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "bench", "ablations.py")
sys.path.insert(0, os.path.join(ROOT, "bench"))

import ablations  # noqa: E402  (bench/ is not a package)

SEEDS = 2
EPOCHS = 5  # digits: 115 steps; at ΔT 10 and 20, 8 and 4 mask updates


def _run(out, *extra):
    cmd = [sys.executable, SCRIPT, "--data", "digits", "--quick", "--seeds", str(SEEDS), "--epochs", str(EPOCHS),
           "--out", str(out), *extra]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=240)


def _records(out):
    with open(out / "results.jsonl") as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    out = tmp_path_factory.mktemp("ablations")
    proc = _run(out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc.stdout


def _table_rows(markdown):
    """{(section, setting): [accuracy mean, std, nll mean, std, ece mean, std]} from ablations.md."""
    rows, section = {}, None
    for line in markdown.splitlines():
        if line.startswith("### "):
            section = line[4:7]  # "(a)", ...
        number = r"([\d.]+) ± ([\d.]+)"
        m = re.match(rf"\| (\w+ = [^|]+?) \| {number} \| {number} \| {number} \|", line)
        if m:
            rows[(section, m.group(1))] = [float(v) for v in m.groups()[1:]]
    return rows


def test_full_grid_covers_every_criterion_the_library_defines():
    assert [label for _, label, _ in ablations.group_cells("a")] == list(REMOVAL_CRITERIA)
    assert [label for _, label, _ in ablations.group_cells("b")] == list(ADDITION_CRITERIA)
    cells, layout = ablations.plan(["a", "b", "c", "d"], quick=False)
    # The default cell sits in every group but is one cell; all others differ from it in one setting.
    default = ablations.cell_key(ablations.DEFAULT_CELL)
    assert all(any(key == default for _, _, key in rows) for rows in layout.values())
    keys = [key for rows in layout.values() for _, _, key in rows]
    assert len(cells) == len({ablations.cell_key(c) for c in cells}) == len(keys) - keys.count(default) + 1
    for c in cells:
        assert sum(c[k] != v for k, v in ablations.DEFAULT_CELL.items()) <= 1


def test_outputs_and_numbers(grid):
    out, stdout = grid
    for name in ("ablations.md", "results.jsonl", "meta.json", *(f"ablation_{g}.png" for g in "abcd")):
        assert (out / name).stat().st_size > 0, name
    with open(out / "ablation_c.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    records = _records(out)
    cells, layout = ablations.plan(list("abcd"), quick=True)
    # Each cell once per seed, the shared default cell included; nothing failed.
    assert sorted((r["key"], r["seed"]) for r in records) == sorted(
        (ablations.cell_key(c), s) for c in cells for s in range(SEEDS))
    assert not [r for r in records if "error" in r]
    rows = _table_rows((out / "ablations.md").read_text())
    assert len(rows) == sum(len(r) for r in layout.values())  # every row has numbers
    for (section, setting), (acc, acc_std, nll, nll_std, ece, ece_std) in rows.items():
        assert 30.0 < acc <= 100.0, (section, setting)  # chance is 10%
        assert 0.0 < nll < math.log(10) and 0.0 <= ece <= 1.0
        assert min(acc_std, nll_std, ece_std) >= 0.0
    dense = rows[("(c)", "sparsity = 0%")]
    assert dense[0] > 80.0
    default_rows = [v for (_, s), v in rows.items() if s.endswith("(default)")]
    assert len(default_rows) == 5 and all(v == default_rows[0] for v in default_rows)
    # The sparse cells really are sparse and change their masks; the dense one has none to change.
    for r in records:
        assert r["density"] == pytest.approx(1.0 - r["settings"]["sparsity"], abs=0.01)
        assert (r["mask_updates"] > 0) == (r["settings"]["sparsity"] > 0)
        assert r["setup"] == {"data": "digits", "epochs": EPOCHS, "hidden": [256, 256], "init_scale": 1e-3}
        # The posterior learned: sigmas left their initial 1e-3, in every layer.
        assert set(r["sigma_end"]) == {"1.weight", "3.weight", "5.weight"}
        assert all(q["median"] > 1.05e-3 for q in r["sigma_end"].values())


def test_setup_options():
    args = ablations.parse_args(["--data", "digits", "--hidden", "32", "--init-scale", "6e-4,5e-4"])
    assert ablations.run_setup(args) == {"data": "digits", "epochs": 60, "hidden": [32], "init_scale": [6e-4, 5e-4]}
    with pytest.raises(SystemExit):
        ablations.parse_args(["--init-scale", "0"])


def test_resume_redoes_only_missing_runs_identically(grid, tmp_path):
    out, _ = grid
    refused = _run(out)  # results present, no --resume: refuse rather than mix two grids
    assert refused.returncode == 2 and "--resume" in refused.stderr
    records = _records(out)
    kept, dropped = records[:-2], records[-2:]
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))
    proc = _run(tmp_path, "--resume")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 runs to do" in proc.stdout
    redone = {(r["key"], r["seed"]): r for r in _records(tmp_path)[len(kept):]}
    for old in dropped:
        new = redone[(old["key"], old["seed"])]
        for metric in ("accuracy", "nll", "ece"):  # a seed fixes everything, so a redo is the same run
            assert new[metric] == pytest.approx(old[metric], rel=1e-5)
