"""``zfcore.load`` on the models people have: built-in architectures with a
``state_dict`` (bare, nested, prefixed, ``.safetensors``), the number of classes
from the file, strict errors, hostile files that never run, ``.pt2`` programs,
``Preprocess`` against a hand computation, class files, image folders."""

from __future__ import annotations

import io
import json
import os
import pickle
import shutil
import zipfile
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from zfcore.data import IMAGENET_MEAN, IMAGENET_STD, Preprocess
from zfcore.load import folder_dataset, load, read_weights
from zfcore.models import alexnet_torchvision, resnet18

PHOTOS = Path(__file__).parent / "fixtures" / "photos"


@pytest.fixture(scope="module")
def r18_37() -> dict:
    torch.manual_seed(0)
    return resnet18(37).state_dict()


# ----------------------------------------------------------------- Preprocess


def test_imagenet_preprocess_by_hand():
    g = torch.Generator().manual_seed(0)
    prep = Preprocess.imagenet()
    # short side already 256: no resize, the centre 224 (rows 16.., cols round((300 - 224) / 2) = 38..)
    image = torch.randint(0, 256, (3, 256, 300), dtype=torch.uint8, generator=g)
    expected = torch.empty(3, 224, 224)
    for c in range(3):
        for i in range(224):
            row = image[c, 16 + i, 38:262].double()
            expected[c, i] = ((row / 255 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]).float()
    assert torch.allclose(prep(image), expected, atol=1e-5)
    # a larger image: short side to 256 (bilinear, antialiased), long side 600 * 256 / 512 = 300, rounded to uint8
    big = torch.randint(0, 256, (3, 512, 600), dtype=torch.uint8, generator=g)
    resized = F.interpolate(big[None].float(), size=(256, 300), mode="bilinear", antialias=True,
                            align_corners=False)[0].round().clamp(0, 255).to(torch.uint8)
    assert torch.equal(prep.geometry(big), resized[:, 16:240, 38:262])
    # a uniform image stays uniform through the resize: its value is (v / 255 - mean) / std exactly
    flat = torch.full((3, 400, 500), 200, dtype=torch.uint8)
    for c in range(3):
        assert torch.allclose(prep(flat)[c], torch.tensor((200 / 255 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]),
                              atol=1e-6)
    # an image already at the model's size is taken as it is; a batch goes through at once
    exact = torch.randint(0, 256, (2, 3, 224, 224), dtype=torch.uint8, generator=g)
    assert torch.equal(prep.geometry(exact), exact)
    assert torch.equal(prep.invert(prep(exact)), exact)


def test_explicit_and_run_preprocess():
    prep = Preprocess(size=32, resize=None, mean=(0.5, 0.5, 0.5), std=0.25, scale=1 / 255)
    image = torch.randint(0, 256, (3, 40, 36), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    x = prep(image)
    assert torch.allclose(x, (image[:, 4:36, 2:34].float() / 255 - 0.5) / 0.25, atol=1e-6)
    gain, offset = prep.affine()
    assert torch.allclose(x * gain + offset, image[:, 4:36, 2:34].float(), atol=1e-3)
    mean = torch.rand(3, 40, 40) * 255
    run = Preprocess.run(mean, 1 / 64, None, 32)
    assert torch.allclose(run(image[:, :32, :32]), (image[:, :32, :32].float() - mean[:, 4:36, 4:36]) / 64)
    with pytest.raises(ValueError, match="smaller than the model's 32x32"):
        prep(torch.zeros(3, 20, 40, dtype=torch.uint8))
    for bad, match in (({"size": 0}, "size must be a positive int"), ({"std": (1, 0, 1)}, "std must be"),
                       ({"mean": (1, 2)}, "mean must be one or three"), ({"resize": 10}, "resize .10. must be at least"),
                       ({"scale": float("nan")}, "scale must be")):
        with pytest.raises(ValueError, match=match):
            Preprocess(**{"size": 32, "resize": None, **bad})
    with pytest.raises(ValueError, match="image must be a Tensor"):
        prep(torch.zeros(4, 40, 40, dtype=torch.uint8))


# ----------------------------------------------------------------- weights


def test_weights_forms_and_classes_from_the_file(tmp_path, r18_37):
    x = torch.randn(2, 3, 64, 64)
    reference = resnet18(37)
    reference.load_state_dict(r18_37)
    expected = reference.eval()(x)
    nested = {"state_dict": {f"module.{k}": v for k, v in r18_37.items()}, "epoch": 3}
    files = {"bare.pth": r18_37, "nested.pt": nested, "model.bin": {"model": {f"model.{k}": v for k, v in
                                                                            r18_37.items()}}}
    for name, content in files.items():
        torch.save(content, tmp_path / name)
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in r18_37.items()}, tmp_path / "w.safetensors")
    (tmp_path / "classes.txt").write_text("\n".join(f"breed {i}" for i in range(37)) + "\n\n")
    for name in [*files, "w.safetensors"]:
        subject = load("resnet18", weights=tmp_path / name, classes=tmp_path / "classes.txt")
        assert len(subject.classes) == 37 and subject.classes[36] == "breed 36"
        assert not subject.model.training and subject.input_shape == (3, 224, 224)
        assert torch.equal(subject.model(x), expected), name
    assert load("resnet18", weights=tmp_path / "bare.pth").classes[:2] == ["class 0", "class 1"]
    (tmp_path / "few.txt").write_text("a\nb\n")
    with pytest.raises(ValueError, match="classes has 2 names; resnet18 has 37 outputs"):
        load("resnet18", weights=tmp_path / "bare.pth", classes=tmp_path / "few.txt")


