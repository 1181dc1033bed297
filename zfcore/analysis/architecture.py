"""The paper's architecture selection (section 4.1, Fig. 6): AlexNet's first
layer (11x11 filters, stride 4) against ZFNet's (7x7, stride 2).

The paper looked at the layer-1 and layer-2 filters and features of AlexNet and
saw a mix of extremely high- and low-frequency filters with little coverage of
the mid frequencies, dead filters, and aliasing artifacts in layer 2 caused by
the large stride; 7x7 filters with stride 2 fixed it. It shows pictures only;
this module turns each observation into a number (the definitions are choices,
stated here and in each function):

* **Frequency coverage** (``frequency_coverage``, from the weights alone): each
  filter's power per radial frequency band of its zero-padded DFT, the layer's
  mid-frequency share and its extreme (mostly low or mostly high frequency)
  filters; defined in ``zfcore.analysis.frequency``, imported here.
* **Dead filters** (``dead_filters``). *Inactive*: the filter's rectified map
  (``ReLU`` of the conv output) is zero at every position of every image of the
  set. *Faint*: the filter's weight RMS ``sqrt(mean(w^2))`` is below
  ``rms_ratio`` (default 0.05) times the median RMS of the layer's filters, a
  scale-free "tiny". *Dead* = inactive or faint.
* **Aliasing of layer 2's input** (``layer_one_aliasing``). Layer 2 reads layer
  1's rectified output sampled every ``s`` pixels (``s`` = conv1's stride:
  ``relu(conv(x))[::s, ::s] = relu(conv(x)[::s, ::s])``). The dense response
  (the same filters, stride 1, the same zero padding) is computed on images;
  its **alias share** is the share of its power above the stride's Nyquist
  frequency ``1/(2s)`` cycles per pixel on either axis (mean removed per map,
  periodic Hann window: ``frequency.alias_energies``), summed over maps and
  images. The same share of the filters' own energy (white-noise input) is
  ``FrequencyCoverage.alias``.
* **Shift variance of layer 2** (``shift_variance``). Without aliasing, the sum
  over positions of a sampled band-limited map does not depend on where the
  samples fall, so the per-map spatial mean of layer 2 (``relu2``) is unchanged
  when the image moves by one pixel. Measured as ``sqrt(sum_i ||g(a_i) -
  g(b_i)||^2 / sum_i ||g(a_i)||^2)`` over images ``i``, ``g`` the vector of
  per-map means, ``a_i`` the image cropped by one pixel at the bottom and right
  and ``b_i`` the crop moved by one pixel (right, and down: both pairs pooled),
  so the two crops see the same content one pixel apart without wrap-around.

``architecture`` trains the demo recipe twice (``conv1="11x4"`` and
``conv1="7x2"``) and computes all of this for both on the validation images of
their run; ``zfcore analyze architecture`` runs it (``run``) into its ``runs``
folder, and its page (``zfcore.report.pages.architecture``) draws Fig. 6's
comparison with the paper's claims checked on the numbers.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from .. import train
from ..load import load, open_dataset
from ..train import train_or_reuse
from ._args import LayerTap, check_dataset, check_layers, check_positive_int, check_seed, eval_mode, model_device
from ._stream import batches
from .frequency import FrequencyCoverage, alias_energies, alias_fraction, frequency_coverage
from .registry import Analysis
from .result import Result

__all__ = ["ANALYSIS", "VARIANTS", "Aliasing", "Architecture", "DeadFilters", "FrequencyCoverage", "ShiftVariance",
           "alias_energies", "alias_fraction", "architecture", "dead_filters", "frequency_coverage",
           "layer_one_aliasing", "measure", "run", "shift_variance"]

VARIANTS = {"alexnet": "11x4", "zfnet": "7x2"}
"""The two first layers compared, as ``TrainConfig.conv1`` values: AlexNet's
11x11 stride 4 and ZFNet's 7x7 stride 2 (run folders ``<name>_conv1``)."""

