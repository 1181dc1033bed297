"""One ``LayerRule`` per op kind: the deconvnet engine's whole knowledge of layers.

A rule says, for one ATen op of the captured graph (``zfcore.deconv.graph``):

- ``record``: what the way up keeps for the way down: ``"switches"`` (max
  pooling, 1 byte per output), ``"mask"`` (ReLU's ``input > 0``, 1 byte, in
  guided and gradient modes), ``"inputs"`` (the op's inputs, for an op that
  goes down by its gradient), or nothing;
- ``down(node, signal, run)``: the signal at the op's output sent to each of
  its activation inputs (a tuple, in ``node.inputs`` order), on whole maps or
  on receptive-field windows (``run.windows``);
- ``window(node, geometry)``: where one output unit's window lies in each
  input, ``None`` for an op whose units see the whole map (the engine then
  goes down on whole maps).

=====================================  =====================  ==================  ==================
op                                     deconvnet (paper)      guided              gradient
=====================================  =====================  ==================  ==================
max pooling                            unpool2d through the 1-byte switches (all modes)
ReLU                                   relu(signal)           relu(signal)*mask   signal*mask
convolution (any groups, dilation)     transposed convolution with the forward weight, no bias
BatchNorm (eval)                       its per-channel scale (folded into the convolution below it)
LocalResponseNorm                      skipped                its gradient        its gradient
add, sub / cat, split, slice           the signal to every input / the matching slices
average and adaptive-average pooling,  their transposes (the gradient of a linear op)
mean, linear/addmm/mm, view, reshape,
flatten, permute, padding
dropout (eval), clone                  the signal as it is
other element-wise functions           their gradient (vector-Jacobian product), as Captum's
(sigmoid, tanh, GELU, SiLU, hardswish, NeuronDeconvolution and NeuronGuidedBackprop do: only
ReLU6/hardtanh, leaky ReLU, ...)       ReLU's backward is replaced
=====================================  =====================  ==================  ==================

An op outside this table is an error that names the node, its op and its
module (``unsupported``), never a silent identity.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, fx

from .. import geometry
from ..ops import unpool2d
from .graph import CaptureError, GraphNode

aten = torch.ops.aten
Geometry = tuple[tuple[int, int, int], tuple[int, int, int]]  # per spatial dim: (jump, first, end) of a window


@dataclass(frozen=True)
class LayerRule:
    """How one op kind records on the way up, goes down and maps a window."""

    kind: str
    down: Callable
    window: Callable | None = None
    record: str | None = None


class Run:
    """What one way down reads: the mode, the forward's records (per node, a
    tuple of tensors over the distinct images), the constants, and either
    ``index`` (each signal row's image, whole maps) or ``windows``."""

    def __init__(self, graph, consts: dict, mode: str, lrn: str, records: dict, windows=None, index=None):
        self.graph, self.consts, self.mode, self.lrn = graph, consts, mode, lrn
        self.records, self.windows, self.index = records, windows, index

    def read(self, node: int, k: int = 0) -> Tensor:
        t = self.records[node][k]
        return self.windows.crop(t, node) if self.windows is not None else t[self.index]

    def zeros(self, signal: Tensor, node: GraphNode) -> Tensor:
        """Zeros shaped as ``node``'s output for ``signal``'s rows (its window when cropped)."""
        shape = node.shape
        if self.windows is not None:
            shape = (shape[0], *self.windows.size(node.index))
        return signal.new_zeros((signal.shape[0], *shape))


# ------------------------------------------------------------------ op calls


def arg_value(graph, consts, values: dict, a):
    """An fx argument's value: an activation from ``values`` (by node index), or a constant."""
    if isinstance(a, fx.Node):
        if a.name in consts:
            return consts[a.name]
        return values[graph.alias[a.name]]
    return a


VIEWS = {aten.view.default, aten._unsafe_view.default, aten.reshape.default, aten.squeeze.dims,
         aten.squeeze.dim, aten.squeeze.default, aten.unsqueeze.default, aten.flatten.using_ints}


def apply(graph, consts, node: GraphNode, values: dict) -> Tensor:
    """``node``'s op on activations ``values`` (node index -> tensor); the batch
    dimension may differ from the capture's."""
    if node.op == "slice":
        dim, start, end = node.attrs
        return values[node.inputs[0]].narrow(dim, start, end - start)
    if node.op == "lrn" and node.lrn is not None:
        return F.local_response_norm(values[node.inputs[0]], *node.lrn)
    if node.op == "lrn":
        env = {}
        for n in node.sub:
            def value(a, env=env):
                if isinstance(a, fx.Node):
                    if a.name in env:
                        return env[a.name]
                    return consts[a.name] if a.name in consts else values[graph.alias[a.name]]
                return a
            args = fx.node.map_aggregate(n.args, value)
            if n.target in VIEWS:  # the LRN's views carry the capture's batch size
                x = args[0]
                shape = list(args[1])
                shape[0] = x.shape[0]
                env[n.name] = x.reshape(shape) if -1 not in shape[1:] else x.reshape(x.shape[0], *_shape(n))
            else:
                env[n.name] = n.target(*args, **fx.node.map_aggregate(n.kwargs, value))
        return env[node.sub[-1].name]
    if node.op in VIEWS:
        x = values[node.inputs[0]]
        return x.reshape(x.shape[0], *node.shape)
    n = node.fx
    args = fx.node.map_aggregate(n.args, lambda a: arg_value(graph, consts, values, a))
    kwargs = fx.node.map_aggregate(n.kwargs, lambda a: arg_value(graph, consts, values, a))
    out = n.target(*args, **kwargs)
    return out[0] if isinstance(out, (tuple, list)) else out


def _shape(n: fx.Node) -> tuple:
    return tuple(n.meta["val"].shape[1:])


def _vjp(fn, primals: list[Tensor], signal: Tensor) -> tuple:
    with torch.enable_grad():
        xs = [p.detach().requires_grad_() for p in primals]
        grads = torch.autograd.grad(fn(*xs), xs, signal, allow_unused=True)
    return tuple(g if g is not None else torch.zeros_like(x) for g, x in zip(grads, xs))


def _call_with(run: Run, node: GraphNode, xs) -> Tensor:
    return apply(run.graph, run.consts, node, dict(zip(node.inputs, xs)))


# ------------------------------------------------------------------- windows


def pointwise(node, geometry):
    return [geometry] * len(node.inputs)


def sliding(kernel, stride, padding, dilation):
    """The window of a kernel sliding with ``stride`` over ``padding``."""
    def window(node, geometry):
        return [tuple((j * stride[d], a * stride[d] - padding[d],
                       (b - 1) * stride[d] - padding[d] + geometry_extent(kernel[d], dilation[d]))
                      for d, (j, a, b) in enumerate(geometry))]
    return window


def geometry_extent(kernel, dilation):
    return geometry.extent(kernel, dilation)


def _pair(v, default=None):
    if v is None or (isinstance(v, (list, tuple)) and len(v) == 0):
        return default
    return geometry.pair(v[0] if isinstance(v, (list, tuple)) and len(v) == 1 else v)


# -------------------------------------------------------------- convolution


def conv_params(node: GraphNode, consts) -> dict:
    """A 2-D convolution's weight and geometry; an error for anything else."""
    x, w, _, stride, padding, dilation, transposed, _, groups = node.fx.args
    if transposed or len(stride) != 2:
        raise CaptureError(f"Deconvnet: {node.where()}: only 2-D convolutions (not transposed) go down by the "
                           "transposed convolution")
    if not (isinstance(w, fx.Node) and w.name in consts):
        raise CaptureError(f"Deconvnet: {node.where()}: the convolution's weight is computed from the input")
    return {"weight": consts[w.name], "stride": tuple(stride), "padding": tuple(padding),
            "dilation": tuple(dilation), "groups": groups}


def conv_transpose(node: GraphNode, signal: Tensor, run: Run, weight: Tensor | None = None) -> Tensor:
    """The transposed convolution of ``node`` (a convolution) on ``signal``;
    ``weight``: the forward weight, possibly with a BatchNorm folded in."""
    c = conv_params(node, run.consts)
    weight = c["weight"] if weight is None else weight
    if run.windows is not None:
        return F.conv_transpose2d(signal, weight, None, c["stride"], 0, 0, c["groups"], c["dilation"])
    below = run.graph.nodes[node.inputs[0]].shape
    pad = tuple(geometry.output_padding(below[-2 + i], node.shape[-2 + i], weight.shape[-2 + i], c["stride"][i],
                                        c["padding"][i], c["dilation"][i]) for i in range(2))
    return F.conv_transpose2d(signal, weight, None, c["stride"], c["padding"], pad, c["groups"], c["dilation"])


def _conv_window(node, geometry):
    c = node.fx.args
    w = node.fx.args[1].meta["val"].shape
    return sliding(tuple(w[-2:]), tuple(c[3]), tuple(c[4]), tuple(c[5]))(node, geometry)


def _conv_down(node, signal, run):
    return (conv_transpose(node, signal, run),)


# --------------------------------------------------------------- max pooling


def pool_params(node: GraphNode) -> tuple:
    """``(kernel, stride, padding, ceil_mode)`` of a max pooling node."""
    args = list(node.fx.args) + [None] * 6
    if node.op == aten.max_pool2d_with_indices.default:
        x, k, s, p, d, ceil = args[:6]
        if d is not None and _pair(d, (1, 1)) != (1, 1):
            raise CaptureError(f"Deconvnet: {node.where()}: max pooling with dilation is not supported")
    else:  # zfcore.max_pool2d_switches
        x, k, s, p, ceil = args[:5]
    kernel = _pair(k)
    return kernel, _pair(s, kernel), _pair(p, (0, 0)) if p is not None else (0, 0), bool(ceil)


def _pool_window(node, geometry):
    k, s, p, _ = pool_params(node)
    return sliding(k, s, p, (1, 1))(node, geometry)


def unpool(node: GraphNode, signal: Tensor, run: Run) -> Tensor:
    k, s, p, _ = pool_params(node)
    switches = run.read(node.index)
    if run.windows is not None:
        size = tuple((n - 1) * s[i] + k[i] for i, n in enumerate(signal.shape[-2:]))
        return unpool2d(signal, switches, k, s, 0, size)
    return unpool2d(signal, switches, k, s, p, run.graph.nodes[node.inputs[0]].shape[-2:])


# ---------------------------------------------------------------------- ReLU


def relu_down(node, signal, run):
    if run.mode == "deconvnet":
        return (F.relu(signal),)
    mask = run.read(node.index)
    return (F.relu(signal) * mask if run.mode == "guided" else signal * mask,)


# ----------------------------------------------------------------- BatchNorm


def bn_scale(node: GraphNode, consts) -> Tensor:
    """The per-channel scale ``weight / sqrt(var + eps)`` of an eval BatchNorm."""
    x, w, b, mean, var, momentum, eps = node.fx.args
    var = consts[var.name]
    scale = torch.rsqrt(var + eps)
    return scale * consts[w.name] if w is not None else scale


def bn_down(node, signal, run):
    scale = bn_scale(node, run.consts)
    return (signal * scale.reshape(-1, *[1] * (signal.dim() - 2)).to(signal.dtype),)


# ------------------------------------------------- sums, concatenation, slices


def _same_shapes(node, run):
    return all(run.graph.nodes[i].shape == node.shape for i in node.inputs)


def add_down(node, signal, run):
    if not _same_shapes(node, run):
        return linear_down(node, signal, run)
    alpha = node.fx.kwargs.get("alpha", 1)
    sign = -1 if node.op == aten.sub.Tensor else 1
    a, b = node.fx.args[:2]
    dynamic = [isinstance(v, fx.Node) and v.name not in run.consts for v in (a, b)]
    grads = []
    if dynamic[0]:
        grads.append(signal)
    if dynamic[1]:
        grads.append(signal * (sign * alpha) if sign * alpha != 1 else signal)
    if len(grads) == 2 and node.inputs[0:1] == node.inputs[1:2]:  # x + x
        return (grads[0] + grads[1],)
    return tuple(grads)


def scale_down(node, signal, run):
    """mul/div by a constant (or a scalar)."""
    a, b = node.fx.args[:2]
    other = b if isinstance(a, fx.Node) and a.name not in run.consts else a
    value = run.consts[other.name] if isinstance(other, fx.Node) else other
    if run.windows is not None and isinstance(value, Tensor) and value.dim() >= 2 and any(
            n > 1 for n in value.shape[-2:]):
        raise CaptureError(f"Deconvnet: {node.where()}: a spatial constant on a cropped window")
    if node.op == aten.div.Tensor:
        return (signal / value,)
    result = signal * value
    if isinstance(value, Tensor) and result.shape != signal.shape:
        return linear_down(node, signal, run)
    return (result,)


def cat_down(node, signal, run):
    tensors, dim = node.fx.args[0], (node.fx.args[1] if len(node.fx.args) > 1 else 0)
    sizes = [t.meta["val"].shape[dim] for t in tensors]
    if any(isinstance(t, fx.Node) and t.name in run.consts for t in tensors):
        return linear_down(node, signal, run)
    parts = torch.split(signal, sizes, dim)
    grads: dict[int, Tensor] = {}
    for t, part in zip(tensors, parts):
        i = run.graph.alias[t.name]
        grads[i] = grads[i] + part if i in grads else part
    return tuple(grads[i] for i in node.inputs)


def _channel_dim(node, dim):
    rank = len(node.shape) + 1
    return dim % rank == 1


def _cat_window(node, geometry):
    dim = node.fx.args[1] if len(node.fx.args) > 1 else 0
    return pointwise(node, geometry) if _channel_dim(node, dim) else None


def _slice_args(node):
    if node.op == "slice":
        dim, start, end = node.attrs
        return dim, start, end, 1
    x, dim, start, end, step = (list(node.fx.args) + [0, None, None, 1])[:5]
    return dim, start, end, step


def slice_down(node, signal, run):
    dim, start, end, step = _slice_args(node)
    if node.op != "slice":
        return linear_down(node, signal, run)
    below = run.graph.nodes[node.inputs[0]]
    out = signal.new_zeros((signal.shape[0], *below.shape) if run.windows is None else
                           (signal.shape[0], below.shape[0], *signal.shape[2:]))
    out.narrow(dim, start, end - start).copy_(signal)
    return (out,)


def _slice_window(node, geometry):
    dim, start, end, step = _slice_args(node)
    return pointwise(node, geometry) if _channel_dim(node, dim) and step == 1 else None


# ------------------------------------------------ linear ops, by their gradient


def linear_down(node, signal, run):
    """A linear op's transpose: its vector-Jacobian product at zero inputs."""
    primals = [run.zeros(signal, run.graph.nodes[i]) for i in node.inputs]
    return _vjp(lambda *xs: _call_with(run, node, xs), primals, signal)


def matmul_down(node, signal, run):
    """addmm(bias, x, w) / mm(x, w) with a constant ``w``: ``signal @ w.T``."""
    args = node.fx.args
    x, w = (args[1], args[2]) if node.op == aten.addmm.default else (args[0], args[1])
    if isinstance(w, fx.Node) and w.name in run.consts and isinstance(x, fx.Node) and x.name not in run.consts:
        return (signal @ run.consts[w.name].T.to(signal.dtype),)
    return linear_down(node, signal, run)


def identity_down(node, signal, run):
    return (signal,)


def _avg_window(node, geometry):
    args = list(node.fx.args) + [None] * 7
    x, k, s, p, ceil, include, divisor = args[:7]
    kernel = _pair(k)
    stride, padding = _pair(s, kernel), _pair(p, (0, 0)) if p is not None else (0, 0)
    if ceil or (include is False and padding != (0, 0)):
        return None  # the divisor depends on where the window sits
    return sliding(kernel, stride, padding, (1, 1))(node, geometry)


def avg_pool_down(node, signal, run):
    if run.windows is None:
        return linear_down(node, signal, run)
    args = list(node.fx.args) + [None] * 7
    x, k, s, p, ceil, include, divisor = args[:7]
    kernel = _pair(k)
    stride = _pair(s, kernel)
    size = tuple((n - 1) * stride[i] + kernel[i] for i, n in enumerate(signal.shape[-2:]))
    zeros = signal.new_zeros((*signal.shape[:2], *size))
    return _vjp(lambda z: F.avg_pool2d(z, kernel, stride, 0, False, True, divisor), [zeros], signal)


def _pad_window(node, geometry):
    pad = node.fx.args[1]
    if len(pad) > 4 or len(node.shape) != 3:
        return None
    left = (list(pad) + [0, 0, 0, 0])[:4]
    shifts = (left[2], left[0])  # (top, left)
    return [tuple((j, a - shifts[d], b - shifts[d]) for d, (j, a, b) in enumerate(geometry))]


def pad_down(node, signal, run):
    if run.windows is not None:
        return (signal,)  # the same window, shifted; the padding's part is zeroed as outside the map
    return linear_down(node, signal, run)


def _dropout_down(node, signal, run):
    train = node.fx.args[2] if len(node.fx.args) > 2 else node.fx.kwargs.get("train", True)
    if train:
        raise CaptureError(f"Deconvnet: {node.where()}: dropout in training mode")
    return (signal,)


# ------------------------------------------------ nonlinearities, by their gradient


def gradient_down(node, signal, run):
    """An op that goes down by its gradient at the recorded inputs."""
    primals = [run.read(node.index, k) for k in range(len(node.inputs))]
    return _vjp(lambda *xs: _call_with(run, node, xs), primals, signal)


def lrn_down(node, signal, run):
    if run.mode == "deconvnet" and run.lrn == "skip":
        return (signal,)
    return gradient_down(node, signal, run)


def mul_down(node, signal, run):
    a, b = node.fx.args[:2]
    dynamic = [isinstance(v, fx.Node) and v.name not in run.consts for v in (a, b)]
    if all(dynamic):
        return gradient_down(node, signal, run)
    return scale_down(node, signal, run)


def _is_two_activations(node) -> bool:
    return len(node.inputs) == 2 or (len(node.inputs) == 1 and all(
        isinstance(v, fx.Node) for v in node.fx.args[:2]) and node.fx.args[0] is node.fx.args[1])


# ------------------------------------------------------------------ the table

_POINT = pointwise
ELEMENTWISE_GRADIENT = [
    aten.sigmoid.default, aten.tanh.default, aten.gelu.default, aten.silu.default, aten.hardswish.default,
    aten.hardsigmoid.default, aten.hardtanh.default, aten.leaky_relu.default, aten.elu.default,
    aten.softplus.default, aten.clamp.default, aten.clamp.Tensor, aten.clamp_min.default, aten.clamp_max.default,
    aten.mish.default, aten.exp.default, aten.log.default, aten.pow.Tensor_Scalar, aten.sqrt.default,
    aten.rsqrt.default, aten.abs.default, aten.neg.default, aten.log_sigmoid_forward.default,
    aten.reciprocal.default, aten.erf.default,
]

RULES: dict = {
    aten.convolution.default: LayerRule("conv", _conv_down, _conv_window),
    aten.max_pool2d_with_indices.default: LayerRule("pool", lambda n, g, r: (unpool(n, g, r),), _pool_window,
                                                    "switches"),
    aten.relu.default: LayerRule("relu", relu_down, _POINT, "mask"),
    aten._native_batch_norm_legit_no_training.default: LayerRule("batchnorm", bn_down, _POINT),
    aten.add.Tensor: LayerRule("add", add_down, _POINT),
    aten.sub.Tensor: LayerRule("add", add_down, _POINT),
    aten.mul.Tensor: LayerRule("mul", mul_down, _POINT),
    aten.div.Tensor: LayerRule("mul", mul_down, _POINT),
    aten.cat.default: LayerRule("cat", cat_down, _cat_window),
    aten.slice.Tensor: LayerRule("slice", slice_down, _slice_window),
    "slice": LayerRule("slice", slice_down, _slice_window),
    aten.avg_pool2d.default: LayerRule("avgpool", avg_pool_down, _avg_window),
    aten._adaptive_avg_pool2d.default: LayerRule("adaptiveavgpool", linear_down),
    aten.mean.dim: LayerRule("mean", linear_down),
    aten.sum.dim_IntList: LayerRule("sum", linear_down),
    aten.addmm.default: LayerRule("linear", matmul_down),
    aten.mm.default: LayerRule("linear", matmul_down),
    aten.permute.default: LayerRule("permute", linear_down),
    aten.constant_pad_nd.default: LayerRule("pad", pad_down, _pad_window),
    aten.clone.default: LayerRule("identity", identity_down, _POINT),
    aten.alias.default: LayerRule("identity", identity_down, _POINT),
    aten.dropout.default: LayerRule("dropout", _dropout_down, _POINT),
    aten.native_dropout.default: LayerRule("dropout", _dropout_down, _POINT),
    "lrn": LayerRule("localresponsenorm", lrn_down, _POINT, "inputs"),
    **{op: LayerRule("view", linear_down) for op in VIEWS},
    **{op: LayerRule("gradient", gradient_down, _POINT, "inputs") for op in ELEMENTWISE_GRADIENT},
    aten._softmax.default: LayerRule("gradient", gradient_down, None, "inputs"),
    aten._log_softmax.default: LayerRule("gradient", gradient_down, None, "inputs"),
}
# zfcore's own max pooling (MaxPool2dSwitches) is captured as its op: registered by zfcore.ops, imported above.
RULES[torch.ops.zfcore.max_pool2d_switches.default] = RULES[aten.max_pool2d_with_indices.default]
# A product of two activations (attention-like gates) goes down by its gradient;
# a product with a constant is the "mul" rule of the table.
PRODUCT_OF_ACTIVATIONS = LayerRule("gradient", gradient_down, _POINT, "inputs")


def rule_of(node: GraphNode) -> LayerRule:
    """``node``'s rule; an op outside the table is a ``CaptureError`` naming it."""
    rule = RULES.get(node.op)
    if rule is None:
        raise CaptureError(f"Deconvnet: cannot send a signal down through {node.where()}: the op is not in "
                           f"zfcore.deconv.rules.RULES (supported: convolution, max pooling, ReLU, BatchNorm, "
                           f"add, cat/split/slice, average pooling, mean, linear, view/reshape/permute, padding, "
                           f"dropout and element-wise functions)")
    if rule.kind == "mul" and _is_two_activations(node):
        return PRODUCT_OF_ACTIVATIONS
    return rule


def records_of(rule: LayerRule, mode: str, lrn: str) -> str | None:
    """What ``rule``'s op records on the way up in ``mode``."""
    if rule.record == "mask":
        return "mask" if mode != "deconvnet" else None
    if rule.kind == "localresponsenorm" and mode == "deconvnet" and lrn == "skip":
        return None
    return rule.record
