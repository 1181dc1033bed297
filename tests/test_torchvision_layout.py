"""ResNet and VGG with the module layout and state_dict keys of the common
PyTorch (torchvision) checkpoints: key names, shapes, parameter counts, output
shapes, and num_classes touching only the last layer. The expected values are
written out by hand from the published architectures."""

import pytest
import torch
from torch import nn

from zfcore.models import (resnet18, resnet34, resnet50, resnet101, resnet152, vgg11, vgg11_bn, vgg13, vgg13_bn,
                           vgg16, vgg16_bn, vgg19, vgg19_bn)


def _meta(make, **kwargs) -> nn.Module:
    """The model built on the meta device: shapes only, no memory, no time."""
    with torch.device("meta"):
        return make(**kwargs)


def _shapes(make, **kwargs) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in _meta(make, **kwargs).state_dict().items()}


def _params(make) -> int:
    return sum(p.numel() for p in _meta(make).parameters())


BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _bn_keys(prefix: str, channels: int) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.{k}": (() if k == "num_batches_tracked" else (channels,)) for k in BN}


def test_resnet18_state_dict():
    shapes = _shapes(resnet18)
    assert len(shapes) == 122  # 62 parameters + 3 buffers of each of its 20 BatchNorms
    expected = {
        "conv1.weight": (64, 3, 7, 7),
        "layer1.0.conv1.weight": (64, 64, 3, 3),
        "layer1.1.conv2.weight": (64, 64, 3, 3),
        "layer2.0.conv1.weight": (128, 64, 3, 3),
        "layer2.0.downsample.0.weight": (128, 64, 1, 1),
        "layer3.0.downsample.0.weight": (256, 128, 1, 1),
        "layer4.0.downsample.0.weight": (512, 256, 1, 1),
        "layer4.1.conv2.weight": (512, 512, 3, 3),
        "fc.weight": (1000, 512),
        "fc.bias": (1000,),
        **_bn_keys("bn1", 64),
        **_bn_keys("layer2.0.downsample.1", 128),
        **_bn_keys("layer4.1.bn2", 512),
    }
    assert {k: shapes.get(k) for k in expected} == expected
    # no downsample where the shape does not change, no conv3 in a basic block, no biases on convolutions
    assert not any(k.startswith(("layer1.0.downsample", "layer2.1.downsample")) for k in shapes)
    assert not any(".conv3." in k or (("conv" in k or "downsample.0" in k) and k.endswith(".bias"))
                   for k in shapes)
    assert list(shapes)[:2] == ["conv1.weight", "bn1.weight"] and list(shapes)[-2:] == ["fc.weight", "fc.bias"]
    assert _params(resnet18) == 11_689_512


def test_resnet50_state_dict():
    model = _meta(resnet50)
    shapes = _shapes(resnet50)
    assert len(shapes) == 320  # 161 parameters + 3 buffers of each of its 53 BatchNorms
    expected = {
        "layer1.0.conv1.weight": (64, 64, 1, 1),
        "layer1.0.conv2.weight": (64, 64, 3, 3),
        "layer1.0.conv3.weight": (256, 64, 1, 1),
        "layer1.0.downsample.0.weight": (256, 64, 1, 1),
        "layer1.1.conv1.weight": (64, 256, 1, 1),
        "layer2.0.conv2.weight": (128, 128, 3, 3),
        "layer2.0.downsample.0.weight": (512, 256, 1, 1),
        "layer3.5.conv3.weight": (1024, 256, 1, 1),
        "layer4.2.conv3.weight": (2048, 512, 1, 1),
        "fc.weight": (1000, 2048),
        **_bn_keys("layer1.0.bn3", 256),
        **_bn_keys("layer4.0.downsample.1", 2048),
    }
    assert {k: shapes.get(k) for k in expected} == expected
    assert "layer3.6.conv1.weight" not in shapes and "layer4.3.conv1.weight" not in shapes
    # the stride sits on the 3x3 convolution of the first block of a stage
    assert model.layer2[0].conv1.stride == (1, 1) and model.layer2[0].conv2.stride == (2, 2)
    assert model.layer2[0].downsample[0].stride == (2, 2)
    assert _params(resnet50) == 25_557_032


