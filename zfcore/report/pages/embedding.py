"""The page of ``zfcore analyze embedding``: PCA and t-SNE maps of a layer's
features and of the pixels coloured by class, a map with image thumbnails,
PCA's explained variance, the class-separation measures and the claims checked."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ...analysis.embedding import THUMBNAILS, Embedding, spread
from ._figures import begin, display_images, save_figure

_TITLES = {"pca": "PCA", "tsne": "t-SNE"}


def render(result: "Embedding | dict", assets: Path, *, images: Tensor | None = None,
           image_index: Tensor | None = None, classes: Sequence[str] | None = None,
           thumbnails: int = THUMBNAILS) -> dict:
    """The maps as PNGs in ``assets``: scatter plots coloured by class (one per
    method, the layer above the pixels), one map with image thumbnails (t-SNE
    if present; with ``images``, uint8 ``[N, 3, H, W]``; at most
    ``thumbnails`` of them, placed where they do not overlap; ``image_index``:
    the set's indices of ``images`` when they are only those drawn, as
    ``zfcore.analysis.embedding.run`` gives), PCA's explained variance; a
    table of the separation measures; claims that the classes separate better
    in the layer than in pixels."""
    plt, result, assets = begin(result, Embedding, assets)
    from matplotlib.offsetbox import AnnotationBbox, OffsetImage

    names = [str(c) for c in classes] if classes is not None else None

    def name(label: int) -> str:
        return names[label] if names is not None and 0 <= label < len(names) else str(label)

    labels = result.labels
    present = sorted(set(labels.tolist()))
    cmap = plt.get_cmap("tab10" if max(present, default=0) < 10 else "tab20")
    colour = {c: cmap(c % cmap.N) for c in present}
    spaces = [(result.layer, result.coords)] + ([("pixels", result.pixel_coords)] if result.pixel_coords else [])
    figures = []
    methods = result.methods
    fig, axes = plt.subplots(len(spaces), len(methods), figsize=(4.2 * len(methods) + 1.6, 3.8 * len(spaces)),
                             squeeze=False)
    for r, (space, coords) in enumerate(spaces):
        for c, method in enumerate(methods):
            ax = axes[r][c]
            z = coords[method]
            for label in present:
                mask = labels == label
                ax.scatter(z[mask, 0].numpy(), z[mask, 1].numpy(), s=9, color=colour[label], label=name(label))
            ax.set_title(f"{space}: {_TITLES[method]}", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
    handles, texts = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, texts, loc="center right", fontsize=8, markerscale=1.5)
    fig.tight_layout(rect=(0, 0, 1 - 1.5 / fig.get_figwidth(), 1))
    save_figure(fig, assets, "embedding_scatter.png",
                f"2-D maps of {len(labels)} images, coloured by class: {result.layer} features "
                + ("(top) and raw pixels (bottom)" if len(spaces) > 1 else "")
                + (f"; t-SNE at perplexity {result.perplexity:g}, seed {result.seed}" if "tsne" in methods else "")
                + ".", figures, tight=False)
    if images is not None and len(labels):
        method = "tsne" if "tsne" in methods else methods[0]
        z = result.coords[method]
        have = (torch.arange(len(labels)) if image_index is None else image_index.long().sort().values).tolist()
        images = display_images(images, image_index, len(labels))
        shown = [have[i] for i in spread(z[have], thumbnails)]
        fig, ax = plt.subplots(figsize=(9, 9))
        for label in present:
            mask = labels == label
            ax.scatter(z[mask, 0].numpy(), z[mask, 1].numpy(), s=4, color=colour[label])
        zoom = 0.5 * 64 / max(images.shape[-1], 1)
        for i in shown:
            box = AnnotationBbox(OffsetImage(images[i].permute(1, 2, 0).numpy(), zoom=zoom),
                                 (float(z[i, 0]), float(z[i, 1])), frameon=True, pad=0.1,
                                 bboxprops={"edgecolor": colour[int(labels[i])], "linewidth": 1.5})
            ax.add_artist(box)
        ax.set_title(f"{result.layer}: {_TITLES[method]}, {len(shown)} images", fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
        save_figure(fig, assets, "embedding_thumbnails.png",
                    f"The {_TITLES[method]} map of {result.layer} with {len(shown)} image thumbnails that do not "
                    f"overlap (frame and dots: class colour as in the scatter plots).", figures)
    if len(result.explained_variance):
        fig, ax = plt.subplots(figsize=(5.5, 3.2))
        bars = [(result.layer, result.explained_variance)]
        if len(result.pixel_explained_variance):
            bars.append(("pixels", result.pixel_explained_variance))
        width = 0.8 / len(bars)
        for b, (space, ratio) in enumerate(bars):
            x = np.arange(1, len(ratio) + 1) + (b - (len(bars) - 1) / 2) * width
            ax.bar(x, ratio.numpy(), width, label=f"{space} (first 2: {float(ratio[:2].sum()):.0%})")
        ax.set_xlabel("principal component")
        ax.set_ylabel("explained variance ratio")
        ax.legend(fontsize=8)
        save_figure(fig, assets, "embedding_variance.png",
                    "PCA: the share of the variance each principal component explains.", figures)
    header = ["space", "silhouette (full space)"] + [f"{result.knn_k}-NN accuracy, {_TITLES[m]} map"
                                                      for m in methods]
    rows = [[result.layer, _round(result.silhouette)] + [_round(result.knn_accuracy[m]) for m in methods]]
    if result.pixel_coords:
        rows.append(["pixels", _round(result.pixel_silhouette)] + [_round(result.pixel_knn_accuracy[m])
                                                                    for m in methods])
    counts = torch.bincount(labels)
    rows.append(["chance (largest class)", "", *[_round(float(counts.max()) / len(labels))] * len(methods)])
    claims = []
    if result.pixel_coords:
        for m in methods:
            a, b = result.knn_accuracy[m], result.pixel_knn_accuracy[m]
            claims.append({"claim": f"Classes separate better in {result.layer} than in pixels "
                                    f"({_TITLES[m]} map, {result.knn_k}-NN accuracy)",
                           "holds": a > b,
                           "detail": f"leave-one-out {result.knn_k}-NN accuracy in the 2-D {_TITLES[m]} map: "
                                     f"{a:.1%} for {result.layer}, {b:.1%} for pixels"})
        s, p = result.silhouette, result.pixel_silhouette
        if not (math.isnan(s) or math.isnan(p)):
            claims.append({"claim": f"Classes form tighter clusters in {result.layer} features than in pixels "
                                    f"(silhouette score)",
                           "holds": s > p,
                           "detail": f"silhouette of the classes (Euclidean, full space): {s:.3f} in "
                                     f"{result.layer}, {p:.3f} in pixels (1: tight and apart, 0: overlapping)"})
    return {"title": "PCA and t-SNE of features",
            "intro": f"The {result.layer} feature vectors of {len(labels)} images projected to 2-D by PCA and "
                     f"t-SNE (scikit-learn), beside the same maps of the raw pixels. A leave-one-out "
                     f"{result.knn_k}-nearest-neighbour vote in each map and the silhouette score in the full "
                     f"space measure how well the classes separate.",
            "figures": figures,
            "tables": [{"caption": "class separation", "header": header, "rows": rows}],
            "claims": claims}


def _round(value: float) -> float | str:
    return "n/a" if math.isnan(value) else round(value, 3)
