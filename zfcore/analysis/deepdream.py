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

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from ._priors import check_count, check_images, check_number, jitter as roll_randomly, layer_output
from ._render import begin
from ._stream import check_layers, model_device

__all__ = ["DeepDream", "deep_dream", "octave_sizes", "render", "analyze_embedded"]


@dataclass
class DeepDream:
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

    def as_dict(self) -> dict:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, d: dict) -> "DeepDream":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__})


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
    check_layers(model, [layer], "deep_dream")
    check_images(images, "deep_dream")
    octaves = check_count(octaves, "octaves", "deep_dream")
    octave_scale = check_number(octave_scale, "octave_scale", "deep_dream", low=1.0, strict=True)
    steps = check_count(steps, "steps", "deep_dream")
    lr = check_number(lr, "lr", "deep_dream", low=0.0, strict=True)
    jitter = check_count(jitter, "jitter", "deep_dream", low=0)
    check_count(seed, "seed", "deep_dream", low=0)
    device = model_device(model)
    images = images.detach().to(device)
    if scale is None:
        scale = float(images.square().mean().sqrt())
        if scale == 0:
            raise ValueError("deep_dream: the images are all 0, so their scale B is 0; pass scale explicitly")
    scale = check_number(scale, "scale", "deep_dream", low=0.0, strict=True)
    sizes = octave_sizes(images.shape[2], images.shape[3], octaves, octave_scale)
    generator = torch.Generator().manual_seed(seed)
    was_training = model.training
    model.eval()
    bar = tqdm(total=octaves * steps, desc="deepdream", unit="step", disable=not progress)
    try:
        with torch.no_grad():
            norm_before = _energy(model, images, layer).mul(2).sqrt()
            smallest = F.interpolate(images[:1], size=sizes[-1], mode="bilinear", antialias=True)
            try:
                layer_output(model, smallest, layer)
            except RuntimeError as error:
                raise ValueError(f"deep_dream: layer {layer!r} cannot take the smallest octave, "
                                 f"{sizes[-1][0]}x{sizes[-1][1]} px ({str(error).splitlines()[0][:120]}); use "
                                 f"fewer octaves, a smaller octave_scale or a convolutional layer") from None
        curve = []
        detail = None
        for size in reversed(sizes):
            base = images if size == tuple(images.shape[2:]) else F.interpolate(
                images, size=size, mode="bilinear", antialias=True)
            if detail is None:
                x = base.clone()
            else:
                x = base + F.interpolate(detail, size=size, mode="bilinear")
            for step in range(steps):
                x.requires_grad_(True)
                shifted, _ = roll_randomly(x, jitter, generator)
                energy = _energy(model, shifted, layer)
                grad, = torch.autograd.grad(energy.sum(), [x])
                with torch.no_grad():
                    mean = grad.abs().mean((1, 2, 3), keepdim=True)
                    x = x.detach() + lr * scale * torch.where(mean > 0, grad / mean.clamp_min(1e-30),
                                                              torch.zeros_like(grad))
                if not bool(torch.isfinite(x).all()):
                    raise ValueError(f"deep_dream: the ascent diverged at octave {size[0]}x{size[1]} step {step} "
                                     f"(non-finite image)")
                curve.append(float(energy.detach().mean()))
                bar.update(1)
            detail = x - base
        dreams = x.detach()
        with torch.no_grad():
            norm_after = _energy(model, dreams, layer).mul(2).sqrt()
    finally:
        bar.close()
        model.train(was_training)
    return DeepDream(layer, images.cpu(), dreams.cpu(), norm_before.cpu(), norm_after.cpu(),
                     [list(s) for s in reversed(sizes)], torch.tensor(curve), octaves, octave_scale, steps, lr,
                     jitter, scale, seed)


def _display(x: Tensor) -> Tensor:
    """Model-space images for display when no uint8 version is given: each
    linearly rescaled from its own min..max to 0..255."""
    low = x.amin(dim=(-3, -2, -1), keepdim=True)
    high = x.amax(dim=(-3, -2, -1), keepdim=True)
    return ((x - low) / (high - low).clamp_min(1e-12) * 255).round().clamp(0, 255).to(torch.uint8)


