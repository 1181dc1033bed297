"""Occlusion sensitivity (the paper's Fig. 7), with exact incremental inference.

A ``fill``-valued square (every channel; 0 is the dataset mean, i.e. grey,
after mean subtraction) of side ``patch_size`` slides over each image with its
top-left corner at ``(i * stride, j * stride)``, ``i < (H - patch_size) //
stride + 1`` (likewise ``j`` over the width). For every position we record

* ``activation[n, i, j]``: the total activation (sum over the map) of the map of
  ``layer`` that holds the strongest unit of the *unoccluded* image
  (``channel[n]``; the first map on ties), Fig. 7 (b);
* ``true_prob[n, i, j]``: the softmax probability of the image's label, Fig. 7 (d);
* ``top_class[n, i, j]``: the most probable class, Fig. 7 (e).

Incremental inference: an occluded image differs from the original only inside
the square, so each spatial layer recomputes only the window of its output
that the square can reach (kernel, stride, padding and dilation of each layer,
as in ``LayerSpec``) from a window of its input in which the recomputed part of
the previous layer is pasted into the unoccluded forward's activations. Padding
is supplied explicitly (zeros for convolutions, ``-inf`` for max pooling; ceil
mode's partial windows see ``-inf`` beyond the input, as the pooling does), so
the window computation is the same arithmetic as the full layer. Spatially
pointwise layers (ReLU, LocalResponseNorm across maps, eval-mode Dropout) act
on the window as it is. From the first flattening or linear layer on, the full
map is rebuilt (the unoccluded map with the window pasted in) and the rest of
the model runs as usual. The results equal the plain loop (occlude, forward,
softmax; ``method="plain"``) to float32 rounding. Models whose layers cannot be
walked this way (anything but a flat ``nn.Sequential`` of those layers) are
refused with ``method="incremental"`` and run the plain loop with
``method="auto"``.

Where the paper is silent: the total activation is the sum over the map's
units after ``layer`` (the paper's "total activation in the feature map"); the
map is chosen once per image, on the unoccluded image; a square that does not
fit at the far border is not placed (positions follow ``(H - patch_size) //
stride + 1``, as a sliding window without padding does).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from ..deconv import CaptureError, Deconvnet, Request
from ..geometry import pair as _pair
from ..models.layer_table import POINTWISE, kind_of
from ..nn import MaxPool2dSwitches
from ..nn.normalization import local_response_norm
from ._args import (check_choice, check_images, check_labels, check_layers, check_positive_int, eval_mode,
                    forward_with_layers, in_sequence, last_maps, model_device)
from .registry import Analysis
from .result import Result, display_signed

__all__ = ["ANALYSIS", "Occlusion", "grid_size", "map_layer", "object_share", "occlusion", "occlusion_plain",
           "run"]

METHODS = ("auto", "incremental", "plain")


@dataclass
class Occlusion(Result):
    """Occlusion maps of ``N`` images on a ``gh x gw`` grid of square positions.

    ``channel[N]``: the map of ``layer`` strongest on the unoccluded image;
    ``activation[N, gh, gw]``: that map's total activation with the square at
    each position (``base_activation[N]`` without it); ``true_prob[N, gh, gw]``
    and ``top_class[N, gh, gw]`` (``base_prob[N]``, ``base_class[N]`` without
    it); ``labels[N]``; the square: ``patch_size``, ``stride``, ``fill``."""

    layer: str
    patch_size: int
    stride: int
    fill: float
    labels: Tensor
    channel: Tensor
    activation: Tensor
    true_prob: Tensor
    top_class: Tensor
    base_activation: Tensor
    base_prob: Tensor
    base_class: Tensor

    def square(self, i: int, j: int) -> tuple[int, int, int, int]:
        """``(top, left, bottom, right)`` (end-exclusive) of the square at grid position ``(i, j)``."""
        return i * self.stride, j * self.stride, i * self.stride + self.patch_size, j * self.stride + self.patch_size


def grid_size(height: int, width: int, patch_size: int, stride: int) -> tuple[int, int]:
    """Positions of the square along each axis: ``(H - patch_size) // stride + 1``."""
    return (height - patch_size) // stride + 1, (width - patch_size) // stride + 1


