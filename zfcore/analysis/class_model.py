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
from pathlib import Path

import torch
from torch import Tensor, nn
from tqdm import tqdm

from ._priors import check_count, check_number, gaussian_blur, jitter as roll_randomly
from ._render import begin
from ._stream import model_device

__all__ = ["ClassModels", "class_models", "class_model_objective", "render", "analyze_embedded"]


@dataclass
class ClassModels:
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

    def as_dict(self) -> dict:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, d: dict) -> "ClassModels":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__})

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
    steps = check_count(steps, "steps", "class_models")
    lr = check_number(lr, "lr", "class_models", low=0.0, strict=True)
    l2 = check_number(l2, "l2", "class_models", low=0.0)
    jitter = check_count(jitter, "jitter", "class_models", low=0)
    blur_sigma = check_number(blur_sigma, "blur_sigma", "class_models", low=0.0)
    blur_every = check_count(blur_every, "blur_every", "class_models")
    init_std = check_number(init_std, "init_std", "class_models", low=0.0)
    check_count(seed, "seed", "class_models", low=0)
    device = model_device(model)
    was_training = model.training
    model.eval()
    bar = tqdm(total=steps, desc="class models", unit="step", disable=not progress)
    try:
        with torch.no_grad():
            parameter = next((p for p in model.parameters() if p.is_floating_point()), None)
            dtype = parameter.dtype if parameter is not None else torch.get_default_dtype()
            try:
                probe = model(torch.zeros(1, *input_shape, device=device, dtype=dtype))
            except RuntimeError as error:
                raise ValueError(f"class_models: the model does not take input_shape {list(input_shape)} "
                                 f"({str(error).splitlines()[0]})") from None
        if probe.dim() != 2:
            raise ValueError(f"class_models: the model must return logits [N, classes] (got {list(probe.shape)})")
        targets = _check_classes(classes, probe.shape[1]).to(device)
        # two streams, so that the shifts do not depend on how many images the noise took
        start = init_std * torch.randn(len(targets), *input_shape, generator=torch.Generator().manual_seed(2 * seed))
        generator = torch.Generator().manual_seed(2 * seed + 1)
        images = start.to(device=device, dtype=dtype).requires_grad_(True)
        curve = []
        for step in range(steps):
            shifted, _ = roll_randomly(images, jitter, generator)
            objective, _ = class_model_objective(model, shifted, targets, l2)
            total = objective.sum()
            grad, = torch.autograd.grad(total, [images])
            with torch.no_grad():
                images += lr * grad
                if blur_sigma > 0 and (step + 1) % blur_every == 0:
                    images.copy_(gaussian_blur(images, blur_sigma))
            if not bool(torch.isfinite(images).all()):
                raise ValueError(f"class_models: the ascent diverged at step {step} (non-finite image); lower lr")
            curve.append(float(total.detach()) / len(targets))
            bar.update(1)
        with torch.no_grad():
            images = images.detach()
            logits = model(images)
    finally:
        bar.close()
        model.train(was_training)
    scores = logits.gather(1, targets[:, None])[:, 0]
    return ClassModels(targets.cpu(), images.cpu(), scores.cpu(), logits.cpu(), torch.tensor(curve), steps, lr, l2,
                       jitter, blur_sigma, blur_every, init_std, seed)


def _display(x: Tensor) -> Tensor:
    """``[..., C, H, W]`` for display: 0 (the mean image) is grey, each image
    linearly scaled by its own largest magnitude (``display_signed``)."""
    from ..report import display_signed

    return display_signed(x)


