"""The page of ``zfcore analyze probes`` (Table 7): linear probe accuracy
against depth, a table per layer and the paper's claims checked."""

from __future__ import annotations

from pathlib import Path

from ...analysis.probes import WIDE_MARGIN, Probes
from ._figures import begin, save_figure


def render(result: Probes | dict, assets: Path) -> dict:
    """The report section of ``linear_probes``: accuracy against depth (figure
    ``probes_accuracy.png``), a table per layer, and the paper's claim checked
    on the numbers."""
    plt, result, assets = begin(result, Probes, assets)
    train = [float(a) for a in result.train_accuracy]
    test = [float(a) for a in result.test_accuracy]
    positions = list(range(len(result.layers)))
    fig, ax = plt.subplots(figsize=(max(4.0, 0.8 * len(positions) + 2), 3.2), dpi=120)
    ax.plot(positions, [100 * a for a in test], "o-", label="test (held out)")
    ax.plot(positions, [100 * a for a in train], "s--", alpha=0.7, label="train")
    ax.axhline(100 * result.chance, color="grey", linestyle=":", label="chance")
    ax.set_xticks(positions, result.layers, rotation=30)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title("Linear probe accuracy by layer")
    ax.legend(fontsize=8)
    figures = []
    save_figure(fig, assets, "probes_accuracy.png",
                "Train and held-out test accuracy of a linear classifier on each layer's features; the dotted line "
                "is the most frequent class's share.", figures, dpi=120)

    pooled = f"adaptive {result.pool} pooling to {result.grid}x{result.grid}"
    rows = [[name, dim, round(100 * tr, 1), round(100 * te, 1)]
            for name, dim, tr, te in zip(result.layers, result.dims, train, test, strict=True)]
    claims = []
    if len(test) >= 2:
        gain = test[-1] - test[0]
        claims.append({
            "claim": f"The top probed layer's features separate the classes far better than the first's "
                     f"(test accuracy at least {100 * WIDE_MARGIN:.0f} points higher)",
            "holds": gain >= WIDE_MARGIN,
            "detail": f"{result.layers[0]}: {100 * test[0]:.1f}%, {result.layers[-1]}: {100 * test[-1]:.1f}% "
                      f"({100 * gain:+.1f} points)"})
        drops = [f"{result.layers[i]} {100 * test[i]:.1f}% -> {result.layers[i + 1]} {100 * test[i + 1]:.1f}%"
                 for i in range(len(test) - 1) if test[i + 1] < test[i]]
        claims.append({
            "claim": "Test accuracy rises with depth at every step (Table 7)",
            "holds": not drops,
            "detail": "non-decreasing at every layer" if not drops else "drops: " + "; ".join(drops)})
    return {
        "title": "Feature analysis: linear probes by layer (Table 7)",
        "intro": (f"A softmax classifier (L2 penalty {result.l2:g}) trained on each layer's features of "
                  f"{result.train_images} training images and scored on {result.test_images} held-out images; "
                  f"conv maps reduced by {pooled}, every feature standardized on the training images. "
                  f"Took {result.seconds:.1f} s ({result.feature_seconds:.1f} s of forwards)."),
        "figures": figures,
        "tables": [{"caption": "Linear probe accuracy per layer",
                    "header": ["layer", "features", "train accuracy (%)", "test accuracy (%)"], "rows": rows}],
        "claims": claims,
    }
