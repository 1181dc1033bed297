"""The deconvnet engine on any CNN: torchvision-layout blocks (VGG-BN, ResNet
BasicBlock and Bottleneck, DenseNet, Inception, MobileNet-V2) and random DAG
CNNs, against a float64 per-call oracle: autograd in which every ReLU *call*
(``F.relu``, ``torch.relu``, ``Tensor.relu(_)``, ReLU modules, in place or not)
gets the mode's backward rule, seeded with the unit's own value."""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from zfcore.deconv import CaptureError, Deconvnet, Request

MODES = ("deconvnet", "guided", "gradient")

# ------------------------------------------------------------------ the oracle


class _ModeReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, mode, inplace):
        mask = x > 0
        ctx.save_for_backward(mask)
        ctx.mode = mode
        if inplace:
            ctx.mark_dirty(x)
            return x.clamp_(min=0)
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, g):
        mask, = ctx.saved_tensors
        if ctx.mode == "deconvnet":
            return F.relu(g), None, None
        if ctx.mode == "guided":
            return F.relu(g) * mask, None, None
        return g * mask, None, None


@contextlib.contextmanager
def relu_rule(mode):
    """Every ReLU call of the model, whatever its form, goes down by ``mode``'s rule."""
    saved = (F.relu, torch.relu, torch.relu_, torch.Tensor.relu, torch.Tensor.relu_)

    def functional(x, inplace=False):
        return _ModeReLU.apply(x, mode, inplace)

    F.relu = functional
    torch.relu = lambda x: _ModeReLU.apply(x, mode, False)
    torch.relu_ = lambda x: _ModeReLU.apply(x, mode, True)
    torch.Tensor.relu = lambda x: _ModeReLU.apply(x, mode, False)
    torch.Tensor.relu_ = lambda x: _ModeReLU.apply(x, mode, True)
    try:
        yield
    finally:
        F.relu, torch.relu, torch.relu_, torch.Tensor.relu, torch.Tensor.relu_ = saved


def oracle(model, images, layer, channel, position, mode, call=0):
    """The projection of ``layer``'s unit (its ``call``-th call) by autograd with
    the per-call ReLU rule, seeded with the unit's value."""
    module = dict(model.named_modules())[layer]
    captured = []

    def hook(m, args, out):
        captured.append(out)
        return out.clone()  # a later in-place op must not change the captured output

    handle = module.register_forward_hook(hook)
    try:
        x = images.clone().requires_grad_()
        with relu_rule(mode):
            model(x)
            a = captured[call]
            seed = torch.zeros_like(a)
            for n in range(a.shape[0]):
                if a.dim() == 2 or position == "map":
                    seed[n, channel] = a[n, channel]
                else:
                    h, w = position if position is not None else divmod(int(a[n, channel].argmax()), a.shape[-1])
                    seed[n, channel, h, w] = a[n, channel, h, w]
            return torch.autograd.grad(a, x, seed.detach())[0]
    finally:
        handle.remove()


# ------------------------------------------------- torchvision-layout models


def _randomise_bn(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=g) * 0.3)
            m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(c, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(c, generator=g) * 0.2)
    return model


def vgg_bn():
    cfg, layers, c = [8, "M", 16, "M", 16, 16, "M"], [], 3
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(c, v, 3, padding=1), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
            c = v

    class VGG(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(*layers)
            self.avgpool = nn.AdaptiveAvgPool2d((2, 2))
            self.classifier = nn.Sequential(nn.Linear(64, 12), nn.ReLU(True), nn.Dropout(), nn.Linear(12, 5))

        def forward(self, x):
            return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))
    return VGG()


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class Bottleneck(nn.Module):
    def __init__(self, cin, width, stride=1):
        super().__init__()
        cout = width * 4
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class ResNet(nn.Module):
    def __init__(self, block, widths=(4, 8), bottleneck=False):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin, layers = 4, []
        for i, w in enumerate(widths):
            stride = 1 if i == 0 else 2
            blocks = [block(cin, w, stride), block(w * 4 if bottleneck else w, w)]
            cin = w * 4 if bottleneck else w
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2 = layers
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(cin, 5)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer2(self.layer1(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class DenseLayer(nn.Module):
    def __init__(self, cin, growth):
        super().__init__()
        self.norm1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, 2 * growth, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(2 * growth)
        self.conv2 = nn.Conv2d(2 * growth, growth, 3, padding=1, bias=False)

    def forward(self, features):
        x = torch.cat(features, 1)
        x = self.conv1(F.relu(self.norm1(x), inplace=True))
        return self.conv2(F.relu(self.norm2(x), inplace=True))


class DenseNetBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv0 = nn.Conv2d(3, 6, 3, padding=1, bias=False)
        self.denselayer1 = DenseLayer(6, 4)
        self.denselayer2 = DenseLayer(10, 4)
        self.norm5 = nn.BatchNorm2d(14)
        self.pool = nn.AvgPool2d(2, 2)
        self.fc = nn.Linear(14, 3)

    def forward(self, x):
        features = [self.conv0(x)]
        features.append(self.denselayer1(features))
        features.append(self.denselayer2(features))
        out = F.relu(self.norm5(torch.cat(features, 1)), inplace=True)
        out = self.pool(out)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


class BasicConv(nn.Module):
    def __init__(self, cin, cout, **kwargs):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, bias=False, **kwargs)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)), inplace=True)


class InceptionBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = BasicConv(3, 6, kernel_size=3, stride=2)
        self.branch1x1 = BasicConv(6, 4, kernel_size=1)
        self.branch3x3_1 = BasicConv(6, 3, kernel_size=1)
        self.branch3x3_2 = BasicConv(3, 4, kernel_size=3, padding=1)
        self.branch_pool = BasicConv(6, 2, kernel_size=1)
        self.branch_max = BasicConv(6, 3, kernel_size=1)
        self.fc = nn.Linear(13, 4)

    def forward(self, x):
        x = self.stem(x)
        b1 = self.branch1x1(x)
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        bp = self.branch_pool(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1))
        bm = self.branch_max(F.max_pool2d(x, kernel_size=3, stride=1, padding=1))
        out = torch.cat([b1, b3, bp, bm], 1)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(out, (1, 1)), 1))


class InvertedResidual(nn.Module):
    def __init__(self, c, expand=3):
        super().__init__()
        hidden = c * expand
        self.conv = nn.Sequential(
            nn.Sequential(nn.Conv2d(c, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True)),
            nn.Sequential(nn.Conv2d(hidden, hidden, 3, 1, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden),
                          nn.ReLU6(inplace=True)),
            nn.Conv2d(hidden, c, 1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x):
        return x + self.conv(x)


class MobileNetBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Sequential(nn.Conv2d(3, 4, 3, 2, 1, bias=False), nn.BatchNorm2d(4), nn.ReLU6(inplace=True)),
            InvertedResidual(4), InvertedResidual(4))
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(4, 3))

    def forward(self, x):
        x = F.adaptive_avg_pool2d(self.features(x), (1, 1))
        return self.classifier(torch.flatten(x, 1))


MODELS = {
    "vgg_bn": (vgg_bn, (3, 20, 22), ["features.2", "features.6", "features.9", "features", "classifier.1"]),
    "resnet_basic": (lambda: ResNet(BasicBlock), (3, 33, 30),
                     ["relu", "layer1.0.relu#0", "layer1.0", "layer1.1.bn2", "layer2.0.downsample", "layer2",
                      "fc"]),
    "resnet_bottleneck": (lambda: ResNet(Bottleneck, (2, 3), bottleneck=True), (3, 29, 31),
                          ["layer1.0.conv2", "layer1.0.relu#1", "layer1", "layer2.1.bn3", "layer2"]),
    "densenet": (DenseNetBlock, (3, 14, 15), ["denselayer1.conv1", "denselayer1", "denselayer2", "norm5", "pool",
                                              "fc"]),
    "inception": (InceptionBlock, (3, 19, 21), ["stem", "branch3x3_2", "branch_pool.bn", "branch_max", "fc"]),
    "mobilenet": (MobileNetBlock, (3, 17, 16), ["features.0", "features.1.conv.1", "features.1", "features.2",
                                                "classifier.1"]),
}


def _setup(name, seed=0):
    factory, shape, layers = MODELS[name]
    torch.manual_seed(seed)
    model = _randomise_bn(factory()).double().eval()
    images = torch.randn(3, *shape, dtype=torch.float64)
    return model, images, Deconvnet(model, shape), layers


