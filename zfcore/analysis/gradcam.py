"""Grad-CAM and guided Grad-CAM (Selvaraju et al., "Grad-CAM: Visual
Explanations from Deep Networks via Gradient-based Localization", ICCV 2017).

Definition (the paper's eqs. 1-2): for an image, a convolutional ``layer``
with activations ``A[k, i, j]`` (``k`` the map, ``h x w`` positions) and a
class ``c`` with score ``y_c`` (the logit, before the softmax),

    alpha[k]   = mean over (i, j) of  d y_c / d A[k, i, j]
    L_c[i, j]  = ReLU( sum_k  alpha[k] * A[k, i, j] )

at the layer's resolution. Guided Grad-CAM (section 3.2) is guided
backpropagation of ``y_c`` to the input (Springenberg et al.: every ReLU's
backward replaced by ``relu(grad) * (input > 0)``) multiplied pixel-wise by
``L_c`` upsampled bilinearly to the input's size.

Batching: one forward per batch of images. A forward hook on ``layer``
replaces its output by a leaf tensor we own, repeated ``K`` times when ``K``
classes are explained per image, so the layers below ``layer`` run once per
image and only the layers above it run ``K`` times; one ``torch.autograd.grad``
of the sum of the selected scores gives every (image, class) gradient at
once, because each row of the repeated leaf only reaches its own score. The
graph never reaches the model's parameters (the hook detaches), so nothing is
accumulated in their ``.grad``.

Guided backpropagation runs on the deconvnet engine
(``zfcore.deconv.Deconvnet`` in ``"guided"`` mode, LocalResponseNorm layers
passing their gradient, seeded with the one-hot class at the model's output).
Models the engine cannot capture are refused by it (``zfcore.deconv.CaptureError``);
``backend="auto"`` then falls back to autograd, with a hook on every
``nn.ReLU`` that makes its backward ``relu(grad) * (output > 0)`` (the same
rule; ReLU's output is positive exactly where its input is).

Where the paper is silent: the map is not normalised (the renderer scales
each one by its own maximum for display); a map that is 0 everywhere (every
weighted sum negative) is left at 0; ``target=None`` explains each image's
highest logit (first on ties); the upsampling for guided Grad-CAM is
``F.interpolate(mode="bilinear", align_corners=False)``, the renderer's too.
The renderer's pointing-game claim (the map's maximum inside the object's
box more often than chance) takes the maximum at the centre of the strongest
unit (``peaks``), and chance as the box's share of the image.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from ._render import begin
from ._stream import call_site, check_layers, model_device

__all__ = ["GradCam", "analyze_embedded", "default_layer", "grad_cam", "grad_cam_analysis", "guided_backprop",
           "guided_grad_cam", "peaks", "pointing_hits", "render", "upsample"]


# ------------------------------------------------------------------ checks

def _describe(value) -> str:
    return f"{value.dtype} {list(value.shape)}" if isinstance(value, Tensor) else type(value).__name__


def _check_images(images, caller: str) -> None:
    if not isinstance(images, Tensor) or images.dim() != 4 or not images.is_floating_point():
        raise ValueError(f"{caller}: images must be a float Tensor[N, C, H, W] in the model's input space "
                         f"(got {_describe(images)})")
    if not bool(torch.isfinite(images).all()):
        raise ValueError(f"{caller}: images hold NaN or infinite values")


def _check_model(model, caller: str) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"{caller}: model must be a torch.nn.Module (got {type(model).__name__})")


def _targets(target, n: int, caller: str) -> Tensor | None:
    """``target`` as a LongTensor[N, K] (K classes per image), or None (the predicted class)."""
    if target is None:
        return None
    if isinstance(target, int) and not isinstance(target, bool):
        return torch.full((n, 1), target, dtype=torch.long)
    if (isinstance(target, Tensor) and not target.is_floating_point() and target.dtype != torch.bool
            and target.dim() in (1, 2) and target.shape[0] == n and target.numel() > 0):
        return (target[:, None] if target.dim() == 1 else target).long()
    raise ValueError(f"{caller}: target must be None, an int, a LongTensor[{n}] or a LongTensor[{n}, K] of class "
                     f"indices (got {_describe(target) if not isinstance(target, int | bool) else repr(target)})")


def _check_range(targets: Tensor, classes: int, caller: str) -> None:
    bad = (targets < 0) | (targets >= classes)
    if bad.any():
        raise ValueError(f"{caller}: target holds class {int(targets[bad][0])}, outside the model's {classes} "
                         f"classes [0, {classes})")


def _check_batch_size(batch_size, caller: str) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"{caller}: batch_size must be a positive int (got {batch_size!r})")


# ------------------------------------------------------------------ Grad-CAM

class _Swap:
    """Forward hook: ``layer``'s output is replaced by a leaf we own, each image
    repeated ``repeats`` times along the batch, so the layers above see one copy
    per explained class and the gradient of each copy is its own row."""

    def __init__(self, repeats: int, caller: str, layer: str = ""):
        self.repeats, self.caller, self.leaf = repeats, caller, None
        self.path, self.call = call_site(layer)
        self.calls = 0

    def __call__(self, _module, _inputs, output):
        index, self.calls = self.calls, self.calls + 1
        if self.call is not None and index != self.call:
            return None
        if not isinstance(output, Tensor) or output.dim() != 4:
            raise ValueError(f"{self.caller}: the layer's output must be a Tensor[N, C, h, w], a convolutional "
                             f"layer's (got {_describe(output)})")
        if self.leaf is not None:
            raise ValueError(f"{self.caller}: the layer runs more than once in the model's forward; name one "
                             f"call: {self.path}#0, {self.path}#1, ...")
        self.leaf = output.detach().repeat_interleave(self.repeats, 0).requires_grad_()
        return self.leaf.clone()  # a new tensor: an in-place layer above must not write into our leaf


def _cam_batch(model: nn.Module, module: nn.Module, images: Tensor, targets: Tensor | None,
               caller: str, layer: str = "") -> tuple[Tensor, Tensor, Tensor]:
    """``(maps[B, K, h, w], logits[B, classes], targets[B, K])`` of one batch of images."""
    b = len(images)
    k = 1 if targets is None else targets.shape[1]
    swap = _Swap(k, caller, layer)
    handle = module.register_forward_hook(swap)
    try:
        with torch.enable_grad():
            logits = model(images)
    finally:
        handle.remove()
    if swap.leaf is None:
        raise ValueError(f"{caller}: the layer did not run in the model's forward")
    if not isinstance(logits, Tensor) or logits.dim() != 2 or logits.shape[0] != b * k:
        raise ValueError(f"{caller}: the model must return logits Tensor[N, classes] (got {_describe(logits)})")
    if targets is None:
        targets = logits.detach().argmax(1)[:, None]
    else:
        _check_range(targets, logits.shape[1], caller)
        targets = targets.to(logits.device)
    scores = logits.gather(1, targets.reshape(b * k, 1))
    grad, = torch.autograd.grad(scores.sum(), swap.leaf, allow_unused=True)
    a = swap.leaf.detach()
    grad = torch.zeros_like(a) if grad is None else grad              # the class does not depend on the layer
    weights = grad.mean((2, 3))                                       # alpha[B*K, C]: eq. 1
    maps = torch.relu(torch.einsum("rc,rchw->rhw", weights, a))       # eq. 2
    return maps.view(b, k, *maps.shape[1:]), logits.detach()[::k], targets


def _grad_cam(model, images, layer, target, batch_size, progress, caller) -> tuple[Tensor, Tensor, Tensor]:
    """``(maps[N, K, h, w], logits[N, classes], targets[N, K])`` with the checks, on the model's device."""
    _check_model(model, caller)
    _check_images(images, caller)
    check_layers(model, [layer], caller)
    _check_batch_size(batch_size, caller)
    targets = _targets(target, len(images), caller)
    module = dict(model.named_modules())[call_site(layer)[0]]
    device = model_device(model)
    was_training = model.training
    model.eval()
    maps, logits, chosen = [], [], []
    try:
        for start in tqdm(range(0, len(images), batch_size), desc=caller, unit="batch",
                          disable=not progress or len(images) <= batch_size):
            x = images[start:start + batch_size].to(device)
            t = None if targets is None else targets[start:start + batch_size]
            m, z, c = _cam_batch(model, module, x, t, caller, layer)
            maps.append(m)
            logits.append(z)
            chosen.append(c)
    finally:
        model.train(was_training)
    if not maps:
        raise ValueError(f"{caller}: images is empty (got {_describe(images)})")
    return torch.cat(maps), torch.cat(logits), torch.cat(chosen)


