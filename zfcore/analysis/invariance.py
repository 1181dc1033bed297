"""The paper's Fig. 5: how the features and the output change when an image is
translated vertically, scaled and rotated.

For every transform value and image, ``invariance`` records the distance
between the feature vectors (a layer's output, flattened) of the original and
of the transformed image at each requested layer, and the softmax probability
of the image's true label. The paper finds that small transforms change layer 1
a lot and the top layers little, and that the output is not invariant to
rotation except for rotationally symmetric objects.

Choices the paper leaves open:

* **Distance.** The Euclidean distance *normalized by the original's feature
  norm*, ``||f(T x) - f(x)|| / ||f(x)||`` (the paper plots raw distances, whose
  scale differs between layers by orders of magnitude; the relative distance
  makes layer 1 and layer 7 comparable). NaN where ``f(x)`` is all zero and
  ``f(T x)`` is not (0 where both are).
* **Transforms.** Applied to the images in the space they are given in (the
  display space, uint8 or float 0..255, for ``preprocess=loaded.preprocess``),
  then ``preprocess`` maps them to the model's input. A vertical translation by
  ``k`` pixels moves the content by exactly ``k`` rows (down for ``k > 0``);
  scaling (about the image centre; ``s > 1`` zooms in) and rotation (about the
  centre, in degrees, counterclockwise as displayed) sample bilinearly. Pixels
  with no source (the rows shifted in, the corners) are ``fill``: each image's
  own mean colour by default (no hard edge of a foreign colour), or a number.
  The identity (shift 0, scale 1, rotation 0) reuses the original's results, so
  its distance is exactly 0 and its probability the original's.
* **Default sweeps.** Shifts of 0, 1/64, 1/32, 1/16, 1/8, 3/16 and 1/4 of the
  image height in both directions (the paper: up to +-60 px of 224), scales
  0.7-1.8, rotations 0-360 degrees in steps of 15.

Example:
    >>> subject = zfcore.load("runs/demo/run/model.pt")
    >>> images, labels = example_images(subject, embedded_dataset(subject), per_class=2)
    >>> result = invariance(subject.model, images, labels, preprocess=subject.preprocess,
    ...                     classes=subject.classes, rotation_symmetric=[0, 5])
    >>> result.distances["translation"]["relu1"].shape     # [shifts, images]
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from ._args import (check_class_range, check_labels, check_layers, check_logits, check_positive_int, eval_mode,
                    first_per_class, forward_with_layers, model_device)
from .neighbours import last_hidden_layer
from .probes import depth_layers
from .registry import Analysis
from .result import Result

__all__ = ["ANALYSIS", "EMBEDDED_ROTATION_SYMMETRIC", "IDENTITY", "TRANSFORMS", "Invariance", "compared_layers",
           "default_sweeps", "example_images", "invariance", "run", "transform_images"]

TRANSFORMS = ("translation", "scale", "rotation")
IDENTITY = {"translation": 0.0, "scale": 1.0, "rotation": 0.0}
# The embedded data's classes that look the same at every angle (square, cross, star ... only at some).
EMBEDDED_ROTATION_SYMMETRIC = ("circle", "ring")
SHIFT_FRACTIONS = (1 / 64, 1 / 32, 1 / 16, 1 / 8, 3 / 16, 1 / 4)
SCALES = (0.7, 0.8, 0.9, 0.95, 1.0, 1.05, 1.1, 1.2, 1.4, 1.6, 1.8)
ROTATIONS = tuple(float(a) for a in range(0, 361, 15))


@dataclass
class Invariance(Result):
    """``transforms``: the sweeps run (of ``TRANSFORMS``), each with ``values[t]``
    (``Tensor[V]`` float64); ``distances[t][layer]``: ``Tensor[V, N]`` normalized
    distances; ``probabilities[t]`` / ``predictions[t]``: ``Tensor[V, N]`` the
    true label's softmax probability and the top class; ``labels[N]``,
    ``original_probabilities[N]``; ``images[N, 3, H, W]`` the originals as given;
    ``classes`` (names, untrusted text, or None) and ``rotation_symmetric``
    (labels of rotation-symmetric classes) for the renderer."""

    layers: list[str]
    transforms: list[str]
    values: dict[str, Tensor]
    distances: dict[str, dict[str, Tensor]]
    probabilities: dict[str, Tensor]
    predictions: dict[str, Tensor]
    labels: Tensor
    original_probabilities: Tensor
    images: Tensor
    fill: str | float = "image_mean"
    classes: list[str] | None = None
    rotation_symmetric: list[int] = field(default_factory=list)
    seconds: float = 0.0


def default_sweeps(height: int) -> dict[str, tuple]:
    """The default transform values for images ``height`` pixels high."""
    shifts = sorted({round(f * height) for f in SHIFT_FRACTIONS} - {0})
    return {"translation": tuple([-s for s in reversed(shifts)] + [0] + shifts), "scale": SCALES,
            "rotation": ROTATIONS}


def _fill_value(images: Tensor, fill) -> Tensor:
    if isinstance(fill, str):
        if fill != "image_mean":
            raise ValueError(f"invariance: fill must be 'image_mean' or a number (got {fill!r})")
        return images.mean(dim=(-2, -1), keepdim=True)
    if isinstance(fill, bool) or not isinstance(fill, int | float) or not math.isfinite(fill):
        raise ValueError(f"invariance: fill must be 'image_mean' or a finite number (got {fill!r})")
    return torch.full((images.shape[0], images.shape[1], 1, 1), float(fill), dtype=images.dtype)


def _check_value(kind: str, value) -> float:
    if kind not in TRANSFORMS:
        raise ValueError(f"invariance: transform must be one of {', '.join(TRANSFORMS)} (got {kind!r})")
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"invariance: {kind} values must be finite numbers (got {value!r})")
    if kind == "translation" and value != int(value):
        raise ValueError(f"invariance: translations must be whole pixels (got {value!r})")
    if kind == "scale" and value <= 0:
        raise ValueError(f"invariance: scales must be > 0 (got {value!r})")
    return float(value)


def transform_images(images: Tensor, kind: str, value: float, fill: str | float = "image_mean") -> Tensor:
    """``images[N, C, H, W]`` (any dtype) translated vertically by ``value``
    pixels, scaled by ``value`` or rotated by ``value`` degrees (``kind``), as
    float32 in the same space (the identity returns the images exactly); see the
    module docstring for the conventions."""
    if not isinstance(images, Tensor) or images.dim() != 4:
        got = list(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"invariance: images must be a Tensor[N, C, H, W] (got {got})")
    value = _check_value(kind, value)
    x = images.float()
    background = _fill_value(x, fill).expand_as(x)
    n, _, h, w = x.shape
    if value == IDENTITY[kind]:
        return x.clone()
    if kind == "translation":
        k = int(value)
        out = background.clone()
        if 0 <= k < h:
            out[:, :, k:] = x[:, :, :h - k]
        elif -h < k < 0:
            out[:, :, :h + k] = x[:, :, -k:]
        return out
    if kind == "scale":
        theta = torch.tensor([[1 / value, 0.0, 0.0], [0.0, 1 / value, 0.0]], dtype=torch.float64)
    else:
        # Output pixel (xo, yo) (centred, y down) samples the input at (cos xo - sin yo, sin xo + cos yo):
        # counterclockwise as displayed; in the grid's [-1, 1] coordinates the aspect ratio enters.
        cos, sin = math.cos(math.radians(value)), math.sin(math.radians(value))
        theta = torch.tensor([[cos, -sin * h / w, 0.0], [sin * w / h, cos, 0.0]], dtype=torch.float64)
    grid = F.affine_grid(theta.float()[None].expand(n, 2, 3), [n, 1, h, w], align_corners=False).to(x.device)
    sampled = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    covered = F.grid_sample(torch.ones_like(x[:, :1]), grid, mode="bilinear", padding_mode="zeros",
                            align_corners=False)
    return sampled + (1 - covered) * background


def example_images(subject, dataset, per_class: int = 2, *, correct_only: bool = True) -> tuple[Tensor, Tensor]:
    """Example images of ``dataset`` (a ``zfcore.load.Dataset``): the first
    ``per_class`` of each class, of those ``subject``'s model classifies
    correctly if ``correct_only`` (fewer where a class has fewer). Returns
    ``(uint8 [N, 3, H, W], labels[N])``, in the dataset's order."""
    check_positive_int(per_class, "per_class", "example_images")
    keep = None
    if correct_only:
        device = model_device(subject.model)
        with torch.no_grad(), eval_mode(subject.model):
            predicted = torch.cat([subject.model(subject.preprocess(dataset.images[i:i + 256]).to(device)).argmax(1)
                                   .cpu() for i in range(0, len(dataset), 256)])
        keep = predicted == dataset.labels
    chosen = first_per_class(dataset.labels, per_class, len(dataset.classes), keep)
    return dataset.images[chosen], dataset.labels[chosen]


