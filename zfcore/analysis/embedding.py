"""PCA and t-SNE maps of a layer's features, against the same maps of pixels.

A layer's feature vectors (its output per image, flattened) are projected to
two dimensions:

* **PCA** (Pearson 1901; Hotelling 1933): the coordinates of the centred
  features on the two leading principal axes, i.e. ``U[:, :2] * S[:2]`` of the
  SVD ``X - mean = U S V^T``; the explained variance ratio of component ``i``
  is ``S_i^2 / sum_j S_j^2``.
* **t-SNE** (van der Maaten & Hinton 2008, "Visualizing Data using t-SNE",
  JMLR 9): points placed so that a Student-t neighbourhood distribution in 2-D
  matches the Gaussian one in feature space, whose bandwidths give each point
  the ``perplexity`` (an effective number of neighbours).

Both come from scikit-learn (``sklearn.decomposition.PCA``,
``sklearn.manifold.TSNE``). The same is done on the raw pixels (the model's
input, flattened), and how well the classes separate is measured in each
space: the leave-one-out accuracy of a ``knn_k``-nearest-neighbour vote in each
2-D map (``knn_accuracy``; Euclidean in the map), and the silhouette score of
the classes in the full feature / pixel space (Rousseeuw 1987,
``sklearn.metrics.silhouette_score``, Euclidean).

Where the definitions are silent:

* t-SNE starts from random positions drawn with ``random_state=seed``
  (``init="random"``): the same seed gives the same map, another seed another;
  the rest is scikit-learn's defaults (Barnes-Hut, ``learning_rate="auto"``,
  ``max_iter=1000`` unless given);
* perplexity must be below the number of images (scikit-learn's requirement):
  larger values are an error, not clamped;
* PCA uses the exact SVD (``svd_solver="full"``); each component's sign is
  scikit-learn's (fixed by ``svd_flip``); the explained variance ratio is kept
  for the first ``min(10, N, D)`` components;
* the kNN vote excludes the point itself; a tie between classes goes to the
  lower class index; ``knn_k = min(5, N - 1)``;
* the silhouette score needs 2 to ``N - 1`` distinct classes; otherwise it is NaN;
* scikit-learn runs on one thread (its BLAS and OpenMP pools limited by
  ``threadpoolctl``, a dependency of scikit-learn): spinning worker threads
  made it several times slower on a busy machine.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE
from sklearn.metrics import silhouette_score
from sklearn.neighbors import NearestNeighbors
from threadpoolctl import threadpool_limits  # a dependency of scikit-learn; sees the pools loaded above
from torch import Tensor, nn
from tqdm import tqdm

from ._render import begin
from ._stream import check_layers
from .neighbours import (_check_images, _check_labels, _check_positive, _layer_features, display_images,
                         last_hidden_layer)

__all__ = ["Embedding", "embed", "knn_accuracy", "analyze_embedded", "render"]

METHODS = ("pca", "tsne")
VARIANCE_COMPONENTS = 10
THUMBNAILS = 150


@dataclass
class Embedding:
    """2-D maps of ``N`` images' ``layer`` features (and of their pixels).

    ``coords[method]``: ``Tensor[N, 2]`` per method (``"pca"``, ``"tsne"``);
    ``explained_variance``: PCA's explained variance ratio per component (the
    first ``min(10, N, D)``; empty without PCA); ``labels[N]``;
    ``knn_accuracy[method]``: leave-one-out ``knn_k``-NN accuracy in each map;
    ``silhouette``: of the classes in the full feature space. ``pixel_*``: the
    same for the flattened input (empty / NaN when pixels were not embedded)."""

    layer: str
    methods: list[str]
    perplexity: float
    seed: int
    knn_k: int
    labels: Tensor
    coords: dict[str, Tensor]
    explained_variance: Tensor
    knn_accuracy: dict[str, float]
    silhouette: float
    pixel_coords: dict[str, Tensor] = field(default_factory=dict)
    pixel_explained_variance: Tensor = field(default_factory=lambda: torch.zeros(0))
    pixel_knn_accuracy: dict[str, float] = field(default_factory=dict)
    pixel_silhouette: float = math.nan
    max_iter: int = 1000

    def as_dict(self) -> dict:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, d: dict) -> "Embedding":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


def knn_accuracy(points: Tensor, labels: Tensor, k: int) -> float:
    """Leave-one-out accuracy of a ``k``-nearest-neighbour majority vote among
    ``points[N, D]`` (Euclidean; the point itself excluded, a tied vote to the
    lower class index; neighbours by ``sklearn.neighbors.NearestNeighbors``)."""
    if not isinstance(points, Tensor) or points.dim() != 2:
        raise ValueError(f"knn_accuracy: points must be a Tensor[N, D] (got {getattr(points, 'shape', points)!r})")
    _check_labels(labels, len(points), "knn_accuracy")
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k < len(points):
        raise ValueError(f"knn_accuracy: k must be an int in [1, {len(points)}) (got {k!r})")
    points = np.asarray(points.detach().cpu().double())
    neighbours = NearestNeighbors(n_neighbors=k).fit(points).kneighbors(return_distance=False)
    labels = labels.long().cpu()
    votes = F.one_hot(labels[torch.from_numpy(neighbours)], int(labels.max()) + 1).sum(1)
    return float((votes.argmax(1) == labels).double().mean())


def _silhouette(points: np.ndarray, labels: Tensor) -> float:
    distinct = len(set(labels.tolist()))
    if not 2 <= distinct <= len(labels) - 1:
        return math.nan
    return float(silhouette_score(points, labels.numpy(), metric="euclidean"))


def _space(points: Tensor, labels: Tensor, methods: Sequence[str], perplexity: float, max_iter: int, seed: int,
           knn_k: int, bar) -> tuple[dict, Tensor, dict, float]:
    """Maps, explained variance ratio, kNN accuracies and silhouette of one space."""
    x = np.asarray(points.detach().cpu().double())
    coords, variance, accuracy = {}, torch.zeros(0, dtype=torch.float64), {}
    for method in methods:
        if method == "pca":
            pca = PCA(n_components=min(VARIANCE_COMPONENTS, *x.shape), svd_solver="full")
            z = pca.fit_transform(x)[:, :2]
            variance = torch.from_numpy(pca.explained_variance_ratio_.copy())
        else:
            z = TSNE(n_components=2, perplexity=perplexity, max_iter=max_iter, init="random",
                     random_state=seed).fit_transform(x)
        coords[method] = torch.from_numpy(np.ascontiguousarray(z)).float()
        if not torch.isfinite(coords[method]).all():
            raise ValueError(f"embed: {method} gave NaN or inf coordinates (features too large or degenerate?)")
        accuracy[method] = knn_accuracy(coords[method], labels, knn_k)
        bar.update(1)
    return coords, variance.float(), accuracy, _silhouette(x, labels)


def embed(model: nn.Module, images: Tensor, labels: Tensor, layer: str, *,
          methods: Sequence[str] = ("pca", "tsne"), perplexity: float = 30.0, max_iter: int = 1000,
          pixels: bool = True, batch_size: int = 64, seed: int = 0, progress: bool = True) -> Embedding:
    """2-D PCA and t-SNE maps of ``layer``'s features of ``images``, and of their pixels.

    Args:
        model: a CNN taking ``Tensor[N, C, H, W]``.
        images: ``Tensor[N, C, H, W]`` in the model's input space, ``N >= 3``.
        labels: integer ``Tensor[N]`` of class indices.
        layer: the module whose flattened output is embedded (see ``neighbours.last_hidden_layer``).
        methods: a non-empty subset of ``("pca", "tsne")``.
        perplexity: t-SNE's perplexity, ``0 < perplexity < N``.
        max_iter: t-SNE's iterations (at least 250, scikit-learn's minimum).
        pixels: also embed the flattened input (for the comparison).
        batch_size: images per forward.
        seed: t-SNE's ``random_state``.

    Returns:
        ``Embedding``.

    Example:
        >>> e = embed(model, x, y, "relu7", perplexity=30.0, seed=0)
        >>> e.coords["tsne"], e.explained_variance[:2], e.knn_accuracy, e.pixel_knn_accuracy
    """
    caller = "embed"
    check_layers(model, [layer], caller)
    _check_images(images, caller)
    n = len(images)
    if n < 3:
        raise ValueError(f"embed: images must hold at least 3 images (got {n})")
    _check_labels(labels, n, caller)
    if isinstance(methods, str) or not isinstance(methods, Sequence) or not methods \
            or any(m not in METHODS for m in methods) or len(set(methods)) != len(methods):
        raise ValueError(f"{caller}: methods must be a non-empty sequence of distinct names from 'pca', 'tsne' "
                         f"(got {methods!r})")
    if "tsne" in methods:
        if isinstance(perplexity, bool) or not isinstance(perplexity, int | float) or not math.isfinite(perplexity) \
                or not 0 < perplexity < n:
            raise ValueError(f"{caller}: perplexity must be a number in (0, {n}), below the number of images "
                             f"(got {perplexity!r})")
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 250:
        raise ValueError(f"{caller}: max_iter must be an int >= 250 (got {max_iter!r})")
    _check_positive(batch_size, "batch_size", caller)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise ValueError(f"{caller}: seed must be an int in [0, 2**32) (got {seed!r})")
    feats = _layer_features(model, images, layer, batch_size, progress, caller)
    if not torch.isfinite(feats).all():
        raise ValueError(f"{caller}: the features of layer {layer!r} contain NaN or inf")
    for space, values in ((f"the features of layer {layer!r}", feats), ("the images", images if pixels else None)):
        if values is not None and bool((values == values[:1]).all()):
            raise ValueError(f"{caller}: {space} are the same for every image; there is nothing to map")
    if "pca" in methods and min(feats.shape[1], images[0].numel() if pixels else 2) < 2:
        raise ValueError(f"{caller}: PCA needs at least 2 values per image (layer {layer!r} gives "
                         f"{feats.shape[1]}, the pixels {images[0].numel()})")
    if pixels and not torch.isfinite(images).all():
        raise ValueError(f"{caller}: images contain NaN or inf")
    labels = labels.long().cpu()
    knn_k = min(5, n - 1)
    methods = list(methods)
    # scikit-learn on one thread (its BLAS and OpenMP pools): at these sizes threads gain little, and on
    # a busy machine they lose much (200 images, 2 threads on 2 shared cores: 11.6 s against 2.5 s)
    with threadpool_limits(limits=1), \
            tqdm(total=len(methods) * (1 + pixels), desc=f"embed: {layer}", unit="map", disable=not progress) as bar:
        coords, variance, accuracy, silhouette = _space(feats, labels, methods, float(perplexity), max_iter, seed,
                                                         knn_k, bar)
        result = Embedding(layer, methods, float(perplexity), seed, knn_k, labels, coords, variance, accuracy,
                           silhouette, max_iter=max_iter)
        if pixels:
            (result.pixel_coords, result.pixel_explained_variance, result.pixel_knn_accuracy,
             result.pixel_silhouette) = _space(images.flatten(1), labels, methods, float(perplexity), max_iter,
                                               seed, knn_k, bar)
    return result


def analyze_embedded(loaded, *, quick: bool, progress: bool, seed: int) -> tuple[Embedding, dict]:
    """``embed`` of the last hidden layer (``relu7``) and of pixels on the run's
    embedded validation images, PCA and t-SNE at perplexity 30 (1000
    iterations; ``quick``: 200 images drawn with ``seed``, 500 iterations).
    Extra for ``render``: the uint8 images of the thumbnails (``images``,
    ``image_index``: their indices in the set) and the class names."""
    from ..analyze import _embedded_val

    base = _embedded_val(loaded).base
    n = len(base.labels)
    index = torch.arange(n)
    if quick and n > 200:
        index = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:200].sort().values
    inputs = loaded.preprocess(base.images[index])
    result = embed(loaded.model, inputs, base.labels[index], last_hidden_layer(loaded.model),
                   perplexity=min(30.0, (len(index) - 1) / 3), max_iter=500 if quick else 1000, seed=seed,
                   progress=progress)
    drawn = torch.tensor(_spread(result.coords["tsne"], THUMBNAILS), dtype=torch.long)
    return result, {"images": base.images[index][drawn], "image_index": drawn, "classes": list(loaded.classes)}


_TITLES = {"pca": "PCA", "tsne": "t-SNE"}


def render(result: "Embedding | dict", assets: Path, *, images: Tensor | None = None,
           image_index: Tensor | None = None, classes: Sequence[str] | None = None,
           thumbnails: int = THUMBNAILS) -> dict:
    """The maps as PNGs in ``assets``: scatter plots coloured by class (one per
    method, the layer above the pixels), one map with image thumbnails (t-SNE
    if present; with ``images``, uint8 ``[N, 3, H, W]``; at most
    ``thumbnails`` of them, placed where they do not overlap; ``image_index``:
    the set's indices of ``images`` when they are only those drawn, as
    ``analyze_embedded`` gives), PCA's explained
    variance; a table of the separation measures; claims that the classes
    separate better in the layer than in pixels."""
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
    fig.savefig(assets / "embedding_scatter.png", dpi=80)
    plt.close(fig)
    figures.append({"file": "embedding_scatter.png",
                    "caption": f"2-D maps of {len(labels)} images, coloured by class: {result.layer} features "
                               + ("(top) and raw pixels (bottom)" if len(spaces) > 1 else "")
                               + (f"; t-SNE at perplexity {result.perplexity:g}, seed {result.seed}"
                                  if "tsne" in methods else "") + "."})
    if images is not None and len(labels):
        method = "tsne" if "tsne" in methods else methods[0]
        z = result.coords[method]
        have = (torch.arange(len(labels)) if image_index is None else image_index.long().sort().values).tolist()
        images = display_images(images, image_index, len(labels))
        shown = [have[i] for i in _spread(z[have], thumbnails)]
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
        fig.tight_layout()
        fig.savefig(assets / "embedding_thumbnails.png", dpi=80)
        plt.close(fig)
        figures.append({"file": "embedding_thumbnails.png",
                        "caption": f"The {_TITLES[method]} map of {result.layer} with {len(shown)} image thumbnails "
                                   f"that do not overlap (frame and dots: class colour as in the scatter plots)."})
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
        fig.tight_layout()
        fig.savefig(assets / "embedding_variance.png", dpi=80)
        plt.close(fig)
        figures.append({"file": "embedding_variance.png",
                        "caption": "PCA: the share of the variance each principal component explains."})
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


def _spread(z: Tensor, count: int) -> list[int]:
    """Up to ``count`` points of ``z[N, 2]`` at least 5% of the map's extent
    apart (greedy, in index order): where thumbnails go without overlapping."""
    extent = float((z.amax(0) - z.amin(0)).max()) or 1.0
    chosen: list[int] = []
    for i in range(len(z)):
        if len(chosen) == count:
            break
        if not chosen or float((z[chosen] - z[i]).norm(dim=1).min()) >= 0.05 * extent:
            chosen.append(i)
    return chosen


def _round(value: float) -> float | str:
    return "n/a" if math.isnan(value) else round(value, 3)