QUICK_EPOCHS = 8
FULL_EPOCHS = 30  # the demo recipe's


def _conv(model: nn.Module, layer: str, caller: str) -> nn.Conv2d:
    check_layers(model, layer, caller)
    conv = dict(model.named_modules())[layer]
    if not isinstance(conv, nn.Conv2d):
        raise ValueError(f"{caller}: layer {layer!r} is a {type(conv).__name__}, not a Conv2d")
    return conv


def _count(caller: str, dataset, max_images: int | None) -> list[int]:
    size = check_dataset(dataset, caller)
    if max_images is not None:
        check_positive_int(max_images, "max_images", caller)
        size = min(size, max_images)
    return list(range(size))


def _image_batches(model: nn.Module, dataset, indices: list[int], batch_size: int, desc: str,
                   progress: bool) -> Iterator[Tensor]:
    """The images ``dataset[indices]`` as float batches on the model's device, with a tqdm bar."""
    device = model_device(model)
    with tqdm(total=len(indices), desc=desc, unit="img", disable=not progress, leave=False) as bar:
        for images, _labels, _index in batches(dataset, indices, batch_size):
            yield images.float().to(device)
            bar.update(len(images))


# ----------------------------------------------------------------- dead filters


@dataclass
class DeadFilters(Result):
    """Dead filters of one conv layer (``O`` filters).

    Attributes:
        layer: the conv layer.
        rms: ``Tensor[O]`` (float64), each filter's weight RMS ``sqrt(mean(w^2))``.
        zero_fraction: ``Tensor[O]`` (float64), the share of images on which the
            filter's rectified map is zero everywhere.
        images: the number of images.
        rms_ratio: a filter is faint when its RMS is below ``rms_ratio`` times the
            layer's median RMS.
    """

    layer: str
    rms: Tensor
    zero_fraction: Tensor
    images: int
    rms_ratio: float

    @property
    def inactive(self) -> list[int]:
        """Filters whose rectified map is zero on every image."""
        return [int(i) for i in torch.nonzero(self.zero_fraction == 1).flatten()]

    @property
    def faint(self) -> list[int]:
        """Filters whose weight RMS is below ``rms_ratio`` times the layer's median."""
        threshold = self.rms_ratio * float(self.rms.median())
        return [int(i) for i in torch.nonzero(self.rms < threshold).flatten()]

    @property
    def dead(self) -> list[int]:
        """Inactive or faint filters."""
        return sorted(set(self.inactive) | set(self.faint))


@torch.no_grad()
def dead_filters(model: nn.Module, dataset, *, layer: str = "conv1", rms_ratio: float = 0.05,
                 batch_size: int = 64, max_images: int | None = None, progress: bool = True) -> DeadFilters:
    """The dead filters of a conv layer (section 4.1, Fig. 6 a-b): those whose
    rectified output is zero on every image of ``dataset`` (inactive), and those
    whose weights are tiny (faint: RMS below ``rms_ratio`` times the layer's
    median RMS, a scale-free threshold; the paper is silent).

    Args:
        model: the network (evaluated in eval mode, restored after).
        dataset: a map-style Dataset of ``(image, label)``, images
            ``Tensor[3, H, W]`` in the model's input space.
        layer: a Conv2d layer (the rectified map is ``ReLU`` of its output, so no
            ReLU module is needed after it).
        rms_ratio: the faint threshold relative to the median RMS, in [0, 1).
        batch_size: images per forward.
        max_images: use only the first ``max_images`` images (default: all).
        progress: a tqdm bar over the images.

    Returns:
        A ``DeadFilters``.

    Example:
        >>> found = dead_filters(model, val)
        >>> found.inactive, found.faint, found.dead
    """
    caller = "dead_filters"
    conv = _conv(model, layer, caller)
    if isinstance(rms_ratio, bool) or not isinstance(rms_ratio, int | float) or not 0 <= rms_ratio < 1:
        raise ValueError(f"{caller}: rms_ratio must be a number in [0, 1) (got {rms_ratio!r})")
    check_positive_int(batch_size, "batch_size", caller)
    indices = _count(caller, dataset, max_images)
    zeros = torch.zeros(conv.out_channels, dtype=torch.float64)
    with eval_mode(model), LayerTap(model, [layer], reduce=lambda out: ~(out > 0).flatten(2).any(2)) as tap:
        for images in _image_batches(model, dataset, indices, batch_size, "dead filters", progress):
            silent = tap(images)[layer]                                          # [B, O] bool
            zeros += silent.double().sum(0).cpu()
    rms = conv.weight.detach().to("cpu", torch.float64).pow(2).mean(dim=(1, 2, 3)).sqrt()
    return DeadFilters(layer=layer, rms=rms, zero_fraction=zeros / len(indices), images=len(indices),
                       rms_ratio=float(rms_ratio))


