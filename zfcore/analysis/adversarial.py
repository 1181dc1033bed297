"""Adversarial examples: FGSM (Goodfellow, Shlens & Szegedy, "Explaining and
Harnessing Adversarial Examples", ICLR 2015) and PGD (Madry et al., "Towards
Deep Learning Models Resistant to Adversarial Attacks", ICLR 2018).

FGSM: ``x' = x + epsilon * sign(grad_x L(x, y))``, ``L`` the cross-entropy of
the model's logits with the true label ``y``, then clamped to ``clamp = (low,
high)`` when given (the valid input range).

PGD: from ``x`` (or a uniformly random point of the epsilon ball around it,
``random_start``), ``steps`` times: a step of ``step_size`` along the
steepest-ascent direction of the loss for the ball's norm (``sign(g)`` for
L-infinity, ``g / ||g||_2`` for L2), then the projection onto the ball
(coordinate clipping for L-infinity, radial scaling for L2) and onto the
valid range. Untargeted PGD ascends the loss of the true label; targeted PGD
descends the loss of ``target``.

``attack`` runs them over a list of epsilons and records, per epsilon and
image, the prediction, the true class's probability and the perturbation's
L-infinity and L2 norms (after clamping), and keeps the perturbations of a
few images for display; its page plots accuracy against epsilon.

Where the papers are silent: the loss is the cross-entropy summed over the
batch (each image's gradient is its own loss's); epsilon may differ per image
(a ``Tensor[N]``); ``clamp`` bounds may be numbers or tensors broadcastable to
the images (a mean-subtracted input's valid range differs per pixel); PGD's
default step is ``2.5 * epsilon / steps`` (Madry et al.'s choice, which lets
the iterate cross the ball); it returns the last iterate (not the best one);
the L2 random start is uniform in the ball (a Gaussian direction, the radius
``epsilon * U ** (1 / d)``); a zero gradient makes no step; the projection onto
the ball comes before the clamp, so the iterate stays in the ball whenever
the clean images lie in the clamp range. The norms are in model-input units;
the page converts them to pixel levels with ``pixel_scale`` when given.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from ._args import (check_choice, check_class_range, check_images, check_labels, check_logits, check_model,
                    check_positive_float, check_positive_int, describe, eval_mode, model_device)
from .registry import Analysis
from .result import Result

__all__ = ["ANALYSIS", "Adversarial", "attack", "fgsm", "pgd", "run"]

NORMS = ("inf", "2")
METHODS = ("fgsm", "pgd")


# ------------------------------------------------------------------ checks

def _epsilon(epsilon, n: int, caller: str) -> Tensor:
    """``epsilon`` as a float64 ``Tensor[N]`` (checked finite and >= 0)."""
    if isinstance(epsilon, bool) or not isinstance(epsilon, int | float | Tensor):
        raise TypeError(f"{caller}: epsilon must be a number >= 0 or a Tensor[{n}] of them (got "
                        f"{type(epsilon).__name__})")
    eps = torch.as_tensor(epsilon, dtype=torch.float64).detach().cpu() if not isinstance(epsilon, Tensor) \
        else epsilon.detach().double().cpu()
    if eps.dim() == 0:
        eps = eps.expand(n)
    if eps.shape != (n,) or not torch.isfinite(eps).all() or (eps < 0).any():
        raise ValueError(f"{caller}: epsilon must be a finite number >= 0 or a Tensor[{n}] of them "
                         f"(got {describe(epsilon)})")
    return eps


def _clamp(clamp, images: Tensor, caller: str) -> tuple[Tensor, Tensor] | None:
    """``clamp`` as ``(low, high)`` tensors broadcastable to ``images`` (on its device and dtype)."""
    if clamp is None:
        return None
    expected = (f"{caller}: clamp must be None or a pair (low, high) of numbers or Tensors broadcastable to "
                f"images {list(images.shape)}, with low <= high")
    if not isinstance(clamp, tuple | list) or len(clamp) != 2:
        raise ValueError(f"{expected} (got {type(clamp).__name__})")
    bounds = []
    for value in clamp:
        if isinstance(value, bool) or not isinstance(value, int | float | Tensor):
            raise ValueError(f"{expected} (got a {type(value).__name__})")
        t = torch.as_tensor(value, dtype=images.dtype, device=images.device) if not isinstance(value, Tensor) \
            else value.detach().to(images.device, images.dtype)
        try:
            torch.broadcast_shapes(t.shape, images.shape)
        except RuntimeError:
            raise ValueError(f"{expected} (got a bound of shape {list(t.shape)})") from None
        if torch.broadcast_shapes(t.shape, images.shape) != images.shape:
            raise ValueError(f"{expected} (got a bound of shape {list(t.shape)})")
        if t.isnan().any():
            raise ValueError(f"{expected} (got NaN in a bound)")
        bounds.append(t)
    low, high = bounds
    if (low > high).any():
        raise ValueError(f"{expected} (got low > high somewhere)")
    return low, high


def _apply_clamp(x: Tensor, bounds) -> Tensor:
    return x if bounds is None else torch.maximum(torch.minimum(x, bounds[1]), bounds[0])


def _per_image(t: Tensor, x: Tensor) -> Tensor:
    """``t[N]`` shaped to broadcast against ``x[N, C, H, W]``, on its device and dtype."""
    return t.to(x.device, x.dtype).view(-1, *([1] * (x.dim() - 1)))


# ------------------------------------------------------------------ gradients

def _loss_grad(model: nn.Module, x: Tensor, labels: Tensor, caller: str) -> tuple[Tensor, Tensor]:
    """``(grad of the summed cross-entropy w.r.t. x, logits)``; the graph never reaches
    the parameters' ``.grad`` (``autograd.grad`` with respect to ``x`` only)."""
    with torch.enable_grad():
        x = x.detach().requires_grad_()
        logits = model(x)
        check_logits(logits, len(x), caller)
        check_class_range(labels, logits.shape[1], caller)
        loss = F.cross_entropy(logits, labels.to(logits.device), reduction="sum")
        grad, = torch.autograd.grad(loss, x, allow_unused=True)
    if grad is None:
        grad = torch.zeros_like(x)
    if not torch.isfinite(grad).all():
        raise ValueError(f"{caller}: the loss's gradient is not finite (NaN or inf in the model's output or "
                         f"its gradient)")
    return grad, logits.detach()