@torch.no_grad()
def invariance(model: nn.Module, images: Tensor, labels, *, preprocess: Callable[[Tensor], Tensor] | None = None,
               layers: Sequence[str] | str = ("relu1", "relu7"), translations: Sequence[int] | None = None,
               scales: Sequence[float] | None = None, rotations: Sequence[float] | None = None,
               fill: str | float = "image_mean", classes: Sequence[str] | None = None,
               rotation_symmetric: Sequence[int | str] = (), batch_size: int = 64, progress: bool = True) -> Invariance:
    """Fig. 5 of the paper: feature distances and true-class probability under
    vertical translation, scaling and rotation.

    Args:
        model: the network; its output is taken as logits (softmax over dim 1).
        images: ``Tensor[N, 3, H, W]`` in the space the transforms act on (uint8
            display images with ``preprocess=loaded.preprocess``; model inputs
            with ``preprocess=None``).
        labels: the true labels, ``N`` ints.
        preprocess: maps transformed float images ``[B, 3, H, W]`` to the
            model's input (None: the identity).
        layers: the layers whose feature vectors are compared (the paper: 1 and 7).
        translations: vertical shifts in pixels (whole numbers; default: see
            ``default_sweeps``); ``()`` skips the sweep. Likewise ``scales``
            (factors > 0) and ``rotations`` (degrees).
        fill: what uncovered pixels get: ``"image_mean"`` or a number.
        classes: class names, for the report (untrusted text).
        rotation_symmetric: labels (or names in ``classes``) of classes that look the same at any angle
            (the embedded data: ``EMBEDDED_ROTATION_SYMMETRIC``).
        batch_size: images per forward.
        progress: show a tqdm bar.

    Returns:
        ``Invariance`` (distances normalized by the original's feature norm).
        Paper section 4.2, Fig. 5.

    Example:
        >>> result = invariance(model, images, labels, preprocess=loaded.preprocess, rotations=(0, 90))
        >>> result.probabilities["rotation"][1]      # true-class probability at 90 degrees
    """
    start = time.perf_counter()
    layers = check_layers(model, layers, "invariance")
    if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[0] == 0:
        got = list(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"invariance: images must be a non-empty Tensor[N, C, H, W] (got {got})")
    n = images.shape[0]
    labels = check_labels(torch.as_tensor(labels), n, "invariance").long().cpu()
    check_positive_int(batch_size, "batch_size", "invariance")
    if preprocess is not None and not callable(preprocess):
        raise ValueError(f"invariance: preprocess must be callable or None (got {type(preprocess).__name__})")
    _fill_value(images[:1].float(), fill)
    defaults = default_sweeps(images.shape[-2])
    sweeps = {}
    for kind, given in (("translation", translations), ("scale", scales), ("rotation", rotations)):
        given = defaults[kind] if given is None else given
        if isinstance(given, str | bytes) or not isinstance(given, Sequence | Tensor):
            raise ValueError(f"invariance: {kind} values must be a sequence of numbers (got {given!r})")
        values = [_check_value(kind, v.item() if isinstance(v, Tensor) else v) for v in given]
        if values:
            sweeps[kind] = values
    if not sweeps:
        raise ValueError("invariance: every sweep is empty; give translations, scales or rotations")
    symmetric = []
    for c in rotation_symmetric:
        if isinstance(c, str) and classes is not None and c in list(classes):
            symmetric.append(list(classes).index(c))
        elif isinstance(c, int | Tensor) and not isinstance(c, bool):
            symmetric.append(int(c))
        else:
            raise ValueError(f"invariance: rotation_symmetric must hold class labels (ints) or names found in "
                             f"classes (got {c!r})")
    device = model_device(model)

    def forward(x: Tensor) -> tuple[dict[str, Tensor], Tensor, Tensor]:
        """Per layer ``[B, D]`` features, the true label's probability and the top class."""
        features = {name: [] for name in layers}
        probabilities, predictions = [], []
        for i in range(0, len(x), batch_size):
            batch = x[i:i + batch_size]
            batch = preprocess(batch) if preprocess is not None else batch
            logits, outputs = forward_with_layers(model, batch.float().to(device), layers, "invariance",
                                                  reduce=lambda out: out.flatten(1).double().cpu())
            check_class_range(labels, check_logits(logits, len(batch), "invariance").shape[1], "invariance")
            p = logits.double().softmax(1).cpu()
            probabilities.append(p.gather(1, labels[i:i + batch_size, None])[:, 0])
            predictions.append(p.argmax(1))
            for name in layers:
                features[name].append(outputs[name])
        return ({name: torch.cat(parts) for name, parts in features.items()}, torch.cat(probabilities),
                torch.cat(predictions))

    total = sum(len(v) for v in sweeps.values())
    bar = tqdm(total=total, desc="invariance", unit="value", disable=not progress, leave=False)
    with eval_mode(model):
        original, original_p, original_top = forward(images)
        norms = {name: original[name].norm(dim=1) for name in layers}
        distances = {kind: {name: torch.empty(len(v), n, dtype=torch.float64) for name in layers}
                     for kind, v in sweeps.items()}
        probabilities = {kind: torch.empty(len(v), n, dtype=torch.float64) for kind, v in sweeps.items()}
        predictions = {kind: torch.empty(len(v), n, dtype=torch.int64) for kind, v in sweeps.items()}
        for kind, values in sweeps.items():
            for j, value in enumerate(values):
                if value == IDENTITY[kind]:
                    features, p, top = original, original_p, original_top
                else:
                    features, p, top = forward(transform_images(images, kind, value, fill))
                for name in layers:
                    d = (features[name] - original[name]).norm(dim=1)
                    relative = torch.where(norms[name] > 0, d / norms[name], math.nan)
                    distances[kind][name][j] = torch.where(d == 0, 0.0, relative)
                probabilities[kind][j], predictions[kind][j] = p, top
                bar.update(1)
    bar.close()
    return Invariance(layers=layers, transforms=list(sweeps),
                      values={kind: torch.tensor(v, dtype=torch.float64) for kind, v in sweeps.items()},
                      distances=distances, probabilities=probabilities, predictions=predictions, labels=labels,
                      original_probabilities=original_p, images=images.detach().cpu().clone(), fill=fill,
                      classes=[str(c) for c in classes] if classes is not None else None,
                      rotation_symmetric=symmetric,
                      seconds=time.perf_counter() - start)


