"""zfcore.load, the analyses behind the report (projections, activations, dead
units, filters) against plain references, and the report itself in a real
browser, with hostile class names."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import zfcore
from tests import browser
from zfcore.analysis import activations, dead_units, filters, high_frequency_fraction, top_k, top_k_projections
from zfcore.data import SyntheticShapes
from zfcore.deconv import Deconvnet, Request
from zfcore.models import zfnet_small
from zfcore.report import display_signed, render
from zfcore.visualize import visualize

ROOT = Path(__file__).resolve().parents[1]
HOSTILE = ["<img src=x onerror=alert(1)>", "a\"b'c&d", "x <b>bold</b>"]
# "/" separates folders: the third makes a class folder "x <b>bold<" holding a subfolder "b>"
CLASS_NAMES = ["<img src=x onerror=alert(1)>", "a\"b'c&d", "x <b>bold<"]


def he_model(classes: int = 10, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    model = zfnet_small(classes, input_size=64)
    for m in model.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            nn.init.normal_(m.bias, std=0.05)
    return model.eval()


def write_model_file(path: Path, classes: list[str], seed: int = 0, per_class: int = 10) -> Path:
    """A model.pt in the format zfcore train writes (only tensors, numbers, strings)."""
    model = he_model(len(classes), seed)
    mean = torch.linspace(90, 150, 3 * 64 * 64).reshape(3, 64, 64)
    config = {"model": "zfnet_small", "width": None, "fc_width": None, "image_size": 64, "dropout": 0.5,
              "seed": seed, "per_class": per_class, "data": "synthetic"}
    torch.save({"zfcore": 1, "model": model.state_dict(), "config": config, "classes": classes,
                "preprocess": {"mean": mean, "scale": 1 / 64, "crop": 64, "resize": None}}, path)
    return path


class Prepared(torch.utils.data.Dataset):
    def __init__(self, n: int = 12):
        self.base = SyntheticShapes("val", seed=3, size=64, per_class=max(1, n // 10), cache=False)
        self.n = min(n, len(self.base))

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        image, label = self.base[i]
        return (image.float() - 120) / 64, label


# ------------------------------------------------------------------ load


def test_load_round_trip(tmp_path):
    path = write_model_file(tmp_path / "model.pt", list(SyntheticShapes.classes))
    loaded = zfcore.load(path)
    assert not loaded.model.training
    assert loaded.input_shape == (3, 64, 64) and loaded.classes == list(SyntheticShapes.classes)
    reference = he_model()
    for (name, a), (_, b) in zip(loaded.model.state_dict().items(), reference.state_dict().items()):
        assert torch.equal(a, b), name
    image = torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8)
    x = loaded.preprocess(image)
    assert torch.allclose(x, (image.float() - loaded.mean) / 64)
    assert torch.equal(loaded.deprocess(x), image)
    assert zfcore.load(tmp_path).path == path  # a run folder holding model.pt


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


MARKER = "/tmp/zfcore-load-test-marker"


def test_load_refuses_what_is_not_a_zfcore_model(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        zfcore.load(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a model at all")
    with pytest.raises(ValueError, match="junk.pt.*not a zfcore model"):
        zfcore.load(tmp_path / "junk.pt")
    # code in a pickle is never run
    Path(MARKER).unlink(missing_ok=True)
    torch.save({"model": _Evil(), "config": {}}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="evil.pt.*never unpickled"):
        zfcore.load(tmp_path / "evil.pt")
    assert not Path(MARKER).exists()
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="other.pt.*no 'model' and 'config'"):
        zfcore.load(tmp_path / "other.pt")
    state = torch.load(write_model_file(tmp_path / "m.pt", ["a", "b"]), weights_only=True)
    state["classes"] = ["a", "b", "c"]  # weights of a 2-class model
    torch.save(state, tmp_path / "wrong.pt")
    with pytest.raises(ValueError, match="wrong.pt.*do not fit"):
        zfcore.load(tmp_path / "wrong.pt")
    with pytest.raises(ValueError, match="folder without a model.pt"):
        zfcore.load(tmp_path / "empty_dir") if (tmp_path / "empty_dir").mkdir() is None else None


# ------------------------------------------------------------------ analyses


def test_projections_equal_the_engine_and_patches_are_the_boxes():
    model, data = he_model(), Prepared(12)
    found = top_k(model, data, ["conv1", "conv2", "conv5"], k=3, batch_size=5, progress=False)
    projected = top_k_projections(model, data, found, batch_size=7, progress=False)
    net = Deconvnet(model, (3, 64, 64))
    spec = net.layer_spec()
    checked = 0
    for layer, t in found.items():
        p = projected[layer]
        for c in range(0, t.channels, 5):
            for j in range(t.values.shape[1]):
                i, (h, w) = int(t.images[c, j]), t.positions[c, j].tolist()
                image = data[i][0]
                full = net.project_many(image[None], [Request(0, layer, c, (h, w))], crop=False)[0]
                top, left, bottom, right = spec.box(layer, h, w)
                assert p.boxes[c, j].tolist() == [top, left, bottom, right]
                rows, cols = p.inside(c, j)
                assert p.windows[c, j].tolist() == [top - rows.start, left - cols.start]
                # the receptive field, or the image's extent along a dimension the field spans
                assert p.projections.shape[-2:] == tuple(e if s >= e else s for s, e in zip(spec[layer].size, (64, 64)))
                torch.testing.assert_close(p.projections[c, j, :, rows, cols], full[:, top:bottom, left:right],
                                           rtol=1e-5, atol=1e-6)
                outside_window = p.projections[c, j].clone()
                outside_window[:, rows, cols] = 0
                assert outside_window.abs().max() == 0
                outside = full.clone()
                outside[:, top:bottom, left:right] = 0
                assert outside.abs().max() == 0             # nothing outside the receptive field
                assert full.abs().max() > 0                 # and something inside it
                assert torch.equal(p.patches[c, j, :, rows, cols], image[:, top:bottom, left:right])
                checked += 1
    assert checked > 30


def test_activations_dead_units_and_filters_against_plain_references():
    model, data = he_model(), Prepared(12)
    with torch.no_grad():
        model.conv2.bias[3] = -1e6                      # map 3 of relu2 never fires
    image = data[4][0]
    acts = activations(model, image, ["relu1", "pool2", "fc7"])
    x, expected = image[None], {}
    for name, module in model.named_children():
        x = module(x)
        expected[name] = x[0]
    for name in ("relu1", "pool2", "fc7"):
        assert torch.equal(acts.maps[name], expected[name].detach())
    dead = dead_units(model, data, ["relu1", "relu2"], batch_size=5, progress=False)
    outs = [activations(model, data[i][0], ["relu2"]).maps["relu2"] for i in range(len(data))]
    stacked = torch.stack(outs)
    zero = (stacked.flatten(2) == 0).all(2).double().mean(0).float()
    torch.testing.assert_close(dead["relu2"].zero_fraction, zero)
    torch.testing.assert_close(dead["relu2"].mean, stacked.double().mean(dim=(0, 2, 3)).float())
    assert 3 in dead["relu2"].dead and dead["relu2"].zero_fraction[3] == 1
    assert len(dead["relu2"].dead) < 64
    f = filters(model, "conv1")
    assert f.rgb and f.weights.shape == (24, 3, 7, 7)
    # a smooth blob scores low, white noise high
    yy, xx = torch.meshgrid(torch.arange(7.0), torch.arange(7.0), indexing="ij")
    blob = torch.exp(-((yy - 3) ** 2 + (xx - 3) ** 2) / 8).expand(1, 3, 7, 7)
    noise = torch.randn(1, 3, 7, 7, generator=torch.Generator().manual_seed(0))
    assert high_frequency_fraction(blob) < 0.05 < 0.4 < high_frequency_fraction(noise)
    with pytest.raises(ValueError, match="'relu1' is a ReLU, not a Conv2d"):
        filters(model, "relu1")
    with pytest.raises(ValueError, match="no layer named 'conv7'"):
        activations(model, image, ["conv7"])


def test_display_keeps_grey_at_zero_and_each_projection_scaled_by_its_peak():
    x = torch.zeros(2, 3, 4, 4)
    x[0, 0, 1, 1], x[0, 1, 2, 2] = 2.0, -1.0
    shown = display_signed(x)
    assert shown[0, 0, 1, 1] == 255 and shown[0, 1, 2, 2] == 128 - 64 and shown[0, 2, 0, 0] == 128
    assert (shown[1] == 128).all()


# ------------------------------------------------------------------ report


def _folder_dataset(root: Path) -> Path:
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for c, name in enumerate(HOSTILE):
        folder = root / name
        folder.mkdir(parents=True)
        for i in range(4):
            size = (50 + 13 * i, 90 - 7 * i)
            pixels = torch.randint(0, 256, (size[1], size[0], 3), generator=g, dtype=torch.uint8).numpy()
            image = Image.fromarray(pixels)
            image = [image, image.convert("RGBA"), image.convert("L"), image][i]
            image.save(folder / f"{i}.png")
    (root / HOSTILE[0] / "broken.png").write_bytes(b"\x89PNG not really")
    return root


def _files(root: Path) -> set[str]:
    return {os.fspath(p.relative_to(root)) for p in root.rglob("*")}


@pytest.mark.skipif(browser.available() is not None, reason=str(browser.available()))
def test_report_in_a_real_browser_with_hostile_class_names(tmp_path):
    data = _folder_dataset(tmp_path / "data")
    checkpoint = write_model_file(tmp_path / "model.pt", CLASS_NAMES)
    before = _files(tmp_path)
    out = tmp_path / "report"
    index = visualize(checkpoint, os.fspath(data), out, k=4, batch_size=5, progress=False)
    assert index == out / "index.html"
    created = _files(tmp_path) - before
    assert created and all(p == "report" or p.startswith("report" + os.sep) for p in created)
    meta = json.loads((out / "results" / "meta.json").read_text())
    assert meta["skipped"] == 1 and meta["images"] == 12
    found = browser.check_report(out, screenshot=tmp_path / "index.png")
    assert found["dialogs"] == []                                   # no script ran
    assert set(found["pages"]) >= {"index.html", "activations.html", "filters.html", "dead_units.html",
                                   "layer-01-conv1.html", "layer-05-conv5.html"}
    assert {page: problems for page, problems in found["pages"].items() if problems} == {}
    assert (tmp_path / "index.png").stat().st_size > 10_000
    html = (out / "index.html").read_text()
    assert meta["classes"] == sorted(CLASS_NAMES)
    for name in CLASS_NAMES:
        assert name not in html                                      # never raw
    assert "&lt;img src=x onerror=alert(1)&gt;" in html and "a&#34;b&#39;c&amp;d" in html
    text = _page_text(out / "index.html")
    for name in CLASS_NAMES:
        assert name in text                                          # shown as text
    # re-rendered from the saved results, without the model or the data
    checkpoint.unlink()
    for page in out.glob("*.html"):
        page.unlink()
    assert render(out, progress=False) == index
    assert (out / "layer-02-conv2.html").is_file()


def _page_text(path: Path) -> str:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=browser.CHROMIUM, args=browser.ARGS)
        page = b.new_page()
        page.goto(path.as_uri())
        text = page.inner_text("body")
        b.close()
    return text


def test_cli_errors_name_the_argument(tmp_path):
    def run(*args):
        return subprocess.run([sys.executable, "-m", "zfcore", *args], capture_output=True, text=True, cwd=tmp_path,
                              timeout=120)

    write_model_file(tmp_path / "model.pt", list(SyntheticShapes.classes))
    r = run("visualize", "--checkpoint", "model.pt", "--layers", "conv9", "--out", "r")
    assert r.returncode == 2 and "zfcore visualize: no layer named 'conv9'" in r.stderr
    assert not (tmp_path / "r").exists()
    r = run("visualize", "--checkpoint", "model.pt", "--k", "0")
    assert r.returncode == 2 and "--k must be a positive integer" in r.stderr
    r = run("visualize", "--checkpoint", "nope.pt")
    assert r.returncode == 2 and "nope.pt' does not exist" in r.stderr
    r = run("visualize", "--checkpoint", "model.pt", "--data", "no-such-folder")
    assert r.returncode == 2 and "no-such-folder" in r.stderr
    r = run("report", "--from", "nothing-here")
    assert r.returncode == 2 and "holds no saved results" in r.stderr
