"""Batch norm while training (``--batch-norm``), folded into weight and bias for inference:
checked against torch's own ``nn.BatchNorm`` (autograd, running statistics, eval mode)."""

import json

import pytest
import torch

from mtsnn import from_spec
from mtsnn.config import preset
from mtsnn.layers import SpikingConv2d, SpikingLinear
from mtsnn.neuron import Rows, _LIFFunction, paper_backward
from runs import SMALL, assert_same_run, final_state, mtsnn_done, needs_fmnist


def _blocks():
    """(block, input, num_steps): a conv block under direct input, a channels-last conv block
    and a linear block on spike sequences."""
    torch.manual_seed(0)
    yield SpikingConv2d(3, 5, 3, batch_norm=True), torch.rand(6, 3, 7, 7) * 4, 2
    conv = SpikingConv2d(3, 5, 3, batch_norm=True).to(memory_format=torch.channels_last)
    yield conv, (torch.rand(2, 6, 7, 7, 3) < 0.5).float().permute(0, 1, 4, 2, 3) * 3, None
    yield SpikingLinear(20, 8, batch_norm=True), (torch.rand(2, 6, 20) < 0.5).float() * 3, None


def _torch_norm(block):
    """torch's BatchNorm with ``block``'s norm's parameters and statistics, its gamma and beta
    moved off their start so that both matter."""
    with torch.no_grad():
        block.norm.weight.uniform_(5.0, 15.0)
        block.norm.bias.uniform_(-3.0, 3.0)
    reference = type(block.norm)(block.weight.shape[0])
    reference.load_state_dict(block.norm.state_dict())
    return reference


def _current(block, x, steps, norm):
    """The block's current through ``norm`` by autograd, shaped as the neuron takes it."""
    flat = x if steps is not None else x.flatten(0, 1)
    current = norm(block.synapse(flat, block.weight, block.bias))
    return current if steps is not None else current.unflatten(0, x.shape[:2])


@pytest.mark.parametrize("case", range(3))
def test_the_paper_gradient_goes_through_batch_norm_as_autograd_through_torchs(case):
    # eqs. (7)-(13) send two cotangents of the current down, delta (input) and a (weights);
    # through torch's BatchNorm by autograd, delta must give the input's gradient and a the
    # weight's, bias's, gamma's and beta's
    block, x, steps = list(_blocks())[case]
    reference = _torch_norm(block).train()
    x = x.requires_grad_()
    out = block.train()(x, steps)
    grad_out = torch.randn_like(out)
    params = (block.weight, block.bias, block.norm.weight, block.norm.bias)
    got = torch.autograd.grad(out, (x, *params), grad_out)

    current = _current(block, x, steps, reference)
    rows = Rows(current.detach(), steps)
    delta, a = (
        rows.like_current(g)
        for g in paper_backward(rows.time_major(grad_out), rows.current(current.detach()), block.params, steps)
    )
    (want_x,) = torch.autograd.grad(current, (x,), delta, retain_graph=True)
    want = (want_x, *torch.autograd.grad(current, (block.weight, block.bias, reference.weight, reference.bias), a))
    for name, g, w in zip(["input", "weight", "bias", "gamma", "beta"], got, want):
        torch.testing.assert_close(g, w, atol=1e-4, rtol=1e-4, msg=name)
    assert torch.equal(out, _LIFFunction.apply(current.detach().contiguous(), block.params, steps))
    torch.testing.assert_close(block.norm.running_mean, reference.running_mean)
    torch.testing.assert_close(block.norm.running_var, reference.running_var)


def test_bptt_modes_normalise_as_torchs_batch_norm():
    torch.manual_seed(1)
    block = SpikingConv2d(2, 4, 3, batch_norm=True, grad_mode="bptt-detach")
    reference = _torch_norm(block).train()
    x = torch.rand(5, 2, 6, 6) * 4
    out = block.train()(x, 2)
    want = _LIFFunction.apply(_current(block, x, 2, reference), block.params, 2)
    assert torch.equal(out, want)
    grad_out = torch.randn_like(out)
    got = torch.autograd.grad(out, (block.weight, block.norm.weight), grad_out)
    expected = torch.autograd.grad(want, (block.weight, reference.weight), grad_out)
    for g, w in zip(got, expected):
        torch.testing.assert_close(g, w)


@pytest.mark.parametrize("case", range(3))
def test_in_eval_mode_the_norm_folds_into_weight_and_bias(case):
    block, x, steps = list(_blocks())[case]
    reference = _torch_norm(block)
    with torch.no_grad():
        for _ in range(3):  # running statistics away from their start
            scaled = x * torch.rand(()) * 2
            block.train()(scaled, steps)
            _current(block, scaled, steps, reference.train())  # the same steps on torch's
        block.eval()
        weight, bias = block.weight_and_bias()
        flat = x if steps is not None else x.flatten(0, 1)
        folded = block.synapse(flat, weight, bias)
        torch.testing.assert_close(folded, reference.eval()(block.synapse(flat, block.weight, block.bias)))
        counts = block(x, steps)
        want = _LIFFunction.apply(_current(block, x, steps, reference), block.params, steps)
    # a current within rounding of a threshold may count differently; none did here
    assert (counts != want).sum() == 0


def _trained_bn_net():
    """A small SNN with batch norm whose running statistics have moved, in eval mode."""
    torch.manual_seed(2)
    net = from_spec("4C3-P2-6C3-P2-12", (1, 12, 12), 10, batch_norm=True).train()
    with torch.no_grad():
        for _ in range(4):
            net(torch.rand(16, 1, 12, 12) * 3)
    return net.eval()


