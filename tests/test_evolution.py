"""Feature evolution (Fig. 4): the strongest activation per snapshot against a
brute force, the projections against Deconvnet.project of that unit, the filter
change against a plain computation from the snapshot files, the map choice,
bad arguments, and the paper's claim on the trained demo run."""

import math
import shutil

import pytest
import torch
from torch.utils.data import Subset, TensorDataset

import zfcore
from zfcore.analysis.evolution import Evolution, feature_evolution, settling_epoch
from zfcore.deconv import Deconvnet
from zfcore.models import PRESETS
from zfcore.report.pages.evolution import render
from zfcore.train import TrainConfig, train

SIZE = 48
LAYERS = ["conv1", "conv2", "conv3", "conv4", "conv5"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A run of 3 short epochs with snapshots at each, and 13 random images."""
    out = tmp_path_factory.mktemp("evolution") / "run"
    train(TrainConfig(out=str(out), image_size=SIZE, per_class=4, width=0.125, fc_width=32, batch_size=8, epochs=3,
                      lr=0.05, snapshot_epochs="1,2,3", threads=1, progress=False))
    images = torch.randn(13, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3))
    dataset = TensorDataset(images, torch.arange(13) % 10)
    result = feature_evolution(out, dataset, maps_per_layer=3, batch_size=5, progress=False)
    return out, dataset, result


def _snapshot_state(run, epoch):
    return torch.load(run / "snapshots" / f"epoch-{epoch:03d}.pt", map_location="cpu", weights_only=True)


def _model(state):
    """The snapshot's network, built without zfcore.load."""
    config = state["config"]
    model = PRESETS[config["model"]](len(state["classes"]), input_size=config["image_size"], width=config["width"],
                                     fc_width=config["fc_width"], init_std=None)
    model.load_state_dict(state["model"])
    return model.eval()


def _layer_output(model, images, layer):
    x = images
    for name, module in model.named_children():
        x = module(x)
        if name == layer:
            return x
    raise AssertionError(layer)


def test_strongest_activation_per_snapshot_equals_a_brute_force(tiny_run):
    run, dataset, result = tiny_run
    assert result.epochs == [1, 2, 3] and result.layers == LAYERS
    images = dataset.tensors[0].double()
    for e, epoch in enumerate(result.epochs):
        model = _model(_snapshot_state(run, epoch)).double()
        with torch.no_grad():
            for layer in LAYERS:
                out = _layer_output(model, images, layer)                    # [N, C, h, w], float64
                n, c, h, w = out.shape
                flat = out.transpose(0, 1).reshape(c, n * h * w)             # image-major: ties to the smaller image
                best, where = flat.max(1)
                second = flat.topk(2, dim=1).values[:, 1]
                assert torch.allclose(result.maxima[layer][e].double(), best, rtol=1e-5, atol=1e-6)
                for j, channel in enumerate(result.channels[layer]):
                    image, position = int(result.images[layer][e, j]), result.positions[layer][e, j].tolist()
                    value = out[image, channel, position[0], position[1]]
                    assert math.isclose(float(value), float(best[channel]), rel_tol=1e-5, abs_tol=1e-6)
                    assert math.isclose(float(result.values[layer][e, j]), float(best[channel]), rel_tol=1e-5,
                                        abs_tol=1e-6)
                    if best[channel] - second[channel] > 1e-4:  # no float32 near-tie: the very same unit
                        q = int(where[channel])
                        assert (image, position) == (q // (h * w), [q % (h * w) // w, q % w])


def test_projections_equal_deconvnet_project_of_that_unit(tiny_run):
    run, dataset, result = tiny_run
    for e, epoch in enumerate(result.epochs):
        model = _model(_snapshot_state(run, epoch))
        net = Deconvnet(model, (3, SIZE, SIZE))
        for layer in LAYERS:
            for j, channel in enumerate(result.channels[layer]):
                image = dataset[int(result.images[layer][e, j])][0]
                h, w = result.positions[layer][e, j].tolist()
                full = net.project(image[None], layer, channel, position=(h, w))[0]
                top, left, bottom, right = result.boxes[layer][e, j].tolist()
                wt, wl = result.windows[layer][e, j].tolist()
                window = result.projections[layer][e, j]
                inside = window[:, top - wt:bottom - wt, left - wl:right - wl]
                # batched (top_k_projections) against one image: float32 sums in another order
                peak = float(full.abs().max())
                torch.testing.assert_close(inside, full[:, top:bottom, left:right], rtol=1e-4, atol=1e-5 * peak)
                assert float(full.abs().sum()) == pytest.approx(float(inside.abs().sum()), rel=1e-5)
                outside = window.clone()
                outside[:, top - wt:bottom - wt, left - wl:right - wl] = 0
                assert not outside.any()
                assert full.abs().sum() > 0


def test_filter_change_equals_a_plain_computation_from_the_snapshots(tiny_run):
    run, _dataset, result = tiny_run
    states = [_snapshot_state(run, epoch)["model"] for epoch in result.epochs]
    for layer in LAYERS:
        expected = [math.nan]
        for before, after in zip(states, states[1:]):
            a, b = before[f"{layer}.weight"].double(), after[f"{layer}.weight"].double()
            expected.append(math.sqrt(((b - a) ** 2).sum()) / math.sqrt((a ** 2).sum()))
        got = result.filter_change[layer]
        assert got.dtype == torch.float64 and math.isnan(got[0]) and (got[1:] > 0).all()
        assert torch.allclose(got[1:], torch.tensor(expected[1:], dtype=torch.float64), rtol=1e-10, atol=0)
        assert torch.allclose(result.change_rate[layer][1:], got[1:], rtol=1e-12)  # snapshots one epoch apart
        assert result.settling[layer] == settling_epoch(result.epochs, expected, result.settle_threshold)


def test_settling_epoch_is_the_first_epoch_after_which_the_rate_stays_below_the_threshold():
    epochs = [1, 2, 4, 8]
    # per-epoch rates: 0.5, 0.05, 0.01
    assert settling_epoch(epochs, [math.nan, 0.5, 0.1, 0.04], 0.06) == 2
    assert settling_epoch(epochs, [math.nan, 0.5, 0.1, 0.04], 0.02) == 4
    assert settling_epoch(epochs, [math.nan, 0.5, 0.1, 0.04], 0.6) == 1
    assert settling_epoch(epochs, [math.nan, 0.5, 0.1, 0.04], 0.005) is None
    assert settling_epoch(epochs, [math.nan, 0.01, 0.5, 0.01], 0.1) == 4   # a late jump resets it
    assert settling_epoch([3], [math.nan], 0.1) is None


def test_default_maps_are_the_strongest_at_the_final_epoch(tiny_run):
    run, dataset, result = tiny_run
    images = dataset.tensors[0].double()
    model = _model(_snapshot_state(run, result.epochs[-1])).double()
    with torch.no_grad():
        for layer in LAYERS:
            best = _layer_output(model, images, layer).amax(dim=(0, 2, 3))
            expected = sorted(range(len(best)), key=lambda c: (-float(best[c]), c))[:3]
            assert result.channels[layer] == expected and result.chosen_by[layer] == "final"


def test_channels_names_the_maps_of_a_layer(tiny_run):
    run, dataset, result = tiny_run
    chosen = feature_evolution(run, dataset, layers=["conv5", "conv2"], channels={"conv2": [4, 0]}, maps_per_layer=2,
                               progress=False)
    assert chosen.layers == ["conv2", "conv5"]  # forward order
    assert chosen.channels["conv2"] == [4, 0] and chosen.chosen_by["conv2"] == "given"
    assert chosen.channels["conv5"] == result.channels["conv5"][:2]
    full = result.maxima["conv2"]
    assert torch.allclose(chosen.values["conv2"], full[:, [4, 0]], rtol=1e-5, atol=1e-6)


def test_result_survives_a_safe_save_and_renders(tiny_run, tmp_path):
    _run, _dataset, result = tiny_run
    torch.save(result.as_dict(), tmp_path / "evolution.pt")
    back = Evolution.from_dict(torch.load(tmp_path / "evolution.pt", weights_only=True))
    assert back.epochs == result.epochs and back.channels == result.channels and back.settling == result.settling
    for layer in LAYERS:
        assert torch.equal(back.projections[layer], result.projections[layer])
        assert torch.equal(back.filter_change[layer].nan_to_num(-1), result.filter_change[layer].nan_to_num(-1))
    page = render(back.as_dict(), tmp_path / "assets")
    files = [f["file"] for f in page["figures"]]
    assert files == [f"evolution-maps-{i}.png" for i in range(1, 6)] + ["evolution-change.png"]
    for file in files:
        assert (tmp_path / "assets" / file).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in (tmp_path / "assets").iterdir()) == sorted(files)
    assert {"title", "intro", "figures", "tables", "claims"} <= set(page)
    for table in page["tables"]:
        assert all(len(row) == len(table["header"]) for row in table["rows"])
    assert all(isinstance(c["holds"], bool) for c in page["claims"]) and len(page["claims"]) == 3


def test_bad_arguments_are_named(tiny_run, tmp_path):
    run, dataset, _result = tiny_run
    empty = tmp_path / "empty-run"
    empty.mkdir()
    with pytest.raises(ValueError, match=r"empty-run.*holds no snapshots"):
        feature_evolution(empty, dataset, progress=False)
    with pytest.raises(ValueError, match="is not a folder"):
        feature_evolution(tmp_path / "missing", dataset, progress=False)
    with pytest.raises(ValueError, match="no layer named 'conv9'"):
        feature_evolution(run, dataset, layers=["conv9"], progress=False)
    with pytest.raises(ValueError, match="'relu1' is a ReLU"):
        feature_evolution(run, dataset, layers=["relu1"], progress=False)
    with pytest.raises(ValueError, match=r"channels\['conv1'\] must be distinct map indices"):
        feature_evolution(run, dataset, layers=["conv1"], channels={"conv1": [999]}, progress=False)
    with pytest.raises(ValueError, match="channels names layer 'conv5', which is not in layers"):
        feature_evolution(run, dataset, layers=["conv1"], channels={"conv5": [0]}, progress=False)
    with pytest.raises(ValueError, match="maps_per_layer must be a positive int"):
        feature_evolution(run, dataset, maps_per_layer=0, progress=False)
    with pytest.raises(ValueError, match="mode must be 'deconvnet', 'guided' or 'gradient'"):
        feature_evolution(run, dataset, mode="backprop", progress=False)
    wrong = TensorDataset(torch.zeros(2, 3, SIZE + 1, SIZE + 1), torch.zeros(2))
    with pytest.raises(ValueError, match=r"images Tensor\[3, 48, 48\]"):
        feature_evolution(run, wrong, progress=False)


def test_a_snapshot_that_is_not_a_zfcore_file_is_named(tiny_run, tmp_path):
    run, dataset, _result = tiny_run
    copy = tmp_path / "run"
    shutil.copytree(run / "snapshots", copy / "snapshots")
    bad = copy / "snapshots" / "epoch-002.pt"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match=r"epoch 2: zfcore.load: .*epoch-002.pt.* is not a zfcore model"):
        feature_evolution(copy, dataset, progress=False)
    torch.save({"weights": torch.zeros(3)}, bad)
    with pytest.raises(ValueError, match=r"epoch-002.pt.*no 'model' and 'config' entries"):
        feature_evolution(copy, dataset, progress=False)
    other = _snapshot_state(run, 2)
    other["config"]["fingerprint"] = {**other["config"]["fingerprint"], "width": 0.25}
    torch.save(other, bad)
    with pytest.raises(ValueError, match="epoch 2 .* is of another model"):
        feature_evolution(copy, dataset, progress=False)