def grad_cam(model: nn.Module, images: Tensor, layer: str, target=None, *, batch_size: int = 64,
             progress: bool = True) -> Tensor:
    """Grad-CAM maps (Selvaraju et al., eqs. 1-2) of ``images`` at ``layer``'s resolution.

    Args:
        model: a plain CNN returning logits ``Tensor[N, classes]``.
        images: ``Tensor[N, C, H, W]`` in the model's input space.
        layer: the name of a layer with 4-D output (``model.named_modules()``).
        target: ``None`` (each image's predicted class), an int (one class for
            all images), ``LongTensor[N]`` (one class per image) or
            ``LongTensor[N, K]`` (``K`` classes per image, computed in one
            batched pass: the layers above ``layer`` run on ``K`` copies).
        batch_size: images per forward.
        progress: a tqdm bar over the batches (when there is more than one).

    Returns:
        ``Tensor[N, h, w]`` (``Tensor[N, K, h, w]`` for a 2-D ``target``):
        ``ReLU(sum_k alpha_k A_k)``, ``alpha_k`` the spatial mean of the
        gradient of the class's logit with respect to the map ``A_k``.

    Example:
        >>> maps = grad_cam(model, images, "relu5")                   # predicted classes
        >>> per_class = grad_cam(model, images, "relu5", torch.tensor([[0, 3]] * len(images)))
    """
    maps, _, _ = _grad_cam(model, images, layer, target, batch_size, progress, "grad_cam")
    two_d = isinstance(target, Tensor) and target.dim() == 2
    return maps if two_d else maps[:, 0]


