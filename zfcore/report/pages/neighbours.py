"""The page of ``zfcore analyze neighbours``: rows of a query and its nearest
images in feature space beside those in pixel space, the same-class share per
class, and the claims checked."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from ...analysis.neighbours import Neighbours, shown_queries
from ._figures import begin, display_images, save_figure


_FRAME = {None: (255, 255, 255), True: (40, 160, 40), False: (220, 30, 30)}


def _mosaic(result: Neighbours, images: Tensor, rows: list[int], name) -> tuple[Tensor, list]:
    """One uint8 ``[H, W, 3]`` picture of the rows of ``rows`` (query, feature
    neighbours, a gap, query, pixel neighbours; each image framed by whether it
    has the query's class) and the ``(x, y, text)`` captions above the cells
    (``name``: class index -> display name)."""
    _, _, h, w = images.shape
    frame, label_space, gap = max(2, h // 20), 14, w // 2
    cell_h, cell_w = h + 2 * frame + label_space, w + 2 * frame
    k = result.k
    width = (2 * k + 2) * cell_w + gap
    canvas = torch.full((len(rows) * cell_h + label_space, width, 3), 255, dtype=torch.uint8)
    texts = [(cell_w * (1 + k / 2), label_space - 2, f"{result.layer} features"),
             (cell_w * (k + 1 + 1 + k / 2) + gap, label_space - 2, "pixels")]
    for r, row in enumerate(rows):
        query = int(result.queries[row])
        own = int(result.labels[query])
        cells = [(query, name(own), None)]
        cells += [(int(j), f"{float(d):.3g}", int(result.labels[j]) == own)
                  for j, d in zip(result.feature_index[row], result.feature_distance[row])]
        cells += [(query, name(own), None)]
        cells += [(int(j), f"{float(d):.3g}", int(result.labels[j]) == own)
                  for j, d in zip(result.pixel_index[row], result.pixel_distance[row])]
        top = label_space + r * cell_h + label_space
        for c, (index, text, same) in enumerate(cells):
            left = c * cell_w + (gap if c > k else 0)
            canvas[top:top + h + 2 * frame, left:left + cell_w] = torch.tensor(_FRAME[same], dtype=torch.uint8)
            canvas[top + frame:top + frame + h, left + frame:left + frame + w] = images[index].permute(1, 2, 0)
            texts.append((left + cell_w / 2, top - 1, text))
    return canvas, texts


def render(result: "Neighbours | dict", assets: Path, *, images: Tensor | None = None,
           image_index: Tensor | None = None, classes: Sequence[str] | None = None) -> dict:
    """The neighbours as PNGs in ``assets``: with ``images`` (uint8
    ``[N, 3, H, W]``, the set the result indexes), rows of a query and its
    neighbours in feature space beside those in pixel space (8 queries, one
    per class first; a neighbour of another class framed red, of the query's
    green; ``image_index``: the set's indices of ``images`` when they are
    only those drawn, as ``run`` gives); the share of same-class neighbours per class as bars; a table;
    the claim that feature neighbours share the query's class more often than
    pixel neighbours."""
    plt, result, assets = begin(result, Neighbours, assets)
    names = [str(c) for c in classes] if classes is not None else None

    def name(label: int) -> str:
        return names[label] if names is not None and 0 <= label < len(names) else str(label)

    figures = []
    k = result.k
    if images is not None and len(result.queries):
        images = display_images(images, image_index, len(result.labels))
        rows = shown_queries(result)
        mosaic, texts = _mosaic(result, images, rows, name)
        height, width = mosaic.shape[:2]
        fig = plt.figure(figsize=(width / 55, height / 55))
        ax = fig.add_axes((0, 0, 1, 1))
        ax.imshow(mosaic.numpy(), interpolation="nearest")
        for x, y, text in texts:
            ax.text(x, y, text, ha="center", va="bottom", fontsize=7)
        ax.set_axis_off()
        save_figure(fig, assets, "neighbours_rows.png", f"Each row: a query (white frame, its class above) and its {k} nearest "
                                   f"images in {result.layer} features ({result.metric} distance above each), "
                                   f"then the query again and its {k} nearest in raw pixels. Green frame: the "
                                   f"query's class; red: another class.", figures, tight=False)
    feature_same, pixel_same = result.same_class("feature"), result.same_class("pixel")
    query_labels = result.labels[result.queries]
    present = sorted(set(query_labels.tolist()))
    per_class = []
    n = len(result.labels)
    counts = torch.bincount(result.labels, minlength=max(present, default=0) + 1)
    for c in present:
        rows_c = query_labels == c
        per_class.append((c, int(rows_c.sum()), float(feature_same[rows_c].double().mean()),
                          float(pixel_same[rows_c].double().mean()), float(counts[c] - 1) / (n - 1)))
    if per_class:
        fig, ax = plt.subplots(figsize=(max(5.0, 0.7 * len(per_class) + 2), 3.2))
        x = torch.arange(len(per_class)).numpy()
        ax.bar(x - 0.2, [p[2] for p in per_class], 0.4, label=f"{result.layer} features")
        ax.bar(x + 0.2, [p[3] for p in per_class], 0.4, label="pixels")
        ax.scatter(x, [p[4] for p in per_class], marker="_", s=300, color="black", label="chance", zorder=3)
        ax.set_xticks(x)
        ax.set_xticklabels([name(p[0]) for p in per_class], rotation=45, ha="right", fontsize=8)
        ax.set_ylim(0, 1)
        ax.set_ylabel("same-class share")
        ax.legend(fontsize=7)
        save_figure(fig, assets, "neighbours_share.png", f"Share of the {k} nearest neighbours that have the query's class, per class "
                                   f"of the query: in {result.layer} features, in pixels, and by chance.", figures)
    table_rows = [[name(c), q, round(f, 3), round(p, 3), round(ch, 3)] for c, q, f, p, ch in per_class]
    chance = result.chance() if len(result.queries) else float("nan")
    table_rows.append(["all", len(result.queries), round(result.feature_share, 3), round(result.pixel_share, 3),
                       round(chance, 3)])
    claims = [{"claim": f"Neighbours in {result.layer} features share the query's class more often than "
                        f"neighbours in pixel space",
               "holds": result.feature_share > result.pixel_share,
               "detail": f"{result.feature_share:.1%} of {result.k} {result.metric} neighbours of "
                         f"{len(result.queries)} queries in {result.layer} against {result.pixel_share:.1%} in "
                         f"pixels (chance {chance:.1%})"},
              {"claim": f"Neighbours in {result.layer} features share the query's class more often than chance",
               "holds": result.feature_share > chance,
               "detail": f"{result.feature_share:.1%} against {chance:.1%} for {result.k} images drawn at random"}]
    return {"title": "Nearest neighbours in feature space",
            "intro": f"For each query image, the {k} nearest other images of the set by {result.metric} distance "
                     f"between {result.layer} feature vectors, and between raw pixels (the model's input). "
                     f"Krizhevsky et al. (2012, Fig. 4) found last-layer neighbours semantic rather than "
                     f"pixel-alike. Ties go to the lower index; a query is never its own neighbour.",
            "figures": figures,
            "tables": [{"caption": "share of neighbours with the query's class",
                        "header": ["query class", "queries", f"{result.layer}", "pixels", "chance"],
                        "rows": table_rows}],
            "claims": claims}
