"""zfcore: fast, exact visualization of convolutional networks after Zeiler &
Fergus, *Visualizing and Understanding Convolutional Networks* (ECCV 2014)."""

from . import models, nn, ops
from .load import Loaded, load
from .ops import backends

__version__ = "0.1.0"
__all__ = ["Loaded", "backends", "load", "models", "nn", "ops", "__version__"]
