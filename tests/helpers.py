"""Shared test helpers: verbose comparisons and the backends under test."""

from __future__ import annotations

import pytest
import torch

import zfcore

BACKENDS = [
    pytest.param(name, marks=pytest.mark.skipif(not info.available, reason=info.reason))
    for name, info in zfcore.backends().items()
    if info.device in ("any", "cpu")
]
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def assert_close_verbose(actual: torch.Tensor, expected: torch.Tensor, *, atol: float = 0.0, rtol: float = 0.0,
                         what: str = "") -> None:
    """assert_close that treats NaN == NaN and, on failure, prints the first
    mismatching indices with both values."""
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