def _module_and_call(name):
    path, _, call = name.partition("#")
    return path, int(call or 0)


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("mode", MODES)
def test_projections_equal_the_per_call_oracle(name, mode):
    model, images, net, layers = _setup(name)
    nonzero = 0
    for k, layer in enumerate(layers):
        shape = net.layer_spec()[layer].shape
        channel = k % shape[0]
        positions = [None, "map"] if len(shape) == 3 else [None]
        if len(shape) == 3:
            positions.append((shape[1] - 1, 0))
        path, call = _module_and_call(layer)
        for position in positions:
            got = net.project(images, layer, channel, position, mode=mode)
            expected = oracle(model, images, path, channel, position, mode, call)
            torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12,
                                       msg=f"{name} {mode} {layer} {position}")
            nonzero += bool(got.abs().sum() > 0)
    assert nonzero >= len(layers)  # most units of a random net are alive


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("mode", MODES)
def test_cropped_projections_equal_uncropped_on_dags(name, mode):
    model, images, net, _ = _setup(name)
    spec = net.layer_spec()
    cropped_layers = 0
    for layer in net.layers:
        if len(spec[layer].shape) != 3 or net.crop_work_ratio(layer) <= 1:
            continue
        cropped_layers += 1
        c, h, w = spec[layer].shape
        positions = [(0, 0), (h - 1, w - 1), (0, w - 1), (h // 2, w // 2)]
        requests = [Request(i % len(images), layer, i % c, p) for i, p in enumerate(positions)]
        requests.append(Request(1, layer, 0, None))
        cropped = net.project_many(images, requests, mode)
        whole = net.project_many(images, requests, mode, crop=False)
        torch.testing.assert_close(cropped, whole, rtol=1e-9, atol=1e-12, msg=f"{name} {mode} {layer}")
    assert cropped_layers >= 2


def test_receptive_fields_are_unions_over_branches():
    """A unit's window is where its projection can be nonzero: every input pixel
    outside the box gets exactly zero, and a gradient through every branch
    reaches the box's edges."""
    for name in MODELS:
        model, images, net, _ = _setup(name)
        spec = net.layer_spec()
        for layer in net.layers:
            info = net.receptive_field(layer)
            if len(info.shape) != 3:
                continue
            c, h, w = info.shape
            unit = (h // 2, w // 2)
            top, left, bottom, right = spec.box(layer, *unit)
            got = net.project_many(images, [Request(0, layer, 0, unit)], "gradient", crop=False)[0]
            outside = got.clone()
            outside[:, top:bottom, left:right] = 0
            assert outside.abs().max() == 0, f"{name} {layer}: gradient outside its receptive field"


def test_resnet_receptive_field_by_hand():
    _, _, net, _ = _setup("resnet_basic")
    # conv1 7x7/2 p3: 7; maxpool 3/2 p1: 7 + 2*2 = 11, jump 4
    stem = net.receptive_field("maxpool")
    assert stem.size == (11, 11) and stem.jump == (4, 4)
    # layer1.0: two 3x3 convs at jump 4 on the residual path: 11 + 2*4 + 2*4 = 27 (the identity branch is inside)
    block = net.receptive_field("layer1.0")
    assert block.size == (27, 27) and block.jump == (4, 4)
    # layer2.0: 3x3/2 then 3x3 at jump 8; the 1x1/2 downsample is inside: 43 + 2*4 + 2*8 = 67
    assert net.receptive_field("layer2.0").size == (43 + 8 + 16, 43 + 8 + 16)
    assert net.receptive_field("layer2.0").jump == (8, 8)


def test_layers_by_name_containers_and_call_sites():
    _, images, net, _ = _setup("resnet_basic")
    assert "layer1" in net.layers and "layer1.0.conv1" in net.layers and "layer2.0.downsample.1" in net.layers
    assert "layer1.0.relu#0" in net.layers and "layer1.0.relu#1" in net.layers
    assert net.layers.index("layer1.0.conv1") < net.layers.index("layer1.0.relu#0") < net.layers.index("layer2")
    with pytest.raises(ValueError, match=r"'layer1.0.relu' is called 2 times.*layer1\.0\.relu#0, layer1\.0\.relu#1"):
        net.project(images, "layer1.0.relu", 0)
    with pytest.raises(ValueError, match="no layer named 'layer9'"):
        net.project(images, "layer9", 0)
    # a container's output is its last block's
    torch.testing.assert_close(net.activations(images, "layer1"), net.activations(images, "layer1.1"))


class Sorts(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.head = nn.Conv2d(4, 4, 1)

    def forward(self, x):
        return self.head(torch.sort(self.conv(x), dim=1).values)


class Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        y = self.conv(x)
        if y.sum() > 0:  # data-dependent control flow
            return y
        return -y


def test_an_op_outside_the_table_is_an_error_naming_node_op_and_module():
    net = Deconvnet(Sorts().eval(), (3, 9, 9))
    images = torch.randn(2, 3, 9, 9)
    net.project(images, "conv", 0)  # below the sort: fine
    with pytest.raises(CaptureError, match=r"node 'sort' \(aten\.sort\.default\) in module '<model>'"):
        net.project(images, "head", 0)


def test_data_dependent_control_flow_is_a_clear_capture_error():
    with pytest.raises(CaptureError, match="torch.export cannot capture Branchy's forward"):
        Deconvnet(Branchy(), (3, 9, 9))


def test_max_pool_dilation_and_used_indices_are_refused():
    with pytest.raises(CaptureError, match="dilation"):
        Deconvnet(nn.Sequential(nn.Conv2d(3, 4, 3), nn.MaxPool2d(2, dilation=2)), (3, 12, 12)).project(
            torch.randn(1, 3, 12, 12), "1", 0)

    class Indices(nn.Module):
        def forward(self, x):
            out, idx = F.max_pool2d(x, 2, return_indices=True)
            return out + idx.to(out.dtype)
    with pytest.raises(CaptureError, match="output 1 of node"):
        Deconvnet(Indices(), (3, 8, 8))


def test_exported_programs_and_graph_modules_are_accepted():
    model, images, net, _ = _setup("resnet_basic")
    ep = torch.export.export(model, (images[:2],))
    from_ep = Deconvnet(ep)
    assert from_ep.input_shape == net.input_shape and from_ep.layers == net.layers
    traced = torch.fx.symbolic_trace(model)
    from_gm = Deconvnet(traced, net.input_shape)
    for other in (from_ep, from_gm):
        torch.testing.assert_close(other.project(images, "layer2", 1), net.project(images, "layer2", 1),
                                   rtol=1e-12, atol=1e-12)


def test_functional_reused_and_in_place_relus_are_each_a_call():
    class Mixed(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3), nn.Conv2d(4, 4, 1)
            self.relu = nn.ReLU(inplace=True)

        def forward(self, x):
            x = self.relu(self.a(x))
            x = torch.relu(self.b(x))
            x = self.c(x).relu_()
            return self.relu(F.relu(x) - 0.1)
    torch.manual_seed(0)
    model = Mixed().double().eval()
    images = torch.randn(2, 3, 10, 10, dtype=torch.float64)
    net = Deconvnet(model, (3, 10, 10))
    for mode in MODES:
        got = net.project(images, "relu#1", 2, None, mode)
        torch.testing.assert_close(got, oracle(model, images, "relu", 2, None, mode, call=1), rtol=1e-9,
                                   atol=1e-12)


def test_fused_stages_are_found_by_pattern_on_plain_chains_and_bn_nets():
    from zfcore.deconv import plan as P
    from zfcore.models import zfnet_small
    net = Deconvnet(zfnet_small().eval(), (3, 64, 64))
    kinds = [type(s).__name__ for s in net.plan("conv5", "deconvnet")]
    assert kinds.count("DeconvStep") == 2 and kinds.count("ReluConvTranspose") == 2, kinds
    _, _, vgg, _ = _setup("vgg_bn")
    kinds = [type(s).__name__ for s in vgg.plan("features", "deconvnet")]
    assert kinds.count("DeconvStep") == 3 and kinds.count("ReluConvTranspose") == 1, kinds
    assert all(isinstance(s, P.Stage) for s in vgg.plan("features", "guided"))
    kinds = [type(s).__name__ for s in vgg.plan("features", "guided")]
    assert kinds.count("ConvTranspose") == 4  # BatchNorm folded into its convolution


def test_training_flag_is_restored_and_weights_changes_are_seen():
    model, images, net, _ = _setup("vgg_bn")
    model.train()
    net2 = Deconvnet(model, (3, 20, 22))
    assert model.training
    before = net2.project(images, "features.2", 0, (3, 3))
    with torch.no_grad():
        model.features[0].weight.mul_(2)
    after = net2.project(images, "features.2", 0, (3, 3))
    assert not torch.allclose(before, after)


# ---------------------------------------------------------- random DAG CNNs


class RandomDag(nn.Module):
    """A random DAG of convolutions, BatchNorms, ReLUs (module and functional),
    poolings, additions and concatenations over maps of one size per stage."""

    def __init__(self, program):
        super().__init__()
        self.program = program
        self.mods = nn.ModuleList()
        channels = [3]
        for op, a, b, c in program:
            if op == "conv":
                k = (1, 3)[c % 2]
                self.mods.append(nn.Conv2d(channels[a], 2 + b % 3, k, padding=k // 2, bias=bool(c % 3)))
                channels.append(2 + b % 3)
            elif op == "bn":
                self.mods.append(nn.BatchNorm2d(channels[a]))
                channels.append(channels[a])
            elif op == "cat":
                self.mods.append(nn.Identity())
                channels.append(channels[a] + channels[b])
            elif op == "add":
                self.mods.append(nn.Conv2d(channels[b], channels[a], 1))  # match channels
                channels.append(channels[a])
            else:
                self.mods.append(nn.ReLU(inplace=bool(c % 2)) if op == "relu" else nn.Identity())
                channels.append(channels[a])
        self.channels = channels

    def forward(self, x):
        values = [x]
        for (op, a, b, c), m in zip(self.program, self.mods):
            if op == "conv" or op == "bn":
                values.append(m(values[a]))
            elif op == "relu":
                values.append(m(values[a].clone()) if c % 2 else m(values[a]))
            elif op == "frelu":
                values.append(F.relu(values[a]))
            elif op == "cat":
                values.append(torch.cat([values[a], values[b]], 1))
            elif op == "add":
                values.append(values[a] + m(values[b]))
            elif op == "avg":
                values.append(F.avg_pool2d(values[a], 3, 1, 1))
            else:  # max
                values.append(F.max_pool2d(values[a], 3, 1, 1))
        return values[-1]


@st.composite
def programs(draw):
    n = draw(st.integers(3, 9))
    program = [("conv", 0, draw(st.integers(0, 5)), draw(st.integers(0, 5)))]
    for i in range(1, n):
        op = draw(st.sampled_from(["conv", "bn", "relu", "frelu", "cat", "add", "avg", "max"]))
        a = draw(st.integers(1, i))
        b = draw(st.integers(1, i))
        program.append((op, a, b, draw(st.integers(0, 5))))
    return program


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(program=programs(), mode=st.sampled_from(MODES), seed=st.integers(0, 1000))
def test_random_dag_cnns_equal_the_oracle(program, mode, seed):
    torch.manual_seed(seed)
    model = _randomise_bn(RandomDag(program), seed).double().eval()
    images = torch.randn(2, 3, 7, 6, dtype=torch.float64)
    net = Deconvnet(model, (3, 7, 6))
    layer = f"mods.{len(program) - 1}"
    if layer not in net.layers:  # the last op is not a module call (functional): project the last module
        layer = [name for name in net.layers if name.startswith("mods.")][-1]
    path, call = _module_and_call(layer)
    channel = seed % net.layer_spec()[layer].shape[0]
    for position in (None, (0, 5), "map"):
        got = net.project(images, layer, channel, position, mode)
        expected = oracle(model, images, path, channel, position, mode, call)
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12, msg=f"{program} {mode} {position}")
    requests = [Request(0, layer, channel, (0, 0)), Request(1, layer, channel, (6, 5))]
    torch.testing.assert_close(net.project_many(images, requests, mode),
                               net.project_many(images, requests, mode, crop=False), rtol=1e-9, atol=1e-12)


def test_the_top9_pipeline_takes_a_resnet():
    """Streaming top-k and the top-k projections on a ResNet with a reused ReLU:
    leaf and container layers, each projection the engine's own."""
    from torch.utils.data import TensorDataset

    from zfcore.analysis import top_k
    from zfcore.analysis.projections import top_k_projections

    model, images, _, _ = _setup("resnet_basic")
    model, images = model.float(), images.float()
    net = Deconvnet(model, tuple(images.shape[1:]))
    dataset = TensorDataset(images, torch.zeros(len(images), dtype=torch.long))
    found = top_k(model, dataset, ["layer1", "layer2.0.conv1"], k=2, batch_size=2, progress=False)
    projected = top_k_projections(model, dataset, found, batch_size=4)
    for layer in ("layer1", "layer2.0.conv1"):
        image = int(found[layer].images[1, 0])
        whole = net.project(images[image:image + 1], layer, 1)[0]
        assert projected[layer].projections[1, 0].abs().sum() > 0
        assert torch.isclose(projected[layer].projections[1, 0].abs().sum(), whole.abs().sum(), rtol=1e-4), layer


def test_call_sites_name_a_reused_relu_in_the_analyses():
    """``NAME#i`` in Grad-CAM and the streaming top-k: the i-th call's output;
    a bare name of a module called twice is an error listing the call sites."""
    from torch.utils.data import TensorDataset

    from zfcore.analysis import top_k
    from zfcore.analysis.gradcam import grad_cam

    model, images, net, _ = _setup("resnet_basic")
    dataset = TensorDataset(images, torch.zeros(len(images), dtype=torch.long))
    found = top_k(model, dataset, ["layer1.0.relu#1", "layer1.0.relu#0"], k=1, batch_size=3, progress=False)
    for layer in ("layer1.0.relu#0", "layer1.0.relu#1"):
        strongest = net.activations(images, layer).flatten(2).amax(2).argmax(0)
        assert torch.equal(found[layer].images[:, 0], strongest), layer
    with pytest.raises(ValueError, match=r"name one call: layer1\.0\.relu#0, layer1\.0\.relu#1"):
        top_k(model, dataset, ["layer1.0.relu"], k=1, batch_size=3, progress=False)
    with pytest.raises(ValueError, match=r"name one call: layer1\.0\.relu#0, layer1\.0\.relu#1"):
        grad_cam(model, images, "layer1.0.relu", progress=False)
    first, second = (grad_cam(model, images, f"layer1.0.relu#{i}", progress=False) for i in (0, 1))
    assert first.shape == second.shape and not torch.allclose(first, second)


def test_a_forward_that_fails_raises_its_own_error():
    class Broken(nn.Module):
        def forward(self, x):
            raise AssertionError("the model's own check")
    with pytest.raises(AssertionError, match="the model's own check"):
        Deconvnet(Broken(), (3, 4, 4))


def test_occlusion_takes_a_resnet():
    from zfcore.analysis.occlusion import occlusion

    model, images, _, _ = _setup("resnet_basic")
    result = occlusion(model, images[:2], torch.tensor([1, 3]), layer="layer2", patch_size=8, stride=8,
                       progress=False)
    assert torch.isfinite(result.true_prob).all() and result.true_prob.shape[0] == 2
    # image 0 with the first square occluded, by hand: the first entry of its map
    x = images[:1].clone()
    x[..., :8, :8] = 0
    with torch.no_grad():
        by_hand = torch.softmax(model(x), 1)[0, 1]
    torch.testing.assert_close(result.true_prob[0, 0, 0].double(), by_hand, rtol=1e-6, atol=1e-9)


def test_an_in_place_relu_never_writes_into_a_live_view():
    """x.flatten(1) read after torch.relu(x): the ReLU may not run in place."""
    class ViewThenRelu(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.fc = nn.Conv2d(3, 4, 3), nn.Linear(4 * 6 * 6, 2)

        def forward(self, x):
            x = self.conv(x)
            y = x.flatten(1)
            return self.fc(torch.relu(x).flatten(1) + y)

    torch.manual_seed(0)
    model = ViewThenRelu().double().eval()
    images = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    net = Deconvnet(model, (3, 8, 8))
    out = net.graph.output
    torch.testing.assert_close(net._forward(images, [out], "deconvnet", {out})[1][out], model(images).detach(),
                               rtol=1e-12, atol=1e-12)
    for mode in MODES:
        torch.testing.assert_close(net.project(images, "fc", 1, mode=mode), oracle(model, images, "fc", 1, None, mode),
                                   rtol=1e-9, atol=1e-12)


def test_captured_graphs_are_reused_until_the_model_changes():
    torch.manual_seed(0)
    model = vgg_bn().eval()
    first, second = Deconvnet(model, (3, 20, 22)), Deconvnet(model, (3, 20, 22))
    assert second.graph is first.graph  # one capture
    assert Deconvnet(model, (3, 24, 22)).graph is not first.graph  # another input shape
    model.features[4].padding = (0, 0)  # a setting capture bakes in (the second conv)
    changed = Deconvnet(model, (3, 20, 22))
    assert changed.graph is not first.graph and changed.layer_spec()["features.4"].shape[1:] == (8, 9)
    model.features[0] = nn.Conv2d(3, 8, 5, padding=2)  # a module replaced
    assert Deconvnet(model, (3, 20, 22)).graph is not changed.graph
