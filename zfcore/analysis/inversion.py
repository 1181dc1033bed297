"""Inverting a layer's representation (Mahendran & Vedaldi, "Understanding deep
image representations by inverting them", CVPR 2015): which images does the
network see as this one?

From the features ``phi0 = phi(x0)`` of an image ``x0`` at a layer, an image is
reconstructed from noise by gradient descent on (the paper's eq. 1 with its
normalisation, section 3.3)

    E(x) = ||phi(x) - phi0||^2 / ||phi0||^2
           + alpha_weight * R_alpha(x) / (C H W B^alpha)
           + tv_weight * TV^beta(x) / (C H W V^beta),       V = B / 6.5,

``R_alpha(x) = sum |x|^alpha`` and ``TV^beta`` as in ``_priors`` (the
``alpha`` norm keeps the pixels within the range of natural images, the total
variation makes them piecewise smooth). ``B`` is the images' typical
magnitude, so that each prior is about its weight for an image of natural
range and texture whatever the model's input scale: the paper's B (80 for
mean-subtracted 0..255 images) and V = B / 6.5 (the typical jump between
neighbouring pixels) are divided out the same way.

Where the paper is silent or we chose otherwise:

* ``B`` (``scale``) defaults to the root mean square of all the given images in
  the model's input space (one number for the batch, as the paper's B is one
  for the dataset); the priors are averaged over the ``C H W`` values (the
  paper divides by ``H W``; the factor ``C`` is absorbed in the weights).
* The optimiser is Adam (the paper: gradient descent with momentum) on the
  normalised image ``u = x / B``, so ``lr`` is in units of ``B`` and does not
  depend on the input scale; the learning rate is constant.
* The start is one Gaussian noise image per original, ``x = 0.5 B z`` with
  ``z ~ N(0, 1)`` drawn from ``seed``, the same start for every layer (so the
  layers are compared from one starting point).
* The default weights (``alpha_weight = 1e-3``, ``tv_weight = 0.01``) were
  chosen on the demo model: its embedded images have normalised priors of
  about 8 (alpha-norm) and 18 (TV, sharper edges than the paper's V assumes)
  per value, so 0.008 and 0.18 at these weights, small beside the feature
  term of a poor reconstruction; with larger TV weights the first layers'
  reconstructions blur.
* All images of a layer are reconstructed in one batched optimisation; their
  objectives are independent (Adam acts per value), so an image's
  reconstruction does not depend on the others in its batch apart from ``B``.
* Reported errors: ``feature_error = ||phi(x) - phi0|| / ||phi0||`` (the square
  root of the objective's first term) and ``pixel_error = ||x - x0|| / ||x0||``,
  both for the final ``x``; ``x0`` is in the model's input space (mean
  subtracted), so ``pixel_error`` compares against the image's contrast.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from tqdm import tqdm

from ._args import (check_images, check_layers, check_positive_float, check_positive_int, check_seed, eval_mode,
                    in_sequence, main_path, model_device)
from ._priors import (adam, alpha_norm, check_number, first_of_each_class, gradient_steps, input_scale, layer_output,
                      total_variation)
from .probes import depth_layers
from .registry import Analysis
from .result import Result

__all__ = ["ANALYSIS", "Inversion", "depth_claim", "embedded_layers", "inversion_objective", "invert", "run"]

_START_STD = 0.5
"""The starting noise's standard deviation, in units of B."""
CLAIM_TOLERANCE = 0.02
"""How far the mean pixel error may fall from one layer to the next in the claim that it grows with depth
(deep layers' errors saturate near 1, where the optimisation's noise decides their order)."""
TV_JUMP = 6.5
"""The paper's ratio of the typical image magnitude B to the typical jump V between neighbouring pixels."""


@dataclass
class Inversion(Result):
    """Reconstructions of ``N`` images from each of ``L`` layers.

    ``originals[N, C, H, W]`` and ``reconstructions[L, N, C, H, W]`` in the
    model's input space; ``feature_error[L, N]`` and ``pixel_error[L, N]``
    (module docstring); ``curve[L, steps]`` the mean objective over the images
    before each step; the settings (``scale`` is the B used)."""

    layers: list[str]
    originals: Tensor
    reconstructions: Tensor
    feature_error: Tensor
    pixel_error: Tensor
    curve: Tensor
    steps: int
    lr: float
    alpha: float
    alpha_weight: float
    tv_beta: float
    tv_weight: float
    scale: float
    seed: int