# ------------------------------------------------------------------ FGSM

def fgsm(model: nn.Module, images: Tensor, labels: Tensor, epsilon, clamp=None) -> Tensor:
    """The fast gradient sign method (Goodfellow et al., eq. 3).

    Args:
        model: a plain CNN returning logits ``Tensor[N, classes]``.
        images: ``Tensor[N, C, H, W]`` in the model's input space.
        labels: ``LongTensor[N]``, the true classes.
        epsilon: a number >= 0 (model-input units) or ``Tensor[N]``, one per image.
        clamp: ``None`` or ``(low, high)``: numbers or tensors broadcastable to
            ``images``, the valid input range.

    Returns:
        ``Tensor[N, C, H, W]``: ``images + epsilon * sign(grad_x CE(model(x), labels))``, clamped.

    Example:
        >>> adversarial = fgsm(model, images, labels, 8 / 255, clamp=(0.0, 1.0))
    """
    caller = "fgsm"
    check_model(model, caller)
    check_images(images, caller)
    labels = check_labels(labels, len(images), caller).long()
    eps = _epsilon(epsilon, len(images), caller)
    x = images.detach().to(model_device(model))
    bounds = _clamp(clamp, x, caller)
    with eval_mode(model):
        grad, _ = _loss_grad(model, x, labels, caller)
    return _apply_clamp(x + _per_image(eps, x) * grad.sign(), bounds)


# ------------------------------------------------------------------ PGD

def _project(delta: Tensor, eps: Tensor, norm: str) -> Tensor:
    """``delta`` projected onto each image's ball of radius ``eps``."""
    if norm == "inf":
        e = _per_image(eps, delta)
        return torch.maximum(torch.minimum(delta, e), -e)
    length = delta.flatten(1).norm(dim=1)
    factor = torch.where(length > eps.to(length), eps.to(length) / length.clamp_min(1e-300), 1.0)
    return delta * _per_image(factor, delta)


def _direction(grad: Tensor, norm: str) -> Tensor:
    """The steepest-ascent direction of unit norm for ``norm`` (0 where the gradient is 0)."""
    if norm == "inf":
        return grad.sign()
    length = grad.flatten(1).norm(dim=1)
    return grad / _per_image(length.clamp_min(torch.finfo(grad.dtype).tiny), grad)


def _random_start(shape, eps: Tensor, norm: str, generator: torch.Generator) -> Tensor:
    """A uniform point in each image's ball (float64, on the CPU: the same for every device)."""
    n, d = shape[0], math.prod(shape[1:])
    if norm == "inf":
        return (torch.rand(shape, generator=generator, dtype=torch.float64) * 2 - 1) * eps.view(-1, 1, 1, 1)
    direction = torch.randn(n, d, generator=generator, dtype=torch.float64)
    direction = direction / direction.norm(dim=1, keepdim=True).clamp_min(1e-300)
    radius = eps * torch.rand(n, generator=generator, dtype=torch.float64) ** (1 / d)
    return (direction * radius[:, None]).view(shape)


