"""Test-session set-up: without a GPU, the Triton kernels run in Triton's CPU
interpreter, so the triton backend is tested on every machine (small shapes).
This must happen before zfcore (and Triton) are imported; tools/triton_interpreter.py
fixes the interpreter for the NumPy installed."""

import os
import sys
from pathlib import Path

import torch

if not torch.cuda.is_available() and "TRITON_INTERPRET" not in os.environ:
    os.environ["TRITON_INTERPRET"] = "1"

TOOLS = Path(__file__).resolve().parents[1] / "tools"
sys.path.insert(0, str(TOOLS))
import triton_interpreter  # noqa: E402

triton_interpreter.patch()

import subprocess  # noqa: E402

import pytest  # noqa: E402
from filelock import FileLock  # noqa: E402  (a dependency of torch)

DEMO_EPOCHS = 12


@pytest.fixture(scope="session")
def demo_folder(tmp_path_factory):
    """One reduced `zfcore demo` (12 of its 30 epochs, about a minute and a half
    here) shared by every test that needs a model that has learned: its
    ``run/`` holds model.pt and the snapshots of epochs 1, 2, 4, 6, 8, 12.

    Under pytest-xdist (``make test`` runs two workers) the tests that use it are
    grouped on one worker (``pytest_collection_modifyitems``), and a file lock in
    the workers' common temporary folder makes any other worker wait for the same
    run rather than repeat it."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # shared by the workers of this session
    out, done = root / "demo-shared", root / "demo-shared.stdout"
    with FileLock(str(root / "demo-shared.lock")):
        if not done.exists():
            out.mkdir(exist_ok=True)
            # one thread, as each worker runs: two OpenMP threads on a core another worker keeps busy spin, and
            # made the demo's gradient-descent analyses 10-35x slower
            env = {**os.environ, "OMP_NUM_THREADS": "1"} if os.environ.get("PYTEST_XDIST_WORKER") else None
            result = subprocess.run([sys.executable, "-m", "zfcore", "demo", "--out", str(out), "--epochs",
                                     str(DEMO_EPOCHS), "--no-progress"], capture_output=True, text=True, timeout=1200,
                                    env=env)
            assert result.returncode == 0, result.stderr[-3000:]
            done.write_text(result.stdout)
    return out, done.read_text()


# The tests that exercise a GPU backend: every module of GPU_MODULES, less the
# parametrizations that pin a CPU-only backend. `pytest -m gpu` runs just these
# (benchmarks/gpu.sh on a GPU machine, where device time is short); the rest of
# the suite (training, the report, the interpreter) runs on the CPU.
GPU_MODULES = {"test_pooling.py", "test_deconv_ops.py", "test_autograd.py", "test_gpu_backends.py",
               "test_registration.py"}
CPU_ONLY_BACKENDS = {"cpu", "reference"}


def pytest_configure(config):
    if os.environ.get("PYTEST_XDIST_WORKER"):
        # Two workers on two cores: one thread each (subprocesses keep their default).
        torch.set_num_threads(1)
    config.addinivalue_line("markers", "xdist_group(name): tests pytest-xdist runs on one worker (--dist loadgroup)")
    config.addinivalue_line("markers", "gpu: exercises the triton or cuda backend (benchmarks/gpu.sh runs -m gpu)")


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the xdist_group marks
def pytest_collection_modifyitems(config, items):
    for item in items:
        if "demo_folder" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group("demo"))  # one worker runs the demo and its tests
        if item.path.name not in GPU_MODULES:
            continue
        callspec = getattr(item, "callspec", None)
        if callspec is not None and callspec.params.get("backend") in CPU_ONLY_BACKENDS:
            continue
        item.add_marker(pytest.mark.gpu)
