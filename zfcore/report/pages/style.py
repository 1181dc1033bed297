"""The page of ``zfcore analyze style``: texture syntheses from ever more
layers (Gatys et al. 2015, Fig. 2), style transfers, the loss curves, a table
per image, and the claims that the Gram matrices moved towards their targets
and that the style loss fell at least tenfold."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from ...analysis.style import StyleStudy, Synthesis
from ._figures import begin, display_stretched, hide_ticks, save_figure


def _picture(images: Tensor, k: int):
    image = images[min(k, len(images) - 1)]
    return image.permute(1, 2, 0).numpy() if image.shape[0] == 3 else image[0].numpy()


def _describe_layers(s: Synthesis) -> str:
    return ", ".join(s.layers)


def _title(s: Synthesis) -> str:
    return s.label or (f"texture from {_describe_layers(s)}" if s.kind == "texture"
                       else f"style from {_describe_layers(s)}, content {s.content_layer}")


def render(result: "StyleStudy | Synthesis | dict", assets: Path, *, display: Sequence[dict] | None = None) -> dict:
    """Texture synthesis and style transfer as PNGs in ``assets``: each group of
    texture syntheses from the same textures (the textures, the noise start, each
    synthesis; Gatys et al. 2015 Fig. 2), each style transfer (content, style,
    result), the loss curves; a table per image; the claims that the
    syntheses' Gram matrices are closer to their targets than the noise's and
    that the style loss fell at least tenfold. ``display``: per synthesis a dict
    of uint8 images (``outputs``, ``noise``, ``style``, optionally ``content``)
    as ``Subject.deprocess`` gives; without it each image is stretched to 0..255."""
    if isinstance(result, Synthesis) or (isinstance(result, dict) and "syntheses" not in result):
        result = StyleStudy([Synthesis.from_plain(result)])  # one synthesis
    plt, study, assets = begin(result, StyleStudy, assets)
    syntheses = study.syntheses
    if display is not None and len(display) != len(syntheses):
        raise ValueError(f"render: display must hold one dict per synthesis ({len(syntheses)}; got {len(display)})")
    shown = []
    for i, s in enumerate(syntheses):
        given = dict(display[i]) if display is not None else {}
        pictures = {"outputs": s.outputs, "noise": s.noise, "style": s.style_images, "content": s.content_images}
        shown.append({k: given[k] if k in given else (display_stretched(v.float()) if v is not None else None)
                      for k, v in pictures.items()})
    figures = []

    # texture syntheses, grouped by their textures (one column per synthesis)
    groups: list[list[int]] = []
    for i, s in enumerate(syntheses):
        if s.kind != "texture":
            continue
        for group in groups:
            t = syntheses[group[0]]
            if t.style_images.shape == s.style_images.shape and torch.equal(t.style_images, s.style_images) \
                    and t.seed == s.seed:
                group.append(i)
                break
        else:
            groups.append([i])
    for g, group in enumerate(groups):
        first = syntheses[group[0]]
        nrows, cols = min(6, len(first.outputs)), 2 + len(group)
        fig, axes = plt.subplots(nrows, cols, figsize=(2.2 * cols, 2.3 * nrows), squeeze=False)
        for k in range(nrows):
            row = axes[k]
            row[0].imshow(_picture(shown[group[0]]["style"], k))
            row[0].set_title(f"texture {k} ({first.style_images.shape[-1]} px)", fontsize=8)
            row[1].imshow(_picture(shown[group[0]]["noise"], k))
            row[1].set_title("noise start", fontsize=8)
            for c, i in enumerate(group):
                row[2 + c].imshow(_picture(shown[i]["outputs"], k))
                row[2 + c].set_title(_title(syntheses[i]), fontsize=7)
            for ax in row:
                hide_ticks(ax)
        save_figure(fig, assets, f"style_texture_{g}.png",
                    "Texture synthesis (Gatys et al. 2015): from the noise start, images whose Gram matrices match "
                    f"the texture's at the named layers ({first.optimizer}, {first.steps} steps; the synthesis is "
                    f"{first.outputs.shape[-1]} px). Columns from more layers: in the paper's Fig. 2 they reproduce "
                    "ever larger structures. Pixel noise the Gram matrices are blind to (patterns the first layer "
                    "barely responds to) is not removed by the optimisation.", figures)
    for i, s in enumerate(syntheses):
        if s.kind != "transfer":
            continue
        nrows = min(6, len(s.outputs))
        fig, axes = plt.subplots(nrows, 3, figsize=(6.6, 2.3 * nrows), squeeze=False)
        for k in range(nrows):
            row = axes[k]
            for ax, key, title in zip(row, ("content", "style", "outputs"), ("content", "style", "result")):
                ax.imshow(_picture(shown[i][key], k))
                ax.set_title(f"{title} {k}", fontsize=8)
                hide_ticks(ax)
        save_figure(fig, assets, f"style_transfer_{i}.png",
                    f"Style transfer (Gatys et al. 2016): {_title(s)}; content weight {s.content_weight:g}, style "
                    f"weight {s.style_weight:g}, start: {s.init}, {s.optimizer}, {s.steps} steps.", figures)
    if syntheses:
        cols = min(4, len(syntheses))
        nrows = math.ceil(len(syntheses) / cols)
        fig, axes = plt.subplots(nrows, cols, figsize=(3.4 * cols, 2.6 * nrows), squeeze=False)
        for ax in axes.flat[len(syntheses):]:
            ax.axis("off")
        for ax, s in zip(axes.flat, syntheses):
            positive = s.style_curve.where(s.style_curve > 0, torch.tensor(float("nan")))  # log axes skip zeros
            lines = [ax.semilogy(positive[:, k].numpy(), linewidth=1, color=f"C{k % 10}", label=f"style {k}")[0]
                     for k in range(positive.shape[1])]
            ax.set_ylabel("style loss", fontsize=7)
            if s.content_curve is not None:
                twin = ax.twinx()
                positive = s.content_curve.where(s.content_curve > 0, torch.tensor(float("nan")))
                lines += [twin.semilogy(positive[:, k].numpy(), linewidth=1, linestyle="--", color=f"C{k % 10}",
                                        label=f"content {k}")[0] for k in range(positive.shape[1])]
                twin.set_ylabel("content loss (dashed)", fontsize=7)
                twin.tick_params(labelsize=6)
            ax.set_title(_title(s), fontsize=7)
            ax.set_xlabel("evaluation of the objective", fontsize=7)
            ax.tick_params(labelsize=6)
            if len(lines) <= 8:
                ax.legend(handles=lines, fontsize=6)
        save_figure(fig, assets, "style_losses.png",
                    "Style loss (solid) and, for style transfer, content loss (dashed, right axis; 0 at a content "
                    "start) of each image at each evaluation of the objective (log scales).", figures)
    rows, claims = [], []
    for s in syntheses:
        for k in range(len(s.outputs)):
            start, final = float(s.start_style_loss[k]), float(s.style_loss[k])
            rows.append([_title(s), k, s.optimizer, s.steps, f"{start:.3g}", f"{final:.3g}",
                         f"{start / final:.3g}" if final > 0 else "inf",
                         f"{float(s.content_loss[k]):.3g}" if s.content_loss is not None else "",
                         f"{float(s.noise_gram_distance[k].mean()):.3g}", f"{float(s.gram_distance[k].mean()):.3g}"])
        closer = s.gram_distance < s.noise_gram_distance
        what = "texture's" if s.kind == "texture" else "style image's"
        claims.append({"claim": f"{_title(s)}: the result's Gram matrices are closer to the {what} than the "
                                "noise's were",
                       "holds": bool(closer.all()),
                       "detail": "relative Gram distance, mean over images, per layer: " + "; ".join(
                           f"{name} {float(s.noise_gram_distance[:, l].mean()):.3g} -> "
                           f"{float(s.gram_distance[:, l].mean()):.3g}" for l, name in enumerate(s.layers))
                                 + f"; closer in {int(closer.sum())} of {closer.numel()} (image, layer) pairs"})
        ratio = s.start_style_loss / s.style_loss.clamp_min(1e-30)
        claims.append({"claim": f"{_title(s)}: the style loss falls at least tenfold from the start "
                                f"({'noise' if s.init == 'noise' else 'the content image'})",
                       "holds": bool((ratio >= 10).all()),
                       "detail": "start / final style loss per image: "
                                 + ", ".join(f"{float(r):.3g}" for r in ratio)})
    return {"title": "Texture synthesis and style transfer (Gatys et al.)",
            "intro": "A texture is summarised by the Gram matrices of a layer's feature maps (the correlations "
                     "between maps, the layout summed away). Texture synthesis starts from noise and changes the "
                     "pixels until those matrices match a texture's at several layers; style transfer matches one "
                     "image's Gram matrices and another's features at one layer. Gram matrices are divided by "
                     "maps x units, so the loss per layer is the papers' E_l.",
            "figures": figures,
            "tables": [{"caption": "per image: style loss at the start and at the end, content loss at the end, "
                                   "relative Gram distance to the target (mean over layers) of the noise and of "
                                   "the result",
                        "header": ["synthesis", "image", "optimizer", "steps", "style loss, start",
                                   "style loss, end", "start / end", "content loss", "Gram distance, noise",
                                   "Gram distance, result"],
                        "rows": rows}],
            "claims": claims}