def compared_layers(model: nn.Module, input_shape: Sequence[int]) -> tuple[str, str]:
    """The paper's layers 1 and 7 (``relu1``, ``relu7``) where the model has
    them; else their counterparts on any model of ``input_shape``: the first
    of ``probes.depth_layers`` (a ResNet's stem ``relu``) and
    ``neighbours.last_hidden_layer`` (its ``avgpool``). ``ValueError`` when the
    model has neither."""
    names = {name for name, _ in model.named_modules()}
    if {"relu1", "relu7"} <= names:
        return "relu1", "relu7"
    first = depth_layers(model, input_shape)
    if not first:
        raise ValueError("invariance: the model has no rectified layer to compare; name the layers")
    return first[0], last_hidden_layer(model, input_shape)


def run(subject, dataset, *, quick: bool, progress: bool, seed: int) -> tuple[Invariance, dict]:
    """Fig. 5 on ``dataset``: ``invariance`` at ``compared_layers`` of the
    first image per class the model classifies correctly (4 per class;
    ``quick``: 1), with the default sweeps; the rotation-symmetric classes are
    those of ``EMBEDDED_ROTATION_SYMMETRIC`` the dataset has. ``seed`` is
    unused."""
    layers = compared_layers(subject.model, subject.input_shape)
    images, labels = example_images(subject, dataset, per_class=1 if quick else 4)
    if len(images) == 0:
        raise ValueError("invariance: the model classifies none of the dataset's images correctly; Fig. 5 follows "
                         "correctly classified images")
    symmetric = [c for c in EMBEDDED_ROTATION_SYMMETRIC if c in dataset.classes]
    return invariance(subject.model, images, labels, preprocess=subject.preprocess, layers=layers,
                      classes=dataset.classes, rotation_symmetric=symmetric, progress=progress), {}


def _check(subject, dataset) -> str | None:
    try:
        compared_layers(subject.model, subject.input_shape)
    except ValueError:
        return "invariance needs a model with a rectified layer and a hidden layer before its output; this one has none"
    return None


ANALYSIS = Analysis(
    name="invariance", group="paper", order=20, demo=True, result=Invariance, run=run, check=_check,
    description="translation, scale and rotation invariance (Fig. 5)",
    claims=("small translations and scalings change layer 1's features more than the top layer's",
            "the output is more sensitive to rotation than to small translations",
            "rotation-symmetric classes keep their probability better under rotation"))
