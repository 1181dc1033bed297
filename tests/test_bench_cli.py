"""`zfcore bench`: runs the benchmark scripts into the user's folder, one ratio table, never the committed results."""

import importlib.util
import json
import subprocess
import sys

import pytest
import torch

from zfcore import bench
from zfcore.cli import main


def test_quick_ops_suite_writes_its_results_and_a_summary_of_them(tmp_path, capsys):
    out = tmp_path / "mine"
    assert main(["bench", "--quick", "--ops", "--out", str(out)]) == 0
    raw = json.loads((out / "cpu.json").read_text())
    summary = json.loads((out / "summary.json").read_text())
    assert [(r["op"], r["case"], r["ratio"]) for r in summary] == [(r["op"], r["case"], r["ratio"])
                                                                     for r in raw["rows"]]
    env = raw["environment"]
    assert all(r["commit"] == env["commit"] and r["torch"] == torch.__version__ and r["suite"] == "ops"
               and "bench_ops.py --quick" in r["command"] for r in summary)
    printed = capsys.readouterr().out
    assert printed.count("| ops |") == len(summary) > 5
    assert f"**{summary[0]['ratio']:.2f}x**" in (out / "summary.md").read_text()
    assert env["commit"] in (out / "summary.md").read_text()


def test_committed_results_are_refused(tmp_path):
    for folder in (bench.COMMITTED, bench.COMMITTED / "sub"):
        with pytest.raises(ValueError, match="committed results folder"):
            bench.check_out(folder)
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError):
        bench.check_out(tmp_path / "file")
    result = subprocess.run([sys.executable, "-m", "zfcore", "bench", "--out", str(bench.COMMITTED)],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "committed results folder" in result.stderr


def test_suites_and_devices_are_checked(monkeypatch, tmp_path):
    optional = ["any-cnn"] if importlib.util.find_spec("captum") else []  # Captum: an optional baseline
    assert [s for s, _ in bench.plan([], "cpu", False)] == ["ops", "topk", "occlusion", *optional]
    assert [s for s, _ in bench.plan([], "cuda", True)] == ["ops"]
    assert bench.plan(["ops"], "cuda", True)[0][1][-1] == "--smoke"
    with pytest.raises(ValueError, match="--occlusion runs on the CPU only"):
        bench.plan(["occlusion"], "cuda", False)
    with pytest.raises(ValueError, match="--device must be cpu or cuda"):
        bench.plan([], "tpu", False)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device is visible"):
            bench.run(["ops"], "cuda", True, tmp_path)
    monkeypatch.setattr(bench, "BENCHMARKS", tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="source checkout"):
        bench.plan([], "cpu", False)


def test_a_failing_suite_is_reported(monkeypatch, tmp_path):
    monkeypatch.setitem(bench.SUITES, "ops", {"cpu": ("bench_ops.py", ["--dtypes", "no-such-dtype"], [])})
    with pytest.raises(RuntimeError, match="the ops benchmark failed"):
        bench.run(["ops"], "cpu", True, tmp_path)


def test_any_cnn_suite_plan_and_its_optional_baseline(monkeypatch, tmp_path):
    argv = bench.plan(["any-cnn"], "cpu", True)[0][1] if importlib.util.find_spec("captum") else None
    if argv is not None:
        assert argv[1].endswith("bench_any_cnn.py") and argv[-1] == "--quick"
    with pytest.raises(ValueError, match="--any-cnn runs on the CPU only"):
        bench.plan(["any-cnn"], "cuda", False)
    # without Captum: left out of a run that names no suite, an error where named
    monkeypatch.setitem(bench.NEEDS, "any-cnn", "no_such_package_for_zfcore_tests")
    assert "any-cnn" not in [s for s, _ in bench.plan([], "cpu", True)]
    with pytest.raises(ValueError, match="--any-cnn needs no_such_package_for_zfcore_tests"):
        bench.plan(["any-cnn"], "cpu", True)
    # the CLI flag --any-cnn names the suite
    named = []
    monkeypatch.setattr(bench, "run", lambda suites, device, quick, out: named.append(suites) or [])
    assert main(["bench", "--any-cnn", "--quick", "--out", str(tmp_path)]) == 0
    assert named == [["any-cnn"]]
