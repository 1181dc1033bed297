"""The pointing game (Zhang et al., "Top-down neural attention by excitation
backprop", 2016; the benchmark TorchRay publishes for saliency methods): a
saliency method *hits* an image when the maximum of its saliency map for the
image's true class falls on the object; the score is the share of hits.

Saliency maps, each ``[N, H, W]`` at the input's resolution, for the true class:

* ``deconvnet``, ``guided``, ``gradient``: the zfcore deconvnet engine sends
  the one-hot class score (the logit, before softmax) down to the input with
  ReLU's backward replaced by ``relu(grad)`` (Zeiler & Fergus), by
  ``relu(grad) * (input > 0)`` (guided backprop), or left as it is (the
  gradient; Simonyan et al.); LocalResponseNorm passes its gradient. The map is
  the largest absolute value over the colour channels (Simonyan et al.'s
  saliency map).
* ``gradcam``: ``zfcore.analysis.gradcam.grad_cam`` at ``layer`` (default: the
  last convolution's ReLU), upsampled bilinearly to the input size. Its
  maximum is the centre of the strongest unit (``gradcam.peaks``): the
  upsampled map is flat from a border unit out to the image's edge, and the
  first pixel of that plateau would favour the edge.
* ``occlusion``: ``zfcore.analysis.occlusion``: at each pixel, the mean drop of
  the true-class probability over the grey squares that cover it.

Two baselines need no model: ``centre`` always points at the image's centre
pixel ``(H // 2, W // 2)``; ``chance`` is the expected score of a uniformly
random pixel (the share of the image within the tolerance of the box, exact
per image, averaged).

Where the definition is silent: the object is its bounding box (the embedded
data's generator knows it); a point hits when its distance to the box is at
most ``tolerance`` pixels (TorchRay's 15 px at 224 px, scaled to the image:
``round(15 * min(H, W) / 224)``, 4 px at 64 px); the maximum is the first in
row-major order on ties; a map that is constant (no maximum) is counted as a
miss and reported as ``flat``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from ..deconv import Deconvnet
from ._args import (check_images, check_labels, check_layers, check_model, check_positive_int, describe,
                    eval_mode, model_device)
from .gradcam import default_layer, grad_cam, peaks, upsample
from .occlusion import occlusion
from .registry import Analysis
from .result import Result

__all__ = ["ANALYSIS", "METHODS", "PointingGame", "chance", "default_tolerance", "hits", "pointing_game",
           "pointing_hits", "run", "saliency"]

METHODS = ("deconvnet", "guided", "gradient", "gradcam", "occlusion")
BASELINES = ("centre", "chance")


@dataclass
class PointingGame(Result):
    """The pointing game on ``N`` images for ``methods`` (``M`` of them).

    ``points[M, N, 2]``: each method's ``(y, x)`` maximum; ``hit[M, N]`` and
    ``flat[M, N]`` (a constant map, counted as a miss); ``labels[N]``,
    ``boxes[N, 4]`` (x0, y0, x1, y1, ends exclusive); ``centre_hit[N]``;
    ``chance[N]`` (a random pixel's hit probability); ``examples[M, E, H, W]``:
    the first ``E`` images' saliency maps, each scaled to [0, 1], for display."""

    methods: list[str]
    layer: str
    tolerance: int
    size: list[int]
    labels: Tensor
    boxes: Tensor
    points: Tensor
    hit: Tensor
    flat: Tensor
    centre_hit: Tensor
    chance: Tensor
    examples: Tensor

    def accuracy(self) -> dict[str, float]:
        """The share of hits per method and for the two baselines."""
        scores = {m: float(self.hit[i].double().mean()) for i, m in enumerate(self.methods)}
        scores["centre"] = float(self.centre_hit.double().mean())
        scores["chance"] = float(self.chance.double().mean())
        return scores


def default_tolerance(height: int, width: int) -> int:
    """TorchRay's 15 pixels at 224 px, scaled to the image."""
    return round(15 * min(height, width) / 224)


def _distance_to_box(y: Tensor, x: Tensor, boxes: Tensor) -> Tensor:
    """Euclidean distance from pixel ``(y, x)`` to the box's pixels (0 inside);
    ``y``/``x`` broadcast against ``boxes[..., 4]``'s leading dimensions."""
    x0, y0, x1, y1 = boxes.unbind(-1)
    dx = torch.clamp(torch.maximum(x0 - x, x - (x1 - 1)), min=0).double()
    dy = torch.clamp(torch.maximum(y0 - y, y - (y1 - 1)), min=0).double()
    return torch.sqrt(dx * dx + dy * dy)


def hits(points: Tensor, boxes: Tensor, tolerance: int) -> Tensor:
    """``points[..., N, 2]`` as ``(y, x)`` against ``boxes[N, 4]``: within
    ``tolerance`` pixels of the box."""
    return _distance_to_box(points[..., 0], points[..., 1], boxes) <= tolerance


def chance(boxes: Tensor, height: int, width: int, tolerance: int) -> Tensor:
    """``[N]``: the share of the image within ``tolerance`` pixels of each box, the
    hit rate of a uniformly random pixel."""
    y = torch.arange(height)[:, None, None]
    x = torch.arange(width)[None, :, None]
    inside = _distance_to_box(y, x, boxes[None, None]) <= tolerance  # [H, W, N]
    return inside.double().mean((0, 1))


def pointing_hits(maps: Tensor, boxes: Tensor, size: Sequence[int]) -> tuple[Tensor, Tensor, Tensor]:
    """The pointing game for Grad-CAM maps ``maps[N, h, w]`` upsampled to
    ``size = (H, W)``: ``(hit[N], chance[N], mass[N])``. ``hit``: the map's
    maximum (``gradcam.peaks``) lies in the object's box (``boxes[N, 4]``: x0,
    y0, x1, y1 pixels, end-exclusive); a map that is 0 everywhere points nowhere
    and misses. ``chance``: the box's share of the image, the hit rate of a
    uniformly random point. ``mass``: the upsampled map's share inside the box
    (NaN for a zero map)."""
    h, w = (int(v) for v in size)
    y, x = peaks(maps, (h, w))
    b = boxes.long()
    hit = hits(torch.stack([y, x], 1), b, 0) & (maps.flatten(1).amax(1) > 0)
    up = upsample(maps, (h, w)).clamp_min(0)
    rows, cols = torch.arange(h)[None, :, None], torch.arange(w)[None, None, :]
    box = ((b[:, 0, None, None] <= cols) & (cols < b[:, 2, None, None])
           & (b[:, 1, None, None] <= rows) & (rows < b[:, 3, None, None]))
    total = up.flatten(1).double().sum(1)
    mass = torch.where(total > 0, (up * box).flatten(1).double().sum(1) / total.clamp_min(1e-300),
                       torch.full_like(total, float("nan")))
    return hit, chance(b, h, w, 0).to(total.device), mass


def _engine(model: nn.Module, input_shape) -> Deconvnet:
    with torch.random.fork_rng(devices=[]):  # building the engine draws a probe: the global RNG stays as it was
        return Deconvnet(model, tuple(input_shape), lrn="gradient")


def saliency(model: nn.Module, images: Tensor, target: Tensor, method: str, *, layer: str | None = None,
             patch_size: int | None = None, stride: int | None = None, net=None) -> Tensor:
    """The saliency map ``[N, H, W]`` of ``method`` (one of ``METHODS``) for the
    classes ``target[N]`` (see the module's docstring). ``net``: a
    ``Deconvnet`` of ``model`` for its input shape, reused across calls."""
    if method not in METHODS:
        raise ValueError(f"saliency: method must be one of {', '.join(METHODS)} (got {method!r})")
    n, _, h, w = images.shape
    if method in ("deconvnet", "guided", "gradient"):
        net = net if net is not None else _engine(model, images.shape[1:])
        top = net.layers[-1]
        shape = net.layer_spec()[top].shape
        if len(shape) != 1:
            raise ValueError(f"saliency: the model's last layer {top!r} must give class scores [N, classes] "
                             f"(got [N, {', '.join(map(str, shape))}])")
        seed = F.one_hot(target, shape[0]).to(images.dtype)
        return net.project_signal(images, top, seed, mode=method).abs().amax(1)
    layer = layer if layer is not None else default_layer(model, images.shape[1:])
    if method == "gradcam":
        return upsample(grad_cam(model, images, layer, target=target, progress=False).float(), (h, w))
    patch_size = patch_size if patch_size is not None else max(1, round(min(h, w) / 4))
    stride = stride if stride is not None else max(1, patch_size // 4)
    result = occlusion(model, images, target, layer=layer, patch_size=patch_size, stride=stride, progress=False)
    drop = (result.base_prob[:, None, None] - result.true_prob).reshape(n, 1, -1).float()
    columns = drop.expand(n, patch_size * patch_size, drop.shape[-1])
    gh, gw = result.true_prob.shape[1:]
    covered = (gh - 1) * stride + patch_size, (gw - 1) * stride + patch_size
    total = F.fold(columns, covered, patch_size, stride=stride)
    count = F.fold(torch.ones_like(columns[:1]), covered, patch_size, stride=stride)
    mean = (total / count.clamp(min=1))[:, 0]
    out = torch.full((n, h, w), float("-inf"))  # pixels no square covers are never the maximum
    out[:, :covered[0], :covered[1]] = mean
    return out


def _argmax_points(maps: Tensor) -> tuple[Tensor, Tensor]:
    """``(points[N, 2], flat[N])``: the first maximum of each map in row-major
    order as ``(y, x)``, and whether the map is constant."""
    flat_maps = maps.reshape(maps.shape[0], -1)
    index = flat_maps.argmax(1)
    finite = flat_maps.masked_fill(~torch.isfinite(flat_maps), float("nan"))
    flat = (finite.nan_to_num(float("inf")).amin(1) == finite.nan_to_num(float("-inf")).amax(1))
    w = maps.shape[-1]
    return torch.stack([index // w, index % w], 1), flat


def _check(model, images, labels, boxes, methods, tolerance, batch_size, examples):
    caller = "pointing_game"
    check_model(model, caller)
    check_images(images, caller)
    n, _, h, w = images.shape
    check_labels(labels, n, caller)
    if not isinstance(boxes, Tensor) or boxes.shape != (n, 4) or boxes.is_floating_point():
        raise ValueError(f"{caller}: boxes must be an integer Tensor[{n}, 4] of x0, y0, x1, y1 "
                         f"(got {describe(boxes)})")
    if ((boxes[:, 0] >= boxes[:, 2]) | (boxes[:, 1] >= boxes[:, 3]) | (boxes[:, :2] < 0).any(1)
            | (boxes[:, 2] > w) | (boxes[:, 3] > h)).any():
        raise ValueError(f"{caller}: boxes must satisfy 0 <= x0 < x1 <= {w} and 0 <= y0 < y1 <= {h}")
    if isinstance(methods, str) or not methods or any(m not in METHODS for m in methods):
        raise ValueError(f"{caller}: methods must be a non-empty sequence of {', '.join(METHODS)} "
                         f"(got {methods!r})")
    check_positive_int(batch_size, "batch_size", caller)
    check_positive_int(examples, "examples", caller, minimum=0)
    if tolerance is not None and (isinstance(tolerance, bool) or not isinstance(tolerance, int) or tolerance < 0):
        raise ValueError(f"{caller}: tolerance must be None or an int >= 0 pixels (got {tolerance!r})")


def pointing_game(model: nn.Module, images: Tensor, labels: Tensor, boxes: Tensor,
                  methods: Sequence[str] = METHODS, *, layer: str | None = None, tolerance: int | None = None,
                  batch_size: int = 32, examples: int = 6, progress: bool = True) -> PointingGame:
    """Play the pointing game: each method's saliency maximum for the true class
    against the object's box (see the module's docstring).

    Args:
        model: a CNN the deconvnet engine captures, giving class scores.
        images: ``Tensor[N, C, H, W]`` in the model's input space.
        labels: the true classes, ``LongTensor[N]``.
        boxes: ``LongTensor[N, 4]``, x0, y0, x1, y1 in pixels, ends exclusive.
        methods: among ``METHODS``.
        layer: Grad-CAM's and occlusion's layer (default: the last conv's ReLU).
        tolerance: pixels (default ``default_tolerance``).
        batch_size: images per call of a method.
        examples: the first images whose maps are kept for display.
    """
    methods = list(methods) if not isinstance(methods, str) else methods
    _check(model, images, labels, boxes, methods, tolerance, batch_size, examples)
    layer = layer if layer is not None else default_layer(model, images.shape[1:])
    check_layers(model, [layer], "pointing_game")
    n, _, h, w = images.shape
    tolerance = default_tolerance(h, w) if tolerance is None else tolerance
    device = model_device(model)
    e = min(examples, n)
    points = torch.zeros(len(methods), n, 2, dtype=torch.long)
    flat = torch.zeros(len(methods), n, dtype=torch.bool)
    shown = torch.zeros(len(methods), e, h, w)
    bar = tqdm(total=len(methods) * n, desc="pointing game", unit="map", disable=not progress)
    with eval_mode(model), bar:
        backprop = {"deconvnet", "guided", "gradient"} & set(methods)
        net = _engine(model, images.shape[1:]) if backprop and n else None  # one engine for every batch
        for i, method in enumerate(methods):
            bar.set_postfix_str(method)
            for start in range(0, n, batch_size):
                x = images[start:start + batch_size].to(device)
                target = labels[start:start + batch_size].to(device)
                if method == "gradcam":  # its maximum: the centre of the strongest unit (see the docstring)
                    cam = grad_cam(model, x, layer, target=target, progress=False).float().cpu()
                    maps = upsample(cam, (h, w))
                    y, x_ = peaks(cam, (h, w))
                    points[i, start:start + len(x)] = torch.stack([y, x_], 1)
                    flat[i, start:start + len(x)] = _argmax_points(cam)[1]
                else:
                    maps = saliency(model, x, target, method, layer=layer, net=net).float().cpu()
                    points[i, start:start + len(x)], flat[i, start:start + len(x)] = _argmax_points(maps)
                if start < e:
                    part = maps[:e - start]
                    finite = part.masked_fill(~torch.isfinite(part), float("nan"))
                    low = finite.flatten(1).nan_to_num(float("inf")).amin(1)[:, None, None]
                    high = finite.flatten(1).nan_to_num(float("-inf")).amax(1)[:, None, None]
                    shown[i, start:start + len(part)] = ((part - low) / (high - low).clamp(min=1e-12)).clamp(0, 1)
                bar.update(len(x))
    boxes = boxes.cpu()
    hit = hits(points, boxes, tolerance) & ~flat
    centre = torch.tensor([h // 2, w // 2]).expand(n, 2)
    return PointingGame(methods, layer, int(tolerance), [h, w], labels.cpu(), boxes, points, hit, flat,
                        hits(centre, boxes, tolerance), chance(boxes, h, w, tolerance), shown)


def run(subject, dataset, *, quick: bool, progress: bool, seed: int = 0) -> tuple[PointingGame, dict]:
    """The pointing game on ``dataset`` (a random subset of 16 drawn with
    ``seed`` with ``quick``, else all), every method. Extra for the page: the
    uint8 images of the examples kept and the class names."""
    n = len(dataset)
    generator = torch.Generator().manual_seed(seed)
    index = torch.randperm(n, generator=generator)[:16] if quick else torch.arange(n)
    images = subject.preprocess(dataset.images[index])
    result = pointing_game(subject.model, images, dataset.labels[index], dataset.boxes[index], progress=progress)
    return result, {"images": dataset.images[index[:result.examples.shape[1]]], "classes": list(dataset.classes)}


ANALYSIS = Analysis(
    name="pointing", group="toolbox", order=90, demo=False, result=PointingGame, run=run,
    description="the pointing game: where each saliency method's maximum falls, against the object's box",
    needs=frozenset({"subject", "labels", "boxes"}),
    claims=("every saliency method points at the object more often than a random pixel",
            "the best method beats the centre baseline (objects are not simply centred)"))
