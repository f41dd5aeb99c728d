"""Knowledge distillation (--teacher, --distill): the loss by hand, which teachers a run may
take, and a student that learns what its teacher says rather than its labels."""

import hashlib
import math
import shutil

import pytest
import torch

from mtsnn.checkpoint import load_checkpoint, save_checkpoint
from mtsnn.config import TrainConfig, preset
from mtsnn.experiments.objective import loss_fn, predict
from mtsnn.experiments.train import Run, finish, load_teachers
from runs import SHARED, assert_same_run, needs_fmnist, save_trained


def test_distillation_mixes_the_label_loss_with_the_softened_teachers_by_hand():
    cfg = TrainConfig(loss="ce", teacher="t", distill=0.25, distill_temperature=2.0)
    out = torch.tensor([[[1.0, 4.0, 0.0]], [[0.0, 6.0, 2.0]]])  # summed counts [1, 10, 2], label 1
    teacher = [3.0, 5.0, 1.0]

    def softmax(z, tau):
        e = [math.exp(v / tau) for v in z]
        return [v / sum(e) for v in e]

    ce = -math.log(softmax([1.0, 10.0, 2.0], 1.0)[1])
    p, q = softmax(teacher, 2.0), softmax([1.0, 10.0, 2.0], 2.0)
    kl = sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
    expected = 0.75 * ce + 0.25 * 4.0 * kl
    assert loss_fn(out, torch.tensor([1]), cfg, teacher_logits=torch.tensor([[teacher]])).item() == pytest.approx(
        expected
    )
    # a student that already says what the teacher says pays the label's share alone
    same = loss_fn(out, torch.tensor([1]), cfg, teacher_logits=torch.tensor([[[1.0, 10.0, 2.0]]]))
    assert same.item() == pytest.approx(0.75 * ce, abs=1e-7)


def test_distillation_mixes_eq_6_with_the_teachers_term_by_hand():
    cfg = TrainConfig(loss="mse", target_true=2.0, teacher="t", distill=0.5, distill_temperature=1.0)
    out = torch.tensor([[[1.0, 2.0, 0.0]], [[0.0, 1.0, 1.0]]])  # label 1: desired counts [0, 2, 0] a step
    eq6 = 0.5 * ((0 - 1) ** 2 + (2 - 1) ** 2 + (0 - 1) ** 2)  # step 1 matches but for class 0
    p = [math.exp(v) / (math.exp(2.0) + 2) for v in (2.0, 0.0, 0.0)]  # the teacher's logits [2, 0, 0]
    q = [math.exp(v) / (2 * math.exp(1.0) + math.exp(3.0)) for v in (1.0, 3.0, 1.0)]  # summed counts
    kl = sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
    loss = loss_fn(out, torch.tensor([1]), cfg, teacher_logits=torch.tensor([[[2.0, 0.0, 0.0]]]))
    assert loss.item() == pytest.approx(0.5 * eq6 + 0.5 * kl)


def test_teacher_logits_without_a_teachers_axis_are_refused():
    cfg = TrainConfig(loss="ce", teacher="t", distill=0.5)
    with pytest.raises(ValueError, match=r"teacher_logits of shape \(4, 3\); need \[teachers, 4, 3\]"):
        loss_fn(torch.zeros(2, 4, 3), torch.zeros(4, dtype=torch.long), cfg, teacher_logits=torch.zeros(4, 3))


def test_an_ensemble_teaches_the_mean_of_its_softened_probabilities_by_hand():
    cfg = TrainConfig(loss="ce", teacher="a,b", distill=1.0, distill_temperature=2.0)
    out = torch.tensor([[[1.0, 0.0, 0.0]], [[0.0, 1.0, 0.0]]])  # summed counts [1, 1, 0]
    teachers = torch.tensor([[[4.0, 0.0, 0.0]], [[0.0, 0.0, 2.0]]])  # [K=2, B=1, classes]

    def softmax(z, tau):
        e = [math.exp(v / tau) for v in z]
        return [v / sum(e) for v in e]

    a, b = softmax([4.0, 0.0, 0.0], 2.0), softmax([0.0, 0.0, 2.0], 2.0)
    p, q = [(x + y) / 2 for x, y in zip(a, b)], softmax([1.0, 1.0, 0.0], 2.0)
    kl = sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
    assert loss_fn(out, torch.tensor([0]), cfg, teacher_logits=teachers).item() == pytest.approx(4.0 * kl)


