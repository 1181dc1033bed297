"""The analyses that make sense for any model, on a model zfcore did not build
its way: a torchvision-layout ResNet-18 (residual blocks, ReLUs run twice per
block, no flat nn.Sequential) at 64 px, and the same network as a ``.pt2``
program (``torch.export.unflatten``: every layer an ``InterpreterModule``),
on real photographs in class folders. Each analysis picks its layers on the
model's main path (``_args.main_path``) and gives results that make sense,
not only no exception."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from zfcore import Preprocess
from zfcore.analysis._args import LayerTap, main_path
from zfcore.analysis.gradcam import default_layer, grad_cam
from zfcore.analysis.invariance import compared_layers
from zfcore.analysis.inversion import embedded_layers
from zfcore.analysis.neighbours import last_hidden_layer
from zfcore.analysis.occlusion import map_layer
from zfcore.analysis.probes import depth_layers
from zfcore.analyze import run_analysis
from zfcore.load import Dataset, Subject, folder_dataset, load
from zfcore.models import alexnet_torchvision, resnet18, vgg11_bn, zfnet_small

PHOTOS = Path(__file__).parent / "fixtures" / "photos"
CLASSES = ["animal", "food", "person", "vehicle", "scene"]
SORTING = {"chelsea.jpg": "animal", "logo.png": "animal", "coffee.jpg": "food", "astronaut.jpg": "person",
           "camera.png": "person", "rocket.jpg": "vehicle", "motorcycle.jpg": "vehicle", "hubble.webp": "scene",
           "color.bmp": "scene"}
SIZE = 64
SHAPE = (3, SIZE, SIZE)
BLOCKS = ["layer1.0", "layer1", "layer2.0", "layer2", "layer3.0", "layer3", "layer4.0", "layer4"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One thread, as each xdist worker runs: two OpenMP threads on a core
    another process keeps busy spin (the gradient-descent analyses ran 30x
    slower here)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _preprocess() -> Preprocess:
    return Preprocess.imagenet(SIZE, 73)


@pytest.fixture(scope="module")
def subject() -> Subject:
    torch.manual_seed(0)
    model = resnet18(len(CLASSES)).eval()
    return Subject(model, CLASSES, SHAPE, preprocessing=_preprocess(), kind="architecture")


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    for name, cls in SORTING.items():
        (folder / cls).mkdir(exist_ok=True)
        shutil.copy(PHOTOS / name, folder / cls / name)
    return folder


@pytest.fixture(scope="module")
def dataset(subject, photos) -> Dataset:
    return folder_dataset(subject, photos, progress=False, workers=0)


@pytest.fixture(scope="module")
def exported(subject, tmp_path_factory) -> Subject:
    """``subject``'s network exported for a dynamic batch and loaded back."""
    path = tmp_path_factory.mktemp("pt2") / "resnet18.pt2"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.export.export(subject.model, (torch.randn(2, *SHAPE),),
                                      dynamic_shapes=({0: torch.export.Dim("batch")},))
        torch.export.save(program, path)
    return load(path, classes=CLASSES, preprocess=_preprocess())


def test_layers_are_chosen_on_the_main_path(subject):
    """The main path of a ResNet is its stem, its blocks and stages, its pool and
    fc, never a layer inside a block; the paper's models and a VGG/AlexNet keep
    their layers (ReLUs in a chain of nn.Sequential layers)."""
    path = main_path(subject.model, SHAPE)
    assert [layer.name for layer in path] == ["conv1", "bn1", "relu", "maxpool", *BLOCKS, "avgpool", "fc"]
    assert [layer.name for layer in path if layer.relu] == ["relu", *BLOCKS]
    assert path[-1].output and not any(layer.output for layer in path[:-1])
    assert path[BLOCKS.index("layer4") + 4].shape == (512, 2, 2)
    model = subject.model
    assert default_layer(model, SHAPE) == "layer4" and map_layer(model, SHAPE) == "layer4"
    assert depth_layers(model, SHAPE) == ["relu", *BLOCKS]
    assert embedded_layers(model, 4, SHAPE) == ["conv1", "layer1", "layer3.0", "layer4"]
    assert last_hidden_layer(model, SHAPE) == "avgpool" and compared_layers(model, SHAPE) == ("relu", "avgpool")
    with LayerTap(model, depth_layers(model, SHAPE)) as tap:   # every one runs once: no "NAME#0" needed
        assert tap(torch.zeros(2, *SHAPE))["layer4"].shape == (2, 512, 2, 2)

    zf = zfnet_small(10)
    assert depth_layers(zf, SHAPE) == depth_layers(zf) == [f"relu{i}" for i in range(1, 8)]
    assert default_layer(zf, SHAPE) == default_layer(zf) == "relu5" and map_layer(zf, SHAPE) == "conv5"
    assert compared_layers(zf, SHAPE) == ("relu1", "relu7")
    assert default_layer(alexnet_torchvision(5)) == "features.11"
    assert default_layer(vgg11_bn(5)) == "features.27"          # the ReLU after the last conv's BatchNorm
    # a ReLU module called twice on the main path is named by its calls
    twice = _Twice()
    assert [layer.name for layer in main_path(twice, (3, 8, 8))] == ["conv1", "relu#0", "conv2", "relu#1", "fc"]
    assert depth_layers(twice, (3, 8, 8)) == ["relu#0", "relu#1"]
    with LayerTap(twice, depth_layers(twice, (3, 8, 8))) as tap:
        out = tap(torch.randn(2, 3, 8, 8))
    assert out["relu#0"].shape == (2, 4, 6, 6) and out["relu#1"].shape == (2, 4, 4, 4)


