"""The paper's models (ZFNet, AlexNet), small presets, their layer specs, and
AlexNet / ResNet / VGG with the module layout and state_dict key names of the
common PyTorch checkpoints (for the deconvnet on any CNN); ``ARCHITECTURES``
names them all for ``zfcore.load``."""

from .alexnet import AlexNet, alexnet_torchvision
from .convnets import PRESETS, alexnet, init_paper, zfnet, zfnet_small
from .layer_spec import LayerInfo, LayerSpec
from .resnet import ResNet, resnet18, resnet34, resnet50, resnet101, resnet152
from .vgg import VGG, vgg11, vgg11_bn, vgg13, vgg13_bn, vgg16, vgg16_bn, vgg19, vgg19_bn
from .zoo import ARCHITECTURES, Architecture, architecture

__all__ = ["ARCHITECTURES", "PRESETS", "VGG", "AlexNet", "Architecture", "LayerInfo", "LayerSpec", "ResNet",
           "alexnet", "alexnet_torchvision", "architecture", "init_paper", "resnet18", "resnet34", "resnet50",
           "resnet101", "resnet152", "vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19",
           "vgg19_bn", "zfnet", "zfnet_small"]
