"""Which backend runs an op: what is built, why not, and the choice per call.

Order of precedence: the ``backend=`` argument of a call, then the
``ZFCORE_BACKEND`` environment variable (read once, at import), then the fastest
available backend for the tensor's device.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from . import library

NAMES = ("reference", "cpu", "triton", "cuda")
_ENV_BACKEND = os.environ.get("ZFCORE_BACKEND", "").strip().lower() or None


@dataclass(frozen=True)
class BackendInfo:
    """Whether a backend can run here, the device type it serves, and why not."""

    name: str
    device: str
    available: bool
    reason: str


def backends() -> dict[str, BackendInfo]:
    """What each backend is and whether it is built and usable here.

    Example:
        >>> {name: info.available for name, info in zfcore.backends().items()}
        {'reference': True, 'cpu': True, 'triton': False, 'cuda': False}
    """
    cpu_reason = "C++ kernels in zfcore._C" if library.NATIVE else f"native library not loaded: {library.NATIVE_ERROR}"
    gpu_missing = "not in this release: CUDA tensors run the reference backend"
    return {
        "reference": BackendInfo("reference", "any", True, "pure PyTorch (zfcore/ops/reference.py)"),
        "cpu": BackendInfo("cpu", "cpu", library.NATIVE, cpu_reason),
        "triton": BackendInfo("triton", "cuda", False, gpu_missing),
        "cuda": BackendInfo("cuda", "cuda", False, gpu_missing),
    }


def resolve(op: str, tensor: torch.Tensor, backend: str | None) -> str:
    """The backend that runs ``op`` on ``tensor``; a clear error if the one asked
    for cannot."""
    source = "backend" if backend is not None else "ZFCORE_BACKEND"
    name = backend if backend is not None else _ENV_BACKEND
    if name is None or name == "auto":
        if tensor.device.type == "cpu" and library.NATIVE:
            return "cpu"
        return "reference"
    if name not in NAMES:
        raise ValueError(f"{op}: {source} must be one of {', '.join(NAMES)} or auto (got {name!r})")
    info = backends()[name]
    if not info.available:
        raise RuntimeError(f"{op}: {source}={name!r} is not available here ({info.reason})")
    if info.device != "any" and info.device != tensor.device.type:
        raise ValueError(f"{op}: {source}={name!r} runs on {info.device} tensors (got a {tensor.device.type} tensor)")
    return name
