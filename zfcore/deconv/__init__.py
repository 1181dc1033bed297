"""The deconvnet engine: exact projections of units and maps to pixel space,
for any CNN ``torch.export`` captures."""

from .engine import MODES, Deconvnet, Request
from .graph import CaptureError, Graph, capture
from .rules import RULES, LayerRule

__all__ = ["MODES", "CaptureError", "Deconvnet", "Graph", "LayerRule", "RULES", "Request", "capture"]