def _check(model, images, labels, layer, patch_size, stride, batch_size, caller):
    check_layers(model, [layer], caller)
    check_images(images, caller)
    n, _, h, w = images.shape
    check_labels(labels, n, caller)
    for name, value in (("patch_size", patch_size), ("stride", stride), ("batch_size", batch_size)):
        check_positive_int(value, name, caller)
    if patch_size > min(h, w):
        raise ValueError(f"{caller}: patch_size {patch_size} is larger than the images ({h}x{w})")


def _plan(model: nn.Module, layer: str):
    """The model as ``(spatial, rest, tap)``: the leading spatially local layers
    (up to the first flattening/linear one), the remaining modules, and the
    index in ``spatial`` of ``layer``'s output. None if the model cannot be walked."""
    if not isinstance(model, nn.Sequential):
        return None
    children = list(model.named_children())
    spatial = []
    for name, module in children:
        if isinstance(module, nn.Conv2d):
            if module.padding_mode != "zeros" or isinstance(module.padding, str):
                return None
        elif isinstance(module, nn.MaxPool2d):
            if _pair(module.dilation) != (1, 1) or module.return_indices:
                return None
        elif isinstance(module, MaxPool2dSwitches):
            if module.return_switches:
                return None
        elif kind_of(module) in POINTWISE:
            pass
        else:
            break
        spatial.append((name, module))
    names = [name for name, _ in spatial]
    if layer not in names:
        return None
    rest = [module for _, module in children[len(spatial):]]
    return spatial, rest, names.index(layer)


def _window_rule(module: nn.Module):
    """``(kernel, stride, padding, dilation)`` per axis of a conv/pool; None for pointwise."""
    if isinstance(module, nn.Conv2d):
        return _pair(module.kernel_size), _pair(module.stride), _pair(module.padding), _pair(module.dilation)
    if isinstance(module, nn.MaxPool2d | MaxPool2dSwitches):
        k = _pair(module.kernel_size)
        return k, _pair(module.stride if module.stride is not None else k), _pair(module.padding), (1, 1)
    return None


def _affected(lo: Tensor, hi: Tensor, k: int, s: int, p: int, d: int, n_out: int) -> tuple[Tensor, Tensor]:
    """Output units ``[o0, o1)`` whose window meets input rows ``[lo, hi)``."""
    reach = d * (k - 1)
    o0 = torch.div(lo + p - reach + s - 1, s, rounding_mode="floor").clamp(0, n_out)
    o1 = (torch.div(hi - 1 + p, s, rounding_mode="floor") + 1).clamp(0, n_out)
    return o0, torch.maximum(o1, o0)


class _Window:
    """Where each occluded image's recomputed part of one map lies: rows
    ``[top, top + h)`` and columns ``[left, left + w)`` (one size for the batch,
    per-image offsets), and its values ``[B, C, h, w]``."""

    def __init__(self, top: Tensor, left: Tensor, h: int, w: int, values: Tensor | None = None):
        self.top, self.left, self.h, self.w, self.values = top, left, h, w, values


def _place(lo: Tensor, hi: Tensor, n: int) -> tuple[Tensor, int]:
    """One window size for all images covering each ``[lo, hi)``, kept inside ``[0, n)``."""
    size = int((hi - lo).max()) if len(lo) else 0
    size = max(1, min(n, size))
    return torch.minimum(lo, torch.full_like(lo, n - size)).clamp_min(0), size


