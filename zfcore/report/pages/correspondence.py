"""The page of ``zfcore analyze correspondence`` (Fig. 8, Table 1): example
faces with their occluded squares, Delta per part beside the paper's Table 1,
the table and the claims checked."""

from __future__ import annotations

from pathlib import Path

from ...analysis.correspondence import PAPER_LAYERS, PAPER_TABLE1, PARTS, Correspondence
from ._figures import begin, save_figure


def _paint(image, box, grey: int = 128):
    """A copy of the HWC uint8 array with ``box`` filled grey."""
    out = image.copy()
    top, left, bottom, right = (int(v) for v in box)
    out[top:bottom, left:right] = grey
    return out


def _examples_figure(plt, result: Correspondence, assets: Path, figures: list[dict]) -> None:
    from matplotlib.patches import Rectangle

    shown = result.examples.permute(0, 2, 3, 1).numpy()
    columns = ["original"] + [p.replace("_", " ") for p in result.parts] + ["random"]
    rows = len(shown)
    fig, axes = plt.subplots(rows, len(columns), figsize=(1.5 * len(columns), 1.5 * rows), dpi=100, squeeze=False)
    for i, image in enumerate(shown):
        boxes = [None] + [result.part_boxes[i, p] for p in range(len(result.parts))] + [result.random_boxes[0, i]]
        for axis, box, title in zip(axes[i], boxes, columns):
            axis.imshow(image if box is None else _paint(image, box), interpolation="nearest")
            if box is not None:
                top, left, bottom, right = (int(v) for v in box)
                axis.add_patch(Rectangle((left - 0.5, top - 0.5), right - left, bottom - top, fill=False,
                                         edgecolor="tab:red", linewidth=1))
            axis.set_xticks([])
            axis.set_yticks([])
            if i == 0:
                axis.set_title(title, fontsize=8)
    save_figure(fig, assets, "correspondence-examples.png",
                "Face images (rows) with the occluded square of each part and one random square (grey, outlined "
                "in red).", figures, dpi=100)


def _table_figure(plt, result: Correspondence, assets: Path, figures: list[dict]) -> None:
    labels = [p.replace("_", " ") for p in result.parts] + ["random"]
    fig, axes = plt.subplots(1, len(result.layers), figsize=(3.4 * len(result.layers), 2.8), dpi=100, squeeze=False)
    for l, (axis, layer) in enumerate(zip(axes[0], result.layers)):
        ours = result.delta[:, l].tolist() + [float(result.random_mean[l])]
        errors = [0.0] * len(result.parts) + [float(result.random_std[l])]
        x = list(range(len(labels)))
        axis.bar(x, ours, yerr=errors, color=["tab:blue"] * len(result.parts) + ["tab:gray"], capsize=3,
                 label="ours")
        column = PAPER_LAYERS.index(result.paper_layer[layer]) if layer in result.paper_layer else None
        if column is not None:
            paper = [result.paper[p][column] for p in result.parts] + [result.paper["random"][column]]
            axis.plot(x, paper, "D", color="tab:red", label=f"paper ({result.paper_layer[layer]})")
        axis.set_xticks(x)
        axis.set_xticklabels(labels, fontsize=8)
        axis.set_title(f"{layer}", fontsize=9)
        axis.set_ylabel("Delta (mean share of differing signs)", fontsize=7)
        axis.tick_params(labelsize=7)
        axis.legend(fontsize=7)
    save_figure(fig, assets, "correspondence-table1.png",
                "Delta per part and the random control (mean and standard deviation over the trials), with the "
                "paper's Table 1 values (red diamonds) where the layer corresponds.", figures, dpi=100)


def _layer_of(result: Correspondence, paper_layer: str) -> int | None:
    for l, layer in enumerate(result.layers):
        if result.paper_layer.get(layer) == paper_layer:
            return l
    return None


def _gap(parts: list[float], random: float) -> float:
    """Relative advantage of the parts: (random - mean part Delta) / random."""
    return (random - sum(parts) / len(parts)) / random if random > 0 else 0.0


