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
    >>> subject = zfcore.load("runs/demo/run/model.pt")
    >>> train, test = probe_splits(subject, embedded_dataset(subject, train_per_class=100))
    >>> probes = linear_probes(subject.model, train, test, depth_layers(subject.model))
    >>> probes.test_accuracy          # one per layer, rising with depth
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import TensorDataset
from tqdm import tqdm

from ._args import (LayerTap, check_choice, check_dataset, check_layers, check_positive_int, eval_mode, first_per_class,
                    in_sequence, main_path, model_device)
from ._stream import batches
from .registry import Analysis
from .result import Result

__all__ = ["ANALYSIS", "WIDE_MARGIN", "Probes", "depth_layers", "fit_softmax", "layer_features", "linear_probes",
           "probe_splits", "run"]


@dataclass
class Probes(Result):
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


def depth_layers(model: nn.Module, input_shape: Sequence[int] | None = None) -> list[str]:
    """The layers to probe, in forward order: every ``nn.ReLU`` when they run
    in a chain of ``nn.Sequential`` layers (relu1 ... relu7 for the paper's
    models: each layer's rectified output; a VGG's or AlexNet's ReLUs). For any
    other model (a ResNet, whose blocks run their ReLU twice; a ``.pt2``
    program) of ``input_shape = (C, H, W)``: the rectified outputs on its main
    path (``_args.main_path``: a ResNet's stem ReLU and each block's output),
    or, where none is rectified, every layer of the main path but the output.
    Without ``input_shape``: every ``nn.ReLU`` (right when each runs once),
    else every Conv2d and Linear but the last."""
    relus = [name for name, module in model.named_modules() if isinstance(module, nn.ReLU)]
    if relus and all(in_sequence(model, name) for name in relus):
        return relus
    if input_shape is not None:
        path = [layer for layer in main_path(model, input_shape) if not layer.output]
        return [layer.name for layer in path if layer.relu] or [layer.name for layer in path]
    if relus:
        return relus
    return [name for name, module in model.named_modules() if isinstance(module, nn.Conv2d | nn.Linear)][:-1]


def probe_splits(subject, dataset, train_per_class: int = 100, test_per_class: int = 100):
    """Probe data from ``dataset`` (a ``zfcore.load.Dataset`` with a ``train``
    split): the first ``train_per_class`` images per class of ``dataset.train``
    and the first ``test_per_class`` of ``dataset`` itself, both in the model's
    input space (``subject.preprocess``), as ``TensorDataset``s ``(train, test)``."""
    check_positive_int(train_per_class, "train_per_class", "probe_splits")
    check_positive_int(test_per_class, "test_per_class", "probe_splits")
    if getattr(dataset, "train", None) is None:
        raise ValueError("probe_splits: dataset must carry a training split (dataset.train) to fit the probes on")
    splits = []
    for data, per_class in ((dataset.train, train_per_class), (dataset, test_per_class)):
        chosen = first_per_class(data.labels, per_class, len(data.classes))
        splits.append(TensorDataset(subject.preprocess(data.images[chosen]), data.labels[chosen]))
    return tuple(splits)


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
    check_choice(pool, ("max", "avg"), "pool", "linear_probes")
    check_positive_int(grid, "grid", "linear_probes")
    check_positive_int(batch_size, "batch_size", "linear_probes")
    n = check_dataset(dataset, "linear_probes")
    device = model_device(model)
    parts: dict[str, list[Tensor]] = {name: [] for name in layers}
    labels: list[Tensor] = []
    bar = tqdm(total=n, desc=desc, unit="img", disable=not progress, leave=False)
    try:
        pooled = LayerTap(model, layers, reduce=lambda out: _pooled(out, pool, grid).float().cpu())
        with eval_mode(model), pooled as tap:
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
    check_positive_int(max_iter, "max_iter", "fit_softmax")
    check_positive_int(num_classes, "num_classes", "fit_softmax")
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
            ``Tensor[3, H, W]`` in the model's input space (``probe_splits``).
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
    check_positive_int(max_iter, "max_iter", "linear_probes")
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


def run(subject, dataset, *, quick: bool, progress: bool, seed: int) -> tuple[Probes, dict]:
    """Table 7 on ``dataset``: ``linear_probes`` of every ReLU
    (``depth_layers``), fitted on the first 100 images per class of
    ``dataset.train`` (``quick``: 20) and scored on the first 100 per class of
    ``dataset`` (``quick``: 20). ``seed`` is unused (the fit is deterministic)."""
    per_class = 20 if quick else 100
    train, test = probe_splits(subject, dataset, per_class, per_class)
    return linear_probes(subject.model, train, test, depth_layers(subject.model, subject.input_shape),
                         progress=progress), {}


ANALYSIS = Analysis(
    name="probes", group="paper", order=40, demo=True, result=Probes, run=run,
    description="linear probes per layer (Table 7)",
    needs=frozenset({"subject", "labels", "train split"}),
    claims=("the top probed layer's features separate the classes far better than the first's",
            "test accuracy rises with depth at every step"))