def pgd(model: nn.Module, images: Tensor, labels: Tensor, epsilon, *, step_size=None, steps: int = 10,
        norm: str = "inf", targeted: bool = False, target: Tensor | None = None, random_start: bool = True,
        clamp=None, seed: int = 0, progress: bool = False) -> Tensor:
    """Projected gradient descent (Madry et al., section 2.1).

    Args:
        model, images, labels, clamp: as ``fgsm``.
        epsilon: the ball's radius, a number >= 0 or ``Tensor[N]``.
        step_size: per step (a number or ``Tensor[N]``); default ``2.5 * epsilon / steps``.
        steps: iterations (an int >= 1).
        norm: ``"inf"`` (L-infinity ball, sign steps) or ``"2"`` (L2 ball,
            normalised-gradient steps).
        targeted: descend the loss of ``target`` (``LongTensor[N]``) instead of
            ascending the loss of ``labels``.
        random_start: start from a uniform point of the ball (drawn from
            ``seed`` by a local generator).
        progress: a tqdm bar over the steps.

    Returns:
        ``Tensor[N, C, H, W]``, the last iterate: within the ball of every image
        (when the images lie in ``clamp``'s range) and within ``clamp``.

    Example:
        >>> adversarial = pgd(model, images, labels, 8 / 255, steps=20, clamp=(0.0, 1.0))
    """
    caller = "pgd"
    check_model(model, caller)
    check_images(images, caller)
    n = len(images)
    labels = check_labels(labels, n, caller).long()
    eps = _epsilon(epsilon, n, caller)
    check_choice(norm, NORMS, "norm", caller)
    check_positive_int(steps, "steps", caller)
    alpha = 2.5 * eps / steps if step_size is None else _epsilon(step_size, n, caller)
    if not isinstance(targeted, bool) or not isinstance(random_start, bool):
        raise TypeError(f"{caller}: targeted and random_start must be bools (got {targeted!r}, {random_start!r})")
    if targeted:
        if target is None:
            raise ValueError(f"{caller}: targeted=True needs target, a LongTensor[{n}] of the classes to reach")
        goal = check_labels(target, n, caller, "target").long()
    elif target is not None:
        raise ValueError(f"{caller}: target is given but targeted=False; pass targeted=True for a targeted attack")
    else:
        goal = labels
    check_positive_int(seed, "seed", caller, minimum=0)  # any generator seed (attack draws them up to 2**62)
    x0 = images.detach().to(model_device(model))
    bounds = _clamp(clamp, x0, caller)
    sign = -1.0 if targeted else 1.0
    x = x0
    if random_start:
        generator = torch.Generator().manual_seed(seed)
        x = _apply_clamp(x0 + _random_start(x0.shape, eps, norm, generator).to(x0), bounds)
    with eval_mode(model):
        for _ in tqdm(range(steps), desc="pgd", unit="step", disable=not progress):
            grad, _ = _loss_grad(model, x, goal, caller)
            x = x + sign * _per_image(alpha, x) * _direction(grad, norm)
            x = _apply_clamp(x0 + _project(x - x0, eps, norm), bounds)
    return x.detach()


# ------------------------------------------------------------------ attack

@dataclass
class Adversarial(Result):
    """Attacks of ``N`` images at ``E`` epsilons by ``M`` methods (``methods``:
    ``"fgsm"``, ``"pgd"``).

    ``epsilons[E]`` (model-input units); PGD's ``norm``, ``steps`` and
    ``step_ratio`` (its step is ``step_ratio * epsilon / steps``); ``index[N]``
    (the images' indices in their dataset), ``labels[N]``; without attack
    ``clean_pred[N]`` and ``clean_prob[N]`` (the true class's probability);
    per method, epsilon and image ``pred[M, E, N]``, ``true_prob[M, E, N]``
    and the perturbation's norms ``linf[M, E, N]`` and ``l2[M, E, N]``;
    ``accuracy[M, E]`` and ``clean_accuracy``; the perturbations
    ``perturbation[M, E, K, C, H, W]`` (float16) of the images ``examples[K]``
    (positions in the batch)."""

    methods: list
    epsilons: Tensor
    norm: str
    steps: int
    step_ratio: float
    index: Tensor
    labels: Tensor
    clean_pred: Tensor
    clean_prob: Tensor
    pred: Tensor
    true_prob: Tensor
    linf: Tensor
    l2: Tensor
    accuracy: Tensor
    clean_accuracy: float
    examples: Tensor
    perturbation: Tensor


