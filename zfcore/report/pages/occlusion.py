"""The page of ``zfcore analyze occlusion`` (Fig. 7): per image the image with
its box, the chosen map's deconvnet projection, the map's total activation,
the true-class probability and the top class against the square's position; a
table per image and the claim checked."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from torch import Tensor

from ...analysis.occlusion import Occlusion, object_share
from ._figures import begin, save_figure


def render(result: "Occlusion | dict", assets: Path, *, images: Tensor | None = None,
           boxes: Tensor | None = None, classes: Sequence[str] | None = None,
           projections: Tensor | None = None) -> dict:
    """Fig. 7 as PNGs in ``assets``: per image (at most 8) the image with its
    box, the chosen map's deconvnet projection (``projections``: uint8
    ``[N, 3, H, W]`` as ``zfcore.analysis.result.display_signed`` gives, Fig. 7 c), the
    map's total activation and the true-class probability against the square's
    position, and the most probable class where it changes; a table of the
    unoccluded and worst-case numbers; with ``boxes``, the claim that covering
    the object costs more probability than covering background."""
    plt, result, assets = begin(result, Occlusion, assets)
    names = [str(c) for c in classes] if classes is not None else None

    def name(label: int) -> str:
        return names[label] if names is not None and 0 <= label < len(names) else str(label)

    n = min(8, len(result.labels))
    figures = []
    if n:
        cols = 3 + (images is not None) + (projections is not None)
        fig, axes = plt.subplots(n, cols, figsize=(2.6 * cols, 2.4 * n), squeeze=False)
        for k in range(n):
            row = axes[k]
            c = 0
            if images is not None:
                row[0].imshow(images[k].permute(1, 2, 0).numpy())
                if boxes is not None:
                    x0, y0, x1, y1 = (float(v) for v in boxes[k])
                    row[0].add_patch(plt.Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False,
                                                   edgecolor="yellow", linewidth=1.2))
                row[0].set_title(f"image {k}", fontsize=8)
                c = 1
            if projections is not None:
                row[c].imshow(projections[k].permute(1, 2, 0).numpy())
                row[c].set_title(f"{result.layer} map {int(result.channel[k])}: projection", fontsize=8)
                c += 1
            a = row[c].imshow(result.activation[k].numpy(), cmap="viridis")
            row[c].set_title(f"{result.layer} map {int(result.channel[k])}: total", fontsize=8)
            fig.colorbar(a, ax=row[c], fraction=0.046)
            p = row[c + 1].imshow(result.true_prob[k].numpy(), cmap="magma", vmin=0, vmax=1)
            row[c + 1].set_title("p(true class)", fontsize=8)
            fig.colorbar(p, ax=row[c + 1], fraction=0.046)
            row[c + 2].imshow((result.top_class[k] == result.labels[k]).numpy(), cmap="RdYlGn", vmin=0, vmax=1)
            row[c + 2].set_title("top class = true class (green)", fontsize=8)
            for ax in row:
                ax.set_xticks([])
                ax.set_yticks([])
        save_figure(fig, assets, "occlusion_maps.png",
                    f"Grey squares of {result.patch_size} px, stride {result.stride}: per position "
                    f"the strongest {result.layer} map's total activation, the true-class "
                    f"probability and whether the true class stays on top (paper Fig. 7 b, d, e)"
                    + (f"; beside the image, that map's deconvnet projection (Fig. 7 c: grey is "
                       f"0, each scaled by its own peak)." if projections is not None else "."), figures)
    rows = []
    for k in range(len(result.labels)):
        rows.append([k, name(int(result.labels[k])), int(result.channel[k]), round(float(result.base_prob[k]), 3),
                     round(float(result.true_prob[k].min()), 3), name(int(result.base_class[k]))])
    claims = []
    if boxes is not None and len(result.labels):
        on, off = object_share(result, boxes)
        both = ~(on.isnan() | off.isnan())
        if both.any():
            mon, moff = float(on[both].mean()), float(off[both].mean())
            share = float((on[both] > off[both]).double().mean())
            claims.append({"claim": "Occluding the object lowers the true-class probability more than occluding "
                                    "background (paper section 4.2)",
                           "holds": mon > moff and share > 0.5,
                           "detail": f"mean drop {mon:.3f} over squares covering the object's centre, {moff:.3f} "
                                     f"over squares off its box; object > background in {share:.0%} of "
                                     f"{int(both.sum())} images"})
    return {"title": "Occlusion sensitivity (Fig. 7)",
            "intro": "Each image is covered by a grey square at every grid position; the model's response is "
                     "recorded per position. For a plain chain of layers, exact incremental inference: each layer "
                     "recomputes only the window the square reaches; any other model sees each occluded image "
                     "whole." + ("" if boxes is not None else " The images have no object boxes, so the claim "
                                 "about occluding the object is not checked."),
            "figures": figures,
            "tables": [{"caption": "per image", "header": ["image", "true class", "map", "p(true), unoccluded",
                                                         "p(true), lowest", "top class, unoccluded"],
                        "rows": rows}],
            "claims": claims}
