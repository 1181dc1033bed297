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

from ._args import check_images, check_labels, check_layers, check_positive_int, check_seed, layer_features
from .neighbours import last_hidden_layer
from .registry import Analysis
from .result import Result

__all__ = ["ANALYSIS", "Embedding", "embed", "knn_accuracy", "run", "spread"]

METHODS = ("pca", "tsne")
VARIANCE_COMPONENTS = 10
THUMBNAILS = 150


@dataclass
class Embedding(Result):
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


def knn_accuracy(points: Tensor, labels: Tensor, k: int) -> float:
    """Leave-one-out accuracy of a ``k``-nearest-neighbour majority vote among
    ``points[N, D]`` (Euclidean; the point itself excluded, a tied vote to the
    lower class index; neighbours by ``sklearn.neighbors.NearestNeighbors``)."""
    if not isinstance(points, Tensor) or points.dim() != 2:
        raise ValueError(f"knn_accuracy: points must be a Tensor[N, D] (got {getattr(points, 'shape', points)!r})")
    check_labels(labels, len(points), "knn_accuracy")
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
    check_images(images, caller)
    n = len(images)
    if n < 3:
        raise ValueError(f"embed: images must hold at least 3 images (got {n})")
    check_labels(labels, n, caller)
    if isinstance(methods, str) or not isinstance(methods, Sequence) or not methods \
            or any(m not in METHODS for m in methods) or len(set(methods)) != len(methods):
        raise ValueError(f"{caller}: methods must be a non-empty sequence of distinct names from 'pca', 'tsne' "
                         f"(got {methods!r})")
    if "tsne" in methods:
        if isinstance(perplexity, bool) or not isinstance(perplexity, int | float) or not math.isfinite(perplexity) \
                or not 0 < perplexity < n:
            raise ValueError(f"{caller}: perplexity must be a number in (0, {n}), below the number of images "
                             f"(got {perplexity!r})")
    check_positive_int(max_iter, "max_iter", caller, minimum=250)
    check_positive_int(batch_size, "batch_size", caller)
    check_seed(seed, caller)
    feats = layer_features(model, images, layer, batch_size, progress, caller)
    if not torch.isfinite(feats).all():
        raise ValueError(f"{caller}: the features of layer {layer!r} contain NaN or inf")
    for space, values in ((f"the features of layer {layer!r}", feats), ("the images", images if pixels else None)):
        if values is not None and bool((values == values[:1]).all()):
            raise ValueError(f"{caller}: {space} are the same for every image; there is nothing to map")
    if "pca" in methods and min(feats.shape[1], images[0].numel() if pixels else 2) < 2:
        raise ValueError(f"{caller}: PCA needs at least 2 values per image (layer {layer!r} gives "
                         f"{feats.shape[1]}, the pixels {images[0].numel()})")
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


def run(subject, dataset, *, quick: bool, progress: bool, seed: int) -> tuple[Embedding, dict]:
    """``embed`` of the last hidden layer (``relu7``) and of pixels on
    ``dataset``, PCA and t-SNE at perplexity 30 (1000 iterations; ``quick``:
    200 images drawn with ``seed``, 500 iterations). Extra for the page: the
    uint8 images of the thumbnails (``images``, ``image_index``: their indices
    in the set) and the class names."""
    n = len(dataset)
    index = torch.arange(n)
    if quick and n > 200:
        index = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:200].sort().values
    inputs = subject.preprocess(dataset.images[index])
    layer = last_hidden_layer(subject.model, subject.input_shape)
    result = embed(subject.model, inputs, dataset.labels[index], layer,
                   perplexity=min(30.0, (len(index) - 1) / 3), max_iter=500 if quick else 1000, seed=seed,
                   progress=progress)
    drawn = torch.tensor(spread(result.coords["tsne"], THUMBNAILS), dtype=torch.long)
    return result, {"images": dataset.images[index][drawn], "image_index": drawn, "classes": list(dataset.classes)}


def spread(z: Tensor, count: int) -> list[int]:
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


def _too_few(subject, dataset) -> str | None:
    """The maps need at least 3 images (``embed``) and a layer to map."""
    n = len(dataset)
    if n < 3:
        return f"embedding needs at least 3 images to map; this dataset has {n}"
    try:
        last_hidden_layer(subject.model, subject.input_shape)
    except ValueError:
        return "embedding needs a model with a hidden layer before its output; this one has none it can name"
    return None


ANALYSIS = Analysis(
    name="embedding", group="toolbox", order=20, demo=True, result=Embedding, run=run, check=_too_few,
    description="PCA and t-SNE of a layer's features, coloured by class",
    claims=("classes separate better in the last hidden layer's 2-D maps than in the pixels' (leave-one-out "
            "k-NN accuracy per map)",
            "classes form tighter clusters in the layer's features than in pixels (silhouette score)"))
