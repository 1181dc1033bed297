"""zfcore: fast, exact visualization of convolutional networks after Zeiler &
Fergus, *Visualizing and Understanding Convolutional Networks* (ECCV 2014)."""

from . import models, nn, ops
from .ops import backends

__version__ = "0.1.0"
__all__ = ["backends", "models", "nn", "ops", "__version__"]
