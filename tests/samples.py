"""One ``sample_inputs`` generator per op: the awkward cases, random data, fresh
seeds. Every sample carries its seed in ``describe()`` so a failure can be
reproduced with ``ZFCORE_TEST_SEED``."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch

from zfcore.ops import max_pool2d_switches

_BASE_SEED = int(os.environ.get("ZFCORE_TEST_SEED", int.from_bytes(os.urandom(4), "little")))

# (shape, kernel, stride, padding, ceil_mode): ZFNet's overlapping 3x3/s2 with
# ceil rounding, stride > kernel, padding, 1x1 inputs, odd and non-square sizes.
POOL_GEOMETRIES = [
    ((2, 3, 13, 13), 3, 2, 0, True),      # ZFNet pool: overlapping windows, ceil mode
    ((2, 3, 37, 41), 3, 2, 1, True),      # rows wide enough for the vectorized row kernels
    ((1, 2, 34, 36), 2, 2, 0, False),
    ((2, 4, 14, 11), 3, 2, 1, False),     # padding
    ((1, 3, 9, 12), (3, 2), (2, 1), (1, 0), True),
    ((2, 2, 10, 10), 2, 3, 0, False),     # stride > kernel: some inputs in no window
    ((2, 2, 11, 7), 2, 3, 1, True),       # stride > kernel with padding and ceil
    ((2, 3, 1, 1), 1, 1, 0, False),       # 1x1
    ((1, 2, 3, 3), 3, 2, 1, True),        # tiny, ceil + padding
    ((2, 3, 17, 15), 5, 2, 2, True),
    ((1, 2, 16, 16), 16, 16, 0, False),   # the largest window (256 elements)
    ((0, 3, 8, 8), 3, 2, 0, True),        # empty batch
]
LAYOUTS = ("nchw", "channels_last", "noncontiguous")
CONTENTS = ("random", "ties", "nan", "inf")


@dataclass
class PoolSample:
    x: torch.Tensor
    kernel_size: object
    stride: object
    padding: object
    ceil_mode: bool
    seed: int
    notes: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def args(self):
        return (self.kernel_size, self.stride, self.padding, self.ceil_mode)

    def describe(self) -> str:
        return (f"x{list(self.x.shape)} {self.x.dtype} stride{tuple(self.x.stride())} k={self.kernel_size} "
                f"s={self.stride} p={self.padding} ceil={self.ceil_mode} {self.notes} seed={self.seed}")


def _fill(shape, dtype, content: str, generator: torch.Generator) -> torch.Tensor:
    if content == "ties":  # few distinct values: many ties inside windows
        x = torch.randint(-2, 3, shape, generator=generator).to(torch.float64)
    else:
        x = torch.randn(shape, generator=generator, dtype=torch.float64)
    if content == "nan":
        x[torch.rand(shape, generator=generator) < 0.1] = float("nan")
    if content == "inf":
        x[torch.rand(shape, generator=generator) < 0.1] = float("inf")
        x[torch.rand(shape, generator=generator) < 0.3] = float("-inf")
        if x.numel():  # whole planes of -inf: windows with no finite element
            x.view(-1, *shape[-2:])[0] = float("-inf")
    return x.to(dtype)


def _layout(x: torch.Tensor, layout: str, generator: torch.Generator) -> torch.Tensor:
    if layout == "channels_last":
        return x.contiguous(memory_format=torch.channels_last)
    if layout == "noncontiguous":  # every other column of a wider tensor
        wide = torch.randn(*x.shape[:-1], 2 * x.shape[-1], generator=generator).to(x.dtype)
        wide[..., ::2] = x
        return wide[..., ::2]
    return x


def _seeds():
    counter = 0
    while True:
        counter += 1
        seed = (_BASE_SEED * 1_000_003 + counter) % (2**31)
        yield seed, torch.Generator().manual_seed(seed)


def pool_sample_inputs(dtype=torch.float32, layouts=LAYOUTS, contents=CONTENTS):
    """Samples for max_pool2d_switches over every geometry, layout and content."""
    seeds = _seeds()
    for shape, k, s, p, ceil in POOL_GEOMETRIES:
        for layout in layouts:
            for content in contents:
                seed, g = next(seeds)
                x = _layout(_fill(shape, dtype, content, g), layout, g)
                yield PoolSample(x, k, s, p, ceil, seed, notes=f"{layout}/{content}")


def unpool_sample_inputs(dtype=torch.float32, layouts=LAYOUTS):
    """Samples for unpool2d: switches of a real pooling, random y (NaN-free
    switches, random signal), ``extra`` holds y, switches and output_size."""
    for sample in pool_sample_inputs(dtype, layouts, contents=("random", "ties")):
        g = torch.Generator().manual_seed(sample.seed + 7)
        out, switches = max_pool2d_switches(sample.x, *sample.args, backend="reference")
        y = torch.randn(out.shape, generator=g, dtype=torch.float64).to(dtype)
        if out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous():
            y = y.contiguous(memory_format=torch.channels_last)
        sample.extra = {"y": y, "switches": switches, "output_size": tuple(sample.x.shape[-2:])}
        yield sample


# (y shape, weight shape, stride, padding, output_padding, groups, dilation)
CONV_GEOMETRIES = [
    ((2, 6, 7, 7), (6, 3, 7, 7), 2, 1, 1, 1, 1),   # ZFNet conv1 transposed, scaled down
    ((2, 8, 6, 6), (8, 4, 5, 5), 2, 0, 0, 1, 1),   # conv2
    ((1, 6, 5, 5), (6, 5, 3, 3), 1, 1, 0, 1, 1),   # conv3-5
    ((2, 6, 5, 4), (6, 2, 3, 3), (2, 1), (1, 0), (1, 0), 3, 1),  # groups, non-square
    ((1, 4, 5, 5), (4, 3, 3, 3), 1, 2, 0, 1, 2),   # dilation
    ((0, 4, 5, 5), (4, 3, 3, 3), 1, 0, 0, 1, 1),   # empty batch
]


@dataclass
class ConvSample:
    y: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor | None
    conv: tuple
    seed: int
    notes: str = ""

    def describe(self) -> str:
        return (f"y{list(self.y.shape)} {self.y.dtype} stride{tuple(self.y.stride())} w{list(self.weight.shape)} "
                f"bias={self.bias is not None} conv={self.conv} {self.notes} seed={self.seed}")


def conv_sample_inputs(dtype=torch.float32, layouts=LAYOUTS):
    """Samples for relu_conv_transpose2d: signed inputs (half of them rectified away)."""
    seeds = _seeds()
    for y_shape, w_shape, s, p, op, groups, d in CONV_GEOMETRIES:
        for layout in layouts:
            for with_bias in (False, True):
                seed, g = next(seeds)
                y = _layout(_fill(y_shape, dtype, "random", g), layout, g)
                weight = (torch.randn(w_shape, generator=g, dtype=torch.float64) * 0.1).to(dtype)
                bias = torch.randn(w_shape[1] * groups, generator=g, dtype=torch.float64).to(dtype) if with_bias else None
                yield ConvSample(y, weight, bias, (s, p, op, groups, d), seed, notes=layout)


# Pooling below a convolution: (conv input shape, conv weight shape, conv args, pool args)
DECONV_GEOMETRIES = [
    ((2, 3, 29, 29), (6, 3, 7, 7), dict(stride=2, padding=1), dict(kernel=3, stride=2, padding=0, ceil=True)),
    ((2, 4, 17, 15), (8, 4, 5, 5), dict(stride=2, padding=0), dict(kernel=3, stride=2, padding=1, ceil=False)),
    ((1, 4, 12, 12), (6, 2, 3, 3), dict(stride=1, padding=1, groups=2), dict(kernel=2, stride=3, padding=0, ceil=True)),
    ((0, 3, 12, 12), (4, 3, 3, 3), dict(stride=1, padding=0), dict(kernel=2, stride=2, padding=0, ceil=False)),
    # stride-1 pooling: a dense unpooled map (the CPU backend composes with oneDNN)
    ((2, 3, 10, 10), (5, 3, 3, 3), dict(stride=1, padding=1), dict(kernel=2, stride=1, padding=0, ceil=False)),
    # dilation, and channel blocks beyond 64 output channels
    ((1, 70, 9, 9), (6, 70, 3, 3), dict(stride=1, padding=2, dilation=2), dict(kernel=2, stride=2, padding=0, ceil=True)),
]


def deconv_sample_inputs(dtype=torch.float32, layouts=LAYOUTS):
    """Samples for deconv_step: switches from pooling a real convolution's output."""
    import torch.nn.functional as F

    seeds = _seeds()
    for x_shape, w_shape, conv, pool in DECONV_GEOMETRIES:
        for layout in layouts:
            seed, g = next(seeds)
            weight = torch.randn(w_shape, generator=g, dtype=torch.float64) * 0.2
            x = torch.randn(x_shape, generator=g, dtype=torch.float64)
            a = F.relu(F.conv2d(x, weight, None, conv["stride"], conv["padding"], conv.get("dilation", 1),
                                conv.get("groups", 1)))
            _, switches = max_pool2d_switches(a, pool["kernel"], pool["stride"], pool["padding"], pool["ceil"],
                                              backend="reference")
            y = _layout(torch.randn(switches.shape, generator=g, dtype=torch.float64).to(dtype), layout, g)
            # The output_padding that recovers the conv input's exact size.
            d = conv.get("dilation", 1)
            out_pad = tuple(
                (x_shape[2 + i] + 2 * conv["padding"] - d * (w_shape[2 + i] - 1) - 1) % conv["stride"]
                for i in range(2))
            kwargs = dict(pool_kernel_size=pool["kernel"], pool_stride=pool["stride"], pool_padding=pool["padding"],
                          unpooled_size=tuple(a.shape[-2:]), stride=conv["stride"], padding=conv["padding"],
                          output_padding=out_pad, groups=conv.get("groups", 1), dilation=d)
            sample = ConvSample(y, weight.to(dtype), None, (), seed, notes=layout)
            sample.switches, sample.kwargs, sample.input_shape = switches, kwargs, x_shape
            yield sample
