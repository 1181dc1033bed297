"""Nearest neighbours in feature space: the indices and distances equal a
brute-force loop over pairs in float64 (both metrics, both spaces, ties to the
lower index, the query never its own neighbour), the class shares equal a hand
count, the model is left as it was, and bad arguments are named."""

import math
from collections import OrderedDict

import pytest
import torch
from torch import nn

from zfcore.analysis.neighbours import features, last_hidden_layer, nearest_neighbours, run, shown_queries
from zfcore.report.pages.neighbours import render
from zfcore.models import zfnet_small

from .helpers import untrained_subject


def small_model() -> nn.Sequential:
    torch.manual_seed(3)
    return nn.Sequential(OrderedDict([
        ("conv", nn.Conv2d(3, 4, 3)), ("relu", nn.ReLU()), ("drop", nn.Dropout(0.5)),
        ("flatten", nn.Flatten()), ("fc", nn.Linear(4 * 4 * 4, 3))])).eval()


def brute_force(points, queries, k, metric):
    """Each query's k nearest other rows by a loop over pairs, float64, ties to the lower index."""
    points = points.double().tolist()
    index, distance = [], []
    for q in queries:
        d = []
        for j, x in enumerate(points):
            if j == q:
                continue
            a = points[q]
            if metric == "euclidean":
                value = math.sqrt(sum((u - v) ** 2 for u, v in zip(a, x)))
            else:
                dot = sum(u * v for u, v in zip(a, x))
                value = 1.0 - dot / (math.sqrt(sum(u * u for u in a)) * math.sqrt(sum(v * v for v in x)))
            d.append((value, j))
        d.sort()
        index.append([j for _, j in d[:k]])
        distance.append([value for value, _ in d[:k]])
    return torch.tensor(index), torch.tensor(distance, dtype=torch.float64)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_equals_brute_force_in_both_spaces(metric):
    model = small_model()
    torch.manual_seed(0)
    images = torch.randn(13, 3, 6, 6)
    labels = torch.randint(0, 3, (13,))
    queries = [0, 4, 12, 7]
    result = nearest_neighbours(model, images, labels, "relu", queries=torch.tensor(queries), k=4, metric=metric,
                                batch_size=5, progress=False)
    feats = model[:2](images).flatten(1)
    for space, points in (("feature", feats), ("pixel", images.flatten(1))):
        index, distance = brute_force(points, queries, 4, metric)
        assert torch.equal(getattr(result, f"{space}_index"), index), space
        torch.testing.assert_close(getattr(result, f"{space}_distance").double(), distance, rtol=1e-5, atol=1e-5)
    # features() is the layer's output, flattened and batched
    torch.testing.assert_close(features(model, images, "relu", batch_size=4, progress=False), feats)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_ties_go_to_the_lower_index_and_the_query_is_never_its_own_neighbour(metric):
    """Integer pixels (exact in float64): image 0 has exact duplicates at 2 and
    5, and images 1 and 3 lie at the same distance from it."""
    base = torch.tensor([3.0, 1.0, 2.0, 5.0])
    rows = [base, base + torch.tensor([0.0, 0.0, 0.0, 4.0]), base.clone(), base + torch.tensor([4.0, 0.0, 0.0, 0.0]),
            torch.tensor([9.0, 9.0, 1.0, 0.0]), base.clone(), torch.tensor([1.0, 7.0, 7.0, 1.0])]
    images = torch.stack(rows).view(7, 1, 2, 2)
    labels = torch.tensor([0, 1, 0, 1, 2, 0, 2])
    model = nn.Sequential(OrderedDict([("flatten", nn.Flatten()), ("fc", nn.Linear(4, 2))]))
    result = nearest_neighbours(model, images, labels, "flatten", k=6, metric=metric, progress=False)
    assert torch.equal(result.queries, torch.arange(7))
    for space in ("feature", "pixel"):
        index = getattr(result, f"{space}_index")
        assert not (index == torch.arange(7)[:, None]).any()  # all other 6 images, never the query
        assert torch.equal(index.sort(1).values, torch.tensor([[j for j in range(7) if j != q] for q in range(7)]))
        expected, _ = brute_force(images.flatten(1), range(7), 6, metric)
        assert torch.equal(index, expected)
    assert result.feature_index[0, :2].tolist() == [2, 5]  # the duplicates, at distance 0, lower index first
    assert result.feature_index[2, :2].tolist() == [0, 5]
    if metric == "euclidean":
        assert result.feature_index[0, 2:4].tolist() == [1, 3]  # both at distance 4: the lower index first
        assert result.feature_distance[0, :4].tolist() == [0.0, 0.0, 4.0, 4.0]


