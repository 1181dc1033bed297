"""Architecture selection (section 4.1, Fig. 6): the band energy of filters
against a loop over the DTFT, sinusoids and constants landing in their bands,
the alias share against a loop over the DFT and on gratings below and above
Nyquist, dead-filter counting on a model with a zeroed and a faint filter, the
shift variance against a loop and on a grating at stride 1 vs 2, the driver's
reuse rules on tiny runs, the round trip, rendering and bad arguments."""

import cmath
import math
from collections import OrderedDict
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from zfcore.analysis import architecture as arch
from zfcore.analysis.architecture import (Architecture, alias_fraction, dead_filters, frequency_coverage,
                                          layer_one_aliasing, shift_variance)
from zfcore.models import zfnet_small
from zfcore.report.pages.architecture import render


def _freq(k: int, n: int) -> float:
    """numpy/torch fftfreq convention: k/n for k < n/2, else k/n - 1."""
    return k / n if k < (n + 1) // 2 else k / n - 1


def _reference_bands(w: torch.Tensor, size: int, bands: int, stride: int):
    """Band energy and alias share by an explicit DTFT at every bin (float64 loops)."""
    o_count, i_count, kh, kw = w.shape
    energy = [[0.0] * bands for _ in range(o_count)]
    above = [0.0] * o_count
    total = [0.0] * o_count
    for ky in range(size):
        for kx in range(size):
            fy, fx = _freq(ky, size), _freq(kx, size)
            band = min(math.floor(math.sqrt(fy * fy + fx * fx) / (0.5 / bands)), bands - 1)
            outside = abs(fy) > 0.5 / stride or abs(fx) > 0.5 / stride
            for o in range(o_count):
                p = 0.0
                for i in range(i_count):
                    s = sum(float(w[o, i, y, x]) * cmath.exp(-2j * math.pi * (fy * y + fx * x))
                            for y in range(kh) for x in range(kw))
                    p += abs(s) ** 2
                energy[o][band] += p
                total[o] += p
                above[o] += p if outside else 0.0
    return torch.tensor(energy, dtype=torch.float64), torch.tensor([a / t for a, t in zip(above, total)],
                                                                    dtype=torch.float64)


def _grating(size: int, fy: float, fx: float, channels: int = 1) -> torch.Tensor:
    y = torch.arange(size, dtype=torch.float64)[:, None]
    x = torch.arange(size, dtype=torch.float64)[None, :]
    return torch.cos(2 * math.pi * (fy * y + fx * x)).expand(channels, size, size)


# ----------------------------------------------------------------- frequency coverage


