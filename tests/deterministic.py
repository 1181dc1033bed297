"""Deterministic weights and input, the same on every machine, with or without
torchvision.

``tools/record_torchvision_fixtures.py`` fills torchvision's own models with
``state_dict_for`` and records their logits on ``fixed_input``;
``tests/test_torchvision_fixtures.py`` fills zfcore's architectures the same
way and compares. Each entry is a formula of its ``state_dict`` key and shape:
float32 uniform numbers from a CPU ``torch.Generator`` seeded with the crc32 of
the key, scaled per kind of entry. The fixtures also record a fingerprint of
these values, so that a torch release that changed ``torch.rand``'s algorithm
is told apart from an architecture that changed.

Changing anything here changes the recorded logits: rerun the recorder.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

__all__ = ["INPUT_SHAPE", "fingerprint", "fixed_input", "state_dict_for", "uniform"]

INPUT_SHAPE = (2, 3, 224, 224)


def uniform(key: str, shape: Sequence[int], low: float, high: float, dtype: torch.dtype = torch.float32) -> Tensor:
    """``Tensor[shape]`` of numbers in [low, high), fixed by ``key``: drawn in
    float32 (so every ``dtype`` gets the same values), then cast to ``dtype``."""
    generator = torch.Generator().manual_seed(zlib.crc32(key.encode()))
    u = torch.rand(tuple(shape), generator=generator, dtype=torch.float32)
    return (u * (high - low) + low).to(dtype)


def _entry(key: str, like: Tensor, dtype: torch.dtype) -> Tensor:
    shape = tuple(like.shape)
    if not like.is_floating_point():  # BatchNorm's num_batches_tracked: any integer
        return torch.full(shape, zlib.crc32(key.encode()) % 1000, dtype=like.dtype)
    if key.endswith("running_var"):
        return uniform(key, shape, 0.5, 1.5, dtype)
    if key.endswith("running_mean") or key.endswith("bias"):
        return uniform(key, shape, -0.1, 0.1, dtype)
    if len(shape) == 1:  # a normalization's scale
        return uniform(key, shape, 0.5, 1.5, dtype)
    bound = math.sqrt(6 / math.prod(shape[1:]))  # He uniform: variance 2 / fan_in keeps ReLU stacks in scale
    return uniform(key, shape, -bound, bound, dtype)


def state_dict_for(model: nn.Module | Mapping[str, Tensor], dtype: torch.dtype = torch.float32) -> dict[str, Tensor]:
    """A full ``state_dict`` (CPU tensors) for ``model``'s keys and shapes, which
    may live on the meta device: every floating-point entry in ``dtype``.

    Weights (two or more dimensions) are uniform with variance 2 / fan_in;
    biases and running means in (-0.1, 0.1); normalization scales and running
    variances in (0.5, 1.5); integer buffers a constant per key."""
    reference = model.state_dict() if isinstance(model, nn.Module) else model
    return {key: _entry(key, value, dtype) for key, value in reference.items()}


def fingerprint(tensors: Mapping[str, Tensor]) -> float:
    """One float64 number that changes when the values of ``tensors`` do: a
    position-weighted sum of about 4096 evenly spaced elements of each entry
    (cheap on the largest layers; any change of the generator shows in all)."""
    total = 0.0
    for i, key in enumerate(sorted(tensors)):
        flat = tensors[key].detach().reshape(-1)
        sample = flat[::max(1, flat.numel() // 4096)].to(torch.float64)
        weights = torch.arange(1, sample.numel() + 1, dtype=torch.float64) / sample.numel()
        total += (i + 1) * float((sample * weights).sum())
    return total


def fixed_input(dtype: torch.dtype = torch.float32) -> Tensor:
    """``Tensor[2, 3, 224, 224]`` uniform with unit variance (a normalized image's scale)."""
    return uniform("input", INPUT_SHAPE, -math.sqrt(3), math.sqrt(3), dtype)
