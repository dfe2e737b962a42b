"""bench/gpu_run.sh and its helpers, without a GPU and without the real wheels (a fresh clone lacks them)."""

import argparse
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "bench" / "gpu_run.sh"
sys.path.insert(0, str(ROOT / "bench"))

import gpu_tools  # noqa: E402  (bench/ is not a package)
import throughput  # noqa: E402


def test_script_parses():
    proc = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_parts_run_cheapest_first_within_the_budget():
    proc = subprocess.run(["bash", str(SCRIPT), "--plan"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = [line.split() for line in proc.stdout.splitlines()]
    parts = [(name, int(t)) for name, t in lines[:-1]]
    assert [name for name, _ in parts] == ["preflight", "paper", "fast", "profile", "train"]
    _, total, _, budget = lines[-1]
    # Each part may run its timeout plus timeout's kill grace (5 s); all of it within 7 minutes.
    assert int(total) == sum(t + 5 for _, t in parts)
    assert int(total) <= int(budget) <= 7 * 60


def test_unknown_option_is_refused():
    proc = subprocess.run(["bash", str(SCRIPT), "--gpu"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "usage" in proc.stderr


# ------------------------------------------------------------------------------ wheels
def _wheel(folder: Path, name: str, version: str, requires=(), tag="py3-none-any") -> Path:
    """A minimal wheel: only the METADATA that gpu_tools reads."""
    dist = name.replace("-", "_")
    path = folder / f"{dist}-{version}-{tag}.whl"
    meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    meta += "".join(f"Requires-Dist: {r}\n" for r in requires) + "\nA description: not a header.\n"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{dist}-{version}.dist-info/METADATA", meta)
    return path


# What the GPU image lacks, with the dependencies each declares (pyro-ppl 1.9.2, hydra-core 1.3.8, ...).
GPU_WHEELS = {
    "pyro-ppl": ("1.9.2", ["numpy>=1.7", "opt-einsum>=2.3.2", "pyro-api>=0.1.1", "torch>=2.0", "tqdm>=4.36",
                           'pytest>=5.0; extra == "test"']),
    "pyro-api": ("0.1.2", []),
    "hydra-core": ("1.3.8", ["omegaconf<2.4,>=2.2", "antlr4-python3-runtime==4.9.*", "packaging"]),
    "omegaconf": ("2.3.1", ["antlr4-python3-runtime==4.9.*", "PyYAML>=5.1.0"]),
    "antlr4-python3-runtime": ("4.9.3", ['typing; python_version < "3.5"']),
    "uncertainty-calibration": ("0.1.4", ["numpy", "parameterized", "scikit-learn"]),
    "parameterized": ("0.9.0", []),
}


@pytest.fixture
def whl(tmp_path):
    folder = tmp_path / ".whl"
    folder.mkdir()
    for name, (version, requires) in GPU_WHEELS.items():
        _wheel(folder, name, version, requires)
    return folder


def _check(folder):
    return gpu_tools.check_wheels(folder, gpu_tools.setup_requirements(ROOT / "setup.py"))


def test_full_wheel_set_passes(whl):
    errors, notes = _check(whl)
    assert errors == []
    assert "covering 7 packages" in notes[-1]


def test_missing_wheel_names_the_package_and_the_fix(whl):
    next(whl.glob("antlr4_python3_runtime-*.whl")).unlink()
    errors, _ = _check(whl)
    assert len(errors) == 1
    assert "missing wheel for antlr4-python3-runtime" in errors[0]
    assert "pip wheel --no-deps" in errors[0]  # no wheel on the index: it is built here


def test_missing_dependency_of_a_wheel_is_found(whl):
    next(whl.glob("pyro_api-*.whl")).unlink()
    errors, _ = _check(whl)
    assert len(errors) == 1 and "pyro-api" in errors[0] and "needed by pyro-ppl 1.9.2" in errors[0]
    assert "pip download --no-deps --only-binary=:all: --python-version 3.12" in errors[0]


def test_two_versions_wrong_platform_and_wrong_version_are_refused(whl):
    _wheel(whl, "parameterized", "0.8.1")
    next(whl.glob("hydra_core-*.whl")).unlink()
    _wheel(whl, "hydra-core", "1.4.0", GPU_WHEELS["hydra-core"][1], tag="cp311-cp311-manylinux_2_17_x86_64")
    errors = "\n".join(_check(whl)[0])
    assert "two versions of parameterized" in errors
    assert "not CPython 3.12 on Linux x86_64" in errors
    assert "hydra-core 1.4.0 does not satisfy" in errors


def test_empty_wheel_folder_says_what_to_do(tmp_path):
    errors, _ = _check(tmp_path / "nothing")
    assert any("recipe at the top of bench/gpu_run.sh" in e for e in errors)


def test_check_static_command_fails_on_a_missing_wheel(whl):
    next(whl.glob("uncertainty_calibration-*.whl")).unlink()
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_tools.py"), "check-static", "--whl", str(whl)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "FAIL: missing wheel for uncertainty-calibration" in proc.stdout and "wheels: FAILED" in proc.stdout


# ------------------------------------------------------------------------------ $OUT, epochs
def test_out_layout_limits(tmp_path):
    for name in ("gpu_run.log", "results.jsonl"):
        (tmp_path / name).write_text("x\n")
    assert gpu_tools.check_out(tmp_path)[0] == []
    for i in range(7):
        (tmp_path / f"extra{i}.log").write_text("x")
    with open(tmp_path / "big.bin", "wb") as f:
        f.truncate(16 * 2**20)  # sparse: the size counts, not the blocks
    (tmp_path / "a b.txt").write_text("x")
    deep = tmp_path / "a" / "b" / "c"
    deep.mkdir(parents=True)
    (deep / "f.txt").write_text("x")
    errors = "\n".join(gpu_tools.check_out(tmp_path)[0])
    assert "at most 8 come back" in errors
    assert "big.bin: 16.0 MiB, over 16 MiB" in errors
    assert "letters, digits" in errors
    assert "more than 2 folders down" in errors


def test_failed_or_unfinished_parts_are_reported(tmp_path):
    rows = [{"part": "preflight", "event": "start"}, {"part": "preflight", "event": "end", "rc": 0},
            {"part": "paper", "event": "start"}, {"part": "paper", "event": "end", "rc": 124},
            {"part": "train", "event": "start"}]
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert gpu_tools.part_failures(tmp_path / "results.jsonl") == [
        "part paper ended with rc=124 (see its log)", "part train started but never ended"]


def test_epochs_follow_the_measured_step_time(tmp_path):
    results = tmp_path / "results.jsonl"
    assert gpu_tools.choose_epochs(results, 235, 10, fallback=6) == 6  # no measurement yet
    row = {"bench": {"batch": 128}, "config": "ssvi", "result": {"step": {"median_ms": 60.0}}}
    results.write_text(json.dumps(row) + "\n")
    # 391 steps * 60 ms * 1.2 = 28.2 s an epoch; (235 - 30) / 28.2 -> 7
    assert gpu_tools.choose_epochs(results, 235, 10, fallback=6) == 7
    assert gpu_tools.choose_epochs(results, 2000, 10, fallback=6) == 10


# ------------------------------------------------------------------------------ throughput streaming
class _FakeRunner:
    notes = ""

    def __init__(self, fail=False):
        self.fail = fail

    def step(self):
        if self.fail:
            raise RuntimeError("boom")

    def is_update_step(self):
        return False


def test_each_configuration_is_reported_as_soon_as_it_is_timed():
    args = argparse.Namespace(rounds=2, steps=4, warmup=1, batch=2)
    runners = {"ssvi": _FakeRunner(), "det": _FakeRunner(fail=True), "plain": _FakeRunner()}
    seen = []
    results = throughput.time_runners(runners, args, torch.device("cpu"), on_result=lambda k, r: seen.append(k))
    # det fails in its first turn (reported then); the others after their last round, in order.
    assert seen == ["det", "ssvi", "plain"]
    assert list(results) == ["ssvi", "det", "plain"]
    assert results["det"]["skipped"].startswith("failed: RuntimeError: boom")
    assert results["ssvi"]["step"]["n"] == 4
