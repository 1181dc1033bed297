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
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from ._render import begin
from ._stream import LayerTap, check_layers, model_device

__all__ = ["Neighbours", "features", "nearest_neighbours", "last_hidden_layer", "shown_queries", "display_images",
           "analyze_embedded", "render"]

METRICS = ("cosine", "euclidean")
_QUERY_BLOCK = 1024  # query rows of the distance matrix held at once


@dataclass
class Neighbours:
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

    def as_dict(self) -> dict:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, d: dict) -> "Neighbours":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__})

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


def last_hidden_layer(model: nn.Module) -> str:
    """The model's last hidden representation: the ReLU right after the
    penultimate ``nn.Linear`` (``relu7`` in ZFNet), else that ``Linear``; with a
    single ``Linear``, the module run just before it (e.g. ``flatten``)."""
    names = [name for name, _ in model.named_modules() if name]
    modules = dict(model.named_modules())
    linears = [i for i, name in enumerate(names) if isinstance(modules[name], nn.Linear)]
    if len(linears) >= 2:
        i = linears[-2]
        after = names[i + 1] if i + 1 < len(names) else None
        return after if after is not None and isinstance(modules[after], nn.ReLU) else names[i]
    if len(linears) == 1 and linears[0] > 0:
        return names[linears[0] - 1]
    raise ValueError("last_hidden_layer: the model has no nn.Linear with a layer before it; name a layer")


def _check_images(images, caller: str) -> None:
    if not isinstance(images, Tensor) or images.dim() != 4 or not images.is_floating_point():
        got = f"{images.dtype} {list(images.shape)}" if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"{caller}: images must be a float Tensor[N, C, H, W] in the model's input space (got {got})")


def _check_labels(labels, n: int, caller: str) -> None:
    integer = isinstance(labels, Tensor) and not labels.is_floating_point() and labels.dtype != torch.bool
    if not integer or labels.shape != (n,):
        got = f"{labels.dtype} {list(labels.shape)}" if isinstance(labels, Tensor) else type(labels).__name__
        raise ValueError(f"{caller}: labels must be an integer Tensor[{n}] of class indices (got {got})")
    if n and int(labels.min()) < 0:
        raise ValueError(f"{caller}: labels must be non-negative class indices (got {int(labels.min())})")


