"""The fast recipe's parts: the learning-rate schedule, decoupled weight decay, the held-out
validation split, and the recipe switch itself."""

import dataclasses
import hashlib
import json
import math
import time

import pytest
import torch

from mtsnn import data
from mtsnn.checkpoint import save_checkpoint
from mtsnn.config import FAST, PRESETS, TrainConfig, build_model, dump_toml, load_toml, preset
from mtsnn.experiments import cli, train
from mtsnn.experiments.evaluate import keep_weights
from mtsnn.experiments.objective import OutputCurrent, loss_fn, predict
from mtsnn.experiments.optimizer import climb, descend, learning_rate, make_optimizer
from mtsnn.experiments.rundir import read_metrics, state_tensors
from mtsnn.experiments.train import Run, finish
from mtsnn.models import from_spec
from runs import SHARED, assert_same_run


def test_the_paper_recipe_keeps_one_constant_rate():
    cfg = TrainConfig(lr=0.005, epochs=3)
    assert [learning_rate(cfg, step, 10) for step in (0, 1, 15, 29)] == [0.005] * 4


def test_warm_up_is_linear_from_the_first_step_then_the_cosine_ends_at_zero():
    cfg = TrainConfig(lr=0.01, epochs=3, schedule="cosine", warmup_epochs=1.0)  # 10 steps per epoch
    # warm-up: step k of 10 gets lr (k+1)/10
    assert learning_rate(cfg, 0, 10) == pytest.approx(0.001)
    assert learning_rate(cfg, 4, 10) == pytest.approx(0.005)
    assert learning_rate(cfg, 9, 10) == pytest.approx(0.01)
    # then 20 steps of cosine: p = (step - 10) / 20
    assert learning_rate(cfg, 10, 10) == pytest.approx(0.01)
    assert learning_rate(cfg, 20, 10) == pytest.approx(0.005)  # p = 1/2: half the rate
    assert learning_rate(cfg, 15, 10) == pytest.approx(0.01 * (1 + math.cos(math.pi / 4)) / 2)
    assert learning_rate(cfg, 29, 10) == pytest.approx(0.01 * (1 + math.cos(math.pi * 19 / 20)) / 2)
    assert learning_rate(cfg, 30, 10) == pytest.approx(0.0, abs=1e-12)  # one past the end stays at 0


def test_warm_up_also_works_before_a_constant_rate():
    cfg = TrainConfig(lr=0.004, epochs=5, warmup_epochs=0.5)  # 8 steps per epoch: 4 steps of warm-up
    assert [learning_rate(cfg, step, 8) for step in range(6)] == pytest.approx(
        [0.001, 0.002, 0.003, 0.004, 0.004, 0.004]
    )


def test_weight_decay_is_decoupled_from_the_gradient():
    # AdamW: w <- w (1 - lr wd) - lr m_hat / (sqrt(v_hat) + eps). With a zero gradient the Adam
    # part is 0 / (0 + eps) = 0, so one step only shrinks every weight by (1 - lr wd).
    cfg = TrainConfig(spec="4-3", lr=0.01, weight_decay=0.5)
    weight = torch.nn.Parameter(torch.tensor([[1.0, -2.0], [3.0, 0.5]]))
    model = torch.nn.Module()
    model.weight = weight
    optimizer = make_optimizer(model, cfg, torch.device("cpu"))
    weight.grad = torch.zeros_like(weight)
    optimizer.step()
    assert torch.allclose(weight.detach(), torch.tensor([[1.0, -2.0], [3.0, 0.5]]) * (1 - 0.01 * 0.5))
    plain = make_optimizer(model, cfg.replace(weight_decay=0.0), torch.device("cpu"))
    assert type(plain) is torch.optim.Adam  # the paper's optimizer when there is no decay


def test_adam_beta2_sets_the_decay_of_the_second_moment():
    # Adam's second moment after gradients g1 then g2: v = beta2 (1 - beta2) g1^2 + (1 - beta2) g2^2;
    # the second step moves w by lr m_hat / (sqrt(v_hat) + eps), v_hat = v / (1 - beta2^2) and
    # m_hat = (0.9 * 0.1 g1 + 0.1 g2) / (1 - 0.9^2).
    for beta2 in (0.999, 0.9):
        weight = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
        model = torch.nn.Module()
        model.weight = weight
        optimizer = make_optimizer(model, TrainConfig(spec="4-3", lr=0.01, adam_beta2=beta2), torch.device("cpu"))
        g1, g2 = torch.tensor([1.0, 0.5]), torch.tensor([-3.0, 0.5])
        weight.grad = g1.clone()
        optimizer.step()
        before = weight.detach().clone()
        weight.grad = g2.clone()
        optimizer.step()
        v = beta2 * (1 - beta2) * g1**2 + (1 - beta2) * g2**2
        torch.testing.assert_close(optimizer.state[weight]["exp_avg_sq"], v)
        m_hat = (0.9 * 0.1 * g1 + 0.1 * g2) / (1 - 0.9**2)
        step = 0.01 * m_hat / ((v / (1 - beta2**2)).sqrt() + 1e-8)
        torch.testing.assert_close(weight.detach(), before - step)
    assert TrainConfig().adam_beta2 == 0.999  # Table 1


