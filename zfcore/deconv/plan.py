"""The deconvnet's way down as a plan of stages over the captured graph.

``compile_plan(graph, rules, top, mode)`` turns the nodes below (and
including) node ``top`` into stages, in reverse forward order. Each stage
takes the signal at its ``top`` node and returns the signals at its
``bottom`` node's inputs, with one ``down(signal, run)`` for every stage and
mode (``run``: a ``rules.Run``, on whole maps or on receptive-field windows).

Most stages undo one node by its ``LayerRule``. Where the graph is a plain
run, found by pattern, stages fuse:

- deconvnet mode, max pool <- ReLU <- convolution (a BatchNorm between the
  convolution and the ReLU folded into the convolution's weight): one
  ``deconv_step`` (unpool, rectify and filter, the unpooled map never written);
- deconvnet mode, ReLU <- convolution (and BatchNorm): one ``relu_conv_transpose2d``;
- every mode, BatchNorm <- convolution: one transposed convolution with the
  folded weight.

A node fuses only when the stage above is its one reader among the nodes
below ``top``, so a branch's signal is always summed before it goes down.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

from .. import geometry
from ..ops import deconv_step, relu_conv_transpose2d
from . import rules as R
from .graph import CaptureError, Graph


@dataclass
class Stage:
    """Takes the signal at node ``top`` and returns the signals at the inputs of
    node ``bottom`` (``inputs``, in order)."""

    top: int
    bottom: int
    inputs: tuple[int, ...]
    covers: tuple[int, ...] = field(default=(), init=False)  # the nodes it undoes, top first

    def down(self, signal: Tensor, run: R.Run) -> tuple[Tensor, ...]:
        """The signals at ``inputs``; every subclass has this one signature."""
        raise NotImplementedError


@dataclass
class OpStage(Stage):
    """One node, by its rule."""

    node: object = None
    rule: R.LayerRule = None

    def down(self, signal: Tensor, run: R.Run) -> tuple[Tensor, ...]:
        return self.rule.down(self.node, signal, run)


@dataclass
class _ConvBelow(Stage):
    """A stage ending in a convolution, with an optional BatchNorm above it
    folded into the weight."""

    conv: object = None
    bn: object = None
    _folded: dict = field(default_factory=dict, repr=False)

    def weight(self, run: R.Run) -> Tensor:
        weight = R.conv_params(self.conv, run.consts)["weight"]
        if self.bn is None:
            return weight
        args = self.bn.fx.args
        sources = [weight] + [run.consts[a.name] for a in (args[1], args[4]) if a is not None]
        key = tuple((id(t), t._version) for t in sources)
        if self._folded.get("key") != key:
            scale = R.bn_scale(self.bn, run.consts).to(weight.dtype)
            self._folded = {"key": key, "weight": weight * scale.reshape(-1, 1, 1, 1)}
        return self._folded["weight"]


@dataclass
class ConvTranspose(_ConvBelow):
    """BatchNorm <- convolution (or a convolution alone, when fused above)."""

    def down(self, signal: Tensor, run: R.Run) -> tuple[Tensor, ...]:
        return (R.conv_transpose(self.conv, signal, run, self.weight(run)),)


@dataclass
class ReluConvTranspose(_ConvBelow):
    """ReLU <- (BatchNorm <-) convolution, as one ``relu_conv_transpose2d`` (deconvnet mode)."""

    def down(self, signal: Tensor, run: R.Run) -> tuple[Tensor, ...]:
        c = R.conv_params(self.conv, run.consts)
        weight = self.weight(run)
        if run.windows is not None:
            return (relu_conv_transpose2d(signal, weight, None, c["stride"], 0, 0, c["groups"], c["dilation"]),)
        below = run.graph.nodes[self.conv.inputs[0]].shape
        pad = _output_padding(below, self.conv.shape, weight, c)
        return (relu_conv_transpose2d(signal, weight, None, c["stride"], c["padding"], pad, c["groups"],
                                      c["dilation"]),)


@dataclass
class DeconvStep(_ConvBelow):
    """max pool <- ReLU <- (BatchNorm <-) convolution, as one ``deconv_step`` (deconvnet mode)."""

    pool: object = None
    relu: object = None

    def down(self, signal: Tensor, run: R.Run) -> tuple[Tensor, ...]:
        k, s, p, _ = R.pool_params(self.pool)
        c = R.conv_params(self.conv, run.consts)
        weight = self.weight(run)
        switches = run.read(self.pool.index)
        if run.windows is not None:
            return (deconv_step(signal, switches, weight, None, pool_kernel_size=k, pool_stride=s, pool_padding=0,
                                unpooled_size=run.windows.size(self.relu.index), stride=c["stride"], padding=0,
                                groups=c["groups"], dilation=c["dilation"]),)
        below = run.graph.nodes[self.conv.inputs[0]].shape
        return (deconv_step(signal, switches, weight, None, pool_kernel_size=k, pool_stride=s, pool_padding=p,
                            unpooled_size=self.relu.shape[-2:], stride=c["stride"], padding=c["padding"],
                            output_padding=_output_padding(below, self.conv.shape, weight, c),
                            groups=c["groups"], dilation=c["dilation"]),)


def _output_padding(below, above, weight, c) -> tuple[int, int]:
    return tuple(geometry.output_padding(below[-2 + i], above[-2 + i], weight.shape[-2 + i], c["stride"][i],
                                         c["padding"][i], c["dilation"][i]) for i in range(2))


def _is_conv2d(rule_of, node, consts) -> bool:
    """A 2-D convolution (by its rule) with a constant weight: one a fused stage can end in."""
    if rule_of(node.index).kind != "conv":
        return False
    try:
        R.conv_params(node, consts)
    except CaptureError:
        return False
    return True


def compile_plan(graph: Graph, rule_of, top: int, mode: str, consts: dict) -> list[Stage]:
    """The stages undoing node ``top`` and every node below it, top first;
    ``rule_of(i)``: node ``i``'s ``LayerRule`` (an error for an op outside the table)."""
    below = graph.ancestors([top])
    inside = set(below)
    nodes = graph.nodes

    def readers(i):
        return [u for u in nodes[i].users if u in inside and (u <= top)]

    def only_reader(i, reader):
        return i != graph.input and readers(i) == [reader] and len(nodes[i].inputs) >= 1

    def conv_under(i):
        """(conv, bn) read only by node ``i`` (directly, or through a BatchNorm), else None."""
        j = nodes[i].inputs[0]
        if not only_reader(j, i):
            return None
        if rule_of(j).kind == "batchnorm":
            k = nodes[j].inputs[0]
            if only_reader(k, j) and _is_conv2d(rule_of, nodes[k], consts):
                return nodes[k], nodes[j]
            return None
        if _is_conv2d(rule_of, nodes[j], consts):
            return nodes[j], None
        return None

    plan: list[Stage] = []
    covered: set[int] = set()
    for i in reversed(below):
        if i in covered or nodes[i].op == "input":
            continue
        node, rule = nodes[i], rule_of(i)
        stage = None
        if mode == "deconvnet" and rule.kind == "pool" and len(node.shape) == 3:
            j = node.inputs[0]
            if only_reader(j, i) and rule_of(j).kind == "relu":
                found = conv_under(j)
                if found is not None:
                    conv, bn = found
                    stage = DeconvStep(i, conv.index, conv.inputs, conv=conv, bn=bn, pool=node, relu=nodes[j])
        if stage is None and mode == "deconvnet" and rule.kind == "relu" and len(node.shape) == 3:
            found = conv_under(i)
            if found is not None:
                stage = ReluConvTranspose(i, found[0].index, found[0].inputs, conv=found[0], bn=found[1])
        if stage is None and rule.kind == "batchnorm" and len(node.shape) == 3:
            j = node.inputs[0]
            if only_reader(j, i) and _is_conv2d(rule_of, nodes[j], consts):
                stage = ConvTranspose(i, j, nodes[j].inputs, conv=nodes[j], bn=node)
        if stage is None:
            stage = OpStage(i, i, node.inputs, node=node, rule=rule)
        stage.covers = tuple(sorted({stage.top, stage.bottom} | {
            getattr(getattr(stage, name, None), "index", stage.top) for name in ("bn", "relu")}, reverse=True))
        covered.update(stage.covers)
        plan.append(stage)
    return plan
