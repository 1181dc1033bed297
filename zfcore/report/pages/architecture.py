"""The page of ``zfcore analyze architecture`` (Fig. 6): the two first
layers' filters side by side, their band energy and power spectra, a table of
the measures and the paper's claims checked on them."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import Tensor

from ...analysis.architecture import Architecture
from ...analysis.result import display_signed
from ._figures import begin, save_figure

_LABELS = {"alexnet": "AlexNet-style conv1", "zfnet": "ZFNet conv1"}


def _tiles(weights: Tensor, cell: int = 28, pad: int = 2):
    """A layer's RGB filters as one uint8 ``[H, W, 3]`` grid, each scaled about grey by its own peak."""
    import numpy as np

    shown = display_signed(weights[:, :3] if weights.shape[1] >= 3 else weights[:, :1].expand(-1, 3, -1, -1))
    shown = shown.numpy()
    o, _, kh, kw = shown.shape
    factor = max(1, math.ceil(cell / max(kh, kw)))
    ch, cw = kh * factor, kw * factor
    cols = math.ceil(math.sqrt(o))
    rows = math.ceil(o / cols)
    grid = np.full((rows * ch + (rows + 1) * pad, cols * cw + (cols + 1) * pad, 3), 255, dtype=np.uint8)
    for i in range(o):
        r, c = divmod(i, cols)
        tile = shown[i].repeat(factor, -2).repeat(factor, -1).transpose(1, 2, 0)
        grid[pad + r * (ch + pad):pad + r * (ch + pad) + ch, pad + c * (cw + pad):pad + c * (cw + pad) + cw] = tile
    return grid


def _claims(result: Architecture) -> list[dict]:
    a, z = "alexnet", "zfnet"
    la, lz = (f"{_LABELS[v]} ({result.conv1[v]})" for v in (a, z))
    dead = {v: result.dead[v].dead for v in (a, z)}
    freq = result.frequency
    alias, shift = result.aliasing, result.shift

    def dead_text(v: str) -> str:
        d = result.dead[v]
        return (f"{len(d.dead)} of {d.rms.numel()} dead ({len(d.inactive)} never active on {d.images} images, "
                f"{len(d.faint)} with weight RMS below {d.rms_ratio:g} x the median)")

    return [
        {"claim": f"The ZFNet first layer has fewer dead filters than the AlexNet-style one (Fig. 6 b vs c)",
         "holds": len(dead[z]) < len(dead[a]),
         "detail": f"{la}: {dead_text(a)}; {lz}: {dead_text(z)}"},
        {"claim": "The ZFNet first layer covers the mid frequencies better (a larger share of its filter energy "
                  "between 1/8 and 3/8 cycle per pixel)",
         "holds": freq[z].mid_coverage > freq[a].mid_coverage,
         "detail": f"mid-frequency share: {la} {freq[a].mid_coverage:.3f}, {lz} {freq[z].mid_coverage:.3f} "
                   f"(white-noise filters: {freq[z].noise_share('mid'):.3f}); "
                   f"filters mostly low or high frequency: {freq[a].extreme_fraction:.2f} vs "
                   f"{freq[z].extreme_fraction:.2f}"},
        {"claim": "The ZFNet first layer aliases less into layer 2: a smaller share of its rectified response "
                  "lies above the Nyquist frequency of its stride",
         "holds": alias[z].share < alias[a].share,
         "detail": f"alias share: {la} {alias[a].share:.3f} (Nyquist 1/{2 * alias[a].stride}), {lz} "
                   f"{alias[z].share:.3f} (Nyquist 1/{2 * alias[z].stride}), on {alias[z].images} images"},
        {"claim": "Layer 2 of the ZFNet variant is more stable under a one-pixel shift (less aliasing)",
         "holds": shift[z].value < shift[a].value,
         "detail": f"relative change of the per-map means of {shift[z].layer}: {la} {shift[a].value:.4f}, "
                   f"{lz} {shift[z].value:.4f}, on {shift[z].images} images"},
    ]