# ------------------------------------------------------------ guided backprop

class _GuidedReLU(torch.autograd.Function):
    """Identity forward on a ReLU's output; backward ``relu(grad) * (output > 0)``."""

    @staticmethod
    def forward(ctx, y):
        ctx.save_for_backward(y)
        return y.clone()

    @staticmethod
    def backward(ctx, grad):
        y, = ctx.saved_tensors
        return grad.clamp_min(0) * (y > 0)


def _guided_autograd(model: nn.Module, images: Tensor, seed: Tensor) -> Tensor:
    """Guided backprop of ``(logits * seed).sum()`` by autograd, every ``nn.ReLU``'s
    backward made guided by a forward hook."""
    handles = [m.register_forward_hook(lambda _m, _i, out: _GuidedReLU.apply(out))
               for m in model.modules() if isinstance(m, nn.ReLU)]
    try:
        with torch.enable_grad():
            x = images.detach().requires_grad_()
            logits = model(x)
            grad, = torch.autograd.grad((logits * seed).sum(), x, allow_unused=True)
    finally:
        for h in handles:
            h.remove()
    return torch.zeros_like(x) if grad is None else grad


def _guided_engine(model: nn.Module, images: Tensor, seed: Tensor) -> Tensor:
    """Guided backprop on the deconvnet engine (the captured graph of any CNN);
    ``CaptureError`` (a ``ValueError``) for a model it cannot capture."""
    from ..deconv import CaptureError, Deconvnet

    device = images.device
    # the engine captures the model on random inputs: keep the caller's global RNG as it was
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        net = Deconvnet(model, tuple(images.shape[1:]), lrn="gradient")
    output = net.graph.output
    if net.graph.nodes[output].shape != tuple(seed.shape[1:]):
        raise CaptureError(f"its captured output {list(net.graph.nodes[output].shape)} is not the logits")
    return net._signal_down(images, output, seed, "guided")


