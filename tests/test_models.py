"""Networks from the paper's notation: shapes and parameter counts worked out by hand."""

import pytest
import torch
from torch import nn

import mtsnn
from mtsnn.integer import round_weights
from mtsnn.layers import SpikingConv2d, SpikingLinear
from mtsnn.models import TimeDropout, TimePool2d, calibrate, from_spec

# (spec, input shape, weight shapes in order, total parameters) -- totals summed by hand:
# 784-800-10: 784*800+800 + 800*10+10 = 636010
# 784-400-400-10: 313600+400 + 160000+400 + 4000+10 = 478410
# 15C5-P2-40C5-P2-300: (15*25+15) + (40*15*25+40) + (1960*300+300) + (300*10+10) = 606740  (28 -> 14 -> 7)
# 32C5-P2-64C5-P2-1024: 832 + 51264 + (3136*1024+1024) + 10250 = 3274634
# CIFAR: 2688 + 221440 + 885120 + 1327488 + 884992 + (16384*1024+1024) + 1049600 + 10250 = 21159818 (32 -> 16 -> 8)
PAPER_SPECS = [
    ("784-800-10", (1, 28, 28), [(800, 784), (10, 800)], 636010),
    ("784-400-400-10", (1, 28, 28), [(400, 784), (400, 400), (10, 400)], 478410),
    ("15C5-P2-40C5-P2-300", (1, 28, 28), [(15, 1, 5, 5), (40, 15, 5, 5), (300, 1960), (10, 300)], 606740),
    ("32C5-P2-64C5-P2-1024", (1, 28, 28), [(32, 1, 5, 5), (64, 32, 5, 5), (1024, 3136), (10, 1024)], 3274634),
    (
        "96C3-256C3-P2-384C3-P2-384C3-256C3-1024-1024",
        (3, 32, 32),
        [
            (96, 3, 3, 3),
            (256, 96, 3, 3),
            (384, 256, 3, 3),
            (384, 384, 3, 3),
            (256, 384, 3, 3),
            (1024, 16384),
            (1024, 1024),
            (10, 1024),
        ],
        21159818,
    ),
]


@pytest.mark.parametrize("spec, shape, weights, total", PAPER_SPECS)
def test_paper_specs_layers_and_parameter_counts(spec, shape, weights, total):
    snn = mtsnn.from_spec(spec, shape, 10)
    assert [tuple(b.weight.shape) for b in snn.blocks()] == weights
    assert sum(p.numel() for p in snn.parameters()) == total
    ann = mtsnn.from_spec(spec, shape, 10, ann=True)
    assert [tuple(m.weight.shape) for m in ann.modules() if isinstance(m, (nn.Linear, nn.Conv2d))] == weights
    assert sum(p.numel() for p in ann.parameters()) == total


@pytest.mark.parametrize("spec, shape", [("784-400-400-10", (1, 28, 28)), ("15C5-P2-40C5-P2-300", (1, 28, 28))])
def test_outputs_are_spike_counts_over_time_and_logits_for_the_twin(spec, shape):
    images = torch.randn(5, *shape)
    spikes = mtsnn.from_spec(spec, shape, 10, num_steps=3)(images)
    assert spikes.shape == (3, 5, 10) and torch.equal(spikes, spikes.round())
    assert mtsnn.from_spec(spec, shape, 10)(images, num_steps=1).shape == (1, 5, 10)
    assert mtsnn.from_spec(spec, shape, 10, ann=True)(images).shape == (5, 10)


def test_ann_twin_uses_relu_between_layers_but_not_after_the_output():
    ann = mtsnn.from_spec("784-400-400-10", (1, 28, 28), 10, ann=True)
    kinds = [type(m).__name__ for m in ann]
    assert kinds == ["FlattenFeatures", "Linear", "ReLU", "Linear", "ReLU", "Linear"]


def test_mlp_output_layer_is_appended_when_missing_and_neurons_follow_every_weight_layer():
    snn = mtsnn.from_spec("784-300", (1, 28, 28), 10, s_max=3, grad_mode="paper")
    assert [tuple(b.weight.shape) for b in snn.blocks()] == [(300, 784), (10, 300)]
    assert all(b.params.s_max == 3 and b.params.grad_mode == "paper" for b in snn.blocks())


