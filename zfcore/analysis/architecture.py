"""The paper's architecture selection (section 4.1, Fig. 6): AlexNet's first
layer (11x11 filters, stride 4) against ZFNet's (7x7, stride 2).

The paper looked at the layer-1 and layer-2 filters and features of AlexNet and
saw a mix of extremely high- and low-frequency filters with little coverage of
the mid frequencies, dead filters, and aliasing artifacts in layer 2 caused by
the large stride; 7x7 filters with stride 2 fixed it. It shows pictures only;
this module turns each observation into a number (the definitions are choices,
stated here and in each function):

* **Frequency coverage** (``frequency_coverage``, from the weights alone). Each
  filter's frequency response is its 2-D DFT zero-padded to ``size x size``
  (default ``max(32, kernel)``; the zero padding samples the DTFT, the response
  of the filter as a convolution, not of the filter as one period), the power
  ``|W(f)|^2`` summed over input channels. Frequencies are in cycles per *input
  pixel*: the taps are one input pixel apart whatever the stride (the stride
  subsamples the output, which is what aliasing measures). The radial frequency
  ``sqrt(fy^2 + fx^2)`` from 0 to Nyquist (0.5) is split into ``bands`` equal
  bands (default 8, 1/16 cycle per pixel each); the corners of the spectrum
  beyond radius 0.5 (still below Nyquist on each axis) are counted in the top
  band. The bands fall into three ranges: *low*, the lowest quarter of the
  bands (below 1/8 cycle per pixel for 8 bands); *high*, the top quarter (at
  or above 3/8, with the corners); *mid*, the rest. The layer's spectrum is the
  band energy summed over filters, normalized to 1 (filters weigh by their
  energy); its **mid-frequency coverage** is the mid range's share of it. An
  **extreme** filter has more than half of its own energy in the low or in the
  high range ("the extremely high and low frequency information" of the paper).
  White noise (i.i.d. taps, a flat spectrum) puts each band's share of the DFT
  bins in it (``noise_spectrum``: for 8 bands on 32 x 32, 4% low, 38% mid, 57%
  high), a smooth blob most of its energy in the low range, a grating of 1/4
  cycle per pixel in the mid; the report shows the white-noise shares beside
  the measured ones, since a filter that training has not shaped stays noise.
* **Dead filters** (``dead_filters``). *Inactive*: the filter's rectified map
  (``ReLU`` of the conv output) is zero at every position of every image of the
  set. *Faint*: the filter's weight RMS ``sqrt(mean(w^2))`` is below
  ``rms_ratio`` (default 0.05) times the median RMS of the layer's filters, a
  scale-free "tiny". *Dead* = inactive or faint.
* **Aliasing of layer 2's input** (``layer_one_aliasing``). Layer 2 reads layer
  1's rectified output sampled every ``s`` pixels (``s`` = conv1's stride:
  ``relu(conv(x))[::s, ::s] = relu(conv(x)[::s, ::s])``). The dense response
  (the same filters, stride 1, the same zero padding) is computed on images; per
  map its mean is removed, a periodic 2-D Hann window applied and the power
  spectrum taken; the **alias share** is the energy at frequencies above the
  stride's Nyquist frequency ``1/(2s)`` cycles per pixel on either axis
  (``|fx| > 1/(2s)`` or ``|fy| > 1/(2s)``, the energy sampling folds onto lower
  frequencies) over the total, summed over maps and images. The same share of
  the filters' own energy (white-noise input) is ``FrequencyCoverage.alias``.
* **Shift variance of layer 2** (``shift_variance``). Without aliasing, the sum
  over positions of a sampled band-limited map does not depend on where the
  samples fall, so the per-map spatial mean of layer 2 (``relu2``) is unchanged
  when the image moves by one pixel. Measured as ``sqrt(sum_i ||g(a_i) -
  g(b_i)||^2 / sum_i ||g(a_i)||^2)`` over images ``i``, ``g`` the vector of
  per-map means, ``a_i`` the image cropped by one pixel at the bottom and right
  and ``b_i`` the crop moved by one pixel (right, and down: both pairs pooled),
  so the two crops see the same content one pixel apart without wrap-around.

``architecture`` trains the demo recipe twice (``conv1="11x4"`` and
``conv1="7x2"``), computes all of this for both on the validation images, and
``render`` draws Fig. 6's comparison with the paper's three claims checked on
the numbers.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from ._render import begin
from ._stream import LayerTap, _Stop, batches, check_layers, model_device

__all__ = ["VARIANTS", "Aliasing", "Architecture", "DeadFilters", "FrequencyCoverage", "ShiftVariance",
           "alias_fraction", "architecture", "dead_filters", "frequency_coverage", "layer_one_aliasing", "measure",
           "render", "shift_variance"]

VARIANTS = {"alexnet": "11x4", "zfnet": "7x2"}
"""The two first layers compared, as ``TrainConfig.conv1`` values: AlexNet's
11x11 stride 4 and ZFNet's 7x7 stride 2 (run folders ``<name>_conv1``)."""