def guided_backprop(model: nn.Module, images: Tensor, target=None, *, backend: str = "auto") -> Tensor:
    """Guided backpropagation (Springenberg et al.) of the class logit to the
    input: its gradient with every ReLU's backward ``relu(grad) * (input > 0)``.

    Args:
        model, images: as ``grad_cam``.
        target: ``None`` (predicted class), an int, or ``LongTensor[N]``.
        backend: ``"deconvnet"`` (zfcore's engine; an error for a model it
            cannot capture), ``"autograd"`` (hooks on the ``nn.ReLU`` modules: a
            ReLU called as a function stays a plain ReLU), or ``"auto"`` (the
            engine, else autograd).

    Returns:
        ``Tensor[N, C, H, W]``.
    """
    return _guided(model, images, target, backend, "guided_backprop")[0]


def _guided(model, images, target, backend, caller) -> tuple[Tensor, Tensor]:
    """``(guided backprop[N, C, H, W], targets[N])``."""
    _check_model(model, caller)
    _check_images(images, caller)
    if backend not in ("auto", "deconvnet", "autograd"):
        raise ValueError(f"{caller}: backend must be 'auto', 'deconvnet' or 'autograd' (got {backend!r})")
    targets = _targets(target, len(images), caller)
    if targets is not None and targets.shape[1] != 1:
        raise ValueError(f"{caller}: target must be None, an int or a LongTensor[{len(images)}] "
                         f"(got {_describe(target)})")
    device = model_device(model)
    images = images.detach().to(device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            logits = model(images)
        if not isinstance(logits, Tensor) or logits.dim() != 2 or logits.shape[0] != len(images):
            raise ValueError(f"{caller}: the model must return logits Tensor[N, classes] (got {_describe(logits)})")
        if targets is None:
            targets = logits.argmax(1)
        else:
            _check_range(targets, logits.shape[1], caller)
            targets = targets[:, 0].to(device)
        seed = F.one_hot(targets, logits.shape[1]).to(images.dtype)
        if backend != "autograd":
            from ..deconv import CaptureError

            try:
                return _guided_engine(model, images, seed), targets
            except CaptureError as error:
                if backend == "deconvnet":
                    raise ValueError(f"{caller}: the deconvnet engine cannot capture this model ({error}); "
                                     f"use backend='autograd'") from None
        return _guided_autograd(model, images, seed), targets
    finally:
        model.train(was_training)


def upsample(maps: Tensor, size: Sequence[int]) -> Tensor:
    """``maps[N, h, w]`` resized bilinearly to ``size = (H, W)`` (``align_corners=False``)."""
    maps = maps if maps.is_floating_point() else maps.float()
    return F.interpolate(maps[:, None], size=tuple(size), mode="bilinear", align_corners=False)[:, 0]


def guided_grad_cam(model: nn.Module, images: Tensor, layer: str, target=None, *, backend: str = "auto",
                    batch_size: int = 64) -> Tensor:
    """Guided Grad-CAM (Selvaraju et al., section 3.2): guided backpropagation
    of the class logit times the Grad-CAM map upsampled bilinearly to the
    input's size.

    Args:
        model, images, layer: as ``grad_cam``.
        target: ``None`` (predicted class), an int, or ``LongTensor[N]``.
        backend: guided backprop's, as ``guided_backprop``.
        batch_size: Grad-CAM's images per forward.

    Returns:
        ``Tensor[N, C, H, W]``.

    Example:
        >>> g = guided_grad_cam(model, images, "relu5", labels)
    """
    _check_model(model, "guided_grad_cam")
    check_layers(model, [layer], "guided_grad_cam")
    _check_batch_size(batch_size, "guided_grad_cam")
    gb, targets = _guided(model, images, target, backend, "guided_grad_cam")
    maps, _, _ = _grad_cam(model, images, layer, targets, batch_size, False, "guided_grad_cam")
    return gb * upsample(maps[:, 0], images.shape[-2:]).to(gb)[:, None]


# ------------------------------------------------------------------ result

@dataclass
class GradCam:
    """Grad-CAM of ``N`` images at ``layer`` (maps ``h x w``; images ``H x W``).

    ``index[N]``: the images' indices in their dataset; ``labels[N]`` (-1 where
    unknown); ``target[N]``: the class each ``maps[N, h, w]`` explains, with its
    softmax probability ``target_prob[N]``; ``predicted[N]`` and
    ``predicted_prob[N]``; ``top_classes[N, K]`` (most probable first), their
    probabilities ``top_probs`` and maps ``top_maps[N, K, h, w]``; for the first
    ``M`` images, guided backprop of the target class (``guided_backprop``) and
    guided Grad-CAM (``guided``), uint8 ``[M, 3, H, W]`` for display (grey is
    0, each scaled by its own largest magnitude, ``zfcore.report.display_signed``)."""

    layer: str
    image_size: list
    index: Tensor
    labels: Tensor
    target: Tensor
    maps: Tensor
    target_prob: Tensor
    predicted: Tensor
    predicted_prob: Tensor
    top_classes: Tensor
    top_probs: Tensor
    top_maps: Tensor
    guided_backprop: Tensor
    guided: Tensor

    def as_dict(self) -> dict:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, d: dict) -> "GradCam":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__})


