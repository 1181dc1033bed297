"""What the optimisation-based visualisations share (inversion, class models,
DeepDream, style): the natural-image priors of Mahendran & Vedaldi,
"Understanding deep image representations by inverting them" (CVPR 2015,
section 3.2), the augmentations applied while optimising (jitter, Gaussian
blur), the forward to a layer that keeps the graph to the input, the images'
typical magnitude B, and the loop of gradient steps on the images.

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
* ``gradient_steps``: the loop every analysis here runs (a jittered objective,
  its gradient with respect to the images, an update, the divergence checks,
  the curve, the progress bar); ``adam`` is its Adam update.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._args import LayerTap, check_positive_float, check_positive_int, describe

__all__ = ["adam", "alpha_norm", "check_number", "first_of_each_class", "gaussian_blur", "gradient_steps", "graph_tap",
           "input_scale", "jitter", "layer_output", "total_variation"]


def _safe_pow(base: Tensor, exponent: float) -> Tensor:
    """``base ** exponent`` for ``base >= 0``, 0 with gradient 0 where ``base == 0``."""
    if exponent == 1.0:
        return base
    positive = base > 0
    return torch.where(positive, torch.where(positive, base, torch.ones_like(base)) ** exponent,
                       torch.zeros_like(base))


def _check_batch(x, caller: str) -> None:
    """Any float batch (the priors are also taken of non-finite images)."""
    if not isinstance(x, Tensor) or x.dim() != 4 or not x.is_floating_point():
        raise ValueError(f"{caller}: x must be a float Tensor[N, C, H, W] (got {describe(x)})")


def total_variation(x: Tensor, beta: float = 2.0) -> Tensor:
    """``TV^beta`` of each image of ``x[N, C, H, W]`` (module docstring: border
    differences past the last row/column are 0). Returns ``Tensor[N]``.

    Example:
        >>> total_variation(torch.tensor([[[[0.0, 1.0], [0.0, 0.0]]]]))  # (1^2 + 0^2) + (0^2 + 1^2) + 0 + 0
        tensor([2.])
    """
    _check_batch(x, "total_variation")
    check_positive_float(beta, "beta", "total_variation")
    dh = F.pad(x[..., :, 1:] - x[..., :, :-1], (0, 1))     # x[i, j+1] - x[i, j]; 0 in the last column
    dv = F.pad(x[..., 1:, :] - x[..., :-1, :], (0, 0, 0, 1))  # x[i+1, j] - x[i, j]; 0 in the last row
    return _safe_pow(dh * dh + dv * dv, beta / 2).sum((1, 2, 3))


def alpha_norm(x: Tensor, alpha: float = 6.0) -> Tensor:
    """``sum |x|^alpha`` over each image of ``x[N, C, H, W]``: ``Tensor[N]``."""
    _check_batch(x, "alpha_norm")
    check_positive_float(alpha, "alpha", "alpha_norm")
    return _safe_pow(x * x, alpha / 2).sum((1, 2, 3))


def jitter(x: Tensor, max_shift: int, generator: torch.Generator) -> tuple[Tensor, tuple[int, int]]:
    """``x[N, C, H, W]`` rolled (circularly) by one random shift ``(dy, dx)``,
    each drawn uniformly from ``[-max_shift, max_shift]`` with ``generator``,
    the same for the whole batch (so an image's result does not depend on
    the others in its batch). Returns ``(rolled, (dy, dx))``; the inverse is
    ``x.roll((-dy, -dx), (2, 3))``, and gradients taken through the roll
    arrive unrolled. ``max_shift == 0`` draws nothing and returns ``x``."""
    check_positive_int(max_shift, "max_shift", "jitter", minimum=0)
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
    check_positive_float(sigma, "sigma", "gaussian_blur", allow_zero=True)
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


def graph_tap(model: nn.Module, layers: Sequence[str]) -> LayerTap:
    """A ``LayerTap`` whose outputs keep their autograd graph to the input (each
    a clone, safe from a later in-place layer); the forward stops after the
    last of ``layers``."""
    return LayerTap(model, layers, reduce=torch.clone, graph=True)


def layer_output(model: nn.Module, x: Tensor, layer: str) -> Tensor:
    """The output of module ``layer`` for input ``x``, with its graph to ``x``
    (the forward stops there; the hook is always removed)."""
    with graph_tap(model, [layer]) as tap:
        return tap(x)[layer]


def check_number(value, name: str, caller: str, *, low: float, strict: bool = False) -> float:
    """A finite real number (not bool), ``> low`` with ``strict`` else ``>= low``
    (for bounds other than 0; ``_args.check_positive_float`` words those)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{caller}: {name} must be a finite number (got {value!r})")
    if value <= low if strict else value < low:
        raise ValueError(f"{caller}: {name} must be {'>' if strict else '>='} {low:g} (got {value!r})")
    return float(value)