# ----------------------------------------------------------------- aliasing


@dataclass
class Aliasing(Result):
    """The alias share of a conv layer's sampled output (``C`` maps).

    Attributes:
        layer: the conv layer.
        stride: its stride (the sampling analysed).
        above: ``Tensor[C]`` (float64), each map's power above Nyquist, summed over images.
        total: ``Tensor[C]`` (float64), each map's total power (mean removed).
        images: the number of images.
    """

    layer: str
    stride: int
    above: Tensor
    total: Tensor
    images: int

    @property
    def per_map(self) -> Tensor:
        return torch.where(self.total > 0, self.above / self.total.clamp_min(1e-300), 0.0)

    @property
    def share(self) -> float:
        """All maps' power above Nyquist over their total power."""
        total = float(self.total.sum())
        return float(self.above.sum()) / total if total > 0 else 0.0


class _Reached(Exception):
    """Raised by ``_layer_input``'s hook: nothing from the layer on is computed."""


@torch.no_grad()
def _layer_input(model: nn.Module, module: nn.Module, x: Tensor, caller: str) -> Tensor:
    """``module``'s input in ``model(x)``; the forward stops there."""
    captured = []

    def hook(_module, inputs):
        captured.append(inputs[0].detach())
        raise _Reached

    handle = module.register_forward_pre_hook(hook)
    try:
        model(x)
    except _Reached:
        pass
    finally:
        handle.remove()
    if not captured:
        raise ValueError(f"{caller}: the layer did not run in the model's forward")
    return captured[0]


@torch.no_grad()
def layer_one_aliasing(model: nn.Module, dataset, *, layer: str = "conv1", stride: int | None = None,
                       batch_size: int = 32, max_images: int | None = 256, progress: bool = True) -> Aliasing:
    """How much of what a strided conv layer passes on is aliased (section 4.1:
    "aliasing artifacts caused by the large stride 4"): the layer's rectified
    response computed densely (its filters and bias at stride 1, its zero
    padding), whose samples at the layer's stride are exactly its output, and
    the share of that response's power above the stride's Nyquist frequency
    (``alias_fraction``; the definition is a choice, see the module docstring).

    Args:
        model: the network (eval mode, restored after).
        dataset: a map-style Dataset of ``(image, label)`` in the model's input space.
        layer: a Conv2d layer with zero padding.
        stride: the sampling analysed (default: the layer's stride, which must be
            the same on both axes).
        batch_size: images per forward.
        max_images: use only the first ``max_images`` images (None: all).
        progress: a tqdm bar over the images.

    Returns:
        An ``Aliasing``.

    Example:
        >>> layer_one_aliasing(model, val).share
    """
    caller = "layer_one_aliasing"
    conv = _conv(model, layer, caller)
    if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        raise ValueError(f"{caller}: layer {layer!r} must use explicit zero padding (got padding "
                         f"{conv.padding!r}, mode {conv.padding_mode!r})")
    if stride is None:
        if conv.stride[0] != conv.stride[1]:
            raise ValueError(f"{caller}: layer {layer!r} has strides {tuple(conv.stride)}; pass stride=")
        stride = conv.stride[0]
    check_positive_int(stride, "stride", caller)
    check_positive_int(batch_size, "batch_size", caller)
    indices = _count(caller, dataset, max_images)
    above = total = None
    with eval_mode(model):
        for images in _image_batches(model, dataset, indices, batch_size, "layer-1 aliasing", progress):
            x = _layer_input(model, conv, images, caller)
            dense = F.relu(F.conv2d(x, conv.weight, conv.bias, stride=1, padding=conv.padding,
                                    dilation=conv.dilation, groups=conv.groups))
            a, t = alias_energies(dense, stride)
            above, total = (a, t) if above is None else (above + a, total + t)
    return Aliasing(layer=layer, stride=int(stride), above=above, total=total, images=len(indices))