def test_weights_that_do_not_fit(tmp_path, r18_37):
    torch.save(alexnet_torchvision(10).state_dict(), tmp_path / "alex.pth")
    with pytest.raises(ValueError, match=r"do not fit resnet18 .*missing keys: conv1\.weight.*unexpected keys: "
                                         r"features\.0\.weight"):
        load("resnet18", weights=tmp_path / "alex.pth")
    shapes = dict(r18_37)
    shapes["layer2.0.conv1.weight"] = torch.zeros(128, 64, 5, 5)
    torch.save(shapes, tmp_path / "shapes.pth")
    with pytest.raises(ValueError, match=r"shape mismatches: layer2\.0\.conv1\.weight \(128, 64, 5, 5\) "
                                         r"\(expected \(128, 64, 3, 3\)\)"):
        load("resnet18", weights=tmp_path / "shapes.pth")
    torch.save(r18_37, tmp_path / "full.pth")
    data = (tmp_path / "full.pth").read_bytes()
    (tmp_path / "truncated.pth").write_bytes(data[:len(data) // 3])
    with pytest.raises(ValueError, match="truncated.pth' is not a state_dict file"):
        load("resnet18", weights=tmp_path / "truncated.pth")
    (tmp_path / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(ValueError, match="unreadable safetensors"):
        load("resnet18", weights=tmp_path / "bad.safetensors")
    torch.save({"weight": torch.zeros(2), "note": "text"}, tmp_path / "mixed.pth")
    with pytest.raises(ValueError, match="entries that are not tensors: 'note'"):
        read_weights(tmp_path / "mixed.pth")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load("resnet18", weights=tmp_path / "nowhere.pth")
    with pytest.raises(ValueError, match=r"unknown architecture 'resnet19'; built in: alexnet, vgg11, .*resnet18"):
        load("resnet19")


class _Payload:
    """Unpickling this would write a file: the proof that code ran."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "ran"))


def test_a_pickle_payload_never_runs(tmp_path):
    marker = tmp_path / "marker"
    state = {"conv1.weight": torch.zeros(1), "payload": _Payload(str(marker))}
    torch.save(state, tmp_path / "evil.pth")
    with open(tmp_path / "evil.pkl.pth", "wb") as f:  # a bare pickle, not a torch zip
        pickle.dump(state, f)
    for name in ("evil.pth", "evil.pkl.pth"):
        with pytest.raises(ValueError, match="is not a state_dict file"):
            load("resnet18", weights=tmp_path / name)
        assert not marker.exists()


# ----------------------------------------------------------------- exported programs


def _export(model, path: Path, dynamic: bool = True) -> None:
    example = (torch.randn(2, 3, 64, 64),)
    shapes = ({0: torch.export.Dim("batch")},) if dynamic else None
    torch.export.save(torch.export.export(model.eval(), example, dynamic_shapes=shapes), path)


def test_pt2_loads_and_hostile_archives_are_refused(tmp_path, r18_37):
    model = resnet18(37)
    model.load_state_dict(r18_37)
    _export(model, tmp_path / "r18.pt2")
    subject = load(tmp_path / "r18.pt2")
    assert subject.input_shape == (3, 64, 64) and len(subject.classes) == 37 and subject.kind == "exported"
    x = torch.randn(3, 3, 64, 64)
    assert torch.allclose(subject.model(x), model.eval()(x), atol=1e-5)
    assert "layer4.1" in dict(subject.model.named_modules())

    _export(model, tmp_path / "static.pt2", dynamic=False)
    with pytest.raises(ValueError, match="exported for batches of exactly 2 image.*dynamic_shapes"):
        load(tmp_path / "static.pt2")

    # the same archive with one weight marked as pickled: refused before torch.export.load looks at it
    marker = tmp_path / "marker"
    with zipfile.ZipFile(tmp_path / "r18.pt2") as source, zipfile.ZipFile(tmp_path / "evil.pt2", "w") as target:
        for item in source.infolist():
            data = source.read(item.filename)
            if item.filename.endswith("model_weights_config.json"):
                config = json.loads(data)
                first = next(iter(config["config"]))
                config["config"][first]["use_pickle"] = True
                data = json.dumps(config).encode()
            if item.filename.endswith("sample_inputs/model.pt"):
                buffer = io.BytesIO()
                torch.save({"x": _Payload(str(marker))}, buffer)
                data = buffer.getvalue()
            target.writestr(item, data)
    with pytest.raises(ValueError, match="not a plain torch.export archive"):
        load(tmp_path / "evil.pt2")
    assert not marker.exists()
    (tmp_path / "junk.pt2").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a zip archive"):
        load(tmp_path / "junk.pt2")


# ----------------------------------------------------------------- folders


def test_folder_dataset_decodes_every_kind_of_file(tmp_path):
    root = tmp_path / "photos"
    for name in ("animal", "person", "other"):
        (root / name).mkdir(parents=True)
    shutil.copy(PHOTOS / "chelsea.jpg", root / "animal")
    shutil.copy(PHOTOS / "logo.png", root / "animal")        # RGBA
    shutil.copy(PHOTOS / "camera.png", root / "person")      # greyscale
    shutil.copy(PHOTOS / "astronaut.jpg", root / "person")
    shutil.copy(PHOTOS / "hubble.webp", root / "other")
    shutil.copy(PHOTOS / "color.bmp", root / "other")        # 120 px: smaller than the crop, resized up
    (root / "other" / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    subject = load("resnet18", classes=None)
    subject.classes[:3] = ["animal", "person", "other"]
    data = folder_dataset(subject, root, progress=False, workers=0)
    assert data.images.shape == (6, 3, 224, 224) and data.images.dtype == torch.uint8
    assert data.labels.tolist() == [0, 0, 2, 2, 1, 1]  # folders sorted: animal, other, person -> model classes
    assert [os.path.basename(p) for p in data.skipped] == ["broken.jpg"]
    assert data.images.float().std(dim=(1, 2, 3)).min() > 5  # every image decoded, none blank
    grey = data.images[5]  # camera.png (person: astronaut.jpg, camera.png)
    assert torch.equal(grey[0], grey[1]) and torch.equal(grey[1], grey[2])
    # folders that are not the model's classes: groups, no labels; a flat folder: neither
    unnamed = folder_dataset(load("resnet18"), root, progress=False, workers=0)
    assert unnamed.labels is None and unnamed.group_names == ["animal", "other", "person"]
    flat = folder_dataset(load("resnet18"), root / "person", progress=False, workers=0)
    assert flat.labels is None and flat.groups is None and len(flat) == 2
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no image"):
        folder_dataset(subject, tmp_path / "empty", progress=False)