def test_class_shares_equal_a_hand_count():
    """Pixels (a, b) of 4 images; the layer keeps b. In b the nearest image is
    always of the same class; in (a, b) always of the other one."""
    a, b = [0.0, 100.0, 0.0, 100.0], [0.0, 1.0, 10.0, 11.0]
    images = torch.tensor([a, b]).T.reshape(4, 1, 1, 2)
    labels = torch.tensor([0, 0, 1, 1])
    fc = nn.Linear(2, 1, bias=False)
    fc.weight.data = torch.tensor([[0.0, 1.0]])
    model = nn.Sequential(OrderedDict([("flatten", nn.Flatten()), ("fc", fc), ("relu", nn.ReLU()),
                                       ("out", nn.Linear(1, 2))]))
    one = nearest_neighbours(model, images, labels, "fc", k=1, metric="euclidean", progress=False)
    assert one.feature_index[:, 0].tolist() == [1, 0, 3, 2]
    assert one.pixel_index[:, 0].tolist() == [2, 3, 0, 1]
    assert one.feature_share == 1.0 and one.pixel_share == 0.0
    two = nearest_neighbours(model, images, labels, "fc", queries=[0, 3], k=2, metric="euclidean", progress=False)
    assert two.feature_index.tolist() == [[1, 2], [2, 1]]   # b: 0 -> 1 (1), 2 (10); 11 -> 10 (1), 1 (10)
    assert two.pixel_index.tolist() == [[2, 1], [1, 2]]     # (a, b): 0 -> 2 (10), 1 (100.005)
    # same class: query 0 (class 0): [0, 1] and [1, 0]; query 3 (class 1): [1, 0] and [0, 1]
    assert two.feature_share == 0.5 and two.pixel_share == 0.5
    assert two.same_class("feature").tolist() == [[True, False], [True, False]]
    assert two.chance() == pytest.approx(1 / 3)   # per query: 1 other image of its class among 3
    # cosine: in b every non-zero value points the same way (3 ties with 1 and 2 at 0: the lower index wins);
    # a zero vector (image 0 in both spaces) is at distance 1 from all (a tie: image 1). In (a, b): 3 -> 1.
    some = nearest_neighbours(model, images, labels, "fc", queries=[3, 0], k=1, metric="cosine", progress=False)
    assert some.feature_index[:, 0].tolist() == [1, 1] and some.pixel_index[:, 0].tolist() == [1, 1]
    assert some.feature_distance[:, 0].tolist() == [0.0, 1.0]
    assert some.feature_share == 0.5 and some.pixel_share == 0.5  # query 3 (class 1): no; query 0 (class 0): yes


def test_model_mode_and_parameters_are_left_alone():
    model = small_model().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(1)
    images, labels = torch.randn(9, 3, 6, 6), torch.randint(0, 2, (9,))
    result = nearest_neighbours(model, images, labels, "drop", k=3, progress=False)
    assert model.training  # restored
    reference = nearest_neighbours(model.eval(), images, labels, "drop", k=3, progress=False)
    assert torch.equal(result.feature_index, reference.feature_index)  # dropout was off while it ran
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


def test_last_hidden_layer():
    assert last_hidden_layer(zfnet_small(init_std=None)) == "relu7"
    assert last_hidden_layer(small_model()) == "flatten"
    two = nn.Sequential(OrderedDict([("flatten", nn.Flatten()), ("fc6", nn.Linear(4, 4)), ("fc7", nn.Linear(4, 2))]))
    assert last_hidden_layer(two) == "fc6"
    with pytest.raises(ValueError, match="no nn.Linear"):
        last_hidden_layer(nn.Sequential(nn.Conv2d(3, 3, 1)))