def test_sam_climbs_rho_along_the_gradient_direction_and_comes_back_exactly():
    # L = (w0^2 + w1^2) / 2 + 3 b: at w = (3, 4), b = 1 the gradient is (3, 4) and 3, its norm
    # sqrt(9 + 16 + 9) = sqrt(34); rho = 2 moves w to (3, 4) + 2 (3, 4) / sqrt(34) and b to
    # 1 + 2 * 3 / sqrt(34). A weight without a gradient (frozen) stays where it is.
    w, b = torch.nn.Parameter(torch.tensor([3.0, 4.0])), torch.nn.Parameter(torch.tensor(1.0))
    frozen = torch.nn.Parameter(torch.tensor([7.0]))
    ((w * w).sum() / 2 + 3 * b).backward()
    moved = climb([w, b, frozen], 2.0)
    root = math.sqrt(34)
    assert w.detach().tolist() == pytest.approx([3 + 6 / root, 4 + 8 / root])
    assert b.item() == pytest.approx(1 + 6 / root) and frozen.item() == 7.0
    w.grad, b.grad = None, None
    ((w * w).sum() / 2 + 3 * b).backward()  # SAM's gradient, at the moved weights
    descend(moved)
    assert w.detach().tolist() == [3.0, 4.0] and b.item() == 1.0  # bit for bit
    assert w.grad.tolist() == pytest.approx([3 + 6 / root, 4 + 8 / root]) and b.grad.item() == 3.0


def test_sam_leaves_weights_with_a_zero_gradient_where_they_are():
    w = torch.nn.Parameter(torch.tensor([1.5, -2.0]))
    w.grad = torch.zeros(2)
    descend(climb([w], 10.0))  # rho / 0 must not turn 0 x inf into NaN
    assert w.detach().tolist() == [1.5, -2.0]
    climb([w], 10.0)
    assert w.detach().tolist() == [1.5, -2.0]


def test_a_sam_training_step_is_adam_on_the_gradient_at_the_climbed_weights(tmp_path):
    # One step of a run (128 images, batch 128) against the step written out here by hand.
    cfg = preset("mnist-mlp", epochs=1, train_limit=128, data_root=str(SHARED), sam=20.0)
    run = Run(cfg, tmp_path / "sam", log=lambda *a: None)
    start = {name: p.detach().clone() for name, p in run.model.named_parameters()}
    images, labels = next(iter(run.train_loader.epoch(0)))

    def gradient(weights):
        model = build_model(cfg)
        model.load_state_dict(weights)
        loss_fn(model(images), labels, cfg).backward()
        return {name: p.grad for name, p in model.named_parameters()}

    g = gradient(start)
    norm = torch.sqrt(sum((v * v).sum() for v in g.values()))
    g_sam = gradient({name: start[name] + 20.0 * g[name] / norm for name in start})
    run.fit()
    for name, p in run.model.named_parameters():
        # Adam's first moment after one step is (1 - beta1) times the gradient it was given. The
        # run's neuron kernel sums in another order than this eager model, which moves a few spike
        # counts and so the gradient by up to 0.01 (its entries reach 6; the climb moved them by 1-6).
        torch.testing.assert_close(run.optimizer.state[p]["exp_avg"] / 0.1, g_sam[name], rtol=1e-3, atol=0.01)
        # and its first step, from zero moments, is w - lr g / (|g| + eps) from the weights before the
        # climb (where |g| is clear of that noise, whose sign would decide the step)
        firm = g_sam[name].abs() > 0.02
        expected = start[name] - cfg.lr * g_sam[name] / (g_sam[name].abs() + 1e-8)
        torch.testing.assert_close(p.detach()[firm], expected[firm], rtol=0, atol=1e-6)
    assert any(not torch.allclose(g_sam[n], g[n], rtol=0.1) for n in start)  # the climb changed the gradient


def test_a_sam_loss_that_is_not_finite_stops_the_run_before_the_update(tmp_path, monkeypatch):
    # The first loss is finite; the climb makes one output bias NaN, so only SAM's second loss
    # is not. The run must stop before Adam's step, with the weights put back as they were.
    from mtsnn.experiments import train

    def climb_to_infinity(params, rho):
        moved = climb(params, rho)
        with torch.no_grad():
            params[-1][0] = math.nan  # the output layer's bias: spike counts clip an infinity
        return moved

    monkeypatch.setattr(train, "climb", climb_to_infinity)
    cfg = preset("mnist-mlp", epochs=1, train_limit=128, data_root=str(SHARED), sam=1.0)
    run = Run(cfg, tmp_path / "sam", log=lambda *a: None)
    start = {name: p.detach().clone() for name, p in run.model.named_parameters()}
    with pytest.raises(FloatingPointError, match="non-finite .* at epoch 1, by batch 0"):
        run.fit()
    for name, p in run.model.named_parameters():
        assert torch.equal(p.detach(), start[name]), name


