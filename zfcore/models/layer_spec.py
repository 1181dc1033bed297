"""Names, output shapes and receptive fields of a plain CNN's layers, computed
from the layers themselves (kernel, stride, padding, dilation, ceil mode)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..geometry import pair as _pair
from ..geometry import pool_output_size, receptive_field_step
from .layer_table import POINTWISE, kind_of, window_rule


@dataclass(frozen=True)
class LayerInfo:
    """One layer's output: ``shape`` is ``(C, H, W)`` for maps, ``(features,)``
    after flattening. A unit ``(h, w)`` sees the input rows
    ``offset[0] + h * jump[0] +- (size[0] - 1) / 2`` (likewise columns)."""

    name: str
    kind: str
    shape: tuple[int, ...]
    size: tuple[int, int]
    jump: tuple[int, int]
    offset: tuple[float, float]


class LayerSpec:
    """The layers of a model in forward order, by ``named_children`` name.

    Example:
        >>> spec = LayerSpec.of(zfnet(), (3, 224, 224))
        >>> spec["pool1"].shape, spec["conv2"].size
        ((96, 55, 55), (23, 23))
    """

    def __init__(self, input_shape: tuple[int, int, int], layers: list[LayerInfo]):
        self.input_shape = tuple(input_shape)
        self.layers = layers
        self._by_name = {layer.name: layer for layer in layers}

    @property
    def names(self) -> list[str]:
        return [layer.name for layer in self.layers]

    def __getitem__(self, name: str) -> LayerInfo:
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"LayerSpec: no layer named {name!r}; layers are {', '.join(self.names)}") from None

    def box(self, name: str, h: int, w: int) -> tuple[int, int, int, int]:
        """Input-space box ``(top, left, bottom, right)`` (end-exclusive, clipped to
        the input) seen by unit ``(h, w)`` of layer ``name``."""
        layer = self[name]
        _, height, width = self.input_shape
        if len(layer.shape) != 3:
            return 0, 0, height, width
        top = layer.offset[0] + h * layer.jump[0] - (layer.size[0] - 1) / 2
        left = layer.offset[1] + w * layer.jump[1] - (layer.size[1] - 1) / 2
        return (max(0, int(top)), max(0, int(left)),
                min(height, int(top) + layer.size[0]), min(width, int(left) + layer.size[1]))

    @classmethod
    def of(cls, model: nn.Module, input_shape: tuple[int, int, int]) -> "LayerSpec":
        """Walk ``model.named_children()`` (a flat sequential model) from an input of
        ``input_shape = (C, H, W)``."""
        return cls.of_layers(list(model.named_children()), input_shape)

    @classmethod
    def of_layers(cls, named_layers, input_shape: tuple[int, int, int]) -> "LayerSpec":
        """The same for ``(name, module)`` pairs in forward order; a map entering
        a Linear layer is flattened, as ``torch.flatten(x, 1)`` would."""
        c, h, w = input_shape
        size, jump, offset = (1, 1), (1, 1), (0.0, 0.0)
        flat: int | None = None
        layers = []
        for name, module in named_layers:
            kind = kind_of(module)
            if kind in ("conv", "pool"):
                if flat is not None:
                    raise ValueError(f"LayerSpec: {name} ({type(module).__name__}) follows a flattening layer")
                k, s, p, d = window_rule(module)
                ceil = bool(getattr(module, "ceil_mode", False))
                out = [pool_output_size(n, k[i], s[i], p[i], ceil, d[i]) for i, n in enumerate((h, w))]
                if min(out) <= 0:
                    raise ValueError(f"LayerSpec: {name} gets a {h}x{w} input, too small for kernel {k}")
                h, w = out
                if kind == "conv":
                    c = module.out_channels
                steps = [receptive_field_step(size[i], jump[i], offset[i], k[i], s[i], p[i], d[i]) for i in range(2)]
                size, jump, offset = (tuple(step[j] for step in steps) for j in range(3))
            elif kind == "flatten":
                flat = c * h * w
            elif kind == "adaptiveavgpool2d" and flat is None:
                out = _pair(module.output_size)
                out = tuple(o if o is not None else n for o, n in zip(out, (h, w)))
                if out != (h, w):  # windows of varying size: a unit may see the whole input
                    _, height, width = input_shape
                    size, jump, offset = (height, width), (1, 1), ((height - 1) / 2, (width - 1) / 2)
                h, w = out
            elif kind == "linear":
                if flat is None:
                    flat = c * h * w
                if module.in_features != flat:
                    raise ValueError(f"LayerSpec: {name} expects {module.in_features} inputs, gets {flat}")
                flat = module.out_features
            elif kind in POINTWISE:
                pass
            else:
                raise ValueError(f"LayerSpec: cannot walk {name} ({type(module).__name__})")
            if flat is not None:
                _, height, width = input_shape
                layers.append(LayerInfo(name, kind, (flat,), (height, width), (1, 1), ((height - 1) / 2, (width - 1) / 2)))
            else:
                layers.append(LayerInfo(name, kind, (c, h, w), size, jump, offset))
        return cls(tuple(input_shape), layers)
