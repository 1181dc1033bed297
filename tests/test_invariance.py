"""Invariance (Fig. 5): the transforms against plain references (exact row
shifts, rot90, bilinear sampling written out), the distances and probabilities
against a plain forward of each transformed image, the identity, bad
arguments, the saved result and its report section, and the paper's claims on
the trained demo model."""

import math
from collections import OrderedDict

import pytest
import torch
from torch import nn

import zfcore
from zfcore.analysis.invariance import (EMBEDDED_ROTATION_SYMMETRIC, Invariance, default_sweeps, example_images,
                                        invariance, transform_images)
from zfcore.load import Dataset, Subject, embedded_dataset
from zfcore.report.pages.invariance import render

from .helpers import untrained_subject


def tiny_model(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(OrderedDict([
        ("conv1", nn.Conv2d(3, 4, 3, stride=2)), ("relu1", nn.ReLU()), ("pool1", nn.MaxPool2d(2)),
        ("flatten", nn.Flatten()), ("fc2", nn.Linear(4 * 3 * 3, 8)), ("relu2", nn.ReLU()), ("fc3", nn.Linear(8, 5)),
    ])).eval()


def random_images(n: int = 4, h: int = 15, w: int = 15, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, h, w), generator=g, dtype=torch.uint8)


def preprocess(x: torch.Tensor) -> torch.Tensor:
    return (x.float() - 120.0) / 64.0