_LABELS = {"alexnet": "AlexNet-style conv1", "zfnet": "ZFNet conv1"}
QUICK_EPOCHS = 8
FULL_EPOCHS = 30  # the demo recipe's


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_int(caller: str, name: str, value, low: int = 1) -> int:
    if not _is_int(value) or value < low:
        raise ValueError(f"{caller}: {name} must be an int >= {low} (got {value!r})")
    return int(value)


def _check_dataset(caller: str, dataset) -> int:
    try:
        size = len(dataset)
    except TypeError:
        raise ValueError(f"{caller}: dataset must be a map-style Dataset with a length "
                         f"(got {type(dataset).__name__})") from None
    if size == 0:
        raise ValueError(f"{caller}: the dataset is empty")
    return size


def _conv(model: nn.Module, layer: str, caller: str) -> nn.Conv2d:
    check_layers(model, layer, caller)
    conv = dict(model.named_modules())[layer]
    if not isinstance(conv, nn.Conv2d):
        raise ValueError(f"{caller}: layer {layer!r} is a {type(conv).__name__}, not a Conv2d")
    return conv


def _count(caller: str, dataset, max_images: int | None) -> list[int]:
    size = _check_dataset(caller, dataset)
    if max_images is not None:
        _check_int(caller, "max_images", max_images)
        size = min(size, max_images)
    return list(range(size))


# ----------------------------------------------------------------- frequency coverage


