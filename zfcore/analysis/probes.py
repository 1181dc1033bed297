"""The paper's Table 7 ("feature analysis"): a linear classifier trained on the
features of each layer in turn, scored on held-out images. The accuracy rising
with depth says that the upper layers hold the more discriminative features.

Choices the paper leaves open (it reports a linear SVM and a softmax on
Caltech-101/256 and PASCAL features of layers 1-7, without details):

* **Features.** A convolutional layer's maps ``[C, H, W]`` are pooled to a
  ``grid x grid`` grid (adaptive max pooling by default, ``pool="avg"`` for the
  mean; ``grid=2``), so every layer gives ``C * grid^2`` numbers whatever its
  resolution and the classifier sees a few hundred features per layer rather
  than conv1's ~20,000. A layer with another shape (fc) is flattened as it is.
  A map smaller than the grid is pooled to its own size.
* **Standardization.** Each feature is centred and divided by its standard
  deviation over the *training* images (a constant feature stays 0); the test
  features get the same shift and scale.
* **Classifier.** Multinomial logistic regression (the paper's "softmax"):
  ``mean cross-entropy + l2 / 2 * ||W||^2`` (bias not penalized), minimized in
  float64 by scikit-learn's ``LogisticRegression`` (L-BFGS, deterministic);
  ``l2 = 1e-3`` is its default ``C = 1`` at 1000 training images
  (``C = 1 / (l2 N)``).

Example:
    >>> loaded = zfcore.load("runs/demo/run/model.pt")
    >>> train, test = embedded_splits(loaded)
    >>> probes = linear_probes(loaded.model, train, test, depth_layers(loaded.model))
    >>> probes.test_accuracy          # one per layer, rising with depth
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from ._render import begin
from ._stream import LayerTap, batches, check_layers, model_device

__all__ = ["Probes", "depth_layers", "embedded_splits", "fit_softmax", "layer_features", "linear_probes", "render"]


@dataclass
class Probes:
    """Per layer (in ``layers`` order): ``train_accuracy[L]`` and
    ``test_accuracy[L]`` (fractions), ``dims`` (feature dimension); the
    settings (``pool``, ``grid``, ``l2``), the image counts, ``chance`` (the
    share of the most frequent test label) and timings in seconds
    (``feature_seconds``: the forwards, ``fit_seconds[L]``: each fit,
    ``seconds``: all of it)."""

    layers: list[str]
    dims: list[int]
    train_accuracy: Tensor
    test_accuracy: Tensor
    pool: str
    grid: int
    l2: float
    train_images: int
    test_images: int
    num_classes: int
    chance: float
    feature_seconds: float
    fit_seconds: list[float] = field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return {"layers": list(self.layers), "dims": list(self.dims), "train_accuracy": self.train_accuracy,
                "test_accuracy": self.test_accuracy, "pool": self.pool, "grid": self.grid, "l2": self.l2,
                "train_images": self.train_images, "test_images": self.test_images,
                "num_classes": self.num_classes, "chance": self.chance, "feature_seconds": self.feature_seconds,
                "fit_seconds": list(self.fit_seconds), "seconds": self.seconds}

    @classmethod
    def from_dict(cls, d: dict) -> Probes:
        return cls(**{name: d[name] for name in cls.__dataclass_fields__})


def depth_layers(model: nn.Module) -> list[str]:
    """The layers to probe, in forward order: every ``nn.ReLU`` (relu1 ... relu7
    for the paper's models: each layer's rectified output), or every Conv2d and
    Linear but the last if the model has no ReLU module."""
    relus = [name for name, module in model.named_modules() if isinstance(module, nn.ReLU)]
    if relus:
        return relus
    return [name for name, module in model.named_modules() if isinstance(module, nn.Conv2d | nn.Linear)][:-1]


def embedded_splits(loaded, train_per_class: int = 100, test_per_class: int = 100):
    """Probe data for a model trained on the embedded data: the first
    ``train_per_class`` images per class of its run's training split (same seed
    and size) and the first ``test_per_class`` of its validation split, both in
    the model's input space (``loaded.preprocess``), as ``TensorDataset``s."""
    from torch.utils.data import TensorDataset

    from ..data import SyntheticShapes

    for name, value in (("train_per_class", train_per_class), ("test_per_class", test_per_class)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"embedded_splits: {name} must be a positive int (got {value!r})")
    seed, size = int(loaded.config.get("seed", 0)), loaded.input_shape[-1]
    splits = []
    for split, per_class in (("train", train_per_class), ("val", test_per_class)):
        data = SyntheticShapes(split, seed=seed, size=size, per_class=per_class)
        splits.append(TensorDataset(loaded.preprocess(data.images), data.labels))
    return tuple(splits)


