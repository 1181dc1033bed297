"""The page of ``zfcore analyze inversion``: originals beside their
reconstructions from each layer's features, the errors per layer, the
objective's curves, and the claim that deeper layers keep less pixel detail."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from torch import Tensor

from ...analysis.inversion import Inversion, depth_claim
from ._figures import begin, display_stretched, hide_ticks, save_figure


def render(result: "Inversion | dict", assets: Path, *, images: Tensor | None = None,
           reconstructions: Tensor | None = None, classes: Sequence[str] | None = None,
           labels: Tensor | None = None) -> dict:
    """A grid of originals (rows) by layers (columns), the errors per layer, a
    table and the claim that deeper layers keep less pixel detail. ``images``
    (uint8 ``[N, 3, H, W]``) and ``reconstructions`` (uint8 ``[L, N, 3, H, W]``,
    e.g. through ``Subject.deprocess``) are what is shown; without them each
    image is linearly rescaled from its own min..max to 0..255."""
    plt, result, assets = begin(result, Inversion, assets)
    n_layers, n = result.reconstructions.shape[:2]
    shown_originals = images if images is not None else display_stretched(result.originals)
    shown = reconstructions if reconstructions is not None else display_stretched(result.reconstructions)
    figures = []
    rows = min(n, 8)
    if rows and n_layers:
        fig, axes = plt.subplots(rows, n_layers + 1, figsize=(1.6 * (n_layers + 1), 1.7 * rows), squeeze=False)
        for k in range(rows):
            axes[k, 0].imshow(shown_originals[k].permute(1, 2, 0).numpy())
            title = "original"
            if classes is not None and labels is not None:
                title = str(classes[int(labels[k])])
            axes[k, 0].set_title(title, fontsize=8)
            for l in range(n_layers):
                axes[k, l + 1].imshow(shown[l, k].permute(1, 2, 0).numpy())
                axes[k, l + 1].set_title(f"{result.layers[l]} ({float(result.pixel_error[l, k]):.2f})", fontsize=8)
        hide_ticks(axes)
        save_figure(fig, assets, "inversion_grid.png",
                    f"Each original (left) reconstructed from its features at each layer, from noise by "
                    f"{result.steps} Adam steps with the alpha-norm (alpha={result.alpha:g}) and TV "
                    f"(beta={result.tv_beta:g}) priors; in brackets the pixel error ||x - x0|| / ||x0||."
                    + ("" if reconstructions is not None else
                       " Each image is rescaled from its own min..max for display."), figures)
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
        depth = list(range(n_layers))
        for ax, values, name in ((axes[0], result.feature_error, "feature error ||phi(x)-phi0|| / ||phi0||"),
                                 (axes[1], result.pixel_error, "pixel error ||x - x0|| / ||x0||")):
            for k in range(n):
                ax.plot(depth, values[:, k].numpy(), color="0.75", linewidth=0.8)
            ax.plot(depth, values.mean(1).numpy(), "o-", color="C0", label="mean")
            ax.set_xticks(depth)
            ax.set_xticklabels(result.layers, rotation=45, fontsize=8)
            ax.set_title(name, fontsize=9)
            ax.legend(fontsize=8)
        save_figure(fig, assets, "inversion_errors.png",
                    "Per layer, the final reconstruction's errors (grey: each image; blue: mean).", figures)
        fig, ax = plt.subplots(figsize=(5, 3.2))
        for l in range(n_layers):
            ax.plot(result.curve[l].numpy(), label=result.layers[l])
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("objective (mean over images)")
        ax.legend(fontsize=8)
        save_figure(fig, assets, "inversion_curve.png", "The objective during each layer's optimisation.", figures)
    table = [[result.layers[l], round(float(result.feature_error[l].mean()), 4),
              round(float(result.pixel_error[l].mean()), 4), round(float(result.curve[l, -1]), 4)]
             for l in range(n_layers)]
    claims = [depth_claim(result.layers, result.pixel_error)] if n_layers >= 2 and n else []
    return {"title": "Inversion: images from a layer's features (Mahendran & Vedaldi)",
            "intro": "Each original's features at a layer are inverted: starting from noise, an image is optimised "
                     "until its features match, under priors that keep it natural (an alpha-norm bound and total "
                     "variation). What survives in the reconstruction is what the layer keeps of the image; what "
                     "changes freely is what it is invariant to.",
            "figures": figures,
            "tables": [{"caption": f"per layer (mean over {n} images; B = {result.scale:.4g}, "
                                   f"alpha weight {result.alpha_weight:g}, TV weight {result.tv_weight:g})",
                        "header": ["layer", "feature error", "pixel error", "final objective"], "rows": table}],
            "claims": claims}
