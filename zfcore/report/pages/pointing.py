"""The page of ``zfcore analyze pointing``: each saliency method's pointing
accuracy against the baselines, the maps of the first images with their maxima
and the object's box, and the claims checked."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from torch import Tensor

from ...analysis.pointing import BASELINES, PointingGame
from ._figures import begin, save_figure


def render(result: "PointingGame | dict", assets: Path, *, images: Tensor | None = None,
           classes: Sequence[str] | None = None) -> dict:
    """The score table (methods and baselines) and, for the first images, each
    method's saliency map with its maximum and the object's box."""
    plt, result, assets = begin(result, PointingGame, assets)
    scores = result.accuracy()
    n = len(result.labels)
    figures = []
    e = result.examples.shape[1]
    if e:
        cols = len(result.methods) + (images is not None)
        fig, axes = plt.subplots(e, cols, figsize=(1.9 * cols, 1.9 * e), squeeze=False)
        for k in range(e):
            x0, y0, x1, y1 = (float(v) for v in result.boxes[k])
            c = 0
            if images is not None:
                axes[k][0].imshow(images[k].permute(1, 2, 0).numpy())
                label = int(result.labels[k])
                name = str(classes[label]) if classes is not None and 0 <= label < len(classes) else str(label)
                axes[k][0].set_title(name, fontsize=8)
                c = 1
            for i, method in enumerate(result.methods):
                ax = axes[k][c + i]
                ax.imshow(result.examples[i, k].numpy(), cmap="inferno", vmin=0, vmax=1)
                y, x = (int(v) for v in result.points[i, k])
                good = bool(result.hit[i, k])
                ax.plot([x], [y], marker="+", markersize=10, mew=2, color="lime" if good else "red")
                if k == 0:
                    ax.set_title(method, fontsize=8)
            for ax in axes[k]:
                ax.add_patch(plt.Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, edgecolor="cyan",
                                           linewidth=1))
                ax.set_xticks([])
                ax.set_yticks([])
        save_figure(fig, assets, "pointing_maps.png",
                    "Each method's saliency map for the true class (each scaled to its own range), its maximum "
                    "(+: green a hit, red a miss) and the object's box (cyan).", figures)
    fig, ax = plt.subplots(figsize=(6, 2.8))
    names = list(result.methods) + ["centre", "chance"]
    ax.barh(names[::-1], [scores[m] for m in names[::-1]],
            color=["#888" if m in BASELINES else "#4a8" for m in names[::-1]])
    ax.set_xlim(0, 1)
    ax.set_xlabel("pointing accuracy")
    save_figure(fig, assets, "pointing_scores.png",
                f"Pointing accuracy on {n} images (tolerance {result.tolerance} px); grey: the baselines (the "
                "image's centre, a random pixel).", figures)
    figures.insert(0, figures.pop())  # the scores first
    rows = [[m, int(result.hit[i].sum()), n, f"{scores[m]:.3f}", int(result.flat[i].sum())]
            for i, m in enumerate(result.methods)]
    rows.append(["centre (baseline)", int(result.centre_hit.sum()), n, f"{scores['centre']:.3f}", "-"])
    rows.append(["chance (a random pixel)", "-", n, f"{scores['chance']:.3f}", "-"])
    claims = []
    if n:
        beaten = [m for m in result.methods if scores[m] > scores["chance"]]
        claims.append({"claim": "Every saliency method points at the object more often than a random pixel",
                       "holds": len(beaten) == len(result.methods),
                       "detail": ", ".join(f"{m} {scores[m]:.3f}" for m in result.methods)
                                 + f"; chance {scores['chance']:.3f}"})
        best = max(result.methods, key=lambda m: scores[m])
        claims.append({"claim": "The best method beats the centre baseline (objects are not simply centred)",
                       "holds": scores[best] > scores["centre"],
                       "detail": f"{best} {scores[best]:.3f} against the centre's {scores['centre']:.3f}"})
    return {"title": "The pointing game",
            "intro": "Does each saliency method's maximum for the true class fall on the object? A hit is a "
                     f"maximum within {result.tolerance} px of the object's box (the embedded data's generator "
                     "knows it); the score is the share of hits (Zhang et al. 2016, as TorchRay reports it).",
            "figures": figures,
            "tables": [{"caption": "pointing accuracy", "header": ["method", "hits", "images", "accuracy",
                                                                   "flat maps"], "rows": rows}],
            "claims": claims}
