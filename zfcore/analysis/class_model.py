"""Class model visualisation (Simonyan, Vedaldi & Zisserman, "Deep inside
convolutional networks: visualising image classification models and saliency
maps", ICLR workshop 2014, section 2): for a class ``c``, the L2-regularised
image that maximises the class score,

    I_c = argmax_I  S_c(I) - l2 * ||I||^2,

with ``S_c`` the unnormalised score (the logit, before the softmax: the paper
notes that maximising the softmax probability can be done by pushing the other
classes down) and ``||I||^2`` the sum of squares of the image in the model's
input space (0 is the mean image: the paper's mean-subtracted input).

Found by gradient ascent, ``I <- I + lr * grad(S_c(I) - l2 ||I||^2)``, all
classes in one batch (image ``k`` maximises class ``classes[k]``; the
objectives are independent, so an image does not depend on the others in its
batch). As options, the regularisers of Yosinski et al. ("Understanding neural
networks through deep visualization", 2015): ``jitter`` (the objective is
evaluated on the image rolled by a random shift of at most ``jitter`` pixels
per step, one shift for the batch, ``_priors.jitter``) and a Gaussian blur of
``blur_sigma`` pixels applied to the image every ``blur_every`` steps.

Where the paper is silent or we chose otherwise:

* The start is Gaussian noise of standard deviation ``init_std`` drawn from
  ``seed`` (the jitter's shifts from a second stream of it). The paper starts
  from the zero image, but a trained ReLU network whose first units are all
  off at a flat input (the demo model's conv1 biases are all negative) has
  zero gradient there, and the ascent would never leave it; for the same
  reason a start too faint, or an ``l2`` too strong, can let the penalty pull
  an image back into that flat region, where it stays (its score is then
  that of the mean image).
* Plain gradient ascent with a constant step ``lr`` (no momentum): with
  ``l2 > 0`` on a linear score ``S_c(I) = w_c . I + b_c`` it converges to the
  maximiser ``w_c / (2 l2)`` whenever ``0 < lr * l2 < 1``.
* ``lr``, ``l2`` and ``init_std`` are in the units of the model's input; the
  defaults suit inputs of unit scale (the demo model's).
* The reported scores are those of the final image, unrolled and unblurred.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from tqdm import tqdm

from ._args import check_logits, check_positive_float, check_positive_int, check_seed, eval_mode, model_device
from ._priors import gaussian_blur, gradient_steps, input_scale
from .registry import Analysis
from .result import Result

__all__ = ["ANALYSIS", "ClassModels", "class_model_objective", "class_models", "run"]


@dataclass
class ClassModels(Result):
    """``K`` class model images ``images[K, C, H, W]`` (model input space) for
    ``classes[K]``; ``scores[K]`` each image's target class score and
    ``all_scores[K, classes]`` every class's score (logits) of each final
    image; ``curve[steps]`` the mean objective before each step; the settings."""

    classes: Tensor
    images: Tensor
    scores: Tensor
    all_scores: Tensor
    curve: Tensor
    steps: int
    lr: float
    l2: float
    jitter: int
    blur_sigma: float
    blur_every: int
    init_std: float
    seed: int

    def target_wins(self) -> Tensor:
        """``BoolTensor[K]``: the target class has the highest score of its image."""
        return self.all_scores.argmax(1) == self.classes


def class_model_objective(model: nn.Module, images: Tensor, classes: Tensor, l2: float) -> tuple[Tensor, Tensor]:
    """``S_{classes[k]}(images[k]) - l2 * ||images[k]||^2`` per image, and all
    the scores: ``(objective[K], logits[K, classes])``, differentiable w.r.t.
    ``images``."""
    logits = model(images)
    target = logits.gather(1, classes.to(logits.device)[:, None])[:, 0]
    return target - l2 * images.flatten(1).square().sum(1), logits


def _check_classes(classes, n_classes: int) -> Tensor:
    if isinstance(classes, Tensor):
        if classes.dim() != 1 or classes.is_floating_point() or classes.dtype == torch.bool:
            raise ValueError(f"class_models: classes must be a LongTensor[K] or a list of ints (got "
                             f"{classes.dtype} {list(classes.shape)})")
        values = classes.tolist()
    elif isinstance(classes, Sequence) and not isinstance(classes, str):
        values = list(classes)
    else:
        raise ValueError(f"class_models: classes must be a LongTensor[K] or a list of ints (got "
                         f"{type(classes).__name__})")
    if not values:
        raise ValueError("class_models: classes is empty; name at least one class")
    for c in values:
        if isinstance(c, bool) or not isinstance(c, int) or not 0 <= c < n_classes:
            raise ValueError(f"class_models: classes must be ints in [0, {n_classes}) for this model's {n_classes} "
                             f"classes (got {c!r})")
    return torch.tensor(values, dtype=torch.long)


def class_models(model: nn.Module, classes: Sequence[int] | Tensor, input_shape: Sequence[int], *, steps: int = 200,
                 lr: float = 2.0, l2: float = 0.02, jitter: int = 0, blur_sigma: float = 0.0, blur_every: int = 4,
                 init_std: float = 1.0, seed: int = 0, progress: bool = True) -> ClassModels:
    """One class model image per entry of ``classes``, found in one batched
    gradient ascent (module docstring).

    Args:
        model: a CNN taking ``Tensor[N, *input_shape]`` and returning logits
            ``[N, classes]``; in eval mode while it works (restored after).
        classes: class indices ``[K]`` (repeats allowed: other seeds' noise).
        input_shape: ``(C, H, W)`` of the model's input.
        steps, lr: gradient ascent steps and step size.
        l2: the weight of ``||I||^2``.
        jitter: largest random shift (pixels) per step; 0 for none.
        blur_sigma, blur_every: Gaussian blur of the image every
            ``blur_every`` steps; ``blur_sigma == 0`` for none.
        init_std: standard deviation of the starting noise.
        seed: the starting noise and the jitter.

    Returns:
        ``ClassModels``.

    Example:
        >>> result = class_models(loaded.model, range(10), loaded.input_shape, jitter=4)
        >>> result.target_wins().all()
    """
    if (not isinstance(input_shape, Sequence) or len(input_shape) != 3
            or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in input_shape)):
        raise ValueError(f"class_models: input_shape must be (C, H, W), three positive ints (got {input_shape!r})")
    caller = "class_models"
    steps = check_positive_int(steps, "steps", caller)
    lr = check_positive_float(lr, "lr", caller)
    l2 = check_positive_float(l2, "l2", caller, allow_zero=True)
    jitter = check_positive_int(jitter, "jitter", caller, minimum=0)
    blur_sigma = check_positive_float(blur_sigma, "blur_sigma", caller, allow_zero=True)
    blur_every = check_positive_int(blur_every, "blur_every", caller)
    init_std = check_positive_float(init_std, "init_std", caller, allow_zero=True)
    check_seed(seed, caller)
    device = model_device(model)
    with eval_mode(model), tqdm(total=steps, desc="class models", unit="step", disable=not progress) as bar:
        with torch.no_grad():
            parameter = next((p for p in model.parameters() if p.is_floating_point()), None)
            dtype = parameter.dtype if parameter is not None else torch.get_default_dtype()
            try:
                probe = model(torch.zeros(1, *input_shape, device=device, dtype=dtype))
            except RuntimeError as error:
                raise ValueError(f"{caller}: the model does not take input_shape {list(input_shape)} "
                                 f"({str(error).splitlines()[0]})") from None
        targets = _check_classes(classes, check_logits(probe, 1, caller).shape[1]).to(device)
        # two streams, so that the shifts do not depend on how many images the noise took
        start = init_std * torch.randn(len(targets), *input_shape, generator=torch.Generator().manual_seed(2 * seed))
        generator = torch.Generator().manual_seed(2 * seed + 1)

        def objective(images: Tensor) -> Tensor:
            return class_model_objective(model, images, targets, l2)[0]

        def ascend(images: Tensor, grad: Tensor, step: int) -> Tensor:
            images = images + lr * grad
            if blur_sigma > 0 and (step + 1) % blur_every == 0:
                images = gaussian_blur(images, blur_sigma)
            return images

        images, curve = gradient_steps(start.to(device=device, dtype=dtype), objective, ascend, steps=steps,
                                       caller=caller, bar=bar, max_shift=jitter, generator=generator)
        with torch.no_grad():
            logits = model(images)
    scores = logits.gather(1, targets[:, None])[:, 0]
    return ClassModels(targets.cpu(), images.cpu(), scores.cpu(), logits.cpu(), torch.tensor(curve), steps, lr, l2,
                       jitter, blur_sigma, blur_every, init_std, seed)


def run(subject, dataset, *, quick: bool, progress: bool, seed: int) -> tuple[ClassModels, dict]:
    """A class model for every class of the model. The settings are in units
    of ``B``, the root mean square of (the first 200 of) ``dataset``'s images in
    the model's input space (the step scales with ``B^2`` and ``l2`` with
    ``1 / B^2``, so any input scale sees the same ascent): ``lr = 3 B^2``, from
    noise of ``2 B``; quick, 80 plain steps with ``l2 = 0.015 / B^2``; full, 300
    steps with ``l2 = 0.005 / B^2``, jitter 2 px and a blur of 0.5 px every 8
    steps (on the demo model, 7 to 9 of the 10 targets win either way,
    depending on the seed). Extra for the page: the class names and the images
    with the mean image added (``subject.deprocess``)."""
    scale = input_scale(subject.preprocess(dataset.images[:200]), None, "class_model")
    if quick:
        settings = dict(steps=80, l2=0.015 / scale ** 2)
    else:
        settings = dict(steps=300, l2=0.005 / scale ** 2, jitter=2, blur_sigma=0.5, blur_every=8)
    result = class_models(subject.model, list(range(len(subject.classes))), subject.input_shape, lr=3 * scale ** 2,
                          init_std=2 * scale, seed=seed, progress=progress, **settings)
    return result, {"classes": list(subject.classes), "with_mean": subject.deprocess(result.images)}


ANALYSIS = Analysis(
    name="class_model", group="toolbox", order=60, demo=True, result=ClassModels, run=run,
    description="inputs maximising each class score (Simonyan et al.)",
    claims=("each class model image scores highest for its own class",))
