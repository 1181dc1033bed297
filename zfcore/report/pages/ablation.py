"""The page of ``zfcore analyze ablation``: our variants' errors beside the
paper's Tables 2 and 3, a bar chart of top-1 error per variant, and the
paper's Table 3 statements checked on our numbers."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from ...analysis.ablation import VARIANTS, Ablation
from ._figures import begin, save_figure


def _pct(value) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.1f}"


def _paper_pct(value) -> str:
    return "-" if value is None else f"{value:.1f}"


def _se(p: float, n: int) -> float:
    return math.sqrt(max(p * (1 - p), 0.0) / n) if n else math.nan


def _compare(result: Ablation, a: str, b: str) -> tuple[float, float, float, str]:
    """a's top-1 error, b's, and a minus b in standard errors, with a phrase."""
    ea, eb = result.error(a), result.error(b)
    n = result.error_count()
    se = math.sqrt(_se(ea, n) ** 2 + _se(eb, n) ** 2) if n else math.nan
    z = (ea - eb) / se if se and not math.isnan(se) else math.nan
    noise = "" if math.isnan(z) else (" (within 2 standard errors: not distinguishable from noise at one seed)"
                                      if abs(z) < 2 else f" ({abs(z):.1f} standard errors)")
    return ea, eb, z, noise


def _claims(result: Ablation) -> list[dict]:
    """The paper's Table 3 statements, on our numbers, where the needed variants were trained."""
    have = set(result.variants)
    claims = []
    split = f"{result.eval_split} top-1 error"
    cost = {v: result.error(v) - result.error("full") for v in have} if "full" in have else {}
    fc, conv, both = "no-fc6-fc7", "no-conv3-conv4", "no-conv3-conv4-fc6-fc7"

    def pair(claim: str, worse: str, better: str, paper: str) -> dict:
        ea, eb, _, noise = _compare(result, worse, better)
        return {"claim": claim, "holds": ea > eb,
                "detail": f"{split}: {worse} {100 * ea:.1f}%, {better} {100 * eb:.1f}%: difference "
                          f"{100 * (ea - eb):+.1f} points{noise}; paper: {paper}"}

    if {"full", fc, conv, both} <= have:
        order = cost[fc] <= cost[conv] <= cost[both]
        claims.append({
            "claim": "Removing the fully connected layers (fc6, fc7) costs little, removing the middle convs "
                     "(conv3, conv4) costs more, removing both costs most (Table 3)",
            "holds": bool(order),
            "detail": f"{split} minus the full model's ({100 * result.error('full'):.1f}%): fc6, fc7 removed "
                      f"{100 * cost[fc]:+.1f} points, conv3, conv4 removed {100 * cost[conv]:+.1f}, both "
                      f"{100 * cost[both]:+.1f} (n = {result.error_count()} images, one seed); paper, on its "
                      f"AlexNet replication: each pair alone a small change, both a big drop"})
    if {fc, both} <= have:
        claims.append(pair("Removing conv3, conv4 as well as fc6, fc7 is worse than removing fc6, fc7 alone", both,
                           fc, "a big drop against a small change"))
    if {conv, both} <= have:
        claims.append(pair("Removing fc6, fc7 as well as conv3, conv4 is worse than removing conv3, conv4 alone",
                           both, conv, "a big drop against a small change"))
    if {"full", fc, conv, both} <= have:
        claims.append({
            "claim": "Depth matters: removing both pairs raises the error, by more than the two removals' costs "
                     "added",
            "holds": bool(cost[both] > 0 and cost[both] > cost[fc] + cost[conv]),
            "detail": f"cost of both {100 * cost[both]:+.1f} points against {100 * (cost[fc] + cost[conv]):+.1f} "
                      f"({100 * cost[fc]:+.1f} + {100 * cost[conv]:+.1f}); paper: a big drop against two small changes"})
    if {"full", "wide-conv"} <= have:
        claims.append(pair("Widening the conv layers lowers the error (Table 3)", "full",
                           "wide-conv", "better with conv3-5 at 512, 1024, 512 maps"))
    if {"full", "wide-fc"} <= have:
        ea, eb, _, noise = _compare(result, "wide-fc", "full")
        claims.append({"claim": "Widening fc6, fc7 does not lower the error (Table 3)",
                       "holds": ea >= eb,
                       "detail": f"{split}: wide-fc {100 * ea:.1f}%, full {100 * eb:.1f}%: difference "
                                 f"{100 * (ea - eb):+.1f} points{noise}"})
        i, j = result.variants.index("wide-fc"), result.variants.index("full")
        gap = [result.error(v) - result.train_top1[k].item() for v, k in (("wide-fc", i), ("full", j))]
        if not any(math.isnan(g) for g in gap):
            claims.append({"claim": "Widening fc6, fc7 overfits: the gap between held-out and training error grows",
                           "holds": gap[0] > gap[1],
                           "detail": f"held-out minus training top-1 error: wide-fc {100 * gap[0]:+.1f} points "
                                     f"(train {_pct(result.train_top1[i].item())}%), full {100 * gap[1]:+.1f} "
                                     f"(train {_pct(result.train_top1[j].item())}%); paper: 8192-unit fc6, fc7 "
                                     f"overfit"})
    return claims