@pytest.mark.parametrize(
    "override, message",
    [
        ({"teacher": "run"}, "distill=0.0 with teacher='run'"),
        ({"distill": 0.5}, "distill=0.5 with teacher=''"),
        ({"teacher": "run", "distill": 1.5}, r"distill=1.5 \(need 0 <= distill <= 1"),
        ({"teacher": "run", "distill": 0.5, "distill_temperature": 0.0}, "distill_temperature=0.0"),
        ({"teacher": "a,,b", "distill": 0.5}, "teacher='a,,b' \\(an ensemble names each teacher once"),
        ({"teacher": "a,b,a", "distill": 0.5}, "teacher='a,b,a' \\(an ensemble names each teacher once"),
        ({"teacher": "a, b", "distill": 0.5}, "teacher='a, b' \\(an ensemble names each teacher once"),
    ],
)
def test_distillation_settings_that_do_not_fit_are_named(override, message):
    with pytest.raises(ValueError, match=message):
        preset("fmnist-mlp", **override)


def test_a_run_refuses_a_teacher_of_other_data_or_one_that_may_have_seen_its_validation_images(tmp_path):
    save_trained(tmp_path, dataset="mnist", val_holdout=5000)
    student = preset("mnist-mlp", teacher=str(tmp_path), distill=0.5)
    with pytest.raises(ValueError, match=f"teacher {tmp_path} learned mnist, not this run's fashion-mnist"):
        load_teachers(student.replace(dataset="fashion-mnist"), torch.device("cpu"))
    with pytest.raises(ValueError, match="held out 5000 training images, this run 1000: it may have learned"):
        load_teachers(student.replace(val_holdout=1000), torch.device("cpu"))
    save_trained(tmp_path / "all", dataset="mnist")  # trained on every training image
    with pytest.raises(ValueError, match="held out 0 training images, this run 5000"):
        load_teachers(student.replace(teacher=str(tmp_path / "all"), val_holdout=5000), torch.device("cpu"))
    ensemble = student.replace(teacher=f"{tmp_path},{tmp_path / 'all'}", val_holdout=5000)
    with pytest.raises(ValueError, match=f"teacher {tmp_path / 'all'} held out 0 training images, this run 5000"):
        load_teachers(ensemble, torch.device("cpu"))  # each teacher of an ensemble is checked
    lines = []
    assert len(load_teachers(ensemble.replace(val_holdout=0), torch.device("cpu"), log=lines.append)) == 2
    assert [line.split(" (")[0] for line in lines] == [f"teacher: {tmp_path}", f"teacher: {tmp_path / 'all'}"]
    for fitting in (student.replace(val_holdout=5000), student):  # the same held-out images; the test set
        [teacher] = load_teachers(fitting, torch.device("cpu"), log=lambda *a: None)
        assert teacher.config.ann and not teacher.model.training
        assert not any(p.requires_grad for p in teacher.model.parameters())
        assert teacher.sha256 == hashlib.sha256((tmp_path / "checkpoint.safetensors").read_bytes()).hexdigest()


def test_a_run_refuses_a_teacher_whose_run_has_not_finished_or_lost_its_checkpoint(tmp_path):
    save_trained(tmp_path, finished=False, dataset="mnist")
    student = preset("mnist-mlp", teacher=str(tmp_path), distill=0.5)
    with pytest.raises(ValueError, match=f"teacher {tmp_path} has not finished its run \\(no summary.json\\)"):
        load_teachers(student, torch.device("cpu"))
    (tmp_path / "summary.json").write_text("{}")
    (tmp_path / "checkpoint.safetensors").unlink()  # as on a fresh clone: checkpoints are not committed
    with pytest.raises(ValueError, match=f"teacher {tmp_path}: its run finished, but its checkpoint .* is gone"):
        load_teachers(student, torch.device("cpu"))


@needs_fmnist
@pytest.mark.parametrize("teacher_ann, student_ann", [(True, False), (False, True)], ids=["ann-to-snn", "snn-to-ann"])
def test_a_student_taught_by_a_teacher_alone_learns_the_teachers_answer_not_its_labels(
    tmp_path, teacher_ann, student_ann
):
    save_trained(tmp_path / "teacher", ann=teacher_ann, dataset="fashion-mnist", data_root=str(SHARED))
    common = dict(train_limit=512, test_limit=500, epochs=3, data_root=str(SHARED), loss="ce", lr=0.01, ann=student_ann)
    student = Run.start(
        preset("fmnist-mlp", teacher=str(tmp_path / "teacher"), distill=1.0, **common),
        tmp_path / "student",
        log=lambda *a: None,
    )
    student.fit()
    labelled = Run.start(preset("fmnist-mlp", **common), tmp_path / "labelled", log=lambda *a: None).fit()
    # the teacher always answers class 7, and after 3 epochs on 512 images the student does so
    # for 92-100% of the test images (the SNN student all, the ANN 92%), where labels give one in ten
    with torch.no_grad():
        answers = torch.cat([predict(student.model(x), student.cfg) for x, _ in student.test_loader.epoch(0)])
    assert (answers == 7).float().mean() >= 0.8, answers.bincount(minlength=10)
    assert labelled.test_acc > 50.0  # labels teach far more


