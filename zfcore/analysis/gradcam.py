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
The page's pointing-game claim (the map's maximum inside the object's box
more often than chance, ``zfcore.analysis.pointing.pointing_hits``) takes the
maximum at the centre of the strongest unit (``peaks``), and chance as the
box's share of the image.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from ..deconv import CaptureError, Deconvnet
from ._args import (check_choice, check_class_range, check_images, check_layers, check_logits, check_model,
                    check_positive_int, describe, eval_mode, in_sequence, last_maps, model_device)
from ._stream import call_site
from .registry import Analysis
from .result import Result, display_signed

__all__ = ["ANALYSIS", "GradCam", "default_layer", "grad_cam", "grad_cam_analysis", "guided_backprop",
           "guided_grad_cam", "peaks", "run", "upsample"]


# ------------------------------------------------------------------ checks

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
                     f"indices (got {describe(target)})")


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
                             f"layer's (got {describe(output)})")
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
    check_logits(logits, b * k, caller)
    if targets is None:
        targets = logits.detach().argmax(1)[:, None]
    else:
        check_class_range(targets, logits.shape[1], caller, "target")
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
    check_model(model, caller)
    check_images(images, caller)
    check_layers(model, [layer], caller)
    check_positive_int(batch_size, "batch_size", caller)
    targets = _targets(target, len(images), caller)
    module = dict(model.named_modules())[call_site(layer)[0]]
    device = model_device(model)
    maps, logits, chosen = [], [], []
    with eval_mode(model):
        for start in tqdm(range(0, len(images), batch_size), desc=caller, unit="batch",
                          disable=not progress or len(images) <= batch_size):
            x = images[start:start + batch_size].to(device)
            t = None if targets is None else targets[start:start + batch_size]
            m, z, c = _cam_batch(model, module, x, t, caller, layer)
            maps.append(m)
            logits.append(z)
            chosen.append(c)
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
    check_model(model, caller)
    check_images(images, caller)
    check_choice(backend, ("auto", "deconvnet", "autograd"), "backend", caller)
    targets = _targets(target, len(images), caller)
    if targets is not None and targets.shape[1] != 1:
        raise ValueError(f"{caller}: target must be None, an int or a LongTensor[{len(images)}] "
                         f"(got {describe(target)})")
    device = model_device(model)
    images = images.detach().to(device)
    with eval_mode(model):
        with torch.no_grad():
            logits = check_logits(model(images), len(images), caller)
        if targets is None:
            targets = logits.argmax(1)
        else:
            check_class_range(targets, logits.shape[1], caller, "target")
            targets = targets[:, 0].to(device)
        seed = F.one_hot(targets, logits.shape[1]).to(images.dtype)
        if backend != "autograd":
            try:
                return _guided_engine(model, images, seed), targets
            except CaptureError as error:
                if backend == "deconvnet":
                    raise ValueError(f"{caller}: the deconvnet engine cannot capture this model ({error}); "
                                     f"use backend='autograd'") from None
        return _guided_autograd(model, images, seed), targets


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
    check_model(model, "guided_grad_cam")
    check_layers(model, [layer], "guided_grad_cam")
    check_positive_int(batch_size, "batch_size", "guided_grad_cam")
    gb, targets = _guided(model, images, target, backend, "guided_grad_cam")
    maps, _, _ = _grad_cam(model, images, layer, targets, batch_size, False, "guided_grad_cam")
    return gb * upsample(maps[:, 0], images.shape[-2:]).to(gb)[:, None]


# ------------------------------------------------------------------ result

@dataclass
class GradCam(Result):
    """Grad-CAM of ``N`` images at ``layer`` (maps ``h x w``; images ``H x W``).

    ``index[N]``: the images' indices in their dataset; ``labels[N]`` (-1 where
    unknown); ``target[N]``: the class each ``maps[N, h, w]`` explains, with its
    softmax probability ``target_prob[N]``; ``predicted[N]`` and
    ``predicted_prob[N]``; ``top_classes[N, K]`` (most probable first), their
    probabilities ``top_probs`` and maps ``top_maps[N, K, h, w]``; for the first
    ``M`` images, guided backprop of the target class (``guided_backprop``) and
    guided Grad-CAM (``guided``), uint8 ``[M, 3, H, W]`` for display (grey is
    0, each scaled by its own largest magnitude, ``display_signed``)."""

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


