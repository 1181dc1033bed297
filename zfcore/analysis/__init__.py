"""The analyses: one module per analysis, each a function returning a small
dataclass of tensors, rendered by ``zfcore.report``.

* ``top_k`` / ``TopK``: the strongest images per feature map over a dataset (streamed, resumable, sharded).
* ``top_k_projections`` / ``Projections``: those units projected by the deconvnet, beside their patches (Fig. 2);
  ``ForwardRecords`` lets the top-k pass keep the switches so that no image is run forward twice.
* ``activations``: every layer's maps for one image; ``dead_units``: maps that never fire.
* ``filters``: filter images with a smoothness score.

Every result is a ``Result`` (``result.py``: one ``to_plain``/``from_plain``
for all). The analyses of ``zfcore analyze`` are declared in their modules and
found by ``registry.analyses()``: the paper's experiments (``occlusion``, ``invariance``, ``correspondence``,
``probes``, ``evolution``, ``architecture``, ``ablation``, ``generalization``)
and the toolbox beside it (``neighbours``, ``embedding``, ``gradcam``,
``adversarial``, ``inversion``, ``class_model``, ``deepdream``, ``style``,
``pointing``) are submodules imported by name (``zfcore.analysis.gradcam``),
each with its function(s), a result dataclass, ``run(subject, dataset, ...)``
and ``ANALYSIS``; their pages are ``zfcore.report.pages.NAME``. Shared
argument checks, ``eval_mode`` and ``LayerTap`` are in ``_args.py``.
"""

from .activations import Activations, DeadUnits, activations, dead_units
from .filters import Filters, filters, high_frequency_fraction
from .projections import ForwardRecords, Projections, project_top_k, top_k_projections
from .result import Result, display_signed
from .topk import TopK, map_maxima, merge_top_k, rank_and_world, top_k

__all__ = ["Activations", "DeadUnits", "Filters", "ForwardRecords", "Projections", "Result", "TopK", "activations",
           "dead_units", "display_signed", "filters", "high_frequency_fraction", "map_maxima", "merge_top_k",
           "project_top_k", "rank_and_world", "top_k", "top_k_projections"]
