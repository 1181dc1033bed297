"""The op benchmark runs end to end (a smoke run: batch 2, short timings) and
writes its JSON and markdown table. Speed itself is shown by the benchmark's
committed results, never by a timed test."""

import json
import os
import subprocess
import sys

import pytest
import torch

import zfcore

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.skipif(not zfcore.backends()["cpu"].available, reason="native CPU backend not built")
def test_bench_ops_quick_run_writes_results(tmp_path):
    result = subprocess.run([sys.executable, "benchmarks/bench_ops.py", "--quick", "--output", "smoke",
                             "--results-dir", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    data = json.loads((tmp_path / "smoke.json").read_text())
    ops = {row["op"] for row in data["rows"]}
    assert ops == {"max_pool2d_switches", "unpool2d", "relu_conv_transpose2d", "deconv_step"}
    assert all(row["ratio"] > 0 and row["zfcore"]["median_ms"] > 0 for row in data["rows"])
    assert data["environment"]["command"].startswith("benchmarks/bench_ops.py")
    assert "| ratio |" in (tmp_path / "smoke.md").read_text()


@pytest.mark.skipif(not zfcore.backends()["triton"].available, reason="triton backend not available")
def test_bench_gpu_smoke_run_writes_results_and_preference(tmp_path):
    # Without a GPU: tiny shapes, Triton in the CPU interpreter; checks the
    # script's plumbing (rows, JSON, markdown, the fastest-backend table).
    env = dict(os.environ) if torch.cuda.is_available() else {**os.environ, "TRITON_INTERPRET": "1"}
    command = [sys.executable, "benchmarks/bench_gpu.py", "--dtypes", "float32", "--output", "smoke",
               "--results-dir", str(tmp_path)]
    if env.get("TRITON_INTERPRET") == "1":
        command.append("--smoke")
    else:
        command += ["--batch", "2", "--no-compile"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900, env=env)
    assert result.returncode == 0, result.stderr
    data = json.loads((tmp_path / "smoke.json").read_text())
    assert {row["op"] for row in data["rows"]} == {"max_pool2d_switches", "unpool2d", "relu_conv_transpose2d",
                                                   "deconv_step"}
    assert all(row["zfcore"]["median_ms"] > 0 and row["eager"]["median_ms"] > 0 for row in data["rows"])
    assert all(row["vs_eager"] == round(row["eager"]["median_ms"] / row["zfcore"]["median_ms"], 3)
               for row in data["rows"])
    assert data["environment"]["copy_gbps"] > 0
    preference = json.loads((tmp_path / "gpu_preference.json").read_text())["fastest"]
    assert set(preference) == {"max_pool2d_switches", "unpool2d", "gather_switches", "relu_conv_transpose2d",
                               "deconv_step"}
    assert "| vs eager |" in (tmp_path / "smoke.md").read_text()
