"""The paper's models (ZFNet, AlexNet), small presets, and their layer specs."""

from .convnets import PRESETS, alexnet, init_paper, zfnet, zfnet_small
from .layer_spec import LayerInfo, LayerSpec

__all__ = ["PRESETS", "LayerInfo", "LayerSpec", "alexnet", "init_paper", "zfnet", "zfnet_small"]
