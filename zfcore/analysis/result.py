"""``Result``: what every analysis returns, one dataclass of tensors and plain
values with one way to be saved.

``result.to_plain()`` is made of tensors, numbers, strings, None and lists,
tuples and dicts of them (a nested ``Result`` becomes a dict tagged with its
class name), so ``torch.save`` writes it and ``torch.load(weights_only=True)``
reads it back; ``Cls.from_plain(plain)`` rebuilds the dataclass. Nothing read
back names code to run: a tag is looked up among the ``Result`` classes only.

    >>> @dataclass
    ... class Scores(Result):
    ...     values: Tensor
    ...     layer: str
    >>> Scores.from_plain(torch.load(path, weights_only=True))
"""

from __future__ import annotations

import dataclasses
from pathlib import PurePath
from typing import Any, ClassVar, TypeVar

import torch

__all__ = ["Result", "display_signed"]

_TAG = "__result__"
R = TypeVar("R", bound="Result")


class Result:
    """Base of the analyses' result dataclasses (subclasses are ``@dataclass``)."""

    _classes: ClassVar[dict[str, type[Result]]] = {}

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        Result._classes[cls.__name__] = cls

    def to_plain(self) -> dict:
        """The fields as plain values (see the module docstring)."""
        if not dataclasses.is_dataclass(self):
            raise TypeError(f"{type(self).__name__} is not a dataclass")
        return {f.name: _plain(getattr(self, f.name), f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_plain(cls: type[R], plain: dict | R) -> R:
        """``plain`` (from ``to_plain``, perhaps saved and read back) as a
        ``cls``; a ``cls`` is returned as it is. Fields the dict lacks take
        their defaults; a required field it lacks is a ``ValueError``."""
        if isinstance(plain, cls):
            return plain
        if not isinstance(plain, dict):
            raise ValueError(f"{cls.__name__}.from_plain: expected a dict (got {type(plain).__name__})")
        values, missing = {}, []
        for f in dataclasses.fields(cls):
            if f.name in plain:
                values[f.name] = _unplain(plain[f.name])
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                missing.append(f.name)
        if missing:
            raise ValueError(f"{cls.__name__}.from_plain: the saved result lacks {', '.join(missing)}; "
                             f"it was written by another version of zfcore: run the analysis again")
        return cls(**values)

    # The names the analyses' results had before ``to_plain``; kept for callers.
    def as_dict(self) -> dict:
        return self.to_plain()

    @classmethod
    def from_dict(cls: type[R], plain: dict | R) -> R:
        return cls.from_plain(plain)


def display_signed(x: torch.Tensor) -> torch.Tensor:
    """Signed images ``[..., 3, h, w]`` (projections, gradients, filters) as 8
    bits, the way results keep them and the report shows them: grey is 0, each
    image scaled by its own largest magnitude; uint8 of the same shape."""
    x = torch.nan_to_num(x.float())
    peak = x.abs().amax(dim=(-3, -2, -1), keepdim=True)
    scaled = torch.where(peak > 0, 127 * x / peak.clamp_min(torch.finfo(torch.float32).tiny), 0.0)
    return (128 + scaled).round().clamp(0, 255).to(torch.uint8)


def _plain(value: Any, where: str) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, Result):
        return {_TAG: type(value).__name__, **value.to_plain()}
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, dict):
        return {k: _plain(v, f"{where}[{k!r}]") for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v, where) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain(v, where) for v in value)
    if isinstance(value, torch.dtype | torch.device):
        return str(value)
    raise TypeError(f"Result.to_plain: {where} holds a {type(value).__name__}, which is not a tensor or plain value")


def _unplain(value: Any) -> Any:
    if isinstance(value, dict):
        if _TAG in value:
            cls = Result._classes.get(str(value[_TAG]))
            if cls is None:
                raise ValueError(f"Result.from_plain: unknown result class {value[_TAG]!r}")
            return cls.from_plain({k: v for k, v in value.items() if k != _TAG})
        return {k: _unplain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_unplain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_unplain(v) for v in value)
    return value
