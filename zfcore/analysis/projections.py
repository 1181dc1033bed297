"""The paper's Fig. 2: each top-k unit projected to pixel space by the
deconvnet, beside the image patch under its receptive field.

Every (map, image) of a ``top_k`` result is one ``Request`` of
``Deconvnet.project_many``, run in batches (one forward per distinct image of a
batch). A single unit's projection is nonzero only inside the unit's receptive
field, so what is kept is that field's window (the unit's ``LayerSpec`` box,
aligned as if unclipped): the projection's and the image's pixels inside it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from tqdm import tqdm

from ..deconv import Deconvnet, Request
from .result import Result
from .topk import TopK

__all__ = ["Projections", "top_k_projections"]


@dataclass
class Projections(Result):
    """One layer's projections, indexed like its ``TopK``: ``projections[C, k,
    3, sh, sw]`` and ``patches[C, k, 3, sh, sw]`` (model input space) over each
    unit's whole receptive field, ``windows[C, k, 2]`` (its top-left corner in
    input pixels, negative where the field overhangs the image), ``boxes[C, k,
    4]`` (the field clipped to the image: top, left, bottom, right,
    end-exclusive). The parts of a window outside the image are zero."""

    layer: str
    projections: Tensor
    patches: Tensor
    boxes: Tensor
    windows: Tensor

    def inside(self, c: int, j: int) -> tuple[slice, slice]:
        """The part of window ``(c, j)`` that lies inside the image."""
        top, left, bottom, right = self.boxes[c, j].tolist()
        wt, wl = self.windows[c, j].tolist()
        return slice(top - wt, bottom - wt), slice(left - wl, right - wl)


def _window(spec, layer: str, h: int, w: int, input_shape) -> tuple[int, int, int, int]:
    """Unit ``(h, w)``'s whole receptive field: ``(top, left, height, width)`` in
    input pixels, not clipped (``top``/``left`` may be negative)."""
    info = spec[layer]
    _, height, width = input_shape
    if len(info.shape) != 3:
        return 0, 0, height, width
    top = int(info.offset[0] + h * info.jump[0] - (info.size[0] - 1) / 2)
    left = int(info.offset[1] + w * info.jump[1] - (info.size[1] - 1) / 2)
    return top, left, info.size[0], info.size[1]


def top_k_projections(model: nn.Module, dataset, topk: dict[str, TopK] | TopK, mode: str = "deconvnet",
                      batch_size: int = 256, *, net: Deconvnet | None = None, progress: bool = True,
                      channels: dict[str, Tensor] | None = None) -> dict[str, Projections]:
    """Project every unit of ``topk`` (``top_k``'s result) with the deconvnet.

    Args:
        model: the network ``topk`` was computed on.
        dataset: the same dataset (``topk.images`` index it).
        topk: ``{layer: TopK}`` or one ``TopK``.
        mode: ``"deconvnet"``, ``"guided"`` or ``"gradient"`` (``Deconvnet``'s modes).
        batch_size: requests per ``project_many`` call.
        net: a ``Deconvnet`` of ``model`` to reuse (built from the dataset's
            first image's shape otherwise).
        channels: per layer, the map number of each row of its ``TopK`` when
            the rows are a selection of the maps (default: row ``c`` is map ``c``).

    Returns:
        ``{layer: Projections}``.
    """
    if isinstance(topk, TopK):
        topk = {topk.layer: topk}
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"top_k_projections: batch_size must be a positive int (got {batch_size!r})")
    if net is None:
        first = dataset[0][0]
        net = Deconvnet(model, tuple(first.shape))
    spec = net.layer_spec()
    device = next(model.parameters()).device
    total = sum(t.values.numel() for t in topk.values())
    bar = tqdm(total=total, desc="projections", unit="unit", disable=not progress, leave=False)
    result = {}
    try:
        for layer, found in topk.items():
            if layer not in net.layers:
                raise ValueError(f"top_k_projections: the deconvnet cannot project {layer!r}; "
                                 f"its layers are {', '.join(net.layers)}")
            c, k = found.values.shape
            maps = channels[layer].tolist() if channels is not None and layer in channels else list(range(c))
            if len(maps) != c:
                raise ValueError(f"top_k_projections: channels[{layer!r}] must name one map per row ({c})")
            flat = len(spec[layer].shape) != 3  # a Linear layer's unit: the channel itself
            s = _window(spec, layer, 0, 0, net.input_shape)[2:]
            projections = torch.zeros((c, k, net.input_shape[0], *s))
            patches = torch.zeros_like(projections)
            boxes = torch.zeros((c, k, 4), dtype=torch.int64)
            windows = torch.zeros((c, k, 2), dtype=torch.int64)
            # requests sharing an image go together: fewer distinct images to run forward per batch
            units = sorted(((ci, j) for ci in range(c) for j in range(k)), key=lambda u: int(found.images[u]))
            for start in range(0, len(units), batch_size):
                chunk = units[start:start + batch_size]
                wanted = sorted({int(found.images[ci, j]) for ci, j in chunk})
                local = {index: i for i, index in enumerate(wanted)}
                images = torch.stack([torch.as_tensor(dataset[index][0]) for index in wanted]).float().to(device)
                requests = []
                for ci, j in chunk:
                    h, w = (int(v) for v in found.positions[ci, j])
                    requests.append(Request(local[int(found.images[ci, j])], layer, int(maps[ci]),
                                            None if flat else (h, w)))
                projected = net.project_many(images, requests, mode=mode).cpu()
                for (ci, j), request, image in zip(chunk, requests, projected):
                    h, w = request.position or (0, 0)
                    top, left, bottom, right = spec.box(layer, h, w)
                    wt, wl = _window(spec, layer, h, w, net.input_shape)[:2]
                    boxes[ci, j] = torch.tensor((top, left, bottom, right))
                    windows[ci, j] = torch.tensor((wt, wl))
                    rows, cols = slice(top - wt, bottom - wt), slice(left - wl, right - wl)
                    projections[ci, j, :, rows, cols] = image[:, top:bottom, left:right]
                    patches[ci, j, :, rows, cols] = images[request.image].cpu()[:, top:bottom, left:right]
                bar.update(len(chunk))
            result[layer] = Projections(layer, projections, patches, boxes, windows)
    finally:
        bar.close()
    return result