def _methods(method, caller: str) -> list[str]:
    chosen = [method] if isinstance(method, str) else list(method) if isinstance(method, Sequence) else None
    if not chosen or any(m not in METHODS for m in chosen) or len(set(chosen)) != len(chosen):
        raise ValueError(f"{caller}: method must be 'fgsm', 'pgd' or a sequence of them without repeats "
                         f"(got {method!r})")
    return chosen


def attack(model: nn.Module, images: Tensor, labels: Tensor, epsilons: Sequence[float], *, method="fgsm",
           norm: str = "inf", steps: int = 10, step_ratio: float = 2.5, random_start: bool = True, clamp=None,
           index: Tensor | None = None, keep: int = 4, batch_size: int = 128, seed: int = 0,
           progress: bool = True) -> Adversarial:
    """Untargeted attacks of ``images`` at each of ``epsilons`` (model-input
    units), by ``method`` (``"fgsm"``, ``"pgd"`` or both, e.g. ``("fgsm",
    "pgd")``): accuracy, predictions, the true class's probability and the
    perturbations' norms per epsilon; the perturbations of ``keep`` images
    (the first the model classifies correctly without attack).

    PGD runs ``steps`` steps of ``step_ratio * epsilon / steps`` in ``norm``'s
    ball (FGSM is always L-infinity), from a random start drawn from ``seed``;
    ``clamp`` as ``fgsm``'s (bounds with a batch dimension must hold one row
    per image); ``batch_size`` images per call.

    Example:
        >>> result = attack(model, images, labels, [0, 1 / 64, 4 / 64], method=("fgsm", "pgd"))
        >>> result.accuracy          # [2 methods, 3 epsilons]
    """
    caller = "attack"
    check_model(model, caller)
    check_images(images, caller)
    n = len(images)
    labels = check_labels(labels, n, caller).long().cpu()
    methods = _methods(method, caller)
    if isinstance(epsilons, Tensor):
        epsilons = epsilons.tolist() if epsilons.dim() == 1 else None
    if (not isinstance(epsilons, Sequence) or not len(epsilons)
            or any(isinstance(e, bool) or not isinstance(e, int | float) or not math.isfinite(e) or e < 0
                   for e in epsilons)):
        raise ValueError(f"{caller}: epsilons must be a non-empty sequence of finite numbers >= 0 "
                         f"(got {epsilons!r})")
    check_choice(norm, NORMS, "norm", caller)
    check_positive_int(steps, "steps", caller)
    check_positive_int(keep, "keep", caller, minimum=0)
    check_positive_int(batch_size, "batch_size", caller)
    check_positive_float(step_ratio, "step_ratio", caller)
    check_positive_int(seed, "seed", caller, minimum=0)
    if index is not None and (not isinstance(index, Tensor) or index.shape != (n,) or index.is_floating_point()):
        raise ValueError(f"{caller}: index must be None or an integer Tensor[{n}] (got {describe(index)})")
    device = model_device(model)
    x_all = images.detach().to(device)
    bounds = _clamp(clamp, x_all, caller)
    if bounds is not None:
        bounds = tuple(b.expand_as(x_all) for b in bounds)
    eps = torch.tensor([float(e) for e in epsilons], dtype=torch.float64)
    m, e_count = len(methods), len(eps)
    starts = list(range(0, n, batch_size))
    # one seed per (epsilon, batch) for PGD's random starts, drawn from ``seed``
    seeds = torch.randint(0, 2 ** 62, (e_count, len(starts)), generator=torch.Generator().manual_seed(seed))
    with eval_mode(model), torch.no_grad():
        logits = torch.cat([model(x_all[s:s + batch_size]) for s in starts])
    check_logits(logits, n, caller)
    check_class_range(labels, logits.shape[1], caller)
    probs = logits.float().softmax(1).cpu()
    clean_pred = probs.argmax(1)
    clean_prob = probs.gather(1, labels[:, None])[:, 0]
    right = clean_pred == labels
    examples = torch.cat([right.nonzero()[:, 0], (~right).nonzero()[:, 0]])[:keep]
    pred = torch.empty(m, e_count, n, dtype=torch.long)
    true_prob = torch.empty(m, e_count, n)
    linf, l2 = torch.empty(m, e_count, n), torch.empty(m, e_count, n)
    perturbation = torch.zeros(m, e_count, len(examples), *images.shape[1:], dtype=torch.float16)
    where = {int(i): k for k, i in enumerate(examples)}
    bar = tqdm(total=len(starts) * m * e_count, desc="attack", unit="attack", disable=not progress)
    try:
        with eval_mode(model):
            for b, s in enumerate(starts):
                x = x_all[s:s + batch_size]
                y = labels[s:s + batch_size]
                clip = None if bounds is None else (bounds[0][s:s + batch_size], bounds[1][s:s + batch_size])
                sign = None
                for a, name in enumerate(methods):
                    for e, epsilon in enumerate(eps.tolist()):
                        if epsilon == 0:  # both attacks leave the images as they are (clamped)
                            adv = _apply_clamp(x, clip)
                        elif name == "fgsm":  # its direction does not depend on epsilon: one gradient per batch
                            if sign is None:
                                sign = _loss_grad(model, x, y, caller)[0].sign()
                            adv = _apply_clamp(x + epsilon * sign, clip)
                        else:
                            adv = pgd(model, x, y, epsilon, step_size=step_ratio * epsilon / steps, steps=steps,
                                      norm=norm, random_start=random_start, clamp=clip, seed=int(seeds[e, b]))
                        if epsilon == 0 and torch.equal(adv, x):
                            p = probs[s:s + len(x)]
                        else:
                            with torch.no_grad():
                                p = model(adv).float().softmax(1).cpu()
                        delta = (adv - x).detach()
                        rows = slice(s, s + len(x))
                        pred[a, e, rows] = p.argmax(1)
                        true_prob[a, e, rows] = p.gather(1, y[:, None].cpu())[:, 0]
                        linf[a, e, rows] = delta.flatten(1).abs().amax(1).float().cpu()
                        l2[a, e, rows] = delta.flatten(1).double().norm(dim=1).float().cpu()
                        for i in range(s, s + len(x)):
                            if i in where:
                                perturbation[a, e, where[i]] = delta[i - s].cpu().to(torch.float16)
                        bar.update()
    finally:
        bar.close()
    accuracy = (pred == labels).double().mean(2).float()
    return Adversarial(methods=methods, epsilons=eps, norm=norm, steps=steps, step_ratio=float(step_ratio),
                       index=torch.arange(n) if index is None else index.long().cpu(), labels=labels.cpu(),
                       clean_pred=clean_pred, clean_prob=clean_prob, pred=pred, true_prob=true_prob, linf=linf,
                       l2=l2, accuracy=accuracy, clean_accuracy=float((clean_pred == labels.cpu()).double().mean()),
                       examples=examples, perturbation=perturbation)