def test_mixup_draws_one_weight_a_batch_from_the_folded_beta_and_a_permutation_fixed_by_the_batch():
    loader = data.DeviceLoader(tiny_dataset(), 20, train=True, seed=3, mixup=1.0)
    images = torch.randn(20, 1, 2, 2)
    lams = []
    for batch in range(2000):
        mixed, partner, lam = loader.mix(images, epoch=1, batch=batch)
        assert sorted(partner.tolist()) == list(range(20))
        torch.testing.assert_close(mixed, lam * images + (1 - lam) * images[partner])
        lams.append(lam)
    # Beta(1, 1) is uniform on [0, 1]; folded to max(lam, 1 - lam), uniform on [1/2, 1]: mean 3/4,
    # standard deviation 1 / (4 sqrt 3) = 0.144, so 2,000 draws put the mean within 0.0032 (1 sd)
    lams = torch.tensor(lams)
    assert lams.min() >= 0.5 and lams.max() <= 1.0
    assert abs(lams.mean().item() - 0.75) < 0.013
    assert abs((lams < 0.625).float().mean().item() - 0.25) < 0.04  # the lower quartile of [1/2, 1]
    again = data.DeviceLoader(tiny_dataset(), 20, train=True, seed=3, mixup=1.0).mix(images, epoch=1, batch=7)
    first = loader.mix(images, epoch=1, batch=7)
    assert torch.equal(again[0], first[0]) and torch.equal(again[1], first[1])  # a pure function of the batch
    assert not torch.equal(loader.mix(images, epoch=2, batch=7)[1], first[1])
    # Beta(0.2, 0.2) puts most of its weight near 0 and 1: folded, near 1 (an image nearly alone)
    light = data.DeviceLoader(tiny_dataset(), 20, train=True, seed=3, mixup=0.2)
    assert torch.tensor([light.mix(images, 0, b)[2] for b in range(500)]).median() > 0.9


def test_a_mixup_step_is_adam_on_the_blend_of_the_gradients_for_either_label(tmp_path):
    # One step of a run (128 images, batch 128) against the gradient written out here by hand:
    # the mixed images through the model, the loss (eq. 6 and the output floor) for each image's
    # own label and for its partner's, blended by the batch's lam.
    cfg = preset("mnist-mlp", epochs=1, train_limit=128, data_root=str(SHARED), mixup=1.0, output_floor=1.0)
    run = Run(cfg, tmp_path / "mixup", log=lambda *a: None)
    start = {name: p.detach().clone() for name, p in run.model.named_parameters()}
    images, labels = next(iter(run.train_loader.epoch(0)))
    mixed, partner, lam = run.train_loader.mix(images, 0, 0)
    assert 0.5 < lam < 0.95  # this batch's draw: both labels weigh

    def gradient(targets):
        model = build_model(cfg)
        model.load_state_dict(start)
        with OutputCurrent(model) as output_current:
            loss_fn(model(mixed), targets, cfg, output_current.current()).backward()
        return {name: p.grad for name, p in model.named_parameters()}

    own, partners = gradient(labels), gradient(labels[partner])
    run.fit()
    for name, p in run.model.named_parameters():
        expected = lam * own[name] + (1 - lam) * partners[name]
        # Adam's first moment after one step is (1 - beta1) times the gradient it was given (the
        # tolerance as in the SAM step's test: the kernels sum in another order)
        torch.testing.assert_close(run.optimizer.state[p]["exp_avg"] / 0.1, expected, rtol=1e-3, atol=0.01)
    assert any(not torch.allclose(own[n], partners[n], rtol=0.1) for n in start)  # the partner's label counted


def test_a_mixup_run_resumed_after_its_first_epoch_ends_with_the_weights_of_an_uninterrupted_one(tmp_path):
    cfg = preset(
        "mnist-mlp", mixup=0.4, train_limit=256, test_limit=100, epochs=2, deterministic=True, data_root=str(SHARED)
    )
    Run.start(cfg, tmp_path / "whole", log=lambda *a: None).fit()
    Run.start(cfg.replace(epochs=1), tmp_path / "parts", log=lambda *a: None).fit()
    Run.resume(tmp_path / "parts", log=lambda *a: None, epochs=2).fit()
    assert_same_run(tmp_path / "whole", tmp_path / "parts")


