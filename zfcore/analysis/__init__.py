"""The analyses: one module per analysis, each a function returning a small
dataclass of tensors, rendered by ``zfcore.report``.

* ``top_k`` / ``TopK``: the strongest images per feature map over a dataset (streamed, resumable, sharded).
* ``top_k_projections`` / ``Projections``: those units projected by the deconvnet, beside their patches (Fig. 2).
* ``activations``: every layer's maps for one image; ``dead_units``: maps that never fire.
* ``filters``: filter images with a smoothness score.
"""

from .activations import Activations, DeadUnits, activations, dead_units
from .filters import Filters, filters, high_frequency_fraction
from .projections import Projections, top_k_projections
from .topk import TopK, map_maxima, merge_top_k, top_k

__all__ = ["Activations", "DeadUnits", "Filters", "Projections", "TopK", "activations", "dead_units", "filters",
           "high_frequency_fraction", "map_maxima", "merge_top_k", "top_k", "top_k_projections"]