class _Twice(nn.Module):
    """One nn.ReLU used after both convolutions."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2, self.relu, self.fc = nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3), nn.ReLU(), nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(self.relu(self.conv2(self.relu(self.conv1(x)))).amax((2, 3)))


def test_gradcam_explains_layer4_like_a_gradient_by_hand(subject, dataset):
    """Grad-CAM at layer4 (the K-copies trick needs a layer on the main path):
    non-negative, finite maps equal to eqs. 1-2 computed with a plain
    autograd gradient, one image at a time."""
    result, extra = run_analysis("gradcam", subject, dataset, quick=True, progress=False)
    n = len(dataset)
    assert result.layer == "layer4" and result.maps.shape == (n, 2, 2) and result.top_maps.shape == (n, 3, 2, 2)
    assert torch.isfinite(result.maps).all() and (result.maps >= 0).all() and (result.top_maps >= 0).all()
    assert result.guided.shape == (min(8, n), 3, SIZE, SIZE) and result.guided.dtype == torch.uint8
    assert extra["boxes"] is None
    images = subject.preprocess(dataset.images)
    kept = {}
    handle = subject.model.layer4.register_forward_hook(lambda _m, _i, out: kept.update(a=out) or out.retain_grad())
    try:
        for i in range(3):
            logits = subject.model(images[i:i + 1])
            logits[0, int(dataset.labels[i])].backward()
            a = kept["a"]
            weights = a.grad.mean((2, 3))
            expected = torch.relu(torch.einsum("nc,nchw->nhw", weights, a.detach()))[0]
            torch.testing.assert_close(result.maps[i], expected, rtol=1e-4, atol=1e-6)
    finally:
        handle.remove()
        subject.model.zero_grad(set_to_none=True)


def test_occlusion_runs_without_boxes_and_pointing_needs_them(subject, dataset):
    """Occlusion follows layer4's strongest map without boxes; the pointing game
    refuses in one sentence without boxes and plays with them."""
    result, extra = run_analysis("occlusion", subject, dataset.subset(slice(0, 4)), quick=True, progress=False)
    assert result.layer == "layer4" and result.true_prob.shape == (4, 7, 7) and extra["boxes"] is None
    assert ((result.true_prob >= 0) & (result.true_prob <= 1)).all() and torch.isfinite(result.activation).all()
    probs = subject.model(subject.preprocess(dataset.images[:4])).softmax(1).detach()
    torch.testing.assert_close(result.base_prob, probs[torch.arange(4), dataset.labels[:4]])
    assert extra["projections"].shape == (4, 3, SIZE, SIZE)

    with pytest.raises(ValueError, match="pointing needs object boxes; this dataset has none"):
        run_analysis("pointing", subject, dataset, quick=True, progress=False)
    boxed = Dataset(dataset.images[:4], dataset.labels[:4], CLASSES, boxes=torch.tensor([[8, 8, 56, 56]] * 4))
    from zfcore.analysis.pointing import pointing_game
    game = pointing_game(subject.model, subject.preprocess(boxed.images), boxed.labels, boxed.boxes,
                         methods=("gradcam", "guided"), progress=False)
    assert game.hit.shape == (2, 4) and ((game.points >= 0) & (game.points < SIZE)).all()


def test_feature_analyses_use_the_pooled_features(subject, dataset):
    """Neighbours and the embedding read ``avgpool`` (512 numbers per image)."""
    near, _ = run_analysis("neighbours", subject, dataset, quick=True, progress=False)
    assert near.layer == "avgpool" and near.feature_index.shape == (len(dataset), 5)
    assert (near.feature_index != near.queries[:, None]).all() and torch.isfinite(near.feature_distance).all()
    embedded, _ = run_analysis("embedding", subject, dataset, quick=True, progress=False)
    assert embedded.layer == "avgpool"
    assert all(c.shape == (len(dataset), 2) and torch.isfinite(c).all() for c in embedded.coords.values())


def test_optimisation_analyses_on_a_resnet(subject, dataset):
    """Inversion, DeepDream and class models ascend or descend on the block
    outputs; the invariance curves compare the stem's ReLU with avgpool."""
    inverted, extra = run_analysis("inversion", subject, dataset, quick=True, progress=False)
    assert inverted.layers == ["conv1", "layer1", "layer3.0", "layer4"]
    assert inverted.reconstructions.shape == (4, 2, *SHAPE) and torch.isfinite(inverted.reconstructions).all()
    assert (inverted.curve[:, -1] < inverted.curve[:, 0]).all()       # each layer's objective went down
    assert (inverted.feature_error[0] < 0.5).all() and extra["reconstructions"].dtype == torch.uint8

    dream, _ = run_analysis("deepdream", subject, dataset, quick=True, progress=False)
    assert dream.layer == "layer1" and dream.octaves == 3 and torch.isfinite(dream.dreams).all()
    assert (dream.norm_after > dream.norm_before).all()

    models, _ = run_analysis("class_model", subject, dataset, quick=True, progress=False)
    assert models.images.shape == (len(CLASSES), *SHAPE) and torch.isfinite(models.all_scores).all()
    assert (models.all_scores.argmax(1) == models.classes).float().mean() >= 0.6

    # labelled by the model itself, so each class's first image counts as classified correctly
    predicted = subject.model(subject.preprocess(dataset.images)).argmax(1)
    own = Dataset(dataset.images, predicted, CLASSES)
    invariant, _ = run_analysis("invariance", subject, own, quick=True, progress=False)
    assert invariant.layers == ["relu", "avgpool"]
    for kind in invariant.transforms:
        identity = (invariant.values[kind] == {"translation": 0, "scale": 1, "rotation": 0}[kind]).nonzero()[0]
        for layer in invariant.layers:
            distance = invariant.distances[kind][layer]
            assert torch.isfinite(distance).all() and (distance >= 0).all() and (distance[identity] == 0).all()

    attacked, _ = run_analysis("adversarial", subject, dataset, quick=True, progress=False)
    assert attacked.accuracy.shape == (2, 5) and torch.isfinite(attacked.accuracy).all()
    assert (attacked.accuracy[:, 0] == attacked.clean_accuracy).all()
    assert (attacked.accuracy[:, -1] <= attacked.clean_accuracy).all()


