"""What every analysis page's renderer starts and ends a figure with."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor


def begin(result, cls: type, assets) -> tuple:
    """``(pyplot, result, assets)``: matplotlib's pyplot on the file-only Agg
    backend, ``result`` as a ``cls`` (``cls.from_plain`` when it is the saved
    plain form) and the folder ``assets`` as a created ``Path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # class names are untrusted text (folder names): "$...$" must stay text, not mathtext
    matplotlib.rcParams["text.parse_math"] = False

    result = cls.from_plain(result)
    assets = Path(assets)
    assets.mkdir(parents=True, exist_ok=True)
    return plt, result, assets


def save_figure(fig, assets: Path, file: str, caption: str, figures: list[dict], *, dpi: int = 80,
                tight: bool = True) -> None:
    """Write ``fig`` to ``assets/file``, close it, and add ``{"file", "caption"}``
    to the page's ``figures``."""
    import matplotlib.pyplot as plt

    if tight:
        fig.tight_layout()
    fig.savefig(Path(assets) / file, dpi=dpi)
    plt.close(fig)
    figures.append({"file": file, "caption": caption})


def display_images(images: Tensor, image_index: Tensor | None, n: int) -> Tensor:
    """uint8 ``[n, 3, H, W]``: ``images`` as they are, or (with ``image_index``)
    placed at those indices of the set, black elsewhere (a saved result keeps
    only the images its figures draw)."""
    if image_index is None:
        return images
    if image_index.shape != (len(images),) or (len(image_index) and int(image_index.max()) >= n):
        raise ValueError(f"render: image_index must be a LongTensor[{len(images)}] of indices below {n}")
    full = torch.zeros((n, *images.shape[1:]), dtype=images.dtype)
    full[image_index.long()] = images
    return full


def display_stretched(x: Tensor) -> Tensor:
    """Model-space images ``[..., C, H, W]`` for display when no uint8 version
    (``Subject.deprocess``) is given: uint8, each image linearly rescaled from
    its own min..max to 0..255."""
    x = x.detach()
    low = x.amin(dim=(-3, -2, -1), keepdim=True)
    high = x.amax(dim=(-3, -2, -1), keepdim=True)
    return ((x - low) / (high - low).clamp_min(1e-12) * 255).round().clamp(0, 255).to(torch.uint8)


def hide_ticks(*axes) -> None:
    """No ticks on any of ``axes`` (each an axes or an array of them, as
    ``plt.subplots`` gives): the frames of an image grid."""
    for group in axes:
        for ax in getattr(group, "flat", [group]):
            ax.set_xticks([])
            ax.set_yticks([])
