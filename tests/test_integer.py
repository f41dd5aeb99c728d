"""Integer-only inference (issue 18): the fast path against a slow integer reference written here
(numpy int64, loops over kernel offsets), hand-computed quantities, and its accuracy."""

import json
import math

import numpy as np
import pytest
import torch

from mtsnn import data, from_spec, zoo
from mtsnn.experiments import cli
from mtsnn.integer import IntegerBlock, IntegerFlatten, IntegerNetwork, IntegerPool
from runs import SHARED

needs_data = pytest.mark.skipif(not (SHARED / "MNIST" / "raw").is_dir(), reason=f"no MNIST under {SHARED}")


def reference(integer: IntegerNetwork, pixels: np.ndarray, steps: int) -> np.ndarray:
    """The integer network step by step in numpy int64: no floats anywhere."""
    potentials, outputs = {}, []
    for _ in range(steps):
        x = pixels.astype(np.int64)
        for index, layer in enumerate(integer.layers):
            if isinstance(layer, IntegerFlatten):
                x = x.reshape(len(x), -1)
            elif isinstance(layer, IntegerPool):
                k, mode = layer.size, layer.mode
                b, c, h, w = x.shape
                windows = x[:, :, : h // k * k, : w // k * k].reshape(b, c, h // k, k, w // k, k)
                x = windows.sum((3, 5)) if mode == "avg" else windows.max((3, 5))
            else:
                weight = layer.weight.numpy().astype(np.int64)
                if weight.ndim == 2:
                    acc = x @ weight.T
                else:
                    pad, k = layer.padding, weight.shape[-1]
                    padded = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
                    acc = np.zeros((len(x), weight.shape[0], x.shape[2], x.shape[3]), dtype=np.int64)
                    for dy in range(k):
                        for dx in range(k):
                            patch = padded[:, :, dy : dy + x.shape[2], dx : dx + x.shape[3]]
                            acc += np.einsum("bchw,oc->bohw", patch, weight[:, :, dy, dx])
                shape = (-1,) + (1,) * (acc.ndim - 2)
                theta = layer.theta.numpy().reshape(shape)
                bias = layer.bias.numpy() if layer.bias.dim() > 1 else layer.bias.numpy().reshape(shape)
                u = potentials.get(index, np.zeros_like(acc))
                if layer.leak is not None:
                    u = (u * layer.leak + 2**15) >> 16
                v = u + acc + bias
                x = np.clip(np.floor_divide(v, theta), 0, layer.s_max)
                potentials[index] = v - x * theta
        outputs.append(x)
    return np.stack(outputs)


@needs_data
@pytest.mark.parametrize("name", ["mnist-mlp", "mnist-cnn", "fmnist-cnn"])
def test_the_integer_path_equals_a_slow_integer_reference(name):
    net, cfg = zoo.load(name)
    test = data.load(cfg.dataset, "test", root=SHARED).subset(6)
    integer = IntegerNetwork(net, *data.NORMALISATION[cfg.dataset])
    got = integer(test.images, num_steps=3)
    assert got.dtype == torch.int64 and got.sum() > 0
    assert np.array_equal(got.numpy(), reference(integer, test.images.numpy(), 3))
    for layer in integer.layers:
        if isinstance(layer, IntegerBlock):
            assert layer.weight.dtype == torch.int8 and layer.weight.abs().max() == 127


def test_quantities_of_a_one_layer_network_by_hand():
    net = from_spec("2-3", (2,), 3, v_th=10.0, tau_m=10.0, s_max=15)
    with torch.no_grad():
        net.blocks()[0].weight.copy_(torch.tensor([[0.5, -0.25], [1.0, 2.0], [-0.5, 0.125]]))
        net.blocks()[0].bias.copy_(torch.tensor([0.2, 0.0, -0.3]))
    # one input channel of "pixels" with mean 0 and std 1/255: the pixel value is the input itself
    block = IntegerNetwork(net, mean=(0.0,), std=(1 / 255,), input_shape=(2,)).layers[0]
    # round(w / (max|w_c| / 127)), ties to even: -63.5 -> -64, 63.5 -> 64, 31.75 -> 32
    assert block.weight.tolist() == [[127, -64], [64, 127], [-127, 32]]
    assert block.scale.tolist() == pytest.approx([0.5 / 127, 2 / 127, 0.5 / 127])
    assert block.theta.tolist() == [2540, 635, 2540]  # round(10 / scale)
    assert block.bias.tolist() == [51, 0, -76]  # round(0.2 / (0.5/127)) = round(50.8), round(-76.2)
    assert block.leak == 58982  # round(0.9 * 2^16)
    # one step for input (20, 3): channel 1 gets 64*20 + 127*3 = 1661 -> 2 spikes of 635, 391 left
    spikes, potential = block.neuron(
        torch.tensor([[64 * 20 + 127 * 3]]).expand(1, 3) * torch.tensor([0, 1, 0]), torch.zeros(1, 3, dtype=torch.long)
    )
    assert spikes[0, 1] == 2 and potential[0, 1] == 1661 - 2 * 635
    # the next step leaks it: (391 * 58982 + 2^15) >> 16 = 352
    _, leaked = block.neuron(torch.zeros(1, 3, dtype=torch.long), potential)
    assert leaked[0, 1] == (391 * 58982 + 2**15) >> 16 == 352
    assert math.isclose(352 / 391, 0.9, abs_tol=2e-3)


def test_bias_correction_leaves_no_mean_rounding_shift_on_its_calibration_images():
    torch.manual_seed(0)
    net = from_spec("16-8-4", (16,), 4, v_th=0.5, tau_m=10.0, s_max=15, num_steps=2)
    images = torch.randint(0, 256, (64, 16), dtype=torch.uint8)
    plain = IntegerNetwork(net, mean=(0.5,), std=(0.25,), input_shape=(16,))
    corrected = IntegerNetwork(net, mean=(0.5,), std=(0.25,), input_shape=(16,), calibration=images)
    first, second = corrected.layers
    assert isinstance(first, IntegerBlock) and isinstance(second, IntegerBlock)
    float_first, float_second = net.blocks()
    # the first block's float potential input in units of its channel scale: (W x + b) / s, x normalised
    x = (images.double() / 255 - 0.5) / 0.25
    exact = (x @ float_first.weight.detach().double().T + float_first.bias.detach().double()) / first.scale
    acc = first.accumulate(images.long())
    plain_first = plain.layers[0]
    assert isinstance(plain_first, IntegerBlock)
    assert (acc + plain_first.bias - exact).mean(0).abs().max() > 5  # the shift the rounding leaves
    assert (acc + first.bias - exact).mean(0).abs().max() <= 0.5 + 1e-9  # only the bias's own rounding
    # the second block, over both steps, on the spikes the corrected first block gives it
    potential, inputs = torch.zeros_like(acc), []
    for _ in range(2):
        spikes, potential = first.neuron(acc, potential)
        inputs.append(spikes)
    counts = torch.cat(inputs)
    assert counts.sum() > 0
    w, b = float_second.weight.detach().double(), float_second.bias.detach().double()
    exact = (counts.double() @ w.T + b) / second.scale
    assert (second.accumulate(counts) + second.bias - exact).mean(0).abs().max() <= 0.5 + 1e-9


def test_calibration_refuses_normalised_images():
    net = from_spec("4-3", (4,), 3)
    with pytest.raises(ValueError, match="raw uint8 images, got torch.float32"):
        IntegerNetwork(net, mean=(0.5,), std=(0.2,), input_shape=(4,), calibration=torch.rand(2, 4))


# Issue 18's goal is 0.1 points. The distilled fmnist-cnn misses it (-0.16: its outputs fire
# near their ceiling and tie more often; results/int8/README.md), so it is held to 0.2; its
# version fine-tuned with --qat (fmnist-cnn-qat) meets it.
@needs_data
@pytest.mark.parametrize(
    ("name", "bound"),
    [("mnist-mlp", 0.1), ("fmnist-mlp", 0.1), ("mnist-cnn", 0.1), ("fmnist-cnn", 0.2), ("fmnist-cnn-qat", 0.1)],
)
def test_int8_accuracy_is_within_its_bound_of_float_and_predictions_mostly_agree(name, bound, capsys):
    assert cli.main(["eval", f"pretrained:{name}", "--int8", "--json", "--data-root", str(SHARED)]) == 0
    report = json.loads(capsys.readouterr().out)
    gap = abs(report["int8_test_acc"] - report["test_acc"])
    assert gap <= bound, report
    # only an image on which the two disagree can be right for one and wrong for the other
    assert gap <= 100 - report["int8_agreement"] + 1e-9, report
    assert report["int8_agreement"] >= 99.0, report


def test_floats_are_refused_as_input():
    integer = IntegerNetwork(from_spec("4-3", (4,), 3), mean=(0.5,), std=(0.2,), input_shape=(4,))
    with pytest.raises(TypeError, match="raw uint8 pixels"):
        integer(torch.rand(2, 4))


def test_an_accumulator_beyond_int32_is_refused_naming_its_block_and_value():
    # 70,000 inputs of 255 times weight 127: 2,266,950,000 > 2**31 - 1
    block = IntegerBlock(
        weight=torch.full((1, 70_000), 127, dtype=torch.int8),
        bias=torch.zeros(1, dtype=torch.int64),
        theta=torch.ones(1, dtype=torch.int64),
        leak=None,
        s_max=15,
        padding=None,
        scale=torch.ones(1, dtype=torch.float64),
    )
    assert block.accumulate(torch.full((1, 70_000), 255 // 2)).item() == 70_000 * 127 * 127  # fits
    with pytest.raises(ValueError, match=r"a \(1, 70000\) block's accumulator reached 2266950000, beyond int32"):
        block.accumulate(torch.full((1, 70_000), 255))


@pytest.mark.parametrize("pooling", ["avg", "max"])
def test_the_integer_path_of_either_pooling_equals_the_slow_reference(pooling):
    torch.manual_seed(3)
    net = from_spec("6C3-P2-8C3-P2-10", (1, 12, 12), 10, pooling=pooling).eval()
    with torch.no_grad():  # eq. (17)'s start is too quiet to reach the output: scale it up
        for block in net.blocks():
            block.weight.mul_(4.0)
    images = torch.randint(0, 256, (5, 1, 12, 12), dtype=torch.uint8)
    integer = IntegerNetwork(net, mean=(0.5,), std=(0.25,), input_shape=(1, 12, 12))
    assert [layer.mode for layer in integer.layers if isinstance(layer, IntegerPool)] == [pooling, pooling]
    got = integer(images, num_steps=3)
    assert got.sum() > 0 and np.array_equal(got.numpy(), reference(integer, images.numpy(), 3))