@dataclass
class FrequencyCoverage:
    """The frequency content of one conv layer's filters (``O`` filters, ``B`` bands).

    Attributes:
        edges: ``Tensor[B + 1]`` (float64), the band edges in cycles per input
            pixel: ``0, 0.5/B, ..., 0.5``; the top band also holds the corners
            beyond radius 0.5.
        energy: ``Tensor[O, B]`` (float64), each filter's power ``|W(f)|^2`` per band
            (summed over input channels and the DFT bins of the band).
        alias: ``Tensor[O]`` (float64), each filter's share of power above the
            Nyquist frequency ``1/(2 * stride)`` on either axis (0 for a zero filter).
        power: ``Tensor[size, size]`` (float64), the mean over filters of each
            filter's power spectrum normalized to sum 1, DC in the centre
            (``fftshift``), for display.
        stride: the stride the filters are applied with.
        size: the DFT size (zero padding).
    """

    edges: Tensor
    energy: Tensor
    alias: Tensor
    power: Tensor
    stride: int
    size: int

    @property
    def bands(self) -> int:
        return self.energy.shape[1]

    @property
    def ranges(self) -> dict[str, list[int]]:
        """Band indices of the low (lowest quarter), mid and high (top quarter) ranges."""
        q = max(1, self.bands // 4)
        return {"low": list(range(q)), "mid": list(range(q, self.bands - q)),
                "high": list(range(self.bands - q, self.bands))}

    @property
    def spectrum(self) -> Tensor:
        """``Tensor[B]``: the layer's band energy summed over filters, normalized to 1."""
        total = self.energy.sum()
        return self.energy.sum(0) / total if total > 0 else torch.zeros(self.bands, dtype=torch.float64)

    @property
    def filter_shares(self) -> Tensor:
        """``Tensor[O, B]``: each filter's band energy normalized to 1 (0 for a zero filter)."""
        total = self.energy.sum(1, keepdim=True)
        return torch.where(total > 0, self.energy / total.clamp_min(1e-300), 0.0)

    def range_share(self, name: str) -> float:
        """The layer's energy share in the ``low``, ``mid`` or ``high`` range."""
        return float(self.spectrum[self.ranges[name]].sum())

    @property
    def mid_coverage(self) -> float:
        """The mid range's share of the layer's energy."""
        return self.range_share("mid")

    def _mostly(self, name: str) -> list[int]:
        share = self.filter_shares[:, self.ranges[name]].sum(1)
        return [int(i) for i in torch.nonzero(share > 0.5).flatten()]

    @property
    def low_filters(self) -> list[int]:
        """Filters with more than half of their energy in the low range."""
        return self._mostly("low")

    @property
    def high_filters(self) -> list[int]:
        """Filters with more than half of their energy in the high range."""
        return self._mostly("high")

    @property
    def extreme_fraction(self) -> float:
        """The share of filters that are mostly low or mostly high frequency."""
        return (len(self.low_filters) + len(self.high_filters)) / max(1, self.energy.shape[0])

    @property
    def noise_spectrum(self) -> Tensor:
        """``Tensor[B]``: the expected ``spectrum`` of filters of i.i.d. random taps
        (flat power): each band's share of the ``size x size`` DFT bins."""
        f = torch.fft.fftfreq(self.size, dtype=torch.float64)
        radius = (f[:, None].pow(2) + f[None, :].pow(2)).sqrt()
        band = (radius / (0.5 / self.bands)).floor().long().clamp(max=self.bands - 1)
        return torch.bincount(band.flatten(), minlength=self.bands).double() / self.size ** 2

    def noise_share(self, name: str) -> float:
        """The ``low``, ``mid`` or ``high`` range's share for i.i.d. random taps."""
        return float(self.noise_spectrum[self.ranges[name]].sum())

    @property
    def noise_alias(self) -> float:
        """``layer_alias`` for i.i.d. random taps: the share of DFT bins outside the stride's Nyquist square."""
        f = torch.fft.fftfreq(self.size, dtype=torch.float64).abs() <= 0.5 / self.stride
        return 1 - int(f.sum()) ** 2 / self.size ** 2

    @property
    def layer_alias(self) -> float:
        """The share of the layer's filter energy above the stride's Nyquist frequency."""
        total = self.energy.sum(1)
        return float((self.alias * total).sum() / total.sum()) if total.sum() > 0 else 0.0

    def as_dict(self) -> dict:
        return {"edges": self.edges, "energy": self.energy, "alias": self.alias, "power": self.power,
                "stride": self.stride, "size": self.size, "spectrum": self.spectrum,
                "noise_spectrum": self.noise_spectrum, "noise_alias": self.noise_alias,
                "mid_coverage": self.mid_coverage, "extreme_fraction": self.extreme_fraction,
                "low_filters": self.low_filters, "high_filters": self.high_filters, "layer_alias": self.layer_alias}

    @classmethod
    def from_dict(cls, d: dict) -> FrequencyCoverage:
        return cls(edges=d["edges"], energy=d["energy"], alias=d["alias"], power=d["power"],
                   stride=int(d["stride"]), size=int(d["size"]))


def frequency_coverage(weights: Tensor, *, stride: int = 1, bands: int = 8, size: int | None = None
                       ) -> FrequencyCoverage:
    """The radial band energy of each filter of ``weights`` (section 4.1's
    "coverage of the mid frequencies"; definitions in the module docstring).

    Args:
        weights: ``Tensor[O, I, kh, kw]``, a conv layer's filters.
        stride: the stride they are applied with (for ``alias``), >= 1.
        bands: radial bands from DC to Nyquist, >= 3 (low, mid and high ranges
            need one band each).
        size: the zero-padded DFT size, >= the kernel (default ``max(32, kh, kw)``).

    Returns:
        A ``FrequencyCoverage``.

    Example:
        >>> coverage = frequency_coverage(model.conv1.weight, stride=2)
        >>> coverage.spectrum, coverage.mid_coverage, coverage.low_filters
    """
    caller = "frequency_coverage"
    if not isinstance(weights, Tensor) or weights.dim() != 4 or weights.shape[0] == 0 or weights.numel() == 0:
        got = list(weights.shape) if isinstance(weights, Tensor) else type(weights).__name__
        raise ValueError(f"{caller}: weights must be a non-empty Tensor[O, I, kh, kw] (got {got})")
    _check_int(caller, "stride", stride)
    _check_int(caller, "bands", bands, 3)
    kh, kw = weights.shape[-2:]
    if size is None:
        size = max(32, kh, kw)
    if not _is_int(size) or size < max(kh, kw):
        raise ValueError(f"{caller}: size must be an int >= the kernel size {max(kh, kw)} (got {size!r})")
    w = weights.detach().to("cpu", torch.float64)
    if not torch.isfinite(w).all():
        raise ValueError(f"{caller}: weights hold NaN or infinite values")
    power = torch.fft.fft2(w, s=(size, size)).abs().pow(2).sum(1)                  # [O, size, size]
    f = torch.fft.fftfreq(size, dtype=torch.float64)
    fy, fx = f[:, None].expand(size, size), f[None, :].expand(size, size)
    radius = (fy.pow(2) + fx.pow(2)).sqrt()
    band = (radius / (0.5 / bands)).floor().long().clamp(max=bands - 1)             # corners -> top band
    energy = torch.zeros(w.shape[0], bands, dtype=torch.float64)
    energy.index_add_(1, band.flatten(), power.flatten(1))
    nyquist = 0.5 / stride
    above = (fy.abs() > nyquist) | (fx.abs() > nyquist)
    total = power.sum(dim=(1, 2))
    alias = torch.where(total > 0, (power * above).sum(dim=(1, 2)) / total.clamp_min(1e-300), 0.0)
    normalized = torch.where(total[:, None, None] > 0, power / total.clamp_min(1e-300)[:, None, None], 0.0)
    edges = torch.arange(bands + 1, dtype=torch.float64) * (0.5 / bands)
    return FrequencyCoverage(edges=edges, energy=energy, alias=alias,
                             power=torch.fft.fftshift(normalized.mean(0)), stride=int(stride), size=int(size))


# ----------------------------------------------------------------- dead filters


@dataclass
class DeadFilters:
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

    def as_dict(self) -> dict:
        return {"layer": self.layer, "rms": self.rms, "zero_fraction": self.zero_fraction, "images": self.images,
                "rms_ratio": self.rms_ratio, "inactive": self.inactive, "faint": self.faint, "dead": self.dead}

    @classmethod
    def from_dict(cls, d: dict) -> DeadFilters:
        return cls(layer=str(d["layer"]), rms=d["rms"], zero_fraction=d["zero_fraction"], images=int(d["images"]),
                   rms_ratio=float(d["rms_ratio"]))


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
    _check_int(caller, "batch_size", batch_size)
    indices = _count(caller, dataset, max_images)
    device = model_device(model)
    zeros = torch.zeros(conv.out_channels, dtype=torch.float64)
    was_training = model.training
    model.eval()
    bar = tqdm(total=len(indices), desc="dead filters", unit="img", disable=not progress, leave=False)
    try:
        with LayerTap(model, [layer], reduce=lambda out: ~(out > 0).flatten(2).any(2)) as tap:
            for images, _labels, _index in batches(dataset, indices, batch_size):
                silent = tap(images.float().to(device))[layer]                  # [B, O] bool
                zeros += silent.double().sum(0).cpu()
                bar.update(len(images))
    finally:
        bar.close()
        model.train(was_training)
    rms = conv.weight.detach().to("cpu", torch.float64).pow(2).mean(dim=(1, 2, 3)).sqrt()
    return DeadFilters(layer=layer, rms=rms, zero_fraction=zeros / len(indices), images=len(indices),
                       rms_ratio=float(rms_ratio))


# ----------------------------------------------------------------- aliasing


def _alias_energies(maps: Tensor, stride: int) -> tuple[Tensor, Tensor]:
    """Per channel of ``maps[N, C, H, W]``: (power above ``1/(2 stride)``, total
    power), summed over the batch; mean removed, periodic Hann window, float64."""
    x = maps.detach().to(torch.float64)
    x = x - x.mean(dim=(-2, -1), keepdim=True)
    h, w = x.shape[-2:]
    window = (torch.hann_window(h, periodic=True, dtype=torch.float64, device=x.device)[:, None]
              * torch.hann_window(w, periodic=True, dtype=torch.float64, device=x.device)[None, :])
    power = torch.fft.fft2(x * window).abs().pow(2)                                # [N, C, H, W]
    nyquist = 0.5 / stride
    fy = torch.fft.fftfreq(h, dtype=torch.float64, device=x.device).abs()
    fx = torch.fft.fftfreq(w, dtype=torch.float64, device=x.device).abs()
    above = (fy[:, None] > nyquist) | (fx[None, :] > nyquist)
    return (power * above).sum(dim=(0, 2, 3)).cpu(), power.sum(dim=(0, 2, 3)).cpu()


def alias_fraction(maps: Tensor, stride: int) -> Tensor:
    """Per channel of the dense maps ``Tensor[N, C, H, W]``, the share of their
    power (mean removed, periodic Hann window, summed over the batch) at
    frequencies above ``1/(2 * stride)`` cycles per pixel on either axis: what
    sampling every ``stride``-th position folds onto lower frequencies.
    ``Tensor[C]`` (float64), 0 for a constant map.

    Example:
        >>> alias_fraction(torch.relu(F.conv2d(x, w, padding=1)), stride=4)
    """
    if not isinstance(maps, Tensor) or maps.dim() != 4 or maps.numel() == 0 or min(maps.shape[-2:]) < 2:
        got = list(maps.shape) if isinstance(maps, Tensor) else type(maps).__name__
        raise ValueError(f"alias_fraction: maps must be a non-empty Tensor[N, C, H, W] with H, W >= 2 (got {got})")
    _check_int("alias_fraction", "stride", stride)
    above, total = _alias_energies(maps, stride)
    return torch.where(total > 0, above / total.clamp_min(1e-300), 0.0)


@dataclass
class Aliasing:
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

    def as_dict(self) -> dict:
        return {"layer": self.layer, "stride": self.stride, "above": self.above, "total": self.total,
                "images": self.images, "share": self.share}

    @classmethod
    def from_dict(cls, d: dict) -> Aliasing:
        return cls(layer=str(d["layer"]), stride=int(d["stride"]), above=d["above"], total=d["total"],
                   images=int(d["images"]))


class _Input:
    """Context manager: ``tap(x)`` returns ``module``'s input in ``model(x)``, stopping the forward there."""

    def __init__(self, model: nn.Module, module: nn.Module):
        self.model, self.module, self.value = model, module, None

    def __enter__(self):
        def hook(_module, inputs):
            self.value = inputs[0].detach()
            raise _Stop
        self._handle = self.module.register_forward_pre_hook(hook)
        return self

    def __exit__(self, *exc):
        self._handle.remove()
        return False

    @torch.no_grad()
    def __call__(self, x: Tensor) -> Tensor:
        self.value = None
        try:
            self.model(x)
        except _Stop:
            pass
        if self.value is None:
            raise ValueError("layer_one_aliasing: the layer did not run in the model's forward")
        return self.value


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
    _check_int(caller, "stride", stride)
    _check_int(caller, "batch_size", batch_size)
    indices = _count(caller, dataset, max_images)
    device = model_device(model)
    above = total = None
    was_training = model.training
    model.eval()
    bar = tqdm(total=len(indices), desc="layer-1 aliasing", unit="img", disable=not progress, leave=False)
    try:
        with _Input(model, conv) as tap:
            for images, _labels, _index in batches(dataset, indices, batch_size):
                x = tap(images.float().to(device))
                dense = F.relu(F.conv2d(x, conv.weight, conv.bias, stride=1, padding=conv.padding,
                                        dilation=conv.dilation, groups=conv.groups))
                a, t = _alias_energies(dense, stride)
                above, total = (a, t) if above is None else (above + a, total + t)
                bar.update(len(images))
    finally:
        bar.close()
        model.train(was_training)
    return Aliasing(layer=layer, stride=int(stride), above=above, total=total, images=len(indices))


@dataclass
class ShiftVariance:
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

    def as_dict(self) -> dict:
        return {"layer": self.layer, "change": self.change, "norm": self.norm, "images": self.images,
                "value": self.value}

    @classmethod
    def from_dict(cls, d: dict) -> ShiftVariance:
        return cls(layer=str(d["layer"]), change=float(d["change"]), norm=float(d["norm"]), images=int(d["images"]))


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
    _check_int(caller, "batch_size", batch_size)
    indices = _count(caller, dataset, max_images)
    device = model_device(model)
    change = norm = 0.0

    def means(out: Tensor) -> Tensor:
        if out.dim() != 4:
            raise ValueError(f"{caller}: layer {layer!r} must give spatial maps [N, C, h, w] (got "
                             f"{list(out.shape)})")
        return out.double().mean(dim=(2, 3))

    was_training = model.training
    model.eval()
    bar = tqdm(total=len(indices), desc="shift variance", unit="img", disable=not progress, leave=False)
    try:
        with LayerTap(model, [layer], reduce=means) as tap:
            for images, _labels, _index in batches(dataset, indices, batch_size):
                x = images.float().to(device)
                if min(x.shape[-2:]) < 2:
                    raise ValueError(f"{caller}: images must be at least 2x2 pixels (got {list(x.shape[-2:])})")
                base = tap(x[..., :-1, :-1])[layer]
                for moved in (x[..., :-1, 1:], x[..., 1:, :-1]):
                    change += float((tap(moved)[layer] - base).pow(2).sum())
                    norm += float(base.pow(2).sum())
                bar.update(len(images))
    finally:
        bar.close()
        model.train(was_training)
    return ShiftVariance(layer=layer, change=change, norm=norm, images=len(indices))


# ----------------------------------------------------------------- the experiment


@dataclass
class Architecture:
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

    def as_dict(self) -> dict:
        return {"variants": list(self.variants), "conv1": dict(self.conv1), "runs": dict(self.runs),
                "weights": dict(self.weights),
                "frequency": {k: v.as_dict() for k, v in self.frequency.items()},
                "dead": {k: v.as_dict() for k, v in self.dead.items()},
                "aliasing": {k: v.as_dict() for k, v in self.aliasing.items()},
                "shift": {k: v.as_dict() for k, v in self.shift.items()},
                "val_accuracy": dict(self.val_accuracy), "epochs": dict(self.epochs), "dataset": self.dataset}

    @classmethod
    def from_dict(cls, d: dict) -> Architecture:
        return cls(variants=[str(v) for v in d["variants"]], conv1={str(k): str(v) for k, v in d["conv1"].items()},
                   runs={str(k): str(v) for k, v in d["runs"].items()}, weights=dict(d["weights"]),
                   frequency={k: FrequencyCoverage.from_dict(v) for k, v in d["frequency"].items()},
                   dead={k: DeadFilters.from_dict(v) for k, v in d["dead"].items()},
                   aliasing={k: Aliasing.from_dict(v) for k, v in d["aliasing"].items()},
                   shift={k: ShiftVariance.from_dict(v) for k, v in d["shift"].items()},
                   val_accuracy={k: float(v) for k, v in d["val_accuracy"].items()},
                   epochs={k: int(v) for k, v in d["epochs"].items()}, dataset=str(d["dataset"]))


def _run_file(path) -> Path:
    path = Path(path)
    return path / "model.pt" if path.is_dir() else path


def _train_variant(folder: Path, conv1: str, epochs: int, seed: int, progress: bool) -> Path:
    """``folder/model.pt`` of the demo recipe with ``conv1``: reused when finished,
    resumed when interrupted, trained otherwise; a folder holding a run of
    another configuration is an error (``ablation.train_or_reuse``)."""
    from importlib import import_module

    from .ablation import train_or_reuse

    training = import_module("..train", __package__)  # the package, looked up at call time
    config = dataclasses.replace(training.demo_config(os.fspath(folder), seed=seed, epochs=epochs,
                                                      progress=progress), conv1=conv1)
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
        >>> render(result, Path("report/assets"))["claims"]
    """
    from ..load import load
    from ..visualize import open_dataset

    if not isinstance(quick, bool):
        raise ValueError(f"architecture: quick must be a bool (got {quick!r})")
    _check_int("architecture", "seed", seed, 0)
    if max_images is not None:
        _check_int("architecture", "max_images", max_images)
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
        loaded = load(file)
        dataset = open_dataset(loaded, str(loaded.config.get("data", "synthetic")))
        description = f"{len(dataset)} {dataset.description}"
        measured[name] = measure(loaded, dataset, max_images=max_images, progress=progress)
    return Architecture(variants=list(VARIANTS), conv1={k: v["conv1"] for k, v in measured.items()},
                        runs={k: os.fspath(v) for k, v in files.items()},
                        **{key: {k: v[key] for k, v in measured.items()}
                           for key in ("weights", "frequency", "dead", "aliasing", "shift", "val_accuracy", "epochs")},
                        dataset=description)


# ----------------------------------------------------------------- rendering


def _tiles(weights: Tensor, cell: int = 28, pad: int = 2):
    """A layer's RGB filters as one uint8 ``[H, W, 3]`` grid, each scaled about grey by its own peak."""
    import numpy as np

    from ..report import display_signed

    shown = display_signed(weights[:, :3] if weights.shape[1] >= 3 else weights[:, :1].expand(-1, 3, -1, -1))
    shown = shown.numpy()
    o, _, kh, kw = shown.shape
    factor = max(1, math.ceil(cell / max(kh, kw)))
    ch, cw = kh * factor, kw * factor
    cols = math.ceil(math.sqrt(o))
    rows = math.ceil(o / cols)
    grid = np.full((rows * ch + (rows + 1) * pad, cols * cw + (cols + 1) * pad, 3), 255, dtype=np.uint8)
    for i in range(o):
        r, c = divmod(i, cols)
        tile = shown[i].repeat(factor, -2).repeat(factor, -1).transpose(1, 2, 0)
        grid[pad + r * (ch + pad):pad + r * (ch + pad) + ch, pad + c * (cw + pad):pad + c * (cw + pad) + cw] = tile
    return grid


def _claims(result: Architecture) -> list[dict]:
    a, z = "alexnet", "zfnet"
    la, lz = (f"{_LABELS[v]} ({result.conv1[v]})" for v in (a, z))
    dead = {v: result.dead[v].dead for v in (a, z)}
    freq = result.frequency
    alias, shift = result.aliasing, result.shift

    def dead_text(v: str) -> str:
        d = result.dead[v]
        return (f"{len(d.dead)} of {d.rms.numel()} dead ({len(d.inactive)} never active on {d.images} images, "
                f"{len(d.faint)} with weight RMS below {d.rms_ratio:g} x the median)")

    return [
        {"claim": f"The ZFNet first layer has fewer dead filters than the AlexNet-style one (Fig. 6 b vs c)",
         "holds": len(dead[z]) < len(dead[a]),
         "detail": f"{la}: {dead_text(a)}; {lz}: {dead_text(z)}"},
        {"claim": "The ZFNet first layer covers the mid frequencies better (a larger share of its filter energy "
                  "between 1/8 and 3/8 cycle per pixel)",
         "holds": freq[z].mid_coverage > freq[a].mid_coverage,
         "detail": f"mid-frequency share: {la} {freq[a].mid_coverage:.3f}, {lz} {freq[z].mid_coverage:.3f} "
                   f"(white-noise filters: {freq[z].noise_share('mid'):.3f}); "
                   f"filters mostly low or high frequency: {freq[a].extreme_fraction:.2f} vs "
                   f"{freq[z].extreme_fraction:.2f}"},
        {"claim": "The ZFNet first layer aliases less into layer 2: a smaller share of its rectified response "
                  "lies above the Nyquist frequency of its stride",
         "holds": alias[z].share < alias[a].share,
         "detail": f"alias share: {la} {alias[a].share:.3f} (Nyquist 1/{2 * alias[a].stride}), {lz} "
                   f"{alias[z].share:.3f} (Nyquist 1/{2 * alias[z].stride}), on {alias[z].images} images"},
        {"claim": "Layer 2 of the ZFNet variant is more stable under a one-pixel shift (less aliasing)",
         "holds": shift[z].value < shift[a].value,
         "detail": f"relative change of the per-map means of {shift[z].layer}: {la} {shift[a].value:.4f}, "
                   f"{lz} {shift[z].value:.4f}, on {shift[z].images} images"},
    ]


def render(result: Architecture | dict, assets: Path) -> dict:
    """Fig. 6's comparison: the two first layers' filters side by side, their
    band energy and mean power spectra, a table of the measures and the paper's
    claims checked on them; PNGs written into ``assets``."""
    from matplotlib.patches import Rectangle

    plt, result, assets = begin(result, Architecture, assets)
    variants = result.variants

    grids = [_tiles(result.weights[v]) for v in variants]
    height = max(g.shape[0] for g in grids)
    fig, axes = plt.subplots(1, len(variants), figsize=(4.2 * len(variants), 4.6), dpi=100)
    for ax, v, grid in zip(axes, variants, grids):
        ax.imshow(grid, interpolation="nearest")
        ax.set_ylim(height, 0)
        n_dead = len(result.dead[v].dead)
        ax.set_title(f"{_LABELS.get(v, v)}: {result.conv1[v]}\n{n_dead} dead" + (" (framed in red)" if n_dead else ""),
                     fontsize=9)
        ax.axis("off")
        o = result.weights[v].shape[0]
        cols = math.ceil(math.sqrt(o))
        kh = result.weights[v].shape[-1]
        factor = max(1, math.ceil(28 / kh))
        side = kh * factor
        for i in result.dead[v].dead:
            r, c = divmod(i, cols)
            ax.add_patch(Rectangle((2 + c * (side + 2) - 1.5, 2 + r * (side + 2) - 1.5), side + 2, side + 2,
                                   fill=False, edgecolor="red", linewidth=1.5))
    fig.tight_layout()
    fig.savefig(assets / "architecture-filters.png")
    plt.close(fig)

    n = len(variants)
    fig, axes = plt.subplots(1, 1 + n, figsize=(5.5 + 2.6 * n, 3.8), dpi=100, width_ratios=(2.2,) + (1,) * n)
    left = axes[0]
    first = result.frequency[variants[0]]
    edges = first.edges.numpy()
    centres = (edges[:-1] + edges[1:]) / 2
    width = (edges[1] - edges[0]) / (n + 1)
    for i, v in enumerate(variants):
        f = result.frequency[v]
        left.bar(centres + (i - (n - 1) / 2) * width, f.spectrum.numpy(), width=width,
                 label=f"{_LABELS.get(v, v)} ({result.conv1[v]})", color=f"C{i}")
        left.axvline(0.5 / f.stride, color=f"C{i}", linestyle="--", linewidth=1)
    left.step(edges, torch.cat([first.noise_spectrum, first.noise_spectrum[-1:]]).numpy(), where="post",
              color="black", linewidth=1, label="white noise (i.i.d. taps)")
    mid = first.ranges["mid"]
    left.axvspan(edges[mid[0]], edges[mid[-1] + 1], color="grey", alpha=0.12, label="mid range")
    left.set_xlabel("radial frequency (cycles per input pixel)", fontsize=8)
    left.set_ylabel("share of the layer's filter energy", fontsize=8)
    left.set_xlim(0, 0.5)
    left.legend(fontsize=7)
    left.grid(alpha=0.3)
    for ax, v in zip(axes[1:], variants):
        f = result.frequency[v]
        ax.imshow(f.power.clamp_min(1e-12).log10().numpy(), extent=(-0.5, 0.5, 0.5, -0.5), cmap="magma")
        nyq = 0.5 / f.stride
        ax.add_patch(Rectangle((-nyq, -nyq), 2 * nyq, 2 * nyq, fill=False, edgecolor="cyan", linewidth=1))
        ax.set_title(f"{result.conv1[v]}: log10 power", fontsize=8)
        ax.set_xlabel("fx", fontsize=7)
        ax.set_ylabel("fy", fontsize=7)
        ax.tick_params(labelsize=6)
    fig.tight_layout()
    fig.savefig(assets / "architecture-bands.png")
    plt.close(fig)

    a, z = variants[0], variants[-1]
    rows = []

    def row(name: str, fn, noise="", digits: int = 3):
        values = [fn(v) for v in variants]
        rows.append([name] + [round(float(x), digits) if isinstance(x, float) else x for x in values]
                    + [round(noise, digits) if isinstance(noise, float) else noise])

    row("conv1 (kernel x stride)", lambda v: result.conv1[v])
    row("validation accuracy (top-1)", lambda v: result.val_accuracy[v])
    row("epochs", lambda v: str(result.epochs[v]))
    row("mid-frequency share of filter energy", lambda v: result.frequency[v].mid_coverage, first.noise_share("mid"))
    row("low-frequency share", lambda v: result.frequency[v].range_share("low"), first.noise_share("low"))
    row("high-frequency share", lambda v: result.frequency[v].range_share("high"), first.noise_share("high"))
    row("filters mostly low / high frequency",
        lambda v: f"{len(result.frequency[v].low_filters)} / {len(result.frequency[v].high_filters)} of "
                  f"{result.weights[v].shape[0]}")
    row("filter energy above the stride's Nyquist", lambda v: result.frequency[v].layer_alias,
        " / ".join(f"{result.frequency[v].noise_alias:.3f}" for v in variants))
    row("dead filters (never active / faint)",
        lambda v: f"{len(result.dead[v].dead)} ({len(result.dead[v].inactive)} / {len(result.dead[v].faint)})")
    row("alias share of the rectified response", lambda v: result.aliasing[v].share)
    row("layer-2 shift variance", lambda v: result.shift[v].value, digits=4)
    bands = [[f"{float(lo):.4f}-{float(hi):.4f}"] + [round(float(result.frequency[v].spectrum[b]), 4)
                                                     for v in variants]
             + [round(float(first.noise_spectrum[b]), 4)]
             for b, (lo, hi) in enumerate(zip(first.edges[:-1], first.edges[1:]))]
    header = ["measure"] + [f"{_LABELS.get(v, v)} ({result.conv1[v]})" for v in variants] + ["white noise"]
    tables = [{"caption": f"First-layer measures of the two variants, on {result.dataset} (dead filters: all "
                          f"images; aliasing and shift: the first {result.aliasing[z].images}).",
               "header": header, "rows": rows},
              {"caption": "Share of each first layer's filter energy per radial band (cycles per input pixel; "
                          "the top band includes the corners beyond 0.5).",
               "header": ["band"] + header[1:], "rows": bands}]
    figures = [
        {"file": "architecture-filters.png",
         "caption": f"First-layer filters of the same network trained with {result.conv1[a]} (left, AlexNet-style) "
                    f"and {result.conv1[z]} (right, ZFNet) first layers, like Fig. 6 (b) and (c); each filter "
                    f"scaled about grey by its own peak, dead ones (never active or faint) framed in red."},
        {"file": "architecture-bands.png",
         "caption": "Left: the share of each first layer's filter energy per radial frequency band (zero-padded "
                    "DFT, summed over filters), the mid range shaded, each stride's Nyquist frequency dashed. "
                    "Right: the mean normalized power spectrum of the filters (DC in the centre), the square "
                    "inside which the stride samples without aliasing in cyan."},
    ]
    intro = ("The paper's section 4.1 (Fig. 6): visualizing AlexNet's first two layers showed first-layer filters "
             "that are a mix of extremely high- and low-frequency ones with little mid-frequency coverage, dead "
             "filters, and aliasing artifacts in layer 2 from the first layer's stride 4; ZFNet's 7x7 filters with "
             "stride 2 fixed both. Here the same small network is trained twice on the same data with the same "
             "recipe, changing only the first layer, and each observation is measured: the filters' energy per "
             "frequency band (their zero-padded DFT), the filters that never fire or have tiny weights, the share "
             "of the rectified first-layer response above the Nyquist frequency of its stride (what layer 2 "
             "receives aliased) and the change of layer 2's per-map means under a one-pixel shift. The claims are "
             "evaluated on these numbers as measured.")
    return {"title": "Architecture selection: the first layer (Fig. 6)", "intro": intro, "figures": figures,
            "tables": tables, "claims": _claims(result)}