def test_max_pooling_option():
    snn = mtsnn.from_spec("4C3-P2-10", (1, 8, 8), 10, pooling="max")
    pools = [m for m in snn.layers if type(m).__name__ == "TimePool2d"]
    assert len(pools) == 1 and pools[0].mode == "max"


def test_inits_follow_their_distributions():
    torch.manual_seed(0)
    kaiming = mtsnn.from_spec("784-800-10", (1, 28, 28), 10, init="kaiming").blocks()[0].weight
    assert kaiming.mean().abs() < 0.01 and kaiming.std().item() == pytest.approx(10 * (2 / 784) ** 0.5, rel=0.01)
    paper = mtsnn.from_spec("784-800-10", (1, 28, 28), 10).blocks()[0].weight  # the default
    # eq. (17): N(V_th / N_{l-1}, 0.5^2)
    assert paper.mean().item() == pytest.approx(10 / 784, abs=0.003) and paper.std().item() == pytest.approx(
        0.5, rel=0.01
    )


@pytest.mark.parametrize(
    "spec, bad",
    [
        ("15C-P2", "'15C'"),
        ("0-10", "'0'"),
        ("P2-10", "'P2'"),
        ("784-0-10", "'0'"),
        ("784-x-10", "'x'"),
        ("16C4-10", "'16C4'"),
        ("100-10", "'100'"),
        ("10-4C3", "'4C3'"),
        ("4C3-P64-10", "'P64'"),
    ],
)
def test_malformed_specs_name_the_bad_token(spec, bad):
    with pytest.raises(ValueError, match=bad):
        mtsnn.from_spec(spec, (1, 28, 28), 10)


def test_bad_options_are_named():
    for ann in (False, True):
        with pytest.raises(ValueError, match="'median'"):
            mtsnn.from_spec("4C3-P2-10", (1, 8, 8), 10, pooling="median", ann=ann)
        with pytest.raises(ValueError, match="'xavier'"):
            mtsnn.from_spec("784-10", (1, 28, 28), 10, init="xavier", ann=ann)
    with pytest.raises(ValueError, match="'median'"):
        TimePool2d(2, "median")
    with pytest.raises(ValueError, match="num_steps"):
        mtsnn.from_spec("784-10", (1, 28, 28), 10)(torch.zeros(1, 1, 28, 28), num_steps=0)


def test_blocks_are_usable_on_their_own():
    conv = SpikingConv2d(2, 3, 3, grad_mode="paper")
    out = conv(torch.rand(2, 4, 2, 6, 6) * 3)
    assert out.shape == (2, 4, 3, 6, 6)
    with pytest.raises(ValueError, match="odd"):
        SpikingConv2d(2, 3, 4)
    assert SpikingLinear(3, 2)(torch.ones(5, 3), num_steps=2).shape == (2, 5, 2)


def test_output_surrogate_changes_only_the_output_layer_and_revives_a_silent_output():
    def bias_grad_of_silent_output(**kwargs):
        torch.manual_seed(0)
        net = mtsnn.from_spec("4-5-3", (1, 2, 2), 3, num_steps=2, **kwargs)
        with torch.no_grad():
            net.blocks()[-1].bias[1] = -100.0  # ten thresholds below: class 1 never fires
        out = net(torch.rand(8, 1, 2, 2))
        assert out[:, :, 1].sum() == 0
        (out[:, :, 1] - 5.0).pow(2).sum().backward()  # class 1 should fire 5 times a step
        return [b.params.surrogate for b in net.blocks()], net.blocks()[-1].bias.grad[1].item()

    surrogates, grad = bias_grad_of_silent_output()
    assert surrogates == ["f2", "f2"] and grad == 0.0  # exp(-110^2 / 20) underflows: no way back
    surrogates, grad = bias_grad_of_silent_output(output_surrogate="arctan")
    assert surrogates == ["f2", "arctan"] and grad < 0  # descent raises the bias
    with pytest.raises(ValueError, match="output_surrogate"):
        mtsnn.from_spec("4-3", (1, 2, 2), 3, ann=True, output_surrogate="arctan")


