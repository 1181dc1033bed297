"""The page of ``zfcore analyze gradcam``: Grad-CAM maps overlaid on the
images (with the object's box and the map's maximum where boxes are known),
guided backprop and guided Grad-CAM, the top classes' maps, a table per image
and, with boxes, the pointing-game claims."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from torch import Tensor

from ...analysis.gradcam import GradCam, peaks, upsample
from ...analysis.pointing import pointing_hits
from ._figures import begin, save_figure

MAX_TABLE_ROWS = 64


def _overlay(ax, image, cam, size, title):
    """``image`` (uint8 [3, H, W] or None) under the map upsampled to ``size`` (jet, alpha 0.5)."""
    up = upsample(cam[None], size)[0]
    peak = float(up.max())
    if image is not None:
        ax.imshow(image.permute(1, 2, 0).numpy())
        ax.imshow((up / peak if peak > 0 else up).numpy(), cmap="jet", alpha=0.5, vmin=0, vmax=1)
    else:
        ax.imshow(up.numpy(), cmap="jet")
    ax.set_title(title, fontsize=7)
    ax.set_xticks([])
    ax.set_yticks([])
    return up


def render(result: "GradCam | dict", assets: Path, *, images: Tensor | None = None, boxes: Tensor | None = None,
           classes: Sequence[str] | None = None) -> dict:
    """Grad-CAM pages as PNGs in ``assets``: the maps overlaid on the images
    (``images``: uint8 ``[N, 3, H, W]`` for display; with ``boxes``, the
    object's box in yellow and the map's maximum as a cross), guided backprop
    and guided Grad-CAM rows, the top classes' maps of a few images; a table
    per image; with ``boxes``, the pointing-game claims."""
    plt, result, assets = begin(result, GradCam, assets)
    names = [str(c) for c in classes] if classes is not None else None

    def name(label: int) -> str:
        if label < 0:
            return "?"
        return names[label] if names is not None and label < len(names) else str(label)

    size = tuple(int(v) for v in result.image_size)
    n = len(result.target)
    figures = []
    hits = chance = mass = None
    if boxes is not None and n:
        hits, chance, mass = pointing_hits(result.maps, boxes[:n], size)
        py, px = peaks(result.maps, size)
    shown = min(n, 32)
    if shown:
        cols = min(8, shown)
        rows = -(-shown // cols)
        fig, axes = plt.subplots(rows, cols, figsize=(1.7 * cols, 1.9 * rows), squeeze=False)
        for ax in axes.flat[shown:]:
            ax.axis("off")
        for k in range(shown):
            ax = axes.flat[k]
            up = _overlay(ax, images[k] if images is not None else None, result.maps[k], size,
                          f"{name(int(result.target[k]))} p={float(result.target_prob[k]):.2f}")
            if boxes is not None:
                x0, y0, x1, y1 = (float(v) for v in boxes[k])
                ax.add_patch(plt.Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, edgecolor="yellow",
                                           linewidth=1))
                if float(result.maps[k].max()) > 0:
                    ax.plot(int(px[k]), int(py[k]), marker="x" if hits[k] else "o", color="white",
                            markerfacecolor="none", markersize=6, mew=1.5)
        save_figure(fig, assets, "gradcam_overlays.png",
                    f"Grad-CAM at {result.layer} for the class named above each image, upsampled bilinearly and "
                    f"overlaid (red: strong, each map scaled by its own maximum)"
                    + ("; yellow: the object's box; the map's maximum is marked by a cross inside the box, by a "
                       "circle outside it." if boxes is not None else "."), figures)
    m = len(result.guided)
    if m:
        cols = 4 if images is not None else 3
        fig, axes = plt.subplots(m, cols, figsize=(2.0 * cols, 2.0 * m), squeeze=False)
        for k in range(m):
            row = list(axes[k])
            if images is not None:
                ax = row.pop(0)
                ax.imshow(images[k].permute(1, 2, 0).numpy())
                ax.set_title(f"true: {name(int(result.labels[k]))}", fontsize=7)
            _overlay(row[0], images[k] if images is not None else None, result.maps[k], size,
                     f"Grad-CAM: {name(int(result.target[k]))}")
            row[1].imshow(result.guided_backprop[k].permute(1, 2, 0).numpy())
            row[1].set_title("guided backprop", fontsize=7)
            row[2].imshow(result.guided[k].permute(1, 2, 0).numpy())
            row[2].set_title("guided Grad-CAM", fontsize=7)
            for ax in axes[k]:
                ax.set_xticks([])
                ax.set_yticks([])
        save_figure(fig, assets, "gradcam_guided.png",
                    "Guided backpropagation of the class's logit and guided Grad-CAM (it times the upsampled "
                    "Grad-CAM map): grey is 0, each image scaled by its own largest magnitude (Selvaraju et al. "
                    "Fig. 1).", figures)
    few, k_top = min(n, 3), result.top_classes.shape[1]
    if few and k_top > 1:
        fig, axes = plt.subplots(few, k_top, figsize=(2.0 * k_top, 2.1 * few), squeeze=False)
        for r in range(few):
            for c in range(k_top):
                _overlay(axes[r, c], images[r] if images is not None else None, result.top_maps[r, c], size,
                         f"{name(int(result.top_classes[r, c]))} p={float(result.top_probs[r, c]):.2f}")
        save_figure(fig, assets, "gradcam_classes.png",
                    f"One image per row, the maps of its {k_top} most probable classes: Grad-CAM is "
                    f"class-discriminative, each class's map shows that class's evidence.", figures)
    header = ["image", "true class", "explained class", "p(explained)", "predicted", "p(predicted)"]
    if hits is not None:
        header += ["maximum in box", "map share in box", "box share of image"]
    tables = []
    if hits is not None:
        by_class = []
        for c in result.target.unique().tolist():
            sel = result.target == c
            valid = sel & ~mass.isnan()
            by_class.append([name(int(c)), int(sel.sum()), round(float(hits[sel].double().mean()), 3),
                             round(float(chance[sel].mean()), 3),
                             round(float(mass[valid].mean()), 3) if valid.any() else "-",
                             round(float(result.target_prob[sel].mean()), 3)])
        tables.append({"caption": "per explained class: the pointing game",
                       "header": ["class", "images", "maximum in box", "box share of image (chance)",
                                  "map share in box", "mean p(class)"],
                       "rows": by_class})
    rows = []
    for k in range(min(n, MAX_TABLE_ROWS)):
        row = [int(result.index[k]), name(int(result.labels[k])), name(int(result.target[k])),
               round(float(result.target_prob[k]), 3), name(int(result.predicted[k])),
               round(float(result.predicted_prob[k]), 3)]
        if hits is not None:
            row += ["yes" if bool(hits[k]) else "no", "-" if mass[k].isnan() else round(float(mass[k]), 3),
                    round(float(chance[k]), 3)]
        rows.append(row)
    claims = []
    if hits is not None:
        rate, base = float(hits.double().mean()), float(chance.mean())
        zero = int((result.maps.flatten(1).amax(1) <= 0).sum())
        claims.append({"claim": "Grad-CAM localises the object: the map's maximum falls inside the object's box "
                                "more often than a random point does (the pointing game)",
                       "holds": rate > base,
                       "detail": f"maximum inside the box in {rate:.0%} of {n} images; a uniformly random point "
                                 f"lands in the box {base:.0%} of the time (the boxes' mean share of the image)"
                                 + (f"; {zero} maps are 0 everywhere and count as misses" if zero else "")})
        valid = ~mass.isnan()
        if valid.any():
            share, area = float(mass[valid].mean()), float(chance[valid].mean())
            claims.append({"claim": "Grad-CAM's mass concentrates on the object: the map's share inside the box "
                                    "exceeds the box's share of the image",
                           "holds": share > area,
                           "detail": f"mean map share inside the box {share:.3f} against a mean box area share "
                                     f"{area:.3f} ({int(valid.sum())} non-zero maps)"})
    return {"title": "Grad-CAM and guided Grad-CAM (Selvaraju et al.)",
            "intro": f"Grad-CAM weights each map of {result.layer} by the spatial mean of the gradient of a class's "
                     f"logit with respect to it and keeps the positive part of the weighted sum: where in the "
                     f"image the evidence for that class lies, at the layer's resolution. Guided Grad-CAM "
                     f"multiplies it with guided backpropagation for pixel detail.",
            "figures": figures,
            "tables": tables + [{"caption": "per image" + (f" (the first {MAX_TABLE_ROWS} of {n})"
                                                          if n > MAX_TABLE_ROWS else ""),
                                 "header": header, "rows": rows}],
            "claims": claims}