def test_vgg11_bn_state_dict():
    shapes = _shapes(vgg11_bn)
    assert len(shapes) == 62  # 8 convolutions, 8 BatchNorms, 3 linear layers
    expected = {
        "features.0.weight": (64, 3, 3, 3),
        "features.0.bias": (64,),
        "features.4.weight": (128, 64, 3, 3),
        "features.8.weight": (256, 128, 3, 3),
        "features.25.weight": (512, 512, 3, 3),
        "classifier.0.weight": (4096, 25088),
        "classifier.3.weight": (4096, 4096),
        "classifier.6.weight": (1000, 4096),
        "classifier.6.bias": (1000,),
        **_bn_keys("features.1", 64),
        **_bn_keys("features.26", 512),
    }
    assert {k: shapes.get(k) for k in expected} == expected
    assert _params(vgg11_bn) == 132_868_840


def test_vgg_layout():
    model = _meta(vgg16)
    kinds = [type(m).__name__ for m in model.features]
    assert len(kinds) == 31 and kinds.count("Conv2d") == 13 and kinds.count("MaxPool2d") == 5
    assert kinds[:5] == ["Conv2d", "ReLU", "Conv2d", "ReLU", "MaxPool2d"]
    assert [type(m).__name__ for m in model.classifier] == ["Linear", "ReLU", "Dropout"] * 2 + ["Linear"]
    assert all(m.inplace for m in model.modules() if isinstance(m, nn.ReLU))
    assert model.avgpool.output_size == (7, 7)
    bn = [type(m).__name__ for m in _meta(vgg16_bn).features]
    assert len(bn) == 44 and bn[:3] == ["Conv2d", "BatchNorm2d", "ReLU"]
    counts = {f: _params(f) for f in (vgg11, vgg13, vgg13_bn, vgg16, vgg19, vgg19_bn)}
    assert list(counts.values()) == [132_863_336, 133_047_848, 133_053_736, 138_357_544, 143_667_240,
                                     143_678_248]


def test_resnet_family_sizes_and_shared_relu():
    counts = [_params(f) for f in (resnet34, resnet101, resnet152)]
    assert counts == [21_797_672, 44_549_160, 60_192_808]
    model = _meta(resnet18)
    block = model.layer1[0]
    assert [name for name, _ in block.named_children()] == ["conv1", "bn1", "relu", "conv2", "bn2"]
    assert isinstance(block.relu, nn.ReLU) and block.relu.inplace
    assert [name for name, _ in model.named_children()] == ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2",
                                                            "layer3", "layer4", "avgpool", "fc"]
    assert isinstance(model.avgpool, nn.AdaptiveAvgPool2d) and model.avgpool.output_size == (1, 1)
    assert [name for name, _ in _meta(resnet50).layer1[0].named_children()] == [
        "conv1", "bn1", "conv2", "bn2", "conv3", "bn3", "relu", "downsample"]


def test_initialization():
    torch.manual_seed(0)
    model = resnet18()
    assert torch.equal(model.bn1.weight, torch.ones(64)) and torch.equal(model.layer3[1].bn2.bias, torch.zeros(256))
    std = (2 / (512 * 9)) ** 0.5  # Kaiming normal, fan out (512 maps x 3 x 3), ReLU gain
    assert abs(float(model.layer4[0].conv2.weight.detach().std()) / std - 1) < 0.05
    v = vgg11()
    assert torch.equal(v.features[0].bias, torch.zeros(64)) and torch.equal(v.classifier[0].bias, torch.zeros(4096))
    assert abs(float(v.classifier[3].weight.detach().std()) / 0.01 - 1) < 0.05


def test_forward_at_224():
    torch.manual_seed(0)
    with torch.no_grad():
        assert resnet18().eval()(torch.randn(1, 3, 224, 224)).shape == (1, 1000)


@pytest.mark.parametrize("make,size", [(resnet50, 64), (vgg11_bn, 32), (resnet18, 97)])
def test_forward_small_inputs(make, size):
    torch.manual_seed(0)
    with torch.no_grad():
        out = make(num_classes=7).eval()(torch.randn(2, 3, size, size))
    assert out.shape == (2, 7) and torch.isfinite(out).all()


@pytest.mark.parametrize("make,last", [(resnet18, "fc"), (resnet50, "fc"), (vgg11_bn, "classifier.6")])
def test_num_classes_changes_only_the_last_layer(make, last):
    default, ten = _shapes(make), _shapes(make, num_classes=10)
    assert list(default) == list(ten)
    changed = {k for k in default if default[k] != ten[k]}
    assert changed == {f"{last}.weight", f"{last}.bias"}
    assert ten[f"{last}.weight"][0] == ten[f"{last}.bias"][0] == 10
    with pytest.raises(ValueError, match="num_classes"):
        _meta(make, num_classes=0)


def test_state_dict_round_trip():
    a, b = resnet18(num_classes=5), resnet18(num_classes=5)
    b.load_state_dict(a.state_dict(), strict=True)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
