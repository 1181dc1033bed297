"""The correspondence analysis (paper Fig. 8, Table 1): Delta against explicit
loops over image pairs with a Python Hamming count, the occluded squares, bad
arguments, the saved result and its rendering, and the paper's claim on the
trained demo model."""

from collections import OrderedDict

import pytest
import torch
from torch import nn

import zfcore
from zfcore.analysis.correspondence import (PAPER_TABLE1, Correspondence, correspondence, occlude, occlusion_boxes,
                                            sign_disagreement)
from zfcore.data.synthetic import CLASSES
from zfcore.load import Dataset, embedded_dataset
from zfcore.report.pages.correspondence import render

from .helpers import untrained_subject


def tiny_model(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    model = nn.Sequential(OrderedDict(conv=nn.Conv2d(3, 4, 3, padding=1), relu=nn.ReLU(), pool=nn.MaxPool2d(2),
                                      flatten=nn.Flatten(), fc=nn.Linear(4 * 8 * 8, 6), relu_fc=nn.ReLU()))
    return model.eval()


def faces(n: int = 3, size: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, size, size, generator=g)
    landmarks = torch.rand(n, 3, 2, generator=g) * size
    landmarks[0, 0] = torch.tensor([0.3, size - 0.2])   # a part at the border: its square is clipped
    return images, landmarks


def reference_occlusion(image: torch.Tensor, box, fill: float) -> torch.Tensor:
    top, left, bottom, right = (int(v) for v in box)
    out = image.clone()
    for y in range(image.shape[1]):
        for x in range(image.shape[2]):
            if top <= y < bottom and left <= x < right:
                out[:, y, x] = fill
    return out


def sign(v: float) -> int:
    return (v > 0) - (v < 0)


def reference_delta(features: torch.Tensor, occluded: torch.Tensor) -> float:
    """sum over ordered pairs i != j of the Hamming distance of the sign vectors,
    divided by the number of ordered pairs and the feature dimension."""
    eps = (features - occluded).flatten(1).tolist()
    signs = [[sign(v) for v in row] for row in eps]
    n, d = len(signs), len(signs[0])
    total = 0
    for i in range(n):
        for j in range(n):
            if i != j:
                total += sum(1 for a, b in zip(signs[i], signs[j]) if a != b)
    return total / (n * (n - 1) * d)


@pytest.mark.parametrize("layer", ["relu", "pool", "relu_fc"])
def test_delta_matches_loop_over_pairs(layer):
    model = tiny_model()
    images, landmarks = faces()
    patch, fill = 5, 0.25
    result = correspondence(model, images, landmarks, layers=[layer], patch_size=patch, random_trials=2, fill=fill,
                            progress=False)
    upto = nn.Sequential(*list(model.children())[:list(dict(model.named_children())).index(layer) + 1])
    with torch.no_grad():
        features = upto(images)
        saw_zero = False
        for k, boxes in enumerate([result.part_boxes[:, p] for p in range(3)] + list(result.random_boxes)):
            occluded = upto(torch.stack([reference_occlusion(images[i], boxes[i], fill) for i in range(3)]))
            saw_zero |= bool(((features - occluded) == 0).any())
            expected = reference_delta(features, occluded)
            actual = result.delta[k, 0] if k < 3 else result.random_delta[k - 3, 0]
            assert abs(float(actual) - expected) < 1e-12, (layer, k, float(actual), expected)
    assert saw_zero, "the case sign(0) = 0 was never exercised"
    assert result.random_mean[0] == result.random_delta[:, 0].mean()
    assert torch.allclose(result.random_std, result.random_delta.std(0, correction=1))


def test_delta_by_hand():
    eps = torch.tensor([[1.0, 0.0, -2.0], [3.0, 0.5, -1.0], [0.0, 0.0, 0.0]])
    # pairs (0, 1): 1 differing sign; (0, 2): 2; (1, 2): 3 -> 6 of 3 pairs x 3 entries
    assert sign_disagreement(eps) == pytest.approx(6 / 9, abs=1e-15)
    assert sign_disagreement(torch.zeros(4, 2, 3)) == 0.0
    with pytest.raises(ValueError, match="eps"):
        sign_disagreement(torch.ones(1, 5))


def test_batches_do_not_change_the_result():
    model = tiny_model(1)
    images, landmarks = faces(5, seed=1)
    one = correspondence(model, images, landmarks, layers=["pool", "relu_fc"], patch_size=4, random_trials=3,
                         batch_size=2, progress=False)
    all_at_once = correspondence(model, images, landmarks, layers=["pool", "relu_fc"], patch_size=4,
                                 random_trials=3, progress=False)
    assert torch.equal(one.delta, all_at_once.delta)
    assert torch.equal(one.random_delta, all_at_once.random_delta)
    assert torch.equal(one.changed, all_at_once.changed)


def test_occluded_square_is_centred_on_the_landmark_and_clipped():
    boxes = occlusion_boxes(torch.tensor([[10.5, 20.5], [10.0, 20.0], [1.0, 62.5], [63.9, 0.1]]), 5, 64, 64)
    assert boxes[0].tolist() == [18, 8, 23, 13]       # pixel (x 10, y 20) in the middle of 5
    boxes = occlusion_boxes(torch.tensor([[10.0, 20.0], [1.0, 62.5], [63.9, 0.1]]), 4, 64, 64)
    assert boxes[0].tolist() == [18, 8, 22, 12]       # the span [8, 12) is centred on x = 10.0
    assert boxes[1].tolist() == [61, 0, 64, 3]        # clipped at the left and bottom
    assert boxes[2].tolist() == [0, 62, 2, 64]        # clipped at the top and right

    images = torch.randn(2, 3, 9, 9) + 5
    out = occlude(images, torch.tensor([[1, 2, 4, 6], [0, 0, 9, 1]]), -1.5)
    for i, box in enumerate([[1, 2, 4, 6], [0, 0, 9, 1]]):
        assert torch.equal(out[i], reference_occlusion(images[i], box, -1.5))


def test_correspondence_masks_exactly_the_squares():
    # With the flattened image as the "layer", eps != 0 exactly on the occluded pixels.
    model = nn.Sequential(OrderedDict(flatten=nn.Flatten()))
    images = torch.rand(4, 3, 20, 20) + 1
    landmarks = torch.tensor([[[5.5, 5.5], [14.5, 5.5], [10.0, 12.0]]]).repeat(4, 1, 1)
    landmarks[3, 2] = torch.tensor([19.5, 19.5])
    result = correspondence(model, images, landmarks, layers="flatten", patch_size=3, random_trials=4, seed=3,
                            progress=False)
    areas = ((result.part_boxes[..., 2] - result.part_boxes[..., 0])
             * (result.part_boxes[..., 3] - result.part_boxes[..., 1])).double()
    assert result.part_boxes[0].tolist() == [[4, 4, 7, 7], [4, 13, 7, 16], [11, 9, 14, 12]]
    assert result.part_boxes[3, 2].tolist() == [18, 18, 20, 20]
    assert torch.allclose(result.changed[:, 0], areas.mean(0) / 400, rtol=0, atol=1e-15)
    # the random squares: whole, inside the image, fixed by the seed
    r = result.random_boxes
    assert tuple(r.shape) == (4, 4, 4)
    assert ((r[..., 2] - r[..., 0]) == 3).all() and ((r[..., 3] - r[..., 1]) == 3).all()
    assert (r[..., :2] >= 0).all() and (r[..., 2:] <= 20).all()
    assert torch.allclose(result.random_changed[:, 0], torch.full((4,), 9 / 400, dtype=torch.float64))
    again = correspondence(model, images, landmarks, layers="flatten", patch_size=3, random_trials=4, seed=3,
                           progress=False)
    other = correspondence(model, images, landmarks, layers="flatten", patch_size=3, random_trials=4, seed=4,
                           progress=False)
    assert torch.equal(again.random_boxes, r) and not torch.equal(other.random_boxes, r)


def test_an_occlusion_that_changes_nothing_scores_zero():
    model = tiny_model()
    images, landmarks = faces(4)
    images = torch.zeros_like(images)
    result = correspondence(model, images, landmarks, layers=["relu", "relu_fc"], patch_size=5, fill=0.0,
                            progress=False)
    assert (result.delta == 0).all() and (result.changed == 0).all() and (result.random_delta == 0).all()


def test_landmark_size_scales_the_landmarks():
    model = nn.Sequential(OrderedDict(flatten=nn.Flatten()))
    images = torch.rand(2, 3, 32, 32) + 1
    landmarks = torch.tensor([[[8.0, 4.0], [10.0, 10.0], [2.0, 14.0]]]).repeat(2, 1, 1)
    scaled = correspondence(model, images, landmarks, layers="flatten", patch_size=4, landmark_size=16,
                            random_trials=1, progress=False)
    direct = correspondence(model, images, landmarks * 2, layers="flatten", patch_size=4, random_trials=1,
                            progress=False)
    assert torch.equal(scaled.part_boxes, direct.part_boxes)


def test_bad_arguments():
    model = tiny_model()
    images, landmarks = faces()
    run = dict(layers=["pool"], progress=False)
    with pytest.raises(ValueError, match="patch_size"):
        correspondence(model, images, landmarks, patch_size=17, **run)
    with pytest.raises(ValueError, match="patch_size"):
        correspondence(model, images, landmarks, patch_size=0, **run)
    with pytest.raises(ValueError, match="no layer named 'pool9'"):
        correspondence(model, images, landmarks, layers=["pool9"], progress=False)
    not_faces = landmarks.clone()
    not_faces[1] = float("nan")
    with pytest.raises(ValueError, match=r"landmarks of images \[1\].*not faces"):
        correspondence(model, images, not_faces, **run)
    with pytest.raises(ValueError, match="landmarks must be a Tensor"):
        correspondence(model, images, landmarks[:, :2], **run)
    with pytest.raises(ValueError, match="at least 2"):
        correspondence(model, images[:1], landmarks[:1], **run)
    with pytest.raises(ValueError, match="images must be a float"):
        correspondence(model, (images * 100).to(torch.uint8), landmarks, **run)
    with pytest.raises(ValueError, match="random_trials"):
        correspondence(model, images, landmarks, random_trials=0, **run)
    with pytest.raises(ValueError, match="fill"):
        correspondence(model, images, landmarks, fill=float("nan"), **run)
    with pytest.raises(ValueError, match="display"):
        correspondence(model, images, landmarks, display=torch.zeros(3, 3, 8, 8, dtype=torch.uint8), **run)


def test_result_round_trips_and_renders(tmp_path):
    model = tiny_model()
    images, landmarks = faces()
    display = (torch.rand(3, 3, 16, 16) * 255).to(torch.uint8)
    result = correspondence(model, images, landmarks, layers=["pool", "relu_fc"], random_trials=3,
                            display=display, progress=False)
    assert torch.equal(result.examples, display)
    torch.save(result.as_dict(), tmp_path / "c.pt")
    back = Correspondence.from_dict(torch.load(tmp_path / "c.pt", weights_only=True))
    assert torch.equal(back.delta, result.delta) and back.layers == ["pool", "relu_fc"]
    assert back.paper == {k: list(v) for k, v in PAPER_TABLE1.items()}
    page = render(back, tmp_path / "assets")
    assert [f["file"] for f in page["figures"]] == ["correspondence-examples.png", "correspondence-table1.png"]
    for f in page["figures"]:
        assert (tmp_path / "assets" / f["file"]).stat().st_size > 1000
    table = page["tables"][0]
    assert len(table["rows"]) == 4 and all(len(row) == len(table["header"]) for row in table["rows"])
    assert page["claims"] == []  # neither layer is one of the paper's


def test_run_scores_the_face_images_and_refuses_data_without_faces(monkeypatch, tmp_path):
    """``run`` (zfcore analyze correspondence): the dataset's 'face' images with
    their landmarks, the default settings; a dataset without landmarks or
    without a 'face' class is refused in one sentence."""
    from zfcore.analysis.correspondence import ANALYSIS, run

    subject = untrained_subject(monkeypatch, tmp_path)
    dataset = embedded_dataset(subject)
    assert ANALYSIS.refusal(subject, dataset) is None
    bare = Dataset(dataset.images, dataset.labels, dataset.classes)
    assert ANALYSIS.refusal(subject, bare) == "correspondence needs landmarks; this dataset has none"
    renamed = Dataset(dataset.images, dataset.labels, [c.replace("face", "mask") for c in dataset.classes],
                      landmarks=dataset.landmarks)
    assert "'face' class" in ANALYSIS.refusal(subject, renamed)
    result, extra = run(subject, dataset, quick=True, progress=False, seed=0)
    face = dataset.labels == CLASSES.index("face")
    direct = correspondence(subject.model, subject.preprocess(dataset.images[face]), dataset.landmarks[face],
                            progress=False)
    assert extra == {} and result.images == int(face.sum()) == 3
    assert torch.equal(result.delta, direct.delta) and torch.equal(result.random_delta, direct.random_delta)
    assert torch.equal(result.examples, dataset.images[face][:5])
    saved = result.to_plain()
    assert torch.equal(saved["random_mean"], result.random_mean)   # saved beside the fields, as before
    page = render(saved, tmp_path / "assets")
    assert len(page["claims"]) == 3


def test_parts_have_lower_delta_than_random_positions_at_layer5(demo_folder, tmp_path):
    out, _ = demo_folder
    loaded = zfcore.load(out / "run" / "model.pt")
    val = embedded_dataset(loaded)
    face = val.labels == CLASSES.index("face")
    result = correspondence(loaded.model, loaded.preprocess(val.images[face]), val.landmarks[face],
                            display=val.images[face], progress=False)
    assert result.layers == ["pool5", "relu7"] and result.patch_size == 7 and result.images == int(face.sum())
    parts, mean, std = result.delta[:, 0], float(result.random_mean[0]), float(result.random_std[0])
    print(f"\npool5: parts {parts.tolist()}, random {mean:.4f} +- {std:.4f}; relu7: parts "
          f"{result.delta[:, 1].tolist()}, random {float(result.random_mean[1]):.4f}")
    # The paper's reading (Table 1), on average over the parts: they change
    # less than random positions. Part by part the 12-epoch demo model is at the
    # edge and its verdict depends on the CPU that trained it (oneDNN's kernels
    # differ by vector unit): on one AMD EPYC the eyes came out 0.467 and 0.465
    # against random 0.4637 +- 0.0014, the nose 0.453; on CI's machine all three
    # were below. So the per-part claim is checked to be reported truthfully.
    assert float(parts.mean()) < mean, (parts.tolist(), mean, std)
    page = render(result, tmp_path)
    assert page["claims"][0]["holds"] == bool((parts < mean).all())
