"""The page of ``zfcore analyze class_model``: each class's model image (and
with the mean image added), the objective's curve, the target score against
the best other class, and the claim that each image's target class wins."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from ...analysis.class_model import ClassModels
from ...analysis.result import display_signed
from ._figures import begin, hide_ticks, save_figure


def render(result: "ClassModels | dict", assets: Path, *, classes: Sequence[str] | None = None,
           with_mean: Tensor | None = None) -> dict:
    """The images (each linearly rescaled: grey is 0, i.e. the dataset mean;
    scaled by its own largest magnitude), and when given ``with_mean`` (uint8
    ``[K, 3, H, W]``: the images with the mean image added, e.g. by
    ``Subject.deprocess``) those too; a table of target score against the best
    other class; the claim that each image's target class wins."""
    plt, result, assets = begin(result, ClassModels, assets)
    names = [str(c) for c in classes] if classes is not None else None

    def name(c: int) -> str:
        return names[c] if names is not None and 0 <= c < len(names) else str(c)

    k = len(result.classes)
    rows_shown = [("", display_signed(result.images))]
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
        hide_ticks(axes)
        save_figure(fig, assets, "class_models.png",
                    f"For each class, the image maximising its score minus {result.l2:g} ||I||^2 "
                    f"({result.steps} gradient ascent steps"
                    + (f", jitter {result.jitter} px" if result.jitter else "")
                    + (f", blur sigma {result.blur_sigma:g} every {result.blur_every} steps"
                       if result.blur_sigma else "")
                    + "). Grey is 0 (the dataset's mean image); each image is scaled by its own largest magnitude"
                    + ("; below, with the mean image added." if with_mean is not None else "."), figures)
        fig, ax = plt.subplots(figsize=(5, 3.2))
        ax.plot(result.curve.numpy())
        ax.set_xlabel("step")
        ax.set_ylabel("S_c(I) - l2 ||I||^2 (mean)")
        save_figure(fig, assets, "class_models_curve.png", "The objective during the ascent.", figures)
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
