"""The deconvnet engine against independent autograd implementations."""

from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from zfcore.deconv import CaptureError, Deconvnet, Request
from zfcore.deconv.reference import autograd_projection
from zfcore.models import zfnet_small
from zfcore.nn import MaxPool2dSwitches


def plain_cnn():
    """Padding, ceil mode, stride > kernel pools, adaptive pooling, non-square input."""
    return nn.Sequential(OrderedDict([
        ("conv1", nn.Conv2d(3, 6, 3, padding=1)), ("relu1", nn.ReLU()),
        ("pool1", nn.MaxPool2d(3, 2, padding=1, ceil_mode=True)),
        ("conv2", nn.Conv2d(6, 8, 3, stride=1)), ("relu2", nn.ReLU()),
        ("pool2", nn.MaxPool2d(2, 3)),
        ("conv3", nn.Conv2d(8, 8, 3, padding=1)), ("relu3", nn.ReLU(inplace=True)),
        ("avgpool", nn.AdaptiveAvgPool2d((2, 2))), ("flatten", nn.Flatten()),
        ("fc1", nn.Linear(32, 12)), ("relu4", nn.ReLU()), ("drop", nn.Dropout()), ("fc2", nn.Linear(12, 5)),
    ]))


class VGGStyle(nn.Module):
    """torchvision's layout: features, avgpool, a functional flatten, classifier."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(inplace=True),
            nn.MaxPool2d(2, 2),
            nn.Conv2d(8, 12, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2, 2))
        self.avgpool = nn.AdaptiveAvgPool2d((3, 3))
        self.classifier = nn.Sequential(nn.Linear(108, 16), nn.ReLU(inplace=True), nn.Dropout(), nn.Linear(16, 4))

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


MODELS = {
    "zfnet_small": (lambda: zfnet_small(init_std=None), (3, 64, 64)),
    "plain": (plain_cnn, (3, 37, 45)),
    "vgg": (VGGStyle, (3, 24, 28)),
}


def _setup(name):
    factory, shape = MODELS[name]
    torch.manual_seed(0)
    model = factory().double().eval()
    images = torch.randn(3, *shape, dtype=torch.float64)
    return model, images, Deconvnet(model, shape)


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("mode", ["deconvnet", "guided", "gradient"])
def test_projections_equal_the_autograd_reference(name, mode):
    model, images, net = _setup(name)
    spec = net.layer_spec()
    conv_like = [n for n in net.layers if len(spec[n].shape) == 3 and isinstance(
        dict(model.named_modules())[n], nn.Conv2d | nn.ReLU | nn.MaxPool2d | MaxPool2dSwitches)]
    linear = [n for n in net.layers if isinstance(dict(model.named_modules())[n], nn.Linear)]
    cases = [(conv_like[1], 0, None), (conv_like[-1], 1, "map"), (linear[-1], 2, None)]
    mid = conv_like[len(conv_like) // 2]
    _, h, w = spec[mid].shape
    cases += [(mid, 1, (0, 0)), (mid, 0, (h - 1, w - 1)), (mid, 2, (h // 2, w // 2))]
    nonzero = 0
    for layer, channel, position in cases:
        got = net.project(images, layer, channel, position, mode=mode)
        expected = autograd_projection(model, images, layer, channel, position, mode)
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12, msg=f"{name} {mode} {layer} {position}")
        nonzero += bool(got.abs().sum() > 0)
    assert nonzero >= len(cases) - 2  # a unit of a random net may be dead; most are not


def test_gradient_mode_is_the_gradient_of_the_unit_times_its_value():
    model, images, net = _setup("zfnet_small")
    x = images[:1].clone().requires_grad_()
    feats = model[: list(dict(model.named_children())).index("conv3") + 1](x)
    value = feats[0, 4, 2, 3]
    grad = torch.autograd.grad(value, x)[0]
    torch.testing.assert_close(net.project(images[:1], "conv3", 4, (2, 3), mode="gradient"), grad * value.detach())


def test_overlapping_pools_max_unpool2d_gives_another_projection():
    """A hand-written deconvnet down from conv2 equals the engine with the exact
    unpooling (ATen's max-pool backward) and differs with F.max_unpool2d, which
    overwrites: exactly at the positions two overlapping windows chose."""
    model, images, net = _setup("zfnet_small")
    exact = autograd_projection(model, images, "conv2", 3, None, "deconvnet")
    assert torch.allclose(net.project(images, "conv2", 3), exact, rtol=1e-9, atol=1e-12)
    layers = dict(model.named_children())
    with torch.no_grad():
        a1 = layers["relu1"](layers["conv1"](images))
        p1, idx1 = F.max_pool2d(a1, 3, 2, ceil_mode=True, return_indices=True)
        a2 = layers["conv2"](layers["norm1"](p1))
        seed = torch.zeros_like(a2)
        for n in range(a2.shape[0]):
            h, w = divmod(int(a2[n, 3].argmax()), a2.shape[-1])
            seed[n, 3, h, w] = a2[n, 3, h, w]
        top = F.conv_transpose2d(seed, layers["conv2"].weight, None, 1, 2)
        transpose = torch.ops.aten.max_pool2d_with_indices_backward(top, a1, [3, 3], [2, 2], [0, 0], [1, 1], True,
                                                                     idx1)
        overwritten = F.max_unpool2d(top, idx1, 3, 2, output_size=a1.shape[-2:])
        down = lambda u: F.conv_transpose2d(F.relu(u), layers["conv1"].weight, None, 2, 1,  # noqa: E731
                                            output_padding=1)
    torch.testing.assert_close(down(transpose), exact, rtol=1e-9, atol=1e-12)  # the hand path is the deconvnet
    shared = torch.zeros(a1.shape, dtype=torch.long).flatten(2)
    shared.scatter_add_(2, idx1.flatten(2), torch.ones_like(idx1).flatten(2))
    differs = (transpose != overwritten).flatten(2)
    assert differs.any() and bool((shared[differs] > 1).all())  # only where windows overlap on one switch
    assert (down(overwritten) - exact).abs().max() > 1e-3 * exact.abs().max()


def test_project_many_equals_one_at_a_time():
    model, images, net = _setup("plain")
    requests = [Request(2, "conv2", 1, None), Request(0, "pool2", 3, (1, 2)), Request(2, "fc1", 5),
                Request(1, "conv2", 0, "map"), (0, "conv1", 2, (5, 7))]
    many = net.project_many(images, requests)
    for row, r in enumerate(requests):
        r = r if isinstance(r, Request) else Request(*r)
        one = net.project(images[r.image:r.image + 1], r.layer, r.channel, r.position)
        torch.testing.assert_close(many[row:row + 1], one, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("mode", ["deconvnet", "guided", "gradient"])
def test_in_place_relus_overwrite_nothing_the_projection_reads(mode):
    # Every ReLU of VGGStyle is in place, and the forward lets them overwrite
    # their input where nothing holds it. Requests on several conv layers in one
    # call keep those layers' outputs (seeds with negative values: whole maps,
    # and units picked where the activation is negative), guided and gradient
    # modes record the ReLUs' inputs, and a leading in-place ReLU meets the
    # caller's images: none may be overwritten.
    model, images, net = _setup("vgg")
    convs = [n for n in net.layers if isinstance(dict(model.named_modules())[n], nn.Conv2d)]
    with torch.no_grad():
        first = model.features[0](images)
    h, w = [int(v) for v in divmod(int(first[1, 2].argmin()), first.shape[-1])]
    assert first[1, 2, h, w] < 0
    requests = [Request(0, convs[0], 1, "map"), Request(1, convs[0], 2, (h, w)), Request(2, convs[1], 3, "map"),
                Request(1, convs[2], 0, None), Request(0, convs[2], 5, "map")]
    many = net.project_many(images, requests, mode)
    for row, r in enumerate(requests):
        expected = autograd_projection(model, images[r.image:r.image + 1], r.layer, r.channel, r.position, mode)
        torch.testing.assert_close(many[row:row + 1], expected, rtol=1e-9, atol=1e-12, msg=f"{mode} {r}")
    leading = nn.Sequential(nn.ReLU(inplace=True), nn.Conv2d(3, 4, 3), nn.ReLU(inplace=True)).double().eval()
    before = images.clone()
    got = Deconvnet(leading, images.shape[1:]).project(images, "1", 2, "map", mode)
    assert torch.equal(images, before), "the caller's images were overwritten"
    torch.testing.assert_close(got, autograd_projection(leading, before, "1", 2, "map", mode), rtol=1e-9, atol=1e-12)


def test_receptive_field_of_zfnet_small():
    _, _, net = _setup("zfnet_small")
    field = net.receptive_field("conv2")
    assert field.size == (27, 27) and field.jump == (4, 4) and field.shape == (64, 15, 15)


class FunctionalReLU(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return F.relu(self.conv(x))


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.conv(x) + x)


class Twice(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x):
        return self.conv(self.conv(x))


@pytest.mark.parametrize("model, layers", [
    (FunctionalReLU(), ["conv"]),
    (Residual(), ["conv", "relu"]),
    (Twice(), ["conv#0", "conv#1"]),
    (nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)), ["0", "1"]),
])
def test_models_the_old_walk_refused_are_captured(model, layers):
    """Functional ReLUs, residual sums, a module called twice and BatchNorm:
    each a node of the captured graph; gradient mode equals autograd."""
    torch.manual_seed(0)
    model = model.double().eval()
    net = Deconvnet(model, (3, 12, 12))
    assert net.layers == layers
    x = torch.randn(2, 3, 12, 12, dtype=torch.float64)
    output = net.graph.output
    got = net._signal_down(x, output, torch.ones(2, *net.graph.nodes[output].shape, dtype=torch.float64),
                           "gradient")
    xg = x.clone().requires_grad_()
    expected, = torch.autograd.grad(model(xg).sum(), xg)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-14)


def test_bad_requests_are_clear_errors():
    _, images, net = _setup("plain")
    with pytest.raises(ValueError, match="no layer named 'conv9'"):
        net.project(images, "conv9", 0)
    with pytest.raises(ValueError, match="channel 99 is outside"):
        net.project(images, "conv1", 99)
    with pytest.raises(ValueError, match="position \\(50, 0\\) is outside"):
        net.project(images, "conv1", 0, (50, 0))
    with pytest.raises(ValueError, match="mode must be one of"):
        net.project(images, "conv1", 0, mode="saliency")
    with pytest.raises(ValueError, match="images must be a Tensor"):
        net.project(images[:, :2], "conv1", 0)


@pytest.mark.parametrize("name", ["zfnet_small", "plain", "vgg"])
@pytest.mark.parametrize("mode", ["deconvnet", "guided", "gradient"])
def test_cropped_projections_equal_uncropped_at_corners_edges_and_centre(name, mode):
    model, images, net = _setup(name)
    spec = net.layer_spec()
    for layer in [n for n in net.layers if len(spec[n].shape) == 3 and net.crop_work_ratio(n) > 1]:
        _, h, w = spec[layer].shape
        positions = {(0, 0), (h - 1, w - 1), (0, w - 1), (h // 2, w // 2), (h - 1, w // 2)}
        requests = [Request(i % len(images), layer, i % spec[layer].shape[0], p) for i, p in enumerate(positions)]
        requests.append(Request(1, layer, 0, None))
        cropped = net.project_many(images, requests, mode)
        whole = net.project_many(images, requests, mode, crop=False)
        torch.testing.assert_close(cropped, whole, rtol=1e-9, atol=1e-12, msg=f"{name} {mode} {layer}")
    assert net.crop_work_ratio(net.layers[0]) >= 1.0


def test_crop_work_ratio():
    _, _, net = _setup("zfnet_small")
    assert net.crop_work_ratio("conv1") == 30 * 30  # one unit of a 30x30 map
    assert net.crop_work_ratio("conv2") > 5
    assert net.crop_work_ratio("conv5") < 1  # at 64 px a conv5 window is wider than the maps: no crop


def test_project_recorded_equals_project_many():
    """Units sent down with the records of an earlier forward (kept apart per
    image and put back together in another order) equal ``project_many``."""
    from zfcore.deconv.engine import Recording

    model, images, net = _setup("zfnet_small")
    recording = net.record(images, ["conv2", "conv5", "fc6"])
    apart = Recording.cat([recording.select([2], outputs=False), recording.select([0, 1], outputs=False)])
    assert apart.rows == 3 and not apart.outputs
    for layer, position in (("conv2", (3, 4)), ("conv5", (1, 2)), ("fc6", None)):
        picked = [Request(2, layer, 5, position), Request(0, layer, 1, position)]
        values = torch.stack([recording.outputs[layer][r.image, r.channel][position or ()] for r in picked])
        moved = [Request(0, layer, 5, position), Request(1, layer, 1, position)]  # rows of `apart`
        windows, corners = net.project_recorded(apart, moved, values)
        expected = net.project_many(images, picked)
        height, width = images.shape[-2:]
        for window, (r, c), full in zip(windows, corners.tolist(), expected):
            r0, c0 = max(r, 0), max(c, 0)
            r1, c1 = min(r + window.shape[-2], height), min(c + window.shape[-1], width)
            assert torch.equal(window[:, r0 - r:r1 - r, c0 - c:c1 - c], full[:, r0:r1, c0:c1]), layer
            rest = full.clone()
            rest[:, r0:r1, c0:c1] = 0
            assert not rest.any(), layer
        # cropped windows for conv2; whole inputs where units see the whole map (conv5 at 64 px) or for fc6
        assert (windows.shape[-2:] == images.shape[-2:]) == (net.crop_work_ratio(layer) <= 1 or position is None)
    with pytest.raises(ValueError, match="one layer"):
        net.project_recorded(recording, [Request(0, "conv2", 0, (0, 0)), Request(0, "conv5", 0, (0, 0))])
    with pytest.raises(ValueError, match="each with its position"):
        net.project_recorded(recording, [Request(0, "conv2", 0)], torch.ones(1))
