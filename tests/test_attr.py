"""zfcore.attr against an autograd-hook implementation of Captum's conventions
(and against Captum itself where it is installed), in float64."""

from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from zfcore.attr import NeuronDeconvolution, NeuronGradient, NeuronGuidedBackprop
from zfcore.models import zfnet_small

CLASSES = {"deconvnet": NeuronDeconvolution, "guided": NeuronGuidedBackprop, "gradient": NeuronGradient}


def plain_cnn():
    return nn.Sequential(OrderedDict([
        ("conv1", nn.Conv2d(3, 6, 3, padding=1)), ("relu1", nn.ReLU()),
        ("pool1", nn.MaxPool2d(3, 2, padding=1, ceil_mode=True)), ("lrn", nn.LocalResponseNorm(3, alpha=0.5)),
        ("conv2", nn.Conv2d(6, 8, 3)), ("relu2", nn.ReLU()), ("pool2", nn.MaxPool2d(2, 3)),
        ("avgpool", nn.AdaptiveAvgPool2d((2, 2))), ("flatten", nn.Flatten()),
        ("fc1", nn.Linear(32, 12)), ("relu3", nn.ReLU()), ("drop", nn.Dropout()), ("fc2", nn.Linear(12, 5)),
    ]))


class Features(nn.Module):
    """torchvision's layout: features, a functional flatten, classifier."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 5, 3, stride=2), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(5, 6, 2), nn.ReLU())
        self.classifier = nn.Sequential(nn.Linear(6 * 4 * 3, 7), nn.ReLU(), nn.Linear(7, 3))

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


MODELS = {"plain": (plain_cnn, (3, 29, 31)), "features": (Features, (3, 23, 19)),
          "zfnet_small": (lambda: zfnet_small(init_std=None), (3, 64, 64))}


def _setup(name, seed=0):
    factory, shape = MODELS[name]
    torch.manual_seed(seed)
    return factory().double().eval(), torch.randn(3, *shape, dtype=torch.float64)


class _ReluRule(torch.autograd.Function):
    """ReLU whose backward is replaced: deconvolution relu(g), guided relu(g) * (x > 0)."""

    @staticmethod
    def forward(ctx, x, guided):
        ctx.save_for_backward(x)
        ctx.guided = guided
        return x.clamp_min(0)

    @staticmethod
    def backward(ctx, g):
        x, = ctx.saved_tensors
        return (F.relu(g) * (x > 0) if ctx.guided else F.relu(g)), None


def hook_reference(model, x, layer, selector, mode, to_input=False):
    """Captum's definition by autograd: the gradient of the selected neuron with
    every ReLU's backward replaced (deconvolution: relu(grad_out); guided:
    relu(grad_out) where the forward input is positive)."""
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)] if mode != "gradient" else []
    for m in relus:
        m.forward = lambda t, guided=mode == "guided": _ReluRule.apply(t, guided)
    seen = {}
    handle = layer.register_forward_hook(lambda m, i, o: seen.update(input=i[0], output=o))
    try:
        x = x.clone().requires_grad_()
        model(x)
        t = seen["input" if to_input else "output"]
        if callable(selector):
            value = selector(t)
        else:
            index = (selector,) if isinstance(selector, int) else selector
            value = t[(slice(None), *index)]
            value = value.reshape(len(x), -1).sum(1)
        return torch.autograd.grad(value.sum(), x)[0]
    finally:
        handle.remove()
        for m in relus:
            del m.forward


def _cases(name, model):
    modules = dict(model.named_modules())
    if name == "features":
        return [(model.features, (2, 1, 1), False), (model.features[1], (0, slice(1, 3), 2), False),
                (model.classifier[0], 4, False), (model.classifier[2], (1,), False),
                (model.classifier[0], (17,), True), (model.features[0], (1, 5, 4), True),
                (model.features, lambda t: (t[:, 1] * t[:, 3]).sum((1, 2)), False)]
    if name == "plain":
        return [(modules["relu1"], (2, 0, 30), False), (modules["lrn"], (3, 7, 7), False),
                (modules["pool2"], (slice(None), 0, slice(0, 2)), False), (modules["fc2"], 3, False),
                (modules["relu3"], (5,), False), (modules["conv2"], (4, 2, 2), True),
                (modules["fc2"], lambda t: t.logsumexp(1), False)]
    return [(modules["conv3"], (7, 3, 3), False), (modules["relu5"] if "relu5" in modules else modules["conv5"],
                                                    (1, 2, 1), False),
            (list(model.children())[-1], 2, False)]


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("mode", list(CLASSES))
def test_attributions_equal_the_hook_reference(name, mode):
    model, x = _setup(name)
    nonzero = 0
    for layer, selector, to_input in _cases(name, model):
        got = CLASSES[mode](model, layer).attribute(x, neuron_selector=selector, attribute_to_neuron_input=to_input)
        expected = hook_reference(model, x, layer, selector, mode, to_input)
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12, msg=f"{name} {mode} {selector}")
        nonzero += bool(got.abs().sum() > 0)
    assert nonzero >= len(_cases(name, model)) - 1


def test_tuple_inputs_names_and_dtypes():
    model, x = _setup("plain")
    deconv = NeuronDeconvolution(model, "conv2")
    single = deconv.attribute(x, (1, 2, 3))
    both = deconv.attribute((x,), (1, 2, 3))
    assert isinstance(both, tuple) and len(both) == 1
    torch.testing.assert_close(both[0], single, rtol=0, atol=0)
    assert single.shape == x.shape and single.dtype == torch.float64 and not single.requires_grad


def test_deconvolution_differs_from_the_papers_deconvnet_only_through_lrn():
    """Captum's deconvolution takes LRN's gradient where the paper skips it:
    with the LRN made an identity the two agree (up to the seed: 1 against the
    unit's activation)."""
    from zfcore.deconv import Deconvnet
    model, x = _setup("plain")
    layer = dict(model.named_modules())["conv2"]
    captum_style = NeuronDeconvolution(model, layer).attribute(x, (1, 2, 3))
    paper = Deconvnet(model, x.shape[1:]).project(x, "conv2", 1, (2, 3))
    assert not torch.allclose(paper, captum_style * 1.0)
    model.lrn.alpha = 0.0  # LRN(x) = x / k^beta with k = 1: the identity
    maps = model[:5](x)[:, 1].detach()
    mixed = ((maps > 0).any(0) & (maps <= 0).any(0)).nonzero()[0].tolist()  # a unit positive on some images only
    activation = maps[:, mixed[0], mixed[1]]
    captum_style = NeuronDeconvolution(model, layer).attribute(x, (1, *mixed))
    paper = Deconvnet(model, x.shape[1:]).project(x, "conv2", 1, tuple(mixed))
    positive = activation > 0  # the ReLUs going down commute with a positive scale only
    assert 0 < int(positive.sum()) < len(x)
    torch.testing.assert_close(paper[positive], (captum_style * activation[:, None, None, None])[positive],
                               rtol=1e-9, atol=1e-12)
    assert not torch.allclose(paper[~positive], (captum_style * activation[:, None, None, None])[~positive])


def test_bad_arguments_get_clear_errors():
    model, x = _setup("plain")
    deconv = NeuronDeconvolution(model, model.conv2)
    for kwargs, message in [
        (dict(inputs=x, neuron_selector=(1, 2)), "must index all 3 dimensions"),
        (dict(inputs=x, neuron_selector=(1, 2, 99)), "outside the layer's output"),
        (dict(inputs=x, neuron_selector="conv"), "must be an int, a tuple of ints and slices, or a callable"),
        (dict(inputs=x, neuron_selector=lambda t: t.sum((2, 3))), "must return a scalar Tensor or a Tensor\\[3\\]"),
        (dict(inputs=(x, x[:2]), neuron_selector=(1, 2, 3)), "same number of examples"),
        (dict(inputs=x.long(), neuron_selector=(1, 2, 3)), "float Tensor"),
    ]:
        with pytest.raises(ValueError, match=message):
            deconv.attribute(**kwargs)
    with pytest.raises(ValueError, match="no module named 'conv9'"):
        NeuronGradient(model, "conv9")
    with pytest.raises(ValueError, match="layer must be a module of model"):
        NeuronGradient(model, nn.ReLU())
    with pytest.raises(TypeError, match="must be a torch.nn.Module"):
        NeuronGradient(lambda x: x, "conv1")



def _gradient_of(model, x, select):
    x = x.clone().requires_grad_()
    grad, = torch.autograd.grad(select(model(x)).sum(), x)
    return grad


def test_captums_conventions_beyond_plain_cnns():
    """Non-image inputs, residual sums, scalar callables, a final Softmax, the
    attributes, and the model's training flag left as it was."""
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2), nn.Softmax(-1)).double()
    mlp.train()
    x = torch.randn(5, 3, dtype=torch.float64)
    for cls in CLASSES.values():
        attr = cls(mlp, mlp[2])
        assert attr.multiplies_by_inputs is False and attr.has_convergence_delta() is False
        got = attr.attribute(x, 1)
        assert got.shape == x.shape and mlp.training
    mlp.eval()
    torch.testing.assert_close(NeuronGradient(mlp, mlp[2]).attribute(x, 1),
                               _gradient_of(nn.Sequential(*mlp[:3]), x, lambda y: y[:, 1]), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(NeuronGradient(mlp, mlp[2]).attribute(x, lambda y: y.sum()),
                               _gradient_of(nn.Sequential(*mlp[:3]), x, lambda y: y.sum()), rtol=1e-12, atol=1e-14)
    # the neuron's input of the first layer is the input itself
    assert torch.equal(NeuronGradient(mlp, mlp[0]).attribute(x, 2, attribute_to_neuron_input=True)[:, 2],
                       torch.ones(5, dtype=torch.float64))

    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 3, padding=1)
            self.relu = nn.ReLU()

        def forward(self, x):
            return self.relu(x + self.conv(self.relu(x)))

    model = Residual().double().eval()
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    torch.testing.assert_close(NeuronGradient(model, "relu#1").attribute(x, (0, 1, 1)),
                               _gradient_of(model, x, lambda y: y[:, 0, 1, 1]), rtol=1e-12, atol=1e-14)
    with pytest.raises(ValueError, match="'relu' is called 2 times"):
        NeuronGradient(model, model.relu).attribute(x, (0, 1, 1))