@pytest.mark.parametrize("channels_last", [True, False])
def test_flatten_features_orders_c_h_w_and_returns_its_gradient_in_the_input_layout(channels_last):
    T, B, C, H, W = 2, 3, 4, 5, 6
    x = torch.arange(T * B * C * H * W, dtype=torch.float32).reshape(T, B, C, H, W)
    if channels_last:  # how a channels-last convolution's [T*B, C, H, W] output looks, unflattened
        x = x.flatten(0, 1).contiguous(memory_format=torch.channels_last).unflatten(0, (T, B))
    x.requires_grad_()
    out = mtsnn.models.FlattenFeatures()(x)
    # feature (c, h, w) sits at c*H*W + h*W + w, whatever the input's layout
    assert out.shape == (T, B, C * H * W)
    assert out[1, 2, 3 * H * W + 4 * W + 5].item() == x[1, 2, 3, 4, 5].item()
    upstream = torch.randn(T, B, C * H * W)
    (grad,) = torch.autograd.grad(out, x, upstream)  # as computed: .grad would take x's layout anyway
    assert torch.equal(grad, upstream.reshape(T, B, C, H, W))
    assert grad.flatten(0, 1).is_contiguous(memory_format=torch.channels_last) == channels_last


@pytest.mark.parametrize(
    "make_input, channels_last_grad",
    [
        (lambda: torch.randn(3, 4, 5, 6).contiguous(memory_format=torch.channels_last), True),  # ANN twin: [B, C, H, W]
        (lambda: torch.randn(3, 4, 6, 5).transpose(-1, -2), False),  # neither contiguous nor channels-last
        (lambda: torch.randn(4, 5, 6), False),  # one unbatched image
    ],
    ids=["4-D channels-last", "transposed", "3-D"],
)
def test_flatten_features_gradient_equals_a_plain_flatten(make_input, channels_last_grad):
    x = make_input().double().requires_grad_()
    upstream = torch.randn(x.shape[:-3] + (x.shape[-3] * x.shape[-2] * x.shape[-1],), dtype=torch.double)
    (grad,) = torch.autograd.grad(mtsnn.models.FlattenFeatures()(x), x, upstream)
    (want,) = torch.autograd.grad(x.flatten(-3), x, upstream)
    assert torch.equal(grad, want)
    assert torch.autograd.gradcheck(mtsnn.models.FlattenFeatures(), (x,))
    assert grad.is_contiguous(memory_format=torch.channels_last) == channels_last_grad
    assert grad.is_contiguous() != channels_last_grad


@pytest.mark.parametrize(
    "block, shape, num_steps, expected",
    [
        (SpikingLinear(784, 10), (128, 784), None, r"\[T, B, in_features\] with in_features=784, got \(128, 784\)"),
        (SpikingLinear(784, 10), (2, 128, 100), None, r"in_features=784, got \(2, 128, 100\)"),
        (SpikingConv2d(1, 4, 3), (2, 8, 3, 28, 28), None, r"\[T, B, in_channels, H, W\] with in_channels=1"),
        (SpikingConv2d(1, 4, 3), (2, 8, 1, 28, 28), 2, r"\[B, in_channels, H, W\] with in_channels=1"),
    ],
)
def test_blocks_name_the_input_shape_they_need(block, shape, num_steps, expected):
    with pytest.raises(ValueError, match=expected):
        block(torch.zeros(shape), num_steps=num_steps)