def test_bad_arguments_are_named():
    model = small_model()
    images, labels = torch.randn(6, 3, 6, 6), torch.tensor([0, 1, 2, 0, 1, 2])
    cases = [(dict(k=6), "k must be less than the number of images, 6"),
             (dict(k=0), "k must be a positive int"),
             (dict(metric="manhattan"), "metric must be 'cosine' or 'euclidean'"),
             (dict(queries=[0, 6]), r"queries must be indices in \[0, 6\)"),
             (dict(queries=torch.tensor([0.5])), "queries must be None or a non-empty LongTensor"),
             (dict(batch_size=0), "batch_size must be a positive int")]
    for kwargs, text in cases:
        with pytest.raises(ValueError, match=f"^nearest_neighbours: {text}"):
            nearest_neighbours(model, images, labels, "relu", progress=False, **kwargs)
    with pytest.raises(ValueError, match="^nearest_neighbours: no layer named 'conv9'"):
        nearest_neighbours(model, images, labels, "conv9", progress=False)
    with pytest.raises(ValueError, match=r"^nearest_neighbours: labels must be an integer Tensor\[6\]"):
        nearest_neighbours(model, images, labels.float(), "relu", progress=False)
    with pytest.raises(ValueError, match="^nearest_neighbours: images must be a float Tensor"):
        nearest_neighbours(model, images[0], labels, "relu", progress=False)
    with pytest.raises(ValueError, match="^features: no layer named 'fc9'"):
        features(model, images, "fc9", progress=False)
    nan = images.clone()
    nan[2, 0, 0, 0] = math.nan
    with pytest.raises(ValueError, match="^nearest_neighbours: images hold NaN or infinite values"):
        nearest_neighbours(model, nan, labels, "flatten", progress=False)
    with torch.no_grad():
        model.conv.weight[0, 0, 0, 0] = math.nan   # finite images, NaN features
    with pytest.raises(ValueError, match="^nearest_neighbours: the features of layer 'flatten' contain NaN"):
        nearest_neighbours(model, images, labels, "flatten", progress=False)


def test_render_writes_its_figures_and_the_result_survives_weights_only(tmp_path):
    model = zfnet_small(init_std=None).eval()
    torch.manual_seed(0)
    images = torch.randn(12, 3, 64, 64)
    labels = torch.arange(12) % 3
    result = nearest_neighbours(model, images, labels, "relu7", k=3, progress=False)
    extra = {"images": torch.randint(0, 256, (12, 3, 64, 64), dtype=torch.uint8), "classes": ["a", "b", "c"]}
    torch.save({"result": result.as_dict(), "extra": extra}, tmp_path / "saved.pt")
    saved = torch.load(tmp_path / "saved.pt", weights_only=True)
    page = render(saved["result"], tmp_path / "assets", **saved["extra"])
    assert [f["file"] for f in page["figures"]] == ["neighbours_rows.png", "neighbours_share.png"]
    for figure in page["figures"]:
        assert (tmp_path / "assets" / figure["file"]).stat().st_size > 1000
    shares = page["tables"][0]["rows"][-1]
    assert shares[2:4] == [round(result.feature_share, 3), round(result.pixel_share, 3)]
    claim = page["claims"][0]
    assert claim["holds"] == (result.feature_share > result.pixel_share)
    assert "relu7" in claim["claim"]


def test_run_indexes_the_images_it_hands_to_render(monkeypatch, tmp_path):
    from zfcore.load import embedded_dataset

    loaded = untrained_subject(monkeypatch, tmp_path)
    base = embedded_dataset(loaded)
    result, extra = run(loaded, base, quick=True, progress=False, seed=0)
    assert result.layer == "relu7" and result.metric == "cosine" and len(result.queries) == len(base.labels) == 30
    again = nearest_neighbours(loaded.model, loaded.preprocess(base.images), base.labels, "relu7", progress=False)
    assert torch.equal(again.feature_index, result.feature_index) and torch.equal(again.pixel_index, result.pixel_index)
    # only the images the figure draws travel, with their indices in the set
    rows = shown_queries(result)
    drawn = torch.cat([result.queries[rows], result.feature_index[rows].flatten(), result.pixel_index[rows].flatten()])
    assert set(extra["image_index"].tolist()) == set(drawn.tolist()) and len(extra["image_index"]) < 30
    assert torch.equal(extra["images"], base.images[extra["image_index"]])
    assert extra["classes"] == loaded.classes and sorted(set(result.labels.tolist())) == list(range(10))
    page = render(result.as_dict(), tmp_path / "assets", **extra)
    assert all((tmp_path / "assets" / f["file"]).is_file() for f in page["figures"])
