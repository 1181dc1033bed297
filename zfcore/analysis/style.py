"""Texture synthesis (Gatys, Ecker & Bethge 2015, "Texture synthesis using
convolutional neural networks") and style transfer (Gatys, Ecker & Bethge
2016, "Image style transfer using convolutional neural networks").

A texture is described by the Gram matrices of a CNN's feature maps: for a
layer with ``C`` maps of ``H x W`` units, ``F = features.reshape(C, H * W)``
and ``G = F F^T``, the correlations between maps with the spatial layout
summed away. Texture synthesis starts from white noise and changes the image
(by gradient descent on the pixels, the network fixed) until its Gram matrices
at the chosen layers match those of the texture; style transfer does the same
while also matching one layer's features themselves (the content) of another
image.

Definitions, as in the papers:

* ``gram(features)`` is ``F F^T / (C * H * W)``: Gatys' ``G^l`` divided by
  ``N_l M_l`` (maps times units per map). With that normalisation the layer's
  style loss ``E_l = 1/4 * sum_ij (G_ij - A_ij)^2`` is exactly the papers'
  ``1 / (4 N_l^2 M_l^2) * sum_ij (G^l_ij - A^l_ij)^2``, and Gram matrices of
  images of different sizes are comparable (a small texture crop can drive a
  larger synthesis).
* ``style_loss = sum_l w_l E_l`` with equal weights ``w_l = 1 / |layers|`` by
  default (the 2016 paper's choice; any non-negative weights can be given).
* ``content_loss = 1/2 * sum (F - P)^2`` over one layer's units (2016, eq. 1).
* Style transfer minimises ``content_weight * content_loss + style_weight *
  style_loss`` (the papers' alpha and beta).

Where the papers are silent, or this code chooses:

* **Batching.** ``N`` images are optimised in one tensor; the objective is the
  sum of the per-image losses, and since the model runs in eval mode every
  image's gradient depends on that image alone. With Adam (per-pixel steps)
  a batched run therefore equals the per-image runs to rounding. L-BFGS keeps
  one curvature history and one line search for the whole batch (the images
  share step lengths), so a batched L-BFGS run is a valid optimisation of the
  sum but not the same trajectory as per-image runs.
* **The noise start.** Image ``n``'s noise is the ``n``-th ``randn(C, H, W)``
  drawn from a ``torch.Generator`` seeded with ``seed`` (float32 on the CPU,
  then cast), scaled to the mean and standard deviation of image ``n``'s
  texture (style) image: the first images of a batch get the same noise as a
  smaller batch with the same seed.
* **Optimisation variable and step sizes.** The optimiser works on each
  image divided by the power of two nearest its texture (style) image's
  standard deviation (exact, so a start is reproduced bit for bit), so ``lr``
  is in units of that contrast whatever the model's input scale is: Adam's
  default ``lr`` is 0.05 (a step moves a pixel by about 5 % of the style
  image's standard deviation, within a factor of 1.4). The objective each
  optimiser sees is each image's loss divided by its value at the start (1
  where that is 0): the same minimiser, but gradients of a size that L-BFGS's
  absolute curvature threshold and Adam's ``eps`` suit whatever the network's
  feature scale is (un-rescaled, L-BFGS stalled on the demo model's tiny
  normalised Gram losses). L-BFGS (``torch.optim.LBFGS`` with the
  strong-Wolfe line search, as the papers' L-BFGS) uses ``lr = 1`` and no
  gradient or change tolerance (it runs its ``steps`` iterations unless the
  gradient is exactly zero or the line search stalls), at most ``steps * 5/4``
  evaluations of the objective.
* **No pixel bounds.** The papers' L-BFGS is unbounded too; the page
  clips for display (``Subject.deprocess``).
* **Gradients** are taken with ``torch.autograd.grad`` with respect to the
  image leaf only (L-BFGS reads them from the leaf's ``.grad``); while it
  works the model runs in eval mode with its parameters' ``requires_grad``
  off (both restored afterwards, also after an error), so nothing is computed
  or stored for them. The forward stops after the deepest requested layer.
* **The balance of style and content.** ``style_weight`` defaults to 1e6
  (with ``content_weight`` 1), tuned on the demo model, whose inputs are
  scaled by 1/64: the style loss grows as the 4th power of the features and
  the content loss as the 2nd, so the papers' ratio for VGG on 0..255 pixels
  (1e3 to 1e4) does not carry over from one network to another.
* **Style images.** ``transfer_style`` takes one style image per content image
  (``style[N]``, matched pairwise) or one for all (``style[1]``); a style image
  may have another size than the content (Gram matrices do not depend on it).
* **Checks reported** (``Synthesis``): the relative Gram distance
  ``||G(output) - A||_F / ||A||_F`` per image and layer beside that of the
  seeded noise (absolute where ``A = 0``), and the style loss at the start
  beside the final one.

Example:
    >>> loaded = zfcore.load("runs/demo/run/model.pt")
    >>> result = synthesize_texture(loaded.model, textures, ["relu1", "relu2", "relu3"], steps=100)
    >>> loaded.deprocess(result.outputs)       # uint8 [N, 3, 64, 64]
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from tqdm import tqdm

from ._args import (check_choice, check_images, check_layers, check_model, check_positive_float, check_positive_int,
                    check_seed, describe, eval_mode, model_device)
from ._priors import adam, gradient_steps, graph_tap
from .registry import Analysis
from .result import Result

__all__ = ["ANALYSIS", "EMBEDDED_CONTENTS", "EMBEDDED_TEXTURES", "StyleStudy", "Synthesis", "content_loss",
           "embedded_textures", "feature_layers", "gram", "run", "style_loss", "synthesize_texture", "transfer_style"]

OPTIMIZERS = ("lbfgs", "adam")
ADAM_LR = 0.05


def gram(features: Tensor) -> Tensor:
    """Gram matrices of feature maps: ``Tensor[N, C, H, W] -> Tensor[N, C, C]``,
    ``G[n] = F F^T / (C * H * W)`` with ``F = features[n].reshape(C, H * W)``
    (Gatys et al. 2015, eq. 2, divided by maps x units; see the module docstring)."""
    if not isinstance(features, Tensor) or features.dim() != 4 or not features.is_floating_point():
        raise ValueError(f"gram: features must be a float Tensor[N, C, H, W] (got {describe(features)})")
    n, c, h, w = features.shape
    if c * h * w == 0:
        raise ValueError(f"gram: features must have maps with units (got {list(features.shape)})")
    f = features.reshape(n, c, h * w)
    return torch.bmm(f, f.transpose(1, 2)) / (c * h * w)


def _as_layers(value, what: str, caller: str) -> dict[str, Tensor]:
    if isinstance(value, Tensor):
        return {"": value}
    if isinstance(value, Mapping) and value and all(isinstance(v, Tensor) for v in value.values()):
        return dict(value)
    raise ValueError(f"{caller}: {what} must be a Tensor or a non-empty dict of Tensors by layer "
                     f"(got {describe(value)})")


def style_loss(features, target_grams, weights: Mapping[str, float] | None = None) -> Tensor:
    """The style (texture) loss of each image: ``sum_l w_l * 1/4 * ||gram(F_l) - A_l||^2``
    (Frobenius, summed over the Gram matrix's entries; Gatys et al. 2015 eq. 4-5).

    Args:
        features: ``Tensor[N, C, H, W]`` (one layer) or a dict of them by layer name.
        target_grams: ``Tensor[N or 1, C, C]`` (or ``[C, C]``) per layer, the same
            form as ``features`` (the same keys); ``[1, C, C]`` applies to every image.
        weights: ``w_l`` by layer name; default ``1 / number of layers`` each.

    Returns:
        ``Tensor[N]``.
    """
    feats = _as_layers(features, "features", "style_loss")
    targets = _as_layers(target_grams, "target_grams", "style_loss")
    if set(feats) != set(targets):
        raise ValueError(f"style_loss: target_grams has layers {sorted(targets)} but features has {sorted(feats)}")
    if weights is None:
        weights = {name: 1.0 / len(feats) for name in feats}
    elif set(weights) != set(feats):
        raise ValueError(f"style_loss: weights has layers {sorted(weights)} but features has {sorted(feats)}")
    total = None
    for name, f in feats.items():
        g = gram(f)
        a = targets[name]
        if a.dim() == 2:
            a = a[None]
        if a.dim() != 3 or a.shape[1:] != g.shape[1:] or a.shape[0] not in (1, g.shape[0]):
            raise ValueError(f"style_loss: target_grams{'' if name == '' else f'[{name!r}]'} must be a "
                             f"Tensor[{g.shape[0]} or 1, {g.shape[1]}, {g.shape[1]}] (got {describe(a)})")
        term = 0.25 * (g - a).square().sum((1, 2)) * float(weights[name])
        total = term if total is None else total + term
    return total


def content_loss(features: Tensor, target: Tensor) -> Tensor:
    """The content loss of each image: ``1/2 * sum (F - P)^2`` over all units of
    one layer (Gatys et al. 2016, eq. 1). ``features[N, ...]``, ``target`` of the
    same shape or ``[1, ...]`` (one target for all). Returns ``Tensor[N]``."""
    for name, value in (("features", features), ("target", target)):
        if not isinstance(value, Tensor) or value.dim() < 1 or not value.is_floating_point():
            raise ValueError(f"content_loss: {name} must be a float Tensor[N, ...] (got {describe(value)})")
    if target.shape[1:] != features.shape[1:] or target.shape[0] not in (1, features.shape[0]):
        raise ValueError(f"content_loss: target must have the shape of features {list(features.shape)} "
                         f"(or a batch of 1) (got {list(target.shape)})")
    return 0.5 * (features - target).square().flatten(1).sum(1)


@dataclass
class Synthesis(Result):
    """One texture synthesis or style transfer of ``N`` images (model-input space).

    ``kind``: ``"texture"`` or ``"transfer"``; ``label``: a caption.
    ``layers``, ``layer_weights``: the style layers and their ``w_l``;
    ``content_layer``, ``content_weight``, ``style_weight`` (texture: None, 0, 1).
    ``optimizer``, ``lr``, ``steps``, ``seed``, ``init`` (``"noise"`` or ``"content"``).
    ``outputs[N, C, H, W]``: the results; ``noise[N, C, H, W]``: the seeded noise
    (the start unless ``init == "content"``); ``style_images[N or 1, C, h, w]``:
    the textures / style images; ``content_images[N, C, H, W]`` (transfer only).
    ``loss_curve[E, N]``, ``style_curve[E, N]``, ``content_curve[E, N]`` (transfer
    only): the total objective, the style loss and the content loss of each image
    at each of the ``E`` evaluations of the objective (Adam: one per step, before
    it; L-BFGS: one or more per iteration). ``style_loss[N]``, ``content_loss[N]``:
    at the outputs; ``start_style_loss[N]``: at the start. ``gram_distance[N, L]``:
    ``||G(output) - A||_F / ||A||_F`` per style layer; ``noise_gram_distance[N, L]``:
    the same for the noise."""

    kind: str
    label: str
    layers: list[str]
    layer_weights: list[float]
    content_layer: str | None
    style_weight: float
    content_weight: float
    optimizer: str
    lr: float
    steps: int
    seed: int
    init: str
    outputs: Tensor
    noise: Tensor
    style_images: Tensor
    content_images: Tensor | None
    loss_curve: Tensor
    style_curve: Tensor
    content_curve: Tensor | None
    style_loss: Tensor
    content_loss: Tensor | None
    start_style_loss: Tensor
    gram_distance: Tensor
    noise_gram_distance: Tensor


@dataclass
class StyleStudy(Result):
    """Several syntheses shown on one page (``run``'s result)."""

    syntheses: list[Synthesis]

    def __post_init__(self) -> None:
        # results saved before the generic Result form hold the syntheses as untagged dicts
        self.syntheses = [Synthesis.from_plain(s) for s in self.syntheses]


def _check_common(model, layers, layer_weights, steps, optimizer, lr, seed, caller) -> tuple[list[str], list[float]]:
    check_model(model, caller)
    if isinstance(layers, str):
        layers = [layers]
    if not isinstance(layers, Sequence) or not all(isinstance(n, str) for n in layers):
        raise ValueError(f"{caller}: layers must be a list of layer names (got {type(layers).__name__})")
    if len(set(layers)) != len(layers):
        raise ValueError(f"{caller}: layers names a layer twice ({list(layers)})")
    layers = check_layers(model, layers, caller)
    if layer_weights is None:
        weights = [1.0 / len(layers)] * len(layers)
    elif isinstance(layer_weights, Mapping):
        if set(layer_weights) != set(layers):
            raise ValueError(f"{caller}: layer_weights must have one weight per layer {layers} "
                             f"(got {sorted(layer_weights)})")
        weights = [layer_weights[n] for n in layers]
    elif isinstance(layer_weights, Sequence) and len(layer_weights) == len(layers):
        weights = list(layer_weights)
    else:
        raise ValueError(f"{caller}: layer_weights must be None, a dict by layer or {len(layers)} numbers "
                         f"(got {layer_weights!r})")
    if not all(isinstance(w, int | float) and not isinstance(w, bool) and math.isfinite(w) and w >= 0
               for w in weights) or sum(weights) <= 0:
        raise ValueError(f"{caller}: layer_weights must be finite, >= 0 and not all 0 (got {weights!r})")
    check_positive_int(steps, "steps", caller)
    check_choice(optimizer, OPTIMIZERS, "optimizer", caller)
    if lr is not None:
        check_positive_float(lr, "lr", caller)
    check_seed(seed, caller)
    return layers, [float(w) for w in weights]


def _noise(reference: Tensor, n: int, size: tuple[int, int], seed: int) -> Tensor:
    """Image ``k``'s noise: the ``k``-th ``randn(C, H, W)`` of a generator seeded
    with ``seed``, with the mean and standard deviation of ``reference[k or 0]``."""
    generator = torch.Generator().manual_seed(seed)
    c = reference.shape[1]
    z = torch.stack([torch.randn(c, *size, generator=generator) for _ in range(n)])
    z = z.to(device=reference.device, dtype=reference.dtype)
    flat = reference.flatten(1)
    mean, std = flat.mean(1), flat.std(1) if flat.shape[1] > 1 else torch.zeros(len(flat), dtype=flat.dtype)
    return z * std.expand(n)[:, None, None, None] + mean.expand(n)[:, None, None, None]


def _image_scale(reference: Tensor, n: int) -> Tensor:
    """Per image, the step unit: the power of two nearest its style image's
    standard deviation (1 where that is 0), so that dividing by it and
    multiplying back is exact."""
    flat = reference.flatten(1)
    std = flat.std(1) if flat.shape[1] > 1 else torch.zeros(len(flat), dtype=flat.dtype, device=flat.device)
    unit = torch.where(std > 0, torch.exp2(torch.round(torch.log2(std.clamp_min(1e-30)))), torch.ones_like(std))
    return unit.expand(n)[:, None, None, None].clone()


def _gram_distance(grams: dict[str, Tensor], targets: dict[str, Tensor], layers: list[str]) -> Tensor:
    """``[N, L]``: ``||G - A||_F / ||A||_F`` (absolute where ``||A|| = 0``)."""
    columns = []
    for name in layers:
        g, a = grams[name], targets[name].expand_as(grams[name])
        norm = a.flatten(1).norm(dim=1)
        columns.append((g - a).flatten(1).norm(dim=1) / torch.where(norm > 0, norm, torch.ones_like(norm)))
    return torch.stack(columns, 1)


def _optimise(objective, start: Tensor, scale: Tensor, *, steps: int, optimizer: str, lr: float, progress: bool,
              caller: str) -> tuple[Tensor, list[tuple[Tensor, Tensor, Tensor | None]]]:
    """Minimise ``sum_n objective(x)[n] / objective(start)[n]`` over ``x = z *
    scale`` from ``start``; the per-image terms of every evaluation are recorded.
    Returns ``(x, records)``."""
    z = (start / scale).detach().clone().requires_grad_(True)
    records: list[tuple[Tensor, Tensor, Tensor | None]] = []
    unit: list[Tensor] = []  # each image's objective at the start (1 where it is 0)

    def relative(z: Tensor) -> Tensor:
        total, style, content = objective(z * scale)
        if not torch.isfinite(total).all():
            raise ValueError(f"{caller}: the loss became {float(total.detach().sum())} after {len(records)} "
                             "evaluations; lower lr or the weights")
        records.append((total.detach().cpu(), style.detach().cpu(),
                        None if content is None else content.detach().cpu()))
        if not unit:
            unit.append(torch.where(total > 0, total, torch.ones_like(total)).detach())
        # each image's objective in units of its start value: the same minimiser, gradients of a size
        # that L-BFGS's absolute thresholds and Adam's eps suit whatever the model's feature scale is
        return total / unit[0]

    with tqdm(total=steps, desc=caller, unit="step", disable=not progress) as bar:
        if optimizer == "adam":
            z, _ = gradient_steps(z, relative, adam(z, lr), steps=steps, caller=caller, bar=bar,
                                  what="the optimisation", advice="lower lr or the weights")
        else:
            opt = torch.optim.LBFGS([z], lr=lr, max_iter=steps, max_eval=steps * 5 // 4 + 1, tolerance_grad=0.0,
                                    tolerance_change=0.0, history_size=50, line_search_fn="strong_wolfe")

            def closure():
                loss = relative(z).sum()
                (z.grad,) = torch.autograd.grad(loss, z)
                bar.update(max(0, min(steps, opt.state[z].get("n_iter", 0)) - bar.n))
                return loss.detach()

            opt.step(closure)
            if not torch.isfinite(z).all():
                raise ValueError(f"{caller}: the image became NaN or infinite; lower lr")
    return (z * scale).detach(), records


def _stack(records, i: int) -> Tensor | None:
    if records[0][i] is None:
        return None
    return torch.stack([r[i] for r in records]).float()


@contextmanager
def _frozen(model: nn.Module) -> Iterator[nn.Module]:
    """``with _frozen(model):`` eval mode and the model's parameters'
    ``requires_grad`` off (nothing is computed for them); both restored after."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    with eval_mode(model):
        try:
            for p, _ in flags:
                p.requires_grad_(False)
            yield model
        finally:
            for p, flag in flags:
                p.requires_grad_(flag)


def _style_targets(tap, style: Tensor, layers: list[str], caller: str) -> dict[str, Tensor]:
    with torch.no_grad():
        try:
            feats = tap(style)
        except RuntimeError as error:
            raise ValueError(f"{caller}: the model cannot run on the style images {list(style.shape)} "
                             f"({str(error).splitlines()[0]})") from None
    for name in layers:
        if feats[name].dim() != 4:
            raise ValueError(f"{caller}: layer {name!r} gives Tensor{list(feats[name].shape)}, not feature maps "
                             "[N, C, H, W]; choose a convolutional layer")
    return {name: gram(feats[name]) for name in layers}


def synthesize_texture(model: nn.Module, textures: Tensor, layers: Sequence[str], *, steps: int = 200,
                       optimizer: str = "lbfgs", lr: float | None = None,
                       layer_weights: Sequence[float] | Mapping[str, float] | None = None,
                       size: int | tuple[int, int] | None = None, seed: int = 0, progress: bool = True,
                       label: str = "") -> Synthesis:
    """Texture synthesis (Gatys et al. 2015): from white noise, an image whose
    Gram matrices at ``layers`` match those of each texture.

    Args:
        model: a CNN taking ``Tensor[N, C, H, W]``; not changed.
        textures: ``Tensor[N, C, H, W]`` in the model's input space, one synthesis each.
        layers: module names of ``model`` whose outputs are feature maps ``[N, C, H, W]``.
        steps: Adam steps or L-BFGS iterations (``>= 1``).
        optimizer: ``"lbfgs"`` or ``"adam"`` (see the module docstring for ``lr``).
        layer_weights: ``w_l`` per layer (a list or a dict); default equal, summing to 1.
        size: the synthesis's ``(H, W)`` (or one int); default the textures' size.
        seed: the noise start's seed.
        label: a caption kept in the result.

    Returns:
        A ``Synthesis`` (``kind="texture"``).
    """
    caller = "synthesize_texture"
    layers, weights = _check_common(model, layers, layer_weights, steps, optimizer, lr, seed, caller)
    textures = check_images(textures, caller, "textures")
    out_size = _check_size(size, textures, caller)
    device = model_device(model)
    textures = textures.detach().to(device)
    n = len(textures)
    lr = float(lr) if lr is not None else (1.0 if optimizer == "lbfgs" else ADAM_LR)
    wmap = dict(zip(layers, weights))
    with _frozen(model), graph_tap(model, layers) as tap:
        targets = _style_targets(tap, textures, layers, caller)
        noise = _noise(textures, n, out_size, seed)

        def objective(x):
            loss = style_loss(tap(x), targets, wmap)
            return loss, loss, None

        outputs, records = _optimise(objective, noise, _image_scale(textures, n), steps=steps,
                                     optimizer=optimizer, lr=lr, progress=progress, caller=caller)
        with torch.no_grad():
            feats = tap(torch.cat([outputs, noise]))
            final = style_loss({k: f[:n] for k, f in feats.items()}, targets, wmap)
            distance, noise_distance = (_gram_distance({k: gram(f[part]) for k, f in feats.items()}, targets,
                                                       layers) for part in (slice(0, n), slice(n, None)))
    return Synthesis("texture", label, layers, weights, None, 1.0, 0.0, optimizer, lr, steps, seed, "noise",
                     outputs.cpu(), noise.cpu(), textures.cpu(), None, _stack(records, 0), _stack(records, 1), None,
                     final.cpu(), None, records[0][1].clone(), distance.cpu(), noise_distance.cpu())


def _check_size(size, textures: Tensor, caller: str) -> tuple[int, int]:
    if size is None:
        return tuple(textures.shape[-2:])
    if isinstance(size, int) and not isinstance(size, bool):
        size = (size, size)
    if not isinstance(size, tuple | list) or len(size) != 2 or not all(
            isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in size):
        raise ValueError(f"{caller}: size must be None, a positive int or (H, W) (got {size!r})")
    return int(size[0]), int(size[1])


def transfer_style(model: nn.Module, content: Tensor, style: Tensor, *, content_layer: str,
                   style_layers: Sequence[str], style_weight: float = 1e6, content_weight: float = 1.0,
                   steps: int = 200, optimizer: str = "lbfgs", lr: float | None = None,
                   layer_weights: Sequence[float] | Mapping[str, float] | None = None, init: str = "content",
                   seed: int = 0, progress: bool = True, label: str = "") -> Synthesis:
    """Style transfer (Gatys et al. 2016): images with the features of
    ``content`` at ``content_layer`` and the Gram matrices of ``style`` at
    ``style_layers``, minimising ``content_weight * content_loss + style_weight
    * style_loss`` per image.

    Args:
        model: a CNN taking ``Tensor[N, C, H, W]``; not changed.
        content: ``Tensor[N, C, H, W]`` in the model's input space.
        style: ``Tensor[N, C, h, w]`` (image ``n`` takes style ``n``) or
            ``Tensor[1, C, h, w]`` (one style for all); any ``h, w`` the model accepts.
        content_layer, style_layers: module names of ``model``.
        style_weight, content_weight: the papers' beta and alpha (``>= 0``, not both 0;
            see the module docstring for the default).
        steps, optimizer, lr, layer_weights, seed: as in ``synthesize_texture``.
        init: ``"content"`` (start from the content image) or ``"noise"`` (the
            papers' white noise, drawn from ``seed``).
        label: a caption kept in the result.

    Returns:
        A ``Synthesis`` (``kind="transfer"``).
    """
    caller = "transfer_style"
    layers, weights = _check_common(model, style_layers, layer_weights, steps, optimizer, lr, seed, caller)
    if not isinstance(content_layer, str):
        raise ValueError(f"{caller}: content_layer must be a layer name (got {type(content_layer).__name__})")
    check_layers(model, [content_layer], caller)
    content = check_images(content, caller, "content")
    style = check_images(style, caller, "style")
    n = len(content)
    if style.shape[0] not in (1, n) or style.shape[1] != content.shape[1]:
        raise ValueError(f"{caller}: style must be a Tensor[{n} or 1, {content.shape[1]}, h, w] to match content "
                         f"{list(content.shape)} (got {list(style.shape)})")
    style_weight = check_positive_float(style_weight, "style_weight", caller, allow_zero=True)
    content_weight = check_positive_float(content_weight, "content_weight", caller, allow_zero=True)
    if style_weight == 0 and content_weight == 0:
        raise ValueError(f"{caller}: style_weight and content_weight are both 0; nothing to optimise")
    check_choice(init, ("content", "noise"), "init", caller)
    device = model_device(model)
    content, style = content.detach().to(device), style.detach().to(device)
    lr = float(lr) if lr is not None else (1.0 if optimizer == "lbfgs" else ADAM_LR)
    wmap = dict(zip(layers, weights))
    with _frozen(model), graph_tap(model, list(dict.fromkeys([*layers, content_layer]))) as tap:
        targets = _style_targets(tap, style, layers, caller)
        with torch.no_grad():
            try:
                content_target = tap(content)[content_layer]
            except RuntimeError as error:
                raise ValueError(f"{caller}: the model cannot run on the content images {list(content.shape)} "
                                 f"({str(error).splitlines()[0]})") from None
        noise = _noise(style, n, tuple(content.shape[-2:]), seed)

        def objective(x):
            feats = tap(x)
            s = style_loss({k: feats[k] for k in layers}, targets, wmap)
            c = content_loss(feats[content_layer], content_target)
            return style_weight * s + content_weight * c, s, c

        start = content if init == "content" else noise
        outputs, records = _optimise(objective, start, _image_scale(style, n), steps=steps, optimizer=optimizer,
                                     lr=lr, progress=progress, caller=caller)
        with torch.no_grad():
            feats = tap(torch.cat([outputs, noise]))
            final_style = style_loss({k: feats[k][:n] for k in layers}, targets, wmap)
            final_content = content_loss(feats[content_layer][:n], content_target)
            distance, noise_distance = (_gram_distance({k: gram(feats[k][part]) for k in layers}, targets,
                                                       layers) for part in (slice(0, n), slice(n, None)))
    return Synthesis("transfer", label, layers, weights, content_layer, style_weight, content_weight,
                     optimizer, lr, steps, seed, init, outputs.cpu(), noise.cpu(), style.cpu(), content.cpu(),
                     _stack(records, 0), _stack(records, 1), _stack(records, 2), final_style.cpu(),
                     final_content.cpu(), records[0][1].clone(), distance.cpu(), noise_distance.cpu())


EMBEDDED_TEXTURES = ("stripes", "checker", "dots")
EMBEDDED_CONTENTS = ("face", "circle", "star")


def feature_layers(model: nn.Module) -> list[str]:
    """The layers to take Gram matrices of, in forward order: for each ``Conv2d``
    the ``ReLU`` right after it (Gatys' "conv" layers are rectified), else the
    convolution itself."""
    leaves = [(name, m) for name, m in model.named_modules() if name and not list(m.children())]
    chosen = []
    for i, (name, module) in enumerate(leaves):
        if isinstance(module, nn.Conv2d):
            after = leaves[i + 1] if i + 1 < len(leaves) else None
            chosen.append(after[0] if after is not None and isinstance(after[1], nn.ReLU) else name)
    return chosen


def embedded_textures(base, classes: Sequence[str], side: int) -> tuple[Tensor, Tensor]:
    """Texture sources from the embedded data: per class, the image whose
    textured object has the largest box, and the ``side x side`` window centred
    on that box (moved inside the image). Returns ``(uint8 images [K, 3, H, W],
    windows [K, 4])``, a window as ``(x0, y0, x1, y1)``, ends exclusive."""
    images, windows = [], []
    h, w = base.images.shape[-2:]
    for name in classes:
        index = torch.nonzero(base.labels == list(base.classes).index(name)).flatten()
        if not len(index):
            raise ValueError(f"embedded_textures: the embedded data has no {name!r} image")
        boxes = base.boxes[index]
        j = int(torch.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]).argmax())
        x0, y0, x1, y1 = boxes[j].tolist()
        left = min(max((x0 + x1) // 2 - side // 2, 0), w - side)
        top = min(max((y0 + y1) // 2 - side // 2, 0), h - side)
        images.append(base.images[index[j]])
        windows.append([left, top, left + side, top + side])
    return torch.stack(images), torch.tensor(windows)


def run(subject, dataset, *, quick: bool, progress: bool, seed: int) -> tuple[StyleStudy, dict]:
    """Texture synthesis and style transfer on ``dataset`` (the embedded
    data's classes): the textures are windows of half the image's side on a
    ``stripes``, ``checker`` and ``dots`` object; the synthesis is the model's
    input size (the Gram matrices are size independent), from the first 1, 2,
    ... 5 of ``feature_layers`` (Gatys 2015 Fig. 2; quick: ``stripes`` from
    the first 3, 60 steps); the style transfer puts each texture's style on a
    ``face``, ``circle`` and ``star`` image (pairwise; quick: ``stripes`` on a
    face), style from the first 3 feature layers, content from the third,
    L-BFGS from the content image, ``style_weight`` 1e6. Extra for the page:
    per synthesis the uint8 images it shows (``display``)."""
    model, size = subject.model, subject.input_shape[-1]
    layers = feature_layers(model)
    textures = EMBEDDED_TEXTURES[:1] if quick else EMBEDDED_TEXTURES
    contents = EMBEDDED_CONTENTS[:1] if quick else EMBEDDED_CONTENTS
    steps = 60 if quick else 200
    sources, windows = embedded_textures(dataset, textures, max(8, size // 2))
    model_space = subject.preprocess(sources)
    style = torch.stack([model_space[k, :, t:b, l:r] for k, (l, t, r, b) in enumerate(windows.tolist())])
    crops = torch.stack([sources[k, :, t:b, l:r] for k, (l, t, r, b) in enumerate(windows.tolist())])
    style_layers = layers[:3]
    sets = [style_layers] if quick else [layers[:k] for k in range(1, len(layers) + 1)]
    syntheses, display = [], []
    for chosen in sets:
        s = synthesize_texture(model, style, chosen, steps=steps, size=size, seed=seed, progress=progress,
                               label=f"texture, {chosen[0]}" + (f"..{chosen[-1]}" if len(chosen) > 1 else ""))
        syntheses.append(s)
        display.append({"outputs": subject.deprocess(s.outputs), "noise": subject.deprocess(s.noise), "style": crops})
    content_uint8 = torch.stack([dataset.images[dataset.labels == list(dataset.classes).index(c)][0]
                                 for c in contents])
    s = transfer_style(model, subject.preprocess(content_uint8), style, content_layer=style_layers[-1],
                       style_layers=style_layers, style_weight=1e6, steps=steps, seed=seed, progress=progress,
                       label=f"style of {', '.join(textures)} on {', '.join(contents)}")
    syntheses.append(s)
    display.append({"outputs": subject.deprocess(s.outputs), "noise": subject.deprocess(s.noise), "style": crops,
                    "content": content_uint8})
    return StyleStudy(syntheses), {"display": display}


def _check(subject, dataset) -> str | None:
    if not feature_layers(subject.model):
        return "style needs a model with convolutional layers; this one has none"
    wanted = EMBEDDED_TEXTURES + EMBEDDED_CONTENTS
    lacking = [c for c in wanted if c not in dataset.classes or not bool((dataset.labels ==
                                                                         list(dataset.classes).index(c)).any())]
    if lacking:
        return (f"style needs images of the embedded data's textured classes ({', '.join(EMBEDDED_TEXTURES)}) "
                f"and content classes ({', '.join(EMBEDDED_CONTENTS)}); this dataset lacks {', '.join(lacking)}")
    if tuple(dataset.images.shape[-2:]) != tuple(subject.input_shape[-2:]):
        return (f"style needs images of the model's input size {subject.input_shape[-1]} px (its texture windows "
                f"are cut from them); these are {dataset.images.shape[-1]} px")
    return None


ANALYSIS = Analysis(
    name="style", group="toolbox", order=80, result=StyleStudy, run=run, check=_check,
    needs=frozenset({"subject", "labels", "boxes"}),
    description="texture synthesis and style transfer by Gram matrices (Gatys et al.)",
    claims=("the syntheses' Gram matrices are closer to their targets than the noise's",
            "the style loss falls at least tenfold from the start"))
