"""Quantization-aware training (--qat) and starting from trained weights (--init-from): the
rounded weights by hand, the straight-through gradient, a float network that computes what its
integer twin computes, and the checks on the model a run starts from."""

import json

import pytest
import torch

from mtsnn import from_spec
from mtsnn.checkpoint import load_checkpoint
from mtsnn.config import build_model, preset
from mtsnn.experiments import cli
from mtsnn.experiments.train import Run, start_from
from mtsnn.integer import IntegerNetwork, round_weights
from runs import SHARED, assert_same_run, needs_fmnist, save_trained

needs_mnist = pytest.mark.skipif(not (SHARED / "MNIST" / "raw").is_dir(), reason=f"no MNIST under {SHARED}")
QUIET = dict(log=lambda *a: None)


def test_rounded_weights_are_int8_steps_of_each_channels_scale_by_hand():
    net = from_spec("2-3", (2,), 3)
    with torch.no_grad():
        net.blocks()[0].weight.copy_(torch.tensor([[0.5, -0.25], [1.0, 2.0], [-0.5, 0.126]]))
    round_weights(net)
    # per row: s = max|w| / 127; round(w / s), ties to even: -63.5 -> -64, 63.5 -> 64, 32.004 -> 32
    expected = [[127 * 0.5 / 127, -64 * 0.5 / 127], [64 * 2 / 127, 2.0], [-0.5, 32 * 0.5 / 127]]
    assert net.blocks()[0].weight.flatten().tolist() == pytest.approx(sum(expected, []), rel=1e-6)
    assert net.blocks()[0].parametrizations.weight.original[2, 1].item() == pytest.approx(0.126)  # kept as it was


def test_the_gradient_passes_straight_through_the_rounding():
    net = round_weights(from_spec("3-2", (3,), 2))
    weight = torch.tensor([[0.3, -0.7, 0.11], [1.0, 0.2, -0.05]])
    with torch.no_grad():
        net.blocks()[0].parametrizations.weight.original.copy_(weight)
    factor = torch.tensor([[1.0, -2.0, 3.0], [0.5, 4.0, -1.0]])
    (net.blocks()[0].weight * factor).sum().backward()
    assert torch.equal(net.blocks()[0].parametrizations.weight.original.grad, factor)


def test_a_first_block_reading_channels_of_different_std_rounds_as_the_integer_path_does():
    torch.manual_seed(0)
    net = from_spec("4C3-2", (3, 4, 4), 2)
    std = (0.2, 0.4, 0.8)
    plain = IntegerNetwork(net, (0.5, 0.5, 0.5), std).layers[0]
    round_weights(net, std)
    rounded = IntegerNetwork(net, (0.5, 0.5, 0.5), std).layers[0]
    assert torch.equal(rounded.weight, plain.weight)  # the same int8 weights from the rounded floats
    # which are exactly s_c q_cj / f_j, f_j = 1 / (255 std_j)
    f = (1 / (255 * torch.tensor(std, dtype=torch.float64))).view(1, -1, 1, 1)
    exact = plain.scale.view(-1, 1, 1, 1) * plain.weight.double() / f
    assert torch.allclose(net.blocks()[0].weight.double(), exact, rtol=1e-6, atol=0)


def test_a_float_network_with_rounded_weights_counts_as_its_integer_twin():
    agreement = {}
    for rounded in (False, True):
        torch.manual_seed(1)
        net = from_spec("784-200-10", (1, 28, 28), 10, num_steps=2)
        with torch.no_grad():
            net.blocks()[0].weight.mul_(3)  # enough current for a few spikes a step
        if rounded:
            round_weights(net)
        images = torch.randint(0, 256, (300, 1, 28, 28), dtype=torch.uint8)
        with torch.no_grad():
            counts = net((images.float() / 255 - 0.5) / 0.25)
        integer = IntegerNetwork(net, (0.5,), (0.25,))(images)
        assert counts.sum() > 1000
        agreement[rounded] = (counts.long() == integer).double().mean().item()
    # measured: 90.4% of the output counts equal without rounding, 99.9% with; what is left comes
    # from the biases', thresholds' and leak's own rounding
    assert agreement[False] < 0.95 and agreement[True] > 0.995


@pytest.mark.parametrize(
    "override, message",
    [
        ({"qat": True, "ann": True}, "qat=True with ann=True"),
        ({"init_from": "run", "calibrate": 1.0}, "calibrate=1.0 with init_from"),
    ],
)
def test_settings_that_do_not_fit_are_named(override, message):
    with pytest.raises(ValueError, match=message):
        preset("mnist-mlp", **override)


