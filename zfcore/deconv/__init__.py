"""The deconvnet engine: exact projections of units and maps to pixel space."""

from .engine import MODES, Deconvnet, Request
from .walk import Step, WalkError, walk

__all__ = ["MODES", "Deconvnet", "Request", "Step", "WalkError", "walk"]
