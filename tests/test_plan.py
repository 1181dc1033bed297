"""The deconvnet's plan of stages over the captured graph: every stage against
its definition, and the shared, checked-once request path of ``project_many``."""

from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from zfcore.deconv import Deconvnet, Request
from zfcore.deconv import plan as P
from zfcore.deconv import rules as R
from zfcore.deconv.windows import Windows
from zfcore.nn import MaxPool2dSwitches


def every_kind_cnn():
    """Convolutions (dilated, strided), BatchNorm, fused runs and unfused ones,
    LRN, identity, dropout, adaptive pooling, a flatten before a Linear."""
    return nn.Sequential(OrderedDict([
        ("conv1", nn.Conv2d(3, 5, 3, padding=1)), ("relu1", nn.ReLU()),
        ("pool1", MaxPool2dSwitches(3, 2, padding=1, ceil_mode=True)),   # pool -> relu -> conv: one deconv_step
        ("lrn", nn.LocalResponseNorm(3)),
        ("conv2", nn.Conv2d(5, 6, 3, stride=2, padding=2, dilation=2)), ("bn2", nn.BatchNorm2d(6)),
        ("relu2", nn.ReLU()),                                            # pool -> relu -> bn -> conv fused
        ("pool2", nn.MaxPool2d(2, 1)),
        ("conv3", nn.Conv2d(6, 4, 2)), ("bn3", nn.BatchNorm2d(4)), ("drop1", nn.Dropout()),
        ("avgpool", nn.AdaptiveAvgPool2d((3, 2))), ("flatten", nn.Flatten()),
        ("fc1", nn.Linear(24, 7)), ("relu3", nn.ReLU()), ("fc2", nn.Linear(7, 4)),
    ]))


def _setup(shape=(3, 23, 19), seed=0):
    torch.manual_seed(seed)
    model = every_kind_cnn().double().eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
    return model, torch.randn(4, *shape, dtype=torch.float64), Deconvnet(model, shape)


@pytest.mark.parametrize("mode", ["deconvnet", "guided", "gradient"])
def test_plan_covers_each_node_once_top_first(mode):
    _, _, net = _setup()
    top = net.graph.layers["fc2"]
    plan = net.plan("fc2", mode)
    covered = [i for stage in plan for i in stage.covers]
    below = [i for i in net.graph.ancestors([top]) if i != net.graph.input]
    assert sorted(covered) == below and len(set(covered)) == len(covered)
    assert [s.top for s in plan] == sorted((s.top for s in plan), reverse=True)
    names = [type(s).__name__ for s in plan]
    if mode == "deconvnet":
        assert names.count("DeconvStep") == 2, names  # pool2 -> relu2 -> bn2 -> conv2 included
        assert names.count("ConvTranspose") == 1  # conv3 with bn3 folded
    else:  # no fusion through ReLUs: they use the forward's masks
        assert "DeconvStep" not in names and "ReluConvTranspose" not in names
        assert names.count("ConvTranspose") == 2
    assert net.plan("fc2", mode) is plan  # compiled once


def _values(net, images):
    """Every node's output, by the captured graph."""
    keep = set(range(len(net.graph.nodes))) - {net.graph.input}
    _, outputs = net._forward(images, [net.graph.output], "gradient", keep)
    return {net.graph.input: images, **outputs}


def _apply_chain(net, stage, x):
    """The nodes a stage covers, bottom to top, on ``x`` (the bottom's input)."""
    consts = net.consts()
    values = {stage.inputs[0]: x}
    for i in reversed(stage.covers):
        node = net.graph.nodes[i]
        values[i] = R.apply(net.graph, consts, node, values)
    return values[stage.top]


@pytest.mark.parametrize("layer", ["conv1", "pool1", "lrn", "relu2", "pool2", "bn3", "avgpool", "fc1", "fc2"])
def test_each_gradient_stage_is_the_vector_jacobian_product_of_its_nodes(layer):
    """In gradient mode every stage (on whole maps, requests reordered) is the
    VJP of the nodes it covers, by autograd, in float64."""
    _, images, net = _setup(seed=len(layer))
    top = net.graph.layers[layer]
    records, _ = net._forward(images, [top], "gradient", set())
    values = _values(net, images)
    index = torch.tensor([2, 0, 3, 3, 1])  # rows of the records each signal row belongs to
    run = R.Run(net.graph, net.consts(), "gradient", net.lrn, records, None, index)
    for stage in net.plan(layer, "gradient"):
        assert len(stage.inputs) == 1
        x = values[stage.inputs[0]][index].clone().requires_grad_()
        with torch.enable_grad():
            y = _apply_chain(net, stage, x)
        signal = torch.randn_like(y)
        expected, = torch.autograd.grad(y, x, signal)
        got, = stage.down(signal, run)
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12, msg=f"{type(stage).__name__} {layer}")