def render(result: "Ablation | dict", assets: Path) -> dict:
    """The table of our variants beside the paper's Tables 2 and 3, a bar chart
    of top-1 error per variant (``ablation-top1.png``) and the claims."""
    plt, result, assets = begin(result, Ablation, assets)
    paper = {row["key"]: row for row in result.paper}
    n = result.error_count()

    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(result.variants) + 2), 4.2), dpi=100)
    xs = torch.arange(len(result.variants), dtype=torch.float64)
    ours = [100 * result.error(v) for v in result.variants]
    errs = [100 * 2 * _se(result.error(v), n) if n else 0.0 for v in result.variants]
    ax.bar((xs - 0.2).tolist(), ours, width=0.4, yerr=errs, capsize=3, color="tab:blue",
           label=f"ours ({result.eval_split}, {n} images; bars: 2 standard errors)" if n else "ours (validation)")
    theirs = [paper.get(VARIANTS[v].paper or "", {}).get("val_top1") if v in VARIANTS else None
              for v in result.variants]
    ax.bar([x - 0.2 + 0.4 for x, t in zip(xs.tolist(), theirs) if t is not None],
           [t for t in theirs if t is not None], width=0.4, color="tab:grey", alpha=0.7,
           label="paper (ImageNet val, the row it corresponds to)")
    ax.set_xticks(xs.tolist(), result.variants, rotation=25, ha="right", fontsize=8)
    ax.set_ylabel("top-1 error (%)")
    ax.set_title("Top-1 error per variant (Table 3)", fontsize=10)
    ax.set_ylim(0, 115)  # room for the legend above the bars
    ax.legend(fontsize=7, loc="upper center", ncol=2)
    ax.grid(axis="y", alpha=0.3)
    figures = []
    save_figure(fig, assets, "ablation-top1.png",
                "Top-1 error per variant: ours on the held-out embedded images (blue, with 2 standard errors of a "
                "binomial estimate) and the paper's ImageNet validation error of the corresponding Table 3 row "
                "(grey).", figures, dpi=100)

    full = result.error("full") if "full" in result.variants else None
    ours_rows = []
    for i, v in enumerate(result.variants):
        row = paper.get(VARIANTS[v].paper or "") if v in VARIANTS else None
        ours_rows.append([v, result.labels[i], result.params[i], _pct(result.train_top1[i].item()),
                          _pct(result.error(v)), _pct(result.error(v, "top5")),
                          "-" if full is None else f"{100 * (result.error(v) - full):+.1f}",
                          _pct(result.val_top1[i].item()), "reused" if result.reused[i] else f"{result.seconds[i]:.0f}",
                          row["row"].strip() if row else "-",
                          _paper_pct(row["val_top1"]) if row else "-", _paper_pct(row["val_top5"]) if row else "-",
                          (row.get("finding") or "-") if row else "-"])
    mapped = {VARIANTS[v].paper: v for v in result.variants if v in VARIANTS and VARIANTS[v].paper}
    mapped.update({"t2-zf-1": "full"} if "full" in result.variants else {})
    mapped.update({"t2-alex": "conv1-11x4"} if "conv1-11x4" in result.variants else {})
    mapped.update({"t2-zf-wide": "wide-conv"} if "wide-conv" in result.variants else {})
    paper_rows = [[row["table"], row["row"], _paper_pct(row["val_top1"]),
                   _paper_pct(row["val_top5"]), _paper_pct(row["test_top5"]), row.get("finding") or "-",
                   mapped.get(row["key"], "-"),
                   _pct(result.error(mapped[row["key"]])) if row["key"] in mapped else "-",
                   _pct(result.error(mapped[row["key"]], "top5")) if row["key"] in mapped else "-"]
                  for row in result.paper]
    tables = [
        {"caption": f"Our variants (errors in %; held-out = the embedded {result.eval_split} split, {n} images; "
                    f"train = the run's training images, eval mode) beside the paper's corresponding Table 3 row "
                    f"(ImageNet 2012 validation, and its finding about the change: removals on its AlexNet "
                    f"replication, resizings on ZFNet).",
         "header": ["variant", "change", "parameters", "train top-1", "held-out top-1", "held-out top-5",
                    "top-1 vs full", "trainer's val top-1", "training s", "paper row",
                    "paper val top-1", "paper val top-5", "paper's finding"],
         "rows": ours_rows},
        {"caption": "The paper's Tables 2 and 3 (ImageNet 2012, %), with our corresponding variant where one "
                    "exists (ours: held-out error on the embedded data; '-': no variant of ours).",
         "header": ["paper table", "paper row", "val top-1", "val top-5", "test top-5", "paper's finding",
                    "our variant", "our top-1", "our top-5"],
         "rows": paper_rows}]
    budget = result.configs.get(result.variants[0], {})
    intro = (f"The paper's Tables 2 and 3: the base model and variants with layers removed or resized, each "
             f"trained from scratch ({budget.get('model', '?')}, {budget.get('image_size', '?')} px, "
             f"{budget.get('per_class', '?')} training images per class, {budget.get('epochs', '?')} epochs"
             f"{', quick budget' if result.quick else ''}; one seed) and scored on held-out images. The paper "
             f"finds that removing fc6/fc7 or conv3/conv4 alone changes the error little, removing both costs a "
             f"lot, widening the conv layers helps and widening fc6/fc7 overfits. Its removals change its AlexNet "
             f"replication, its resizings ZFNet; ours all change the same base model, and the paper's numbers "
             f"are ImageNet's, shown for reference only.")
    return {"title": "Ablation and model size (Tables 2 and 3)", "intro": intro, "figures": figures,
            "tables": tables, "claims": _claims(result)}