def test_run_follows_the_subjects_snapshots_on_the_handed_images(tiny_run, tmp_path):
    """``run`` (zfcore analyze evolution, quick): the subject's run folder's
    snapshots, 4 maps per layer, over the dataset's images brought to the model's
    input; a subject without snapshots is refused."""
    from zfcore.analysis.evolution import ANALYSIS, run
    from zfcore.load import Dataset

    run_folder, _dataset, _result = tiny_run
    subject = zfcore.load(run_folder / "model.pt")
    images = torch.randint(0, 256, (9, 3, SIZE, SIZE), dtype=torch.uint8, generator=torch.Generator().manual_seed(4))
    dataset = Dataset(images, torch.arange(9) % 10, list(subject.classes))
    assert ANALYSIS.refusal(subject, dataset) is None
    result, extra = run(subject, dataset, quick=True, progress=False, seed=0)
    assert extra == {} and result.epochs == [1, 2, 3] and result.dataset_size == 9
    assert all(len(result.channels[layer]) == 4 for layer in LAYERS)
    direct = feature_evolution(run_folder, TensorDataset(subject.preprocess(images), dataset.labels),
                               maps_per_layer=4, progress=False)
    assert direct.channels == result.channels
    for layer in LAYERS:
        assert torch.equal(direct.top_images[layer], result.top_images[layer])
        assert torch.equal(direct.projections[layer], result.projections[layer])
    saved = result.to_plain()
    assert torch.equal(saved["final_agreement"]["conv1"], result.final_agreement["conv1"])  # as saved before
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(run_folder / "model.pt", elsewhere / "model.pt")
    lonely = zfcore.load(elsewhere / "model.pt")
    assert "snapshots" in ANALYSIS.refusal(lonely, dataset)