class _Layer:
    """One spatial layer's window arithmetic, for one image's unoccluded input
    ``base_in[C, H, W]`` and output ``base_out``: the input padded once (zeros
    for a convolution, ``-inf`` for max pooling) by a margin that covers every
    window an occluded image may read."""

    def __init__(self, module: nn.Module, base_in: Tensor, base_out: Tensor):
        self.module, self.rule = module, _window_rule(module)
        self.base_out = base_out
        if self.rule is None:
            return
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = self.rule
        _, h_in, w_in = base_in.shape
        _, h_out, w_out = base_out.shape
        end_h = (h_out - 1) * sh - ph + dh * (kh - 1) + 1   # one past the last input row any output reads
        end_w = (w_out - 1) * sw - pw + dw * (kw - 1) + 1
        self.margin = (max(ph, end_h - h_in, 0), max(pw, end_w - w_in, 0))
        pool = isinstance(module, nn.MaxPool2d | MaxPool2dSwitches)
        mh, mw = self.margin
        self.padded = F.pad(base_in, (mw, mw, mh, mh), value=-math.inf if pool else 0.0)

    def __call__(self, win: _Window) -> _Window:
        """The output window of the occluded images whose input window is ``win``."""
        if self.rule is None:  # spatially pointwise
            m = self.module
            if type(m) is nn.LocalResponseNorm and win.values.dim() == 4:  # the same function, faster
                return _Window(win.top, win.left, win.h, win.w,
                               local_response_norm(win.values, m.size, m.alpha, m.beta, m.k))
            return _Window(win.top, win.left, win.h, win.w, m(win.values))
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = self.rule
        _, h_out, w_out = self.base_out.shape
        r0, r1 = _affected(win.top, win.top + win.h, kh, sh, ph, dh, h_out)
        c0, c1 = _affected(win.left, win.left + win.w, kw, sw, pw, dw, w_out)
        top, oh = _place(r0, r1, h_out)
        left, ow = _place(c0, c1, w_out)
        need_h, need_w = (oh - 1) * sh + dh * (kh - 1) + 1, (ow - 1) * sw + dw * (kw - 1) + 1
        mh, mw = self.margin
        start_r, start_c = top * sh - ph + mh, left * sw - pw + mw          # in padded coordinates
        # the occluded input each output window reads: the unoccluded map (padded)
        # with the recomputed input window pasted in where the two overlap
        x = torch.stack([self.padded[:, r:r + need_h, c:c + need_w]
                         for r, c in zip(start_r.tolist(), start_c.tolist())])
        for k, (r, c, wr, wc) in enumerate(zip(start_r.tolist(), start_c.tolist(),
                                               (win.top + mh).tolist(), (win.left + mw).tolist())):
            r0, r1 = max(r, wr), min(r + need_h, wr + win.h)
            c0, c1 = max(c, wc), min(c + need_w, wc + win.w)
            if r0 < r1 and c0 < c1:
                x[k, :, r0 - r:r1 - r, c0 - c:c1 - c] = win.values[k, :, r0 - wr:r1 - wr, c0 - wc:c1 - wc]
        if isinstance(self.module, nn.Conv2d):
            y = F.conv2d(x, self.module.weight, self.module.bias, (sh, sw), 0, (dh, dw), self.module.groups)
        else:  # the maxima equal zfcore's pooling exactly; the switches are not needed here
            y = F.max_pool2d(x, (kh, kw), (sh, sw))
        return _Window(top, left, oh, ow, y)


def _paste(base: Tensor, win: _Window) -> Tensor:
    """``[B, C, H, W]``: the unoccluded map with each image's window pasted in."""
    out = base.expand(len(win.top), *base.shape).clone()
    rows = win.top[:, None] + torch.arange(win.h, device=base.device)
    cols = win.left[:, None] + torch.arange(win.w, device=base.device)
    b = torch.arange(len(win.top), device=base.device)[:, None, None]
    out.permute(0, 2, 3, 1)[b, rows[:, :, None], cols[:, None, :]] = win.values.permute(0, 2, 3, 1)
    return out


def _occluded(image: Tensor, tops: Tensor, lefts: Tensor, patch_size: int, fill: float) -> Tensor:
    x = image.expand(len(tops), *image.shape).clone()
    rows = tops[:, None] + torch.arange(patch_size, device=image.device)
    cols = lefts[:, None] + torch.arange(patch_size, device=image.device)
    b = torch.arange(len(tops), device=image.device)[:, None, None]
    x.permute(0, 2, 3, 1)[b, rows[:, :, None], cols[:, None, :]] = fill
    return x


