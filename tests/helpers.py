"""Shared test helpers: verbose comparisons and the backends under test."""

from __future__ import annotations

import pytest
import torch

import zfcore

# Every backend, skipped where it is not available; GPU backends run on CUDA
# tensors (the triton backend on CPU tensors under TRITON_INTERPRET=1).
BACKENDS = [
    pytest.param(name, marks=pytest.mark.skipif(not info.available, reason=info.reason))
    for name, info in zfcore.backends().items()
]
AVAILABLE = [name for name, info in zfcore.backends().items() if info.available]
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def device_of(backend: str) -> str:
    """The device whose tensors ``backend`` runs on here."""
    info = zfcore.backends()[backend]
    return "cpu" if info.device == "any" else info.device


def on(backend: str, t):
    """``t`` on ``backend``'s device with the same sizes and strides (channels-last
    and non-contiguous inputs stay so); ``None`` passes through."""
    if t is None:
        return None
    device = device_of(backend)
    if t.device.type == device:
        return t
    moved = torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device=device)
    return moved.copy_(t).requires_grad_(t.requires_grad)


def interpreted(backend: str) -> bool:
    """Whether ``backend`` runs in Triton's (slow) CPU interpreter."""
    return backend == "triton" and device_of(backend) == "cpu"


def assert_close_verbose(actual: torch.Tensor, expected: torch.Tensor, *, atol: float = 0.0, rtol: float = 0.0,
                         what: str = "") -> None:
    """assert_close that treats NaN == NaN and, on failure, prints the first
    mismatching indices with both values."""
    actual, expected = actual.cpu(), expected.cpu()
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    a, e = actual.double(), expected.double()
    both_nan = a.isnan() & e.isnan()
    same_inf = a.isinf() & e.isinf() & (a == e)
    close = both_nan | same_inf | ((a - e).abs() <= atol + rtol * e.abs())
    if bool(close.all()):
        return
    bad = (~close).nonzero()
    lines = [f"{what}: {bad.shape[0]} of {a.numel()} elements differ (atol={atol}, rtol={rtol}); first ones:"]
    for index in bad[:8].tolist():
        lines.append(f"  at {tuple(index)}: got {a[tuple(index)].item()!r}, expected {e[tuple(index)].item()!r}")
    raise AssertionError("\n".join(lines))


def output_shapes(model, x) -> dict:
    """Each top-level child's output shape (without the batch) in a forward of ``x``."""
    shapes = {}
    hooks = [m.register_forward_hook(lambda m, i, o, name=name: shapes.__setitem__(name, tuple(o.shape[1:])))
             for name, m in model.named_children()]
    try:
        model(x)
    finally:
        for h in hooks:
            h.remove()
    return shapes


def layouts_for(backend: str, dtype: torch.dtype) -> tuple[str, ...]:
    """The input layouts a dtype sweep tests on ``backend``. In Triton's CPU
    interpreter (seconds a call) only float32 also runs the non-contiguous
    inputs: the launchers make them contiguous before any kernel runs, the same
    code for every dtype. Everywhere else (a GPU, the CPU backends): all of them."""
    from .samples import LAYOUTS
    if interpreted(backend) and dtype != torch.float32:
        return tuple(layout for layout in LAYOUTS if layout != "noncontiguous")
    return LAYOUTS


def untrained_subject(monkeypatch, tmp_path):
    """A Subject of an untrained zfnet_small (seed 0) whose run's embedded
    validation split has 3 images per class (generated into ``tmp_path``)."""
    from zfcore.data.synthetic import CLASSES
    from zfcore.load import Subject
    from zfcore.models import zfnet_small

    monkeypatch.setenv("ZFCORE_CACHE", str(tmp_path / "cache"))
    torch.manual_seed(0)
    return Subject(zfnet_small(init_std=None).eval(), list(CLASSES), (3, 64, 64), torch.full((3, 64, 64), 120.0),
                   1 / 64, None, {"seed": 0, "per_class": 15, "image_size": 64})