def render(result: "Architecture | dict", assets: Path) -> dict:
    """Fig. 6's comparison: the two first layers' filters side by side, their
    band energy and mean power spectra, a table of the measures and the paper's
    claims checked on them; PNGs written into ``assets``."""
    from matplotlib.patches import Rectangle

    plt, result, assets = begin(result, Architecture, assets)
    variants = result.variants
    a, z = variants[0], variants[-1]

    grids = [_tiles(result.weights[v]) for v in variants]
    height = max(g.shape[0] for g in grids)
    fig, axes = plt.subplots(1, len(variants), figsize=(4.2 * len(variants), 4.6), dpi=100)
    for ax, v, grid in zip(axes, variants, grids):
        ax.imshow(grid, interpolation="nearest")
        ax.set_ylim(height, 0)
        n_dead = len(result.dead[v].dead)
        ax.set_title(f"{_LABELS.get(v, v)}: {result.conv1[v]}\n{n_dead} dead" + (" (framed in red)" if n_dead else ""),
                     fontsize=9)
        ax.axis("off")
        o = result.weights[v].shape[0]
        cols = math.ceil(math.sqrt(o))
        kh = result.weights[v].shape[-1]
        factor = max(1, math.ceil(28 / kh))
        side = kh * factor
        for i in result.dead[v].dead:
            r, c = divmod(i, cols)
            ax.add_patch(Rectangle((2 + c * (side + 2) - 1.5, 2 + r * (side + 2) - 1.5), side + 2, side + 2,
                                   fill=False, edgecolor="red", linewidth=1.5))
    figures = []
    save_figure(fig, assets, "architecture-filters.png",
                f"First-layer filters of the same network trained with {result.conv1[a]} (left, AlexNet-style) and "
                f"{result.conv1[z]} (right, ZFNet) first layers, like Fig. 6 (b) and (c); each filter scaled about "
                f"grey by its own peak, dead ones (never active or faint) framed in red.", figures, dpi=100)

    n = len(variants)
    fig, axes = plt.subplots(1, 1 + n, figsize=(5.5 + 2.6 * n, 3.8), dpi=100, width_ratios=(2.2,) + (1,) * n)
    left = axes[0]
    first = result.frequency[variants[0]]
    edges = first.edges.numpy()
    centres = (edges[:-1] + edges[1:]) / 2
    width = (edges[1] - edges[0]) / (n + 1)
    for i, v in enumerate(variants):
        f = result.frequency[v]
        left.bar(centres + (i - (n - 1) / 2) * width, f.spectrum.numpy(), width=width,
                 label=f"{_LABELS.get(v, v)} ({result.conv1[v]})", color=f"C{i}")
        left.axvline(0.5 / f.stride, color=f"C{i}", linestyle="--", linewidth=1)
    left.step(edges, torch.cat([first.noise_spectrum, first.noise_spectrum[-1:]]).numpy(), where="post",
              color="black", linewidth=1, label="white noise (i.i.d. taps)")
    mid = first.ranges["mid"]
    left.axvspan(edges[mid[0]], edges[mid[-1] + 1], color="grey", alpha=0.12, label="mid range")
    left.set_xlabel("radial frequency (cycles per input pixel)", fontsize=8)
    left.set_ylabel("share of the layer's filter energy", fontsize=8)
    left.set_xlim(0, 0.5)
    left.legend(fontsize=7)
    left.grid(alpha=0.3)
    for ax, v in zip(axes[1:], variants):
        f = result.frequency[v]
        ax.imshow(f.power.clamp_min(1e-12).log10().numpy(), extent=(-0.5, 0.5, 0.5, -0.5), cmap="magma")
        nyq = 0.5 / f.stride
        ax.add_patch(Rectangle((-nyq, -nyq), 2 * nyq, 2 * nyq, fill=False, edgecolor="cyan", linewidth=1))
        ax.set_title(f"{result.conv1[v]}: log10 power", fontsize=8)
        ax.set_xlabel("fx", fontsize=7)
        ax.set_ylabel("fy", fontsize=7)
        ax.tick_params(labelsize=6)
    save_figure(fig, assets, "architecture-bands.png",
                "Left: the share of each first layer's filter energy per radial frequency band (zero-padded DFT, "
                "summed over filters), the mid range shaded, each stride's Nyquist frequency dashed. Right: the "
                "mean normalized power spectrum of the filters (DC in the centre), the square inside which the "
                "stride samples without aliasing in cyan.", figures, dpi=100)

    rows = []

    def row(name: str, fn, noise="", digits: int = 3):
        values = [fn(v) for v in variants]
        rows.append([name] + [round(float(x), digits) if isinstance(x, float) else x for x in values]
                    + [round(noise, digits) if isinstance(noise, float) else noise])

    row("conv1 (kernel x stride)", lambda v: result.conv1[v])
    row("validation accuracy (top-1)", lambda v: result.val_accuracy[v])
    row("epochs", lambda v: str(result.epochs[v]))
    row("mid-frequency share of filter energy", lambda v: result.frequency[v].mid_coverage, first.noise_share("mid"))
    row("low-frequency share", lambda v: result.frequency[v].range_share("low"), first.noise_share("low"))
    row("high-frequency share", lambda v: result.frequency[v].range_share("high"), first.noise_share("high"))
    row("filters mostly low / high frequency",
        lambda v: f"{len(result.frequency[v].low_filters)} / {len(result.frequency[v].high_filters)} of "
                  f"{result.weights[v].shape[0]}")
    row("filter energy above the stride's Nyquist", lambda v: result.frequency[v].layer_alias,
        " / ".join(f"{result.frequency[v].noise_alias:.3f}" for v in variants))
    row("dead filters (never active / faint)",
        lambda v: f"{len(result.dead[v].dead)} ({len(result.dead[v].inactive)} / {len(result.dead[v].faint)})")
    row("alias share of the rectified response", lambda v: result.aliasing[v].share)
    row("layer-2 shift variance", lambda v: result.shift[v].value, digits=4)
    bands = [[f"{float(lo):.4f}-{float(hi):.4f}"] + [round(float(result.frequency[v].spectrum[b]), 4)
                                                     for v in variants]
             + [round(float(first.noise_spectrum[b]), 4)]
             for b, (lo, hi) in enumerate(zip(first.edges[:-1], first.edges[1:]))]
    header = ["measure"] + [f"{_LABELS.get(v, v)} ({result.conv1[v]})" for v in variants] + ["white noise"]
    tables = [{"caption": f"First-layer measures of the two variants, on {result.dataset} (dead filters: all "
                          f"images; aliasing and shift: the first {result.aliasing[z].images}).",
               "header": header, "rows": rows},
              {"caption": "Share of each first layer's filter energy per radial band (cycles per input pixel; "
                          "the top band includes the corners beyond 0.5).",
               "header": ["band"] + header[1:], "rows": bands}]
    intro = ("The paper's section 4.1 (Fig. 6): visualizing AlexNet's first two layers showed first-layer filters "
             "that are a mix of extremely high- and low-frequency ones with little mid-frequency coverage, dead "
             "filters, and aliasing artifacts in layer 2 from the first layer's stride 4; ZFNet's 7x7 filters with "
             "stride 2 fixed both. Here the same small network is trained twice on the same data with the same "
             "recipe, changing only the first layer, and each observation is measured: the filters' energy per "
             "frequency band (their zero-padded DFT), the filters that never fire or have tiny weights, the share "
             "of the rectified first-layer response above the Nyquist frequency of its stride (what layer 2 "
             "receives aliased) and the change of layer 2's per-map means under a one-pixel shift. The claims are "
             "evaluated on these numbers as measured.")
    return {"title": "Architecture selection: the first layer (Fig. 6)", "intro": intro, "figures": figures,
            "tables": tables, "claims": _claims(result)}