def test_a_clean_epoch_keeps_the_shuffled_order_and_leaves_the_images_as_they_are():
    images = torch.randint(0, 256, (20, 1, 6, 6), dtype=torch.uint8)
    digits = data.Dataset("mnist", "train", images, torch.arange(20) % 10, [str(i) for i in range(10)], ())
    shifted = data.DeviceLoader(digits, 8, train=True, seed=5, crop_padding=2, rotation=10.0)
    plain = data.DeviceLoader(digits, 8, train=True, seed=5)  # the same order, nothing augmented
    for (clean, labels), (expected, expected_labels), (moved, _) in zip(
        shifted.epoch(3, augment=False), plain.epoch(3), shifted.epoch(3), strict=True
    ):
        assert torch.equal(clean, expected) and torch.equal(labels, expected_labels)
        assert not torch.equal(clean, moved)  # the same epoch, augmented
    # and the unaugmented images are the data set's own, in a shuffled order of all 20
    (mean,), (std,) = data.NORMALISATION["mnist"]
    raw = torch.cat([batch for batch, _ in shifted.epoch(3, augment=False)]).mul(std).add(mean).mul(255).round()
    assert sorted(raw.flatten(1).tolist()) == sorted(images.flatten(1).float().tolist())


def test_clean_epochs_drop_augmentation_and_mixup_from_the_last_epochs_only(tmp_path, monkeypatch):
    # All epochs clean: bit for bit the run without augmentation or mixup
    small = dict(train_limit=256, test_limit=100, epochs=2, deterministic=True, data_root=str(SHARED))
    cfg = preset("mnist-mlp", crop_padding=2, mixup=0.4, clean_epochs=2, **small)
    Run.start(cfg, tmp_path / "clean", log=lambda *a: None).fit()
    Run.start(preset("mnist-mlp", crop_padding=0, **small), tmp_path / "plain", log=lambda *a: None).fit()
    assert_same_run(tmp_path / "clean", tmp_path / "plain")
    # The last of two epochs clean: only the first epoch's 2 batches (256 images, batch 128) augmented
    augmented, mixed = [], []
    augment, mix = data.DeviceLoader._augment, data.DeviceLoader.mix
    monkeypatch.setattr(data.DeviceLoader, "_augment", lambda *a: augmented.append(1) or augment(*a))
    monkeypatch.setattr(data.DeviceLoader, "mix", lambda self, x, e, b: mixed.append(e) or mix(self, x, e, b))
    Run.start(cfg.replace(clean_epochs=1), tmp_path / "last", log=lambda *a: None).fit()
    assert len(augmented) == 2 and mixed == [0, 0]


def tiny_dataset(n=20):
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, 2, 2).contiguous()
    return data.Dataset("mnist", "train", images, torch.arange(n) % 10, [str(i) for i in range(10)], ())


def test_hold_out_splits_the_examples_once_at_random_and_always_the_same_way():
    rest, held = tiny_dataset().hold_out(5)
    rest_ids, held_ids = rest.images[:, 0, 0, 0].tolist(), held.images[:, 0, 0, 0].tolist()
    assert len(held_ids) == 5 and len(rest_ids) == 15 and sorted(rest_ids + held_ids) == list(range(20))
    assert held.labels.tolist() == [i % 10 for i in held_ids]  # labels travel with their images
    assert held_ids != list(range(15, 20)) and held.split == "train-held-out"
    assert tiny_dataset().hold_out(5)[1].images.tolist() == held.images.tolist()


@pytest.mark.parametrize("n", [0, 20, -1])
def test_holding_out_all_or_nothing_is_refused_naming_the_count(n):
    with pytest.raises(ValueError, match=f"cannot hold out {n} of the 20"):
        tiny_dataset().hold_out(n)


@pytest.mark.parametrize(
    "override, message",
    [
        ({"schedule": "linear"}, "schedule='linear'"),
        ({"warmup_epochs": -1.0}, "warmup_epochs=-1.0"),
        ({"warmup_epochs": 300.0}, "warmup_epochs=300.0"),
        ({"weight_decay": math.nan}, "weight_decay=nan"),
        ({"val_holdout": -5}, "val_holdout=-5"),
        ({"recipe": "slow"}, "recipe 'slow'"),
        ({"output_floor": -1.0}, "output_floor=-1.0"),
        ({"output_floor": 1.0, "ann": True}, "output_floor=1.0 with ann=True"),
        ({"readout": "potential"}, "readout=.potential."),
        ({"readout": "residual", "ann": True}, "readout=.residual. with ann"),
        ({"sam": -0.5}, "sam=-0.5 \\(need a finite radius >= 0"),
        ({"sam": math.inf}, "sam=inf"),
        ({"adam_beta2": 1.0}, "adam_beta2=1.0 \\(need 0 <= adam_beta2 < 1"),
        ({"mixup": -0.2}, "mixup=-0.2 \\(need a finite alpha >= 0"),
        ({"mixup": math.nan}, "mixup=nan"),
        ({"clean_epochs": -1}, "clean_epochs=-1 \\(need 0 <= clean_epochs <= epochs=200"),
        ({"clean_epochs": 201}, "clean_epochs=201"),
    ],
)
def test_bad_recipe_settings_are_named(override, message):
    with pytest.raises(ValueError, match=message):
        preset("mnist-mlp", **override)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_the_fast_recipe_keeps_network_time_steps_neuron_and_f2(name):
    paper, fast = preset(name), preset(name, recipe="fast")
    assert paper == PRESETS[name] and paper.recipe == "paper"  # the default is the paper's, unchanged
    assert fast.recipe == "fast" and fast.epochs < paper.epochs
    for field in ("dataset", "spec", "ann", "T", "v_th", "tau_m", "s_max", "alpha_h", "alpha_w", "grad_mode", "init"):
        assert getattr(fast, field) == getattr(paper, field), field
    assert fast.surrogate == "f2" and fast.output_surrogate == ""  # f2 on every layer
    assert set(FAST[name]) <= {f.name for f in dataclasses.fields(TrainConfig)}


