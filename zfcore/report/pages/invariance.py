"""The page of ``zfcore analyze invariance`` (Fig. 5): feature distances and
the true class's probability against each transform, the transforms on one
image, a summary table and the paper's claims checked on the numbers."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import Tensor

from ...analysis.invariance import IDENTITY, Invariance, transform_images
from ._figures import begin, display_stretched, save_figure

UNITS = {"translation": "vertical shift (pixels)", "scale": "scale factor", "rotation": "rotation (degrees)"}


def _smallest_change(result: Invariance, kind: str) -> Tensor:
    """Indices of the non-identity values closest to the identity (both sides)."""
    gap = (result.values[kind] - IDENTITY[kind]).abs()
    nonzero = gap > 0
    if not bool(nonzero.any()):
        return torch.zeros(0, dtype=torch.long)
    return torch.nonzero(nonzero & (gap == gap[nonzero].min())).flatten()


def _small_translations(result: Invariance) -> Tensor:
    """Non-zero shifts of at most 1/8 of the image height (at least the smallest)."""
    gap = result.values["translation"].abs()
    limit = max(float(gap[gap > 0].min()) if bool((gap > 0).any()) else 0.0, result.images.shape[-2] / 8)
    return torch.nonzero((gap > 0) & (gap <= limit)).flatten()


def _display(images: Tensor) -> Tensor:
    """uint8 ``[N, H, W, 3]`` for matplotlib (float images scaled per image)."""
    if images.dtype != torch.uint8:
        images = display_stretched(images.float())
    return images[:, :3].permute(0, 2, 3, 1)


def render(result: Invariance | dict, assets: Path) -> dict:
    """The report section of ``invariance``: Fig. 5's curves
    (``invariance_curves.png``), the transforms on one image
    (``invariance_examples.png``), a summary table and the paper's claims
    checked on the numbers (medians over images)."""
    plt, result, assets = begin(result, Invariance, assets)
    first, top = result.layers[0], result.layers[-1]
    shown = [first] if first == top else [first, top]
    n = len(result.labels)
    name_of = (lambda c: result.classes[c] if result.classes is not None and 0 <= c < len(result.classes)
               else f"class {c}")
    colours = plt.get_cmap("tab10")
    figures = []

    rows, cols = len(result.transforms), len(shown) + 1
    fig, axes = plt.subplots(rows, cols, figsize=(3.3 * cols, 2.6 * rows), dpi=110, squeeze=False)
    for r, kind in enumerate(result.transforms):
        x = result.values[kind].numpy()
        panels = [(result.distances[kind][layer], f"{layer}: normalized distance") for layer in shown]
        panels.append((result.probabilities[kind], "P(true class)"))
        for c, (y, title) in enumerate(panels):
            ax = axes[r][c]
            for i in range(n):
                label = int(result.labels[i])
                ax.plot(x, y[:, i].numpy(), color=colours(label % 10), linewidth=0.9, alpha=0.8)
            ax.set_title(title, fontsize=9)
            ax.set_xlabel(UNITS[kind], fontsize=8)
            ax.tick_params(labelsize=7)
            if c == len(panels) - 1:
                ax.set_ylim(-0.02, 1.02)
    handles = [plt.Line2D([], [], color=colours(c % 10), label=name_of(c))
               for c in sorted({int(v) for v in result.labels})]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 10), fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    save_figure(fig, assets, "invariance_curves.png",
                "One row per transform: normalized feature distance at the first and the top layer, and the true "
                "class's probability; one line per image, coloured by class.", figures, dpi=110, tight=False)

    picks = {kind: [int(i) for i in torch.linspace(0, len(result.values[kind]) - 1,
                                                    min(6, len(result.values[kind]))).round().long()]
             for kind in result.transforms}
    fig, axes = plt.subplots(len(result.transforms), 6, figsize=(7.5, 1.4 * len(result.transforms)), dpi=110,
                             squeeze=False)
    for r, kind in enumerate(result.transforms):
        for c in range(6):
            ax = axes[r][c]
            ax.axis("off")
            if c < len(picks[kind]):
                value = float(result.values[kind][picks[kind][c]])
                image = transform_images(result.images[:1], kind, value, result.fill)
                if result.images.dtype == torch.uint8:
                    image = image.round().clamp(0, 255).to(torch.uint8)
                ax.imshow(_display(image)[0].numpy())
                ax.set_title(f"{value:g}", fontsize=7)
    save_figure(fig, assets, "invariance_examples.png", "The first image under some of the transforms.", figures,
                dpi=110)

    table, claims = [], []
    symmetric = torch.tensor([int(label) in result.rotation_symmetric for label in result.labels])

    def median(t: Tensor) -> float:
        t = t[~t.isnan()]
        return float(t.median()) if t.numel() else math.nan

    def drop(kind: str, where: Tensor, images: Tensor) -> float:
        """Mean over images of the mean fall of P(true class) over the values ``where``."""
        if where.numel() == 0 or not bool(images.any()):
            return math.nan
        fall = result.original_probabilities[None] - result.probabilities[kind][where]
        return float(fall[:, images].mean())

    for kind in result.transforms:
        near = _smallest_change(result, kind)
        changed = (result.values[kind] != IDENTITY[kind]).nonzero().flatten()
        first_d = median(result.distances[kind][first][near]) if near.numel() else math.nan
        top_d = median(result.distances[kind][top][near]) if near.numel() else math.nan
        near_values = ", ".join(f"{float(v):g}" for v in result.values[kind][near])
        table.append([kind, near_values or "-", round(first_d, 4), round(top_d, 4),
                      round(drop(kind, changed, torch.ones(n, dtype=torch.bool)), 4)])
        if kind in ("translation", "scale") and near.numel() and first != top:
            claims.append({
                "claim": f"The smallest {kind} changes layer {first}'s features more than the top layer "
                         f"{top}'s (normalized distance)",
                "holds": bool(first_d > top_d),
                "detail": f"at {kind} {near_values}: median {first}: {first_d:.3f}, {top}: {top_d:.3f}"})
    if "rotation" in result.transforms and "translation" in result.transforms:
        rotated = (result.values["rotation"] % 360 != 0).nonzero().flatten()
        small = _small_translations(result)
        plain = ~symmetric
        if bool(plain.any()):
            rot, shift = drop("rotation", rotated, plain), drop("translation", small, plain)
            claims.append({
                "claim": "The output is more sensitive to rotation than to small translations (mean fall of the "
                         "true-class probability, rotation-asymmetric classes)",
                "holds": bool(rot > shift),
                "detail": f"rotation: {rot:.3f}, translations up to "
                          f"{float(result.values['translation'][small].abs().max()) if small.numel() else 0:g} px: "
                          f"{shift:.3f} ({int(plain.sum())} images)"})
        if bool(symmetric.any()) and bool(plain.any()):
            sym = drop("rotation", rotated, symmetric)
            claims.append({
                "claim": "Rotation-symmetric classes keep their probability better under rotation",
                "holds": bool(sym < drop("rotation", rotated, plain)),
                "detail": f"mean fall under rotation: symmetric classes "
                          f"({', '.join(name_of(c) for c in sorted(set(result.rotation_symmetric)))}) {sym:.3f}, "
                          f"others {drop('rotation', rotated, plain):.3f}"})
    fill_text = "each image's mean colour" if result.fill == "image_mean" else f"the value {result.fill}"
    return {
        "title": "Invariance to translation, scale and rotation (Fig. 5)",
        "intro": (f"{n} images translated vertically, scaled and rotated; for each, the Euclidean distance between "
                  f"the feature vectors of the original and the transformed image at {first} and {top}, divided "
                  f"by the original's feature norm, and the softmax probability of the true label. Uncovered "
                  f"pixels are filled with {fill_text}. "
                  f"Took {result.seconds:.1f} s."),
        "figures": figures,
        "tables": [{"caption": "Per transform: the median normalized distance at the smallest change and the mean "
                               "fall of the true-class probability over all its values",
                    "header": ["transform", "smallest change", f"{first} distance", f"{top} distance",
                               "mean fall of P(true class)"], "rows": table}],
        "claims": claims,
    }
