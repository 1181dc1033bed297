"""A user's own model end to end: the README's "Your own model" section as
written, on real photographs nobody here made (scikit-image's and
scikit-learn's sample images, in class folders), a torchvision-layout ResNet-18
and AlexNet with weights files, a ``.pt2`` ResNet through ``visualize``, and
every report page opened in Chromium."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests import browser
from zfcore.models import alexnet_torchvision, resnet18

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = ROOT / "tests" / "fixtures" / "photos"
HOSTILE = "<img src=x onerror=alert(1)>"
CLASSES = ["animal", "food", "person", "vehicle", HOSTILE]
SORTING = {"chelsea.jpg": "animal", "logo.png": "animal", "coffee.jpg": "food", "astronaut.jpg": "person",
           "camera.png": "person", "rocket.jpg": "vehicle", "motorcycle.jpg": "vehicle", "hubble.webp": HOSTILE,
           "color.bmp": HOSTILE}

pytestmark = pytest.mark.xdist_group("own_model")


def _section() -> str:
    text = (ROOT / "README.md").read_text()
    return text.split("## Your own model", 1)[1].split("\n## ", 1)[0]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """What a user has: ``finetuned.pth`` (a 5-class ResNet-18, as saved by a
    DataParallel training loop), ``classes.txt``, ``photos/`` in class folders
    (one folder's name is hostile HTML) with one broken file."""
    import sklearn.datasets

    folder = tmp_path_factory.mktemp("user")
    photos = folder / "photos"
    for name, cls in SORTING.items():
        (photos / cls).mkdir(parents=True, exist_ok=True)
        shutil.copy(PHOTOS / name, photos / cls / name)
    samples = Path(sklearn.datasets.__file__).parent / "images"
    for name in ("china.jpg", "flower.jpg"):
        shutil.copy(samples / name, photos / HOSTILE / name)
    (photos / "food" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (folder / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    torch.manual_seed(0)
    torch.save({"state_dict": {f"module.{k}": v for k, v in resnet18(5).state_dict().items()}},
               folder / "finetuned.pth")
    return folder


def _run(command: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=900, env=env)


def _check_in_browser(report: Path, screenshot: Path) -> None:
    if browser.available() is not None:
        pytest.skip(browser.available())
    found = browser.check_report(report, screenshot=screenshot)
    assert {page: p for page, p in found["pages"].items() if p} == {} and found["dialogs"] == []


def test_the_readme_own_model_section_as_written(workspace, tmp_path):
    section = _section()
    commands = re.findall(r"```bash\n(.*?)```", section, flags=re.S)[0].strip().splitlines()
    code = re.findall(r"```py\n(.*?)```", section, flags=re.S)[0]
    assert len(commands) == 2 and len(code.strip().splitlines()) == 4
    work = tmp_path / "work"
    shutil.copytree(workspace, work)
    for line in commands:
        words = shlex.split(line)
        assert words[:3] == ["python", "-m", "zfcore"]
        result = _run([sys.executable, *words[1:], "--no-progress"], work)
        assert result.returncode == 0, f"{line}\n{result.stderr[-3000:]}"
    index = work / "report" / "index.html"
    html = index.read_text()
    assert "11 images, 1 unreadable file(s) skipped" in html  # every photo decoded, the broken file counted
    assert HOSTILE not in html and "&lt;img src=x onerror=alert(1)&gt;" in html
    assert "short side 256, centre 224x224" in html
    assert (work / "report" / "analysis-gradcam.html").is_file()
    layer_pages = sorted((work / "report").glob("layer-*.html"))
    assert len(layer_pages) == 2  # --layers layer3 layer4
    _check_in_browser(work / "report", tmp_path / "own-model.png")

    script = tmp_path / "block.py"
    script.write_text(code)
    shutil.rmtree(work / "report")
    result = _run([sys.executable, str(script)], work)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("report/index.html") and (work / "report" / "index.html").is_file()


def test_alexnet_safetensors_and_errors_on_the_command_line(workspace, tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(1)
    save_file(alexnet_torchvision(5).state_dict(), tmp_path / "alexnet.safetensors")
    out = tmp_path / "alexnet-report"
    result = _run([sys.executable, "-m", "zfcore", "visualize", "--model", "alexnet", "--weights",
                   str(tmp_path / "alexnet.safetensors"), "--classes", str(workspace / "classes.txt"), "--data",
                   str(workspace / "photos"), "--layers", "features.10", "features.3", "--k", "4", "--maps", "8",
                   "--out", str(out), "--no-progress"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    html = (out / "index.html").read_text()
    assert "11 images, 1 unreadable file(s) skipped" in html and "the strongest 8 maps" in html
    layer = (out / "layer-features.10-1.html") if (out / "layer-features.10-1.html").exists() else \
        sorted(out.glob("layer-*.html"))[0]
    assert len(re.findall(r"map-\d{4}\.png", layer.read_text())) == 8
    _check_in_browser(out, tmp_path / "alexnet.png")

    empty = tmp_path / "empty"
    empty.mkdir()
    for args, message in (
            (["--model", "resnet19"], "unknown architecture 'resnet19'; built in: alexnet"),
            (["--model", "resnet18", "--weights", str(tmp_path / "alexnet.safetensors")],
             "do not fit resnet18 (1000 classes): missing keys: conv1.weight"),
            (["--model", "alexnet", "--weights", str(tmp_path / "alexnet.safetensors"), "--preprocess", "run"],
             "preprocess 'run' is a zfcore run's own"),
            (["--model", "alexnet", "--data", str(empty)], "holds no image"),
            (["--model", "alexnet", "--std", "0,1,1"], "std must be one or three positive finite numbers"),
            (["--model", "alexnet", "--checkpoint", "x.pt"], "give --model or --checkpoint, not both")):
        result = _run([sys.executable, "-m", "zfcore", "visualize", *args, "--out", str(tmp_path / "never"),
                       "--no-progress"], tmp_path)
        assert result.returncode == 2 and message in result.stderr, (args, result.stderr[-2000:])
        assert "Traceback" not in result.stderr


def test_an_exported_resnet_goes_through_visualize(workspace, tmp_path):
    model = resnet18(5)
    model.load_state_dict({k.removeprefix("module."): v for k, v in
                           torch.load(workspace / "finetuned.pth", weights_only=True)["state_dict"].items()})
    program = torch.export.export(model.eval(), (torch.randn(2, 3, 224, 224),),
                                  dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, tmp_path / "resnet18.pt2")
    out = tmp_path / "pt2-report"
    result = _run([sys.executable, "-m", "zfcore", "visualize", "--model", str(tmp_path / "resnet18.pt2"),
                   "--classes", str(workspace / "classes.txt"), "--data", str(workspace / "photos"), "--layers",
                   "layer4", "--k", "3", "--maps", "4", "--out", str(out), "--no-progress"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    saved = torch.load(out / "results" / "projections.pt", weights_only=True)["layer4"]
    assert saved["projections"].shape[:2] == (4, 3) and saved["patch_images"].float().std() > 5
    html = (out / "index.html").read_text()
    assert "resnet18" in html and "11 images, 1 unreadable file(s) skipped" in html
    assert len(list((out / "assets").rglob("map-*.png"))) == 4
    _check_in_browser(out, tmp_path / "pt2.png")


def test_two_processes_under_torchrun_equal_one(workspace, tmp_path):
    """The top-k, the units and the boxes are identical; the projections' pixels
    agree to one display level (the ranks batch their units differently)."""
    args = ["--model", "resnet18", "--weights", str(workspace / "finetuned.pth"), "--classes",
            str(workspace / "classes.txt"), "--data", str(workspace / "photos"), "--layers", "layer3", "layer4",
            "--k", "3", "--maps", "5", "--batch-size", "4", "--no-progress"]
    one = _run([sys.executable, "-m", "zfcore", "visualize", *args, "--out", str(tmp_path / "one")], tmp_path)
    assert one.returncode == 0, one.stderr[-3000:]
    env_run = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "zfcore"]
    two = _run([*env_run, "visualize", *args, "--out", str(tmp_path / "two")], tmp_path)
    assert two.returncode == 0, two.stderr[-3000:]
    for name in ("topk", "projections", "dead_units"):
        a = torch.load(tmp_path / "one" / "results" / f"{name}.pt", weights_only=True)
        b = torch.load(tmp_path / "two" / "results" / f"{name}.pt", weights_only=True)
        assert a.keys() == b.keys()
        for layer in a:
            for key, value in a[layer].items():
                if isinstance(value, torch.Tensor) and (name == "topk" or not value.is_floating_point() and
                                                        value.dtype != torch.uint8):
                    assert torch.equal(value, b[layer][key]), (name, layer, key)  # the same units, boxes, counts
                elif isinstance(value, torch.Tensor):  # float sums batched differently: the last bits may differ
                    other = b[layer][key]
                    # A switch on a near-tie (two maxima 1e-7 apart) may flip when the units are batched
                    # differently, and route that unit's signal elsewhere: most units agree to a display level.
                    if name == "dead_units":  # counts summed over shards: equal up to the sums' rounding
                        torch.testing.assert_close(value, other, rtol=1e-4, atol=1e-6)
                        continue
                    flat_a = value.flatten(2).float() if value.dim() > 2 else value.float()[..., None]
                    flat_b = other.flatten(2).float() if other.dim() > 2 else other.float()[..., None]
                    close = ((flat_a - flat_b).abs() <= (1 if value.dtype == torch.uint8 else
                                                         1e-4 * flat_a.abs().amax().clamp_min(1e-12))).all(2)
                    assert close.float().mean() >= 0.8, (name, layer, key, close.float().mean())
                else:
                    assert value == b[layer][key], (name, layer, key)
    assert (tmp_path / "two" / "index.html").is_file()
