"""Receptive-field windows for the deconvnet's way down.

A single unit's projection is nonzero only inside its receptive field, so the
way down from units of the conv stack runs on windows: at each layer the part
of the map that can be nonzero. Going down through a conv or a pooling of
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

from .. import geometry

Rule = tuple[tuple[int, int], tuple[int, int], tuple[int, int], tuple[int, int]]  # kernel, stride, padding, dilation


def window_sizes(rules: list[Rule | None], top: int) -> dict[int, tuple[int, int]]:
    """The window size at the output of each step ``0..top`` (key -1: the input)
    below one unit of step ``top``'s output; ``rules[i]`` is step i's window rule
    (None for a pointwise step)."""
    sizes, size = {}, (1, 1)
    for i in range(top, -1, -1):
        sizes[i] = size
        if rules[i] is not None:
            k, s, _, d = rules[i]
            size = tuple((size[j] - 1) * s[j] + geometry.extent(k[j], d[j]) for j in range(2))
    sizes[-1] = size
    return sizes


class Windows:
    """The windows of ``R`` units of one layer (step ``top``) at every step below.

    Args:
        rules: per step of the walk, its window rule or None (pointwise).
        top: the units' step.
        corners: ``LongTensor[R, 2]``, each unit's ``(h, w)``.
        image: ``LongTensor[R]``, the row of each unit's image in the forward's records.
    """

    def __init__(self, rules: list[Rule | None], top: int, corners: Tensor, image: Tensor):
        self.image = image
        self.sizes = window_sizes(rules, top)
        self.corners = {}
        for i in range(top, -1, -1):
            self.corners[i] = corners
            if rules[i] is not None:
                _, s, p, _ = rules[i]
                corners = corners * torch.tensor(s) - torch.tensor(p)
        self.corners[-1] = corners

    def size(self, i: int) -> tuple[int, int]:
        """The window's ``(height, width)`` at step ``i``'s output (-1: the input)."""
        return self.sizes[i]

    def inside(self, x: Tensor, i: int, extent) -> Tensor:
        """``x`` (the windows at step ``i``'s output, a tensor the way down owns)
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
            x[r, :, :top] = 0
            x[r, :, size[0] - bottom:] = 0
            x[r, :, :, :left] = 0
            x[r, :, :, size[1] - right:] = 0
        return x

    def crop(self, t: Tensor, i: int) -> Tensor:
        """The windows ``[R, C, *size]`` of ``t[image[r]]`` (``t``: ``[N, C, H, W]``,
        a record of step ``i``'s output) at step ``i``, zero outside ``t``."""
        corners, size = self.corners[i], self.sizes[i]
        _, _, h, w = t.shape
        pads = [max(0, -int(corners[:, j].min())) for j in range(2)]
        ends = [max(0, int(corners[:, j].max()) + size[j] - (h, w)[j]) for j in range(2)]
        padded = F.pad(t, (pads[1], ends[1], pads[0], ends[0])) if any(pads) or any(ends) else t
        top, left = (corners[:, 0] + pads[0]).tolist(), (corners[:, 1] + pads[1]).tolist()
        return torch.stack([padded[n, :, r:r + size[0], c:c + size[1]]
                            for n, r, c in zip(self.image.tolist(), top, left)])