def test_cli_applies_the_recipe_then_the_config_file_then_the_command_line(tmp_path):
    parse = cli._parser()[0].parse_args
    cfg = cli._config(parse(["train", "mnist-mlp", "--recipe", "fast", "--lr", "0.002"]))
    assert (cfg.recipe, cfg.schedule, cfg.epochs, cfg.lr) == ("fast", "cosine", 150, 0.002)  # the README's table
    (tmp_path / "c.toml").write_text('recipe = "fast"\nepochs = 7\n')
    cfg = cli._config(parse(["train", "mnist-mlp", "--config", str(tmp_path / "c.toml")]))
    assert (cfg.recipe, cfg.schedule, cfg.epochs, cfg.lr) == ("fast", "cosine", 7, 0.01)
    with pytest.raises(SystemExit):  # argparse names the choices
        parse(["train", "mnist-mlp", "--recipe", "slow"])
    (tmp_path / "c.toml").write_text('recipe = "slow"\n')
    with pytest.raises(ValueError, match="recipe .slow."):
        cli._config(parse(["train", "mnist-mlp", "--config", str(tmp_path / "c.toml")]))


def test_a_finished_run_saved_before_the_recipe_settings_existed_is_kept(tmp_path):
    cfg = preset("mnist-mlp", epochs=1)
    old = {
        k: v
        for k, v in dataclasses.asdict(cfg).items()
        if k not in ("schedule", "warmup_epochs", "weight_decay", "recipe", "val_holdout")
    }
    (tmp_path / "config.toml").write_text(dump_toml(old))
    (tmp_path / "summary.json").write_text(
        json.dumps({"preset": cfg.preset, "test_acc": 98.0, "epochs": 1, "wall_seconds": 5.0})
    )
    assert finish(cfg, tmp_path, log=lambda *a: None).test_acc == 98.0
    with pytest.raises(ValueError, match="schedule='constant', not 'cosine'"):
        finish(cfg.replace(schedule="cosine"), tmp_path, log=lambda *a: None)


@pytest.mark.skipif(not (SHARED / "MNIST" / "raw").is_dir(), reason=f"real MNIST not found under {SHARED}")
def test_a_validation_run_scores_the_held_out_images_and_never_reads_the_test_set(tmp_path, monkeypatch):
    load = data.load

    def train_split_only(name, split, *args, **kwargs):
        assert split == "train", "a run with val_holdout read the test set"
        return load(name, split, *args, **kwargs)

    monkeypatch.setattr(data, "load", train_split_only)
    cfg = preset("mnist-mlp", recipe="fast", epochs=2, train_limit=2000, val_holdout=1000, data_root=str(SHARED))
    run = Run.start(cfg, tmp_path / "run", log=lambda *a: None)
    assert len(run.test_loader.labels) == 1000 and run.train_size == 2000
    summary = run.fit()
    rows = read_metrics(tmp_path / "run")
    assert (
        '"test_acc"'
        not in (tmp_path / "run" / "metrics.jsonl").read_text() + (tmp_path / "run" / "summary.json").read_text()
    )
    assert summary.test_acc is None and rows[-1].test_acc is None
    assert summary.val_acc == rows[-1].val_acc > 50  # well above chance (10%) after 32 steps


def test_the_output_floor_adds_the_true_class_current_missing_below_threshold():
    cfg = TrainConfig(v_th=10.0, output_floor=2.0)
    out, labels = torch.zeros(2, 1, 3), torch.tensor([1])  # [T=2, B=1, 3], every output silent
    current = torch.tensor([[[0.0, 4.0, 30.0]], [[0.0, 12.0, 30.0]]])  # true class 1: 6 below, then 2 above
    # eq. (6): 1/2 (5^2 + 5^2) = 25; the floor: 2 * (relu(10 - 4) + relu(10 - 12)) = 12
    assert loss_fn(out, labels, cfg, current).item() == pytest.approx(37.0)
    assert loss_fn(out, labels, cfg.replace(output_floor=0.0)).item() == pytest.approx(25.0)
    with pytest.raises(ValueError, match="output_floor=2.0 needs the output layer's current"):
        loss_fn(out, labels, cfg)


