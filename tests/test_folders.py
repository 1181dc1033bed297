"""ImageFolderDataset, mean_image and PaperTransform (Zeiler & Fergus 2014, section 3)."""

from __future__ import annotations

import re
import warnings

import pytest
import torch

PIL = pytest.importorskip("PIL")
from PIL import Image  # noqa: E402

from zfcore.data.folders import (  # noqa: E402
    CorruptImageWarning,
    ImageFolderDataset,
    PaperTransform,
    load_image,
    mean_image,
)


# ---------------------------------------------------------------- helpers

def _random_pixels(g: torch.Generator, w: int, h: int) -> torch.Tensor:
    """Tensor[h, w, 3] uint8 of random values."""
    return torch.randint(0, 256, (h, w, 3), generator=g, dtype=torch.uint8)


def _to_pil(hwc: torch.Tensor) -> Image.Image:
    h, w, _ = hwc.shape
    return Image.frombytes("RGB", (w, h), bytes(hwc.flatten().tolist()))


def _pil_to_chw(img: Image.Image) -> torch.Tensor:
    w, h = img.size
    return torch.tensor(list(img.convert("RGB").tobytes()), dtype=torch.uint8).view(h, w, 3).permute(2, 0, 1)


def _save_random(path, g: torch.Generator, w: int, h: int, fmt: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    _to_pil(_random_pixels(g, w, h)).save(path, format=fmt)


def _save_solid(path, colour, w: int, h: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (w, h), colour).save(path)


def _png_bytes(g: torch.Generator, w: int, h: int, fmt: str = "PNG") -> bytes:
    import io
    buf = io.BytesIO()
    _to_pil(_random_pixels(g, w, h)).save(buf, format=fmt)
    return buf.getvalue()


def _mixed_folder(root, g: torch.Generator) -> None:
    """Two classes, PNG and JPEG, landscape, portrait and square images."""
    _save_random(root / "b_dogs" / "d1.png", g, 300, 200)
    _save_random(root / "b_dogs" / "d2.jpg", g, 180, 400)
    _save_random(root / "a_cats" / "c1.jpeg", g, 64, 64)
    _save_random(root / "a_cats" / "c2.png", g, 50, 90)
    _save_random(root / "a_cats" / "c3.PNG", g, 97, 41)


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(1234)


# ---------------------------------------------------------------- ImageFolderDataset: shapes, resize, classes

def test_items_are_uint8_squares_of_the_resize_side(tmp_path, gen):
    _mixed_folder(tmp_path, gen)
    ds = ImageFolderDataset(tmp_path, resize=32)
    assert len(ds) == 5 and ds.skipped == []
    for i in range(len(ds)):
        image, label = ds[i]
        assert image.shape == (3, 32, 32) and image.dtype == torch.uint8
        assert isinstance(label, int) and label == ds.targets[i]
        assert image.float().std() > 2  # random content survived (downscaled noise is smoother), not blank
    assert ds[-1][0].equal(ds[len(ds) - 1][0])
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_resize_and_crop_match_pil_reference(tmp_path, gen):
    # 300x200 -> short side 100 -> 150x100 -> crop columns 25..125.
    path = tmp_path / "c" / "x.png"
    _save_random(path, gen, 300, 200)
    expected = Image.open(path).convert("RGB").resize((150, 100), Image.BILINEAR).crop((25, 0, 125, 100))
    assert torch.equal(load_image(path, 100), _pil_to_chw(expected))
    # 180x400 -> short side 90 -> 90x200 -> crop rows 55..145.
    path = tmp_path / "c" / "y.png"
    _save_random(path, gen, 180, 400)
    expected = Image.open(path).convert("RGB").resize((90, 200), Image.BILINEAR).crop((0, 55, 90, 145))
    assert torch.equal(ImageFolderDataset(tmp_path, resize=90)[1][0], _pil_to_chw(expected))


@pytest.mark.parametrize("landscape", [True, False], ids=["512x256", "256x512"])
def test_short_side_is_resized_and_only_the_centre_remains(tmp_path, landscape):
    centre, side = (20, 200, 90), (250, 10, 10)
    long_, short = 512, 256
    img = Image.new("RGB", (long_, short) if landscape else (short, long_), side)
    q = long_ // 4  # the outer quarters keep the side colour, the middle half is the centre colour
    img.paste(centre, (q, 0, 3 * q, short) if landscape else (0, q, short, 3 * q))
    (tmp_path / "k").mkdir()
    img.save(tmp_path / "k" / "img.png")

    out = ImageFolderDataset(tmp_path, resize=128)[0][0].permute(1, 2, 0).to(torch.int32)  # [H, W, 3]
    assert out.shape == (128, 128, 3)
    c, s = torch.tensor(centre), torch.tensor(side)
    # Inside the crop (one pixel from the border along the long axis, which the
    # bilinear filter may blend) only the centre colour is left...
    inner = out[:, 1:-1] if landscape else out[1:-1]
    assert (inner - c).abs().max() <= 1
    # ...and even the border pixels are much nearer the centre colour than the sides'.
    assert ((out - c).abs().sum(-1) < (out - s).abs().sum(-1)).all()


def test_classes_are_sorted_folder_names(tmp_path):
    colours = {"zebra": (250, 0, 0), "apple": (0, 250, 0), "mango": (0, 0, 250)}
    for name, colour in colours.items():  # created out of order
        for k, size in enumerate([(40, 30), (25, 60)]):
            _save_solid(tmp_path / name / f"{k}.png", colour, *size)
    (tmp_path / "notes.txt").write_text("a file at the root is not a class")
    (tmp_path / ".hidden").mkdir()

    ds = ImageFolderDataset(tmp_path, resize=16)
    assert ds.classes == ["apple", "mango", "zebra"]
    assert ds.class_to_idx == {"apple": 0, "mango": 1, "zebra": 2}
    assert ds.targets == [0, 0, 1, 1, 2, 2]
    for i in range(len(ds)):
        image, label = ds[i]
        name = ds.classes[label]
        assert f"{name}" in ds.samples[i][0]
        assert torch.equal(image[:, 8, 8], torch.tensor(colours[name], dtype=torch.uint8))


def test_extensions_nested_folders_and_hidden_files(tmp_path, gen):
    _save_random(tmp_path / "a" / "top.png", gen, 20, 20)
    _save_random(tmp_path / "a" / "sub" / "deep.JPG", gen, 20, 20, "JPEG")
    _save_random(tmp_path / "a" / ".secret.png", gen, 20, 20)
    (tmp_path / "a" / "readme.txt").write_text("not an image")
    ds = ImageFolderDataset(tmp_path, resize=8)
    assert sorted(p.rsplit("/", 1)[-1] for p, _ in ds.samples) == ["deep.JPG", "top.png"]
    only_png = ImageFolderDataset(tmp_path, resize=8, extensions=("png",))
    assert [p.rsplit("/", 1)[-1] for p, _ in only_png.samples] == ["top.png"]


def test_no_warning_for_a_clean_folder(tmp_path, gen):
    _mixed_folder(tmp_path, gen)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = ImageFolderDataset(tmp_path, resize=16)
        for i in range(len(ds)):
            ds[i]


# ---------------------------------------------------------------- corrupt files

def test_corrupt_files_are_skipped_with_one_warning(tmp_path, gen):
    _mixed_folder(tmp_path, gen)
    garbage = tmp_path / "a_cats" / "garbage.jpg"
    garbage.write_bytes(bytes(torch.randint(0, 256, (500,), generator=gen, dtype=torch.uint8).tolist()))
    png = _png_bytes(gen, 60, 40)
    truncated = tmp_path / "b_dogs" / "truncated.png"
    truncated.write_bytes(png[: len(png) // 2])

    with pytest.warns(CorruptImageWarning) as record:
        ds = ImageFolderDataset(tmp_path, resize=16)
    ours = [w for w in record if issubclass(w.category, CorruptImageWarning)]
    assert len(ours) == 1
    message = str(ours[0].message)
    assert "2" in message and str(garbage) in message and str(truncated) in message
    assert sorted(ds.skipped) == sorted([str(garbage), str(truncated)])
    assert len(ds) == 5 and all(p not in ds.skipped for p, _ in ds.samples)
    assert [img.shape for img, _ in ds] == [(3, 16, 16)] * 5  # iteration never raises
    batches = list(torch.utils.data.DataLoader(ds, batch_size=2))
    assert [b[0].shape[0] for b in batches] == [2, 2, 1]


def test_a_file_that_fails_at_load_is_replaced_by_the_next(tmp_path, gen):
    # A truncated JPEG passes Image.verify() and fails only when decoded.
    jpg = _png_bytes(gen, 64, 48, "JPEG")
    for name in ["0.png", "2.png", "4.png"]:
        _save_random(tmp_path / "a" / name, gen, 30, 30)
    _save_random(tmp_path / "b" / "5.png", gen, 30, 30)
    (tmp_path / "a" / "1.jpg").write_bytes(jpg[: len(jpg) // 2])
    (tmp_path / "a" / "3.jpg").write_bytes(jpg[: len(jpg) // 3])
    (tmp_path / "b" / "6.jpg").write_bytes(jpg[: len(jpg) // 2])

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = ImageFolderDataset(tmp_path, resize=16)
    assert len(ds) == 7 and ds.skipped == []
    good = {i: ds.samples[i] for i in (0, 2, 4, 5)}  # sorted: 0.png 1.jpg 2.png 3.jpg 4.png | 5.png 6.jpg

    with pytest.warns(CorruptImageWarning, match=re.escape(ds.samples[1][0])):
        image, label = ds[1]
    assert torch.equal(image, load_image(good[2][0], 16)) and label == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once only
        image3, _ = ds[3]
        image6, label6 = ds[6]  # the last item wraps around to the first
        again, _ = ds[1]  # deterministic, the bad index is remembered
    assert torch.equal(image3, load_image(good[4][0], 16))
    assert torch.equal(image6, load_image(good[0][0], 16)) and label6 == 0
    assert torch.equal(again, image)
    assert sorted(ds.skipped) == sorted(ds.samples[i][0] for i in (1, 3, 6))
    assert len([x for x in ds]) == 7


def test_all_files_unreadable_raise(tmp_path, gen):
    _save_random(tmp_path / "good" / "x.png", gen, 20, 20)
    bad_folder = tmp_path / "only_bad"
    bad_folder.mkdir()
    (bad_folder / "x.png").write_bytes(b"not a png at all")
    with pytest.warns(CorruptImageWarning), pytest.raises(ValueError, match=re.escape(str(bad_folder))):
        ImageFolderDataset(tmp_path, resize=8)


# ---------------------------------------------------------------- errors

def test_missing_root(tmp_path):
    root = tmp_path / "does_not_exist"
    with pytest.raises(FileNotFoundError, match=re.escape(str(root))):
        ImageFolderDataset(root)


def test_root_is_a_file(tmp_path):
    root = tmp_path / "file.png"
    root.write_bytes(b"x")
    with pytest.raises(NotADirectoryError, match=re.escape(str(root))):
        ImageFolderDataset(root)


def test_root_without_class_folders(tmp_path, gen):
    _save_random(tmp_path / "loose.png", gen, 10, 10)
    with pytest.raises(ValueError, match=re.escape(str(tmp_path)) + ".*no class subfolders"):
        ImageFolderDataset(tmp_path)


def test_class_folder_without_images(tmp_path, gen):
    _save_random(tmp_path / "a" / "x.png", gen, 10, 10)
    empty = tmp_path / "b"
    empty.mkdir()
    (empty / "notes.txt").write_text("text only")
    with pytest.raises(ValueError, match=re.escape(str(empty))):
        ImageFolderDataset(tmp_path)


def test_no_images_at_all(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "a"))):
        ImageFolderDataset(tmp_path)


def test_bad_arguments(tmp_path, gen):
    _save_random(tmp_path / "a" / "x.png", gen, 10, 10)
    with pytest.raises(ValueError, match="resize"):
        ImageFolderDataset(tmp_path, resize=0)
    with pytest.raises(ValueError, match="extensions"):
        ImageFolderDataset(tmp_path, extensions=())
    mean = torch.zeros(3, 32, 32)
    with pytest.raises(ValueError, match="crop"):
        PaperTransform(mean, crop=33)
    with pytest.raises(ValueError, match="mean"):
        PaperTransform(torch.zeros(3, 32, 30), crop=28)
    with pytest.raises(ValueError, match=r"\(3, 32, 32\)"):
        PaperTransform(mean, crop=28)(torch.zeros(3, 30, 30, dtype=torch.uint8))
    with pytest.raises(ValueError, match="empty"):
        mean_image([])
    with pytest.raises(ValueError, match="max_images"):
        mean_image([mean], max_images=0)


# ---------------------------------------------------------------- mean_image

def test_mean_image_equals_a_float64_mean(tmp_path, gen):
    _mixed_folder(tmp_path, gen)
    ds = ImageFolderDataset(tmp_path, resize=24)
    mean = mean_image(ds)
    assert mean.shape == (3, 24, 24) and mean.dtype == torch.float32
    expected = torch.stack([ds[i][0].to(torch.float64) for i in range(len(ds))]).mean(0).to(torch.float32)
    torch.testing.assert_close(mean, expected, atol=1e-5, rtol=0)
    assert mean.std() > 1  # per pixel, not a constant

    capped = mean_image(ds, max_images=2)  # evenly spread: the first and the last image
    expected = (ds[0][0].double() + ds[len(ds) - 1][0].double()).div(2).float()
    torch.testing.assert_close(capped, expected, atol=1e-5, rtol=0)
    assert not torch.allclose(capped, mean)
    torch.testing.assert_close(mean_image(ds, max_images=100), mean, atol=0, rtol=0)


def test_mean_image_of_plain_tensors_accumulates_in_float64():
    # In float32, 2**24 + 1 == 2**24: a float32 running sum would give 2**22 exactly.
    items = [torch.full((3, 2, 2), 2.0 ** 24, dtype=torch.float64)] + [torch.ones(3, 2, 2, dtype=torch.float64)] * 3
    mean = mean_image(items)
    assert mean.dtype == torch.float32
    assert torch.equal(mean, torch.full((3, 2, 2), (2.0 ** 24 + 3) / 4).float())
    assert float(mean[0, 0, 0]) != 2.0 ** 22


# ---------------------------------------------------------------- PaperTransform

def _image_and_mean(g, s=32):
    image = torch.randint(0, 256, (3, s, s), generator=g, dtype=torch.uint8)
    mean = torch.rand(3, s, s, generator=g) * 255
    return image, mean


def _locate(out: torch.Tensor, x: torch.Tensor, c: int):
    """All (top, left, flipped) windows of x equal to out."""
    s = x.shape[-1]
    hits = []
    for top in range(s - c + 1):
        for left in range(s - c + 1):
            window = x[:, top:top + c, left:left + c]
            for flipped in (False, True):
                if torch.equal(out, window.flip(-1) if flipped else window):
                    hits.append((top, left, flipped))
    return hits


def test_train_crops_are_windows_of_the_mean_subtracted_image(gen):
    image, mean = _image_and_mean(gen)
    x = image.float() - mean
    t = PaperTransform(mean, crop=28, train=True, generator=torch.Generator().manual_seed(0))
    seen = []
    for _ in range(30):
        out = t(image)
        assert out.shape == (3, 28, 28) and out.dtype == torch.float32
        hits = _locate(out, x, 28)
        assert len(hits) == 1, hits
        seen.append(hits[0])
    assert {flipped for _, _, flipped in seen} == {False, True}  # flips for some draws, not all
    assert len({(top, left) for top, left, _ in seen}) > 5  # positions vary
    assert image.dtype == torch.uint8  # input untouched


def test_train_crops_are_reproducible_with_the_generator(gen):
    image, mean = _image_and_mean(gen)

    def draws(seed):
        t = PaperTransform(mean, crop=28, generator=torch.Generator().manual_seed(seed))
        return torch.stack([t(image) for _ in range(8)])

    a, b, c = draws(7), draws(7), draws(8)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_paper_sizes_224_from_256(gen):
    image, mean = _image_and_mean(gen, 256)
    t = PaperTransform(mean, generator=torch.Generator().manual_seed(3))
    assert t.crop == 224 and t(image).shape == (3, 224, 224)
    assert t.ten_crops(image).shape == (10, 3, 224, 224)


def test_eval_is_the_centre_crop(gen):
    image, mean = _image_and_mean(gen, 33)
    x = image.float() - mean
    t = PaperTransform(mean, crop=28, train=False, generator=torch.Generator().manual_seed(0))
    out = t(image)
    assert torch.equal(out, x[:, 2:30, 2:30])  # (33 - 28) // 2 == 2
    assert torch.equal(t(image), out)


def test_ten_crops(gen):
    s, c = 32, 24
    image, mean = _image_and_mean(gen, s)
    x = image.float() - mean
    crops = PaperTransform(mean, crop=c, train=True).ten_crops(image)
    assert crops.shape == (10, 3, c, c) and crops.dtype == torch.float32
    expected = [x[:, :c, :c], x[:, :c, -c:], x[:, -c:, :c], x[:, -c:, -c:], x[:, 4:4 + c, 4:4 + c]]
    for k in range(5):
        assert torch.equal(crops[k], expected[k]), f"crop {k}"
        assert torch.equal(crops[k + 5], expected[k].flip(-1)), f"crop {k + 5}"
    assert not torch.equal(crops[0], crops[5])
    assert len({tuple(cr.flatten()[:4].tolist()) for cr in crops}) == 10  # ten distinct crops


def test_pipeline_on_a_folder(tmp_path, gen):
    _mixed_folder(tmp_path, gen)
    ds = ImageFolderDataset(tmp_path, resize=32)
    mean = mean_image(ds)
    train = PaperTransform(mean, crop=28, generator=torch.Generator().manual_seed(0))
    evaluation = PaperTransform(mean, crop=28, train=False)
    image, _ = ds[2]
    assert train(image).shape == (3, 28, 28)
    crops = evaluation.ten_crops(image)
    assert torch.equal(crops[4], evaluation(image))
    # The mean over the dataset of the mean-subtracted centre crops is ~0.
    centred = torch.stack([evaluation(ds[i][0]) for i in range(len(ds))]).mean(0)
    assert centred.abs().max() < 1e-3
