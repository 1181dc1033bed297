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
    >>> loaded = zfcore.load("runs/demo/run/model.pt")
    >>> images, labels = embedded_images(loaded, per_class=2)
    >>> result = invariance(loaded.model, images, labels, preprocess=loaded.preprocess,
    ...                     classes=loaded.classes, rotation_symmetric=[0, 5])
    >>> result.distances["translation"]["relu1"].shape     # [shifts, images]
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from ._render import begin
from ._stream import check_layers, model_device

__all__ = ["EMBEDDED_ROTATION_SYMMETRIC", "TRANSFORMS", "Invariance", "default_sweeps", "embedded_images",
           "invariance", "render", "transform_images"]

TRANSFORMS = ("translation", "scale", "rotation")
IDENTITY = {"translation": 0.0, "scale": 1.0, "rotation": 0.0}
UNITS = {"translation": "vertical shift (pixels)", "scale": "scale factor", "rotation": "rotation (degrees)"}
# The embedded data's classes that look the same at every angle (square, cross, star ... only at some).
EMBEDDED_ROTATION_SYMMETRIC = ("circle", "ring")
SHIFT_FRACTIONS = (1 / 64, 1 / 32, 1 / 16, 1 / 8, 3 / 16, 1 / 4)
SCALES = (0.7, 0.8, 0.9, 0.95, 1.0, 1.05, 1.1, 1.2, 1.4, 1.6, 1.8)
ROTATIONS = tuple(float(a) for a in range(0, 361, 15))


@dataclass
class Invariance:
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

    def as_dict(self) -> dict:
        return {"layers": list(self.layers), "transforms": list(self.transforms), "values": dict(self.values),
                "distances": {t: dict(d) for t, d in self.distances.items()},
                "probabilities": dict(self.probabilities), "predictions": dict(self.predictions),
                "labels": self.labels, "original_probabilities": self.original_probabilities,
                "images": self.images, "fill": self.fill,
                "classes": list(self.classes) if self.classes is not None else None,
                "rotation_symmetric": list(self.rotation_symmetric), "seconds": self.seconds}

    @classmethod
    def from_dict(cls, d: dict) -> Invariance:
        return cls(**{name: d[name] for name in cls.__dataclass_fields__})


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


class _Capture:
    """Context manager: the (detached, flattened) outputs of ``layers`` during a
    full forward (the logits are needed too, so nothing is stopped early)."""

    def __init__(self, model: nn.Module, layers: list[str]):
        self.model, self.layers, self.outputs, self._handles = model, layers, {}, []

    def __enter__(self):
        modules = dict(self.model.named_modules())
        for name in self.layers:
            self._handles.append(modules[name].register_forward_hook(self._hook(name)))
        return self

    def __exit__(self, *exc):
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        return False

    def _hook(self, name: str):
        def hook(_module, _inputs, output):
            if not isinstance(output, Tensor):
                raise ValueError(f"invariance: layer {name!r} returns {type(output).__name__}, not a Tensor")
            self.outputs[name] = output.detach().flatten(1).double().cpu()
        return hook


