"""bench/throughput.py end to end at a tiny size: it runs, and its JSON has every field."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "bench", "throughput.py")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "throughput.json"
    cmd = [sys.executable, SCRIPT, "--device", "cpu", "--width", "0.125", "--batch", "8", "--steps", "6",
           "--warmup", "1", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "(a) pyro_ssvi SSVI" in proc.stdout and "surgery" in proc.stdout
    with open(out) as f:
        return json.load(f)


def test_json_fields(report):
    assert set(report) >= {"meta", "results", "ratios", "surgery", "ratios_process_cpu_time"}
    meta = report["meta"]
    for key in ("device", "device_name", "cpu_model", "torch", "pyro", "threads", "args", "command"):
        assert key in meta
    assert set(report["results"]) == {"ssvi", "dense", "det", "plain"}
    for res in report["results"].values():
        assert res["images_per_s"] > 0
        step = res["step"]
        assert step["n"] >= 1
        assert step["p10_ms"] <= step["median_ms"] <= step["p90_ms"]
        assert step["p25_ms"] <= step["p75_ms"]
        assert res["peak_memory_bytes"] is None or res["peak_memory_bytes"] > 0
    # (a) hits update steps (ΔT = steps // 3 inside the benchmark), timed separately.
    assert report["results"]["ssvi"]["update_step"]["n"] >= 1


def test_ratios_positive(report):
    for table in ("ratios", "ratios_process_cpu_time"):
        assert set(report[table]) == {"a/d", "b/d", "c/d", "e/d"}
        measured = {k: v for k, v in report[table].items() if k != "e/d"}  # (e) needs CUDA
        assert all(v is not None and v > 0 for v in measured.values())
        assert report[table]["e/d"] is None


def test_table_lists_every_configuration(report):
    """The console table has a row, with its ratio, for each configuration: (e) included, which
    only runs on CUDA (a CUDA-graph row once crashed the table after every timing was done)."""
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    from report import CONFIGS, format_table

    full = json.loads(json.dumps(report))
    full["results"]["graph"] = dict(full["results"]["ssvi"], label=CONFIGS["graph"])
    full["ratios"]["e/d"] = 0.5
    table = format_table(full)
    for key in ("ssvi", "dense", "det", "plain", "graph"):
        assert CONFIGS[key] in table
    assert "0.500" in table.split(CONFIGS["graph"])[1].splitlines()[0]


def test_surgery_share(report):
    s = report["surgery"]
    assert s["paper_schedule"]["update_interval"] == 100
    assert s["paper_schedule"]["num_updates"] > 0
    assert -1.0 < s["share_of_training_time"] < 1.0


def test_unsupported_option_is_reported_not_fatal(tmp_path):
    out = tmp_path / "t.json"
    cmd = [sys.executable, SCRIPT, "--device", "cpu", "--width", "0.0625", "--batch", "2", "--steps", "2",
           "--warmup", "0", "--configs", "ssvi,plain", "--bf16", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(out) as f:
        rep = json.load(f)
    assert "skipped" in rep["results"]["ssvi"]
    assert rep["results"]["plain"]["images_per_s"] > 0
    assert rep["ratios"]["a/d"] is None


# oneDNN's AVX2 kernels (CPUs without AVX-512; forced here with ONEDNN_MAX_CPU_ISA) crash in the
# backward of a strided 1x1 channels_last convolution with < 8 input channels. On such a machine
# this command died with "double free or corruption" before channels_last was refused on CPU.
AVX2_ONLY = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2"}


def test_channels_last_on_cpu_is_refused_not_a_native_crash(tmp_path):
    out = tmp_path / "t.json"
    cmd = [sys.executable, SCRIPT, "--device", "cpu", "--width", "0.0625", "--batch", "2", "--steps", "2",
           "--warmup", "0", "--configs", "ssvi,plain", "--channels-last", "--library-options", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=AVX2_ONLY)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(out) as f:
        rep = json.load(f)
    for key in ("ssvi", "plain"):
        assert "channels_last is a GPU layout" in rep["results"][key]["skipped"]


def test_kl_cost_benchmark_measures_both_forms():
    out = subprocess.run(
        [sys.executable, os.path.join(ROOT, "bench", "kl_cost.py"), "--width", "0.0625", "--repeats", "1"],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout
    assert "dense-masked" in out and "active-only" in out and "active-only / dense-masked" in out


def test_kernel_profile_groups_and_reports_both_configurations(tmp_path):
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    import kernel_profile

    # Kernel names as CUDA profiles show them.
    assert kernel_profile.group_of("sm90_xmma_fprop_implicit_gemm_tf32f32_tf32f32_f32_nhwckrsc_nchw") == "conv / matmul"
    assert kernel_profile.group_of("void cudnn::bn_fw_tr_1C11_kernel_NCHW<float, float, int, 512>") == "normalization"
    assert kernel_profile.group_of("void at::native::batch_norm_collect_statistics_kernel<float>") == "normalization"
    assert kernel_profile.group_of("void at::native::(anonymous namespace)::distribution_elementwise_grid_stride_"
                                   "kernel<float, 4, at::native::templates::cuda::normal_and_transform<...> "
                                   "philox") == "random"
    assert kernel_profile.group_of("void at::native::multi_tensor_apply_kernel<...>") == "optimizer"
    assert kernel_profile.group_of("void at::native::vectorized_elementwise_kernel<4, sqrt_kernel_cuda>") == "elementwise"

    out = tmp_path / "profile.jsonl"
    reports = kernel_profile.main(["--device", "cpu", "--width", "0.0625", "--batch", "2", "--warmup", "1",
                                   "--steps", "2", "--jsonl", str(out)])
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [row["profile"]["config"] for row in lines] == ["ssvi", "plain"]
    for key, r in reports.items():
        assert r["device_ms_per_step"] > 0 and r["events_per_step"] > 0
        assert sum(r["groups"].values()) == pytest.approx(r["device_ms_per_step"], rel=1e-3)
        assert r["groups"]["conv / matmul"] > 0  # ResNet-18's convolutions, forward and backward
        assert r["top"][0]["ms_per_step"] >= r["top"][-1]["ms_per_step"]