@dataclass
class ShiftVariance(Result):
    """The change of a layer's per-map spatial means under a one-pixel shift.

    Attributes:
        layer: the layer.
        change: ``sum_i ||g(a_i) - g(b_i)||^2`` over images and both shift directions.
        norm: ``sum_i ||g(a_i)||^2`` over the same pairs.
        images: the number of images.
    """

    layer: str
    change: float
    norm: float
    images: int

    @property
    def value(self) -> float:
        """``sqrt(change / norm)``: the relative RMS change (0 when the layer is silent)."""
        return math.sqrt(self.change / self.norm) if self.norm > 0 else 0.0


@torch.no_grad()
def shift_variance(model: nn.Module, dataset, *, layer: str = "relu2", batch_size: int = 32,
                   max_images: int | None = 256, progress: bool = True) -> ShiftVariance:
    """How much ``layer``'s per-map spatial means change when the image moves by
    one pixel (an empirical aliasing measure for layer 2: without aliasing they
    would not change; see the module docstring). For each image ``x[3, H, W]``,
    ``a = x[:, :H-1, :W-1]`` is compared with ``x[:, :H-1, 1:]`` (moved right)
    and with ``x[:, 1:, :W-1]`` (moved down); the layers up to ``layer`` must
    accept an ``(H-1) x (W-1)`` input.

    Args:
        model: the network (eval mode, restored after).
        dataset: a map-style Dataset of ``(image, label)`` in the model's input space.
        layer: a layer with spatial output ``[N, C, h, w]`` (default ``relu2``).
        batch_size: images per forward.
        max_images: use only the first ``max_images`` images (None: all).
        progress: a tqdm bar over the images.

    Returns:
        A ``ShiftVariance``; ``.value`` is the relative change.
    """
    caller = "shift_variance"
    check_layers(model, layer, caller)
    check_positive_int(batch_size, "batch_size", caller)
    indices = _count(caller, dataset, max_images)
    change = norm = 0.0

    def means(out: Tensor) -> Tensor:
        if out.dim() != 4:
            raise ValueError(f"{caller}: layer {layer!r} must give spatial maps [N, C, h, w] (got "
                             f"{list(out.shape)})")
        return out.double().mean(dim=(2, 3))

    with eval_mode(model), LayerTap(model, [layer], reduce=means) as tap:
        for x in _image_batches(model, dataset, indices, batch_size, "shift variance", progress):
            if min(x.shape[-2:]) < 2:
                raise ValueError(f"{caller}: images must be at least 2x2 pixels (got {list(x.shape[-2:])})")
            base = tap(x[..., :-1, :-1])[layer]
            for moved in (x[..., :-1, 1:], x[..., 1:, :-1]):
                change += float((tap(moved)[layer] - base).pow(2).sum())
                norm += float(base.pow(2).sum())
    return ShiftVariance(layer=layer, change=change, norm=norm, images=len(indices))


# ----------------------------------------------------------------- the experiment


