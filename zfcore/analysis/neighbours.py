"""Nearest neighbours in feature space: the "semantic, not pixel" check.

Krizhevsky et al. (2012, section 6.1, Fig. 4 right) show that images whose
last-hidden-layer (4096-d) feature vectors are close are of the same kind of
object even when their pixels are far apart (different pose, colour,
background); Zeiler & Fergus build on those features. Here every query image
gets the ``k`` images of the set nearest to it in a layer's features, and for
comparison in raw pixel space (the flattened model input); the share of
neighbours that have the query's class, per space, measures how semantic each
space is.

Distances: ``metric="euclidean"`` is ``||a - b||``; ``metric="cosine"`` is
``1 - a.b / (||a|| ||b||)`` (in ``[0, 2]``).

Where the definition is silent:

* a query's own image is never its neighbour (another image with identical
  features can be); the neighbours are the other ``N - 1`` images;
* ties are broken by the lower index (a stable sort of the distances);
* distances are computed in float64, batched over queries, each pair by the
  same arithmetic (``torch.cdist`` without its matrix-product shortcut; the
  cosine distance as ``|a/|a| - b/|b||^2 / 2``), so identical images or
  features are at exactly the same distance and tie; equal distances of
  different vectors may still differ by rounding;
* a zero feature vector has cosine distance 1 to every other vector (its
  direction is undefined; it is treated as orthogonal to all);
* "pixels" are the model's input (mean-subtracted and scaled as the model sees
  them), flattened;
* the default layer (``last_hidden_layer``) is the output of the last hidden
  fully connected layer after its ReLU (``relu7``, the paper's fc7 features),
  falling back to the penultimate ``Linear`` itself, or to the input of the
  only ``Linear``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._args import (check_choice, check_images, check_labels, check_layers, check_positive_int, layer_features,
                    main_path)
from .registry import Analysis
from .result import Result

__all__ = ["ANALYSIS", "Neighbours", "features", "last_hidden_layer", "nearest_neighbours", "run", "shown_queries"]

METRICS = ("cosine", "euclidean")
_QUERY_BLOCK = 1024  # query rows of the distance matrix held at once


@dataclass
class Neighbours(Result):
    """The ``k`` nearest neighbours of ``Q`` query images among ``N``.

    ``queries[Q]``: the queries' indices in the set; ``feature_index[Q, k]``
    and ``feature_distance[Q, k]``: the neighbours in ``layer``'s features,
    nearest first; ``pixel_index`` / ``pixel_distance``: the same in pixel
    space; ``labels[N]``; ``feature_share`` / ``pixel_share``: the share of all
    ``Q * k`` neighbours that have their query's class, per space."""

    layer: str
    metric: str
    k: int
    labels: Tensor
    queries: Tensor
    feature_index: Tensor
    feature_distance: Tensor
    pixel_index: Tensor
    pixel_distance: Tensor
    feature_share: float
    pixel_share: float

    def same_class(self, space: str) -> Tensor:
        """``bool[Q, k]``: whether each neighbour in ``space`` (``"feature"`` or
        ``"pixel"``) has its query's class."""
        index = self.feature_index if space == "feature" else self.pixel_index
        return self.labels[index] == self.labels[self.queries][:, None]

    def chance(self) -> float:
        """The share of same-class neighbours expected of ``k`` other images
        drawn at random: per query, (images of its class - 1) / (N - 1), averaged."""
        n = len(self.labels)
        counts = torch.bincount(self.labels, minlength=int(self.labels.max()) + 1)
        return float(((counts[self.labels[self.queries]] - 1).double() / (n - 1)).mean())


def last_hidden_layer(model: nn.Module, input_shape: Sequence[int] | None = None) -> str:
    """The model's last hidden representation: the ReLU right after the
    penultimate ``nn.Linear`` (``relu7`` in ZFNet), else that ``Linear``; with a
    single ``Linear``, the module run just before it (e.g. ``flatten``, a
    ResNet's ``avgpool``). A model without ``nn.Linear`` modules (a ``.pt2``
    program) of ``input_shape = (C, H, W)``: the last layer on its main path
    before the output (``_args.main_path``; a ResNet's ``avgpool``)."""
    names = [name for name, _ in model.named_modules() if name]
    modules = dict(model.named_modules())
    linears = [i for i, name in enumerate(names) if isinstance(modules[name], nn.Linear)]
    if len(linears) >= 2:
        i = linears[-2]
        after = names[i + 1] if i + 1 < len(names) else None
        return after if after is not None and isinstance(modules[after], nn.ReLU) else names[i]
    if len(linears) == 1 and linears[0] > 0:
        return names[linears[0] - 1]
    if input_shape is not None:
        path = main_path(model, input_shape)
        if len(path) >= 2 and path[-1].output:
            return path[-2].name
    raise ValueError("last_hidden_layer: the model has no nn.Linear with a layer before it; name a layer")