@needs_fmnist
@pytest.mark.parametrize("count", [1, 2], ids=["one-teacher", "ensemble"])
def test_a_distilled_run_resumed_after_each_epoch_ends_with_the_weights_of_an_uninterrupted_one(tmp_path, count):
    # teachers whose answers depend on the image: a resumed run must show them the same images
    names = [tmp_path / f"teacher{i}" for i in range(count)]
    for i, name in enumerate(names):
        save_trained(name, always_seven=False, dataset="fashion-mnist", data_root=str(SHARED), seed=i)
    cfg = preset(
        "fmnist-mlp",
        teacher=",".join(map(str, names)),
        distill=0.5,
        train_limit=256,
        test_limit=100,
        epochs=2,
        deterministic=True,
        data_root=str(SHARED),
    )
    Run.start(cfg, tmp_path / "whole", log=lambda *a: None).fit()
    Run.start(cfg.replace(epochs=1), tmp_path / "parts", log=lambda *a: None).fit()
    Run.resume(tmp_path / "parts", log=lambda *a: None, epochs=2).fit()
    assert_same_run(tmp_path / "whole", tmp_path / "parts")


@needs_fmnist
def test_a_distilled_run_knows_its_teachers_by_sha256_not_by_path(tmp_path):
    quiet = dict(log=lambda *a: None)
    first, second = tmp_path / "t0", tmp_path / "t1"
    for i, name in enumerate((first, second)):
        save_trained(name, always_seven=False, dataset="fashion-mnist", data_root=str(SHARED), seed=i)
        shutil.copytree(name, tmp_path / f"moved{i}")
    digest = hashlib.sha256((tmp_path / "moved0" / "checkpoint.safetensors").read_bytes()).hexdigest()
    moved = f"{tmp_path / 'moved0'},{tmp_path / 'moved1'}"
    cfg = preset(
        "fmnist-mlp",
        teacher=f"{first},{second}",
        distill=0.5,
        train_limit=256,
        test_limit=100,
        epochs=1,
        data_root=str(SHARED),
    )
    Run.start(cfg, tmp_path / "run", **quiet).fit()
    lines = []  # the same command with the teachers' new place keeps the finished run
    finish(cfg.replace(teacher=moved), tmp_path / "run", log=lines.append)
    assert lines == [f"{tmp_path / 'run'}: finished before, kept"]
    save_trained(first, always_seven=True, dataset="fashion-mnist", data_root=str(SHARED))  # other weights
    changed = f"learned from teacher 1 with file sha256 {digest}, but {first} has "
    with pytest.raises(ValueError, match=changed):
        Run.resume(tmp_path / "run", epochs=2, **quiet)
    with pytest.raises(ValueError, match=changed):
        finish(cfg.replace(teacher=f"{first},{tmp_path / 'moved1'}"), tmp_path / "run", **quiet)
    with pytest.raises(ValueError, match="learned from the same teachers in another order"):
        Run.resume(tmp_path / "run", teacher=f"{tmp_path / 'moved1'},{tmp_path / 'moved0'}", epochs=2, **quiet)
    shutil.rmtree(first)
    with pytest.raises(ValueError, match=f"teacher {first}: no such run directory or checkpoint"):
        Run.resume(tmp_path / "run", epochs=2, **quiet)
    # a checkpoint written before the teachers' sha256s were recorded cannot tell a moved teacher from another
    shutil.copytree(tmp_path / "run", tmp_path / "older")
    tensors, state = load_checkpoint(tmp_path / "older" / "checkpoint.safetensors")
    del state["teacher_sha256"]
    save_checkpoint(tmp_path / "older" / "checkpoint.safetensors", tensors, state)
    with pytest.raises(ValueError, match="a resumed run keeps its settings, but teacher="):
        Run.resume(tmp_path / "older", teacher=moved, epochs=2, **quiet)
    resumed = Run.resume(tmp_path / "run", teacher=moved, epochs=2, **quiet).fit()
    assert resumed.epochs == 2
