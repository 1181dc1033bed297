"""The embedded procedural dataset: deterministic splits, landmarks, caching."""

import numpy as np
import pytest
import torch

from zfcore.data import CLASSES, SyntheticShapes, render_image
from zfcore.data.synthetic import generate


def test_splits_are_fixed_by_the_seed_and_differ(tmp_path, monkeypatch):
    monkeypatch.setenv("ZFCORE_CACHE", str(tmp_path))
    a = SyntheticShapes("train", seed=3, size=32, per_class=3)
    b = SyntheticShapes("train", seed=3, size=32, per_class=3, cache=False)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.images, SyntheticShapes("train", seed=4, size=32, per_class=3).images)
    assert not torch.equal(a.images, SyntheticShapes("val", seed=3, size=32, per_class=3).images)
    assert list(tmp_path.glob("*.npz")), "the split was not cached"
    assert a.images.dtype == torch.uint8 and a.images.shape == (30, 3, 32, 32)
    assert sorted(a.labels.tolist()) == sorted(list(range(len(CLASSES))) * 3)
    assert a.images.float().std() > 20  # not blank


def test_damaged_cache_is_regenerated(tmp_path, monkeypatch):
    monkeypatch.setenv("ZFCORE_CACHE", str(tmp_path))
    first = SyntheticShapes("test", seed=1, size=32, per_class=2)
    for path in tmp_path.glob("*.npz"):
        path.write_bytes(b"not an npz")
    again = SyntheticShapes("test", seed=1, size=32, per_class=2)
    assert torch.equal(first.images, again.images)


def _pixel(image, point):
    x, y = point
    return image[:, int(y), int(x)].astype(float)


def test_face_landmarks_sit_on_the_dark_features():
    """Eyes and nose are drawn at a quarter of the face colour: the pixel under
    each landmark is a quarter of the forehead's, and the three landmarks sit
    where the face's geometry puts them."""
    rng = np.random.default_rng(0)
    face, checked = CLASSES.index("face"), 0
    for _ in range(12):
        image, landmarks = render_image(face, 96, rng)
        assert np.isfinite(landmarks).all()
        left, right, nose = landmarks
        s = np.hypot(*(right - left)) / 0.66  # the face's scale in pixels (eyes 0.66 apart)
        assert 0.17 * 96 - 1e-6 <= s <= 0.32 * 96 + 1e-6, s
        u = (right - left) / np.hypot(*(right - left))
        v = np.array([-u[1], u[0]])
        centre = (left + right) / 2 + 0.22 * s * v
        np.testing.assert_allclose(nose, centre + 0.12 * s * v, atol=1e-6)
        head = _pixel(image, centre - 0.6 * s * v)  # the forehead: face colour, no feature
        c = int(head.argmax())
        if head[c] < 100:  # too dark for a quarter of it to stand out from the noise
            continue
        checked += 1
        for point in landmarks:
            assert abs(_pixel(image, point)[c] - 0.25 * head[c]) < 25, (point, head)
        none = render_image(0, 96, rng)[1]
        assert np.isnan(none).all()
    assert checked >= 5, checked
    data = generate("test", 0, 48, 2)
    faces = data["labels"] == face
    assert np.isfinite(data["landmarks"][faces]).all() and np.isnan(data["landmarks"][~faces]).all()


def test_landmark_geometry():
    rng = np.random.default_rng(5)
    image, landmarks = render_image(CLASSES.index("face"), 96, rng)
    left, right, nose = landmarks
    eyes = np.hypot(*(left - right))
    assert 0.66 * 96 * 0.17 - 1e-6 <= eyes <= 0.66 * 96 * 0.32 + 1e-6, eyes  # 0.66 x the face's scale
    assert np.hypot(*(nose - (left + right) / 2)) > 0.3 * eyes  # the nose is well off the eye line


@pytest.mark.parametrize("kwargs, message", [
    (dict(split="dev"), "split must be one of"),
    (dict(size=16), "size must be an int >= 32"),
    (dict(per_class=0), "per_class must be a positive int"),
])
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SyntheticShapes(**kwargs)


def test_box_is_the_extent_of_a_mask_by_brute_force():
    from zfcore.data.synthetic import _box
    rng = np.random.default_rng(11)
    for density in (0.0, 0.001, 0.02, 0.5):
        mask = rng.uniform(size=(37, 23)) < density
        pixels = np.argwhere(mask)
        expected = [-1] * 4 if not len(pixels) else [pixels[:, 1].min(), pixels[:, 0].min(),
                                                     pixels[:, 1].max() + 1, pixels[:, 0].max() + 1]
        assert _box(mask).tolist() == list(expected)


def test_boxes_leave_the_images_unchanged_and_frame_the_object():
    """Asking for the box consumes no randomness (the images are those of
    ``with_box=False``); a circle touches its box at the middle of each side,
    and those four pixels have the colour of the circle's centre; a face's
    landmarks lie in its box."""
    circle, face = CLASSES.index("circle"), CLASSES.index("face")
    for seed in range(6):
        for label in (circle, face):
            image, landmarks = render_image(label, 64, np.random.default_rng(seed))
            again, landmarks2, box = render_image(label, 64, np.random.default_rng(seed), with_box=True)
            assert np.array_equal(image, again) and np.array_equal(landmarks, landmarks2, equal_nan=True)
            x0, y0, x1, y1 = box.tolist()
            assert 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 64
            if label == face:
                assert ((landmarks[:, 0] >= x0) & (landmarks[:, 0] < x1)
                        & (landmarks[:, 1] >= y0) & (landmarks[:, 1] < y1)).all(), (box, landmarks)
                continue
            assert abs((x1 - x0) - (y1 - y0)) <= 1 and x1 - x0 >= 0.17 * 1.8 * 64 - 2
            cx, cy = (x0 + x1 - 1) // 2, (y0 + y1 - 1) // 2
            centre = image[:, cy - 1:cy + 2, cx - 1:cx + 2].reshape(3, -1).astype(float).mean(1)
            for x, y in ((x0, cy), (x1 - 1, cy), (cx, y0), (cx, y1 - 1)):
                assert np.abs(image[:, y, x].astype(float) - centre).max() < 30, (seed, box, (x, y))
    data = SyntheticShapes("val", size=48, per_class=2, cache=False)
    assert data.boxes.shape == (20, 4) and data.boxes.dtype == torch.int64
    assert ((data.boxes[:, 2] > data.boxes[:, 0]) & (data.boxes[:, 3] > data.boxes[:, 1])).all()