def features(model: nn.Module, images: Tensor, layer: str, *, batch_size: int = 64,
             progress: bool = True) -> Tensor:
    """The output of ``layer`` for each image, flattened.

    Args:
        model: a CNN taking ``Tensor[N, C, H, W]`` (put in eval mode while it
            runs, its mode restored after).
        images: ``Tensor[N, C, H, W]`` in the model's input space.
        layer: a module name of ``model``; the forward stops after it.
        batch_size: images per forward.

    Returns:
        ``Tensor[N, D]`` on the model's device (``D``: the layer's output size per image).

    Example:
        >>> f = features(model, images, "relu7")   # [N, 256] for zfnet_small
    """
    check_layers(model, [layer], "features")
    check_images(images, "features")
    check_positive_int(batch_size, "batch_size", "features")
    return layer_features(model, images, layer, batch_size, progress, "features")


def _distances(q: Tensor, x: Tensor, metric: str) -> Tensor:
    """``[Q, N]`` distances of the rows of ``q`` to those of ``x``, each pair
    by the same arithmetic (``cdist`` without the matrix-product shortcut,
    whose rounding depends on a vector's position and cancels for near
    duplicates): identical vectors are at identical distances."""
    if metric == "euclidean":
        return torch.cdist(q, x, compute_mode="donot_use_mm_for_euclid_dist")
    # 1 - cos(a, b) = |a/|a| - b/|b||^2 / 2 for non-zero a, b; a zero vector is at 1 from all
    d = torch.cdist(F.normalize(q, dim=1), F.normalize(x, dim=1), compute_mode="donot_use_mm_for_euclid_dist")
    zero = (q.abs().amax(1) == 0)[:, None] | (x.abs().amax(1) == 0)[None, :]
    return torch.where(zero, 1.0, d.square() / 2)


def _knn(points: Tensor, queries: Tensor, k: int, metric: str) -> tuple[Tensor, Tensor]:
    """``(index[Q, k], distance[Q, k])`` of the ``k`` nearest other rows of
    ``points[N, D]`` to each ``points[queries]``, nearest first, ties to the lower index."""
    points = points.double()
    index, distance = [], []
    for start in range(0, len(queries), _QUERY_BLOCK):
        rows = queries[start:start + _QUERY_BLOCK]
        d = _distances(points[rows], points, metric)
        d[torch.arange(len(rows), device=d.device), rows] = torch.inf  # a query is not its own neighbour
        d, order = torch.sort(d, dim=1, stable=True)
        index.append(order[:, :k])
        distance.append(d[:, :k])
    return torch.cat(index).cpu(), torch.cat(distance).float().cpu()