def silent_class_network():
    """A 4-6-3 SNN whose class-1 output neuron sits 110 below threshold on every input."""
    torch.manual_seed(0)
    model = from_spec("4-6-3", (1, 2, 2), 3, num_steps=2)
    with torch.no_grad():
        model.blocks()[0].weight.uniform_(0.0, 8.0)  # hidden neurons fire on these inputs
        model.blocks()[-1].weight[1].zero_()
        model.blocks()[-1].bias[1] = -100.0
    return model, torch.rand(5, 1, 2, 2) * 3, torch.ones(5, dtype=torch.long)


@pytest.mark.parametrize("grad_mode", ["paper", "bptt-detach"])
def test_a_silent_true_class_gets_a_gradient_from_the_floor_and_none_from_eq6(grad_mode):
    cfg = TrainConfig(spec="4-6-3", output_floor=1.0)
    model, images, labels = silent_class_network()
    for block in model.blocks():
        block.params = dataclasses.replace(block.params, grad_mode=grad_mode)
    output = model.blocks()[-1]
    loss_fn(model(images), labels, cfg.replace(output_floor=0.0)).backward()
    assert output.weight.grad[1].abs().sum() == 0 and output.bias.grad[1] == 0  # f2(-100) = 0: stuck
    model.zero_grad()
    with OutputCurrent(model) as output_current:
        hidden = model.blocks()[0](images.flatten(1), num_steps=2).detach()  # [T, B, 6]
        loss_fn(model(images), labels, cfg, output_current.current()).backward()
    # d/dW_1 of mean_b sum_t relu(10 - W_1 s[t] - b_1) = -mean_b sum_t s[t], active at every step
    assert output.bias.grad[1].item() == pytest.approx(-2.0)
    assert torch.allclose(output.weight.grad[1], -hidden.sum(0).mean(0))


def test_output_current_is_the_output_layers_synapse_on_what_enters_it():
    model, images, _ = silent_class_network()
    with OutputCurrent(model) as output_current:
        model(images)
        hidden = model.blocks()[0](images.flatten(1), num_steps=2)
        expected = torch.nn.functional.linear(hidden, model.blocks()[-1].weight, model.blocks()[-1].bias)
        assert torch.allclose(output_current.current(), expected)
    single = from_spec("4-3", (1, 2, 2), 3, num_steps=3)  # direct input: one current, held for T=3 steps
    with OutputCurrent(single) as output_current:
        single(images)
        once = torch.nn.functional.linear(images.flatten(1), single.blocks()[0].weight, single.blocks()[0].bias)
        assert output_current.current().shape == (3, 5, 3)
        assert all(torch.allclose(step, once) for step in output_current.current())


def test_kept_weights_load_alone_with_the_safetensors_package_and_give_the_runs_outputs(tmp_path):
    from safetensors.torch import load_file

    cfg = preset("mnist-mlp", recipe="fast", spec="784-30-10")
    torch.manual_seed(0)
    model = build_model(cfg)
    optimizer = make_optimizer(model, cfg, torch.device("cpu"))
    save_checkpoint(
        tmp_path / "checkpoint.safetensors", state_tensors(model, optimizer), {"config": dataclasses.asdict(cfg)}
    )
    record = keep_weights(tmp_path, tmp_path / "models" / "tiny", {"test_acc": 12.5, "silent_outputs": [3]})
    kept = tmp_path / "models" / "tiny.safetensors"
    weights = load_file(kept)
    assert weights.keys() == model.state_dict().keys()  # the model alone: no optimizer state
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())
    assert record["sha256"] == hashlib.sha256(kept.read_bytes()).hexdigest()
    assert json.loads((tmp_path / "models" / "tiny.json").read_text()) == record
    assert (record["test_acc"], record["silent_outputs"], record["recipe"]) == (12.5, [3], "fast")
    rebuilt = build_model(TrainConfig(**load_toml(tmp_path / "models" / "tiny.toml")).validate())
    rebuilt.load_state_dict(weights)
    images = torch.randn(4, 1, 28, 28)
    assert torch.equal(rebuilt(images), model(images))


