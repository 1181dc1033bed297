"""PCA and t-SNE of a layer's features: PCA's coordinates and explained
variance equal an SVD of the centred features, t-SNE is reproducible from its
seed and keeps well-separated clusters apart, the separation measures equal
their definitions (a kNN vote and the silhouette by loops), and bad arguments
are named."""

import math
from collections import OrderedDict

import pytest
import torch
from torch import nn

from zfcore.analysis.embedding import embed, knn_accuracy, run
from zfcore.report.pages.embedding import render


def picker(d_in: int, keep: list[int]) -> nn.Sequential:
    """flatten -> fc (a fixed 0/1 matrix keeping the inputs ``keep``) -> relu -> out."""
    fc = nn.Linear(d_in, len(keep), bias=False)
    fc.weight.data = torch.eye(d_in)[keep]
    return nn.Sequential(OrderedDict([("flatten", nn.Flatten()), ("fc", fc), ("relu", nn.ReLU()),
                                      ("out", nn.Linear(len(keep), 2))])).eval()


def blobs(per_class: int = 12, classes: int = 3, dim: int = 10, spread: float = 20.0, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=g) * spread
    labels = torch.arange(classes).repeat_interleave(per_class)
    return centres[labels] + torch.randn(len(labels), dim, generator=g), labels


@pytest.mark.parametrize("dim", [8, 13])
def test_pca_equals_an_svd_of_the_centred_features(dim):
    g = torch.Generator().manual_seed(dim)
    points = torch.randn(30, dim, generator=g) * torch.linspace(0.5, 4.0, dim)  # distinct singular values
    images = points.view(30, 1, 1, dim)
    result = embed(picker(dim, [0]), images, torch.arange(30) % 3, "flatten", methods=("pca",), pixels=False,
                   progress=False)
    x = points.double() - points.double().mean(0)
    u, s, _ = torch.linalg.svd(x, full_matrices=False)
    expected = u[:, :2] * s[:2]
    got = result.coords["pca"].double()
    signs = torch.sign((got * expected).sum(0))
    torch.testing.assert_close(got * signs, expected, rtol=0, atol=1e-4)
    ratio = s.square() / s.square().sum()
    kept = min(10, dim)
    torch.testing.assert_close(result.explained_variance.double(), ratio[:kept], rtol=1e-5, atol=1e-7)
    assert math.isclose(float(result.explained_variance.sum()), float(ratio[:kept].sum()), rel_tol=1e-5)
    assert (float(result.explained_variance.sum()) == pytest.approx(1.0)) == (dim <= 10)
    assert result.coords.keys() == {"pca"} and result.pixel_coords == {}


def test_tsne_is_reproducible_from_its_seed():
    points, labels = blobs(per_class=10)
    images = points.view(30, 1, 2, 5)
    run = lambda seed: embed(picker(10, [0]), images, labels, "flatten", methods=("tsne",), perplexity=5.0,
                             max_iter=250, pixels=False, seed=seed, progress=False).coords["tsne"]
    first, again, other = run(0), run(0), run(1)
    assert torch.equal(first, again)
    assert (first - other).abs().max() > 1e-2


def loo_knn_by_loop(points, labels, k):
    points, labels, right = points.double().tolist(), labels.tolist(), 0
    for i, p in enumerate(points):
        near = sorted((sum((a - b) ** 2 for a, b in zip(p, q)), j) for j, q in enumerate(points) if j != i)[:k]
        votes = {}
        for _, j in near:
            votes[labels[j]] = votes.get(labels[j], 0) + 1
        best = max(votes.values())
        right += min(c for c, v in votes.items() if v == best) == labels[i]
    return right / len(points)


def silhouette_by_loop(points, labels):
    points, labels = points.double(), labels.tolist()
    d = [[float((p - q).norm()) for q in points] for p in points]
    total = 0.0
    for i in range(len(points)):
        own = [d[i][j] for j in range(len(points)) if labels[j] == labels[i] and j != i]
        a = sum(own) / len(own)
        b = min(sum(d[i][j] for j in range(len(points)) if labels[j] == c) / labels.count(c)
                for c in set(labels) if c != labels[i])
        total += (b - a) / max(a, b)
    return total / len(points)


def test_knn_accuracy_and_silhouette_follow_their_definitions():
    g = torch.Generator().manual_seed(5)
    points, labels = torch.randn(23, 2, generator=g), torch.randint(0, 3, (23,), generator=g)
    for k in (1, 3, 4):
        assert knn_accuracy(points, labels, k) == pytest.approx(loo_knn_by_loop(points, labels, k))
    images = torch.randn(23, 1, 2, 3, generator=g)
    result = embed(picker(6, [1, 4]), images, labels, "fc", methods=("pca",), progress=False)
    assert result.silhouette == pytest.approx(silhouette_by_loop(images.flatten(1)[:, [1, 4]], labels), rel=1e-5)
    assert result.pixel_silhouette == pytest.approx(silhouette_by_loop(images.flatten(1), labels), rel=1e-5)
    assert result.knn_accuracy["pca"] == pytest.approx(loo_knn_by_loop(result.coords["pca"], labels, 5))