def test_a_run_starts_from_the_weights_of_the_model_it_names_and_of_no_other_network(tmp_path):
    save_trained(tmp_path / "snn", always_seven=False, ann=False, dataset="mnist", val_holdout=5000)
    saved, _ = load_checkpoint(tmp_path / "snn" / "checkpoint.safetensors")
    assert saved["model/layers.1.weight"].abs().sum() > 0
    for qat in (False, True):
        cfg = preset("mnist-mlp", spec="784-10", init_from=str(tmp_path / "snn"), qat=qat, val_holdout=5000)
        model, lines = build_model(cfg), []
        start_from(model, cfg, torch.device("cpu"), log=lines.append)
        kept = model.blocks()[0].parametrizations.weight.original if qat else model.blocks()[0].weight
        assert torch.equal(kept, saved["model/layers.1.weight"])
        assert torch.equal(model.blocks()[0].bias, saved["model/layers.1.bias"])
        assert lines[0].startswith(f"init_from: {tmp_path / 'snn'} (784-10, file sha256 ")
    with pytest.raises(ValueError, match="init_from .* is an SNN 784-10, this run an SNN 784-800-10: it can only"):
        cfg = preset("mnist-mlp", init_from=str(tmp_path / "snn"))
        start_from(build_model(cfg), cfg, torch.device("cpu"))
    with pytest.raises(ValueError, match="is an SNN 784-10, this run an ANN twin 784-10"):
        cfg = preset("mnist-mlp", spec="784-10", ann=True, init_from=str(tmp_path / "snn"))
        start_from(build_model(cfg), cfg, torch.device("cpu"))
    with pytest.raises(ValueError, match="init_from .* held out 5000 training images, this run 1000"):
        cfg = preset("mnist-mlp", spec="784-10", init_from=str(tmp_path / "snn"), val_holdout=1000)
        start_from(build_model(cfg), cfg, torch.device("cpu"))
    with pytest.raises(ValueError, match="init_from .*nowhere: no such run directory or checkpoint"):
        cfg = preset("mnist-mlp", spec="784-10", init_from=str(tmp_path / "nowhere"))
        start_from(build_model(cfg), cfg, torch.device("cpu"))


@needs_fmnist
def test_a_qat_run_resumed_after_each_epoch_ends_with_the_weights_of_an_uninterrupted_one(tmp_path):
    save_trained(tmp_path / "start", always_seven=False, ann=False, dataset="fashion-mnist", data_root=str(SHARED))
    cfg = preset(
        "fmnist-mlp",
        spec="784-10",
        init_from=str(tmp_path / "start"),
        qat=True,
        train_limit=256,
        test_limit=100,
        epochs=2,
        deterministic=True,
        data_root=str(SHARED),
    )
    Run.start(cfg, tmp_path / "whole", **QUIET).fit()
    Run.start(cfg.replace(epochs=1), tmp_path / "parts", **QUIET).fit()
    Run.resume(tmp_path / "parts", epochs=2, **QUIET).fit()
    assert_same_run(tmp_path / "whole", tmp_path / "parts")


@needs_mnist
def test_a_trained_network_fine_tuned_with_qat_predicts_as_its_integer_twin(tmp_path, capsys):
    common = dict(spec="784-100-10", train_limit=2000, test_limit=1000, data_root=str(SHARED), seed=1)
    Run.start(preset("mnist-mlp", epochs=2, **common), tmp_path / "a", **QUIET).fit()
    tuned = dict(init_from=str(tmp_path / "a"), qat=True, epochs=1, lr=0.0005, warmup_epochs=0.0)
    Run.start(preset("mnist-mlp", **tuned, **common), tmp_path / "b", **QUIET).fit()
    reports = {}
    for run in ("a", "b"):
        assert cli.main(["eval", str(tmp_path / run), "--int8", "--json", "--test-limit", "1000"]) == 0
        reports[run] = json.loads(capsys.readouterr().out)
    # measured: 57.3 and 58.4% correct (two epochs on 2,000 images); the same prediction on 98.6%
    # of the test images before, 99.9% after
    assert reports["b"]["test_acc"] >= reports["a"]["test_acc"] - 2.0, reports  # it kept what it had learned
    assert reports["b"]["int8_agreement"] >= 99.8 > reports["a"]["int8_agreement"], reports
