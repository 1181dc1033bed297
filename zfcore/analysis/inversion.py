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
from pathlib import Path

import torch
from torch import Tensor, nn
from tqdm import tqdm

from ._priors import alpha_norm, check_count, check_images, check_number, layer_output, total_variation
from ._render import begin
from ._stream import check_layers, model_device

__all__ = ["Inversion", "invert", "inversion_objective", "depth_claim", "render", "analyze_embedded"]

_START_STD = 0.5
"""The starting noise's standard deviation, in units of B."""
CLAIM_TOLERANCE = 0.02
"""How far the mean pixel error may fall from one layer to the next in the claim that it grows with depth
(deep layers' errors saturate near 1, where the optimisation's noise decides their order)."""
TV_JUMP = 6.5
"""The paper's ratio of the typical image magnitude B to the typical jump V between neighbouring pixels."""


@dataclass
class Inversion:
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

    def as_dict(self) -> dict:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, d: dict) -> "Inversion":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__})


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
        model: a CNN taking ``Tensor[N, C, H, W]``; put in eval mode while it
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
    layers = check_layers(model, layers, "invert")
    check_images(images, "invert")
    steps = check_count(steps, "steps", "invert")
    lr = check_number(lr, "lr", "invert", low=0.0, strict=True)
    alpha = check_number(alpha, "alpha", "invert", low=1.0)
    tv_beta = check_number(tv_beta, "tv_beta", "invert", low=1.0)
    alpha_weight = check_number(alpha_weight, "alpha_weight", "invert", low=0.0)
    tv_weight = check_number(tv_weight, "tv_weight", "invert", low=0.0)
    check_count(seed, "seed", "invert", low=0)
    device = model_device(model)
    images = images.detach().to(device)
    if scale is None:
        scale = float(images.square().mean().sqrt())
        if scale == 0:
            raise ValueError("invert: the images are all 0, so their scale B is 0; pass scale explicitly")
    scale = check_number(scale, "scale", "invert", low=0.0, strict=True)
    generator = torch.Generator().manual_seed(seed)
    start = _START_STD * torch.randn(images.shape, generator=generator, dtype=images.dtype).to(device)
    was_training = model.training
    model.eval()
    recon, feature_error, curves = [], [], []
    bar = tqdm(total=len(layers) * steps, desc="inversion", unit="step", disable=not progress)
    try:
        for layer in layers:
            with torch.no_grad():
                target = layer_output(model, images, layer).detach()
            norms = target.flatten(1).square().sum(1)
            if not bool((norms > 0).all()):
                bad = torch.nonzero(norms == 0).flatten().tolist()
                raise ValueError(f"invert: images {bad} have all-zero features at {layer!r}; the normalised "
                                 f"reconstruction error is undefined for them")
            settings = dict(scale=scale, alpha=alpha, alpha_weight=alpha_weight, tv_beta=tv_beta, tv_weight=tv_weight)
            u = start.clone().requires_grad_(True)
            optimiser = torch.optim.Adam([u], lr=lr)
            curve = []
            for step in range(steps):
                total, _ = inversion_objective(model, u * scale, layer, target, **settings)
                loss = total.sum()
                if not bool(torch.isfinite(loss)):
                    raise ValueError(f"invert: the optimisation for {layer!r} diverged at step {step} (non-finite "
                                     f"objective); lower lr or the prior weights")
                u.grad, = torch.autograd.grad(loss, [u])
                optimiser.step()
                curve.append(float(loss.detach()) / len(images))
                bar.update(1)
            x = (u.detach() * scale)
            with torch.no_grad():
                _, term = inversion_objective(model, x, layer, target, **settings)
            recon.append(x)
            feature_error.append(term.sqrt())
            curves.append(torch.tensor(curve))
    finally:
        bar.close()
        model.train(was_training)
    recon = torch.stack(recon)
    pixel_error = (recon - images).flatten(2).norm(dim=2) / images.flatten(1).norm(dim=1).clamp_min(1e-30)
    return Inversion(layers, images.cpu(), recon.cpu(), torch.stack(feature_error).cpu(), pixel_error.cpu(),
                     torch.stack(curves), steps, lr, alpha, alpha_weight, tv_beta, tv_weight, scale, seed)


def _display(x: Tensor) -> Tensor:
    """Model-space images ``[..., C, H, W]`` for display when no uint8 version
    is given: each linearly rescaled from its own min..max to 0..255."""
    low = x.amin(dim=(-3, -2, -1), keepdim=True)
    high = x.amax(dim=(-3, -2, -1), keepdim=True)
    return ((x - low) / (high - low).clamp_min(1e-12) * 255).round().clamp(0, 255).to(torch.uint8)