def embedded_images(loaded, per_class: int = 2, *, correct_only: bool = True) -> tuple[Tensor, Tensor]:
    """Example images for a model trained on the embedded data: from its run's
    validation split (``visualize.open_dataset``), the first ``per_class`` of
    each class, of those the model classifies correctly if ``correct_only``
    (fewer where a class has fewer). Returns ``(uint8 [N, 3, H, W], labels[N])``."""
    from ..data import SyntheticShapes

    if not isinstance(per_class, int) or isinstance(per_class, bool) or per_class < 1:
        raise ValueError(f"embedded_images: per_class must be a positive int (got {per_class!r})")
    config = loaded.config
    val = SyntheticShapes("val", seed=int(config.get("seed", 0)), size=loaded.input_shape[-1],
                          per_class=max(1, int(config.get("per_class", 500)) // 5))
    keep = torch.ones(len(val), dtype=torch.bool)
    if correct_only:
        device = model_device(loaded.model)
        with torch.no_grad():
            predicted = torch.cat([loaded.model(loaded.preprocess(val.images[i:i + 256]).to(device)).argmax(1).cpu()
                                   for i in range(0, len(val), 256)])
        keep = predicted == val.labels
    chosen = []
    for label in range(len(SyntheticShapes.classes)):
        chosen += torch.nonzero(keep & (val.labels == label)).flatten()[:per_class].tolist()
    chosen.sort()
    return val.images[chosen], val.labels[chosen]


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
    labels = torch.as_tensor(labels)
    if labels.shape != (n,) or labels.is_floating_point() or labels.dtype == torch.bool:
        raise ValueError(f"invariance: labels must be {n} integers, one per image (got {list(labels.shape)} "
                         f"{labels.dtype})")
    labels = labels.long().cpu()
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"invariance: batch_size must be a positive int (got {batch_size!r})")
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
    was_training = model.training
    model.eval()

    def forward(x: Tensor) -> tuple[dict[str, Tensor], Tensor, Tensor]:
        """Per layer ``[B, D]`` features, the true label's probability and the top class."""
        features = {name: [] for name in layers}
        probabilities, predictions = [], []
        with _Capture(model, layers) as capture:
            for i in range(0, len(x), batch_size):
                batch = x[i:i + batch_size]
                batch = preprocess(batch) if preprocess is not None else batch
                logits = model(batch.float().to(device))
                if not isinstance(logits, Tensor) or logits.dim() != 2:
                    raise ValueError("invariance: the model's output must be a Tensor[B, classes] of logits")
                if int(labels.max()) >= logits.shape[1] or int(labels.min()) < 0:
                    raise ValueError(f"invariance: labels must lie in [0, {logits.shape[1]}), the model's classes")
                p = logits.double().softmax(1).cpu()
                probabilities.append(p.gather(1, labels[i:i + batch_size, None])[:, 0])
                predictions.append(p.argmax(1))
                for name in layers:
                    features[name].append(capture.outputs[name])
        return ({name: torch.cat(parts) for name, parts in features.items()}, torch.cat(probabilities),
                torch.cat(predictions))

    total = sum(len(v) for v in sweeps.values())
    bar = tqdm(total=total, desc="invariance", unit="value", disable=not progress, leave=False)
    try:
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
    finally:
        bar.close()
        model.train(was_training)
    return Invariance(layers=layers, transforms=list(sweeps),
                      values={kind: torch.tensor(v, dtype=torch.float64) for kind, v in sweeps.items()},
                      distances=distances, probabilities=probabilities, predictions=predictions, labels=labels,
                      original_probabilities=original_p, images=images.detach().cpu().clone(), fill=fill,
                      classes=[str(c) for c in classes] if classes is not None else None,
                      rotation_symmetric=symmetric,
                      seconds=time.perf_counter() - start)


def _smallest_change(result: Invariance, kind: str) -> Tensor:
    """Indices of the non-identity values closest to the identity (both sides)."""
    gap = (result.values[kind] - IDENTITY[kind]).abs()
    nonzero = gap > 0
    if not bool(nonzero.any()):
        return torch.zeros(0, dtype=torch.long)
    return torch.nonzero(nonzero & (gap == gap[nonzero].min())).flatten()


def _small_translations(result: Invariance) -> Tensor:
    """Non-zero shifts of at most 1/8 of the image height (at least the smallest)."""
    gap = result.values["translation"].abs()
    limit = max(float(gap[gap > 0].min()) if bool((gap > 0).any()) else 0.0, result.images.shape[-2] / 8)
    return torch.nonzero((gap > 0) & (gap <= limit)).flatten()


def _display(images: Tensor) -> Tensor:
    """uint8 ``[N, H, W, 3]`` for matplotlib (float images scaled per image)."""
    if images.dtype != torch.uint8:
        x = images.float()
        low = x.amin(dim=(1, 2, 3), keepdim=True)
        high = x.amax(dim=(1, 2, 3), keepdim=True)
        images = ((x - low) / (high - low).clamp_min(1e-12) * 255).round().to(torch.uint8)
    return images[:, :3].permute(0, 2, 3, 1)


def render(result: Invariance, assets: Path) -> dict:
    """The report section of ``invariance``: Fig. 5's curves
    (``invariance_curves.png``), the transforms on one image
    (``invariance_examples.png``), a summary table and the paper's claims
    checked on the numbers (medians over images)."""
    plt, result, assets = begin(result, Invariance, assets)
    first, top = result.layers[0], result.layers[-1]
    shown = [first] if first == top else [first, top]
    n = len(result.labels)
    name_of = (lambda c: result.classes[c] if result.classes is not None and 0 <= c < len(result.classes)
               else f"class {c}")
    colours = plt.get_cmap("tab10")

    rows, cols = len(result.transforms), len(shown) + 1
    fig, axes = plt.subplots(rows, cols, figsize=(3.3 * cols, 2.6 * rows), dpi=110, squeeze=False)
    for r, kind in enumerate(result.transforms):
        x = result.values[kind].numpy()
        panels = [(result.distances[kind][layer], f"{layer}: normalized distance") for layer in shown]
        panels.append((result.probabilities[kind], "P(true class)"))
        for c, (y, title) in enumerate(panels):
            ax = axes[r][c]
            for i in range(n):
                label = int(result.labels[i])
                ax.plot(x, y[:, i].numpy(), color=colours(label % 10), linewidth=0.9, alpha=0.8)
            ax.set_title(title, fontsize=9)
            ax.set_xlabel(UNITS[kind], fontsize=8)
            ax.tick_params(labelsize=7)
            if c == len(panels) - 1:
                ax.set_ylim(-0.02, 1.02)
    handles = [plt.Line2D([], [], color=colours(c % 10), label=name_of(c))
               for c in sorted({int(v) for v in result.labels})]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 10), fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(assets / "invariance_curves.png")
    plt.close(fig)

    picks = {kind: [int(i) for i in torch.linspace(0, len(result.values[kind]) - 1,
                                                    min(6, len(result.values[kind]))).round().long()]
             for kind in result.transforms}
    fig, axes = plt.subplots(len(result.transforms), 6, figsize=(7.5, 1.4 * len(result.transforms)), dpi=110,
                             squeeze=False)
    for r, kind in enumerate(result.transforms):
        for c in range(6):
            ax = axes[r][c]
            ax.axis("off")
            if c < len(picks[kind]):
                value = float(result.values[kind][picks[kind][c]])
                image = transform_images(result.images[:1], kind, value, result.fill)
                if result.images.dtype == torch.uint8:
                    image = image.round().clamp(0, 255).to(torch.uint8)
                ax.imshow(_display(image)[0].numpy())
                ax.set_title(f"{value:g}", fontsize=7)
    fig.tight_layout()
    fig.savefig(assets / "invariance_examples.png")
    plt.close(fig)

    table, claims = [], []
    symmetric = torch.tensor([int(label) in result.rotation_symmetric for label in result.labels])

    def median(t: Tensor) -> float:
        t = t[~t.isnan()]
        return float(t.median()) if t.numel() else math.nan

    def drop(kind: str, where: Tensor, images: Tensor) -> float:
        """Mean over images of the mean fall of P(true class) over the values ``where``."""
        if where.numel() == 0 or not bool(images.any()):
            return math.nan
        fall = result.original_probabilities[None] - result.probabilities[kind][where]
        return float(fall[:, images].mean())

    for kind in result.transforms:
        near = _smallest_change(result, kind)
        changed = (result.values[kind] != IDENTITY[kind]).nonzero().flatten()
        first_d = median(result.distances[kind][first][near]) if near.numel() else math.nan
        top_d = median(result.distances[kind][top][near]) if near.numel() else math.nan
        near_values = ", ".join(f"{float(v):g}" for v in result.values[kind][near])
        table.append([kind, near_values or "-", round(first_d, 4), round(top_d, 4),
                      round(drop(kind, changed, torch.ones(n, dtype=torch.bool)), 4)])
        if kind in ("translation", "scale") and near.numel() and first != top:
            claims.append({
                "claim": f"The smallest {kind} changes layer {first}'s features more than the top layer "
                         f"{top}'s (normalized distance)",
                "holds": bool(first_d > top_d),
                "detail": f"at {kind} {near_values}: median {first}: {first_d:.3f}, {top}: {top_d:.3f}"})
    if "rotation" in result.transforms and "translation" in result.transforms:
        rotated = (result.values["rotation"] % 360 != 0).nonzero().flatten()
        small = _small_translations(result)
        plain = ~symmetric
        if bool(plain.any()):
            rot, shift = drop("rotation", rotated, plain), drop("translation", small, plain)
            claims.append({
                "claim": "The output is more sensitive to rotation than to small translations (mean fall of the "
                         "true-class probability, rotation-asymmetric classes)",
                "holds": bool(rot > shift),
                "detail": f"rotation: {rot:.3f}, translations up to "
                          f"{float(result.values['translation'][small].abs().max()) if small.numel() else 0:g} px: "
                          f"{shift:.3f} ({int(plain.sum())} images)"})
        if bool(symmetric.any()) and bool(plain.any()):
            sym = drop("rotation", rotated, symmetric)
            claims.append({
                "claim": "Rotation-symmetric classes keep their probability better under rotation",
                "holds": bool(sym < drop("rotation", rotated, plain)),
                "detail": f"mean fall under rotation: symmetric classes "
                          f"({', '.join(name_of(c) for c in sorted(set(result.rotation_symmetric)))}) {sym:.3f}, "
                          f"others {drop('rotation', rotated, plain):.3f}"})
    fill_text = "each image's mean colour" if result.fill == "image_mean" else f"the value {result.fill}"
    return {
        "title": "Invariance to translation, scale and rotation (Fig. 5)",
        "intro": (f"{n} images translated vertically, scaled and rotated; for each, the Euclidean distance between "
                  f"the feature vectors of the original and the transformed image at {first} and {top}, divided "
                  f"by the original's feature norm, and the softmax probability of the true label. Uncovered "
                  f"pixels are filled with {fill_text}. "
                  f"Took {result.seconds:.1f} s."),
        "figures": [{"file": "invariance_curves.png",
                     "caption": "One row per transform: normalized feature distance at the first and the top layer, "
                                "and the true class's probability; one line per image, coloured by class."},
                    {"file": "invariance_examples.png", "caption": "The first image under some of the transforms."}],
        "tables": [{"caption": "Per transform: the median normalized distance at the smallest change and the mean "
                               "fall of the true-class probability over all its values",
                    "header": ["transform", "smallest change", f"{first} distance", f"{top} distance",
                               "mean fall of P(true class)"], "rows": table}],
        "claims": claims,
    }
