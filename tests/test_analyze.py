"""`zfcore analyze` and the analysis pages of the report: the demo adds the
quick analyses, their results are plain tensors read back with
weights_only=True, `report --from` re-renders the pages without recomputing,
the pages pass the browser check, and bad arguments are named."""

import os
import shutil
import subprocess
import sys

import torch

from tests import browser
from zfcore.analyze import DEMO_ANALYSES, analyze
from zfcore.report import render_analyses


def test_demo_report_has_every_quick_analysis_page_linked_from_the_overview(demo_folder):
    out, stdout = demo_folder
    report = out / "report"
    index = (report / "index.html").read_text()
    for name in DEMO_ANALYSES:
        assert (report / f"analysis-{name}.html").is_file(), name
        assert f'href="analysis-{name}.html"' in index, name
        saved = torch.load(report / "results" / f"analysis-{name}.pt", weights_only=True)
        assert saved["seconds"] > 0 and saved["result"]
        assert f"analysis {name}" in stdout
    occlusion = (report / "analysis-occlusion.html").read_text()
    assert "Occluding the object lowers the true-class probability" in occlusion
    assert "assets/analysis-occlusion/occlusion_maps.png" in occlusion


def test_occlusion_page_shows_each_images_chosen_map_projected_by_the_deconvnet(demo_folder):
    import zfcore
    from zfcore.deconv import Deconvnet
    from zfcore.report import display_signed

    out, _ = demo_folder
    report = out / "report"
    saved = torch.load(report / "results" / "analysis-occlusion.pt", weights_only=True)
    shown, result = saved["extra"]["projections"], saved["result"]
    loaded = zfcore.load(out / "run" / "model.pt")
    images = loaded.preprocess(saved["extra"]["images"])
    assert shown.dtype == torch.uint8 and shown.shape == images.shape
    net = Deconvnet(loaded.model, loaded.input_shape)
    channels = result["channel"].tolist()
    assert len(set(channels)) > 1  # the map is each image's own
    for k in (0, len(channels) - 1):  # one image at a time, against the batched projection
        alone = display_signed(net.project(images[k:k + 1], result["layer"], channels[k], "map"))[0]
        assert (alone.int() - shown[k].int()).abs().max() <= 1
        assert shown[k].float().std() > 1  # not a blank grey square
    page = (report / "analysis-occlusion.html").read_text()
    assert "Fig. 7 c" in page


