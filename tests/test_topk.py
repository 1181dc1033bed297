"""Streaming top-k against a brute-force oracle: ties between images and
inside maps, k below and above the dataset size, any batch size, resumed after
an interruption, and two processes under torchrun equal to one."""

import os
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from torch import nn

from zfcore.analysis import top_k

ROOT = Path(__file__).resolve().parents[1]


def tiny_model(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    model = nn.Sequential(OrderedDict([
        ("conv1", nn.Conv2d(3, 5, 3, padding=1)), ("relu1", nn.ReLU()), ("pool1", nn.MaxPool2d(2)),
        ("conv2", nn.Conv2d(5, 4, 3)), ("relu2", nn.ReLU()), ("flatten", nn.Flatten()),
        ("fc", nn.Linear(4 * 2 * 2, 6)),
    ]))
    with torch.no_grad():  # weights on a coarse grid: sums are exact, so equal images give equal maxima
        for p in model.parameters():
            p.copy_((p * 8).round() / 8)
    return model.eval()


class Images(torch.utils.data.Dataset):
    """Random images on a coarse grid, with exact duplicates (ties between images)
    and flat regions (ties between positions inside a map)."""

    def __init__(self, n: int = 23, seed: int = 1, fail_at: int | None = None):
        g = torch.Generator().manual_seed(seed)
        x = torch.randint(-4, 5, (n, 3, 8, 8), generator=g).float() / 4
        x[3] = x[10]              # duplicates at other indices
        x[17] = x[10]
        x[5] = x[8]
        x[6, :, :4] = 0.5         # flat blocks: many positions share a map's maximum
        x[12] = 0.25
        self.x = x
        self.fail_at = fail_at

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        if self.fail_at is not None and i == self.fail_at:
            raise KeyboardInterrupt("simulated interruption")
        return self.x[i], i % 3


def oracle(model, dataset, layer, k):
    """Every activation kept, each map's maximum and first row-major argmax by a
    Python loop, images sorted by (-value, index)."""
    outputs = {}
    handle = dict(model.named_modules())[layer].register_forward_hook(lambda m, i, o: outputs.update(out=o))
    with torch.no_grad():
        model(torch.stack([dataset[i][0] for i in range(len(dataset))]))
    handle.remove()
    out = outputs["out"]
    if out.dim() == 2:
        out = out[:, :, None, None]
    n, c, h, w = out.shape
    values = torch.empty(c, min(k, n))
    images = torch.empty(c, min(k, n), dtype=torch.int64)
    positions = torch.empty(c, min(k, n), 2, dtype=torch.int64)
    for ch in range(c):
        per_image = []
        for i in range(n):
            best, where = None, None
            for y in range(h):
                for x in range(w):
                    v = float(out[i, ch, y, x])
                    if best is None or v > best:
                        best, where = v, (y, x)
            per_image.append((-best, i, where))
        per_image.sort()
        for j, (neg, i, where) in enumerate(per_image[:k]):
            values[ch, j], images[ch, j], positions[ch, j] = -neg, i, torch.tensor(where)
    return values, images, positions


@pytest.mark.parametrize("k", [1, 4, 30])
@pytest.mark.parametrize("batch_size", [1, 5, 64])
def test_top_k_equals_brute_force(k, batch_size):
    model, data = tiny_model(), Images()
    found = top_k(model, data, ["conv1", "relu2", "fc"], k=k, batch_size=batch_size, progress=False)
    for layer in ("conv1", "relu2", "fc"):
        values, images, positions = oracle(model, data, layer, k)
        assert torch.equal(found[layer].values, values), layer
        assert torch.equal(found[layer].images, images), layer
        assert torch.equal(found[layer].positions, positions), layer
        assert found[layer].values.shape == (values.shape[0], min(k, len(data)))


def test_ties_go_to_the_smaller_index_and_the_first_position():
    model, data = tiny_model(), Images()
    found = top_k(model, data, ["relu2"], k=23, batch_size=4, progress=False)["relu2"]
    ties = 0
    for ch in range(found.channels):
        v, i = found.values[ch].tolist(), found.images[ch].tolist()
        for a in range(len(v) - 1):
            assert v[a] >= v[a + 1]
            if v[a] == v[a + 1]:
                ties += 1
                assert i[a] < i[a + 1]
    assert ties > 0  # the data really has ties (duplicates, dead maps)


def test_unknown_layer_and_bad_arguments_are_named():
    model, data = tiny_model(), Images()
    with pytest.raises(ValueError, match="no layer named 'conv9'"):
        top_k(model, data, ["conv1", "conv9"], progress=False)
    with pytest.raises(ValueError, match="k must be a positive int"):
        top_k(model, data, "conv1", k=0, progress=False)
    with pytest.raises(ValueError, match="empty"):
        top_k(model, torch.utils.data.TensorDataset(torch.zeros(0, 3, 8, 8), torch.zeros(0)), "conv1",
              progress=False)
    with pytest.raises(ValueError, match="resume=True needs a state_file"):
        top_k(model, data, "conv1", resume=True, progress=False)


def test_interrupted_then_resumed_equals_uninterrupted(tmp_path):
    model = tiny_model()
    whole = top_k(model, Images(), ["conv1", "fc"], k=5, batch_size=3, progress=False)
    state = tmp_path / "state.pt"
    with pytest.raises(KeyboardInterrupt):
        top_k(model, Images(fail_at=16), ["conv1", "fc"], k=5, batch_size=3, state_file=state, save_every=2,
              progress=False)
    saved = torch.load(state, weights_only=True)
    assert 0 < saved["done"] < 16       # the state holds a prefix of the work
    resumed = top_k(model, Images(), ["conv1", "fc"], k=5, batch_size=3, state_file=state, save_every=2,
                    resume=True, progress=False)
    for layer in whole:
        for field in ("values", "images", "positions"):
            assert torch.equal(getattr(whole[layer], field), getattr(resumed[layer], field))
    # a state file of another job (other k) is refused, never mixed in
    with pytest.raises(ValueError, match="belongs to another job"):
        top_k(model, Images(), ["conv1", "fc"], k=4, state_file=state, resume=True, progress=False)
    with pytest.raises(ValueError, match="belongs to another job"):
        top_k(tiny_model(seed=5), Images(), ["conv1", "fc"], k=5, state_file=state, resume=True, progress=False)


def test_two_processes_equal_one(tmp_path):
    script = tmp_path / "shard.py"
    script.write_text(
        "import sys, torch, torch.distributed as dist\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "from tests.test_topk import Images, tiny_model\n"
        "from zfcore.analysis import top_k\n"
        "found = top_k(tiny_model(), Images(), ['conv1', 'relu2', 'fc'], k=6, batch_size=4, progress=False,\n"
        f"             state_file={str(tmp_path / 'state.pt')!r})\n"
        "if dist.get_rank() == 0:\n"
        f"    torch.save({{n: t.as_dict() for n, t in found.items()}}, {str(tmp_path / 'out.pt')!r})\n"
        "dist.destroy_process_group()\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                    str(script)], check=True, env=env, cwd=tmp_path, timeout=300, capture_output=True)
    sharded = torch.load(tmp_path / "out.pt", weights_only=True)
    single = top_k(tiny_model(), Images(), ["conv1", "relu2", "fc"], k=6, batch_size=4, progress=False)
    for layer, t in single.items():
        for field in ("values", "images", "positions"):
            assert torch.equal(sharded[layer][field], getattr(t, field)), (layer, field)
    assert (tmp_path / "state.pt.rank0").exists() and (tmp_path / "state.pt.rank1").exists()


def test_nan_maps_rank_first_whatever_the_batch_size():
    """A NaN in a late image makes its maps' maxima NaN, which count as the
    largest: with one batch every map's position is searched; with small batches
    only the maps that can still enter the top-k are, NaN ones included."""
    data = Images()
    data.x[20, 0, 5, 6] = float("nan")
    model = tiny_model()
    layers = ["conv1", "conv2", "fc"]
    whole = top_k(model, data, layers, k=3, batch_size=len(data), progress=False)
    assert bool((whole["conv1"].images[:, 0] == 20).all()) and bool(whole["conv1"].values[:, 0].isnan().all())
    for batch_size in (1, 4, 7):
        got = top_k(model, data, layers, k=3, batch_size=batch_size, progress=False)
        for layer in layers:
            torch.testing.assert_close(got[layer].values, whole[layer].values, equal_nan=True, rtol=0, atol=0)
            assert torch.equal(got[layer].images, whole[layer].images), (layer, batch_size)
            assert torch.equal(got[layer].positions, whole[layer].positions), (layer, batch_size)


# ------------------------------------------------------------ the whole job: top-k, then projections


def _forwards(monkeypatch) -> list[int]:
    """The batch size of every forward the deconvnet runs from here on."""
    from zfcore.deconv import Deconvnet

    sizes, forward = [], Deconvnet._forward

    def counted(self, images, *args, **kwargs):
        sizes.append(images.shape[0])
        return forward(self, images, *args, **kwargs)

    monkeypatch.setattr(Deconvnet, "_forward", counted)
    return sizes


def _check_against_project(net, data, found, projected):
    """Every window equals its unit's projection by ``Deconvnet.project`` (one
    image, one unit), bit for bit; every patch is the image's box."""
    spec = net.layer_spec()
    for layer, t in found.items():
        flat = len(spec[layer].shape) != 3
        p = projected[layer]
        for c in range(t.channels):
            for j in range(t.values.shape[1]):
                i, (h, w) = int(t.images[c, j]), t.positions[c, j].tolist()
                image = data[i][0][None]
                one = net.project(image, layer, c, None if flat else (h, w))[0]
                top, left, bottom, right = spec.box(layer, h, w)
                assert p.boxes[c, j].tolist() == [top, left, bottom, right]
                rows, cols = p.inside(c, j)
                assert torch.equal(p.projections[c, j, :, rows, cols], one[:, top:bottom, left:right]), (layer, c, j)
                assert torch.equal(p.patches[c, j, :, rows, cols], image[0, :, top:bottom, left:right])
                rest = p.projections[c, j].clone()
                rest[:, rows, cols] = 0
                assert not rest.any()


@pytest.mark.parametrize("kept", [False, True])
def test_projections_forward_each_image_once_for_every_layer(monkeypatch, kept):
    """Units of several layers are grouped by image: one forward per distinct
    image for all its units (none with the top-k pass's records), and each
    projection equals ``Deconvnet.project`` of that one unit."""
    from zfcore.analysis.projections import ForwardRecords, top_k_projections
    from zfcore.deconv import Deconvnet

    model, data = tiny_model(), Images()
    layers = ["conv1", "relu2", "fc"]  # cropped windows, whole maps, a Linear layer
    ratio = Deconvnet.crop_work_ratio  # relu2's units go down on whole maps (as a ResNet's layer4 do)
    monkeypatch.setattr(Deconvnet, "crop_work_ratio",
                        lambda self, layer: 1.0 if layer == "relu2" else ratio(self, layer))
    net = Deconvnet(model, (3, 8, 8))
    assert net.crop_work_ratio("conv1") > 1
    records = ForwardRecords(net) if kept else None
    sizes = _forwards(monkeypatch)
    found = top_k(model, data, layers, k=4, batch_size=5, progress=False, records=records)
    assert sum(sizes) == (len(data) if kept else 0)  # the top-k pass: on the graph with records, else the module
    holders = [{int(i) for i in found[layer].images.flatten()} for layer in layers]
    distinct = set.union(*holders)
    assert holders[0] & holders[1] & holders[2]  # an image holding units of every layer
    assert len(distinct) < len(data)
    sizes.clear()
    projected = top_k_projections(model, data, found, batch_size=7, net=net, progress=False, records=records)
    assert sum(sizes) == (0 if kept else len(distinct))
    assert kept or max(sizes) <= 7
    _check_against_project(net, data, found, projected)
    if kept:
        assert len(records) == 0  # emptied as the images were done
        # the same units from a store too small for all: the rest go forward again, equal results
        small = ForwardRecords(net, max_bytes=2000)
        sizes.clear()
        again = top_k(model, data, layers, k=4, batch_size=5, progress=False, records=small)
        assert small.refused > 0
        sizes.clear()
        again = top_k_projections(model, data, again, batch_size=7, net=net, progress=False, records=small)
        assert 0 < sum(sizes)
        for layer in layers:
            for field in ("projections", "patches", "boxes", "windows"):
                assert torch.equal(getattr(again[layer], field), getattr(projected[layer], field)), (layer, field)


def test_records_are_checked():
    from zfcore.analysis.projections import ForwardRecords, top_k_projections
    from zfcore.deconv import Deconvnet

    model, data = tiny_model(), Images()
    net = Deconvnet(model, (3, 8, 8))
    records = ForwardRecords(net, "guided")
    found = top_k(model, data, ["conv1"], k=2, progress=False, records=records)
    with pytest.raises(ValueError, match="kept for mode 'guided', not 'deconvnet'"):
        top_k_projections(model, data, found, records=records, progress=False)
    with pytest.raises(ValueError, match="another Deconvnet"):
        top_k_projections(model, data, found, "guided", net=Deconvnet(model, (3, 8, 8)), records=records,
                          progress=False)
    with pytest.raises(ValueError, match="max_bytes"):
        ForwardRecords(net, max_bytes=-1)


@pytest.mark.parametrize("kept", [False, True])
def test_a_selection_of_maps_projects_each_rows_own_map(kept):
    """``channels=`` (``visualize --maps``, a torchrun rank's share): row ``r``
    of a selected ``TopK`` is map ``channels[r]``, and its projections equal
    that map's row of the projection of all maps."""
    from zfcore.analysis.projections import ForwardRecords, top_k_projections
    from zfcore.deconv import Deconvnet

    model, data = tiny_model(), Images()
    net = Deconvnet(model, (3, 8, 8))
    records = ForwardRecords(net) if kept else None
    found = top_k(model, data, ["conv1", "fc"], k=3, batch_size=5, progress=False, records=records)
    full = top_k_projections(model, data, found, batch_size=4, net=net, progress=False)
    chosen = {"conv1": torch.tensor([4, 1]), "fc": torch.tensor([5, 0, 3])}
    part = top_k_projections(model, data, {name: t.select(chosen[name]) for name, t in found.items()},
                             batch_size=4, net=net, progress=False, records=records, channels=chosen)
    for name, maps in chosen.items():
        for field in ("projections", "patches", "boxes", "windows"):
            assert torch.equal(getattr(part[name], field), getattr(full[name], field)[maps]), (name, field)
        assert part[name].projections.abs().amax() > 0
    with pytest.raises(ValueError, match="one map per row"):
        top_k_projections(model, data, found, net=net, progress=False, channels={"conv1": torch.tensor([0])})