def render(result: "ClassModels | dict", assets: Path, *, classes: Sequence[str] | None = None,
           with_mean: Tensor | None = None) -> dict:
    """The images (each linearly rescaled: grey is 0, i.e. the dataset mean;
    scaled by its own largest magnitude), and when given ``with_mean`` (uint8
    ``[K, 3, H, W]``: the images with the mean image added, e.g. by
    ``Loaded.deprocess``) those too; a table of target score against the best
    other class; the claim that each image's target class wins."""
    plt, result, assets = begin(result, ClassModels, assets)
    names = [str(c) for c in classes] if classes is not None else None

    def name(c: int) -> str:
        return names[c] if names is not None and 0 <= c < len(names) else str(c)

    k = len(result.classes)
    rows_shown = [("", _display(result.images))]
    if with_mean is not None:
        rows_shown.append(("+ mean image", with_mean))
    figures = []
    if k:
        cols = min(k, 10)
        grid_rows = -(-k // cols)
        fig, axes = plt.subplots(grid_rows * len(rows_shown), cols, squeeze=False,
                                 figsize=(1.5 * cols, 1.65 * grid_rows * len(rows_shown)))
        for r, (label, shown) in enumerate(rows_shown):
            for i in range(k):
                ax = axes[(i // cols) * len(rows_shown) + r, i % cols]
                ax.imshow(shown[i].permute(1, 2, 0).numpy())
                ax.set_title(name(int(result.classes[i])) if r == 0 else label, fontsize=8)
        for ax in axes.flat:
            ax.set_xticks([])
            ax.set_yticks([])
        fig.tight_layout()
        fig.savefig(assets / "class_models.png", dpi=80)
        plt.close(fig)
        figures.append({"file": "class_models.png",
                        "caption": f"For each class, the image maximising its score minus {result.l2:g} ||I||^2 "
                                   f"({result.steps} gradient ascent steps"
                                   + (f", jitter {result.jitter} px" if result.jitter else "")
                                   + (f", blur sigma {result.blur_sigma:g} every {result.blur_every} steps"
                                      if result.blur_sigma else "")
                                   + "). Grey is 0 (the dataset's mean image); each image is scaled by its own "
                                     "largest magnitude" + ("; below, with the mean image added." if with_mean
                                                            is not None else ".")})
        fig, ax = plt.subplots(figsize=(5, 3.2))
        ax.plot(result.curve.numpy())
        ax.set_xlabel("step")
        ax.set_ylabel("S_c(I) - l2 ||I||^2 (mean)")
        fig.tight_layout()
        fig.savefig(assets / "class_models_curve.png", dpi=80)
        plt.close(fig)
        figures.append({"file": "class_models_curve.png", "caption": "The objective during the ascent."})
    rows = []
    for i in range(k):
        target = int(result.classes[i])
        others = result.all_scores[i].clone()
        others[target] = -float("inf")
        best = int(others.argmax())
        rows.append([name(target), round(float(result.scores[i]), 3), name(best), round(float(others[best]), 3),
                     round(float(result.scores[i] - others[best]), 3)])
    claims = []
    if k:
        wins = result.target_wins()
        losers = [name(int(result.classes[i])) for i in torch.nonzero(~wins).flatten().tolist()]
        claims.append({"claim": "Each class model image scores highest for its own class (Simonyan et al., "
                                "section 2)",
                       "holds": bool(wins.all()),
                       "detail": f"{int(wins.sum())} of {k} images"
                                 + (f"; not: {', '.join(losers)}" if losers else "")})
    return {"title": "Class models (Simonyan, Vedaldi & Zisserman)",
            "intro": "For each class, gradient ascent from noise finds an input that maximises the class score "
                     "(the logit, before the softmax) under an L2 penalty: what the network takes as the most "
                     "typical evidence for the class.",
            "figures": figures,
            "tables": [{"caption": "per class model image (scores are logits)",
                        "header": ["class", "its score", "best other class", "its score", "margin"],
                        "rows": rows}],
            "claims": claims}


def analyze_embedded(loaded, *, quick: bool, progress: bool, seed: int) -> tuple[ClassModels, dict]:
    """A class model for every class of the run. The settings are in units of
    ``B``, the root mean square of the embedded validation images in the
    model's input space (the step scales with ``B^2`` and ``l2`` with
    ``1 / B^2``, so any input scale sees the same ascent): ``lr = 3 B^2``, from
    noise of ``2 B``; quick, 80 plain steps with ``l2 = 0.015 / B^2``; full, 300
    steps with ``l2 = 0.005 / B^2``, jitter 2 px and a blur of 0.5 px every 8
    steps (on the demo model, 7 to 9 of the 10 targets win either way,
    depending on the seed)."""
    from ..analyze import _embedded_val

    base = _embedded_val(loaded).base
    scale = float(loaded.preprocess(base.images[:200]).square().mean().sqrt())
    if quick:
        settings = dict(steps=80, l2=0.015 / scale ** 2)
    else:
        settings = dict(steps=300, l2=0.005 / scale ** 2, jitter=2, blur_sigma=0.5, blur_every=8)
    result = class_models(loaded.model, list(range(len(loaded.classes))), loaded.input_shape, lr=3 * scale ** 2,
                          init_std=2 * scale, seed=seed, progress=progress, **settings)
    return result, {"classes": list(loaded.classes), "with_mean": loaded.deprocess(result.images)}