def run(subject, dataset, *, quick: bool, progress: bool, seed: int = 0) -> tuple[Adversarial, dict]:
    """FGSM and L-infinity PGD on ``dataset`` (its first 64 images with
    ``quick``, else all) at epsilons of 0 to 8 pixel levels (0.5 to 16 in the
    full run). A pixel level is ``subject.scale`` in model-input units (the
    input is ``(pixels - mean image) * scale``); the adversarial images are
    clamped to what pixels 0 and 255 preprocess to, per pixel (the mean image
    differs per pixel). PGD: 3 steps with ``quick``, else 10. Extra for the
    page: the uint8 images of the examples kept, the class names and
    ``pixel_scale``."""
    index = torch.arange(len(dataset))[:64 if quick else None]
    images = subject.preprocess(dataset.images[index])
    shape = (1, *dataset.images.shape[1:])
    low = subject.preprocess(torch.zeros(shape, dtype=torch.uint8))
    high = subject.preprocess(torch.full(shape, 255, dtype=torch.uint8))
    levels = [0, 1, 2, 4, 8] if quick else [0, 0.5, 1, 2, 4, 8, 16]
    result = attack(subject.model, images, dataset.labels[index], [v * subject.scale for v in levels],
                    method=("fgsm", "pgd"), steps=3 if quick else 10, clamp=(low, high), index=index, keep=4,
                    seed=seed, progress=progress)
    return result, {"images": dataset.images[index[result.examples]], "classes": list(dataset.classes),
                    "pixel_scale": float(subject.scale)}


ANALYSIS = Analysis(
    name="adversarial", group="toolbox", order=40, demo=True, result=Adversarial, run=run,
    description="FGSM and PGD adversarial examples, accuracy against epsilon",
    claims=("accuracy falls as epsilon grows (each method)",
            "PGD is at least as strong as FGSM at each epsilon (Madry et al.)",
            "a perturbation of at most 8 of 255 levels per pixel fools the model on at least half the images it "
            "classified correctly (Goodfellow et al.)"))