@dataclass
class Architecture(Result):
    """Fig. 6: the two first layers' measures (``variants``: ``alexnet``, ``zfnet``).

    Attributes:
        variants: the variant names, AlexNet-style first.
        conv1: ``{variant: "KxS"}``, the first layer's kernel and stride as built.
        runs: ``{variant: model file}``.
        weights: ``{variant: Tensor[O, 3, k, k]}``, the first layer's filters.
        frequency: ``{variant: FrequencyCoverage}`` of the first layer.
        dead: ``{variant: DeadFilters}`` of the first layer.
        aliasing: ``{variant: Aliasing}`` of the first layer's sampling (layer 2's input).
        shift: ``{variant: ShiftVariance}`` of layer 2 (``relu2``).
        val_accuracy: ``{variant: float}``, top-1 validation accuracy of the run's
            last epoch (NaN when the file has no history).
        epochs: ``{variant: int}``, epochs trained.
        dataset: what the measures were computed on.
    """

    variants: list[str]
    conv1: dict[str, str]
    runs: dict[str, str]
    weights: dict[str, Tensor]
    frequency: dict[str, FrequencyCoverage]
    dead: dict[str, DeadFilters]
    aliasing: dict[str, Aliasing]
    shift: dict[str, ShiftVariance]
    val_accuracy: dict[str, float]
    epochs: dict[str, int]
    dataset: str


def _run_file(path) -> Path:
    path = Path(path)
    return path / "model.pt" if path.is_dir() else path


def _train_variant(folder: Path, conv1: str, epochs: int, seed: int, progress: bool) -> Path:
    """``folder/model.pt`` of the demo recipe with ``conv1``: reused when finished,
    resumed when interrupted, trained otherwise; a folder holding a run of
    another configuration is an error (``zfcore.train.train_or_reuse``);
    ``zfcore.train.demo_config`` is looked up when called."""
    config = dataclasses.replace(train.demo_config(os.fspath(folder), seed=seed, epochs=epochs, progress=progress),
                                 conv1=conv1)
    train_or_reuse(config, "architecture")
    return folder / "model.pt"


def _check_runs(runs) -> dict[str, Path]:
    if not isinstance(runs, dict) or set(runs) != set(VARIANTS):
        got = sorted(runs) if isinstance(runs, dict) else type(runs).__name__
        raise ValueError(f"architecture: runs must be a dict with the keys {', '.join(VARIANTS)} (run folders or "
                         f"model files; got {got})")
    files = {}
    for name, path in runs.items():
        if not isinstance(path, str | os.PathLike):
            raise ValueError(f"architecture: runs[{name!r}] must be a path (got {type(path).__name__})")
        file = _run_file(path)
        if not file.is_file():
            raise ValueError(f"architecture: runs[{name!r}] = {os.fspath(path)!r} is not a model file or a run "
                             f"folder holding a model.pt")
        files[name] = file
    return files


def measure(loaded, dataset, *, max_images: int | None = 256, progress: bool = True) -> dict:
    """Every measure of one loaded model's first layer (``conv1``) and layer 2
    (``relu2``) on ``dataset``: ``{conv1, weights, frequency, dead, aliasing,
    shift, val_accuracy, epochs}``."""
    model = loaded.model
    conv = _conv(model, "conv1", "architecture")
    kernel, stride = conv.kernel_size[0], conv.stride[0]
    history = [row for row in loaded.history if isinstance(row, dict) and "val_top1_error" in row]
    return {"conv1": f"{kernel}x{stride}", "weights": conv.weight.detach().float().cpu(),
            "frequency": frequency_coverage(conv.weight, stride=stride),
            "dead": dead_filters(model, dataset, progress=progress),
            "aliasing": layer_one_aliasing(model, dataset, max_images=max_images, progress=progress),
            "shift": shift_variance(model, dataset, max_images=max_images, progress=progress),
            "val_accuracy": 1 - float(history[-1]["val_top1_error"]) if history else math.nan,
            "epochs": int(history[-1]["epoch"]) if history and "epoch" in history[-1] else
            int(loaded.config.get("epochs", 0))}


