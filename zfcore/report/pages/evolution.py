"""The page of ``zfcore analyze evolution`` (Fig. 4): a strip of projections
per layer (maps as rows, snapshot epochs as columns), the filter change and
the final-image agreement against epoch, the tables and the claims checked."""

from __future__ import annotations

import math
from pathlib import Path

from ...analysis.evolution import Evolution
from ...analysis.result import display_signed
from ._figures import begin, save_figure

_CELL = 56  # smallest on-screen side of one projection, in pixels


def _strip_grid(result: Evolution, layer: str):
    """One layer's maps (rows) x epochs (columns) of projections, uint8 ``[H, W, 3]``,
    and the centres of the columns and rows in its pixels."""
    import numpy as np

    shown = display_signed(result.projections[layer]).numpy()   # [E, M, 3, sh, sw], grey = 0
    e, m, _, sh, sw = shown.shape
    factor = max(1, math.ceil(_CELL / max(sh, sw)))
    ch, cw, pad = sh * factor, sw * factor, 2
    grid = np.full((m * ch + (m + 1) * pad, e * cw + (e + 1) * pad, 3), 255, dtype=np.uint8)
    for i in range(e):
        for j in range(m):
            cell = shown[i, j].repeat(factor, -2).repeat(factor, -1).transpose(1, 2, 0)
            top, left = pad + j * (ch + pad), pad + i * (cw + pad)
            grid[top:top + ch, left:left + cw] = cell
    cols = [pad + i * (cw + pad) + cw / 2 for i in range(e)]
    rows = [pad + j * (ch + pad) + ch / 2 for j in range(m)]
    return grid, cols, rows


def _claims(result: Evolution) -> list[dict]:
    """The paper: lower layers converge within a few epochs, upper ones later."""
    if len(result.layers) < 2 or len(result.epochs) < 2:
        return []
    low, high = result.layers[0], result.layers[-1]
    agreement = result.final_agreement
    mean = {name: float(agreement[name][:-1].mean()) for name in result.layers}
    rate = result.change_rate
    last = {name: float(rate[name][-1]) for name in result.layers}
    settled = [result.settling[name] for name in result.layers]
    finite = [math.inf if s is None else s for s in settled]
    shown = ", ".join(f"{name} {mean[name]:.2f}" for name in result.layers)
    return [
        {"claim": f"Lower layers settle earlier (Fig. 4): before the final epoch, more of {low}'s maps than of "
                  f"{high}'s already have their final strongest image",
         "holds": mean[low] > mean[high],
         "detail": f"share of maps whose strongest image is the final one, mean over epochs "
                   f"{', '.join(map(str, result.epochs[:-1]))}: {shown}"},
        {"claim": f"Lower layers' filters settle earlier: over the last interval ({result.epochs[-2]} to "
                  f"{result.epochs[-1]}) {low}'s filters change less, relative to their norm, than {high}'s",
         "holds": last[low] < last[high],
         "detail": "relative filter change per epoch over the last interval: "
                   + ", ".join(f"{name} {last[name]:.4f}" for name in result.layers)},
        {"claim": f"The settling epoch (relative filter change below {result.settle_threshold:g} per epoch from "
                  f"then on) does not decrease with depth",
         "holds": all(a <= b for a, b in zip(finite, finite[1:])),
         "detail": ", ".join(f"{name}: {'not settled' if s is None else f'epoch {s}'}"
                             for name, s in zip(result.layers, settled))},
    ]