def render(result: "Inversion | dict", assets: Path, *, images: Tensor | None = None,
           reconstructions: Tensor | None = None, classes: Sequence[str] | None = None,
           labels: Tensor | None = None) -> dict:
    """A grid of originals (rows) by layers (columns), the errors per layer, a
    table and the claim that deeper layers keep less pixel detail. ``images``
    (uint8 ``[N, 3, H, W]``) and ``reconstructions`` (uint8 ``[L, N, 3, H, W]``,
    e.g. through ``Loaded.deprocess``) are what is shown; without them each
    image is linearly rescaled from its own min..max to 0..255."""
    plt, result, assets = begin(result, Inversion, assets)
    n_layers, n = result.reconstructions.shape[:2]
    shown_originals = images if images is not None else _display(result.originals)
    shown = reconstructions if reconstructions is not None else _display(result.reconstructions)
    figures = []
    rows = min(n, 8)
    if rows and n_layers:
        fig, axes = plt.subplots(rows, n_layers + 1, figsize=(1.6 * (n_layers + 1), 1.7 * rows), squeeze=False)
        for k in range(rows):
            axes[k, 0].imshow(shown_originals[k].permute(1, 2, 0).numpy())
            title = "original"
            if classes is not None and labels is not None:
                title = str(classes[int(labels[k])])
            axes[k, 0].set_title(title, fontsize=8)
            for l in range(n_layers):
                axes[k, l + 1].imshow(shown[l, k].permute(1, 2, 0).numpy())
                axes[k, l + 1].set_title(f"{result.layers[l]} ({float(result.pixel_error[l, k]):.2f})", fontsize=8)
        for ax in axes.flat:
            ax.set_xticks([])
            ax.set_yticks([])
        fig.tight_layout()
        fig.savefig(assets / "inversion_grid.png", dpi=80)
        plt.close(fig)
        figures.append({"file": "inversion_grid.png",
                        "caption": f"Each original (left) reconstructed from its features at each layer, from noise "
                                   f"by {result.steps} Adam steps with the alpha-norm (alpha={result.alpha:g}) and "
                                   f"TV (beta={result.tv_beta:g}) priors; in brackets the pixel error "
                                   f"||x - x0|| / ||x0||."
                                   + ("" if reconstructions is not None else
                                      " Each image is rescaled from its own min..max for display.")})
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
        depth = list(range(n_layers))
        for ax, values, name in ((axes[0], result.feature_error, "feature error ||phi(x)-phi0|| / ||phi0||"),
                                 (axes[1], result.pixel_error, "pixel error ||x - x0|| / ||x0||")):
            for k in range(n):
                ax.plot(depth, values[:, k].numpy(), color="0.75", linewidth=0.8)
            ax.plot(depth, values.mean(1).numpy(), "o-", color="C0", label="mean")
            ax.set_xticks(depth)
            ax.set_xticklabels(result.layers, rotation=45, fontsize=8)
            ax.set_title(name, fontsize=9)
            ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(assets / "inversion_errors.png", dpi=80)
        plt.close(fig)
        figures.append({"file": "inversion_errors.png",
                        "caption": "Per layer, the final reconstruction's errors (grey: each image; blue: mean)."})
        fig, ax = plt.subplots(figsize=(5, 3.2))
        for l in range(n_layers):
            ax.plot(result.curve[l].numpy(), label=result.layers[l])
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("objective (mean over images)")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(assets / "inversion_curve.png", dpi=80)
        plt.close(fig)
        figures.append({"file": "inversion_curve.png", "caption": "The objective during each layer's optimisation."})
    table = [[result.layers[l], round(float(result.feature_error[l].mean()), 4),
              round(float(result.pixel_error[l].mean()), 4), round(float(result.curve[l, -1]), 4)]
             for l in range(n_layers)]
    claims = [depth_claim(result.layers, result.pixel_error)] if n_layers >= 2 and n else []
    return {"title": "Inversion: images from a layer's features (Mahendran & Vedaldi)",
            "intro": "Each original's features at a layer are inverted: starting from noise, an image is optimised "
                     "until its features match, under priors that keep it natural (an alpha-norm bound and total "
                     "variation). What survives in the reconstruction is what the layer keeps of the image; what "
                     "changes freely is what it is invariant to.",
            "figures": figures,
            "tables": [{"caption": f"per layer (mean over {n} images; B = {result.scale:.4g}, "
                                   f"alpha weight {result.alpha_weight:g}, TV weight {result.tv_weight:g})",
                        "header": ["layer", "feature error", "pixel error", "final objective"], "rows": table}],
            "claims": claims}


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


def embedded_layers(model: nn.Module, count: int) -> list[str]:
    """``count`` layers spread evenly over depth, from the first convolution
    to the last ReLU (relu7 for the paper's models): picked from the first
    Conv2d followed by every ReLU (``probes.depth_layers``)."""
    from .probes import depth_layers

    first = [name for name, module in model.named_modules() if isinstance(module, nn.Conv2d)][:1]
    candidates = list(dict.fromkeys(first + depth_layers(model)))
    if count >= len(candidates):
        return candidates
    if count == 1:
        return candidates[-1:]
    return list(dict.fromkeys(candidates[round(i * (len(candidates) - 1) / (count - 1))] for i in range(count)))


def analyze_embedded(loaded, *, quick: bool, progress: bool, seed: int) -> tuple[Inversion, dict]:
    """Inversion on the run's embedded validation images (the first of each
    class): quick, 2 images at 4 layers (conv1, relu2, relu5, relu7 for the
    paper's models), 80 steps; full, 10 images at 8 layers, 400 steps."""
    from ..analyze import _embedded_val

    base = _embedded_val(loaded).base
    index = torch.cat([torch.nonzero(base.labels == c).flatten()[:1] for c in range(len(loaded.classes))])
    index = index[:2] if quick else index
    layers = embedded_layers(loaded.model, 4 if quick else 8)
    result = invert(loaded.model, loaded.preprocess(base.images[index]), layers, steps=80 if quick else 400,
                    seed=seed, progress=progress)
    return result, {"images": base.images[index], "reconstructions": loaded.deprocess(result.reconstructions),
                    "classes": list(loaded.classes), "labels": base.labels[index]}
