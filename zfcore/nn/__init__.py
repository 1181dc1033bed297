"""Modules on zfcore's ops."""

from .pooling import MaxPool2dSwitches, Unpool2d

__all__ = ["MaxPool2dSwitches", "Unpool2d"]