def _positions(h: int, w: int, patch_size: int, stride: int, device) -> tuple[Tensor, Tensor, int, int]:
    gh, gw = grid_size(h, w, patch_size, stride)
    ii, jj = torch.meshgrid(torch.arange(gh, device=device), torch.arange(gw, device=device), indexing="ij")
    return ii.flatten() * stride, jj.flatten() * stride, gh, gw


def _strongest_map(fmap: Tensor) -> int:
    """The map holding the strongest unit (first on ties; NaN counts as the largest)."""
    peak = fmap.flatten(1).nan_to_num(nan=math.inf).amax(1)
    return int(torch.nonzero(peak == peak.max())[0])


@torch.no_grad()
def occlusion(model: nn.Module, images: Tensor, labels: Tensor, *, layer: str, patch_size: int, stride: int,
              fill: float = 0.0, batch_size: int = 64, method: str = "auto", progress: bool = True) -> Occlusion:
    """Occlusion maps (Fig. 7) of ``images[N, C, H, W]`` (model-input space) with
    ``labels[N]``: see the module docstring. ``method``: ``"incremental"``
    (exact incremental inference; an error if the model cannot be walked),
    ``"plain"`` (occlude, full forward, softmax) or ``"auto"`` (incremental
    where possible). ``batch_size`` occluded positions are computed at once."""
    _check(model, images, labels, layer, patch_size, stride, batch_size, "occlusion")
    check_choice(method, METHODS, "method", "occlusion")
    plan = _plan(model, layer) if method != "plain" else None
    if method == "incremental" and plan is None:
        raise ValueError(f"occlusion: method='incremental' needs a flat nn.Sequential of Conv2d, max pooling and "
                         f"pointwise layers before the first flattening/linear one, with {layer!r} among them")
    if plan is None:
        return occlusion_plain(model, images, labels, layer=layer, patch_size=patch_size, stride=stride, fill=fill,
                               batch_size=batch_size, progress=progress)
    spatial, rest, tap_index = plan
    device = model_device(model)
    with eval_mode(model):
        return _incremental(model, spatial, rest, tap_index, images.to(device), labels.to(device), layer,
                            patch_size, stride, float(fill), batch_size, progress)


def _incremental(model, spatial, rest, tap_index, images, labels, layer, patch_size, stride, fill, batch_size,
                 progress) -> Occlusion:
    n, _, h, w = images.shape
    tops, lefts, gh, gw = _positions(h, w, patch_size, stride, images.device)
    activation = torch.empty(n, gh * gw, dtype=torch.float64)
    true_prob = torch.empty(n, gh * gw)
    top_class = torch.empty(n, gh * gw, dtype=torch.long)
    channels, base_act, base_prob, base_class = [], [], [], []
    bar = tqdm(total=n * gh * gw, desc="occlusion", unit="pos", disable=not progress)
    for index in range(n):
        image = images[index]
        # the unoccluded forward, every spatial layer's output kept
        maps = [image]
        for _, module in spatial:
            x = maps[-1][None]
            maps.append(module(x.clone() if getattr(module, "inplace", False) else x)[0])
        steps = [_Layer(module, maps[d], maps[d + 1]) for d, (_, module) in enumerate(spatial)]
        logits = _finish(rest, maps[-1][None])
        tapped = maps[tap_index + 1]
        c = _strongest_map(tapped)
        total = tapped[c].double().sum()
        channels.append(c)
        base_act.append(float(total))
        probs = logits.float().softmax(1)[0]
        base_prob.append(float(probs[labels[index]]))
        base_class.append(int(probs.argmax()))
        for start in range(0, len(tops), batch_size):
            t, l = tops[start:start + batch_size], lefts[start:start + batch_size]
            win = _Window(t, l, patch_size, patch_size,
                          torch.full((len(t), image.shape[0], patch_size, patch_size), fill,
                                     dtype=image.dtype, device=image.device))
            for depth, step in enumerate(steps):
                win = step(win)
                if depth == tap_index:
                    # the map's total: the unoccluded total, with the window's units replaced
                    rows = win.top[:, None] + torch.arange(win.h, device=t.device)
                    cols = win.left[:, None] + torch.arange(win.w, device=t.device)
                    old = tapped[c][rows[:, :, None], cols[:, None, :]].double().sum((1, 2))
                    activation[index, start:start + len(t)] = (total - old + win.values[:, c].double().sum((1, 2))).cpu()
            out = _finish(rest, _paste(maps[-1], win)).float().softmax(1)
            true_prob[index, start:start + len(t)] = out[:, labels[index]].cpu()
            top_class[index, start:start + len(t)] = out.argmax(1).cpu()
            bar.update(len(t))
    bar.close()
    return Occlusion(layer, patch_size, stride, fill, labels.cpu(), torch.tensor(channels, dtype=torch.long),
                     activation.float().view(n, gh, gw), true_prob.view(n, gh, gw), top_class.view(n, gh, gw),
                     torch.tensor(base_act), torch.tensor(base_prob), torch.tensor(base_class, dtype=torch.long))