def _currents_after(net, images):
    """Each block's input current on ``images`` (no bias), computed here with torch.nn.functional."""
    import torch.nn.functional as F

    from mtsnn.layers import SpikingConv2d

    inputs = []
    hooks = [b.register_forward_pre_hook(lambda m, args: inputs.append(args[0])) for b in net.blocks()]
    net(images)
    for h in hooks:
        h.remove()
    currents = []
    for block, x in zip(net.blocks(), inputs):
        x = x if x.dim() == len(block.INPUT) + 1 else x.flatten(0, 1)
        if isinstance(block, SpikingConv2d):
            currents.append(F.conv2d(x, block.weight, padding=block.kernel_size // 2))
        else:
            currents.append(x @ block.weight.T)
    return currents


@pytest.mark.parametrize("qat", [False, True])  # qat: the weight read through RoundedWeight
def test_calibrate_gives_every_block_a_current_of_the_asked_spread_in_thresholds(qat):

    torch.manual_seed(0)
    net = from_spec("8C3-16C3-P2-32C3-P2-64", (3, 16, 16), 10, v_th=2.0)
    if qat:
        round_weights(net, (0.2, 0.3, 0.4))
    images = torch.rand(32, 3, 16, 16)
    calibrate(net, images, 1.5)
    with torch.no_grad():
        spreads = [c.std().item() for c in _currents_after(net, images)]
    assert spreads == pytest.approx([1.5 * 2.0] * 5, rel=1e-4)


def test_calibrate_undoes_a_scaling_of_the_weights_exactly():

    torch.manual_seed(0)
    a = from_spec("784-100-100-10", (1, 28, 28), 10)
    b = from_spec("784-100-100-10", (1, 28, 28), 10)
    b.load_state_dict(a.state_dict())
    with torch.no_grad():
        b.blocks()[0].weight.mul_(3.0)
    images = torch.rand(16, 1, 28, 28)
    factors_a, factors_b = calibrate(a, images, 1.0), calibrate(b, images, 1.0)
    assert factors_b[0] == pytest.approx(factors_a[0] / 3.0, rel=1e-5)  # current is linear in the weights
    assert factors_b[1:] == pytest.approx(factors_a[1:], rel=1e-5)  # so the blocks above see the same spikes
    for wa, wb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(wa, wb, rtol=1e-5, atol=1e-6)


def test_calibrate_refuses_a_block_that_gets_no_input():

    net = from_spec("784-100-10", (1, 28, 28), 10)
    with pytest.raises(ValueError, match="block 0 gets no input"):
        calibrate(net, torch.zeros(4, 1, 28, 28), 1.0)


def test_dropout_goes_before_every_dense_layer_that_takes_spikes_and_keeps_the_numbering_without_it():
    kinds = [type(m).__name__ for m in from_spec("32C5-P2-64C5-P2-1024", (1, 28, 28), 10, dropout=0.3).layers]
    assert kinds == [
        "SpikingConv2d",
        "TimePool2d",
        "SpikingConv2d",
        "TimePool2d",
        "FlattenFeatures",
        "TimeDropout",
        "SpikingLinear",
        "TimeDropout",
        "SpikingLinear",
    ]
    mlp = from_spec("784-400-400-10", (1, 28, 28), 10, dropout=0.3)
    assert [type(m).__name__ for m in mlp.layers] == [
        "FlattenFeatures",  # never on the image itself
        "SpikingLinear",
        "TimeDropout",
        "SpikingLinear",
        "TimeDropout",
        "SpikingLinear",
    ]
    twin = from_spec("784-400-400-10", (1, 28, 28), 10, ann=True, dropout=0.3)
    assert [type(m).__name__ for m in twin] == [
        "FlattenFeatures", "Linear", "ReLU", "Dropout", "Linear", "ReLU", "Dropout", "Linear"
    ]  # fmt: skip
    # with 0 there is no layer at all, so checkpoints of networks without dropout still load
    assert all("Dropout" not in type(m).__name__ for m in from_spec("784-400-400-10", (1, 28, 28), 10).layers)
    with pytest.raises(ValueError, match=r"dropout=1\.0 \(need 0 <= dropout < 1"):
        from_spec("784-10", (1, 28, 28), 10, dropout=1.0)


def test_dropout_silences_a_neuron_for_all_steps_at_the_asked_rate_and_is_off_in_eval_and_step():
    torch.manual_seed(0)
    drop = TimeDropout(0.25).train()
    counts = torch.randint(1, 16, (3, 64, 512)).float()  # [T, B, features], all > 0
    out = drop(counts)
    dropped = out == 0
    assert torch.equal(dropped[0], dropped[1]) and torch.equal(dropped[0], dropped[2])
    # 32,768 independent draws of p = 0.25: std 0.0024, so 0.01 is four of them
    assert abs(dropped[0].float().mean().item() - 0.25) < 0.01
    assert torch.allclose(out[~dropped], counts[~dropped] / 0.75)
    assert torch.equal(drop.eval()(counts), counts)
    # a trained network with dropout gives, in eval mode and step by step, what it gives without the layers
    with_dropout = from_spec("784-400-400-10", (1, 28, 28), 10, dropout=0.5)
    without = from_spec("784-400-400-10", (1, 28, 28), 10)
    with torch.no_grad():
        for mine, theirs in zip(without.blocks(), with_dropout.blocks()):
            mine.weight.copy_(theirs.weight)
            mine.bias.copy_(theirs.bias)
    images = torch.rand(4, 1, 28, 28) * 3
    expected = without(images)
    assert expected.sum() > 0
    assert torch.equal(with_dropout.eval()(images), expected)
    state, steps = with_dropout.initial_state(4), []
    for _ in range(2):
        out_t, state = with_dropout.train().step(images, state)
        steps.append(out_t)
    assert torch.equal(torch.stack(steps), expected)
