"""The page of ``zfcore analyze generalization``: accuracy on new classes of
the pretrained features with a new softmax against training from scratch, per
number of training images per class, beside the paper's Caltech numbers, and
the paper's claims checked on ours."""

from __future__ import annotations

import math
from pathlib import Path

from torch import Tensor

from ...analysis.generalization import PAPER_PASCAL_MEAN_AP, Generalization
from ._figures import begin, save_figure


def _claims(result: Generalization) -> list[dict]:
    pre, scr = result.pretrained_mean.tolist(), result.scratch_mean.tolist()
    small = [i for i, n in enumerate(result.shots) if n <= 10] or [0]
    per_n = "; ".join(f"n = {result.shots[i]}: {100 * pre[i]:.1f}% against {100 * scr[i]:.1f}%" for i in small)
    p = min(max(sum(pre[i] + scr[i] for i in small) / (2 * len(small)), 0.0), 1.0)
    se = 100 * math.sqrt(p * (1 - p) / (result.eval_images * result.draws))
    claims = [{"claim": "The pretrained features beat training from scratch at small n (n <= 10 images per class; "
                        "Tables 4-5)",
               "holds": all(pre[i] > scr[i] for i in small),
               "detail": f"accuracy on the {result.eval_images} validation images of the new classes, mean of "
                         f"{result.draws} draws, pretrained features + new softmax against scratch: {per_n}; chance "
                         f"{100 * result.chance:.0f}%; a binomial standard error of such a mean is about "
                         f"{se:.1f} points; paper: the pretrained features win by far on Caltech-101/256"}]
    if len(result.shots) > 1:
        first, last = pre[0] - scr[0], pre[-1] - scr[-1]
        claims.append({"claim": "The advantage of the pretrained features shrinks as n grows (Tables 4-5)",
                       "holds": last < first - 1e-9,  # means of a few draws: equal ones are not "shrinks"
                       "detail": f"pretrained minus scratch: {100 * first:+.1f} points at n = {result.shots[0]}, "
                                 f"{100 * last:+.1f} at n = {result.shots[-1]}"})
        claims.append({"claim": f"With the pretrained features, more training images help: accuracy at "
                                f"n = {result.shots[-1]} is above that at n = {result.shots[0]}",
                       "holds": pre[-1] > pre[0] + 1e-9,
                       "detail": ", ".join(f"n = {n}: {100 * p:.1f}%" for n, p in zip(result.shots, pre))})
    return claims


def render(result: "Generalization | dict", assets: Path) -> dict:
    """The accuracy curves (ours beside the paper's Caltech numbers,
    ``generalization-curve.png``), the tables and the claims."""
    plt, result, assets = begin(result, Generalization, assets)

    fig, (ours, theirs) = plt.subplots(1, 2, figsize=(11, 4), dpi=100)
    std = {"pretrained": result.pretrained.std(1, unbiased=False) if result.draws > 1 else None,
           "scratch": result.scratch.std(1, unbiased=False) if result.draws > 1 else None}
    for key, values, colour in (("pretrained", result.pretrained_mean, "tab:blue"),
                                ("scratch", result.scratch_mean, "tab:orange")):
        label = "pretrained features + new softmax" if key == "pretrained" else "trained from scratch"
        yerr = None if std[key] is None else (100 * std[key]).tolist()
        ours.errorbar(result.shots, (100 * values).tolist(), yerr=yerr, marker="o", capsize=3, color=colour,
                      label=label)
    ours.axhline(100 * result.chance, color="grey", linestyle="--", linewidth=1, label="chance")
    ours.set_xscale("log")
    ours.set_xticks(result.shots, [str(n) for n in result.shots])
    ours.set_xlabel("training images per new class")
    ours.set_ylabel("accuracy (%)")
    ours.set_ylim(0, 100)
    ours.set_title(f"ours: {len(result.new_classes)} new classes of the embedded data", fontsize=10)
    for (name, row), marker in zip(result.paper.items(), ("o", "s")):
        theirs.plot(row["shots"], row["pretrained"], marker=marker, linestyle="none", markersize=8,
                    color="tab:blue", label=f"{name}: ImageNet-pretrained")
    theirs.set_xlabel("training images per class")
    theirs.set_ylabel("accuracy (%)")
    theirs.set_ylim(0, 100)
    theirs.set_title("the paper's, on Caltech (Tables 4, 5)", fontsize=10)
    for ax in (ours, theirs):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    figures = []
    save_figure(fig, assets, "generalization-curve.png",
                "Left: accuracy on the new classes against the number of training images per class (ours; mean "
                "and std over the draws). Right: the paper's Caltech-101/256 numbers (Tables 4, 5).", figures,
                dpi=100)

    def cell(values: Tensor, i: int) -> str:
        mean = 100 * values[i].mean().item()
        return f"{mean:.1f}" if result.draws == 1 else f"{mean:.1f} ± {100 * values[i].std(unbiased=False):.1f}"

    rows = [[n, cell(result.pretrained, i), cell(result.scratch, i),
             f"{100 * (result.pretrained_mean[i] - result.scratch_mean[i]).item():+.1f}"]
            for i, n in enumerate(result.shots)]
    paper_rows = [[name, n, f"{p:.1f}"] for name, row in result.paper.items()
                  for n, p in zip(row["shots"], row["pretrained"])]
    names = ", ".join(result.new_class_names)
    tables = [{"caption": f"Accuracy (%) on {result.eval_images} validation images of the new classes ({names}), "
                          f"mean ± std over {result.draws} draws of the training images; chance "
                          f"{100 * result.chance:.0f}%.",
               "header": ["images per class", "pretrained + new softmax", "from scratch", "difference"],
               "rows": rows},
              {"caption": f"The paper's numbers, on Caltech (not our data): ImageNet-pretrained ZFNet with a new "
                          f"softmax, accuracy %. Table 6: PASCAL 2012, {PAPER_PASCAL_MEAN_AP:.1f}% mean AP.",
               "header": ["dataset", "images per class", "pretrained"],
               "rows": paper_rows}]
    pretrained_classes = ", ".join(map(str, result.pretrain_classes))
    intro = (f"The paper's Tables 4-6: features learned on one set of classes, reused for others. A network "
             f"trained only on classes {pretrained_classes} of the embedded data (validation top-1 error on them "
             f"{100 * result.pretrain_val_top1:.1f}%) keeps every layer fixed; only a new softmax on its "
             f"{result.feature_dim} {result.feature_layer} features is trained on n images per new class. The "
             f"same architecture trained from scratch on the same images ({result.steps} SGD steps) is the "
             f"baseline. The paper's Caltech numbers are shown beside ours for reference: another dataset, "
             f"another scale.")
    return {"title": "Feature generalization to new classes (Tables 4-6)", "intro": intro, "figures": figures,
            "tables": tables, "claims": _claims(result)}