def _check_positive(value, name: str, caller: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{caller}: {name} must be a positive int (got {value!r})")


def _pooled(output: Tensor, pool: str, grid: int) -> Tensor:
    """One layer's features ``[N, D]``: maps pooled to the grid, others flattened."""
    if output.dim() == 4:
        size = (min(grid, output.shape[2]), min(grid, output.shape[3]))
        pooling = F.adaptive_max_pool2d if pool == "max" else F.adaptive_avg_pool2d
        output = pooling(output, size)
    return output.flatten(1)


@torch.no_grad()
def layer_features(model: nn.Module, dataset, layers: Sequence[str] | str, *, pool: str = "max", grid: int = 2,
                   batch_size: int = 64, progress: bool = True, desc: str = "features"
                   ) -> tuple[dict[str, Tensor], Tensor]:
    """The probe features of every image of ``dataset`` (items ``(x, label)``,
    ``x`` in the model's input space) at each layer, from one forward per batch:
    ``({layer: Tensor[N, D] float32}, labels Tensor[N] int64)`` (see the module
    docstring for the pooling)."""
    layers = check_layers(model, layers, "linear_probes")
    if pool not in ("max", "avg"):
        raise ValueError(f"linear_probes: pool must be 'max' or 'avg' (got {pool!r})")
    _check_positive(grid, "grid", "linear_probes")
    _check_positive(batch_size, "batch_size", "linear_probes")
    n = len(dataset)
    if n == 0:
        raise ValueError("linear_probes: a dataset is empty")
    device = model_device(model)
    parts: dict[str, list[Tensor]] = {name: [] for name in layers}
    labels: list[Tensor] = []
    was_training = model.training
    model.eval()
    bar = tqdm(total=n, desc=desc, unit="img", disable=not progress, leave=False)
    try:
        with LayerTap(model, layers, reduce=lambda out: _pooled(out, pool, grid).float().cpu()) as tap:
            for images, batch_labels, _indices in batches(dataset, list(range(n)), batch_size):
                if batch_labels is None:
                    raise ValueError("linear_probes: dataset items must be (image, label) pairs")
                outputs = tap(images.float().to(device))
                for name in layers:
                    parts[name].append(outputs[name])
                labels.append(torch.as_tensor(batch_labels).long().cpu())
                bar.update(len(images))
    finally:
        bar.close()
        model.train(was_training)
    return {name: torch.cat(parts[name]) for name in layers}, torch.cat(labels)


def fit_softmax(features: Tensor, labels: Tensor, num_classes: int, *, l2: float = 1e-3,
                max_iter: int = 200) -> tuple[Tensor, Tensor]:
    """Multinomial logistic regression on ``features[N, D]`` and ``labels[N]``:
    the minimizer ``(weight[K, D], bias[K])`` (float64) of ``mean cross-entropy
    + l2 / 2 * ||weight||^2`` (scikit-learn's ``LogisticRegression``, L-BFGS).
    A class absent from ``labels`` gets bias ``-inf``."""
    if not isinstance(features, Tensor) or features.dim() != 2:
        got = list(features.shape) if isinstance(features, Tensor) else type(features).__name__
        raise ValueError(f"fit_softmax: features must be a Tensor[N, D] (got {got})")
    if not isinstance(labels, Tensor) or labels.shape != features.shape[:1]:
        raise ValueError(f"fit_softmax: labels must be a Tensor[N] with N = {features.shape[0]}")
    if not isinstance(l2, int | float) or isinstance(l2, bool) or not l2 >= 0:
        raise ValueError(f"fit_softmax: l2 must be a number >= 0 (got {l2!r})")
    _check_positive(max_iter, "max_iter", "fit_softmax")
    _check_positive(num_classes, "num_classes", "fit_softmax")
    labels = labels.long()
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"fit_softmax: labels must lie in [0, {num_classes}) (got {int(labels.min())}.."
                         f"{int(labels.max())})")
    from sklearn.exceptions import ConvergenceWarning  # imported here: only the probes need scikit-learn
    from sklearn.linear_model import LogisticRegression

    x = features.double().numpy()
    present = torch.unique(labels)
    weight = torch.zeros(num_classes, x.shape[1], dtype=torch.float64)
    bias = torch.full((num_classes,), -math.inf, dtype=torch.float64)  # a class never seen is never predicted
    if len(present) == 1:
        bias[present] = 0.0
        return weight, bias
    # scikit-learn minimizes C * sum(loss) + ||W||^2 / 2, i.e. mean(loss) + ||W||^2 / (2 C N): C = 1 / (l2 N).
    c = 1.0 / (l2 * len(x)) if l2 > 0 else math.inf
    clf = LogisticRegression(C=c, solver="lbfgs", max_iter=max_iter, tol=1e-10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=ConvergenceWarning)
        clf.fit(x, labels.numpy())
    coef, intercept = torch.from_numpy(clf.coef_).double(), torch.from_numpy(clf.intercept_).double()
    rows = torch.as_tensor(clf.classes_)
    if len(rows) == 2:  # a binary fit gives one row (class 1 against class 0): logits (0, w x + b)
        weight[rows[1]], bias[rows[0]], bias[rows[1]] = coef[0], 0.0, intercept[0]
    else:
        weight[rows], bias[rows] = coef, intercept
    return weight, bias