def grad_cam_analysis(model: nn.Module, images: Tensor, layer: str, target=None, *, labels: Tensor | None = None,
                      index: Tensor | None = None, top: int = 3, guided: int = 8, backend: str = "auto",
                      batch_size: int = 64, progress: bool = True) -> GradCam:
    """Grad-CAM of ``images`` for ``target`` (as ``grad_cam``: None = the
    predicted class) and for each image's ``top`` most probable classes, in one
    batched pass; guided backprop and guided Grad-CAM of the first ``guided``
    images. ``labels`` (the true classes) and ``index`` (the images' indices in
    their dataset) are kept for the report."""
    caller = "grad_cam_analysis"
    _check_model(model, caller)
    _check_images(images, caller)
    check_layers(model, [layer], caller)
    n = len(images)
    for name, value, low in (("top", top, 1), ("guided", guided, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{caller}: {name} must be an int >= {low} (got {value!r})")
    targets = _targets(target, n, caller)
    if targets is not None and targets.shape[1] != 1:
        raise ValueError(f"{caller}: target must be None, an int or a LongTensor[{n}] (got {_describe(target)})")
    for name, value in (("labels", labels), ("index", index)):
        if value is not None and (not isinstance(value, Tensor) or value.shape != (n,) or value.is_floating_point()):
            raise ValueError(f"{caller}: {name} must be None or an integer Tensor[{n}] (got {_describe(value)})")
    if n == 0:
        raise ValueError(f"{caller}: images is empty; give at least one image")
    device = model_device(model)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            logits = torch.cat([model(images[s:s + batch_size].to(device)) for s in range(0, n, batch_size)])
    finally:
        model.train(was_training)
    if logits.dim() != 2 or logits.shape[0] != n:
        raise ValueError(f"{caller}: the model must return logits Tensor[N, classes] (got {_describe(logits)})")
    probs = logits.float().softmax(1).cpu()
    k = min(top, probs.shape[1])
    top_probs, top_classes = probs.topk(k, 1)
    if targets is None:
        targets = top_classes[:, :1]
    else:
        _check_range(targets, probs.shape[1], caller)
    # the target's map and the top classes' maps in one pass of K + 1 classes per image
    maps, _, _ = _grad_cam(model, images, layer, torch.cat([targets.cpu(), top_classes], 1), batch_size,
                           progress, caller)
    maps = maps.float().cpu()
    m = min(guided, n)
    if m:
        from ..report import display_signed

        gb, _ = _guided(model, images[:m], targets[:m, 0], backend, caller)
        gb = gb.float().cpu()
        ggc = gb * upsample(maps[:m, 0], images.shape[-2:])[:, None]
        gb_show, ggc_show = display_signed(gb), display_signed(ggc)
    else:
        gb_show = ggc_show = torch.zeros(0, 3, *images.shape[-2:], dtype=torch.uint8)
    t = targets[:, 0].cpu()
    return GradCam(layer=layer, image_size=list(images.shape[-2:]),
                   index=torch.arange(n) if index is None else index.long().cpu(),
                   labels=torch.full((n,), -1, dtype=torch.long) if labels is None else labels.long().cpu(),
                   target=t, maps=maps[:, 0], target_prob=probs.gather(1, t[:, None])[:, 0],
                   predicted=top_classes[:, 0], predicted_prob=top_probs[:, 0], top_classes=top_classes,
                   top_probs=top_probs, top_maps=maps[:, 1:], guided_backprop=gb_show, guided=ggc_show)


def peaks(maps: Tensor, size: Sequence[int]) -> tuple[Tensor, Tensor]:
    """Where each of ``maps[N, h, w]`` upsampled to ``size = (H, W)`` peaks:
    ``(y[N], x[N])`` in pixels, the centre of the strongest unit (first on
    ties), ``floor((i + 0.5) * H / h)``. Bilinear upsampling
    (``align_corners=False``) peaks there; for a unit on the map's border its
    value extends flat to the image's edge, and the centre stands for it."""
    h, w = maps.shape[-2:]
    height, width = (int(v) for v in size)
    peak = maps.flatten(1).argmax(1)
    i, j = peak // w, peak % w
    return ((i * 2 + 1) * height) // (2 * h), ((j * 2 + 1) * width) // (2 * w)


def pointing_hits(maps: Tensor, boxes: Tensor, size: Sequence[int]) -> tuple[Tensor, Tensor, Tensor]:
    """The pointing game for ``maps[N, h, w]`` upsampled to ``size = (H, W)``:
    ``(hit[N], chance[N], mass[N])``. ``hit``: the map's maximum (``peaks``)
    lies in the object's box (``boxes[N, 4]``: x0, y0, x1, y1 pixels,
    end-exclusive); a map that is 0 everywhere points nowhere and misses.
    ``chance``: the box's share of the image, the hit rate of a uniformly random
    point. ``mass``: the upsampled map's share inside the box (NaN for a zero map)."""
    from .pointing import chance, hits

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


# ------------------------------------------------------------------ render

MAX_TABLE_ROWS = 64


def _overlay(ax, image, cam, size, title):
    """``image`` (uint8 [3, H, W] or None) under the map upsampled to ``size`` (jet, alpha 0.5)."""
    up = upsample(cam[None], size)[0]
    peak = float(up.max())
    if image is not None:
        ax.imshow(image.permute(1, 2, 0).numpy())
        ax.imshow((up / peak if peak > 0 else up).numpy(), cmap="jet", alpha=0.5, vmin=0, vmax=1)
    else:
        ax.imshow(up.numpy(), cmap="jet")
    ax.set_title(title, fontsize=7)
    ax.set_xticks([])
    ax.set_yticks([])
    return up


def render(result: "GradCam | dict", assets: Path, *, images: Tensor | None = None, boxes: Tensor | None = None,
           classes: Sequence[str] | None = None) -> dict:
    """Grad-CAM pages as PNGs in ``assets``: the maps overlaid on the images
    (``images``: uint8 ``[N, 3, H, W]`` for display; with ``boxes``, the
    object's box in yellow and the map's maximum as a cross), guided backprop
    and guided Grad-CAM rows, the top classes' maps of a few images; a table
    per image; with ``boxes``, the pointing-game claims."""
    plt, result, assets = begin(result, GradCam, assets)
    names = [str(c) for c in classes] if classes is not None else None

    def name(label: int) -> str:
        if label < 0:
            return "?"
        return names[label] if names is not None and label < len(names) else str(label)

    size = tuple(int(v) for v in result.image_size)
    n = len(result.target)
    figures = []
    hits = chance = mass = None
    if boxes is not None and n:
        hits, chance, mass = pointing_hits(result.maps, boxes[:n], size)
        py, px = peaks(result.maps, size)
    shown = min(n, 32)
    if shown:
        cols = min(8, shown)
        rows = -(-shown // cols)
        fig, axes = plt.subplots(rows, cols, figsize=(1.7 * cols, 1.9 * rows), squeeze=False)
        for ax in axes.flat[shown:]:
            ax.axis("off")
        for k in range(shown):
            ax = axes.flat[k]
            up = _overlay(ax, images[k] if images is not None else None, result.maps[k], size,
                          f"{name(int(result.target[k]))} p={float(result.target_prob[k]):.2f}")
            if boxes is not None:
                x0, y0, x1, y1 = (float(v) for v in boxes[k])
                ax.add_patch(plt.Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, edgecolor="yellow",
                                           linewidth=1))
                if float(result.maps[k].max()) > 0:
                    ax.plot(int(px[k]), int(py[k]), marker="x" if hits[k] else "o", color="white",
                            markerfacecolor="none", markersize=6, mew=1.5)
        fig.tight_layout()
        fig.savefig(assets / "gradcam_overlays.png", dpi=80)
        plt.close(fig)
        figures.append({"file": "gradcam_overlays.png",
                        "caption": f"Grad-CAM at {result.layer} for the class named above each image, upsampled "
                                   f"bilinearly and overlaid (red: strong, each map scaled by its own maximum)"
                                   + ("; yellow: the object's box; the map's maximum is marked by a cross inside "
                                      "the box, by a circle outside it." if boxes is not None else ".")})
    m = len(result.guided)
    if m:
        cols = 4 if images is not None else 3
        fig, axes = plt.subplots(m, cols, figsize=(2.0 * cols, 2.0 * m), squeeze=False)
        for k in range(m):
            row = list(axes[k])
            if images is not None:
                ax = row.pop(0)
                ax.imshow(images[k].permute(1, 2, 0).numpy())
                ax.set_title(f"true: {name(int(result.labels[k]))}", fontsize=7)
            _overlay(row[0], images[k] if images is not None else None, result.maps[k], size,
                     f"Grad-CAM: {name(int(result.target[k]))}")
            row[1].imshow(result.guided_backprop[k].permute(1, 2, 0).numpy())
            row[1].set_title("guided backprop", fontsize=7)
            row[2].imshow(result.guided[k].permute(1, 2, 0).numpy())
            row[2].set_title("guided Grad-CAM", fontsize=7)
            for ax in axes[k]:
                ax.set_xticks([])
                ax.set_yticks([])
        fig.tight_layout()
        fig.savefig(assets / "gradcam_guided.png", dpi=80)
        plt.close(fig)
        figures.append({"file": "gradcam_guided.png",
                        "caption": "Guided backpropagation of the class's logit and guided Grad-CAM (it times the "
                                   "upsampled Grad-CAM map): grey is 0, each image scaled by its own largest "
                                   "magnitude (Selvaraju et al. Fig. 1)."})
    few, k_top = min(n, 3), result.top_classes.shape[1]
    if few and k_top > 1:
        fig, axes = plt.subplots(few, k_top, figsize=(2.0 * k_top, 2.1 * few), squeeze=False)
        for r in range(few):
            for c in range(k_top):
                _overlay(axes[r, c], images[r] if images is not None else None, result.top_maps[r, c], size,
                         f"{name(int(result.top_classes[r, c]))} p={float(result.top_probs[r, c]):.2f}")
        fig.tight_layout()
        fig.savefig(assets / "gradcam_classes.png", dpi=80)
        plt.close(fig)
        figures.append({"file": "gradcam_classes.png",
                        "caption": f"One image per row, the maps of its {k_top} most probable classes: Grad-CAM is "
                                   f"class-discriminative, each class's map shows that class's evidence."})
    header = ["image", "true class", "explained class", "p(explained)", "predicted", "p(predicted)"]
    if hits is not None:
        header += ["maximum in box", "map share in box", "box share of image"]
    tables = []
    if hits is not None:
        by_class = []
        for c in result.target.unique().tolist():
            sel = result.target == c
            valid = sel & ~mass.isnan()
            by_class.append([name(int(c)), int(sel.sum()), round(float(hits[sel].double().mean()), 3),
                             round(float(chance[sel].mean()), 3),
                             round(float(mass[valid].mean()), 3) if valid.any() else "-",
                             round(float(result.target_prob[sel].mean()), 3)])
        tables.append({"caption": "per explained class: the pointing game",
                       "header": ["class", "images", "maximum in box", "box share of image (chance)",
                                  "map share in box", "mean p(class)"],
                       "rows": by_class})
    rows = []
    for k in range(min(n, MAX_TABLE_ROWS)):
        row = [int(result.index[k]), name(int(result.labels[k])), name(int(result.target[k])),
               round(float(result.target_prob[k]), 3), name(int(result.predicted[k])),
               round(float(result.predicted_prob[k]), 3)]
        if hits is not None:
            row += ["yes" if bool(hits[k]) else "no", "-" if mass[k].isnan() else round(float(mass[k]), 3),
                    round(float(chance[k]), 3)]
        rows.append(row)
    claims = []
    if hits is not None:
        rate, base = float(hits.double().mean()), float(chance.mean())
        zero = int((result.maps.flatten(1).amax(1) <= 0).sum())
        claims.append({"claim": "Grad-CAM localises the object: the map's maximum falls inside the object's box "
                                "more often than a random point does (the pointing game)",
                       "holds": rate > base,
                       "detail": f"maximum inside the box in {rate:.0%} of {n} images; a uniformly random point "
                                 f"lands in the box {base:.0%} of the time (the boxes' mean share of the image)"
                                 + (f"; {zero} maps are 0 everywhere and count as misses" if zero else "")})
        valid = ~mass.isnan()
        if valid.any():
            share, area = float(mass[valid].mean()), float(chance[valid].mean())
            claims.append({"claim": "Grad-CAM's mass concentrates on the object: the map's share inside the box "
                                    "exceeds the box's share of the image",
                           "holds": share > area,
                           "detail": f"mean map share inside the box {share:.3f} against a mean box area share "
                                     f"{area:.3f} ({int(valid.sum())} non-zero maps)"})
    return {"title": "Grad-CAM and guided Grad-CAM (Selvaraju et al.)",
            "intro": f"Grad-CAM weights each map of {result.layer} by the spatial mean of the gradient of a class's "
                     f"logit with respect to it and keeps the positive part of the weighted sum: where in the "
                     f"image the evidence for that class lies, at the layer's resolution. Guided Grad-CAM "
                     f"multiplies it with guided backpropagation for pixel detail.",
            "figures": figures,
            "tables": tables + [{"caption": "per image" + (f" (the first {MAX_TABLE_ROWS} of {n})"
                                                          if n > MAX_TABLE_ROWS else ""),
                                 "header": header, "rows": rows}],
            "claims": claims}


# ---------------------------------------------------------- embedded data

def default_layer(model: nn.Module) -> str:
    """The last ``nn.Conv2d``, or the ``nn.ReLU`` right after it (its rectified maps)."""
    modules = list(model.named_modules())
    convs = [i for i, (_, m) in enumerate(modules) if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError("grad_cam: the model has no nn.Conv2d layer to explain")
    last = convs[-1]
    if last + 1 < len(modules) and isinstance(modules[last + 1][1], nn.ReLU):
        return modules[last + 1][0]
    return modules[last][0]


def analyze_embedded(loaded, *, quick: bool, progress: bool, seed: int = 0) -> tuple[GradCam, dict]:
    """Grad-CAM of the true class at the last convolutional layer (its ReLU) of
    ``loaded.model`` on the embedded validation images (16 with ``quick``, else
    all), the top 3 classes' maps, guided Grad-CAM of the first 8; ``seed`` is
    unused (nothing is drawn at random)."""
    from ..analyze import _embedded_val

    base = _embedded_val(loaded).base
    index = torch.arange(len(base.labels))[:16 if quick else None]
    images = loaded.preprocess(base.images[index])
    labels = base.labels[index]
    result = grad_cam_analysis(loaded.model, images, default_layer(loaded.model), labels, labels=labels,
                               index=index, top=3, guided=8, progress=progress)
    return result, {"images": base.images[index], "boxes": base.boxes[index], "classes": list(loaded.classes)}