def test_fused_deconvnet_stages_equal_their_unfused_composition():
    _, images, net = _setup()
    top = net.graph.layers["pool2"]
    records, _ = net._forward(images, [top], "deconvnet", set())
    index = torch.tensor([1, 1, 0, 3])
    run = R.Run(net.graph, net.consts(), "deconvnet", net.lrn, records, None, index)
    fused = [s for s in net.plan("pool2", "deconvnet") if isinstance(s, (P.DeconvStep, P.ReluConvTranspose))]
    assert len(fused) == 2
    for stage in fused:
        signal = torch.randn(4, *net.graph.nodes[stage.top].shape, dtype=torch.float64)
        expected = signal
        for i in stage.covers:  # one node at a time, by its rule
            node = net.graph.nodes[i]
            expected, = R.rule_of(node).down(node, expected, run)
        got, = stage.down(signal, run)
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
        assert (expected != 0).float().mean() > 0.2


def test_windows_crop_reads_zeros_outside_the_map():
    t = torch.arange(2 * 3 * 4 * 5, dtype=torch.float64).reshape(2, 3, 4, 5)
    w = Windows({0: ((1, 0, 3), (1, 0, 4))}, torch.tensor([[-1, -2], [2, 3]]), torch.tensor([1, 0]))
    crops = w.crop(t, 0)
    padded = F.pad(t, (2, 2, 1, 1))
    torch.testing.assert_close(crops[0], padded[1, :, 0:3, 0:4])
    torch.testing.assert_close(crops[1], padded[0, :, 3:6, 5:9])
    inside = w.inside(torch.ones(2, 1, 3, 4), 0, (4, 5))
    assert inside[0, 0].tolist() == [[0, 0, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]]
    assert inside[1, 0].tolist() == [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0]]


def test_layers_of_one_call_share_one_forward_and_equal_separate_calls():
    model, images, net = _setup()
    requests = [Request(3, "conv2", 1), Request(0, "fc2", 2), Request(1, "pool1", 4, "map"), Request(3, "conv3", 0),
                Request(2, "conv2", 5, (1, 1))]
    calls = []
    forward = net._forward
    net._forward = lambda *a: calls.append(a[1]) or forward(*a)
    together = net.project_many(images, requests)
    assert len(calls) == 1
    net._forward = forward
    for row, r in enumerate(requests):
        torch.testing.assert_close(together[row:row + 1], net.project_many(images, [r]), rtol=1e-12, atol=1e-12)


def test_requests_are_checked_before_any_work():
    model, images, net = _setup()
    calls = []
    net._forward = lambda *a: calls.append(a) or pytest.fail("forward ran on a bad request")
    good = Request(0, "conv1", 0)
    for bad, message in [(Request(0, "conv1", 5), "channel 5 is outside 'conv1'"),
                         (Request(4, "conv1", 0), "image index is outside the 4 images"),
                         (Request(0, "conv1", 0, (23, 0)), r"position \(23, 0\) is outside 'conv1'"),
                         (Request(0, "conv1", 0, "centre"), "position must be None, 'map' or"),
                         (Request(0, "conv1", 1.5), "channel must be an int"),
                         (Request(0, "nope", 0), "no layer named 'nope'"),
                         ((0, "conv1"), "channel must be an int|a request is"),
                         (5, "a request is Request")]:
        with pytest.raises(ValueError, match=message):
            net.project_many(images, [good, bad])
    assert not calls


def _stage_classes(cls=P.Stage):
    for sub in cls.__subclasses__():
        yield sub
        yield from _stage_classes(sub)


def test_every_stage_goes_down_with_the_one_signature():
    import inspect
    base = inspect.signature(P.Stage.down)
    classes = list(_stage_classes())
    assert {c.__name__ for c in classes} >= {"OpStage", "ConvTranspose", "ReluConvTranspose", "DeconvStep"}
    for cls in classes:
        assert inspect.signature(cls.down) == base, cls.__name__


@pytest.mark.parametrize("mode", ["deconvnet", "guided", "gradient"])
def test_one_rule_per_op_kind_for_the_walk_the_windows_and_the_plan(mode):
    _, _, net = _setup()
    nodes = [n for n in net.graph.nodes if n.op != "input"]
    for node in nodes:  # the table's own rule object, kept once per node by the engine
        rule = net._rule(node.index)
        assert rule is R.RULES[node.op] and R.rule_of(node) is rule, node.where()
    for stage in net.plan("fc2", mode):
        if isinstance(stage, P.OpStage):
            assert stage.rule is net._rule(stage.node.index)


def test_an_unknown_op_is_an_error_naming_its_node_everywhere_never_an_identity():
    from dataclasses import replace

    from zfcore.deconv import CaptureError
    _, images, net = _setup()
    i = net.graph.layers["lrn"]
    node = net.graph.nodes[i]
    unknown = replace(node, op=torch.ops.aten.sort.default)
    message = rf"node '{node.name}' \(aten\.sort\.default\) in module 'lrn'"
    with pytest.raises(CaptureError, match=message):
        R.rule_of(unknown)
    net.graph.nodes[i] = unknown  # as if the capture held an op outside the table
    net._rules.clear()
    net._plans.clear()
    for mode in ("deconvnet", "guided", "gradient"):
        with pytest.raises(CaptureError, match=message):
            net.plan("conv2", mode)
    with pytest.raises(CaptureError, match=message):
        net.project(images, "conv2", 0, "map")
    net.plan("pool1")  # below it: fine