def render(result: "DeepDream | dict", assets: Path, *, images: Tensor | None = None, dreams: Tensor | None = None,
           classes: Sequence[str] | None = None, labels: Tensor | None = None) -> dict:
    """Originals beside their dreams, the norms in a table, and the claim that
    the layer's activation norm grows. ``images`` and ``dreams`` (uint8
    ``[N, 3, H, W]``, e.g. through ``Loaded.deprocess``) are what is shown;
    without them each image is linearly rescaled from its own min..max."""
    plt, result, assets = begin(result, DeepDream, assets)
    n = len(result.norm_before)
    shown_originals = images if images is not None else _display(result.originals)
    shown_dreams = dreams if dreams is not None else _display(result.dreams)
    figures = []
    if n:
        per_row = 4
        shown = min(n, 16)
        rows = -(-shown // per_row)
        fig, axes = plt.subplots(rows, 2 * per_row, squeeze=False, figsize=(1.6 * 2 * per_row, 1.75 * rows))
        for k in range(shown):
            a, b = axes[k // per_row, 2 * (k % per_row)], axes[k // per_row, 2 * (k % per_row) + 1]
            a.imshow(shown_originals[k].permute(1, 2, 0).numpy())
            b.imshow(shown_dreams[k].permute(1, 2, 0).numpy())
            title = str(classes[int(labels[k])]) if classes is not None and labels is not None else f"image {k}"
            a.set_title(title, fontsize=8)
            b.set_title(f"dream (x{float(result.norm_after[k] / result.norm_before[k].clamp_min(1e-30)):.1f})",
                        fontsize=8)
        for ax in axes.flat:
            ax.set_xticks([])
            ax.set_yticks([])
        for ax in axes.flat[2 * shown:]:
            ax.set_axis_off()
        fig.tight_layout()
        fig.savefig(assets / "deepdream.png", dpi=80)
        plt.close(fig)
        sizes = ", ".join(f"{h}x{w}" for h, w in result.sizes)
        figures.append({"file": "deepdream.png",
                        "caption": f"Each image beside its dream at {result.layer}: {result.steps} normalised "
                                   f"gradient ascent steps on 0.5 ||a||^2 at each octave ({sizes} px), jitter "
                                   f"{result.jitter} px; in brackets the growth of the layer's activation norm."
                                   + ("" if dreams is not None else
                                      " Each image is rescaled from its own min..max for display.")})
        fig, ax = plt.subplots(figsize=(5, 3.2))
        ax.plot(result.curve.numpy())
        for o in range(1, result.octaves):
            ax.axvline(o * result.steps - 0.5, color="0.7", linewidth=0.8)
        ax.set_yscale("log")
        ax.set_xlabel("step (octaves separated by grey lines)")
        ax.set_ylabel("0.5 ||a||^2 (mean)")
        fig.tight_layout()
        fig.savefig(assets / "deepdream_curve.png", dpi=80)
        plt.close(fig)
        figures.append({"file": "deepdream_curve.png",
                        "caption": "The objective during the ascent, at each octave's size."})
    ratio = result.norm_after / result.norm_before.clamp_min(1e-30)
    rows = [[k, round(float(result.norm_before[k]), 4), round(float(result.norm_after[k]), 4),
             round(float(ratio[k]), 3)] for k in range(n)]
    claims = []
    if n:
        grows = result.norm_after > result.norm_before
        claims.append({"claim": f"Dreaming amplifies what {result.layer} detects: its activation norm grows for "
                                f"every image",
                       "holds": bool(grows.all()),
                       "detail": f"grows for {int(grows.sum())} of {n} images; norm ratio after/before "
                                 f"{float(ratio.min()):.2f} to {float(ratio.max()):.2f}"})
    return {"title": f"DeepDream at {result.layer}",
            "intro": "Gradient ascent on the image amplifies whatever the layer responds to, from coarse to fine "
                     "scales (octaves) with random shifts (jitter), as in Google's DeepDream.",
            "figures": figures,
            "tables": [{"caption": f"the activation norm ||a|| of {result.layer}, before and after",
                        "header": ["image", "before", "after", "ratio"], "rows": rows}],
            "claims": claims}


def analyze_embedded(loaded, *, quick: bool, progress: bool, seed: int) -> tuple[DeepDream, dict]:
    """DeepDream at the third ReLU (relu3 for the paper's models), 3 octaves:
    quick, 4 images (the first of 4 classes), 10 steps per octave; full, 20
    images (the first 2 of each class), 20 steps per octave."""
    from ..analyze import _embedded_val
    from .probes import depth_layers

    base = _embedded_val(loaded).base
    per_class = 1 if quick else 2
    index = torch.cat([torch.nonzero(base.labels == c).flatten()[:per_class] for c in range(len(loaded.classes))])
    index = index[:4] if quick else index
    relus = depth_layers(loaded.model)
    layer = relus[min(2, len(relus) - 1)]
    settings = dict(octaves=3, steps=10) if quick else dict(octaves=3, steps=20)
    result = deep_dream(loaded.model, loaded.preprocess(base.images[index]), layer, seed=seed, progress=progress,
                        **settings)
    return result, {"images": base.images[index], "dreams": loaded.deprocess(result.dreams),
                    "classes": list(loaded.classes), "labels": base.labels[index]}