def grad_cam_analysis(model: nn.Module, images: Tensor, layer: str, target=None, *, labels: Tensor | None = None,
                      index: Tensor | None = None, top: int = 3, guided: int = 8, backend: str = "auto",
                      batch_size: int = 64, progress: bool = True) -> GradCam:
    """Grad-CAM of ``images`` for ``target`` (as ``grad_cam``: None = the
    predicted class) and for each image's ``top`` most probable classes, in one
    batched pass; guided backprop and guided Grad-CAM of the first ``guided``
    images. ``labels`` (the true classes) and ``index`` (the images' indices in
    their dataset) are kept for the report."""
    caller = "grad_cam_analysis"
    check_model(model, caller)
    check_images(images, caller)
    check_layers(model, [layer], caller)
    n = len(images)
    check_positive_int(top, "top", caller)
    check_positive_int(guided, "guided", caller, minimum=0)
    targets = _targets(target, n, caller)
    if targets is not None and targets.shape[1] != 1:
        raise ValueError(f"{caller}: target must be None, an int or a LongTensor[{n}] (got {describe(target)})")
    for name, value in (("labels", labels), ("index", index)):
        if value is not None and (not isinstance(value, Tensor) or value.shape != (n,) or value.is_floating_point()):
            raise ValueError(f"{caller}: {name} must be None or an integer Tensor[{n}] (got {describe(value)})")
    device = model_device(model)
    with eval_mode(model), torch.no_grad():
        logits = torch.cat([model(images[s:s + batch_size].to(device)) for s in range(0, n, batch_size)])
    check_logits(logits, n, caller)
    probs = logits.float().softmax(1).cpu()
    k = min(top, probs.shape[1])
    top_probs, top_classes = probs.topk(k, 1)
    if targets is None:
        targets = top_classes[:, :1]
    else:
        check_class_range(targets, probs.shape[1], caller, "target")
    # the target's map and the top classes' maps in one pass of K + 1 classes per image
    maps, _, _ = _grad_cam(model, images, layer, torch.cat([targets.cpu(), top_classes], 1), batch_size,
                           progress, caller)
    maps = maps.float().cpu()
    m = min(guided, n)
    if m:
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


# ---------------------------------------------------------- embedded data

def default_layer(model: nn.Module, input_shape: Sequence[int] | None = None) -> str:
    """The layer Grad-CAM explains: the last ``nn.Conv2d``, or the ``nn.ReLU``
    right after it (after a BatchNorm too: its rectified maps), when it runs in
    a chain of ``nn.Sequential`` layers (the paper's models, a VGG's or an
    AlexNet's ``features``); else, for any other model (a ResNet, a ``.pt2``
    program) of ``input_shape = (C, H, W)``, the last rectified layer with maps
    on the model's main path (``_args.last_maps``: ``layer4`` of a ResNet), or
    the last layer with maps there. The main path matters: Grad-CAM runs the
    layers above the chosen one on copies of its maps, which a convolution
    inside a residual block would not feed alone."""
    modules = list(model.named_modules())
    convs = [i for i, (_, m) in enumerate(modules) if isinstance(m, nn.Conv2d)]
    chosen = None
    if convs:
        last = convs[-1]
        chosen = modules[last][0]
        for name, module in modules[last + 1:last + 3]:
            if isinstance(module, nn.ReLU):
                chosen = name
                break
            if not isinstance(module, nn.BatchNorm2d):
                break
    if chosen is not None and in_sequence(model, chosen):
        return chosen
    if input_shape is None:
        if chosen is None:
            raise ValueError("grad_cam: the model has no nn.Conv2d layer to explain; give input_shape to find "
                             "maps on its main path, or name a layer")
        raise ValueError(f"grad_cam: the model's last convolution {chosen!r} sits inside a block, not on a chain "
                         f"of nn.Sequential layers; give input_shape to find its main path, or name a layer")
    layer = last_maps(model, input_shape)
    if layer is None:
        raise ValueError("grad_cam: the model has no layer with maps (more than one position) on its main path "
                         "to explain; name a layer")
    return layer


def run(subject, dataset, *, quick: bool, progress: bool, seed: int = 0) -> tuple[GradCam, dict]:
    """Grad-CAM of the true class at ``default_layer`` (the last convolution's
    ReLU; a ResNet's ``layer4``) of ``subject.model`` on ``dataset`` (its first
    16 images with ``quick``, else all), the top 3 classes' maps, guided
    Grad-CAM of the first 8; ``seed`` is unused (nothing is drawn at random). Extra for the page: the uint8 images,
    their object boxes (None where the dataset has none: the page then skips
    the pointing game) and the class names."""
    index = torch.arange(len(dataset))[:16 if quick else None]
    images = subject.preprocess(dataset.images[index])
    labels = dataset.labels[index]
    layer = default_layer(subject.model, subject.input_shape)
    result = grad_cam_analysis(subject.model, images, layer, labels, labels=labels, index=index, top=3, guided=8,
                               progress=progress)
    boxes = dataset.boxes[index] if dataset.boxes is not None else None
    return result, {"images": dataset.images[index], "boxes": boxes, "classes": list(dataset.classes)}


def _check(subject, dataset) -> str | None:
    try:
        default_layer(subject.model, subject.input_shape)
    except ValueError:
        return "gradcam needs a model with convolutional maps on its main path; this one has none"
    return None


ANALYSIS = Analysis(
    name="gradcam", group="toolbox", order=30, demo=True, result=GradCam, run=run, check=_check,
    description="Grad-CAM and guided Grad-CAM (Selvaraju et al.)",
    claims=("Grad-CAM's maximum falls inside the object's box more often than a random point (the pointing game; "
            "with boxes)",
            "Grad-CAM's mass inside the object's box exceeds the box's share of the image (with boxes)"))