def architecture(out: str | os.PathLike, *, quick: bool = False, seed: int = 0, progress: bool = True,
                 runs: dict | None = None, max_images: int | None = 256) -> Architecture:
    """Section 4.1 / Fig. 6: the same small network (``zfnet_small`` on the
    embedded data, the ``zfcore demo`` recipe ``zfcore.train.demo_config``)
    trained with AlexNet's first layer (``conv1="11x4"``, into
    ``out/alexnet_conv1``) and with ZFNet's (``conv1="7x2"``, ``out/zfnet_conv1``),
    and the measures of both first layers on the validation images.

    A finished run (``model.pt``) is reused, an interrupted one resumed; a run
    folder holding another configuration is an error. 30 epochs each, or 8
    with ``quick``; on 2 idle CPU cores an epoch takes about 2 s (11x4) and
    5.5 s (7x2), after about a minute of generating the embedded data.

    Args:
        out: the folder of the two runs.
        quick: 8 epochs instead of the demo's 30.
        seed: the runs' seed (data, initialization, order).
        progress: progress bars.
        runs: ``{"alexnet": path, "zfnet": path}``, existing runs (folders or
            model files) to measure instead of training.
        max_images: images for the aliasing and shift measures (dead filters use all).

    Returns:
        An ``Architecture``.

    Example:
        >>> result = architecture("runs/architecture", quick=True)
        >>> result.frequency["zfnet"].mid_coverage, result.dead["alexnet"].dead
    """
    if not isinstance(quick, bool):
        raise ValueError(f"architecture: quick must be a bool (got {quick!r})")
    check_seed(seed, "architecture")
    if max_images is not None:
        check_positive_int(max_images, "max_images", "architecture")
    if runs is not None:
        files = _check_runs(runs)
    else:
        if not isinstance(out, str | os.PathLike):
            raise ValueError(f"architecture: out must be a path (got {type(out).__name__})")
        epochs = QUICK_EPOCHS if quick else FULL_EPOCHS
        files = {name: _train_variant(Path(out) / f"{name}_conv1", conv1, epochs, seed, progress)
                 for name, conv1 in VARIANTS.items()}
    measured, description = {}, ""
    for name, file in files.items():
        loaded = load(file)  # measured on its run's validation images (the data its recipe names)
        dataset = open_dataset(loaded, str(loaded.config.get("data", "synthetic")))
        description = f"{len(dataset)} {dataset.description}"
        measured[name] = measure(loaded, dataset, max_images=max_images, progress=progress)
    return Architecture(variants=list(VARIANTS), conv1={k: v["conv1"] for k, v in measured.items()},
                        runs={k: os.fspath(v) for k, v in files.items()},
                        **{key: {k: v[key] for k, v in measured.items()}
                           for key in ("weights", "frequency", "dead", "aliasing", "shift", "val_accuracy", "epochs")},
                        dataset=description)


def run(subject, dataset, *, quick: bool, progress: bool, seed: int, runs: str | Path) -> tuple[Architecture, dict]:
    """``zfcore analyze architecture``: ``architecture`` trained into the folder
    ``runs`` with ``seed``. ``subject`` and ``dataset`` are not used: it trains
    its own two models and measures them on their run's validation images."""
    return architecture(runs, quick=quick, seed=seed, progress=progress), {}


ANALYSIS = Analysis(
    name="architecture", group="paper", order=60, result=Architecture, run=run,
    description="first-layer choices compared: 11x11 stride 4 against 7x7 stride 2 (Fig. 6; trains 2 models)",
    needs=frozenset({"training"}), options=("runs",),
    claims=("the ZFNet first layer has fewer dead filters than the AlexNet-style one",
            "it covers the mid frequencies better",
            "it aliases less into layer 2: less of its rectified response lies above its stride's Nyquist frequency",
            "its layer 2 is more stable under a one-pixel shift"))
