"""Top-k images per feature map over a dataset (the selection of the paper's
Fig. 2), streamed: one forward per batch for every requested layer, a running
top-k per channel on the model's device, O(channels x k) memory whatever the
dataset's size, resumable, and sharded across processes under ``torchrun``.

Order: per feature map, images are ranked by the maximum of the map over its
positions, descending; equal values go to the smaller dataset index. The order
is total, so the result does not depend on the batch size, on the sharding or
on where a run was interrupted. A map's position is its strongest unit, the
first in row-major order on ties. Units of a Linear layer are maps of one
position (0, 0).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor, nn
from tqdm import tqdm

from ._args import check_dataset, check_positive_int, eval_mode
from ._stream import (LayerTap, batches, check_layers, ensure_process_group, load_state, model_device,
                      model_fingerprint, rank_and_world, save_state)
from .result import Result

__all__ = ["TopK", "map_maxima", "merge_top_k", "rank_and_world", "top_k"]

_STATE_VERSION = 1


@dataclass
class TopK(Result):
    """One layer's top-k: ``values[C, k]`` (descending), ``images[C, k]``
    (dataset indices), ``positions[C, k, 2]`` (h, w of the strongest unit).
    ``k`` here is ``min(k, len(dataset))``."""

    layer: str
    values: Tensor
    images: Tensor
    positions: Tensor

    @property
    def channels(self) -> int:
        return self.values.shape[0]

    def to(self, device) -> "TopK":
        return TopK(self.layer, self.values.to(device), self.images.to(device), self.positions.to(device))

    def select(self, rows: Tensor) -> "TopK":
        """The rows ``rows`` (map numbers, or a rank's share of them) only."""
        return TopK(self.layer, self.values[rows], self.images[rows], self.positions[rows])


def map_maxima(activations: Tensor) -> tuple[Tensor, Tensor]:
    """Per image and channel, the map's maximum and its first row-major position.

    Args:
        activations: ``[B, C, H, W]`` or ``[B, F]``.

    Returns:
        ``values[B, C]``, ``positions[B, C, 2]`` (int64 h, w).
    """
    if activations.dim() == 2:
        activations = activations[:, :, None, None]
    if activations.dim() != 4:
        raise ValueError(f"top_k: a layer's output must be [B, C, H, W] or [B, F] (got {list(activations.shape)})")
    b, c, h, w = activations.shape
    flat = activations.reshape(b, c, h * w)
    values, where = flat.max(dim=2)  # the first maximum on ties (NaN counts as the maximum)
    return values, torch.stack((where // w, where % w), dim=-1)


def candidate_maxima(activations: Tensor, floor: Tensor | None) -> tuple[Tensor, Tensor]:
    """``map_maxima`` for a running top-k whose k-th value per channel is
    ``floor[C]`` (None while fewer than k are held): every maximum, but the
    position only where the map can still enter the top-k (value >= floor, or
    NaN, which sorts first); other positions are (0, 0) and are never kept.
    The maxima are one fast reduction (amax); the position search (max with
    indices, several times slower) runs on the few candidate maps only."""
    if floor is None:
        return map_maxima(activations)
    if activations.dim() == 2:
        activations = activations[:, :, None, None]
    if activations.dim() != 4:
        raise ValueError(f"top_k: a layer's output must be [B, C, H, W] or [B, F] (got {list(activations.shape)})")
    b, c, h, w = activations.shape
    flat = activations.reshape(b, c, h * w)
    values = flat.amax(dim=2)
    positions = torch.zeros(b, c, 2, dtype=torch.long, device=values.device)
    rows, cols = ((values >= floor[None]) | values.isnan()).nonzero(as_tuple=True)
    if len(rows):
        where = flat[rows, cols].max(dim=1).indices  # the first maximum on ties, as map_maxima
        positions[rows, cols] = torch.stack((where // w, where % w), dim=-1)
    return values, positions


def merge_top_k(k: int, values: Tensor, images: Tensor, positions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Top-``k`` per row of candidates ``values[C, M]`` with dataset indices
    ``images[C, M]``: value descending, then index ascending."""
    by_index = torch.argsort(images, dim=1, stable=True)
    values, images = values.gather(1, by_index), images.gather(1, by_index)
    positions = positions.gather(1, by_index[..., None].expand(-1, -1, 2))
    order = torch.argsort(values, dim=1, descending=True, stable=True)[:, :k]
    return values.gather(1, order), images.gather(1, order), positions.gather(1, order[..., None].expand(-1, -1, 2))


class _Running:
    """A running top-k of one layer."""

    def __init__(self, k: int):
        self.k = k
        self.values = self.images = self.positions = None

    def add(self, values: Tensor, positions: Tensor, indices: Tensor) -> None:
        """Candidates of one batch; ``indices`` ascend and exceed every index held
        (the stream runs in dataset order), so the candidates are in index order
        and one stable sort by value gives the (value desc, index asc) order."""
        values = values.t()                                     # [C, B]
        images = indices.to(values.device)[None].expand_as(values)
        positions = positions.transpose(0, 1)                    # [C, B, 2]
        if self.values is not None:
            values = torch.cat((self.values, values), 1)
            images = torch.cat((self.images, images), 1)
            positions = torch.cat((self.positions, positions), 1)
        order = torch.argsort(values, dim=1, descending=True, stable=True)[:, :self.k]
        self.values, self.images = values.gather(1, order), images.gather(1, order)
        self.positions = positions.gather(1, order[..., None].expand(-1, -1, 2))

    def floor(self) -> Tensor | None:
        """The k-th value held per channel, once k are held."""
        return None if self.values is None or self.values.shape[1] < self.k else self.values[:, -1]

    def state(self) -> dict:
        return {"values": self.values.cpu(), "images": self.images.cpu(), "positions": self.positions.cpu()}

    def load(self, state: dict, device) -> None:
        self.values, self.images, self.positions = (state[n].to(device) for n in ("values", "images", "positions"))


def _gather_merge(running: _Running) -> None:
    """Merge every rank's top-k into every rank's (all_gather): the one-process result."""
    world = dist.get_world_size()
    # gloo and nccl gather tensors of equal shapes; ranks with fewer images than k pad with -inf / -1
    k = running.k
    c = running.values.shape[0]
    pad = k - running.values.shape[1]
    values = torch.cat((running.values, running.values.new_full((c, pad), float("-inf"))), 1)
    images = torch.cat((running.images, running.images.new_full((c, pad), -1)), 1)
    positions = torch.cat((running.positions, running.positions.new_zeros((c, pad, 2))), 1)
    gathered = []
    for t in (values, images, positions):
        parts = [torch.empty_like(t) for _ in range(world)]
        dist.all_gather(parts, t.contiguous())
        gathered.append(torch.cat(parts, 1))
    values, images, positions = gathered
    # padding sorts last: -inf with index -1 would win ties against real -inf, so rank it by a large index
    images = torch.where(images < 0, torch.iinfo(torch.int64).max, images)
    values, images, positions = merge_top_k(k, values, images, positions)
    keep = int((images != torch.iinfo(torch.int64).max).sum(1).min())
    running.values, running.images, running.positions = values[:, :keep], images[:, :keep], positions[:, :keep]


def top_k(model: nn.Module, dataset, layers: Sequence[str] | str, k: int = 9, batch_size: int = 64, *,
          state_file: str | os.PathLike | None = None, save_every: int = 20, resume: bool = False,
          num_workers: int = 0, progress: bool = True, records=None) -> dict[str, TopK]:
    """The ``k`` images of ``dataset`` whose feature map has the largest maximum,
    per feature map of every layer in ``layers``.

    Args:
        model: the network (run in eval mode, on its parameters' device).
        dataset: a map-style Dataset of ``(image, label)``, images already in the
            model's input space.
        layers: ``model.named_modules()`` names.
        k: images kept per map.
        batch_size: images per forward.
        state_file: where the running top-k is saved, atomically, every
            ``save_every`` batches (under torchrun each rank adds ``.rank<r>``).
        resume: continue from ``state_file`` (the result is identical to an
            uninterrupted run); without it an existing state file is replaced.
        num_workers: DataLoader workers.
        progress: a tqdm bar.
        records: a ``ForwardRecords`` (``zfcore.analysis.projections``): the pass
            then runs on its deconvnet's forward (the captured graph) and keeps
            the records the way down needs for the images the top-k holds, so
            that ``top_k_projections(records=records)`` runs no second forward.
            The maps are then the engine's: those of the model's forward up to
            the rounding of ops the engine computes its own way
            (LocalResponseNorm), and the very activations the projections start
            from.

    Returns:
        ``{layer: TopK}``.

    Example:
        >>> found = top_k(model, val, ["conv1", "conv5"], k=9)
        >>> found["conv5"].images[3]        # the 9 images that excite conv5 map 3 most
    """
    layers = check_layers(model, layers, "top_k")
    for name, value in (("k", k), ("batch_size", batch_size), ("save_every", save_every)):
        check_positive_int(value, name, "top_k")
    n = check_dataset(dataset, "top_k")
    if resume and state_file is None:
        raise ValueError("top_k: resume=True needs a state_file")
    ensure_process_group()
    rank, world = rank_and_world()
    shard = list(range(rank, n, world))
    device = model_device(model)

    path = None
    if state_file is not None:
        path = Path(state_file)
        if world > 1:
            path = path.with_name(f"{path.name}.rank{rank}")
    fingerprint = None if path is None else {"version": _STATE_VERSION, "layers": layers, "k": k, "dataset": n,
                                             "rank": rank, "world": world, "model": model_fingerprint(model)}
    if fingerprint is not None and records is not None:  # the engine's maps: not to be mixed with the module's
        fingerprint["forward"] = "deconvnet"
    running = {name: _Running(k) for name in layers}
    done = 0
    if path is not None and resume:
        state = load_state(path, fingerprint, "top_k")
        if state is not None:
            done = int(state["done"])
            for name in layers:
                running[name].load(state["layers"][name], device)

    def checkpoint() -> None:
        if path is not None:
            save_state({"fingerprint": fingerprint, "done": done,
                        "layers": {name: running[name].state() for name in layers}}, path)

    bar = tqdm(total=len(shard), initial=done, desc="top-k", unit="img", disable=not progress or rank != 0,
               leave=False)
    try:
        # Maxima taken in the hooks, positions only for maps that can still enter the top-k.
        reducers = {name: (lambda out, r=running[name]: candidate_maxima(out, r.floor())) for name in layers}
        tapped = LayerTap(model, layers, reduce=reducers) if records is None else records.tap(layers, reducers)
        with eval_mode(model), tapped as tap:
            for i, (images, _labels, indices) in enumerate(batches(dataset, shard[done:], batch_size, num_workers)):
                outputs = tap(images.to(device))
                for name in layers:
                    values, positions = outputs[name]
                    running[name].add(values, positions, indices)
                if records is not None:
                    records.keep(indices, {name: running[name].images for name in layers})
                done += len(indices)
                bar.update(len(indices))
                if (i + 1) % save_every == 0:
                    checkpoint()
        checkpoint()
    finally:
        bar.close()
    if world > 1:
        for name in layers:
            if running[name].values is None:  # a rank with an empty shard
                raise ValueError(f"top_k: rank {rank} got no images ({n} images for {world} processes)")
            _gather_merge(running[name])
    return {name: TopK(name, running[name].values.cpu(), running[name].images.cpu(), running[name].positions.cpu())
            for name in layers}