@pytest.mark.parametrize("fill", ["image_mean", 17.5])
@pytest.mark.parametrize("k", [-16, -15, -4, -1, 0, 1, 3, 14, 15, 40])
def test_translation_moves_the_content_by_exactly_k_rows(k, fill):
    images = random_images(n=3, h=15, w=9)
    out = transform_images(images, "translation", k, fill)
    assert out.dtype == torch.float32 and out.shape == images.shape
    means = images.double().mean(dim=(2, 3))
    for n in range(3):
        for c in range(3):
            for row in range(15):
                source = row - k
                if 0 <= source < 15:
                    expected = images[n, c, source].float()
                else:
                    value = float(means[n, c]) if fill == "image_mean" else fill
                    expected = torch.full((9,), value, dtype=torch.float32)
                torch.testing.assert_close(out[n, c, row], expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("size", [8, 9])
@pytest.mark.parametrize("degrees,quarter_turns", [(90, 1), (180, 2), (270, 3), (-90, 3), (360, 0)])
def test_quarter_rotations_equal_rot90(degrees, quarter_turns, size):
    """Counterclockwise as displayed: 90 degrees is torch.rot90(k=1) on (H, W)."""
    images = random_images(n=2, h=size, w=size).float()
    out = transform_images(images, "rotation", degrees, fill=0.0)
    torch.testing.assert_close(out, torch.rot90(images, quarter_turns, dims=(2, 3)), atol=2e-3, rtol=0)


def plain_affine(images: torch.Tensor, source_of, fill: float) -> torch.Tensor:
    """Bilinear sampling written out in float64: output pixel (x, y) (centre-relative,
    y down, pixel units) takes the input at ``source_of(x, y)``; outside pixels
    weigh as ``fill``."""
    n, c, h, w = images.shape
    x = images.double()
    out = torch.empty(n, c, h, w, dtype=torch.float64)
    for i in range(h):
        for j in range(w):
            sx, sy = source_of(j + 0.5 - w / 2, i + 0.5 - h / 2)
            u, v = sx + w / 2 - 0.5, sy + h / 2 - 0.5          # input pixel coordinates
            j0, i0 = math.floor(u), math.floor(v)
            value = torch.zeros(n, c, dtype=torch.float64)
            for di, wy in ((0, 1 - (v - i0)), (1, v - i0)):
                for dj, wx in ((0, 1 - (u - j0)), (1, u - j0)):
                    ii, jj = i0 + di, j0 + dj
                    pixel = x[:, :, ii, jj] if 0 <= ii < h and 0 <= jj < w else torch.full((n, c), fill)
                    value += wy * wx * pixel
            out[:, :, i, j] = value
    return out


@pytest.mark.parametrize("kind,value", [("scale", 1.3), ("scale", 0.75), ("rotation", 30.0), ("rotation", -110.0)])
def test_scale_and_rotation_equal_plain_bilinear_sampling(kind, value):
    images = random_images(n=2, h=9, w=12, seed=3)                     # not square: the aspect ratio matters
    if kind == "scale":
        def source_of(x, y):
            return x / value, y / value
    else:
        cos, sin = math.cos(math.radians(value)), math.sin(math.radians(value))

        def source_of(x, y):
            return cos * x - sin * y, sin * x + cos * y
    out = transform_images(images, kind, value, fill=50.0)
    torch.testing.assert_close(out.double(), plain_affine(images, source_of, 50.0), atol=2e-2, rtol=0)


def plain_forward(model: nn.Sequential, x: torch.Tensor, layers) -> tuple[dict, torch.Tensor]:
    outputs = {}
    for name, module in model.named_children():
        x = module(x)
        if name in layers:
            outputs[name] = x.flatten().double()
    return outputs, x[0].double().softmax(0)


def test_distances_and_probabilities_equal_a_plain_computation():
    model, images = tiny_model(), random_images(n=5)
    labels = torch.tensor([0, 3, 1, 4, 2])
    layers = ["relu1", "fc3"]
    sweeps = {"translation": (-3, 0, 2), "scale": (0.8, 1.0, 1.25), "rotation": (0, 45, 200)}
    result = invariance(model, images, labels, preprocess=preprocess, layers=layers, translations=sweeps["translation"],
                        scales=sweeps["scale"], rotations=sweeps["rotation"], batch_size=2, progress=False)
    assert result.transforms == ["translation", "scale", "rotation"]
    with torch.no_grad():
        for kind, values in sweeps.items():
            assert result.values[kind].tolist() == [float(v) for v in values]
            for j, value in enumerate(values):
                for n in range(5):
                    original, p0 = plain_forward(model, preprocess(images[n:n + 1]), layers)
                    moved = transform_images(images[n:n + 1], kind, value)
                    changed, p = plain_forward(model, preprocess(moved), layers)
                    for name in layers:
                        expected = (changed[name] - original[name]).norm() / original[name].norm()
                        got = result.distances[kind][name][j, n]
                        assert math.isclose(got, expected, rel_tol=1e-5, abs_tol=1e-7), (kind, value, n, name)
                    assert math.isclose(result.probabilities[kind][j, n], p[labels[n]], rel_tol=1e-5, abs_tol=1e-7)
                    assert int(result.predictions[kind][j, n]) == int(p.argmax())
                    assert math.isclose(result.original_probabilities[n], p0[labels[n]], rel_tol=1e-5)


def test_identity_gives_distance_zero_and_the_original_probability():
    model, images = tiny_model(), random_images(n=3)
    labels = torch.tensor([1, 2, 0])
    result = invariance(model, images, labels, preprocess=preprocess, layers=["relu1", "relu2"],
                        translations=(0, 1), scales=(1.0, 2.0), rotations=(0, 10), progress=False)
    for kind in result.transforms:
        for name in result.layers:
            assert result.distances[kind][name][0].tolist() == [0.0, 0.0, 0.0]
            assert bool((result.distances[kind][name][1] > 0).all())
        assert torch.equal(result.probabilities[kind][0], result.original_probabilities)
    with torch.no_grad():
        expected = model(preprocess(images)).double().softmax(1)[torch.arange(3), labels]
    torch.testing.assert_close(result.original_probabilities, expected, atol=1e-6, rtol=1e-6)


def test_distance_is_nan_where_only_the_transformed_features_are_nonzero():
    """Relative to a zero vector the distance is undefined (NaN); no change is 0."""
    model = tiny_model()
    with torch.no_grad():
        model.conv1.weight.fill_(1.0)
        model.conv1.bias.fill_(-1.0)               # relu1 is zero on a black image, not on white rows
    black = torch.zeros(2, 3, 15, 15, dtype=torch.uint8)
    result = invariance(model, black, [0, 1], preprocess=lambda x: x / 255, layers=["relu1", "fc3"],
                        translations=(0, 3), scales=(), rotations=(), fill=255.0, progress=False)
    assert result.transforms == ["translation"]
    assert result.distances["translation"]["relu1"][0].tolist() == [0.0, 0.0]
    assert bool(result.distances["translation"]["relu1"][1].isnan().all())
    assert bool((result.distances["translation"]["fc3"][1] > 0).all())


def test_default_sweeps_scale_with_the_image():
    sweeps = default_sweeps(64)
    assert sweeps["translation"] == (-16, -12, -8, -4, -2, -1, 0, 1, 2, 4, 8, 12, 16)
    assert 1.0 in sweeps["scale"] and sweeps["rotation"][0] == 0 and sweeps["rotation"][-1] == 360
    assert max(default_sweeps(224)["translation"]) == 56


def test_bad_arguments_name_the_argument():
    model, images, labels = tiny_model(), random_images(n=2), [0, 1]

    def run(**kwargs):
        args = {"model": model, "images": images, "labels": labels, "preprocess": preprocess, "layers": ["relu1"],
                "translations": (0, 1), "scales": (1.0,), "rotations": (0.0,), "progress": False}
        args.update(kwargs)
        return invariance(args.pop("model"), args.pop("images"), args.pop("labels"), **args)

    with pytest.raises(ValueError, match="no layer named 'conv7'"):
        run(layers=["conv7"])
    with pytest.raises(ValueError, match=r"images must be a non-empty Tensor\[N, C, H, W\]"):
        run(images=images[0])
    with pytest.raises(ValueError, match=r"labels must be an integer Tensor\[2\]"):
        run(labels=[0, 1, 2])
    with pytest.raises(ValueError, match=r"labels must be an integer Tensor\[2\]"):
        run(labels=torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="labels holds class 9, outside the model's 5 classes"):
        run(labels=[0, 9])
    with pytest.raises(ValueError, match="translations must be whole pixels"):
        run(translations=(1.5,))
    with pytest.raises(ValueError, match="scales must be > 0"):
        run(scales=(0.0,))
    with pytest.raises(ValueError, match="rotation values must be finite"):
        run(rotations=(float("nan"),))
    with pytest.raises(ValueError, match="translation values must be a sequence"):
        run(translations=3)
    with pytest.raises(ValueError, match="fill must be 'image_mean' or a"):
        run(fill="edge")
    with pytest.raises(ValueError, match="every sweep is empty"):
        run(translations=(), scales=(), rotations=())
    with pytest.raises(ValueError, match="preprocess must be callable"):
        run(preprocess=3)
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        run(batch_size=0)
    with pytest.raises(ValueError, match="transform must be one of"):
        transform_images(images, "shear", 1.0)


def test_result_saves_and_renders(tmp_path):
    model, images = tiny_model(), random_images(n=4)
    result = invariance(model, images, [0, 1, 2, 0], preprocess=preprocess, layers=["relu1", "relu2"],
                        translations=(-2, -1, 0, 1, 2), scales=(0.9, 1.0, 1.1), rotations=(0, 90, 180, 360),
                        classes=["circle", "<b>x</b>", "ring"], rotation_symmetric=[0, 2], progress=False)
    path = tmp_path / "invariance.pt"
    torch.save(result.as_dict(), path)
    back = Invariance.from_dict(torch.load(path, weights_only=True))
    assert back.layers == result.layers and back.classes == result.classes
    assert torch.equal(back.distances["scale"]["relu2"], result.distances["scale"]["relu2"])
    section = render(back, tmp_path / "assets")
    assert [f["file"] for f in section["figures"]] == ["invariance_curves.png", "invariance_examples.png"]
    for figure in section["figures"]:
        assert (tmp_path / "assets" / figure["file"]).stat().st_size > 1000
    assert [row[0] for row in section["tables"][0]["rows"]] == ["translation", "scale", "rotation"]
    assert len(section["claims"]) == 4 and all(isinstance(c["holds"], bool) for c in section["claims"])


class Lookup(nn.Module):
    """Predicts the class written in each image's first pixel."""

    def forward(self, x):
        return nn.functional.one_hot(x[:, 0, 0, 0].round().long(), 4).float()


def test_example_images_are_the_first_correctly_classified_per_class():
    predicted = torch.tensor([0, 1, 1, 2, 1, 3, 1, 1, 0, 2, 2, 0])
    labels = torch.tensor([0, 1, 2, 2, 1, 3, 1, 1, 0, 2, 2, 1])
    images = torch.randint(0, 256, (12, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    images[:, 0, 0, 0] = predicted.to(torch.uint8)
    subject = Subject(Lookup(), ["a", "b", "c", "d"], (3, 8, 8), torch.zeros(3, 8, 8), 1.0, None, {})
    dataset = Dataset(images, labels, ["a", "b", "c", "d"])
    for per_class, correct_only in ((1, True), (2, True), (5, True), (2, False)):
        chosen, taken = [], {}
        for i in range(12):  # the rule written out
            label = int(labels[i])
            if (not correct_only or int(predicted[i]) == label) and taken.get(label, 0) < per_class:
                chosen.append(i)
                taken[label] = taken.get(label, 0) + 1
        got, got_labels = example_images(subject, dataset, per_class, correct_only=correct_only)
        assert torch.equal(got, images[chosen]) and torch.equal(got_labels, labels[chosen]), (per_class, correct_only)
    with pytest.raises(ValueError, match="per_class must be a positive int"):
        example_images(subject, dataset, 0)


def test_run_sweeps_the_first_correct_image_per_class(monkeypatch, tmp_path):
    """``run`` (zfcore analyze invariance, quick): one correctly classified image
    per class, the default sweeps, the dataset's rotation-symmetric classes."""
    from zfcore.analysis.invariance import ANALYSIS, run
    from zfcore.data.synthetic import CLASSES

    subject = untrained_subject(monkeypatch, tmp_path)
    dataset = embedded_dataset(subject)
    assert ANALYSIS.refusal(subject, dataset) is None
    result, extra = run(subject, dataset, quick=True, progress=False, seed=0)
    images, labels = example_images(subject, dataset, per_class=1)
    assert extra == {} and torch.equal(result.images, images) and torch.equal(result.labels, labels)
    assert result.layers == ["relu1", "relu7"] and result.transforms == ["translation", "scale", "rotation"]
    assert result.classes == list(CLASSES)
    assert result.rotation_symmetric == [CLASSES.index(name) for name in EMBEDDED_ROTATION_SYMMETRIC]
    assert result.values["translation"].tolist() == [float(v) for v in default_sweeps(64)["translation"]]
    page = render(result.to_plain(), tmp_path / "assets")
    assert all((tmp_path / "assets" / f["file"]).is_file() for f in page["figures"])


@pytest.fixture(scope="module")
def demo_invariance(demo_folder):
    out, _ = demo_folder
    loaded = zfcore.load(out / "run" / "model.pt")
    images, labels = example_images(loaded, embedded_dataset(loaded), per_class=4)
    symmetric = [loaded.classes.index(name) for name in EMBEDDED_ROTATION_SYMMETRIC]
    result = invariance(loaded.model, images, labels, preprocess=loaded.preprocess, classes=loaded.classes,
                        rotation_symmetric=symmetric, progress=False)
    print(f"invariance on {len(labels)} images: {result.seconds:.1f} s")
    return result


def test_small_shifts_and_scalings_change_layer1_far_more_than_layer7(demo_invariance):
    """Fig. 5 a2/b2 against a3/b3: at the smallest shift (1 px) and scaling
    (0.95, 1.05), relu1's normalized distance is several times relu7's."""
    result = demo_invariance
    for kind, nearest in (("translation", (-1.0, 1.0)), ("scale", (0.95, 1.05))):
        at = [result.values[kind].tolist().index(v) for v in nearest]
        first = float(result.distances[kind]["relu1"][at].median())
        top = float(result.distances[kind]["relu7"][at].median())
        print(kind, round(first, 3), round(top, 3))
        assert first > 2 * top, kind


def test_rotation_changes_the_output_more_than_small_translations(demo_invariance):
    """The true class's probability falls more, on average over the images of
    rotation-asymmetric classes, under rotation (every non-trivial angle) than
    under translations of up to 1/8 of the image. The exception the paper finds
    for rotation-symmetric objects is not asserted: the embedded data shows
    every class at random angles, so the network is close to rotation invariant
    for all classes and circles and rings stand out in no consistent way."""
    result = demo_invariance
    symmetric = torch.tensor([int(label) in result.rotation_symmetric for label in result.labels])
    p0 = result.original_probabilities[~symmetric]
    angles = result.values["rotation"] % 360 != 0
    shifts = (result.values["translation"] != 0) & (result.values["translation"].abs() <= 8)
    rotation_fall = float((p0 - result.probabilities["rotation"][angles][:, ~symmetric]).mean())
    shift_fall = float((p0 - result.probabilities["translation"][shifts][:, ~symmetric]).mean())
    print("mean fall of P(true): rotation", round(rotation_fall, 4), "small translations", round(shift_fall, 4))
    assert rotation_fall > shift_fall