def test_eval_keeps_the_weights_with_the_accuracy_it_measured_and_they_score_it_again(
    one_epoch, tmp_path, capsys, monkeypatch
):
    out = tmp_path / "models" / "tiny"
    assert cli.main(["eval", str(one_epoch), "--json", "--keep-weights", str(out), "--data-root", str(SHARED)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["test_images"] == 10_000 and 10 < report["test_acc"] < 100
    assert json.loads(out.with_suffix(".json").read_text())["test_acc"] == report["test_acc"]
    monkeypatch.setenv("MTSNN_MODELS", str(out.parent))
    assert cli.main(["eval", "pretrained:tiny", "--json", "--data-root", str(SHARED)]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["test_acc"] == again["recorded_test_acc"] == report["test_acc"]


def test_the_residual_readout_breaks_ties_by_the_potential_left_and_nothing_else():
    cfg = TrainConfig(v_th=10.0, tau_m=10.0, s_max=15)
    # currents [T=2, B=2, 3] and the spikes they give, by hand (v = 0.9 u + I, s = floor(v/10), u = v - 10 s):
    # sample 0, class 0: v 15 -> s 1, u 5; v 19.5 -> s 1, u 9.5.  class 1: v 12 -> 1, u 2; v 19.8 -> 1, u 9.8
    # sample 1, class 0: v 19 -> 1, u 9; v 8.1 -> 0, u 8.1.      class 2: v 20 -> 2, u 0; v 0 -> 0, u 0
    current = torch.tensor([[[15.0, 12.0, 0.0], [19.0, 0.0, 20.0]], [[15.0, 18.0, 0.0], [0.0, 0.0, 0.0]]])
    spikes = torch.tensor([[[1.0, 1.0, 0.0], [1.0, 0.0, 2.0]], [[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]]])
    assert predict(spikes, cfg).tolist() == [0, 2]  # the tie of sample 0 goes to the lowest class
    # residual: sample 0's tie goes to class 1 (9.8 > 9.5); sample 1 keeps class 2 (2 spikes > 1)
    # although class 0 has far more potential left (8.1 against 0)
    assert predict(spikes, cfg.replace(readout="residual"), current).tolist() == [1, 2]
    with pytest.raises(ValueError, match="readout='residual' needs the output layer's current"):
        predict(spikes, cfg.replace(readout="residual"))


@pytest.mark.skipif(not (SHARED / "MNIST" / "raw").is_dir(), reason=f"real MNIST not found under {SHARED}")
def test_the_output_floor_and_residual_readout_train_under_bfloat16_autocast(tmp_path, monkeypatch):
    from mtsnn.experiments import train

    seen, sample_losses = [], train.sample_losses

    def recording(output, labels, cfg, current, *rest):  # what the floor's term is given
        losses = sample_losses(output, labels, cfg, current, *rest)
        floorless = sample_losses(output, labels, cfg.replace(output_floor=0.0), current, *rest)
        seen.append((current.dtype, bool((losses > floorless).any())))
        return losses

    monkeypatch.setattr(train, "sample_losses", recording)
    cfg = preset(
        "mnist-cnn",
        recipe="fast",
        epochs=1,
        train_limit=256,
        val_holdout=500,
        amp=True,
        output_floor=1.0,
        readout="residual",
        data_root=str(SHARED),
    )
    Run.start(cfg, tmp_path / "run", log=lambda *a: None).fit()
    # 2 steps, each giving the floor the output current autocast computed in bfloat16, and the
    # floor pulling up some true class still below the threshold
    assert seen == [(torch.bfloat16, True)] * 2
    row = read_metrics(tmp_path / "run")[0]
    assert math.isfinite(row.train_loss) and row.val_acc is not None and row.val_acc > 10  # above chance


@pytest.mark.parametrize(
    "text, value",
    [
        ("90", 90.0),
        ("90s", 90.0),
        ("8m", 480.0),
        ("1.5h", 5400.0),
        ("0s", 0.0),
        ("8 min", 0.0),
        ("-1m", 0.0),
        ("", 0.0),
        ("inf", 0.0),
    ],
)
def test_durations_are_read_in_seconds_minutes_or_hours(text, value):
    from mtsnn.config import seconds

    assert seconds(text) == value


def test_a_time_budget_holds_the_whole_epochs_that_fit_between_bounds():
    from mtsnn.experiments.optimizer import plan_epochs

    # 100 s, 10 s spent on 50 steps, 5 steps/s: 50 + 450 = 500 steps, 100 an epoch -> 5 epochs
    assert plan_epochs(100, 10, 50, 5.0, 100, least=1, most=30) == 5
    assert plan_epochs(100, 10, 50, 5.0, 100, least=1, most=3) == 3  # --epochs caps it
    assert plan_epochs(1, 10, 50, 5.0, 100, least=1, most=30) == 1  # overspent: the epoch under way ends it
    assert plan_epochs(100, 10, 650, 5.0, 100, least=7, most=30) == 11


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"time_budget": "8 minutes"}, "need a duration"),
        ({"time_budget": "8m", "schedule": "cosine", "warmup_epochs": 0.0}, "needs warmup_epochs > 0"),
    ],
)
def test_bad_time_budgets_are_named(settings, message):
    with pytest.raises(ValueError, match=message):
        preset("fmnist-mlp", **settings)


@pytest.mark.skipif(not (SHARED / "FashionMNIST" / "raw").is_dir(), reason=f"no Fashion-MNIST under {SHARED}")
def test_a_time_budget_run_plans_its_epochs_records_them_and_keeps_them_when_resumed(tmp_path):
    said = []
    cfg = preset(
        "fmnist-mlp",
        recipe="fast",
        epochs=60,
        time_budget="4s",
        train_limit=4096,
        test_limit=500,
        data_root=str(SHARED),
    )  # 32 steps an epoch; at most 60 epochs
    run = Run.start(cfg, tmp_path, log=said.append)
    summary = run.fit()
    plan = [line for line in said if line.startswith("time budget 4s: ")]
    assert len(plan) == 1
    planned = int(plan[0].split(": ")[-1].split()[0])
    assert 1 <= planned < 60 and summary.epochs == planned
    assert len(read_metrics(tmp_path)) == planned and f"epochs = {planned}\n" in (tmp_path / "config.toml").read_text()
    resumed = Run.resume(tmp_path, log=said.append)
    assert resumed.planned and resumed.cfg.epochs == planned  # the plan is part of the run, not measured again