def test_a_batch_norm_network_streams_step_by_step_as_its_forward():
    net = _trained_bn_net()
    frames = torch.rand(3, 5, 1, 12, 12) * 3
    state = net.initial_state(5)
    outs = []
    for frame in frames:
        out, state = net.step(frame, state)
        outs.append(out)
    assert torch.equal(torch.stack(outs), net(frames))


def test_only_hidden_blocks_and_hidden_ann_layers_are_normalised_with_gamma_at_the_threshold():
    net = from_spec("4C3-P2-12", (1, 12, 12), 10, batch_norm=True, v_th=7.0)
    assert [block.norm is not None for block in net.blocks()] == [True, True, False]
    assert torch.equal(net.blocks()[0].norm.weight, torch.full((4,), 7.0))
    assert torch.equal(net.blocks()[0].norm.bias, torch.zeros(4))
    twin = from_spec("4C3-P2-12", (1, 12, 12), 10, ann=True, batch_norm=True)
    kinds = [type(m).__name__ for m in twin]
    assert kinds == [
        "Conv2d", "BatchNorm2d", "ReLU", "AvgPool2d", "FlattenFeatures", "Linear", "BatchNorm1d", "ReLU", "Linear"
    ]  # fmt: skip
    assert from_spec("4C3-P2-12", (1, 12, 12), 10).blocks()[0].norm is None


@pytest.mark.parametrize(
    "override, message",
    [({"qat": True}, "batch_norm=True with qat=True"), ({"calibrate": 1.0}, "calibrate=1.0 with batch_norm=True")],
)
def test_batch_norm_with_qat_or_calibrate_is_refused_by_name(override, message):
    with pytest.raises(ValueError, match=message):
        preset("mnist-cnn", batch_norm=True, **override)


def _folded_copy(net):
    """The same spec built without batch norm, its weights and biases set to ``net``'s folded ones."""
    plain = from_spec("4C3-P2-6C3-P2-12", (1, 12, 12), 10).eval()
    with torch.no_grad():
        for block, source in zip(plain.blocks(), net.blocks()):
            weight, bias = source.weight_and_bias()
            block.weight.copy_(weight)
            block.bias.copy_(bias)
    return plain


def test_the_integer_network_of_a_batch_norm_network_is_that_of_its_folded_plain_twin():
    from mtsnn.integer import IntegerNetwork

    net = _trained_bn_net()
    pixels = (torch.rand(64, 1, 12, 12) * 255).to(torch.uint8)
    integer = IntegerNetwork(net, mean=(0.5,), std=(0.25,), input_shape=(1, 12, 12))(pixels)
    twin = IntegerNetwork(_folded_copy(net), mean=(0.5,), std=(0.25,), input_shape=(1, 12, 12))(pixels)
    assert integer.sum() > 0
    assert torch.equal(integer, twin)


def test_a_batch_norm_network_exports_to_sinabs_and_nir_with_its_own_counts(tmp_path):
    pytest.importorskip("sinabs")
    pytest.importorskip("nir")
    from mtsnn import export

    net = _trained_bn_net()
    images = torch.rand(32, 1, 12, 12) * 3
    counts = net(images)
    assert counts.sum() > 0
    assert torch.equal(export.run_sinabs(export.to_sinabs(net), images), counts)
    export.write_nir(net, tmp_path / "net.nir")
    assert torch.equal(export.from_nir(tmp_path / "net.nir")(images), counts)


@needs_fmnist
def test_a_batch_norm_run_learns_resumes_to_the_same_state_and_evaluates_folded(tmp_path):
    # the running statistics are part of the state: a run stopped after epoch 1 and resumed
    # must end where the uninterrupted one does, and eval (folded weights) score what it scored
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    args = ["train", "fmnist-mlp", "--batch-norm", *SMALL]  # the paper's constant rate: no schedule to stretch
    code, out = mtsnn_done(*args, "--epochs", "2", "--run-dir", straight)
    assert code == 0, out
    code, out = mtsnn_done(*args, "--epochs", "1", "--run-dir", resumed)
    assert code == 0, out
    code, out = mtsnn_done("train", "--resume", resumed, "--epochs", "2")
    assert code == 0, out
    assert_same_run(resumed, straight)
    tensors, _, rows = final_state(straight)
    assert {"model/layers.1.norm.running_var", "model/layers.2.norm.weight"} <= set(tensors)
    assert rows[-1]["test_acc"] > 40  # 512 images, 2 epochs: far above chance (10%)
    code, out = mtsnn_done("eval", straight, "--json", "--test-limit", "500")  # as the run scored
    assert code == 0, out
    assert json.loads(out[out.index("{") :])["test_acc"] == pytest.approx(rows[-1]["test_acc"])


@needs_fmnist
def test_a_batch_norm_run_starts_a_run_without_it_folded_and_the_reverse_is_refused(tmp_path, one_epoch):
    from mtsnn.config import build_model
    from mtsnn.experiments.evaluate import load_trained
    from mtsnn.experiments.train import start_from

    run = tmp_path / "bn"
    code, out = mtsnn_done("train", "fmnist-mlp", "--batch-norm", *SMALL, "--epochs", "1", "--run-dir", run)
    assert code == 0, out
    trained, cfg = load_trained(run)
    plain_cfg = cfg.replace(batch_norm=False, init_from=str(run))  # to fine-tune it with qat, say
    plain = build_model(plain_cfg)
    start_from(plain, plain_cfg, torch.device("cpu"), log=lambda *_: None)
    assert all(block.norm is None for block in plain.blocks())
    images = torch.rand(64, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(plain.eval()(images), trained.eval()(images))
    normed_cfg = cfg.replace(init_from=str(one_epoch))  # one_epoch trained without batch norm
    with pytest.raises(ValueError, match="trained without batch norm, this run with it: give --no-batch-norm"):
        start_from(build_model(normed_cfg), normed_cfg, torch.device("cpu"))
