"""The deconvnet's plan of stages: every stage against its definition, and
the shared, checked-once request path of ``project_many``."""

from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from zfcore.deconv import Deconvnet, Request
from zfcore.deconv import plan as P
from zfcore.deconv.windows import Windows, window_sizes
from zfcore.models.layer_table import SUPPORTED, kind_of
from zfcore.nn import MaxPool2dSwitches


def every_layer_cnn():
    """Every supported layer type, fused runs and unfused ones, a flatten before a Linear."""
    return nn.Sequential(OrderedDict([
        ("conv1", nn.Conv2d(3, 5, 3, padding=1)), ("relu1", nn.ReLU()),
        ("pool1", MaxPool2dSwitches(3, 2, padding=1, ceil_mode=True)),   # pool -> relu -> conv: one deconv_step
        ("lrn", nn.LocalResponseNorm(3)),
        ("conv2", nn.Conv2d(5, 6, 3, stride=2, padding=2, dilation=2)), ("relu2", nn.ReLU()),  # relu -> conv fused
        ("id", nn.Identity()),
        ("pool2", nn.MaxPool2d(2, 1)),                                   # pool over identity: unfused unpool
        ("conv3", nn.Conv2d(6, 4, 2)), ("drop1", nn.Dropout()),
        ("avgpool", nn.AdaptiveAvgPool2d((3, 2))), ("flatten", nn.Flatten()),
        ("fc1", nn.Linear(24, 7)), ("relu3", nn.ReLU()), ("fc2", nn.Linear(7, 4)),
    ]))