def render(result: Evolution | dict, assets: Path) -> dict:
    """Fig. 4 (one strip of projections per map, epochs as columns, one PNG per
    layer), the filter change and the final-image agreement against epoch, the
    tables and the claims; PNGs written into ``assets``."""
    plt, result, assets = begin(result, Evolution, assets)
    figures = []
    for index, layer in enumerate(result.layers, 1):
        grid, cols, rows = _strip_grid(result, layer)
        dpi = 100
        fig = plt.figure(figsize=((grid.shape[1] + 90) / dpi, (grid.shape[0] + 60) / dpi), dpi=dpi)
        ax = fig.add_axes((70 / (grid.shape[1] + 90), 10 / (grid.shape[0] + 60),
                           grid.shape[1] / (grid.shape[1] + 90), grid.shape[0] / (grid.shape[0] + 60)))
        ax.imshow(grid, interpolation="nearest")
        ax.set_xticks(cols, [str(e) for e in result.epochs], fontsize=7)
        ax.xaxis.tick_top()
        ax.set_yticks(rows, [f"map {c}" for c in result.channels[layer]], fontsize=7)
        ax.tick_params(length=0)
        for spine in ax.spines.values():
            spine.set_visible(False)
        ax.set_xlabel("epoch", fontsize=7)
        ax.xaxis.set_label_position("top")
        how = ("strongest at the final epoch" if result.chosen_by[layer] == "final" else "chosen by the caller")
        save_figure(fig, assets, f"evolution-maps-{index}.png",
                    f"{layer}: the strongest activation of each map ({how}; rows) over the {result.dataset_size} "
                    f"images at each snapshot epoch (columns), projected by the {result.mode} over the unit's "
                    f"receptive field; grey = 0, each scaled by its own peak.", figures, dpi=dpi, tight=False)

    rate, agreement = result.change_rate, result.final_agreement
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6), dpi=100)
    for layer in result.layers:
        left.plot(result.epochs[1:], rate[layer][1:].tolist(), marker="o", label=layer)
        right.plot(result.epochs, agreement[layer].tolist(), marker="o", label=layer)
    left.axhline(result.settle_threshold, color="grey", linestyle="--", linewidth=1, label="threshold")
    if len(result.epochs) > 1 and all(bool((rate[n][1:] > 0).all()) for n in result.layers):
        left.set_yscale("log")
    left.set_xlabel("epoch (end of the interval)")
    left.set_ylabel("||W_e - W_prev|| / ||W_prev|| per epoch")
    left.set_title("relative filter change", fontsize=10)
    right.set_xlabel("epoch")
    right.set_ylabel("share of maps")
    right.set_ylim(-0.02, 1.02)
    right.set_title("strongest image = the final epoch's", fontsize=10)
    for ax in (left, right):
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    save_figure(fig, assets, "evolution-change.png",
                "Left: the relative change of each layer's filters between consecutive snapshots, per epoch of the "
                "interval (dashed: the settling threshold). Right: the share of each layer's maps whose strongest "
                "image is already the one of the final epoch.", figures, dpi=100)

    intervals = [f"{p}-{e}" for p, e in zip(result.epochs, result.epochs[1:])]
    change_rows = [[layer] + [round(float(v), 5) for v in result.filter_change[layer][1:]]
                   + [round(float(v), 5) for v in rate[layer][1:]]
                   + ["not settled" if result.settling[layer] is None else str(result.settling[layer])]
                   for layer in result.layers]
    agreement_rows = [[layer] + [round(float(v), 3) for v in agreement[layer]] for layer in result.layers]
    tables = [{"caption": "Relative filter change ||W_e - W_prev||_F / ||W_prev||_F between consecutive snapshots, "
                          f"the same per epoch, and the settling epoch (per-epoch change below "
                          f"{result.settle_threshold:g} from then on).",
               "header": ["layer"] + [f"change {i}" for i in intervals] + [f"per epoch {i}" for i in intervals]
                         + ["settling epoch"],
               "rows": change_rows},
              {"caption": "Share of each layer's maps whose strongest image at the epoch is the one of the final "
                          "epoch.",
               "header": ["layer"] + [f"epoch {e}" for e in result.epochs], "rows": agreement_rows}]
    intro = (f"The paper's Fig. 4: how features evolve through training. At each snapshot epoch "
             f"({', '.join(map(str, result.epochs))}) of the run, each shown map's strongest activation over a "
             f"fixed set of {result.dataset_size} images is found and projected to pixel space. The paper uses "
             f"the training set and a random subset of the maps; here the maps shown are, unless chosen, the "
             f"strongest of each layer at the final epoch. The filter change of a layer is the relative "
             f"Frobenius norm of its weights' change between snapshots; the paper reports that lower layers "
             f"converge within a few epochs and upper layers only after 40-50.")
    return {"title": "Feature evolution during training (Fig. 4)", "intro": intro, "figures": figures,
            "tables": tables, "claims": _claims(result)}
