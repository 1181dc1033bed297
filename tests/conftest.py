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

DEMO_EPOCHS = 12


@pytest.fixture(scope="session")
def demo_folder(tmp_path_factory):
    """One reduced `zfcore demo` (12 of its 30 epochs, about a minute and a half
    here) shared by every test that needs a model that has learned: its
    ``run/`` holds model.pt and the snapshots of epochs 1, 2, 4, 6, 8, 12."""
    out = tmp_path_factory.mktemp("demo")
    result = subprocess.run([sys.executable, "-m", "zfcore", "demo", "--out", str(out), "--epochs", str(DEMO_EPOCHS),
                             "--no-progress"], capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result.stdout


# The tests that exercise a GPU backend: every module of GPU_MODULES, less the
# parametrizations that pin a CPU-only backend. `pytest -m gpu` runs just these
# (benchmarks/gpu.sh on a GPU machine, where device time is short); the rest of
# the suite (training, the report, the interpreter) runs on the CPU.
GPU_MODULES = {"test_pooling.py", "test_deconv_ops.py", "test_autograd.py", "test_gpu_backends.py",
               "test_registration.py"}
CPU_ONLY_BACKENDS = {"cpu", "reference"}


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: exercises the triton or cuda backend (benchmarks/gpu.sh runs -m gpu)")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.name not in GPU_MODULES:
            continue
        callspec = getattr(item, "callspec", None)
        if callspec is not None and callspec.params.get("backend") in CPU_ONLY_BACKENDS:
            continue
        item.add_marker(pytest.mark.gpu)
