"""`zfcore demo` end to end on a reduced budget (12 of its 30 epochs, about a
minute and a half here), and a check that what the report shows is meaningful:
the top-9 images of a last-conv-layer map share a class far more often than 9
images drawn at random (an untrained or one-epoch model is at chance)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests import browser


def majority_share(labels: torch.Tensor) -> float:
    """Mean over maps of the share of a map's top images in its most common class."""
    shares = [torch.bincount(row).max().item() / len(row) for row in labels]
    return sum(shares) / len(shares)


def chance_share(all_labels: torch.Tensor, k: int, maps: int, seed: int = 0) -> float:
    g = torch.Generator().manual_seed(seed)
    draws = torch.stack([all_labels[torch.randperm(len(all_labels), generator=g)[:k]] for _ in range(maps)])
    return majority_share(draws)


from tests.conftest import DEMO_EPOCHS as EPOCHS


def test_demo_trains_visualizes_and_prints_the_report(demo_folder):
    out, stdout = demo_folder
    index = out / "report" / "index.html"
    assert f"open {index}" in stdout
    assert (out / "run" / "model.pt").is_file() and index.is_file()
    meta = json.loads((out / "report" / "results" / "meta.json").read_text())
    assert meta["history"] and meta["history"][-1]["epoch"] == EPOCHS
    assert {"top-k", "projections", "rendering"} <= set(meta["timings"])
    if browser.available() is None:
        found = browser.check_report(out / "report")
        assert {page: p for page, p in found["pages"].items() if p} == {} and found["dialogs"] == []


def test_top9_of_the_last_conv_layer_share_a_class(demo_folder):
    from zfcore.data import SyntheticShapes

    out, _ = demo_folder
    meta = json.loads((out / "report" / "results" / "meta.json").read_text())
    topk = torch.load(out / "report" / "results" / "topk.pt", weights_only=True)
    last = [name for name in meta["layers"] if name.startswith("conv")][-1]
    labels = topk[last]["labels"]
    config = torch.load(out / "run" / "model.pt", weights_only=True)["config"]
    val = SyntheticShapes("val", seed=config["seed"], size=config["image_size"],
                          per_class=max(1, config["per_class"] // 5))
    observed = majority_share(labels)
    chance = chance_share(val.labels, labels.shape[1], labels.shape[0])
    assert observed > 1.5 * chance, (observed, chance)
    # ... and more so than in the first conv layer, whose maps respond to edges and colours
    assert observed > majority_share(topk["conv1"]["labels"]) + 0.1


def test_demo_reuses_a_finished_run(demo_folder):
    out, _ = demo_folder
    before = (out / "run" / "model.pt").stat().st_mtime_ns
    result = subprocess.run([sys.executable, "-m", "zfcore", "demo", "--out", str(out), "--no-progress", "--no-analyses"],
                            capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / "run" / "model.pt").stat().st_mtime_ns == before