def inversion_objective(model: nn.Module, x: Tensor, layer: str, target: Tensor, *, scale: float,
                        alpha: float = 6.0, alpha_weight: float = 1e-3, tv_beta: float = 2.0,
                        tv_weight: float = 0.01) -> tuple[Tensor, Tensor]:
    """The objective ``E`` (module docstring) of each image of ``x[N, C, H, W]``
    against the features ``target[N, ...]`` of ``layer``: ``(total[N],
    feature_term[N])``, differentiable w.r.t. ``x``. ``target`` must have a
    non-zero norm per image."""
    features = layer_output(model, x, layer)
    diff = (features - target).flatten(1)
    feature_term = diff.square().sum(1) / target.flatten(1).square().sum(1)
    values = x[0].numel()
    total = feature_term
    if alpha_weight:
        total = total + alpha_weight * alpha_norm(x / scale, alpha) / values
    if tv_weight:
        total = total + tv_weight * total_variation(x / (scale / TV_JUMP), tv_beta) / values
    return total, feature_term


def invert(model: nn.Module, images: Tensor, layers: Sequence[str] | str, *, steps: int = 200, lr: float = 0.05,
           alpha: float = 6.0, alpha_weight: float = 1e-3, tv_beta: float = 2.0, tv_weight: float = 0.01,
           scale: float | None = None, seed: int = 0, progress: bool = True) -> Inversion:
    """Reconstruct every image of ``images[N, C, H, W]`` (the model's input
    space) from its features at each of ``layers``: one batched optimisation of
    ``steps`` Adam steps per layer (module docstring).

    Args:
        model: a CNN taking ``Tensor[N, C, H, W]``; in eval mode while it
            works (restored after); its parameters are not touched.
        images: the originals ``x0``.
        layers: module names of ``model``, e.g. ``["conv1", "relu5", "fc7"]``.
        steps, lr: Adam steps and learning rate (in units of ``scale``).
        alpha, alpha_weight: the alpha-norm prior's exponent and weight.
        tv_beta, tv_weight: the total-variation prior's exponent and weight.
        scale: ``B``, the typical magnitude of an image (default: the images'
            root mean square).
        seed: the noise the reconstructions start from.

    Returns:
        ``Inversion``: ``reconstructions[L, N, C, H, W]``, the errors, the curves.

    Example:
        >>> result = invert(model, loaded.preprocess(uint8_images), ["conv1", "relu5", "fc7"])
        >>> result.pixel_error.mean(1)   # grows with depth
    """
    caller = "invert"
    layers = check_layers(model, layers, caller)
    check_images(images, caller)
    steps = check_positive_int(steps, "steps", caller)
    lr = check_positive_float(lr, "lr", caller)
    alpha = check_number(alpha, "alpha", caller, low=1.0)
    tv_beta = check_number(tv_beta, "tv_beta", caller, low=1.0)
    alpha_weight = check_positive_float(alpha_weight, "alpha_weight", caller, allow_zero=True)
    tv_weight = check_positive_float(tv_weight, "tv_weight", caller, allow_zero=True)
    check_seed(seed, caller)
    device = model_device(model)
    images = images.detach().to(device)
    scale = input_scale(images, scale, caller)
    generator = torch.Generator().manual_seed(seed)
    start = _START_STD * torch.randn(images.shape, generator=generator, dtype=images.dtype).to(device)
    settings = dict(scale=scale, alpha=alpha, alpha_weight=alpha_weight, tv_beta=tv_beta, tv_weight=tv_weight)
    recon, feature_error, curves = [], [], []
    with eval_mode(model), tqdm(total=len(layers) * steps, desc="inversion", unit="step",
                                disable=not progress) as bar:
        for layer in layers:
            with torch.no_grad():
                target = layer_output(model, images, layer).detach()
            norms = target.flatten(1).square().sum(1)
            if not bool((norms > 0).all()):
                bad = torch.nonzero(norms == 0).flatten().tolist()
                raise ValueError(f"{caller}: images {bad} have all-zero features at {layer!r}; the normalised "
                                 f"reconstruction error is undefined for them")

            def objective(u: Tensor, layer=layer, target=target) -> Tensor:
                return inversion_objective(model, u * scale, layer, target, **settings)[0]

            u = start.clone()
            u, curve = gradient_steps(u, objective, adam(u, lr), steps=steps, caller=caller, bar=bar,
                                      what=f"the optimisation for {layer!r}", advice="lower lr or the prior weights")
            x = u * scale
            with torch.no_grad():
                _, term = inversion_objective(model, x, layer, target, **settings)
            recon.append(x)
            feature_error.append(term.sqrt())
            curves.append(torch.tensor(curve))
    recon = torch.stack(recon)
    pixel_error = (recon - images).flatten(2).norm(dim=2) / images.flatten(1).norm(dim=1).clamp_min(1e-30)
    return Inversion(layers, images.cpu(), recon.cpu(), torch.stack(feature_error).cpu(), pixel_error.cpu(),
                     torch.stack(curves), steps, lr, alpha, alpha_weight, tv_beta, tv_weight, scale, seed)


