"""The page of ``zfcore analyze deepdream``: originals beside their dreams,
the objective over the octaves, the activation norms before and after, and the
claim that the layer's activation norm grows."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from torch import Tensor

from ...analysis.deepdream import DeepDream
from ._figures import begin, display_stretched, hide_ticks, save_figure


def render(result: "DeepDream | dict", assets: Path, *, images: Tensor | None = None, dreams: Tensor | None = None,
           classes: Sequence[str] | None = None, labels: Tensor | None = None) -> dict:
    """Originals beside their dreams, the norms in a table, and the claim that
    the layer's activation norm grows. ``images`` and ``dreams`` (uint8
    ``[N, 3, H, W]``, e.g. through ``Subject.deprocess``) are what is shown;
    without them each image is linearly rescaled from its own min..max."""
    plt, result, assets = begin(result, DeepDream, assets)
    n = len(result.norm_before)
    shown_originals = images if images is not None else display_stretched(result.originals)
    shown_dreams = dreams if dreams is not None else display_stretched(result.dreams)
    figures = []
    if n:
        per_row = 4
        shown = min(n, 16)
        rows = -(-shown // per_row)
        fig, axes = plt.subplots(rows, 2 * per_row, squeeze=False, figsize=(1.6 * 2 * per_row, 1.75 * rows))
        for k in range(shown):
            a, b = axes[k // per_row, 2 * (k % per_row)], axes[k // per_row, 2 * (k % per_row) + 1]
            a.imshow(shown_originals[k].permute(1, 2, 0).numpy())
            b.imshow(shown_dreams[k].permute(1, 2, 0).numpy())
            title = str(classes[int(labels[k])]) if classes is not None and labels is not None else f"image {k}"
            a.set_title(title, fontsize=8)
            b.set_title(f"dream (x{float(result.norm_after[k] / result.norm_before[k].clamp_min(1e-30)):.1f})",
                        fontsize=8)
        hide_ticks(axes)
        for ax in axes.flat[2 * shown:]:
            ax.set_axis_off()
        sizes = ", ".join(f"{h}x{w}" for h, w in result.sizes)
        save_figure(fig, assets, "deepdream.png",
                    f"Each image beside its dream at {result.layer}: {result.steps} normalised gradient ascent "
                    f"steps on 0.5 ||a||^2 at each octave ({sizes} px), jitter {result.jitter} px; in brackets the "
                    f"growth of the layer's activation norm."
                    + ("" if dreams is not None else " Each image is rescaled from its own min..max for display."),
                    figures)
        fig, ax = plt.subplots(figsize=(5, 3.2))
        ax.plot(result.curve.numpy())
        for o in range(1, result.octaves):
            ax.axvline(o * result.steps - 0.5, color="0.7", linewidth=0.8)
        ax.set_yscale("log")
        ax.set_xlabel("step (octaves separated by grey lines)")
        ax.set_ylabel("0.5 ||a||^2 (mean)")
        save_figure(fig, assets, "deepdream_curve.png", "The objective during the ascent, at each octave's size.",
                    figures)
    ratio = result.norm_after / result.norm_before.clamp_min(1e-30)
    rows = [[k, round(float(result.norm_before[k]), 4), round(float(result.norm_after[k]), 4),
             round(float(ratio[k]), 3)] for k in range(n)]
    claims = []
    if n:
        grows = result.norm_after > result.norm_before
        claims.append({"claim": f"Dreaming amplifies what {result.layer} detects: its activation norm grows for "
                                f"every image",
                       "holds": bool(grows.all()),
                       "detail": f"grows for {int(grows.sum())} of {n} images; norm ratio after/before "
                                 f"{float(ratio.min()):.2f} to {float(ratio.max()):.2f}"})
    return {"title": f"DeepDream at {result.layer}",
            "intro": "Gradient ascent on the image amplifies whatever the layer responds to, from coarse to fine "
                     "scales (octaves) with random shifts (jitter), as in Google's DeepDream.",
            "figures": figures,
            "tables": [{"caption": f"the activation norm ||a|| of {result.layer}, before and after",
                        "header": ["image", "before", "after", "ratio"], "rows": rows}],
            "claims": claims}