def input_scale(images: Tensor, scale: float | None, caller: str) -> float:
    """``B``, the typical magnitude of an image in the model's input space:
    ``scale`` when given (a positive number), else the root mean square of all
    of ``images`` (one number for the batch)."""
    if scale is None:
        scale = float(images.square().mean().sqrt())
        if scale == 0:
            raise ValueError(f"{caller}: the images are all 0, so their scale B is 0; pass scale explicitly")
    return check_positive_float(scale, "scale", caller)


def gradient_steps(x: Tensor, objective: Callable[[Tensor], Tensor], update: Callable[[Tensor, Tensor, int], Tensor],
                   *, steps: int, caller: str, bar, what: str = "the ascent", advice: str = "lower lr",
                   max_shift: int = 0, generator: torch.Generator | None = None) -> tuple[Tensor, list[float]]:
    """``steps`` gradient steps on the images ``x[N, ...]`` (a leaf).

    Each step: ``objective`` (per image, ``Tensor[N]``) of ``x`` rolled by a
    random shift of at most ``max_shift`` pixels (``jitter`` with
    ``generator``), its sum's gradient ``g`` with respect to ``x`` (the roll
    undone by autograd), and ``x <- update(x, g, step)`` (without grad; the
    sign is the update's: ascent or descent). A non-finite objective, or an
    image made non-finite, is a ``ValueError`` naming ``what`` and the step.
    ``bar`` (a tqdm) moves by one per step.

    Returns ``(x, curve)``: the final images, detached, and the mean objective
    before each step.
    """
    curve = []
    for step in range(steps):
        if not x.requires_grad:
            x.requires_grad_(True)
        shifted, _ = jitter(x, max_shift, generator)
        value = objective(shifted)
        loss = value.sum()
        if not bool(torch.isfinite(loss)):
            raise ValueError(f"{caller}: {what} diverged at step {step} (non-finite objective); {advice}")
        grad, = torch.autograd.grad(loss, [x])
        with torch.no_grad():
            x = update(x, grad, step)
        if not bool(torch.isfinite(x).all()):
            raise ValueError(f"{caller}: {what} diverged at step {step} (non-finite image); {advice}")
        curve.append(float(loss.detach()) / len(value))
        bar.update(1)
    return x.detach(), curve


def adam(x: Tensor, lr: float) -> Callable[[Tensor, Tensor, int], Tensor]:
    """The ``update`` of ``gradient_steps`` that takes Adam steps (descent) on
    the leaf ``x`` itself, with learning rate ``lr``."""
    optimiser = torch.optim.Adam([x.requires_grad_(True)], lr=lr)

    def update(x: Tensor, grad: Tensor, _step: int) -> Tensor:
        x.grad = grad
        optimiser.step()
        return x
    return update


def first_of_each_class(dataset, per_class: int = 1) -> Tensor:
    """The indices of the first ``per_class`` images of each class of
    ``dataset`` (fewer where a class has fewer), class by class: the images
    the analyses here run on."""
    return torch.cat([torch.nonzero(dataset.labels == c).flatten()[:per_class] for c in range(len(dataset.classes))])