class FunctionalFlatten(nn.Module):
    """torchvision's layout: a map enters a Linear layer through torch.flatten."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2), nn.ReLU(), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(nn.Linear(4 * 5 * 4, 6), nn.ReLU(), nn.Linear(6, 3))

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


def _setup(shape=(3, 23, 19), seed=0, factory=every_layer_cnn):
    torch.manual_seed(seed)
    model = factory().double().eval()
    return model, torch.randn(4, *shape, dtype=torch.float64), Deconvnet(model, shape)


def test_the_model_covers_every_supported_layer_type():
    model, _, net = _setup()
    assert {type(m) for m in model.children()} == set(SUPPORTED)
    assert [kind_of(m) for m in model.children()] == ["conv", "relu", "pool", "localresponsenorm", "conv", "relu",
                                                      "identity", "pool", "conv", "dropout", "adaptiveavgpool2d",
                                                      "flatten", "linear", "relu", "linear"]


@pytest.mark.parametrize("mode", ["deconvnet", "guided", "gradient"])
def test_plan_covers_each_step_once_top_first(mode):
    _, _, net = _setup()
    plan = net.plan("fc2", mode)
    covered = [i for stage in plan for i in range(stage.top, stage.bottom - 1, -1)]
    assert covered == list(range(len(net.steps) - 1, -1, -1))
    names = [type(s).__name__ for s in plan]
    if mode == "deconvnet":
        assert names == ["LinearTranspose", "Relu", "LinearTranspose", "Unflatten", "AveragePoolTranspose",
                         "Identity", "ConvTranspose", "Unpool", "Identity", "ReluConvTranspose",
                         "LocalResponseNorm", "DeconvStep"]
    else:  # no fusion: the ReLUs use the forward's masks
        assert "DeconvStep" not in names and "ReluConvTranspose" not in names
        assert names.count("Relu") == 3
    assert net.plan("fc2", mode) is plan  # compiled once
    _, _, net = _setup((3, 23, 19), factory=FunctionalFlatten)
    names = [(type(s).__name__, s.top) for s in net.plan(net.layers[-1], mode)]
    fused = [("DeconvStep", 2)] if mode == "deconvnet" else [("Unpool", 2), ("Relu", 1), ("ConvTranspose", 0)]
    assert names == [("LinearTranspose", 5), ("Relu", 4), ("LinearTranspose", 3), ("Unflatten", 3)] + fused


def _records(net, images, top, mode):
    records, _ = net._forward(images, top, mode, set())
    return records


CASES = [(every_layer_cnn, top) for top in range(15)] + [(FunctionalFlatten, top) for top in range(6)]


@pytest.mark.parametrize("factory, top", CASES)
def test_each_gradient_stage_is_the_vector_jacobian_product_of_its_layers(factory, top):
    """In gradient mode every stage (on whole maps, requests reordered) is the
    VJP of the layers it covers, by autograd, in float64."""
    model, images, net = _setup(seed=top, factory=factory)
    records = _records(net, images, top, "gradient")
    index = torch.tensor([2, 0, 3, 3, 1])  # rows of the records each signal row belongs to
    for stage in net.plan(net.layers[top], "gradient"):
        if isinstance(stage, P.Unflatten):  # a Flatten layer, or the flatten before a Linear one
            rec = records[stage.top]
            x = torch.randn(len(index), *(rec.flat_from or rec.input_shape)[1:], dtype=torch.float64)
            layers = [nn.Flatten()]
        else:
            x = _input_of(net, images, stage.bottom)[index]
            layers = [net.steps[i].module for i in range(stage.bottom, stage.top + 1)]
        x = x.clone().requires_grad_()
        y = x
        for layer in layers:
            y = layer(y)
        signal = torch.randn_like(y)
        expected, = torch.autograd.grad(y, x, signal)
        got = stage.down(signal, records, None, index)
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12, msg=f"{type(stage).__name__} at {top}")
    assert got.shape == (len(index), *images.shape[1:])


@torch.no_grad()
def _input_of(net, images, i):
    """The input of step ``i`` (after the flatten before it, if any)."""
    x = images
    for step in net.steps[:i + 1]:
        if step.flatten_before:
            x = torch.flatten(x, 1)
        if step is net.steps[i]:
            return x
        x = step.module(x)


def test_fused_deconvnet_stages_equal_their_unfused_composition():
    model, images, net = _setup()
    records = _records(net, images, 5, "deconvnet")
    index = torch.tensor([1, 1, 0, 3])
    fused = {type(s): s for s in net.plan("relu2", "deconvnet")}
    rct = fused[P.ReluConvTranspose]   # relu2 -> conv2
    y = torch.randn(4, *records[5].input_shape[1:], dtype=torch.float64)
    conv = net.steps[4].module
    expected = F.conv_transpose2d(F.relu(y), conv.weight, None, conv.stride, conv.padding,
                                  P.output_padding(conv, records[4].input_shape, y.shape), 1, conv.dilation)
    assert expected.shape[-2:] == records[4].input_shape[-2:]
    torch.testing.assert_close(rct.down(y, records, None, index), expected, rtol=1e-12, atol=1e-12)
    step = fused[P.DeconvStep]          # pool1 -> relu1 -> conv1
    pooled = torch.randn(4, *records[3].input_shape[1:], dtype=torch.float64)
    unpooled = P.Unpool(2, 2, pool=net.steps[2].module).down(pooled, records, None, index)
    conv = net.steps[0].module
    expected = F.conv_transpose2d(F.relu(unpooled), conv.weight, None, conv.stride, conv.padding,
                                  P.output_padding(conv, records[0].input_shape, unpooled.shape))
    torch.testing.assert_close(step.down(pooled, records, None, index), expected, rtol=1e-12, atol=1e-12)
    assert (expected != 0).float().mean() > 0.3
@pytest.mark.parametrize("mode", ["deconvnet", "guided", "gradient"])
def test_cropped_stages_equal_the_whole_maps_on_every_window(mode):
    """On the conv stack, the way down on windows pasted back equals the way
    down on whole maps: units at corners, edges and the centre of each layer."""
    model, images, net = _setup((3, 41, 37))
    spec = net.layer_spec()
    for layer in net.layers[:10]:
        _, h, w = spec[layer].shape
        positions = [(0, 0), (h - 1, w - 1), (0, w - 1), (h // 2, w // 2)]
        requests = [Request(i % 4, layer, i % spec[layer].shape[0], p) for i, p in enumerate(positions)]
        top = net.layers.index(layer)
        records, outputs = net._forward(images, top, mode, {top})
        windows, corners = net._down_cropped(outputs[top], requests, torch.tensor([r.image for r in requests]),
                                             records, top, mode)
        pasted = images.new_zeros(len(requests), *images.shape[1:])
        net._paste(pasted, list(range(len(requests))), windows, corners)
        torch.testing.assert_close(pasted, net.project_many(images, requests, mode, crop=False), rtol=1e-10,
                                   atol=1e-12, msg=f"{mode} {layer}")


def test_window_sizes_are_the_receptive_field_sizes():
    _, _, net = _setup()
    spec = net.layer_spec()
    for top in range(9):
        assert window_sizes(net._rules, top)[-1] == spec[net.layers[top]].size


def test_windows_crop_reads_zeros_outside_the_map():
    t = torch.arange(2 * 3 * 4 * 5, dtype=torch.float64).reshape(2, 3, 4, 5)
    w = Windows([None], 0, torch.tensor([[-1, -2], [2, 3]]), torch.tensor([1, 0]))
    w.sizes[0] = (3, 4)
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
    assert calls == [len(net.steps) - 1]
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