@pytest.mark.skipif(not (SHARED / "FashionMNIST" / "raw").is_dir(), reason=f"no Fashion-MNIST under {SHARED}")
@pytest.mark.parametrize(
    "clean, warmup, planned",
    [
        (3, 1.0, 4),  # the first epoch started augmented, then its 3 clean epochs: 1 + 3
        (1, 4.5, 5),  # the whole warm-up: ceil(4.5) epochs, the last of them clean
    ],
)
def test_a_spent_time_budget_still_plans_the_warm_up_and_the_clean_epochs(
    tmp_path, monkeypatch, clean, warmup, planned
):
    # 0.1 s is spent before the speed is measured (22 steps), so the plan is its lower bound
    augmented = []
    augment = data.DeviceLoader._augment
    monkeypatch.setattr(data.DeviceLoader, "_augment", lambda *a: augmented.append(1) or augment(*a))
    cfg = preset(
        "fmnist-mlp",
        recipe="fast",
        epochs=60,
        time_budget="0.1s",
        clean_epochs=clean,
        warmup_epochs=warmup,
        train_limit=4096,
        test_limit=100,
        data_root=str(SHARED),
    )  # 32 steps an epoch, crop padding 1
    summary = Run.start(cfg, tmp_path, log=lambda *a: None).fit()
    assert summary.epochs == planned and len(read_metrics(tmp_path)) == planned
    assert len(augmented) == 32 * (planned - clean)  # only the epochs before the clean ones shifted


@pytest.mark.skipif(not (SHARED / "FashionMNIST" / "raw").is_dir(), reason=f"no Fashion-MNIST under {SHARED}")
def test_a_time_budget_leaves_the_evaluation_of_epochs_before_its_plan_uncounted(tmp_path, monkeypatch):
    spent = []
    plan = train.plan_epochs
    monkeypatch.setattr(train, "plan_epochs", lambda *args: spent.append(args[1]) or plan(*args))
    score = train.evaluate
    monkeypatch.setattr(train, "evaluate", lambda *args: time.sleep(1.0) or score(*args))  # a slow test set
    cfg = preset("fmnist-mlp", epochs=3, time_budget="1h", train_limit=1280, test_limit=100, data_root=str(SHARED))
    Run.start(cfg, tmp_path, log=lambda *a: None).fit()  # 10 steps an epoch: planned in the third
    trained = sum(row.epoch_seconds for row in read_metrics(tmp_path)[:2])  # two evaluations: 2 s slept
    assert len(spent) == 1 and trained < spent[0] < trained + read_metrics(tmp_path)[2].epoch_seconds


@pytest.mark.skipif(not (SHARED / "FashionMNIST" / "raw").is_dir(), reason=f"no Fashion-MNIST under {SHARED}")
def test_a_time_budget_plan_that_breaks_a_bound_is_refused_not_trained(tmp_path, monkeypatch):
    # a planner that ignored its lower bound: 1 epoch, fewer than the 3 clean epochs
    monkeypatch.setattr(train, "plan_epochs", lambda *args: 1)
    cfg = preset(
        "fmnist-mlp",
        epochs=60,
        time_budget="1h",
        clean_epochs=3,
        train_limit=4096,
        test_limit=100,
        data_root=str(SHARED),
    )
    with pytest.raises(ValueError, match=r"clean_epochs=3 \(need 0 <= clean_epochs <= epochs=1\)"):
        Run.start(cfg, tmp_path, log=lambda *a: None).fit()
    assert read_metrics(tmp_path) == []  # no epoch finished on the broken plan


@pytest.mark.skipif(not (SHARED / "FashionMNIST" / "raw").is_dir(), reason=f"no Fashion-MNIST under {SHARED}")
def test_reading_sums_back_every_few_steps_as_on_a_gpu_changes_no_number(tmp_path):
    rows = []
    for sync_every in (1, 7):
        cfg = preset(
            "fmnist-mlp", epochs=2, train_limit=1280, test_limit=200, deterministic=True, data_root=str(SHARED)
        )  # 10 steps an epoch: windows of 7 cross the epoch's end
        run = Run.start(cfg, tmp_path / str(sync_every), log=lambda *a: None)
        run.sync_every = sync_every
        run.fit()
        rows.append([(r.train_loss, r.train_acc, r.test_acc) for r in read_metrics(run.run_dir)])
    assert rows[0] == rows[1]