@pytest.mark.parametrize("mode", list(CLASSES))
def test_attributions_equal_captum_where_it_is_installed(mode):
    captum = pytest.importorskip("captum.attr")
    theirs = {"deconvnet": captum.NeuronDeconvolution, "guided": captum.NeuronGuidedBackprop,
              "gradient": captum.NeuronGradient}[mode]
    for name in MODELS:
        model, x = _setup(name, seed=1)
        for layer, selector, to_input in _cases(name, model):
            got = CLASSES[mode](model, layer).attribute(x, selector, attribute_to_neuron_input=to_input)
            expected = theirs(model, layer).attribute(x, selector, attribute_to_neuron_input=to_input)
            torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12, msg=f"{name} {mode} {selector}")


def test_several_inputs_and_additional_forward_args():
    """A tuple of inputs gives a tuple of attributions; additional arguments reach
    the forward (a constant int, an extra tensor) and are not attributed."""
    class TwoInputs(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.relu, self.out = nn.Linear(3, 4), nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 2)

        def forward(self, x, y, scale=1, z=None):
            h = self.relu(self.a(x) + self.b(y) * scale)
            return self.out(h if z is None else h + z)

    torch.manual_seed(0)
    model = TwoInputs().double().eval()
    x, y, z = (torch.randn(5, n, dtype=torch.float64) for n in (3, 2, 4))
    for extra in [None, (2,), (3, z)]:
        args = () if extra is None else extra
        got = NeuronGradient(model, model.out).attribute((x, y), 1, additional_forward_args=extra)
        xg, yg = x.clone().requires_grad_(), y.clone().requires_grad_()
        expected = torch.autograd.grad(model(xg, yg, *args)[:, 1].sum(), (xg, yg))
        assert isinstance(got, tuple) and len(got) == 2
        for g, e in zip(got, expected):
            torch.testing.assert_close(g, e, rtol=1e-12, atol=1e-14)
        # the ReLU rule applies on the way down: guided keeps only positive signals through it
        guided = NeuronGuidedBackprop(model, model.out).attribute((x, y), 1, additional_forward_args=extra)
        assert guided[0].shape == x.shape and guided[1].shape == y.shape
    captum = pytest.importorskip("captum.attr")
    for ours, theirs in [(NeuronDeconvolution, captum.NeuronDeconvolution),
                         (NeuronGuidedBackprop, captum.NeuronGuidedBackprop), (NeuronGradient, captum.NeuronGradient)]:
        for extra in [None, (2,), (3, z)]:
            got = ours(model, model.out).attribute((x, y), 0, additional_forward_args=extra)
            expected = theirs(model, model.out).attribute((x, y), 0, additional_forward_args=extra)
            for g, e in zip(got, expected):
                torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12)
