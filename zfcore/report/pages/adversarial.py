"""The page of ``zfcore analyze adversarial``: accuracy against epsilon per
attack, example rows (image, perturbation, adversarial image, prediction
before and after), a table per method and epsilon, and the claims checked."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from ...analysis.adversarial import Adversarial
from ...analysis.result import display_signed
from ._figures import begin, save_figure


_LABELS = {"fgsm": "FGSM", "pgd": "PGD"}


def _shown_epsilon(result: Adversarial) -> int:
    """The epsilon the example rows show: the smallest non-zero one at which the
    strongest method fools at least half the examples shown, else the largest."""
    shown = result.examples
    for e in result.epsilons.argsort().tolist():
        fooled = (result.pred[:, e][:, shown] != result.labels[shown]).double().mean(1).max()
        if result.epsilons[e] > 0 and fooled >= 0.5:
            return e
    return int(result.epsilons.argmax())


def render(result: "Adversarial | dict", assets: Path, *, images: Tensor | None = None,
           classes: Sequence[str] | None = None, pixel_scale: float | None = None) -> dict:
    """Accuracy against epsilon (one line per method), example rows (image,
    perturbation magnified, adversarial image, prediction before -> after) at
    one epsilon, a table per method and epsilon, and the literature's claims.

    ``images``: uint8 ``[K, 3, H, W]``, the display images of
    ``result.examples``; ``pixel_scale``: model-input units per pixel level
    (``Subject.scale``: the adversarial image shown is ``images + delta /
    pixel_scale``, and epsilons are given in pixel levels too)."""
    plt, result, assets = begin(result, Adversarial, assets)
    names = [str(c) for c in classes] if classes is not None else None

    def name(label: int) -> str:
        return names[label] if names is not None and 0 <= label < len(names) else str(label)

    eps = result.epsilons.double()
    levels = eps / pixel_scale if pixel_scale else None
    unit = "pixel levels (of 255)" if levels is not None else "model-input units"
    axis = (levels if levels is not None else eps).tolist()
    figures = []
    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    for a, method in enumerate(result.methods):
        ax.plot(axis, result.accuracy[a].tolist(), marker="o", label=_LABELS[method]
                + (f" ({result.steps} steps, L{'∞' if result.norm == 'inf' else '2'})" if method == "pgd" else ""))
    ax.axhline(result.clean_accuracy, color="grey", linestyle="--", linewidth=1, label="no attack")
    ax.set_xlabel(f"epsilon, {unit}")
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    save_figure(fig, assets, "adversarial_accuracy.png",
                f"Accuracy on {len(result.labels)} images against the attack's epsilon ({unit}).", figures)
    k = len(result.examples)
    if k:
        e = _shown_epsilon(result)
        rows = [(a, j) for j in range(k) for a in range(len(result.methods))]
        cols = 3 if images is not None and pixel_scale else 1
        fig, axes = plt.subplots(len(rows), cols, figsize=(2.2 * cols, 2.2 * len(rows)), squeeze=False)
        for r, (a, j) in enumerate(rows):
            i = int(result.examples[j])
            delta = result.perturbation[a, e, j].float()
            before, after = name(int(result.clean_pred[i])), name(int(result.pred[a, e, i]))
            method = _LABELS[result.methods[a]]
            if cols == 3:
                axes[r, 0].imshow(images[j].permute(1, 2, 0).numpy())
                axes[r, 0].set_title(f"true: {name(int(result.labels[i]))}, predicted: {before}", fontsize=7)
                adv = (images[j].float() + delta / pixel_scale).round().clamp(0, 255).to(torch.uint8)
                axes[r, 2].imshow(adv.permute(1, 2, 0).numpy())
                axes[r, 2].set_title(f"{method}: {before} -> {after}", fontsize=7)
            c = 1 if cols == 3 else 0
            axes[r, c].imshow(display_signed(delta).permute(1, 2, 0).numpy())
            axes[r, c].set_title(f"{method} perturbation (magnified)" if cols == 3
                                 else f"{method}: {before} -> {after}", fontsize=7)
            for ax in axes[r]:
                ax.set_xticks([])
                ax.set_yticks([])
        shown = f"{float(levels[e]):g} pixel levels" if levels is not None else f"{float(eps[e]):g}"
        save_figure(fig, assets, "adversarial_examples.png",
                    f"At epsilon {shown}: the image, the perturbation (grey is 0, scaled to its own largest "
                    f"magnitude) and the adversarial image, with the prediction before and after the attack.",
                    figures)
    norm_unit = pixel_scale if levels is not None else 1.0
    header = ["method", "epsilon"] + (["epsilon, pixel levels"] if levels is not None else []) + [
        "accuracy", "fooled (of those right without attack)",
        *(f"mean {n}" + (", pixel levels" if levels is not None else "") for n in ("L∞", "L2")),
        "mean p(true class)"]
    right = result.clean_pred == result.labels
    table = []
    for a, method in enumerate(result.methods):
        for e in range(len(eps)):
            fooled = float((result.pred[a, e][right] != result.labels[right]).double().mean()) if right.any() \
                else float("nan")
            table.append([_LABELS[method], round(float(eps[e]), 5)]
                         + ([round(float(levels[e]), 3)] if levels is not None else [])
                         + [round(float(result.accuracy[a, e]), 3), round(fooled, 3),
                            round(float(result.linf[a, e].mean()) / norm_unit, 5),
                            round(float(result.l2[a, e].mean()) / norm_unit, 5),
                            round(float(result.true_prob[a, e].mean()), 3)])
    claims = []
    order = eps.argsort()
    for a, method in enumerate(result.methods):
        acc = result.accuracy[a][order]
        if len(acc) > 1:
            steps_ok = bool((acc[1:] <= acc[:-1] + 1e-9).all())
            claims.append({"claim": f"Accuracy falls as epsilon grows ({_LABELS[method]})",
                           "holds": steps_ok and float(acc[-1]) < float(acc[0]),
                           "detail": "accuracy " + ", ".join(f"{float(v):.2f}" for v in acc)
                                     + f" at epsilon " + ", ".join(f"{float(v):g}" for v in
                                                                   (levels if levels is not None else eps)[order])
                                     + (" pixel levels" if levels is not None else "")})
    if set(result.methods) == {"fgsm", "pgd"}:
        f, p = result.accuracy[result.methods.index("fgsm")], result.accuracy[result.methods.index("pgd")]
        worse = [float((levels if levels is not None else eps)[e]) for e in range(len(eps)) if p[e] > f[e] + 1e-9]
        claims.append({"claim": "PGD is at least as strong as FGSM at each epsilon (Madry et al.: the iterated "
                                "attack finds higher-loss points)",
                       "holds": not worse,
                       "detail": f"PGD accuracy minus FGSM accuracy: "
                                 + ", ".join(f"{float(p[e] - f[e]):+.2f}" for e in range(len(eps)))
                                 + (f"; PGD weaker at epsilon {', '.join(f'{v:g}' for v in worse)}" if worse else "")})
    if levels is not None:
        small = [e for e in range(len(eps)) if 0 < float(levels[e]) <= 8 + 1e-9]
        if small and right.any():
            e = max(small, key=lambda i: float(levels[i]))
            fooled = [float((result.pred[a, e][right] != result.labels[right]).double().mean())
                      for a in range(len(result.methods))]
            best = max(range(len(fooled)), key=fooled.__getitem__)
            claims.append({"claim": "A nearly imperceptible perturbation (at most 8 of 255 levels per pixel) fools "
                                    "the model on at least half the images it classified correctly (Goodfellow et "
                                    "al.)",
                           "holds": fooled[best] >= 0.5,
                           "detail": f"{_LABELS[result.methods[best]]} at {float(levels[e]):g} levels fools "
                                     f"{fooled[best]:.0%} of the {int(right.sum())} correctly classified images"})
    return {"title": "Adversarial examples (FGSM, PGD)",
            "intro": "Small perturbations along the gradient of the loss change the model's decision: FGSM takes "
                     "one step of epsilon * sign(gradient) (Goodfellow et al.), PGD iterates smaller steps and "
                     "projects back onto the epsilon ball (Madry et al.). Perturbations are clamped to the valid "
                     "pixel range.",
            "figures": figures,
            "tables": [{"caption": "per method and epsilon", "header": header, "rows": table}],
            "claims": claims}