def _accuracy(features: Tensor, labels: Tensor, weight: Tensor, bias: Tensor) -> float:
    return float(((features.double() @ weight.T + bias).argmax(1) == labels).double().mean())


def linear_probes(model: nn.Module, train_data, test_data, layers: Sequence[str] | str, *, pool: str = "max",
                  grid: int = 2, l2: float = 1e-3, batch_size: int = 64, max_iter: int = 200,
                  progress: bool = True) -> Probes:
    """Table 7 of the paper: for each layer, a softmax classifier trained on the
    layer's (pooled, standardized) features of ``train_data`` and scored on
    ``test_data``.

    Args:
        model: the network (put in eval mode for the forwards, then restored).
        train_data, test_data: datasets of ``(x, label)``, ``x`` a
            ``Tensor[3, H, W]`` in the model's input space (``embedded_splits``).
        layers: layer names in ``model.named_modules()`` (``depth_layers(model)``
            for relu1 ... relu7).
        pool: ``"max"`` or ``"avg"``: how a conv layer's maps are pooled.
        grid: maps are pooled to ``grid x grid`` cells.
        l2: the weight penalty of the classifier.
        batch_size: images per forward.
        max_iter: L-BFGS iterations per layer.
        progress: show tqdm bars.

    Returns:
        ``Probes``. Paper section 5.2, Table 7.

    Example:
        >>> probes = linear_probes(model, train, test, ["relu1", "relu7"])
        >>> probes.test_accuracy[-1] > probes.test_accuracy[0]
    """
    start = time.perf_counter()
    layers = check_layers(model, layers, "linear_probes")
    if not isinstance(l2, int | float) or isinstance(l2, bool) or not l2 >= 0:
        raise ValueError(f"linear_probes: l2 must be a number >= 0 (got {l2!r})")
    _check_positive(max_iter, "max_iter", "linear_probes")
    train, train_labels = layer_features(model, train_data, layers, pool=pool, grid=grid, batch_size=batch_size,
                                         progress=progress, desc="probe features (train)")
    test, test_labels = layer_features(model, test_data, layers, pool=pool, grid=grid, batch_size=batch_size,
                                       progress=progress, desc="probe features (test)")
    if int(train_labels.min()) < 0 or int(test_labels.min()) < 0:
        raise ValueError("linear_probes: labels must be >= 0")
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    feature_seconds = time.perf_counter() - start
    dims, train_accuracy, test_accuracy, fit_seconds = [], [], [], []
    for name in tqdm(layers, desc="linear probes", unit="layer", disable=not progress, leave=False):
        began = time.perf_counter()
        mean = train[name].double().mean(0)
        std = train[name].double().std(0, unbiased=False)
        std = torch.where(std > 0, std, torch.ones_like(std))
        xtrain, xtest = (train[name].double() - mean) / std, (test[name].double() - mean) / std
        weight, bias = fit_softmax(xtrain, train_labels, num_classes, l2=l2, max_iter=max_iter)
        dims.append(int(xtrain.shape[1]))
        train_accuracy.append(_accuracy(xtrain, train_labels, weight, bias))
        test_accuracy.append(_accuracy(xtest, test_labels, weight, bias))
        fit_seconds.append(time.perf_counter() - began)
    chance = float(torch.bincount(test_labels).max()) / len(test_labels)
    return Probes(layers=layers, dims=dims, train_accuracy=torch.tensor(train_accuracy),
                  test_accuracy=torch.tensor(test_accuracy), pool=pool, grid=grid, l2=float(l2),
                  train_images=len(train_labels), test_images=len(test_labels), num_classes=num_classes,
                  chance=chance, feature_seconds=feature_seconds, fit_seconds=fit_seconds,
                  seconds=time.perf_counter() - start)


