"""What the optimisation-based visualisations share (inversion, class models,
DeepDream): the natural-image priors of Mahendran & Vedaldi, "Understanding
deep image representations by inverting them" (CVPR 2015, section 3.2), the
augmentations applied while optimising (jitter, Gaussian blur), the forward to
a layer that keeps the graph to the input, and the checks of their arguments.

* ``alpha_norm(x, alpha)``: ``sum |x|^alpha`` over every value of each image.
* ``total_variation(x, beta)``: the paper's ``TV^beta``, per image
  ``sum_{c,i,j} ((x[c,i,j+1] - x[c,i,j])^2 + (x[c,i+1,j] - x[c,i,j])^2)^(beta/2)``.
  At the border, a difference that would reach past the last column (row)
  is 0, as if the image were extended by repeating its border: every pixel has
  a term, the last column's holds only its vertical difference and the last
  row's only its horizontal one (the bottom-right pixel's term is 0).
* Where a term's base is 0 (``|x| = 0`` in the alpha-norm, a flat spot in TV)
  its gradient is taken as 0: the function's true derivative for exponents
  above 1, the zero subgradient at the kink otherwise (``torch.pow`` alone
  gives NaN or inf there for exponents below 1).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["total_variation", "alpha_norm", "jitter", "gaussian_blur", "check_images", "check_number",
           "check_count", "layer_output"]


def _safe_pow(base: Tensor, exponent: float) -> Tensor:
    """``base ** exponent`` for ``base >= 0``, 0 with gradient 0 where ``base == 0``."""
    if exponent == 1.0:
        return base
    positive = base > 0
    return torch.where(positive, torch.where(positive, base, torch.ones_like(base)) ** exponent,
                       torch.zeros_like(base))


def _check_batch(x, caller: str) -> None:
    if not isinstance(x, Tensor) or x.dim() != 4 or not x.is_floating_point():
        got = f"{x.dtype} {list(x.shape)}" if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{caller}: x must be a float Tensor[N, C, H, W] (got {got})")


def total_variation(x: Tensor, beta: float = 2.0) -> Tensor:
    """``TV^beta`` of each image of ``x[N, C, H, W]`` (module docstring: border
    differences past the last row/column are 0). Returns ``Tensor[N]``.

    Example:
        >>> total_variation(torch.tensor([[[[0.0, 1.0], [0.0, 0.0]]]]))  # (1^2 + 0^2) + (0^2 + 1^2) + 0 + 0
        tensor([2.])
    """
    _check_batch(x, "total_variation")
    check_number(beta, "beta", "total_variation", low=0.0, strict=True)
    dh = F.pad(x[..., :, 1:] - x[..., :, :-1], (0, 1))     # x[i, j+1] - x[i, j]; 0 in the last column
    dv = F.pad(x[..., 1:, :] - x[..., :-1, :], (0, 0, 0, 1))  # x[i+1, j] - x[i, j]; 0 in the last row
    return _safe_pow(dh * dh + dv * dv, beta / 2).sum((1, 2, 3))


def alpha_norm(x: Tensor, alpha: float = 6.0) -> Tensor:
    """``sum |x|^alpha`` over each image of ``x[N, C, H, W]``: ``Tensor[N]``."""
    _check_batch(x, "alpha_norm")
    check_number(alpha, "alpha", "alpha_norm", low=0.0, strict=True)
    return _safe_pow(x * x, alpha / 2).sum((1, 2, 3))


def jitter(x: Tensor, max_shift: int, generator: torch.Generator) -> tuple[Tensor, tuple[int, int]]:
    """``x[N, C, H, W]`` rolled (circularly) by one random shift ``(dy, dx)``,
    each drawn uniformly from ``[-max_shift, max_shift]`` with ``generator``,
    the same for the whole batch (so an image's result does not depend on
    the others in its batch). Returns ``(rolled, (dy, dx))``; the inverse is
    ``x.roll((-dy, -dx), (2, 3))``, and gradients taken through the roll
    arrive unrolled. ``max_shift == 0`` draws nothing and returns ``x``."""
    check_count(max_shift, "max_shift", "jitter", low=0)
    if max_shift == 0:
        return x, (0, 0)
    dy, dx = torch.randint(-max_shift, max_shift + 1, (2,), generator=generator).tolist()
    return x.roll((dy, dx), (2, 3)), (dy, dx)


def gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    """``x[N, C, H, W]`` blurred by a Gaussian of standard deviation ``sigma``
    pixels: two depthwise 1-D convolutions (rows, then columns) with a kernel
    of radius ``ceil(3 sigma)`` normalised to sum 1, the border replicated.
    ``sigma == 0`` returns ``x``."""
    _check_batch(x, "gaussian_blur")
    check_number(sigma, "sigma", "gaussian_blur", low=0.0)
    if sigma == 0:
        return x
    radius = max(1, math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-t * t / (2 * sigma * sigma))
    kernel = kernel / kernel.sum()
    c = x.shape[1]
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="replicate"), kernel.view(1, 1, 1, -1).repeat(c, 1, 1, 1),
                 groups=c)
    return F.conv2d(F.pad(x, (0, 0, radius, radius), mode="replicate"), kernel.view(1, 1, -1, 1).repeat(c, 1, 1, 1),
                    groups=c)


class _Reached(Exception):
    """Raised by the layer's hook: nothing above it is computed."""


def layer_output(model: nn.Module, x: Tensor, layer: str) -> Tensor:
    """The output of module ``layer`` for input ``x``, with its graph to ``x``
    (the forward stops there; the hook is always removed)."""
    captured = {}

    def hook(_module, _inputs, output):
        if not isinstance(output, Tensor):
            raise ValueError(f"layer {layer!r} returns {type(output).__name__}, not a Tensor")
        captured["out"] = output
        raise _Reached

    handle = dict(model.named_modules())[layer].register_forward_hook(hook)
    try:
        model(x)
    except _Reached:
        pass
    finally:
        handle.remove()
    if "out" not in captured:
        raise ValueError(f"layer {layer!r} did not run in the model's forward")
    return captured["out"]


def check_images(images, caller: str, name: str = "images") -> None:
    if not isinstance(images, Tensor) or images.dim() != 4 or not images.is_floating_point() or not len(images):
        got = f"{images.dtype} {list(images.shape)}" if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"{caller}: {name} must be a non-empty float Tensor[N, C, H, W] in the model's input space "
                         f"(got {got})")
    if not bool(torch.isfinite(images).all()):
        raise ValueError(f"{caller}: {name} hold NaN or infinite values")


def check_number(value, name: str, caller: str, *, low: float | None = None, strict: bool = False) -> float:
    """A real number (not bool), ``> low`` with ``strict`` else ``>= low``."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{caller}: {name} must be a finite number (got {value!r})")
    if low is not None and (value <= low if strict else value < low):
        raise ValueError(f"{caller}: {name} must be {'>' if strict else '>='} {low:g} (got {value!r})")
    return float(value)


def check_count(value, name: str, caller: str, *, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{caller}: {name} must be an int >= {low} (got {value!r})")
    return value
