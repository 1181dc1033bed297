"""The frequency content of conv filters and of feature maps, for the paper's
architecture selection (section 4.1, Fig. 6; ``zfcore.analysis.architecture``):
how much of a first layer's filter energy lies in the low, mid and high
frequencies, and how much of a map's power a stride's sampling aliases. Plain
tensor arithmetic on weights and maps; the definitions are choices, stated here:

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
* **Alias share** (``alias_fraction``, ``alias_energies``). Per map of a batch
  ``[N, C, H, W]``: its mean removed, a periodic 2-D Hann window applied and
  the power spectrum taken; the share of the power at frequencies above the
  stride's Nyquist frequency ``1/(2s)`` cycles per pixel on either axis
  (``|fx| > 1/(2s)`` or ``|fy| > 1/(2s)``: the energy sampling every ``s``-th
  position folds onto lower frequencies), summed over the batch. The same share
  of the filters' own energy (white-noise input) is ``FrequencyCoverage.alias``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ._args import check_positive_int
from .result import Result

__all__ = ["FrequencyCoverage", "alias_energies", "alias_fraction", "frequency_coverage"]


@dataclass
class FrequencyCoverage(Result):
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
    check_positive_int(stride, "stride", caller)
    check_positive_int(bands, "bands", caller, minimum=3)
    kh, kw = weights.shape[-2:]
    if size is None:
        size = max(32, kh, kw)
    check_positive_int(size, "size", caller, minimum=max(kh, kw))
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



def alias_energies(maps: Tensor, stride: int) -> tuple[Tensor, Tensor]:
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
    check_positive_int(stride, "stride", "alias_fraction")
    above, total = alias_energies(maps, stride)
    return torch.where(total > 0, above / total.clamp_min(1e-300), 0.0)