def _finish(rest: Sequence[nn.Module], x: Tensor) -> Tensor:
    for module in rest:
        x = module(x)
    return x


@torch.no_grad()
def occlusion_plain(model: nn.Module, images: Tensor, labels: Tensor, *, layer: str, patch_size: int, stride: int,
                    fill: float = 0.0, batch_size: int = 64, progress: bool = True) -> Occlusion:
    """The plain loop, batched (the fastest pure-PyTorch way): every occluded
    image through the whole model, ``batch_size`` at a time. The reference of
    ``occlusion`` and the fallback for models it cannot walk."""
    _check(model, images, labels, layer, patch_size, stride, batch_size, "occlusion")
    device = model_device(model)
    images, labels = images.to(device), labels.to(device)
    n, _, h, w = images.shape
    tops, lefts, gh, gw = _positions(h, w, patch_size, stride, device)
    activation = torch.empty(n, gh * gw, dtype=torch.float64)
    true_prob = torch.empty(n, gh * gw)
    top_class = torch.empty(n, gh * gw, dtype=torch.long)
    channels, base_act, base_prob, base_class = [], [], [], []
    bar = tqdm(total=n * gh * gw, desc="occlusion (plain)", unit="pos", disable=not progress)
    with eval_mode(model):
        for index in range(n):
            image = images[index]
            logits, caught = forward_with_layers(model, image[None], [layer], "occlusion")
            probs, out = logits.float().softmax(1)[0], caught[layer]
            c = _strongest_map(out[0])
            channels.append(c)
            base_act.append(float(out[0, c].double().sum()))
            base_prob.append(float(probs[labels[index]]))
            base_class.append(int(probs.argmax()))
            for start in range(0, len(tops), batch_size):
                t, l = tops[start:start + batch_size], lefts[start:start + batch_size]
                logits, caught = forward_with_layers(model, _occluded(image, t, l, patch_size, fill), [layer],
                                                     "occlusion")
                probs = logits.float().softmax(1)
                activation[index, start:start + len(t)] = caught[layer][:, c].double().sum((1, 2)).cpu()
                true_prob[index, start:start + len(t)] = probs[:, labels[index]].cpu()
                top_class[index, start:start + len(t)] = probs.argmax(1).cpu()
                bar.update(len(t))
    bar.close()
    return Occlusion(layer, patch_size, stride, float(fill), labels.cpu(), torch.tensor(channels, dtype=torch.long),
                     activation.float().view(n, gh, gw), true_prob.view(n, gh, gw), top_class.view(n, gh, gw),
                     torch.tensor(base_act), torch.tensor(base_prob), torch.tensor(base_class, dtype=torch.long))


