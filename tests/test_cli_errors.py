"""The CLI against a hostile user (issue 20): every failure one clear line naming what is wrong,
never a traceback, never a silent wrong result."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mtsnn import __version__
from mtsnn.checkpoint import load_checkpoint, save_checkpoint
from mtsnn.config import TrainConfig, dump_toml, load_toml, preset
from mtsnn.experiments import cli
from mtsnn.experiments.objective import sample_losses
from mtsnn.experiments.rundir import LOCK, lock
from mtsnn.experiments.train import Run, finish
from runs import SHARED, SMALL, copy_run, in_namespace, mtsnn, mtsnn_done, needs_fmnist

REPO = Path(__file__).resolve().parents[1]


def quiet(*a):
    pass


def refused(code: int, out: str, *words: str, rc: int = 2) -> None:
    """The command failed with exit code ``rc`` and one clear line holding ``words``."""
    assert code == rc and "Traceback" not in out, out
    assert all(word in out for word in words), out


# 1, 2: devices


@pytest.mark.parametrize("device", ["cuda:99", "cuda"])
def test_a_device_this_machine_lacks_is_refused_before_anything_is_written(tmp_path, capsys, device):
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    code = cli.main(["train", "fmnist-mlp", "--device", device, "--run-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    refused(code, err, f"device {device!r} is not usable on this machine", "--device cpu")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "device, message", [("cuda:99", "device 'cuda:99' is not usable"), ("gpu", "'gpu' (need a torch device")]
)
def test_eval_names_a_bad_or_missing_device(one_epoch, capsys, device, message):
    refused(cli.main(["eval", str(one_epoch), "--device", device]), capsys.readouterr().err, message)
    if device == "cuda:99" and torch.cuda.is_available():
        return  # this machine has CUDA: cuda:99 may exist only as a name
    refused(cli.main(["eval", "pretrained:mnist-mlp", "--device", device]), capsys.readouterr().err, message)


def test_keep_weights_with_a_test_limit_is_refused_before_anything_is_written(one_epoch, tmp_path, capsys):
    code = cli.main(["eval", str(one_epoch), "--test-limit", "100", "--keep-weights", str(tmp_path / "m")])
    refused(code, capsys.readouterr().err, "--keep-weights records the accuracy on the whole test set", "100")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "record, message",
    [
        ('{"weights": "mnist-mlp.safetensors",\n', "not valid JSON"),
        ('{"sha256": "00", "test_acc": 99.0}', "the record lacks weights"),
        ("[1, 2]", "the record lacks weights, sha256, test_acc"),
    ],
)
def test_a_damaged_record_of_a_shipped_model_is_refused_naming_its_file(tmp_path, capsys, monkeypatch, record, message):
    (tmp_path / "mnist-mlp.json").write_text(record)
    monkeypatch.setenv("MTSNN_MODELS", str(tmp_path))
    refused(
        cli.main(["eval", "pretrained:mnist-mlp"]), capsys.readouterr().err, f"{tmp_path / 'mnist-mlp.json'}: ", message
    )


# 3: write errors


def test_a_read_only_run_directory_is_refused_naming_the_file(one_epoch, tmp_path):
    copy_run(one_epoch, tmp_path / "ro" / "stopped")
    before = (tmp_path / "ro" / "stopped" / "checkpoint.safetensors").read_bytes()
    result = in_namespace(f"""
        mount --bind {tmp_path}/ro {tmp_path}/ro && mount -o remount,bind,ro {tmp_path}/ro
        for args in "train fmnist-mlp --epochs 1 --run-dir {tmp_path}/ro/new" \\
                    "train fmnist-mlp --epochs 1 --run-dir {tmp_path}/ro/new/sub" \\
                    "train --resume {tmp_path}/ro/stopped --epochs 2"; do
            $PY -m mtsnn.experiments.cli $args 2>&1 && exit 9 || echo "rc=$?"
        done""")
    out = result.stdout
    assert result.returncode == 0 and out.count("rc=1") == 3 and "Traceback" not in out, out + result.stderr
    assert f"cannot use {tmp_path}/ro/new: Read-only file system" in out
    assert f"cannot use {tmp_path}/ro/stopped/{LOCK}: Read-only file system" in out
    assert (tmp_path / "ro" / "stopped" / "checkpoint.safetensors").read_bytes() == before


# 4, 5: damaged checkpoints and NaN (the fault-injection suite, test_faults.py, flips bytes at random)


def test_a_checkpoint_with_non_finite_weights_is_refused_on_resume_naming_the_tensor(one_epoch, tmp_path):
    run_dir = copy_run(one_epoch, tmp_path / "run")
    tensors, state = load_checkpoint(run_dir / "checkpoint.safetensors")
    name = next(k for k in tensors if k.startswith("model/"))
    tensors[name].view(-1)[0] = float("nan")
    save_checkpoint(run_dir / "checkpoint.safetensors", tensors, state)  # a valid digest over a NaN
    code, out = mtsnn_done("train", "--resume", run_dir, "--epochs", "2")
    refused(code, out, "checkpoint.safetensors: holds non-finite values", name)


@needs_fmnist
def test_after_a_nan_loss_the_message_says_which_epoch_the_kept_checkpoint_holds(tmp_path, monkeypatch):
    run = Run.start(preset("fmnist-mlp", epochs=2, train_limit=512, data_root=str(SHARED)), tmp_path, log=quiet)
    calls = {"n": 0}

    def poisoned(output, labels, cfg, current=None, teacher_logits=None):
        calls["n"] += 1
        losses = sample_losses(output, labels, cfg, current, teacher_logits)
        return losses * float("nan") if calls["n"] > 6 else losses  # epoch 1 has 4 batches

    monkeypatch.setattr("mtsnn.experiments.train.sample_losses", poisoned)
    with pytest.raises(
        FloatingPointError,
        match=r"at epoch 2, by batch 2\. The last checkpoint, .*checkpoint"
        r"\.safetensors, holds the run at the end of epoch 1",
    ):
        run.fit()
    assert load_checkpoint(tmp_path / "checkpoint.safetensors")[1]["epoch"] == 1


@needs_fmnist
def test_weights_that_became_non_finite_are_not_saved_over_the_last_checkpoint(tmp_path):
    run = Run.start(preset("fmnist-mlp", epochs=2, train_limit=512, data_root=str(SHARED)), tmp_path, log=quiet)
    run.save()
    before = (tmp_path / "checkpoint.safetensors").read_bytes()
    with torch.no_grad():
        next(run.model.parameters()).fill_(float("inf"))
    with pytest.raises(FloatingPointError, match="non-finite values .* not saved. The last checkpoint"):
        run.save()
    assert (tmp_path / "checkpoint.safetensors").read_bytes() == before


# 6: one process per run directory


@needs_fmnist
def test_a_second_trainer_on_the_same_run_directory_is_refused_naming_the_first(tmp_path):
    run_dir = tmp_path / "run"
    first = mtsnn("train", "fmnist-mlp", "--epochs", "100", *SMALL, "--run-dir", run_dir)
    for line in first.stdout:  # the first holds the lock from before it loads its data
        if line.startswith("epoch   1/100"):
            break
    code, out = mtsnn_done("train", "fmnist-mlp", "--epochs", "100", *SMALL, "--run-dir", run_dir)
    refused(code, out, f"{run_dir} is in use by process {first.pid}")
    code, out = mtsnn_done("train", "--resume", run_dir)
    refused(code, out, f"is in use by process {first.pid}")
    first.send_signal(signal.SIGTERM)
    rest, _ = first.communicate(timeout=300)
    assert first.returncode == 128 + signal.SIGTERM, rest
    epochs = [json.loads(line)["epoch"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert epochs == list(range(1, len(epochs) + 1))  # one writer: no epoch twice


def test_a_lock_file_left_by_a_dead_process_does_not_block(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / LOCK).write_text(f"{dead.pid}\n")
    held = lock(tmp_path)
    assert (tmp_path / LOCK).read_text() == f"{os.getpid()}\n"
    held.close()


# 7: a resumed run cannot be shortened


@needs_fmnist
@pytest.mark.parametrize("epoch, batch", [(3, 0), (2, 1)])  # finished after 3 epochs; stopped inside epoch 3
def test_a_run_cannot_be_resumed_with_fewer_epochs_than_it_has_trained(tmp_path, capsys, epoch, batch):
    run = Run.start(preset("fmnist-mlp", epochs=3, train_limit=512, data_root=str(SHARED)), tmp_path, log=quiet)
    run.epoch, run.batch = epoch, batch
    run.save()
    run.lock.close()
    (tmp_path / "config.toml").write_text(dump_toml(dataclasses.asdict(run.cfg)))
    before = (tmp_path / "config.toml").read_text()
    code = cli.main(["train", "--resume", str(tmp_path), "--epochs", "2"])
    refused(
        code,
        capsys.readouterr().err,
        f"has trained {epoch} epochs and {batch} batches; epochs=2 would end it before that",
    )
    assert (tmp_path / "config.toml").read_text() == before


# smaller findings


def test_a_run_records_the_folder_it_found_its_data_in(one_epoch):
    assert f'data_root = "{SHARED.resolve()}"' in (one_epoch / "config.toml").read_text()


def test_run_keeps_the_callers_folder_so_relative_paths_work(tmp_path):
    venv = Path(os.environ.get("MTSNN_VENV", REPO / ".venv"))
    if not (venv / ".mtsnn-installed").exists():
        pytest.skip("./run has not set up its environment here")
    out = subprocess.run(
        [REPO / "run", "python", "-c", "import os; print(os.getcwd())"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.strip() == str(tmp_path)


def test_output_into_a_closed_pipe_ends_quietly():
    p = subprocess.Popen(
        [sys.executable, "-m", "mtsnn.experiments.cli", "presets"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    p.stdout.close()  # the reader goes away before anything is written, as `| head -0` would
    err = p.stderr.read().decode()
    assert p.wait(timeout=120) == 141 and err == ""


def test_train_help_explains_each_setting_with_its_choices_and_there_is_a_version(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--loss {mse,ce}" in text and "--recipe {paper,fast}" in text and "--output-surrogate {'',f1," in text
    assert "--output-floor FLOAT not in the paper: > 0 adds a term" in text
    with pytest.raises(SystemExit):
        cli.main(["--version"])
    assert capsys.readouterr().out.strip() == f"mtsnn {__version__}"


def test_eval_scores_the_first_n_test_images_when_asked(one_epoch, capsys):
    assert cli.main(["eval", str(one_epoch), "--test-limit", "300", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["test_images"] == 300
    assert cli.main(["eval", str(one_epoch), "--test-limit", "300"]) == 0
    assert "on the first 300 test images" in capsys.readouterr().out


@needs_fmnist
def test_limits_beyond_the_data_are_said(tmp_path):
    said = []
    cfg = preset("fmnist-mlp", train_limit=10**6, test_limit=10**6, data_root=str(SHARED))
    assert Run.start(cfg, tmp_path, log=said.append).train_size == 60_000
    assert said == [
        "train_limit=1000000 is more than the 60000 images there are: using all of them",
        "test_limit=1000000 is more than the 10000 images there are: using all of them",
    ]


@needs_fmnist
@pytest.mark.parametrize("ann", [False, True])
def test_only_a_spiking_run_names_its_neuron_backend(tmp_path, ann):
    said = []
    cfg = preset("fmnist-mlp", ann=ann, epochs=1, train_limit=256, test_limit=100, data_root=str(SHARED))
    summary = Run.start(cfg, tmp_path, log=said.append).fit()
    assert any(line.startswith("neuron backend: ") for line in said) != ann
    assert (summary.machine["neuron_backend"] is None) == ann


def test_a_finished_run_given_more_epochs_says_how_to_train_it_on(one_epoch):
    cfg = TrainConfig(**load_toml(one_epoch / "config.toml")).replace(epochs=3)
    said = []
    finish(cfg, one_epoch, said.append)
    assert said == [
        f"{one_epoch}: finished before, kept (it has 1 epochs; to train it on to 3: "
        f"mtsnn train --resume {one_epoch} --epochs 3)"
    ]


def test_eval_reads_a_run_that_a_live_trainer_holds(one_epoch, capsys):
    assert cli.main(["eval", str(one_epoch), "--test-limit", "100", "--json"]) == 0
    free = json.loads(capsys.readouterr().out)
    held = lock(one_epoch)
    try:
        assert cli.main(["eval", str(one_epoch), "--test-limit", "100", "--json"]) == 0
    finally:
        held.close()
    assert json.loads(capsys.readouterr().out) == free  # the same weights read, held or not