WIDE_MARGIN = 0.10  # "by a wide margin": the top hidden layer at least 10 points above layer 1


def render(result: Probes, assets: Path) -> dict:
    """The report section of ``linear_probes``: accuracy against depth (figure
    ``probes_accuracy.png``), a table per layer, and the paper's claim checked
    on the numbers."""
    plt, result, assets = begin(result, Probes, assets)
    train = [float(a) for a in result.train_accuracy]
    test = [float(a) for a in result.test_accuracy]
    positions = list(range(len(result.layers)))
    fig, ax = plt.subplots(figsize=(max(4.0, 0.8 * len(positions) + 2), 3.2), dpi=120)
    ax.plot(positions, [100 * a for a in test], "o-", label="test (held out)")
    ax.plot(positions, [100 * a for a in train], "s--", alpha=0.7, label="train")
    ax.axhline(100 * result.chance, color="grey", linestyle=":", label="chance")
    ax.set_xticks(positions, result.layers, rotation=30)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title("Linear probe accuracy by layer")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(assets / "probes_accuracy.png")
    plt.close(fig)

    pooled = f"adaptive {result.pool} pooling to {result.grid}x{result.grid}"
    rows = [[name, dim, round(100 * tr, 1), round(100 * te, 1)]
            for name, dim, tr, te in zip(result.layers, result.dims, train, test, strict=True)]
    claims = []
    if len(test) >= 2:
        gain = test[-1] - test[0]
        claims.append({
            "claim": f"The top probed layer's features separate the classes far better than the first's "
                     f"(test accuracy at least {100 * WIDE_MARGIN:.0f} points higher)",
            "holds": gain >= WIDE_MARGIN,
            "detail": f"{result.layers[0]}: {100 * test[0]:.1f}%, {result.layers[-1]}: {100 * test[-1]:.1f}% "
                      f"({100 * gain:+.1f} points)"})
        drops = [f"{result.layers[i]} {100 * test[i]:.1f}% -> {result.layers[i + 1]} {100 * test[i + 1]:.1f}%"
                 for i in range(len(test) - 1) if test[i + 1] < test[i]]
        claims.append({
            "claim": "Test accuracy rises with depth at every step (Table 7)",
            "holds": not drops,
            "detail": "non-decreasing at every layer" if not drops else "drops: " + "; ".join(drops)})
    return {
        "title": "Feature analysis: linear probes by layer (Table 7)",
        "intro": (f"A softmax classifier (L2 penalty {result.l2:g}) trained on each layer's features of "
                  f"{result.train_images} training images and scored on {result.test_images} held-out images; "
                  f"conv maps reduced by {pooled}, every feature standardized on the training images. "
                  f"Took {result.seconds:.1f} s ({result.feature_seconds:.1f} s of forwards)."),
        "figures": [{"file": "probes_accuracy.png",
                     "caption": "Train and held-out test accuracy of a linear classifier on each layer's features; "
                                "the dotted line is the most frequent class's share."}],
        "tables": [{"caption": "Linear probe accuracy per layer",
                    "header": ["layer", "features", "train accuracy (%)", "test accuracy (%)"], "rows": rows}],
        "claims": claims,
    }
