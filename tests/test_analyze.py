"""`zfcore analyze` and the analysis pages of the report: the demo adds the
quick analyses, their results are plain tensors read back with
weights_only=True, `report --from` re-renders the pages without recomputing,
the pages pass the browser check, and bad arguments are named."""

import shutil
import subprocess
import sys

import torch

from tests import browser
from zfcore.analyze import DEMO_ANALYSES, analyze, render_analyses


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