def _check_positive(value, name: str, caller: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{caller}: {name} must be a positive int (got {value!r})")


def _layer_features(model: nn.Module, images: Tensor, layer: str, batch_size: int, progress: bool,
                    caller: str) -> Tensor:
    device = model_device(model)
    was_training = model.training
    model.eval()
    chunks = []
    try:
        with LayerTap(model, [layer]) as tap:
            for start in tqdm(range(0, len(images), batch_size), desc=f"{caller}: {layer}", unit="batch",
                              disable=not progress):
                chunks.append(tap(images[start:start + batch_size].to(device))[layer].flatten(1))
    finally:
        model.train(was_training)
    if not chunks:
        raise ValueError(f"{caller}: images is empty")
    return torch.cat(chunks)


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
    _check_images(images, "features")
    _check_positive(batch_size, "batch_size", "features")
    return _layer_features(model, images, layer, batch_size, progress, "features")


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
    _check_images(images, caller)
    n = len(images)
    _check_labels(labels, n, caller)
    if metric not in METRICS:
        raise ValueError(f"{caller}: metric must be 'cosine' or 'euclidean' (got {metric!r})")
    _check_positive(k, "k", caller)
    if k >= n:
        raise ValueError(f"{caller}: k must be less than the number of images, {n} (got {k}); a query is not "
                         f"its own neighbour")
    _check_positive(batch_size, "batch_size", caller)
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
    feats = _layer_features(model, images, layer, batch_size, progress, caller)
    if not torch.isfinite(feats).all():
        raise ValueError(f"{caller}: the features of layer {layer!r} contain NaN or inf")
    device = feats.device
    pixels = images.to(device).flatten(1)
    if not torch.isfinite(pixels).all():
        raise ValueError(f"{caller}: images contain NaN or inf")
    q = queries.to(device)
    feature_index, feature_distance = _knn(feats, q, k, metric)
    pixel_index, pixel_distance = _knn(pixels, q, k, metric)
    labels = labels.long().cpu()
    queries = queries.cpu()
    own = labels[queries][:, None]
    return Neighbours(layer, metric, k, labels, queries, feature_index, feature_distance, pixel_index,
                      pixel_distance, float((labels[feature_index] == own).double().mean()),
                      float((labels[pixel_index] == own).double().mean()))


def analyze_embedded(loaded, *, quick: bool, progress: bool, seed: int) -> tuple[Neighbours, dict]:
    """``nearest_neighbours`` of the last hidden layer (``relu7``) on the run's
    embedded validation images, cosine, ``k = 5``: every image a query;
    ``quick``: 200 images drawn with ``seed``. Extra for ``render``: the uint8
    images its figure draws (``images``, ``image_index``: their indices in the
    set) and the class names."""
    from ..analyze import _embedded_val

    base = _embedded_val(loaded).base
    n = len(base.labels)
    index = torch.arange(n)
    if quick and n > 200:
        generator = torch.Generator().manual_seed(seed)
        index = torch.randperm(n, generator=generator)[:200].sort().values
    images = loaded.preprocess(base.images[index])
    result = nearest_neighbours(loaded.model, images, base.labels[index], last_hidden_layer(loaded.model),
                                k=5, metric="cosine", progress=progress)
    rows = shown_queries(result)
    drawn = torch.cat([result.queries[rows], result.feature_index[rows].flatten(),
                       result.pixel_index[rows].flatten()]).unique()
    return result, {"images": base.images[index][drawn], "image_index": drawn, "classes": list(loaded.classes)}


def display_images(images: Tensor, image_index: Tensor | None, n: int) -> Tensor:
    """uint8 ``[n, 3, H, W]``: ``images`` as they are, or (with ``image_index``)
    placed at those indices of the set, black elsewhere (a saved result keeps
    only the images its figures draw)."""
    if image_index is None:
        return images
    if image_index.shape != (len(images),) or (len(image_index) and int(image_index.max()) >= n):
        raise ValueError(f"render: image_index must be a LongTensor[{len(images)}] of indices below {n}")
    full = torch.zeros((n, *images.shape[1:]), dtype=images.dtype)
    full[image_index.long()] = images
    return full


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


_FRAME = {None: (255, 255, 255), True: (40, 160, 40), False: (220, 30, 30)}


def _mosaic(result: Neighbours, images: Tensor, rows: list[int], name) -> tuple[Tensor, list]:
    """One uint8 ``[H, W, 3]`` picture of the rows of ``rows`` (query, feature
    neighbours, a gap, query, pixel neighbours; each image framed by whether it
    has the query's class) and the ``(x, y, text)`` captions above the cells
    (``name``: class index -> display name)."""
    _, _, h, w = images.shape
    frame, label_space, gap = max(2, h // 20), 14, w // 2
    cell_h, cell_w = h + 2 * frame + label_space, w + 2 * frame
    k = result.k
    width = (2 * k + 2) * cell_w + gap
    canvas = torch.full((len(rows) * cell_h + label_space, width, 3), 255, dtype=torch.uint8)
    texts = [(cell_w * (1 + k / 2), label_space - 2, f"{result.layer} features"),
             (cell_w * (k + 1 + 1 + k / 2) + gap, label_space - 2, "pixels")]
    for r, row in enumerate(rows):
        query = int(result.queries[row])
        own = int(result.labels[query])
        cells = [(query, name(own), None)]
        cells += [(int(j), f"{float(d):.3g}", int(result.labels[j]) == own)
                  for j, d in zip(result.feature_index[row], result.feature_distance[row])]
        cells += [(query, name(own), None)]
        cells += [(int(j), f"{float(d):.3g}", int(result.labels[j]) == own)
                  for j, d in zip(result.pixel_index[row], result.pixel_distance[row])]
        top = label_space + r * cell_h + label_space
        for c, (index, text, same) in enumerate(cells):
            left = c * cell_w + (gap if c > k else 0)
            canvas[top:top + h + 2 * frame, left:left + cell_w] = torch.tensor(_FRAME[same], dtype=torch.uint8)
            canvas[top + frame:top + frame + h, left + frame:left + frame + w] = images[index].permute(1, 2, 0)
            texts.append((left + cell_w / 2, top - 1, text))
    return canvas, texts


def render(result: "Neighbours | dict", assets: Path, *, images: Tensor | None = None,
           image_index: Tensor | None = None, classes: Sequence[str] | None = None) -> dict:
    """The neighbours as PNGs in ``assets``: with ``images`` (uint8
    ``[N, 3, H, W]``, the set the result indexes), rows of a query and its
    neighbours in feature space beside those in pixel space (8 queries, one
    per class first; a neighbour of another class framed red, of the query's
    green; ``image_index``: the set's indices of ``images`` when they are
    only those drawn, as ``analyze_embedded`` gives); the share of same-class neighbours per class as bars; a table;
    the claim that feature neighbours share the query's class more often than
    pixel neighbours."""
    plt, result, assets = begin(result, Neighbours, assets)
    names = [str(c) for c in classes] if classes is not None else None

    def name(label: int) -> str:
        return names[label] if names is not None and 0 <= label < len(names) else str(label)

    figures = []
    k = result.k
    if images is not None and len(result.queries):
        images = display_images(images, image_index, len(result.labels))
        rows = shown_queries(result)
        mosaic, texts = _mosaic(result, images, rows, name)
        height, width = mosaic.shape[:2]
        fig = plt.figure(figsize=(width / 55, height / 55))
        ax = fig.add_axes((0, 0, 1, 1))
        ax.imshow(mosaic.numpy(), interpolation="nearest")
        for x, y, text in texts:
            ax.text(x, y, text, ha="center", va="bottom", fontsize=7)
        ax.set_axis_off()
        fig.savefig(assets / "neighbours_rows.png", dpi=80)
        plt.close(fig)
        figures.append({"file": "neighbours_rows.png",
                        "caption": f"Each row: a query (white frame, its class above) and its {k} nearest "
                                   f"images in {result.layer} features ({result.metric} distance above each), "
                                   f"then the query again and its {k} nearest in raw pixels. Green frame: the "
                                   f"query's class; red: another class."})
    feature_same, pixel_same = result.same_class("feature"), result.same_class("pixel")
    query_labels = result.labels[result.queries]
    present = sorted(set(query_labels.tolist()))
    per_class = []
    n = len(result.labels)
    counts = torch.bincount(result.labels, minlength=max(present, default=0) + 1)
    for c in present:
        rows_c = query_labels == c
        per_class.append((c, int(rows_c.sum()), float(feature_same[rows_c].double().mean()),
                          float(pixel_same[rows_c].double().mean()), float(counts[c] - 1) / (n - 1)))
    if per_class:
        fig, ax = plt.subplots(figsize=(max(5.0, 0.7 * len(per_class) + 2), 3.2))
        x = torch.arange(len(per_class)).numpy()
        ax.bar(x - 0.2, [p[2] for p in per_class], 0.4, label=f"{result.layer} features")
        ax.bar(x + 0.2, [p[3] for p in per_class], 0.4, label="pixels")
        ax.scatter(x, [p[4] for p in per_class], marker="_", s=300, color="black", label="chance", zorder=3)
        ax.set_xticks(x)
        ax.set_xticklabels([name(p[0]) for p in per_class], rotation=45, ha="right", fontsize=8)
        ax.set_ylim(0, 1)
        ax.set_ylabel("same-class share")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(assets / "neighbours_share.png", dpi=80)
        plt.close(fig)
        figures.append({"file": "neighbours_share.png",
                        "caption": f"Share of the {k} nearest neighbours that have the query's class, per class "
                                   f"of the query: in {result.layer} features, in pixels, and by chance."})
    table_rows = [[name(c), q, round(f, 3), round(p, 3), round(ch, 3)] for c, q, f, p, ch in per_class]
    chance = result.chance() if len(result.queries) else float("nan")
    table_rows.append(["all", len(result.queries), round(result.feature_share, 3), round(result.pixel_share, 3),
                       round(chance, 3)])
    claims = [{"claim": f"Neighbours in {result.layer} features share the query's class more often than "
                        f"neighbours in pixel space",
               "holds": result.feature_share > result.pixel_share,
               "detail": f"{result.feature_share:.1%} of {result.k} {result.metric} neighbours of "
                         f"{len(result.queries)} queries in {result.layer} against {result.pixel_share:.1%} in "
                         f"pixels (chance {chance:.1%})"},
              {"claim": f"Neighbours in {result.layer} features share the query's class more often than chance",
               "holds": result.feature_share > chance,
               "detail": f"{result.feature_share:.1%} against {chance:.1%} for {result.k} images drawn at random"}]
    return {"title": "Nearest neighbours in feature space",
            "intro": f"For each query image, the {k} nearest other images of the set by {result.metric} distance "
                     f"between {result.layer} feature vectors, and between raw pixels (the model's input). "
                     f"Krizhevsky et al. (2012, Fig. 4) found last-layer neighbours semantic rather than "
                     f"pixel-alike. Ties go to the lower index; a query is never its own neighbour.",
            "figures": figures,
            "tables": [{"caption": "share of neighbours with the query's class",
                        "header": ["query class", "queries", f"{result.layer}", "pixels", "chance"],
                        "rows": table_rows}],
            "claims": claims}
