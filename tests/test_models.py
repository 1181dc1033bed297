"""ZFNet/AlexNet structure, the paper's initialization, and LayerSpec's shapes
and receptive fields against the real layers."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.helpers import output_shapes
from zfcore.models import LayerSpec, alexnet, zfnet, zfnet_small
from zfcore.nn import MaxPool2dSwitches


def test_zfnet_matches_paper_figure_3():
    model = zfnet().eval()
    shapes = output_shapes(model, torch.randn(1, 3, 224, 224))
    spatial = [shapes[n][1] for n in ("conv1", "pool1", "conv2", "pool2", "conv3", "conv4", "conv5", "pool5")]
    assert spatial == [110, 55, 26, 13, 13, 13, 13, 6]
    assert [shapes[n][0] for n in ("conv1", "conv2", "conv3", "conv4", "conv5")] == [96, 256, 384, 384, 256]
    assert shapes["fc6"] == (4096,) and shapes["fc7"] == (4096,) and shapes["fc8"] == (1000,)
    convs = [(3, 96, 7), (96, 256, 5), (256, 384, 3), (384, 384, 3), (384, 256, 3)]
    fcs = [(256 * 6 * 6, 4096), (4096, 4096), (4096, 1000)]
    expected = sum(i * o * k * k + o for i, o, k in convs) + sum(i * o + o for i, o in fcs)
    assert sum(p.numel() for p in model.parameters()) == expected == 62_357_608
    assert isinstance(model.pool1, MaxPool2dSwitches) and isinstance(model.norm1, nn.LocalResponseNorm)
    names = dict(model.named_modules())
    for name in ["conv1", "pool1", "norm1", "conv2", "pool2", "norm2", "conv3", "conv4", "conv5", "pool5",
                 "fc6", "drop6", "fc7", "drop7", "fc8"]:
        assert name in names, name


def test_alexnet_is_the_dense_single_tower_model():
    model = alexnet(num_classes=10).eval()
    shapes = output_shapes(model, torch.randn(1, 3, 224, 224))
    assert model.conv1.kernel_size == (11, 11) and model.conv1.stride == (4, 4) and model.conv2.groups == 1
    assert shapes["conv1"] == (96, 55, 55) and shapes["pool5"] == (256, 6, 6) and shapes["fc8"] == (10,)


def test_paper_initialization_and_override():
    torch.manual_seed(0)
    model = zfnet(num_classes=10, width=0.5, fc_width=512)
    weights = torch.cat([m.weight.flatten() for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)])
    assert abs(weights.std().item() - 1e-2) < 5e-4
    assert all(m.bias.abs().max() == 0 for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear))
    default = zfnet(num_classes=10, width=0.5, fc_width=512, init_std=None)
    assert default.conv1.bias.abs().max() > 0


@pytest.mark.parametrize("factory, size", [(zfnet, 224), (alexnet, 224), (zfnet_small, 96), (zfnet_small, 64)])
def test_layer_spec_shapes_equal_the_forward(factory, size):
    model = factory(input_size=size).eval()
    spec = LayerSpec.of(model, (3, size, size))
    assert spec.names == [name for name, _ in model.named_children()]
    shapes = output_shapes(model, torch.randn(2, 3, size, size))
    assert {layer.name: layer.shape for layer in spec.layers} == shapes


def _linearized(model):
    """The same geometry with every layer linear and dense: ReLU/LRN/dropout
    removed, max pools replaced by average pools, so a unit's input gradient is
    nonzero exactly on its receptive field."""
    model = copy.deepcopy(model).double().eval()
    for name, module in list(model.named_children()):
        if isinstance(module, MaxPool2dSwitches):
            setattr(model, name, nn.AvgPool2d(module.kernel_size, module.stride, module.padding,
                                              ceil_mode=module.ceil_mode))
        elif isinstance(module, nn.ReLU | nn.LocalResponseNorm | nn.Dropout):
            setattr(model, name, nn.Identity())
    return model


@pytest.mark.parametrize("layer", ["conv1", "pool1", "conv2", "pool2", "conv3", "conv5", "pool5"])
def test_receptive_field_box_equals_gradient_support(layer):
    torch.manual_seed(1)
    model = zfnet_small(input_size=96)
    spec = LayerSpec.of(model, (3, 96, 96))
    linear = _linearized(model)
    prefix = nn.Sequential(*[m for name, m in linear.named_children()][: spec.names.index(layer) + 1])
    _, height, width = spec[layer].shape
    for h, w in {(0, 0), (height // 2, width // 2), (height - 1, width - 1), (0, width - 1)}:
        x = torch.randn(1, 3, 96, 96, dtype=torch.float64, requires_grad=True)
        prefix(x)[0, 0, h, w].backward()
        rows, cols = x.grad[0].abs().sum(0).nonzero(as_tuple=True)
        support = (rows.min().item(), cols.min().item(), rows.max().item() + 1, cols.max().item() + 1)
        assert support == spec.box(layer, h, w), (layer, h, w)


def test_layer_spec_errors_name_the_layer():
    with pytest.raises(ValueError, match="cannot walk gate"):
        LayerSpec.of(_with_sigmoid(), (3, 16, 16))
    with pytest.raises(KeyError, match="no layer named 'conv9'"):
        LayerSpec.of(zfnet_small(), (3, 64, 64))["conv9"]
    with pytest.raises(ValueError, match="too small"):
        LayerSpec.of(zfnet(), (3, 16, 16))


def _with_sigmoid():
    model = nn.Sequential()
    model.add_module("conv1", nn.Conv2d(3, 4, 3))
    model.add_module("gate", nn.Sigmoid())
    return model


@pytest.mark.parametrize("size, channels, layout", [(5, 96, "nchw"), (5, 3, "nchw"), (4, 7, "channels_last"),
                                                    (1, 5, "noncontiguous"), (3, 16, "nchw")])
def test_local_response_norm_is_torch_s_within_its_own_rounding(size, channels, layout):
    from zfcore.nn import local_response_norm
    g = torch.Generator().manual_seed(size * 100 + channels)
    x = torch.randn(3, channels, 9, 11, generator=g) * torch.logspace(-2, 3, 11)  # small to large values
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "noncontiguous":
        x = torch.randn(3, channels, 9, 22, generator=g)[..., ::2] * 40
    args = (size, 1e-4, 0.75, 2.0)
    exact = F.local_response_norm(x.double(), *args)
    own = F.local_response_norm(x, *args)
    got = local_response_norm(x, *args)
    assert got.dtype == x.dtype and got.shape == x.shape
    error = lambda t: ((t.double() - exact).abs() / exact.abs().clamp_min(1e-30)).max().item()
    assert error(got) <= 2 * error(own) + 1e-7, (error(got), error(own))
    torch.testing.assert_close(local_response_norm(x.double(), *args), exact, rtol=1e-13, atol=0)
    with pytest.raises(ValueError, match="local_response_norm: size must be an int >= 1"):
        local_response_norm(x, 0)
    with pytest.raises(ValueError, match=r"local_response_norm: x must be a Tensor\[N, C, H, W\]"):
        local_response_norm(x[0], size)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_local_response_norm_of_half_types_sums_in_float32(dtype):
    # Five neighbouring channels near 120: their squares sum past float16's range.
    from zfcore.nn import local_response_norm
    g = torch.Generator().manual_seed(7)
    x = (110 + 20 * torch.rand(2, 8, 5, 5, generator=g)).to(dtype)
    exact = F.local_response_norm(x.double(), 5, 1e-4, 0.75, 2.0)  # (ATen has no half LRN on the CPU)
    got = local_response_norm(x, 5, 1e-4, 0.75, 2.0)
    assert got.dtype == dtype and torch.isfinite(got).all() and (got != 0).all()
    assert ((got.double() - exact).abs() / exact.abs()).max().item() <= torch.finfo(dtype).eps  # one rounding