def nearest_neighbours(model: nn.Module, images: Tensor, labels: Tensor, layer: str, *,
                       queries: Tensor | Sequence[int] | None = None, k: int = 5, metric: str = "cosine",
                       batch_size: int = 64, progress: bool = True) -> Neighbours:
    """The ``k`` nearest other images of each query, in ``layer``'s features and in pixels.

    Args:
        model: a CNN taking ``Tensor[N, C, H, W]``.
        images: ``Tensor[N, C, H, W]`` in the model's input space (also the pixel space).
        labels: integer ``Tensor[N]`` of class indices.
        layer: the module whose output is the feature vector (see ``last_hidden_layer``).
        queries: indices into ``images`` (``Tensor[Q]`` or a sequence of ints);
            ``None``: every image.
        k: neighbours per query, ``1 <= k < N`` (the query itself is excluded).
        metric: ``"cosine"`` or ``"euclidean"``.
        batch_size: images per forward.

    Returns:
        ``Neighbours`` (indices and distances per space, nearest first, ties to
        the lower index; the share of same-class neighbours per space).

    Example:
        >>> nb = nearest_neighbours(model, x, y, "relu7", k=5)
        >>> nb.feature_share, nb.pixel_share       # semantic vs pixel similarity
    """
    caller = "nearest_neighbours"
    check_layers(model, [layer], caller)
    check_images(images, caller)
    n = len(images)
    check_labels(labels, n, caller)
    check_choice(metric, METRICS, "metric", caller)
    check_positive_int(k, "k", caller)
    if k >= n:
        raise ValueError(f"{caller}: k must be less than the number of images, {n} (got {k}); a query is not "
                         f"its own neighbour")
    check_positive_int(batch_size, "batch_size", caller)
    if queries is None:
        queries = torch.arange(n)
    else:
        if not isinstance(queries, Tensor):
            items = list(queries) if not isinstance(queries, (str, bytes)) else [queries]
            if not all(isinstance(q, int) and not isinstance(q, bool) for q in items):
                raise ValueError(f"{caller}: queries must be None or a sequence of int image indices "
                                 f"(got {queries!r})")
            try:
                queries = torch.as_tensor(items, dtype=torch.long)
            except (TypeError, ValueError, RuntimeError):
                raise ValueError(f"{caller}: queries must be None or a sequence of image indices "
                                 f"(got {type(queries).__name__})") from None
        if queries.dim() != 1 or queries.is_floating_point() or queries.dtype == torch.bool or len(queries) == 0:
            raise ValueError(f"{caller}: queries must be None or a non-empty LongTensor[Q] of image indices "
                             f"(got {queries.dtype} {list(queries.shape)})")
        if int(queries.min()) < 0 or int(queries.max()) >= n:
            raise ValueError(f"{caller}: queries must be indices in [0, {n}) (got {int(queries.min())} .. "
                             f"{int(queries.max())})")
        queries = queries.long()
    feats = layer_features(model, images, layer, batch_size, progress, caller)
    if not torch.isfinite(feats).all():
        raise ValueError(f"{caller}: the features of layer {layer!r} contain NaN or inf")
    device = feats.device
    pixels = images.to(device).flatten(1)
    q = queries.to(device)
    feature_index, feature_distance = _knn(feats, q, k, metric)
    pixel_index, pixel_distance = _knn(pixels, q, k, metric)
    labels = labels.long().cpu()
    queries = queries.cpu()
    own = labels[queries][:, None]
    return Neighbours(layer, metric, k, labels, queries, feature_index, feature_distance, pixel_index,
                      pixel_distance, float((labels[feature_index] == own).double().mean()),
                      float((labels[pixel_index] == own).double().mean()))


def run(subject, dataset, *, quick: bool, progress: bool, seed: int) -> tuple[Neighbours, dict]:
    """``nearest_neighbours`` of the last hidden layer (``relu7``) on
    ``dataset``, cosine, ``k = 5``: every image a query; ``quick``: 200 images
    drawn with ``seed``. Extra for the page: the uint8 images its figure draws
    (``images``, ``image_index``: their indices in the set) and the class names."""
    n = len(dataset)
    index = torch.arange(n)
    if quick and n > 200:
        generator = torch.Generator().manual_seed(seed)
        index = torch.randperm(n, generator=generator)[:200].sort().values
    images = subject.preprocess(dataset.images[index])
    layer = last_hidden_layer(subject.model, subject.input_shape)
    result = nearest_neighbours(subject.model, images, dataset.labels[index], layer, k=5, metric="cosine",
                                progress=progress)
    rows = shown_queries(result)
    drawn = torch.cat([result.queries[rows], result.feature_index[rows].flatten(),
                       result.pixel_index[rows].flatten()]).unique()
    return result, {"images": dataset.images[index][drawn], "image_index": drawn, "classes": list(dataset.classes)}


def shown_queries(result: Neighbours, count: int = 8) -> list[int]:
    """Rows of ``result`` to draw: the first query of each class in class order,
    then the following queries, ``count`` in all."""
    labels = result.labels[result.queries].tolist()
    first = {}
    for row, label in enumerate(labels):
        first.setdefault(label, row)
    rows = [first[c] for c in sorted(first)][:count]
    taken = set(rows)
    rows += [r for r in range(len(labels)) if r not in taken][:count - len(rows)]
    return rows


def _check(subject, dataset) -> str | None:
    try:
        last_hidden_layer(subject.model, subject.input_shape)
    except ValueError:
        return "neighbours needs a model with a hidden layer before its output; this one has none it can name"
    return None


ANALYSIS = Analysis(
    name="neighbours", group="toolbox", order=10, demo=True, result=Neighbours, run=run, check=_check,
    description="nearest neighbours in feature space against pixel space (the lecture's semantic check)",
    claims=("neighbours in the last hidden layer's features share the query's class more often than in pixels, "
            "and more often than chance",))