def test_lower_layers_settle_earlier_than_upper_ones(demo_folder, tmp_path):
    """The paper: lower layers converge within a few epochs, upper ones later.
    Measured on the demo run (snapshots 1, 2, 4, 6, 8, 12; 400 of its validation
    images): before the final epoch, conv1's maps already pick their final
    strongest image more often than conv5's. The filters' relative change does
    not show it here (conv1's is the larger at every interval): that claim is
    only checked to be reported as measured."""
    from zfcore.load import open_dataset

    out, _stdout = demo_folder
    loaded = zfcore.load(out / "run" / "model.pt")
    dataset = Subset(open_dataset(loaded, "synthetic"), range(400))
    result = feature_evolution(out / "run", dataset, maps_per_layer=4, progress=False)
    assert result.epochs == [1, 2, 4, 6, 8, 12]
    agreement = result.final_agreement
    early = {layer: float(agreement[layer][:-1].mean()) for layer in LAYERS}
    assert early["conv1"] > early["conv5"], early
    claims = render(result, tmp_path / "assets")["claims"]
    assert claims[0]["holds"] is True
    rate = result.change_rate
    assert claims[1]["holds"] == bool(rate["conv1"][-1] < rate["conv5"][-1])
    settled = [math.inf if result.settling[n] is None else result.settling[n] for n in LAYERS]
    assert claims[2]["holds"] == all(a <= b for a, b in zip(settled, settled[1:]))
