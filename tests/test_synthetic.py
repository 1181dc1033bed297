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


def test_face_landmarks_sit_on_the_dark_features():
    rng = np.random.default_rng(0)
    face = CLASSES.index("face")
    for _ in range(10):
        image, landmarks = render_image(face, 96, rng)
        assert np.isfinite(landmarks).all()
        for x, y in landmarks:  # eyes and nose are drawn at a quarter of the face colour
            xi, yi = int(x), int(y)
            assert 0 <= xi < 96 and 0 <= yi < 96
        other, none = render_image(0, 96, rng)
        assert np.isnan(none).all()
    data = generate("test", 0, 48, 2)
    faces = data["labels"] == face
    assert np.isfinite(data["landmarks"][faces]).all() and np.isnan(data["landmarks"][~faces]).all()


def test_landmark_masks_change_the_face_where_the_part_is():
    rng = np.random.default_rng(5)
    image, landmarks = render_image(CLASSES.index("face"), 96, rng)
    left, right, nose = landmarks
    assert abs(np.hypot(*(left - right)) - 0.66 * 96 * 0.17) < 0.66 * 96 * 0.32  # eye distance ~ 0.66 x scale
    assert np.hypot(*(nose - (left + right) / 2)) > 1  # the nose is off the eye line


@pytest.mark.parametrize("kwargs, message", [
    (dict(split="dev"), "split must be one of"),
    (dict(size=16), "size must be an int >= 32"),
    (dict(per_class=0), "per_class must be a positive int"),
])
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SyntheticShapes(**kwargs)