@pytest.mark.parametrize("size,bands,stride", [(8, 4, 2), (9, 8, 3), (7, 3, 1)])
def test_band_energy_equals_a_loop_over_the_dtft(size, bands, stride):
    w = torch.randn(3, 2, 3, 4, generator=torch.Generator().manual_seed(size), dtype=torch.float64)
    got = frequency_coverage(w, stride=stride, bands=bands, size=size)
    energy, alias = _reference_bands(w, size, bands, stride)
    torch.testing.assert_close(got.energy, energy, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(got.alias, alias, rtol=1e-10, atol=1e-12)
    # Parseval: the zero-padded DFT's energy is size^2 times the taps' squared sum
    torch.testing.assert_close(got.energy.sum(1), size * size * w.pow(2).sum(dim=(1, 2, 3)))
    assert got.edges[0] == 0 and got.edges[-1] == 0.5 and len(got.edges) == bands + 1
    torch.testing.assert_close(got.spectrum, energy.sum(0) / energy.sum())
    assert math.isclose(float(got.power.sum()), 1.0, rel_tol=1e-12)


def test_a_pure_sinusoid_lands_in_its_band():
    n = 32
    # 9/32 = 0.281 cycles per pixel: band 4 of 8 ([0.25, 0.3125)), the mid range
    for fy, fx in [(0, 9 / n), (9 / n, 0), (6 / n, 6 / n)]:  # the diagonal one has radius 0.265
        w = _grating(n, fy, fx, channels=3)[None]
        got = frequency_coverage(w, stride=2, bands=8, size=n)
        expected = torch.zeros(8, dtype=torch.float64)
        expected[4] = 1
        torch.testing.assert_close(got.spectrum, expected, atol=1e-12, rtol=0)
        assert got.mid_coverage == pytest.approx(1) and got.low_filters == [] and got.high_filters == []
        # above stride 2's Nyquist (1/4) on one axis: all aliased; the diagonal is below it on both
        assert got.alias.item() == pytest.approx(1.0 if max(fy, fx) > 0.25 else 0.0, abs=1e-12)
    # a 7x7 kernel of the same grating, zero-padded: smeared by the window, still mostly band 4 and mid
    w7 = _grating(7, 0, 0.28, channels=3)[None]
    got = frequency_coverage(w7)
    assert int(got.spectrum.argmax()) == 4 and got.mid_coverage > 0.5 and got.extreme_fraction == 0
    assert got.size == 32


def test_a_constant_filter_is_all_dc_and_low():
    w = torch.ones(2, 3, 8, 8, dtype=torch.float64)
    got = frequency_coverage(w, bands=8, size=8)  # its own period: exactly DC
    torch.testing.assert_close(got.filter_shares[:, 0], torch.ones(2, dtype=torch.float64))
    assert got.low_filters == [0, 1] and got.extreme_fraction == 1 and got.mid_coverage == pytest.approx(0)
    assert got.alias.tolist() == [0.0, 0.0] and got.layer_alias == 0
    # as a 7x7 convolution (zero-padded DTFT) a box is a sinc: mostly low, not all DC
    box = frequency_coverage(torch.ones(1, 3, 7, 7), stride=4)
    assert box.low_filters == [0] and 0.5 < box.range_share("low") < 1
    # a checkerboard (Nyquist on both axes) is all high frequency
    checker = ((-1.0) ** (torch.arange(8)[:, None] + torch.arange(8)[None, :]))[None, None].double()
    got = frequency_coverage(checker, size=8)
    assert got.high_filters == [0] and got.spectrum[-1] == pytest.approx(1)


def test_white_noise_filters_match_the_noise_spectrum():
    w = torch.randn(4000, 3, 7, 7, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    got = frequency_coverage(w)
    assert float(got.noise_spectrum.sum()) == pytest.approx(1)
    torch.testing.assert_close(got.spectrum, got.noise_spectrum, atol=3e-3, rtol=0)
    assert got.layer_alias == pytest.approx(got.noise_alias, abs=3e-3) and got.noise_alias == 0
    at4 = frequency_coverage(w, stride=4)
    assert at4.noise_alias == 1 - 81 / 1024 and at4.layer_alias == pytest.approx(at4.noise_alias, abs=3e-3)
    # the bins of a 32 x 32 DFT: 45 low, 392 mid, 587 high of 1024
    assert [got.noise_share(r) for r in ("low", "mid", "high")] == [45 / 1024, 392 / 1024, 587 / 1024]


def test_a_zero_filter_counts_nowhere():
    w = torch.zeros(3, 3, 5, 5)
    w[1] = torch.randn(3, 5, 5)
    got = frequency_coverage(w, stride=2)
    assert got.filter_shares[0].sum() == 0 and got.alias[0] == 0 and got.alias[2] == 0
    assert got.filter_shares[1].sum() == pytest.approx(1)
    assert got.layer_alias == pytest.approx(float(got.alias[1]))


# ----------------------------------------------------------------- aliasing


def _reference_alias(maps: torch.Tensor, stride: int) -> torch.Tensor:
    """Per channel: mean removed, periodic Hann window, DFT by explicit loops."""
    n_images, channels, h, w = maps.shape
    above, total = [0.0] * channels, [0.0] * channels
    for c in range(channels):
        for n in range(n_images):
            m = maps[n, c].double()
            m = m - m.mean()
            win = [[(0.5 - 0.5 * math.cos(2 * math.pi * y / h)) * (0.5 - 0.5 * math.cos(2 * math.pi * x / w))
                    for x in range(w)] for y in range(h)]
            for ky in range(h):
                for kx in range(w):
                    s = sum(float(m[y, x]) * win[y][x] * cmath.exp(-2j * math.pi * (ky * y / h + kx * x / w))
                            for y in range(h) for x in range(w))
                    p = abs(s) ** 2
                    total[c] += p
                    if abs(_freq(ky, h)) > 0.5 / stride or abs(_freq(kx, w)) > 0.5 / stride:
                        above[c] += p
    return torch.tensor([a / t if t > 0 else 0.0 for a, t in zip(above, total)], dtype=torch.float64)


@pytest.mark.parametrize("stride", [2, 3])
def test_alias_fraction_equals_a_loop_over_the_dft(stride):
    maps = torch.randn(2, 3, 7, 6, generator=torch.Generator().manual_seed(stride))
    maps[1, 2] = 5.0  # a constant map in one image: no power at all
    torch.testing.assert_close(alias_fraction(maps, stride), _reference_alias(maps, stride), rtol=1e-9, atol=1e-12)
    assert alias_fraction(torch.full((1, 1, 4, 4), 3.0), 2).tolist() == [0.0]


def test_alias_share_is_zero_below_nyquist_and_one_above():
    n = 32
    below = _grating(n, 0, 3 / n)[None].float()       # Hann spreads bin 3 to 2..4; 4/32 = 1/8 is not above 1/8
    above = _grating(n, 6 / n, 0)[None].float()       # 5/32..7/32: all above stride 4's Nyquist 1/8
    assert alias_fraction(below, 4).item() == pytest.approx(0, abs=1e-12)
    assert alias_fraction(above, 4).item() == pytest.approx(1, abs=1e-12)
    assert alias_fraction(above, 2).item() == pytest.approx(0, abs=1e-12)  # but below stride 2's 1/4


def _grating_model(stride: int, padding: int = 0) -> nn.Sequential:
    """conv1 with a positive output everywhere on the gratings (ReLU = identity), then a conv2."""
    conv1 = nn.Conv2d(3, 2, 3, stride, padding)
    conv2 = nn.Conv2d(2, 2, 3, 1, 1)
    with torch.no_grad():
        conv1.weight.copy_(torch.randn(2, 3, 3, 3, generator=torch.Generator().manual_seed(0)) * 0.1)
        conv1.bias.fill_(10.0)
    return nn.Sequential(OrderedDict([("conv1", conv1), ("relu1", nn.ReLU()), ("conv2", conv2),
                                      ("relu2", nn.ReLU())]))


def test_layer_one_aliasing_of_a_grating_below_and_above_the_strides_nyquist():
    # a 34 px grating of 6/32 cycles per pixel: the 3x3 valid conv's dense output is a 32-periodic cosine
    images = _grating(34, 0, 6 / 32, channels=3)[None].float().expand(2, -1, -1, -1).clone()
    dataset = TensorDataset(images, torch.zeros(2, dtype=torch.long))
    at2 = layer_one_aliasing(_grating_model(2), dataset, progress=False)
    at4 = layer_one_aliasing(_grating_model(4), dataset, progress=False)
    assert at2.stride == 2 and at4.stride == 4 and at2.images == 2
    assert at2.share == pytest.approx(0, abs=1e-9) and at4.share == pytest.approx(1, abs=1e-9)
    assert layer_one_aliasing(_grating_model(2), dataset, stride=4, progress=False).share == pytest.approx(1)


def test_layer_one_aliasing_equals_the_dense_response_by_hand():
    torch.manual_seed(1)
    model = zfnet_small(10, conv1=(11, 4)).eval()
    images = torch.randn(5, 3, 64, 64)
    dataset = TensorDataset(images, torch.zeros(5, dtype=torch.long))
    got = layer_one_aliasing(model, dataset, batch_size=2, progress=False)
    conv = model.conv1
    dense = F.relu(F.conv2d(images, conv.weight, conv.bias, padding=conv.padding))
    # the strided output is the dense response sampled at the stride
    torch.testing.assert_close(dense[..., ::4, ::4], F.relu(conv(images)), rtol=1e-5, atol=1e-5)
    above, total = arch.alias_energies(dense, 4)
    torch.testing.assert_close(got.above, above, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(got.total, total, rtol=1e-9, atol=1e-9)
    assert got.share == pytest.approx(float(above.sum() / total.sum()))
    torch.testing.assert_close(got.per_map, alias_fraction(dense, 4))
    assert layer_one_aliasing(model, dataset, max_images=3, progress=False).images == 3


# ----------------------------------------------------------------- dead filters


def test_dead_filters_finds_a_zeroed_and_a_faint_filter():
    torch.manual_seed(2)
    model = zfnet_small(10)
    with torch.no_grad():
        model.conv1.weight[3] = 0
        model.conv1.bias[3] = -1       # never positive: inactive
        model.conv1.weight[5] *= 1e-3  # faint, but still fires somewhere
        model.conv1.bias[5] = 0
        model.conv1.bias[7] = -1e6     # weights normal, never fires
    model.train()
    images = torch.randn(9, 3, 64, 64)
    dataset = TensorDataset(images, torch.zeros(9, dtype=torch.long))
    got = dead_filters(model, dataset, batch_size=4, progress=False)
    assert model.training  # mode restored
    assert got.inactive == [3, 7] and got.faint == [3, 5] and got.dead == [3, 5, 7] and got.images == 9
    # plain reference: per image and filter, is the rectified map zero everywhere?
    out = F.relu(model.conv1(images)).detach()
    zero = torch.tensor([[bool((out[i, o] == 0).all()) for o in range(out.shape[1])] for i in range(9)])
    torch.testing.assert_close(got.zero_fraction, zero.double().mean(0))
    rms = torch.tensor([math.sqrt(float(model.conv1.weight[o].detach().double().pow(2).mean())) for o in range(24)],
                       dtype=torch.float64)
    torch.testing.assert_close(got.rms, rms)
    # the faint filter still fires: faint, not inactive
    assert float(got.zero_fraction[5]) < 1
    assert dead_filters(model, dataset, rms_ratio=0.0, progress=False).faint == []
    assert dead_filters(model, dataset, max_images=2, progress=False).images == 2


# ----------------------------------------------------------------- shift variance


def test_shift_variance_equals_a_loop():
    torch.manual_seed(3)
    model = zfnet_small(10, conv1=(11, 4)).eval()
    images = torch.randn(3, 3, 64, 64)
    dataset = TensorDataset(images, torch.zeros(3, dtype=torch.long))
    got = shift_variance(model, dataset, batch_size=2, progress=False)
    change = norm = 0.0
    with torch.no_grad():
        def g(x):
            for name, module in model.named_children():
                x = module(x)
                if name == "relu2":
                    return x.double().mean(dim=(2, 3))[0]
        for x in images:
            a = g(x[None, :, :63, :63])
            for b in (g(x[None, :, :63, 1:]), g(x[None, :, 1:, :63])):
                change += float((a - b).pow(2).sum())
                norm += float(a.pow(2).sum())
    assert got.images == 3 and got.layer == "relu2"
    assert got.change == pytest.approx(change, rel=1e-6) and got.norm == pytest.approx(norm, rel=1e-6)
    assert got.value == pytest.approx(math.sqrt(change / norm), rel=1e-6)


def test_shift_variance_of_a_nyquist_grating_stride_two_vs_one():
    # cos(pi x): stride 2 samples one phase only, so a one-pixel shift flips every sample's sign
    images = _grating(33, 0, 0.5, channels=3)[None].float()
    dataset = TensorDataset(images, torch.zeros(1, dtype=torch.long))

    def model(stride):
        conv = nn.Conv2d(3, 1, 1, stride)
        with torch.no_grad():
            conv.weight.fill_(1.0)
            conv.bias.zero_()
        return nn.Sequential(OrderedDict([("conv1", conv), ("relu1", nn.ReLU())]))

    dense = shift_variance(model(1), dataset, layer="relu1", progress=False).value
    strided = shift_variance(model(2), dataset, layer="relu1", progress=False).value
    assert dense < 0.1 and strided > 0.5


# ----------------------------------------------------------------- driver, round trip, render


def _fake_loaded(model, accuracy):
    return SimpleNamespace(model=model.eval(), history=[{"epoch": 3, "val_top1_error": 1 - accuracy}], config={})


@pytest.fixture(scope="module")
def small_result():
    torch.manual_seed(4)
    images = torch.randn(6, 3, 64, 64)
    dataset = TensorDataset(images, torch.zeros(6, dtype=torch.long))
    models = {"alexnet": zfnet_small(10, conv1=(11, 4)), "zfnet": zfnet_small(10)}
    with torch.no_grad():
        models["alexnet"].conv1.bias[0] = -1e6
    measured = {k: arch.measure(_fake_loaded(m, acc), dataset, progress=False)
                for (k, m), acc in zip(models.items(), (0.4, 0.5))}
    return Architecture(variants=["alexnet", "zfnet"], conv1={k: v["conv1"] for k, v in measured.items()},
                        runs={"alexnet": "a/model.pt", "zfnet": "z/model.pt"},
                        **{key: {k: v[key] for k, v in measured.items()}
                           for key in ("weights", "frequency", "dead", "aliasing", "shift", "val_accuracy",
                                       "epochs")}, dataset="6 random images")


def test_round_trip_and_render(small_result, tmp_path):
    result = small_result
    assert result.conv1 == {"alexnet": "11x4", "zfnet": "7x2"}
    assert result.val_accuracy == {"alexnet": 0.4, "zfnet": 0.5} and result.epochs == {"alexnet": 3, "zfnet": 3}
    assert 0 in result.dead["alexnet"].inactive
    torch.save(result.as_dict(), tmp_path / "r.pt")
    back = Architecture.from_dict(torch.load(tmp_path / "r.pt", weights_only=True))
    for key, value in result.as_dict().items():
        again = back.as_dict()[key]
        if isinstance(value, dict):
            assert set(value) == set(again)
            for k in value:
                if isinstance(value[k], dict):
                    for kk, vv in value[k].items():
                        ok = torch.equal(vv, again[k][kk]) if isinstance(vv, torch.Tensor) else vv == again[k][kk]
                        assert ok, (key, k, kk)
                elif isinstance(value[k], torch.Tensor):
                    assert torch.equal(value[k], again[k])
                else:
                    assert value[k] == again[k]
        else:
            assert value == again
    page = render(result.as_dict(), tmp_path / "assets")
    files = [f["file"] for f in page["figures"]]
    assert files == ["architecture-filters.png", "architecture-bands.png"]
    assert all((tmp_path / "assets" / f).stat().st_size > 1000 for f in files)
    assert len(page["claims"]) == 4 and all(isinstance(c["holds"], bool) for c in page["claims"])
    dead_claim = page["claims"][0]
    assert dead_claim["holds"] == (len(result.dead["zfnet"].dead) < len(result.dead["alexnet"].dead))
    assert page["tables"][0]["header"][0] == "measure" and len(page["tables"][1]["rows"]) == 8


# ----------------------------------------------------------------- bad arguments


def test_bad_arguments_name_the_argument(tmp_path):
    model = zfnet_small(10)
    dataset = TensorDataset(torch.randn(2, 3, 64, 64), torch.zeros(2, dtype=torch.long))
    cases = [
        (lambda: frequency_coverage(torch.zeros(3, 7, 7)), "weights"),
        (lambda: frequency_coverage(torch.zeros(1, 3, 7, 7), stride=0), "stride"),
        (lambda: frequency_coverage(torch.zeros(1, 3, 7, 7), bands=2), "bands"),
        (lambda: frequency_coverage(torch.zeros(1, 3, 7, 7), size=6), "size"),
        (lambda: frequency_coverage(torch.full((1, 3, 7, 7), math.nan)), "NaN"),
        (lambda: dead_filters(model, dataset, layer="conv9", progress=False), "conv9"),
        (lambda: dead_filters(model, dataset, layer="relu1", progress=False), "not a Conv2d"),
        (lambda: dead_filters(model, dataset, rms_ratio=1.5, progress=False), "rms_ratio"),
        (lambda: dead_filters(model, dataset, batch_size=0, progress=False), "batch_size"),
        (lambda: dead_filters(model, TensorDataset(torch.zeros(0, 3, 64, 64)), progress=False), "empty"),
        (lambda: dead_filters(model, dataset, max_images=0, progress=False), "max_images"),
        (lambda: alias_fraction(torch.zeros(3, 8, 8), 2), "maps"),
        (lambda: alias_fraction(torch.zeros(1, 3, 8, 8), 0), "stride"),
        (lambda: layer_one_aliasing(model, dataset, layer="fc6", progress=False), "not a Conv2d"),
        (lambda: layer_one_aliasing(model, dataset, stride=-1, progress=False), "stride"),
        (lambda: layer_one_aliasing(nn.Sequential(nn.Conv2d(3, 2, 3, padding="same")), dataset,
                                    layer="0", progress=False), "zero padding"),
        (lambda: shift_variance(model, dataset, layer="fc8", progress=False), "spatial"),
        (lambda: shift_variance(model, dataset, layer="nope", progress=False), "nope"),
        (lambda: arch.architecture(tmp_path, runs={"alexnet": tmp_path}), "keys"),
        (lambda: arch.architecture(tmp_path, runs={"alexnet": tmp_path / "x", "zfnet": tmp_path / "y"}),
         "runs\\['alexnet'\\]"),
        (lambda: arch.architecture(tmp_path, quick="yes"), "quick"),
        (lambda: arch.architecture(tmp_path, seed=-1), "seed"),
        (lambda: arch.architecture(tmp_path, max_images=0), "max_images"),
    ]
    for call, match in cases:
        with pytest.raises(ValueError, match=match):
            call()


# ----------------------------------------------------------------- the driver on tiny runs


def _tiny_recipe(out, *, seed=0, epochs=None, progress=True):
    """The demo recipe shrunk: 4 images per class, 1/8 of the channels, fc 32."""
    from zfcore.train import TrainConfig

    return TrainConfig(out=out, seed=seed, epochs=epochs, per_class=4, batch_size=8, width=0.125, fc_width=32,
                       threads=1, progress=progress)


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    """The driver (quick: 8 epochs) with the demo recipe shrunk to a few seconds."""
    out = tmp_path_factory.mktemp("architecture")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("zfcore.train.demo_config", _tiny_recipe)
        result = arch.architecture(out, quick=True, progress=False, max_images=4)
    return out, result


def test_driver_trains_both_variants_and_measures_them(tiny_runs):
    out, result = tiny_runs
    assert result.conv1 == {"alexnet": "11x4", "zfnet": "7x2"}
    assert result.epochs == {"alexnet": arch.QUICK_EPOCHS, "zfnet": arch.QUICK_EPOCHS}
    assert result.runs == {name: str(out / f"{name}_conv1" / "model.pt") for name in arch.VARIANTS}
    assert result.weights["alexnet"].shape[-1] == 11 and result.weights["zfnet"].shape[-1] == 7
    assert result.aliasing["alexnet"].stride == 4 and result.aliasing["zfnet"].stride == 2
    assert result.dead["zfnet"].images == 10 and result.shift["zfnet"].images == 4  # val: 10 classes x 4 // 5
    history = torch.load(out / "zfnet_conv1" / "model.pt", weights_only=True)["history"]
    assert result.val_accuracy["zfnet"] == pytest.approx(1 - history[-1]["val_top1_error"])
    # given runs: measured, nothing trained
    again = arch.architecture(out / "unused", progress=False, max_images=4, runs={
        "alexnet": out / "alexnet_conv1", "zfnet": out / "zfnet_conv1" / "model.pt"})
    assert not (out / "unused").exists()
    torch.testing.assert_close(again.frequency["alexnet"].energy, result.frequency["alexnet"].energy)


def test_driver_reuses_a_finished_run_resumes_an_interrupted_one_refuses_another(tiny_runs, monkeypatch):
    out, result = tiny_runs
    from zfcore import train as training

    calls = []
    real_train = training.train
    monkeypatch.setattr("zfcore.train.demo_config", _tiny_recipe)
    monkeypatch.setattr("zfcore.train.reuse.train", lambda config: calls.append(config) or real_train(config))
    folder = out / "alexnet_conv1"
    assert arch._train_variant(folder, "11x4", arch.QUICK_EPOCHS, 0, False) == folder / "model.pt"
    assert calls == []  # finished: reused
    (folder / "model.pt").unlink()  # as if killed after the last checkpoint
    arch._train_variant(folder, "11x4", arch.QUICK_EPOCHS, 0, False)
    assert len(calls) == 1 and calls[0].resume and calls[0].conv1 == "11x4"
    state = torch.load(folder / "model.pt", weights_only=True)
    torch.testing.assert_close(state["model"]["conv1.weight"], result.weights["alexnet"])
    for conv1, epochs, seed in [("7x2", arch.QUICK_EPOCHS, 0), ("11x4", arch.FULL_EPOCHS, 0),
                                ("11x4", arch.QUICK_EPOCHS, 1)]:
        with pytest.raises(ValueError, match="another configuration"):
            arch._train_variant(folder, conv1, epochs, seed, False)
    (folder / "model.pt").unlink()
    with pytest.raises(ValueError, match="another configuration"):  # the checkpoint is checked too
        arch._train_variant(folder, "7x2", arch.QUICK_EPOCHS, 0, False)
    assert len(calls) == 1


def test_on_the_embedded_data_the_7x2_first_layer_aliases_less_and_its_layer_2_is_more_shift_stable(
        demo_folder, tmp_path):
    """The claims of Fig. 6 that hold on the embedded data, with a fixed seed: the demo model (ZFNet's 7x7
    stride 2 first layer, 12 epochs) against the same recipe with AlexNet's 11x11 stride 4 (trained here,
    12 epochs, seed 0). The dead-filter claim does not hold on this data (neither has dead filters) and is
    reported as such by the page, not tested."""
    import dataclasses

    from zfcore.train import demo_config, train

    out, _ = demo_folder
    alex = tmp_path / "alexnet"
    train(dataclasses.replace(demo_config(str(alex), seed=0, epochs=12, progress=False), conv1="11x4"))
    result = arch.architecture(tmp_path, runs={"alexnet": alex, "zfnet": out / "run"}, progress=False)
    assert result.conv1 == {"alexnet": "11x4", "zfnet": "7x2"}
    claims = {c["claim"].split(":")[0]: c for c in render(result, tmp_path / "assets")["claims"]}
    aliasing = next(c for k, c in claims.items() if k.startswith("The ZFNet first layer aliases less"))
    shift = next(c for k, c in claims.items() if k.startswith("Layer 2 of the ZFNet variant"))
    assert aliasing["holds"], aliasing["detail"]
    assert shift["holds"], shift["detail"]
    assert result.aliasing["zfnet"].share < 0.75 * result.aliasing["alexnet"].share
