"""Layer activations of one image, and the dead-unit check over a dataset
(maps that are zero for every input: the lecture's "dangerous pitfall" of a too
high learning rate)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from tqdm import tqdm

from ._args import LayerTap, check_dataset, check_layers, check_positive_int, eval_mode, model_device
from ._stream import batches, ensure_process_group, rank_and_world
from .result import Result

__all__ = ["Activations", "DeadUnits", "activations", "dead_units"]


@dataclass
class Activations(Result):
    """``maps[layer]``: that layer's output for the image, ``[C, H, W]`` (or ``[F]``)."""

    maps: dict[str, Tensor]


@torch.no_grad()
def activations(model: nn.Module, image: Tensor, layers: Sequence[str] | str) -> Activations:
    """Every requested layer's feature maps for one image (``[C, H, W]``, in the
    model's input space), from one forward."""
    layers = check_layers(model, layers, "activations")
    if not isinstance(image, Tensor) or image.dim() != 3:
        got = list(image.shape) if isinstance(image, Tensor) else type(image).__name__
        raise ValueError(f"activations: image must be a Tensor[C, H, W] (got {got})")
    with eval_mode(model), LayerTap(model, layers) as tap:
        outputs = tap(image[None].float().to(model_device(model)))
    return Activations({name: outputs[name][0].cpu() for name in layers})


@dataclass
class DeadUnits(Result):
    """Per layer and channel: ``zero_fraction[C]`` (share of images on which the
    whole map is zero), ``mean[C]`` (mean activation over images and positions),
    ``dead`` (channels zero on every image)."""

    layer: str
    zero_fraction: Tensor
    mean: Tensor
    images: int

    @property
    def dead(self) -> list[int]:
        return [int(c) for c in torch.nonzero(self.zero_fraction == 1).flatten()]


@torch.no_grad()
def dead_units(model: nn.Module, dataset, layers: Sequence[str] | str, batch_size: int = 64, *,
               num_workers: int = 0, progress: bool = True) -> dict[str, DeadUnits]:
    """Per channel of each layer, how often its map is all zero over ``dataset``
    and its mean activation; ``DeadUnits.dead`` lists the maps zero on every
    image. Use the rectified outputs (``relu*``) for the paper's models.

    Example:
        >>> found = dead_units(model, val, ["relu1", "relu2"])
        >>> found["relu1"].dead           # channels that never fire
    """
    layers = check_layers(model, layers, "dead_units")
    check_positive_int(batch_size, "batch_size", "dead_units")
    n = check_dataset(dataset, "dead_units")
    device = model_device(model)
    ensure_process_group()
    rank, world = rank_and_world()  # under torchrun each rank counts a strided shard; the counts are summed
    zeros: dict[str, Tensor] = {}
    sums: dict[str, Tensor] = {}
    positions: dict[str, int] = {}
    shard = list(range(rank, n, world))
    bar = tqdm(total=len(shard), desc="dead units", unit="img", disable=not progress or rank != 0, leave=False)
    try:
        with eval_mode(model), LayerTap(model, layers) as tap:
            for images, _labels, _indices in batches(dataset, shard, batch_size, num_workers):
                outputs = tap(images.float().to(device))
                for name in layers:
                    out = outputs[name]
                    flat = out.reshape(out.shape[0], out.shape[1], -1).double()
                    z = (flat == 0).all(dim=2).sum(0)
                    s = flat.sum(dim=(0, 2))
                    zeros[name] = zeros[name] + z if name in zeros else z
                    sums[name] = sums[name] + s if name in sums else s
                    positions[name] = flat.shape[2]
                bar.update(len(images))
    finally:
        bar.close()
    if world > 1:
        import torch.distributed as dist

        for name in layers:
            if name not in zeros:
                raise ValueError(f"dead_units: rank {rank} got no images ({n} images for {world} processes)")
            dist.all_reduce(zeros[name])
            dist.all_reduce(sums[name])
    return {name: DeadUnits(name, (zeros[name].double() / n).float().cpu(),
                            (sums[name] / (n * positions[name])).float().cpu(), n) for name in layers}