def test_an_exported_program_gets_the_same_layers_and_maps(subject, exported, dataset):
    """A ``.pt2`` program (``InterpreterModule``s: no nn.Conv2d, no nn.ReLU) has
    the same main path, and Grad-CAM and the neighbours' features agree with
    the eager model's; DeepDream takes one octave (the program takes only its
    own input size)."""
    assert not any(isinstance(m, nn.Conv2d | nn.ReLU) for m in exported.model.modules())
    assert [layer.name for layer in main_path(exported.model, SHAPE)] == \
        [layer.name for layer in main_path(subject.model, SHAPE)]
    assert default_layer(exported.model, SHAPE) == "layer4" and last_hidden_layer(exported.model, SHAPE) == "avgpool"
    images = subject.preprocess(dataset.images[:3])
    torch.testing.assert_close(grad_cam(exported.model, images, "layer4", progress=False),
                               grad_cam(subject.model, images, "layer4", progress=False), rtol=1e-4, atol=1e-5)
    result, _ = run_analysis("gradcam", exported, dataset, quick=True, progress=False)
    assert result.layer == "layer4" and (result.maps >= 0).all()
    near, _ = run_analysis("neighbours", exported, dataset, quick=True, progress=False)
    assert near.layer == "avgpool"
    dream, _ = run_analysis("deepdream", exported, dataset, quick=True, progress=False)
    assert dream.layer == "layer1" and dream.octaves == 1 and (dream.norm_after > dream.norm_before).all()
