"""How images become a model's input: ``Preprocess(size, resize, mean, std, scale)``.

One rule for every model: a uint8 image (or a float one in 0..255) has its
short side resized to ``resize`` (bilinear, antialiased) unless it is already
that long or the image already has the model's ``size``, its centre
``size x size`` is cut out, and each pixel becomes ``(p * scale - mean) /
std``. ``invert`` undoes the last step for display.

* ``Preprocess.imagenet()``: the common ImageNet recipe (short side 256, centre
  224, ``/255``, mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225)).
* ``Preprocess.run(mean_image, scale, resize, size)``: a zfcore run's own
  (``(p - mean_image) * scale``, the mean image centre-cropped to the input).

Example:
    >>> prep = Preprocess.imagenet()
    >>> x = prep(photo)                       # uint8 [3, 480, 640] -> float [3, 224, 224]
    >>> prep.geometry(photo).shape            # the pixels the model sees, uint8
    torch.Size([3, 224, 224])
    >>> prep.invert(x)                        # uint8 [3, 224, 224] again (up to rounding)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "Preprocess"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"Preprocess: {name} must be a positive int (got {value!r})")
    return value


def _three(name: str, value, positive: bool) -> tuple[float, float, float]:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = (value,) * 3
    try:
        values = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        values = ()
    if len(values) != 3 or not all(math.isfinite(v) and (v > 0 or not positive) for v in values):
        kind = "positive finite" if positive else "finite"
        raise ValueError(f"Preprocess: {name} must be one or three {kind} numbers, one per channel R, G, B "
                         f"(got {value!r})")
    return values


def centre_box(h: int, w: int, size: int) -> tuple[int, int]:
    """Top-left corner of the centre ``size x size`` box of an ``h x w`` image
    (the common rule: half the margin, rounded)."""
    return int(round((h - size) / 2.0)), int(round((w - size) / 2.0))


@dataclass(frozen=True, eq=False)
class Preprocess:
    """From pixels to a model's input.

    Args:
        size: the side of the model's (square) input.
        resize: the short side an image is resized to before the centre crop;
            ``None``: never resized (an image smaller than ``size`` is an error).
        mean: per channel, in the units of ``p * scale``: one or three numbers,
            or a mean image ``Tensor[3, S, S]`` (``S >= size``, centre-cropped).
        std: per channel: one or three positive numbers.
        scale: what a 0..255 pixel is multiplied by first (``1/255``: 0..1).
    """

    size: int = 224
    resize: int | None = 256
    mean: Sequence[float] | Tensor = IMAGENET_MEAN
    std: Sequence[float] | float = IMAGENET_STD
    scale: float = 1 / 255

    def __post_init__(self) -> None:
        _positive_int("size", self.size)
        if self.resize is not None and _positive_int("resize", self.resize) < self.size:
            raise ValueError(f"Preprocess: resize ({self.resize}) must be at least size ({self.size}): the centre "
                             f"crop is cut from the resized image")
        if isinstance(self.mean, Tensor):
            m = self.mean
            if m.dim() != 3 or m.shape[0] != 3 or min(m.shape[1:]) < self.size or not torch.isfinite(m).all():
                raise ValueError(f"Preprocess: a mean image must be a finite Tensor[3, S, S] with S >= size "
                                 f"{self.size} (got {tuple(m.shape)})")
            object.__setattr__(self, "mean", m.detach().to(torch.float32).cpu())
        else:
            object.__setattr__(self, "mean", _three("mean", self.mean, positive=False))
        object.__setattr__(self, "std", _three("std", self.std, positive=True))
        if isinstance(self.scale, bool) or not isinstance(self.scale, (int, float)) or not \
                (math.isfinite(self.scale) and self.scale > 0):
            raise ValueError(f"Preprocess: scale must be a positive finite number (got {self.scale!r})")
        object.__setattr__(self, "scale", float(self.scale))

    @classmethod
    def imagenet(cls, size: int = 224, resize: int = 256) -> "Preprocess":
        """The common ImageNet recipe: short side ``resize``, centre ``size``, ``/255``, ImageNet mean and std."""
        return cls(size, resize, IMAGENET_MEAN, IMAGENET_STD, 1 / 255)

    @classmethod
    def run(cls, mean_image: Tensor, scale: float, resize: int | None, size: int) -> "Preprocess":
        """A zfcore run's own: ``(p - mean_image) * scale``."""
        return cls(size, resize, mean_image, 1.0 / scale, 1.0)

    # ------------------------------------------------------------------ the steps

    def geometry(self, image: Tensor) -> Tensor:
        """The resize and centre crop alone: ``[..., 3, H, W]`` -> ``[..., 3, size, size]``
        (uint8 stays uint8, rounded)."""
        image = self._check(image)
        h, w = image.shape[-2:]
        size, resize = self.size, self.resize
        if (h, w) == (size, size):
            return image
        if resize is not None and min(h, w) != resize:
            short, long = (h, w) if h <= w else (w, h)
            long = max(resize, int(resize * long / short))
            shape = (resize, long) if h <= w else (long, resize)
            batch = image if image.dim() == 4 else image[None]
            resized = F.interpolate(batch.float(), size=shape, mode="bilinear", antialias=True, align_corners=False)
            if image.dtype == torch.uint8:
                resized = resized.round().clamp(0, 255).to(torch.uint8)
            image = resized if image.dim() == 4 else resized[0]
            h, w = shape
        if h < size or w < size:
            raise ValueError(f"Preprocess: an image of {h}x{w} pixels is smaller than the model's {size}x{size} "
                             f"input (give a resize to bring it up)")
        top, left = centre_box(h, w, size)
        return image[..., top:top + size, left:left + size]

    def normalize(self, pixels: Tensor) -> Tensor:
        """``(p * scale - mean) / std`` on pixels already ``size x size``: float32."""
        x = pixels.to(torch.float32) * self.scale
        return (x - self._mean(x)) / self._std(x)

    def __call__(self, image: Tensor) -> Tensor:
        """uint8 (or float 0..255) ``[3, H, W]`` or ``[N, 3, H, W]`` -> float32 model input."""
        return self.normalize(self.geometry(image))

    def invert(self, x: Tensor) -> Tensor:
        """The model's input back to uint8 pixels ``[..., 3, H, W]`` (for display)."""
        return self.to_pixels(x.detach().float()).round().clamp(0, 255).to(torch.uint8)

    def to_pixels(self, x: Tensor) -> Tensor:
        """The model's input back to float pixels (0..255 scale, not clipped)."""
        return (x * self._std(x) + self._mean(x)) / self.scale

    def affine(self, size: int | None = None) -> tuple[Tensor, Tensor]:
        """``(gain [3, 1, 1], offset [3, size, size])`` with pixels = input * gain + offset
        (the offset is the mean in pixel units, a run's mean image centre-cropped)."""
        size = self.size if size is None else size
        probe = torch.zeros((3, size, size))
        return self._std(probe) / self.scale, (self._mean(probe) / self.scale).expand(3, size, size)

    @property
    def pixel_step(self) -> float:
        """One pixel level (1 of 255) in model-input units, averaged over the channels."""
        return sum(self.scale / s for s in self.std) / 3

    def _mean(self, x: Tensor) -> Tensor:
        if isinstance(self.mean, Tensor):
            h, w = x.shape[-2:]
            top, left = centre_box(*self.mean.shape[1:], h) if h == w else (0, 0)
            return self.mean[:, top:top + h, left:left + w].to(x.device) * self.scale
        return torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(3, 1, 1)

    def _std(self, x: Tensor) -> Tensor:
        return torch.tensor(self.std, dtype=x.dtype, device=x.device).view(3, 1, 1)

    @staticmethod
    def _check(image) -> Tensor:
        if not isinstance(image, Tensor) or image.dim() not in (3, 4) or image.shape[-3] != 3:
            got = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
            raise ValueError(f"preprocess: image must be a Tensor[3, H, W] or [N, 3, H, W] of RGB pixels (got {got})")
        if image.dtype != torch.uint8 and not image.is_floating_point():
            raise ValueError(f"preprocess: image must be uint8 (or float in 0..255) pixels (got {image.dtype})")
        return image

    def describe(self) -> str:
        """One line for the report."""
        mean = "the run's mean image" if isinstance(self.mean, Tensor) else \
            "mean (" + ", ".join(f"{m:g}" for m in self.mean) + ")"
        resize = f"short side {self.resize}, " if self.resize is not None else ""
        return (f"{resize}centre {self.size}x{self.size}, x{self.scale:g}, {mean}, std ("
                + ", ".join(f"{s:g}" for s in self.std) + ")")

    def as_plain(self) -> dict:
        """Plain values (saved with a report; a mean image as a tensor)."""
        return {"size": self.size, "resize": self.resize, "mean": self.mean if isinstance(self.mean, Tensor)
                else list(self.mean), "std": list(self.std), "scale": self.scale}