def test_tsne_keeps_separated_clusters_apart_where_pixels_mix_them(tmp_path):
    """Pixels: 3 dims with 3 well-separated blobs beside 60 dims of loud noise;
    the layer keeps the 3 blob dims. In the layer's t-SNE map every point's
    nearest neighbours are of its cluster; in the pixels' they are not."""
    signal, labels = blobs(per_class=12, dim=3, spread=10.0, seed=2)
    noise = torch.randn(36, 60, generator=torch.Generator().manual_seed(3)) * 40.0
    images = torch.cat([signal, noise], 1).view(36, 1, 1, 63)
    result = embed(picker(63, [0, 1, 2]), images, labels, "fc", perplexity=8.0, seed=0, progress=False)
    z = result.coords["tsne"]
    d = torch.cdist(z, z) + torch.eye(36) * 1e9
    assert torch.equal(labels[d.argmin(1)], labels)  # each point's nearest neighbour in the map: its cluster
    assert result.knn_accuracy["tsne"] == 1.0 and result.knn_accuracy["pca"] == 1.0
    assert result.pixel_knn_accuracy["tsne"] < 0.8 and result.pixel_silhouette < result.silhouette

    extra = {"images": torch.randint(0, 256, (36, 3, 16, 16), dtype=torch.uint8), "classes": ["a", "b", "c"]}
    torch.save({"result": result.as_dict(), "extra": extra}, tmp_path / "saved.pt")
    saved = torch.load(tmp_path / "saved.pt", weights_only=True)
    page = render(saved["result"], tmp_path / "assets", **saved["extra"])
    assert [f["file"] for f in page["figures"]] == ["embedding_scatter.png", "embedding_thumbnails.png",
                                                     "embedding_variance.png"]
    for figure in page["figures"]:
        assert (tmp_path / "assets" / figure["file"]).stat().st_size > 1000
    assert len(page["claims"]) == 3 and all(claim["holds"] for claim in page["claims"])
    assert page["tables"][0]["rows"][0][2:] == [1.0, 1.0]


def test_bad_arguments_are_named():
    model = picker(4, [0, 1])
    images, labels = torch.randn(6, 1, 2, 2), torch.tensor([0, 1, 2, 0, 1, 2])
    cases = [(dict(perplexity=6.0), r"perplexity must be a number in \(0, 6\), below the number of images"),
             (dict(perplexity=0), r"perplexity must be a number in \(0, 6\)"),
             (dict(perplexity=math.nan), r"perplexity must be a number"),
             (dict(methods="pca"), "methods must be a non-empty sequence"),
             (dict(methods=("pca", "umap")), "methods must be a non-empty sequence"),
             (dict(methods=("pca", "pca")), "methods must be a non-empty sequence of distinct names"),
             (dict(methods=()), "methods must be a non-empty sequence"),
             (dict(seed=-1), r"seed must be a non-negative int below 2\*\*31"),
             (dict(max_iter=100), "max_iter must be an int >= 250"),
             (dict(batch_size=0), "batch_size must be a positive int")]
    for kwargs, text in cases:
        with pytest.raises(ValueError, match=f"^embed: {text}"):
            embed(model, images, labels, "fc", progress=False, **{"perplexity": 2.0, **kwargs})
    with pytest.raises(ValueError, match="^embed: no layer named 'fc9'"):
        embed(model, images, labels, "fc9", progress=False)
    with pytest.raises(ValueError, match=r"^embed: labels must be an integer Tensor\[6\]"):
        embed(model, images, labels.float(), "fc", perplexity=2.0, progress=False)
    with pytest.raises(ValueError, match=r"^embed: images must hold at least 3 images \(got 2\)"):
        embed(model, images[:2], labels[:2], "fc", perplexity=1.0, progress=False)
    with pytest.raises(ValueError, match="^embed: the features of layer 'relu' are the same for every image"):
        embed(model, -images.abs(), labels, "relu", perplexity=2.0, progress=False)  # a dead ReLU
    with pytest.raises(ValueError, match=r"^knn_accuracy: k must be an int in \[1, 6\)"):
        knn_accuracy(images.flatten(1), labels, 6)
    # perplexity is only t-SNE's: PCA alone takes any
    assert embed(model, images, labels, "fc", methods=("pca",), progress=False).methods == ["pca"]


def test_run_maps_the_images_it_hands_to_render(monkeypatch, tmp_path):
    from tests.helpers import untrained_subject
    from zfcore.load import embedded_dataset

    loaded = untrained_subject(monkeypatch, tmp_path)
    base = embedded_dataset(loaded)
    result, extra = run(loaded, base, quick=True, progress=False, seed=0)
    assert result.layer == "relu7" and result.methods == ["pca", "tsne"] and len(result.labels) == 30
    assert result.perplexity == pytest.approx(29 / 3) and result.max_iter == 500  # perplexity kept below N / 3
    pca = embed(loaded.model, loaded.preprocess(base.images), base.labels, "relu7", methods=("pca",), progress=False)
    torch.testing.assert_close(pca.coords["pca"], result.coords["pca"])
    torch.testing.assert_close(pca.pixel_coords["pca"], result.pixel_coords["pca"])
    # the thumbnails' images travel with their indices; they are apart in the t-SNE map
    index = extra["image_index"]
    assert torch.equal(extra["images"], base.images[index]) and 1 < len(index) <= 30
    z = result.coords["tsne"][index]
    extent = float((result.coords["tsne"].amax(0) - result.coords["tsne"].amin(0)).max())
    assert float((torch.cdist(z, z) + torch.eye(len(z)) * 1e9).min()) >= 0.05 * extent
    page = render(result.as_dict(), tmp_path / "assets", **extra)
    assert "embedding_thumbnails.png" in [f["file"] for f in page["figures"]]