def _claims(result: Correspondence) -> list[dict]:
    claims = []
    found = {name: _layer_of(result, name) for name in PAPER_LAYERS}
    paper = {name: ([PAPER_TABLE1[p][c] for p in PARTS], PAPER_TABLE1["random"][c])
             for c, name in enumerate(PAPER_LAYERS)}
    for name, l in found.items():
        if l is None:
            continue
        mean, std = float(result.random_mean[l]), float(result.random_std[l])
        parts = result.delta[:, l].tolist()
        ours = "; ".join(f"{p.replace('_', ' ')} {d:.4f}" for p, d in zip(result.parts, parts))
        paper_parts, paper_random = paper[name]
        claims.append({"claim": f"At {name} ({result.layers[l]}) every part is encoded more consistently than "
                                f"random positions (lower Delta)",
                       "holds": all(d < mean for d in parts),
                       "detail": f"{ours}; random {mean:.4f} +- {std:.4f} over {result.random_delta.shape[0]} "
                                 f"trials (paper: parts {min(paper_parts):.3f}-{max(paper_parts):.3f}, "
                                 f"random {paper_random:.3f})"})
    if None not in found.values():
        l5, l7 = found["layer 5"], found["layer 7"]
        g5 = _gap(result.delta[:, l5].tolist(), float(result.random_mean[l5]))
        g7 = _gap(result.delta[:, l7].tolist(), float(result.random_mean[l7]))
        claims.append({"claim": "The parts' advantage over random positions is smaller at layer 7 than at layer 5 "
                                "(the paper: layer 7 discriminates more between individuals, less by part)",
                       "holds": g7 < g5,
                       "detail": f"(random - mean part Delta) / random: {g5:.1%} at {result.layers[l5]}, {g7:.1%} "
                                 f"at {result.layers[l7]} (paper: {_gap(*paper['layer 5']):.1%} at layer 5, "
                                 f"{_gap(*paper['layer 7']):.1%} at layer 7)"})
    return claims


def render(result: Correspondence | dict, assets: Path) -> dict:
    """Fig. 8 (example faces with their occluded squares) and Table 1 (ours
    beside the paper's) as PNGs in ``assets``, with the table and the claims."""
    plt, result, assets = begin(result, Correspondence, assets)
    figures = []
    _examples_figure(plt, result, assets, figures)
    _table_figure(plt, result, assets, figures)

    header = ["part"]
    for layer in result.layers:
        header += [f"Delta {layer}", f"changed {layer}", f"opposite {layer}"]
    header += [f"paper {name}" for name in PAPER_LAYERS]
    rows = []
    for p, part in enumerate(result.parts):
        row = [part.replace("_", " ")]
        for l in range(len(result.layers)):
            row += [round(float(result.delta[p, l]), 4), round(float(result.changed[p, l]), 4),
                    round(float(result.opposite[p, l]), 4)]
        rows.append(row + [result.paper[part][0], result.paper[part][1]])
    row = [f"random ({result.random_delta.shape[0]} trials)"]
    for l in range(len(result.layers)):
        row += [f"{float(result.random_mean[l]):.4f} +- {float(result.random_std[l]):.4f}",
                round(float(result.random_changed[:, l].mean()), 4),
                round(float(result.random_opposite[:, l].nanmean()), 4)]
    rows.append(row + [result.paper["random"][0], result.paper["random"][1]])

    intro = (f"The paper's correspondence test (section 5, Fig. 8, Table 1) on {result.images} face images: each "
             f"part (left eye, right eye, nose) is covered by a {result.patch_size}x{result.patch_size} square of "
             f"value {result.fill:g} (0 = the mean image) in every image; eps_i is the change of a layer's features "
             f"of image i. Delta is the mean, over pairs of images, of the share of feature entries whose signs "
             f"sign(eps_i), sign(eps_j) differ (sign(0) = 0); lower means the part is encoded more consistently "
             f"across images. The control covers a random square anywhere in each image. 'changed' is the share "
             f"of entries the occlusion changes at all: entries that stay equal count as agreeing, so Delta also "
             f"falls when fewer entries change; 'opposite' is the share of opposite signs among the entries that "
             f"changed in both images of a pair (0.5 = no consistency). The paper used 5 dog images of ImageNet "
             f"at 224 px; these are small procedural faces at random rotations.")
    return {"title": "Correspondence of object parts (Fig. 8, Table 1)", "intro": intro,
            "figures": figures,
            "tables": [{"caption": "Table 1: Delta (lower = more consistent), the share of changed entries and the "
                                   "share of opposite signs among entries changed in both images, ours beside the "
                                   "paper's Delta.", "header": header, "rows": rows}],
            "claims": _claims(result)}
