"""zfcore: fast, exact visualization of convolutional networks after Zeiler &
Fergus, *Visualizing and Understanding Convolutional Networks* (ECCV 2014)."""

from . import models, nn, ops
from .data.preprocess import Preprocess
from .load import Dataset, Loaded, Subject, load
from .ops import backends
from .version import __version__

__all__ = ["Dataset", "Loaded", "Preprocess", "Subject", "backends", "load", "models", "nn", "ops", "__version__"]