def object_share(result: Occlusion, boxes: Tensor) -> tuple[Tensor, Tensor]:
    """Per image, the mean drop of the true-class probability (unoccluded minus
    occluded) over the square positions that cover the object's centre, and
    over those that do not meet the object's box at all (background).
    ``boxes[N, 4]``: ``(x0, y0, x1, y1)`` pixels, end-exclusive. NaN where an
    image has no position of a kind."""
    n, gh, gw = result.true_prob.shape
    i = torch.arange(gh)[:, None].expand(gh, gw)
    j = torch.arange(gw)[None, :].expand(gh, gw)
    top, left = i * result.stride, j * result.stride
    bottom, right = top + result.patch_size, left + result.patch_size
    on, off = [], []
    for k in range(n):
        x0, y0, x1, y1 = (float(v) for v in boxes[k])
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        covers = (top <= cy) & (cy < bottom) & (left <= cx) & (cx < right)
        apart = (bottom <= y0) | (top >= y1) | (right <= x0) | (left >= x1)
        drop = result.base_prob[k] - result.true_prob[k]
        on.append(drop[covers].mean() if covers.any() else torch.tensor(float("nan")))
        off.append(drop[apart].mean() if apart.any() else torch.tensor(float("nan")))
    return torch.stack(on), torch.stack(off)


def run(subject, dataset, *, quick: bool, progress: bool, seed: int) -> tuple[Occlusion, dict]:
    """Fig. 7 on ``dataset``: ``occlusion`` of its first 40 images (``quick``:
    10) at ``map_layer`` (the last ``Conv2d`` of the paper's models), squares
    of a quarter of the input side at half that stride. ``seed`` is unused
    (nothing is drawn). Extra for the page: the uint8 images, their boxes
    (None where the dataset has none: the page then has no claim to check), the
    class names and the deconvnet projection of each image's chosen map (``projections``, as
    ``display_signed`` keeps them)."""
    size = subject.input_shape[-1]
    index = torch.arange(len(dataset))[:10 if quick else 40]
    images = subject.preprocess(dataset.images[index])
    patch = max(1, round(size / 4))
    layer = map_layer(subject.model, subject.input_shape)
    result = occlusion(subject.model, images, dataset.labels[index], layer=layer, patch_size=patch,
                       stride=max(1, patch // 2), progress=progress)
    boxes = dataset.boxes[index] if dataset.boxes is not None else None
    return result, {"images": dataset.images[index], "boxes": boxes, "classes": list(dataset.classes),
                    "projections": _map_projections(subject, images, result)}


def map_layer(model: nn.Module, input_shape) -> str:
    """The layer whose strongest map ``run`` follows: the last ``nn.Conv2d``
    (conv5 for the paper's models) when it runs in a chain of
    ``nn.Sequential`` layers, else the deepest maps on the model's main path
    (``_args.last_maps``: a ResNet's ``layer4``, whose convolutions sit inside
    residual blocks). ``ValueError`` when the model has no maps."""
    convs = [name for name, module in model.named_modules() if isinstance(module, nn.Conv2d)]
    if convs and in_sequence(model, convs[-1]):
        return convs[-1]
    layer = last_maps(model, input_shape)
    if layer is None:
        raise ValueError("occlusion: the model has no layer with maps on its main path; name a layer")
    return layer


def _map_projections(subject, images: Tensor, result: Occlusion) -> Tensor | None:
    """Fig. 7 (c): the deconvnet projection of each image's chosen map (the
    whole map, all its activations kept), for display (``display_signed``:
    uint8 ``[N, 3, H, W]``, grey is 0); None for a model the engine cannot capture."""
    try:
        net = Deconvnet(subject.model, subject.input_shape)
    except CaptureError:
        return None  # a model the engine cannot capture: the page goes without the projections
    requests = [Request(i, result.layer, int(c), "map") for i, c in enumerate(result.channel.tolist())]
    return display_signed(net.project_many(images, requests))


def _check_run(subject, dataset) -> str | None:
    try:
        map_layer(subject.model, subject.input_shape)
    except ValueError:
        return "occlusion needs a model with convolutional maps on its main path; this one has none"
    return None


ANALYSIS = Analysis(
    name="occlusion", group="paper", order=10, demo=True, result=Occlusion, run=run,
    description="occlusion sensitivity (Fig. 7)",
    needs=frozenset({"subject", "labels"}), check=_check_run,
    claims=("occluding the object lowers the true-class probability more than occluding background (with boxes)",))