def test_report_from_re_renders_the_analysis_pages_without_recomputing(demo_folder, tmp_path):
    out, _ = demo_folder
    copy = tmp_path / "copy"
    shutil.copytree(out / "report", copy)
    for page in copy.glob("analysis-*.html"):
        page.unlink()
    shutil.rmtree(copy / "assets" / "analysis-probes")
    stamps = {p.name: p.stat().st_mtime_ns for p in (copy / "results").glob("analysis-*.pt")}
    result = subprocess.run([sys.executable, "-m", "zfcore", "report", "--from", str(copy), "--no-progress"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    for name in DEMO_ANALYSES:
        assert (copy / f"analysis-{name}.html").is_file()
    assert list((copy / "assets" / "analysis-probes").glob("*.png"))
    assert stamps == {p.name: p.stat().st_mtime_ns for p in (copy / "results").glob("analysis-*.pt")}
    if browser.available() is None:
        found = browser.check_report(copy, screenshot=tmp_path / "occlusion.png")
        assert {page: p for page, p in found["pages"].items() if p} == {} and found["dialogs"] == []


def test_analyze_into_an_empty_folder_writes_standalone_pages(demo_folder, tmp_path):
    out, _ = demo_folder
    page = analyze("occlusion", out / "run" / "model.pt", tmp_path / "alone", quick=True, progress=False)
    assert page.is_file() and "index.html" not in page.read_text()
    assert render_analyses(tmp_path / "alone") == [page]


def test_the_toolbox_commands_beyond_the_demo_write_their_pages(demo_folder, tmp_path):
    """deepdream, style and pointing are commands, not part of the demo: each runs from the command line into a
    report folder, its result reads back with weights_only=True, and the pages pass the browser check."""
    from zfcore.analysis.pointing import PointingGame
    from zfcore.analyze import DEMO_ANALYSES, TOOLBOX

    out, _ = demo_folder
    report = tmp_path / "toolbox"
    for name in [n for n in TOOLBOX if n not in DEMO_ANALYSES]:
        result = subprocess.run([sys.executable, "-m", "zfcore", "analyze", name, "--checkpoint",
                                 str(out / "run" / "model.pt"), "--out", str(report), "--quick", "--seed", "3",
                                 "--no-progress"], capture_output=True, text=True, timeout=600,
                                env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert result.returncode == 0, result.stderr[-2000:]
        assert (report / f"analysis-{name}.html").is_file()
        saved = torch.load(report / "results" / f"analysis-{name}.pt", weights_only=True)
        assert saved["seconds"] > 0 and saved["result"]
    game = PointingGame.from_dict(torch.load(report / "results" / "analysis-pointing.pt", weights_only=True)["result"])
    assert game.hit.shape == (5, 16) and game.accuracy()["gradient"] > game.accuracy()["chance"]
    page = (report / "analysis-style.html").read_text()
    assert 'class="group">toolbox:' in page and 'href="analysis-pointing.html"' in page
    if browser.available() is None:
        found = browser.check_report(report, screenshot=tmp_path / "pointing.png")
        assert {page: p for page, p in found["pages"].items() if p} == {} and found["dialogs"] == []


def test_bad_arguments_are_named(demo_folder, tmp_path):
    out, _ = demo_folder
    run = [sys.executable, "-m", "zfcore", "analyze"]
    result = subprocess.run(run + ["nonsense", "--checkpoint", "x"], capture_output=True, text=True)
    assert result.returncode == 2 and "invalid choice: 'nonsense'" in result.stderr
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a model")
    result = subprocess.run(run + ["probes", "--checkpoint", str(junk), "--out", str(tmp_path / "r")],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "junk.pt" in result.stderr and "Traceback" not in result.stderr
    lone = tmp_path / "lone"
    lone.mkdir()
    shutil.copy(out / "run" / "model.pt", lone / "model.pt")
    result = subprocess.run(run + ["evolution", "--checkpoint", str(lone / "model.pt"), "--out", str(tmp_path / "r")],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "snapshot" in result.stderr and "Traceback" not in result.stderr, result.stderr


def _tiny_recipe(out, *, seed=0, epochs=None, progress=True):
    """The demo's recipe shrunk to seconds: the wiring, not the numbers, is tested here (the modules' own
    tests check the measures; their run times at the real budgets are in the README)."""
    from zfcore.train import TrainConfig

    return TrainConfig(out=out, model="zfnet_small", seed=seed, epochs=1 if epochs is None else min(epochs, 1),
                       per_class=10, batch_size=16, schedule="cosine", warmup_epochs=0.0, last_init_std=0.01,
                       progress=progress, threads=1)


def test_training_analyses_run_from_the_command_line_into_pages_and_reuse_their_runs(tmp_path, monkeypatch):
    import zfcore.train
    from zfcore.analysis import architecture, generalization
    from zfcore.cli import main

    monkeypatch.setattr(zfcore.train, "demo_config", _tiny_recipe)
    monkeypatch.setattr(architecture, "QUICK_EPOCHS", 1)
    monkeypatch.setitem(generalization.QUICK, "shots", (1, 2))
    for key, value in (("draws", 1), ("steps", 3), ("eval_per_class", 4)):
        monkeypatch.setitem(generalization.QUICK, key, value)
    out = tmp_path / "report"
    common = ["--out", str(out), "--quick", "--no-progress"]
    assert main(["analyze", "architecture", *common]) == 0
    assert main(["analyze", "ablation", *common, "--variants", "full,no-fc6-fc7,wide-fc"]) == 0
    assert main(["analyze", "generalization", *common, "--seed", "3"]) == 0
    for name, run in (("architecture", "zfnet_conv1"), ("ablation", "no-fc6-fc7"), ("generalization", "pretrain")):
        page = (out / f"analysis-{name}.html").read_text()
        assert "holds" in page or "does not hold" in page, name
        saved = torch.load(out / "results" / f"analysis-{name}.pt", weights_only=True)
        assert saved["checkpoint"] == "" and saved["seconds"] > 0
        assert (out / "runs" / name / run / "model.pt").is_file(), name
    saved = torch.load(out / "results" / "analysis-ablation.pt", weights_only=True)["result"]
    assert saved["variants"] == ["full", "no-fc6-fc7", "wide-fc"] and saved["reused"] == [False] * 3
    no_fc = torch.load(out / "runs" / "ablation" / "no-fc6-fc7" / "model.pt", weights_only=True)
    assert "fc6.weight" not in no_fc["model"] and "fc8.weight" in no_fc["model"]
    assert torch.load(out / "runs" / "generalization" / "pretrain" / "model.pt",
                      weights_only=True)["config"]["seed"] == 3
    assert main(["analyze", "ablation", *common, "--variants", "full,no-fc6-fc7,wide-fc"]) == 0  # finished runs reused
    saved = torch.load(out / "results" / "analysis-ablation.pt", weights_only=True)["result"]
    assert saved["reused"] == [True] * 3
    assert sorted(p.name for p in out.glob("analysis-*.html")) == [
        "analysis-ablation.html", "analysis-architecture.html", "analysis-generalization.html"]
    if browser.available() is None:
        found = browser.check_report(out, screenshot=tmp_path / "ablation.png")
        assert {page: p for page, p in found["pages"].items() if p} == {} and found["dialogs"] == []


def test_training_analysis_arguments_are_checked(tmp_path, capsys):
    from zfcore.cli import main

    assert main(["analyze", "ablation", "--out", str(tmp_path), "--variants", "full,bogus", "--no-progress"]) == 2
    assert "unknown variant 'bogus'" in capsys.readouterr().err
    assert main(["analyze", "architecture", "--out", str(tmp_path), "--variants", "full"]) == 2
    assert "variants are ablation's" in capsys.readouterr().err
    assert main(["analyze", "occlusion", "--out", str(tmp_path)]) == 2
    assert "occlusion needs a model: --model SPEC [--weights FILE] or --checkpoint model.pt" in capsys.readouterr().err
    assert main(["analyze", "architecture", "--out", str(tmp_path), "--seed", "-1"]) == 2
    assert "seed must be a non-negative int" in capsys.readouterr().err
