"""DeepDream (Mordvintsev, Olah & Tyka, "Inceptionism: going deeper into neural
networks", Google Research blog 2015, and their released notebook): amplify
whatever a chosen layer detects in an image, by gradient ascent on the image of

    E(x) = 0.5 * ||a(x)||^2,      a(x) = the layer's output (summed over every unit),

with the notebook's normalised step ``x <- x + lr * B * g / mean|g|`` (``g``
the gradient of ``E`` w.r.t. the image, ``mean|g|`` its mean absolute value
over the image, so each step moves a value by ``lr * B`` on average), a random
jitter (the image rolled by up to ``jitter`` pixels before each step and back
after; one shift per step for the batch, ``_priors.jitter``), and octaves: the
image is processed at ``octaves`` sizes from the smallest up; after each
octave the change made so far (the "detail") is upsampled and added to the
next larger version of the original, so patterns grown at a coarse scale are
refined at the finer ones.

Octave sizes are the notebook's: the largest is the image's own ``(H, W)``,
each next one ``round(previous / octave_scale)`` per side (``octave_sizes``).

Where the notebook is silent or we chose otherwise:

* ``B`` (``scale``) is the root mean square of all the given images in the
  model's input space (the notebook's ``step_size = 1.5`` on 0..255 pixels of
  RMS about 60 is ``lr`` of about 0.025 here), so ``lr`` does not depend on
  the input scale.
* Each octave's base is resized from the original directly (bilinear with
  antialiasing), not by chained zooms; the detail is upsampled bilinearly.
* No clipping to the pixel range (the notebook clips to 0..255 around a
  per-channel mean; the model space of a per-pixel mean image has no such
  box): the display's deprocessing clips.
* An image whose gradient is 0 everywhere (every unit of the layer off) is left
  as it is for that step instead of dividing by 0.
* The reported activation norms are ``||a(x)||`` of the original and of the
  dream, both at full size, without jitter.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from ._args import (check_images, check_layers, check_positive_float, check_positive_int, check_seed, eval_mode,
                    model_device)
from ._priors import check_number, first_of_each_class, gradient_steps, input_scale, layer_output
from .probes import depth_layers
from .registry import Analysis
from .result import Result

__all__ = ["ANALYSIS", "DeepDream", "deep_dream", "octave_sizes", "run"]


@dataclass
class DeepDream(Result):
    """``originals[N, C, H, W]`` and their ``dreams`` (model input space) at
    ``layer``; ``norm_before[N]`` and ``norm_after[N]``: the layer's
    activation norm ``||a(x)||`` of each; ``sizes``: the octaves' ``[h, w]``,
    smallest first, as processed; ``curve[octaves * steps]``: the mean
    ``0.5 ||a||^2`` before each step (at that step's octave size); the
    settings (``scale`` is the B used)."""

    layer: str
    originals: Tensor
    dreams: Tensor
    norm_before: Tensor
    norm_after: Tensor
    sizes: list
    curve: Tensor
    octaves: int
    octave_scale: float
    steps: int
    lr: float
    jitter: int
    scale: float
    seed: int


def octave_sizes(height: int, width: int, octaves: int, octave_scale: float) -> list[tuple[int, int]]:
    """The octaves' ``(h, w)``, largest first: ``(height, width)``, then each
    side ``round(previous / octave_scale)`` (at least 1)."""
    sizes = [(height, width)]
    for _ in range(octaves - 1):
        h, w = sizes[-1]
        sizes.append((max(1, round(h / octave_scale)), max(1, round(w / octave_scale))))
    return sizes


def _energy(model: nn.Module, x: Tensor, layer: str) -> Tensor:
    """``0.5 ||a(x)||^2`` per image: ``Tensor[N]``."""
    return 0.5 * layer_output(model, x, layer).flatten(1).square().sum(1)


def deep_dream(model: nn.Module, images: Tensor, layer: str, *, octaves: int = 3, octave_scale: float = 1.4,
               steps: int = 10, lr: float = 0.025, jitter: int = 8, scale: float | None = None, seed: int = 0,
               progress: bool = True) -> DeepDream:
    """DeepDream of every image of ``images[N, C, H, W]`` (the model's input
    space) at ``layer``, all images at once (module docstring).

    Args:
        model: a CNN taking ``Tensor[N, C, H, W]``; in eval mode while it works
            (restored after); its parameters are not touched.
        images: the images to dream on.
        layer: a module name of ``model``; a convolutional layer when
            ``octaves > 1`` (it must accept the smaller sizes).
        octaves, octave_scale: how many sizes, and the ratio between them.
        steps: gradient ascent steps per octave.
        lr: each step's mean absolute change, in units of ``scale``.
        jitter: largest random shift (pixels) per step; 0 for none.
        scale: ``B``, the images' typical magnitude (default: their root mean square).
        seed: the jitter's shifts.

    Returns:
        ``DeepDream``.

    Example:
        >>> result = deep_dream(loaded.model, loaded.preprocess(uint8_images), "relu3")
        >>> result.norm_after / result.norm_before   # above 1
    """
    caller = "deep_dream"
    check_layers(model, [layer], caller)
    check_images(images, caller)
    octaves = check_positive_int(octaves, "octaves", caller)
    octave_scale = check_number(octave_scale, "octave_scale", caller, low=1.0, strict=True)
    steps = check_positive_int(steps, "steps", caller)
    lr = check_positive_float(lr, "lr", caller)
    jitter = check_positive_int(jitter, "jitter", caller, minimum=0)
    check_seed(seed, caller)
    device = model_device(model)
    images = images.detach().to(device)
    scale = input_scale(images, scale, caller)
    sizes = octave_sizes(images.shape[2], images.shape[3], octaves, octave_scale)
    generator = torch.Generator().manual_seed(seed)

    def objective(x: Tensor) -> Tensor:
        return _energy(model, x, layer)

    def ascend(x: Tensor, grad: Tensor, _step: int) -> Tensor:
        mean = grad.abs().mean((1, 2, 3), keepdim=True)
        return x + lr * scale * torch.where(mean > 0, grad / mean.clamp_min(1e-30), torch.zeros_like(grad))

    with eval_mode(model), tqdm(total=octaves * steps, desc="deepdream", unit="step", disable=not progress) as bar:
        with torch.no_grad():
            norm_before = _energy(model, images, layer).mul(2).sqrt()
            smallest = F.interpolate(images[:1], size=sizes[-1], mode="bilinear", antialias=True)
            try:
                layer_output(model, smallest, layer)
            except RuntimeError as error:
                raise ValueError(f"{caller}: layer {layer!r} cannot take the smallest octave, "
                                 f"{sizes[-1][0]}x{sizes[-1][1]} px ({str(error).splitlines()[0][:120]}); use "
                                 f"fewer octaves, a smaller octave_scale or a convolutional layer") from None
        curve = []
        detail = None
        for size in reversed(sizes):
            base = images if size == tuple(images.shape[2:]) else F.interpolate(
                images, size=size, mode="bilinear", antialias=True)
            x = base.clone() if detail is None else base + F.interpolate(detail, size=size, mode="bilinear")
            x, octave_curve = gradient_steps(x, objective, ascend, steps=steps, caller=caller, bar=bar,
                                             what=f"the ascent at octave {size[0]}x{size[1]}", max_shift=jitter,
                                             generator=generator)
            curve += octave_curve
            detail = x - base
        dreams = x
        with torch.no_grad():
            norm_after = _energy(model, dreams, layer).mul(2).sqrt()
    return DeepDream(layer, images.cpu(), dreams.cpu(), norm_before.cpu(), norm_after.cpu(),
                     [list(s) for s in reversed(sizes)], torch.tensor(curve), octaves, octave_scale, steps, lr,
                     jitter, scale, seed)


OCTAVES = 3
OCTAVE_SCALE = 1.4


def run(subject, dataset, *, quick: bool, progress: bool, seed: int) -> tuple[DeepDream, dict]:
    """DeepDream at the third of ``probes.depth_layers`` (relu3 for the paper's
    models, ``layer1`` for a ResNet-18), 3 octaves (1 for a model that takes
    only its own input size, a ``.pt2`` program exported for it): quick, 4
    images (the first of 4 classes), 10 steps per octave; full, 20 images (the
    first 2 of each class), 20 steps per octave. Extra for the page: the uint8
    originals and dreams (``subject.deprocess``), the class names and the
    images' labels."""
    index = first_of_each_class(dataset, 1 if quick else 2)
    index = index[:4] if quick else index
    relus = depth_layers(subject.model, subject.input_shape)
    layer = relus[min(2, len(relus) - 1)]
    images = subject.preprocess(dataset.images[index])
    octaves = OCTAVES if _takes_size(subject.model, images, layer, OCTAVES) else 1
    result = deep_dream(subject.model, images, layer, octaves=octaves, octave_scale=OCTAVE_SCALE,
                        steps=10 if quick else 20, seed=seed, progress=progress)
    return result, {"images": dataset.images[index], "dreams": subject.deprocess(result.dreams),
                    "classes": list(dataset.classes), "labels": dataset.labels[index]}


def _takes_size(model: nn.Module, images: Tensor, layer: str, octaves: int) -> bool:
    """Whether ``layer`` can be reached from the smallest of ``octaves`` sizes."""
    size = octave_sizes(images.shape[2], images.shape[3], octaves, OCTAVE_SCALE)[-1]
    small = F.interpolate(images[:1], size=size, mode="bilinear", antialias=True)
    try:
        with torch.no_grad(), eval_mode(model):
            layer_output(model, small.to(model_device(model)), layer)
    except RuntimeError:
        return False
    return True


def _check(subject, dataset) -> str | None:
    if not depth_layers(subject.model, subject.input_shape):
        return "deepdream needs a model with ReLU, convolutional or linear layers; this one has none"
    return None


ANALYSIS = Analysis(
    name="deepdream", group="toolbox", order=70, result=DeepDream, run=run, check=_check,
    description="DeepDream: what a layer detects, amplified over octaves",
    claims=("dreaming amplifies what the layer detects: its activation norm grows for every image",))
