"""Receptive-field windows for the deconvnet's way down.

A single unit's projection is nonzero only inside its receptive field, so the
way down from units of the conv stack runs on windows: at each node the part
of the map that can be nonzero (the union of its branches' windows). Going down through a conv or a pooling of
kernel ``k`` (span ``d(k-1)+1``), stride ``s`` and padding ``p``, a window of
``n`` positions at corner ``c`` becomes ``(n-1)s + span`` positions at corner
``cs - p``; pointwise layers keep it. A window may reach past its map (into
the padding, or past the last row): those positions are zero in the map, so
``Windows.inside`` zeroes them and ``Windows.crop`` reads them as zeros.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


Geometry = tuple[tuple[int, int, int], tuple[int, int, int]]  # per spatial dim: (jump, first, end)


def geometries(graph, window_of, top: int) -> dict[int, Geometry] | None:
    """Where the window of one unit ``(h, w)`` of node ``top`` lies at every node
    below it: per spatial dim ``(jump, first, end)``, the window being rows
    ``h * jump + first .. h * jump + end - 1``. A node read by several branches
    gets the union of their windows. None where a unit sees the whole map (a
    node with no window rule, or branches with different jumps).

    ``window_of(node, geometry)`` maps a node's output window to its inputs'
    (``zfcore.deconv.rules``), None for a node without one."""
    nodes = graph.nodes
    if len(nodes[top].shape) != 3:
        return None
    geo: dict[int, Geometry] = {top: ((1, 0, 1), (1, 0, 1))}
    for i in reversed(graph.ancestors([top])):
        node = nodes[i]
        if node.op == "input":
            continue
        below = window_of(node, geo[i])
        if below is None:
            return None
        for j, g in zip(node.inputs, below):
            if len(nodes[j].shape) != 3:
                return None
            if j in geo:
                old = geo[j]
                if any(o[0] != n[0] for o, n in zip(old, g)):
                    return None
                g = tuple((n[0], min(o[1], n[1]), max(o[2], n[2])) for o, n in zip(old, g))
            geo[j] = g
    return geo


class Windows:
    """The windows of ``R`` units of one node at every node below it.

    Args:
        geo: ``geometries(...)`` of the units' node.
        positions: ``LongTensor[R, 2]``, each unit's ``(h, w)``.
        image: ``LongTensor[R]``, the row of each unit's image in the forward's records.
    """

    def __init__(self, geo: dict, positions: Tensor, image: Tensor):
        self.image = image
        self.geo = geo
        self.sizes = {i: (g[0][2] - g[0][1], g[1][2] - g[1][1]) for i, g in geo.items()}
        self.corners = {i: positions * torch.tensor([g[0][0], g[1][0]]) + torch.tensor([g[0][1], g[1][1]])
                        for i, g in geo.items()}

    def size(self, i: int) -> tuple[int, int]:
        """The window's ``(height, width)`` at node ``i``'s output."""
        return self.sizes[i]

    def inside(self, x: Tensor, i: int, extent) -> Tensor:
        """``x`` (the windows at node ``i``'s output, a tensor the way down owns)
        with the rows and columns outside the map's ``extent`` ``(H, W)`` zeroed,
        in place: on the CPU only the strips outside are written; on a GPU one
        masked fill."""
        corners, size = self.corners[i], self.sizes[i]
        span = torch.tensor(size)
        before = (-corners).clamp_min(0).clamp_max(span)                                 # [R, 2] outside at the top / left
        after = (corners + span - torch.tensor(tuple(extent))).clamp_min(0).clamp_max(span)  # at the bottom / right
        cuts = torch.cat([before, after], 1)
        if x.device.type != "cpu":  # one kernel, not four slices per window
            rows = corners[:, 0, None] + torch.arange(size[0])
            cols = corners[:, 1, None] + torch.arange(size[1])
            keep_r = ((rows >= 0) & (rows < extent[0])).to(x.device)
            keep_c = ((cols >= 0) & (cols < extent[1])).to(x.device)
            return x.masked_fill_(~(keep_r[:, None, :, None] & keep_c[:, None, None, :]), 0) if bool(cuts.any()) else x
        for r in cuts.any(1).nonzero().flatten().tolist():
            top, left, bottom, right = cuts[r].tolist()
            # zero_() on each strip: a plain fill (assigning 0 broadcasts a tensor, many times slower)
            for strip in (x[r, :, :top], x[r, :, size[0] - bottom:], x[r, :, :, :left], x[r, :, :, size[1] - right:]):
                if strip.numel():
                    strip.zero_()
        return x

    def crop(self, t: Tensor, i: int) -> Tensor:
        """The windows ``[R, C, *size]`` of ``t[image[r]]`` (``t``: ``[N, C, H, W]``,
        a record of node ``i``'s output) at node ``i``, zero outside ``t``."""
        corners, size = self.corners[i], self.sizes[i]
        _, _, h, w = t.shape
        pads = [max(0, -int(corners[:, j].min())) for j in range(2)]
        ends = [max(0, int(corners[:, j].max()) + size[j] - (h, w)[j]) for j in range(2)]
        padded = F.pad(t, (pads[1], ends[1], pads[0], ends[0])) if any(pads) or any(ends) else t
        top, left = (corners[:, 0] + pads[0]).tolist(), (corners[:, 1] + pads[1]).tolist()
        return torch.stack([padded[n, :, r:r + size[0], c:c + size[1]]
                            for n, r, c in zip(self.image.tolist(), top, left)])
