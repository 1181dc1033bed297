"""Modules on zfcore's ops."""

from .normalization import local_response_norm
from .pooling import MaxPool2dSwitches, Unpool2d

__all__ = ["MaxPool2dSwitches", "Unpool2d", "local_response_norm"]