def depth_claim(layers: Sequence[str], pixel_error: Tensor) -> dict:
    """The claim that deeper layers keep less pixel detail, from
    ``pixel_error[L, N]`` of ``layers`` in forward order: holds if the mean
    pixel error never falls by more than ``CLAIM_TOLERANCE`` from one layer to
    the next and the last layer's exceeds the first's."""
    means = pixel_error.mean(1)
    rises = bool((means[1:] >= means[:-1] - CLAIM_TOLERANCE).all()) and bool(means[-1] > means[0])
    return {"claim": "Deeper layers keep less pixel detail: the reconstruction's pixel error grows with depth "
                     "(Mahendran & Vedaldi, section 5)",
            "holds": rises,
            "detail": "mean pixel error per layer, in the order given: "
                      + ", ".join(f"{name} {float(v):.3f}" for name, v in zip(layers, means))
                      + f" (holds if it never falls by more than {CLAIM_TOLERANCE:g} from one layer to the next, "
                        f"where errors saturate near 1, and the last exceeds the first)"}


def embedded_layers(model: nn.Module, count: int, input_shape: Sequence[int] | None = None) -> list[str]:
    """``count`` layers spread evenly over depth, from the first convolution
    to the last ReLU (relu7 for the paper's models): picked from the first
    Conv2d followed by every ReLU (``probes.depth_layers``). A model whose
    first Conv2d is not in a chain of ``nn.Sequential`` layers (a ``.pt2``
    program has none) starts at the first layer of its main path instead
    (``_args.main_path``; given ``input_shape``)."""
    first = [name for name, module in model.named_modules() if isinstance(module, nn.Conv2d)][:1]
    if input_shape is not None and not (first and in_sequence(model, first[0])):
        first = [layer.name for layer in main_path(model, input_shape) if not layer.output][:1]
    candidates = list(dict.fromkeys(first + depth_layers(model, input_shape)))
    if count >= len(candidates):
        return candidates
    if count == 1:
        return candidates[-1:]
    return list(dict.fromkeys(candidates[round(i * (len(candidates) - 1) / (count - 1))] for i in range(count)))


def run(subject, dataset, *, quick: bool, progress: bool, seed: int) -> tuple[Inversion, dict]:
    """Inversion on ``dataset`` (the first image of each class): quick, 2
    images at 4 layers (conv1, relu2, relu5, relu7 for the paper's models), 80
    steps; full, 10 images at 8 layers, 400 steps. Extra for the page: the
    uint8 originals and reconstructions (``subject.deprocess``), the class
    names and the images' labels."""
    index = first_of_each_class(dataset)
    index = index[:2] if quick else index
    layers = embedded_layers(subject.model, 4 if quick else 8, subject.input_shape)
    result = invert(subject.model, subject.preprocess(dataset.images[index]), layers, steps=80 if quick else 400,
                    seed=seed, progress=progress)
    return result, {"images": dataset.images[index], "reconstructions": subject.deprocess(result.reconstructions),
                    "classes": list(dataset.classes), "labels": dataset.labels[index]}


def _check(subject, dataset) -> str | None:
    if not embedded_layers(subject.model, 1, subject.input_shape):
        return "inversion needs a model with convolutional, ReLU or linear layers to invert; this one has none"
    return None


ANALYSIS = Analysis(
    name="inversion", group="toolbox", order=50, demo=True, result=Inversion, run=run, check=_check,
    description="images reconstructed from a layer's features (Mahendran & Vedaldi)",
    claims=("deeper layers keep less pixel detail: the reconstruction's pixel error grows with depth",))
