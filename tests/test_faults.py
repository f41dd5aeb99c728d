"""Fault injection (issue 20): bytes flipped at random offsets of a checkpoint (weights, optimizer
state, header), truncated checkpoints, a full disk, two trainers at once, and SIGKILL at random
moments. Each case must end in an exact resume (bitwise the weights, optimizer state and metrics
of a run that met no fault) or in a clear refusal naming the file: never a traceback, never an
exit code 0 with wrong numbers. The outcomes are counted; with MTSNN_FAULT_REPORT=FILE the
counts are also written there as JSON."""

import errno
import json
import os
import random
import struct
import time
from pathlib import Path

import pytest

from mtsnn.experiments import cli
from mtsnn.experiments.rundir import LOCK
from runs import SMALL, assert_same_run, copy_run, in_namespace, mtsnn, mtsnn_done, needs_fmnist

CHECKPOINT = "checkpoint.safetensors"
OUTCOMES: dict[str, list[str]] = {"resumed exactly": [], "refused clearly": []}
RNG = random.Random(20)  # the offsets and moments are random, but the same on every run of the suite


@pytest.fixture(scope="module", autouse=True)
def count_outcomes():
    yield
    counts = {kind: len(cases) for kind, cases in OUTCOMES.items()}
    print(f"\nfault injection: {sum(counts.values())} cases, " + ", ".join(f"{n} {k}" for k, n in counts.items()))
    if os.environ.get("MTSNN_FAULT_REPORT"):
        Path(os.environ["MTSNN_FAULT_REPORT"]).write_text(json.dumps({"counts": counts, "cases": OUTCOMES}, indent=2))


@pytest.fixture(scope="module")
def two_epochs(one_epoch, tmp_path_factory):
    """The one-epoch run trained on to 2 epochs without any fault: what every resume must reach."""
    run_dir = copy_run(one_epoch, tmp_path_factory.mktemp("ref") / "run")
    assert cli.main(["train", "--resume", str(run_dir), "--epochs", "2"]) == 0
    return run_dir


def judge(case: str, code: int, out: str, run_dir: Path, reference: Path, refusal_rc: int = 2) -> str:
    """Classify a case's end: an exact resume or a clear refusal naming the checkpoint; fail otherwise."""
    assert "Traceback" not in out, f"{case}: {out}"
    if code == 0:
        assert_same_run(run_dir, reference)
        kind = "resumed exactly"
    else:
        assert code == refusal_rc and str(run_dir / CHECKPOINT) in out, f"{case}: rc {code}: {out}"
        kind = "refused clearly"
    OUTCOMES[kind].append(case)
    return kind


def regions(path: Path) -> dict[str, tuple[int, int]]:
    """Byte ranges [begin, end) of the file: header (with its length), weights, optimizer state."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    spans = {"weights": [], "optimizer": []}
    for name, info in header.items():
        kind = "weights" if name.startswith("model/") else "optimizer" if name.startswith("optim/") else None
        if kind:
            spans[kind] += [8 + n + offset for offset in info["data_offsets"]]
    return {"header": (0, 8 + n), **{kind: (min(s), max(s)) for kind, s in spans.items()}}


def resume(run_dir: Path, capsys) -> tuple[int, str]:
    code = cli.main(["train", "--resume", str(run_dir), "--epochs", "2"])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


FLIPS = [(region, i) for region in ("weights", "optimizer", "header") for i in range(6)]


@pytest.mark.parametrize("region, i", FLIPS)
def test_a_byte_flipped_anywhere_resumes_exactly_or_is_refused(one_epoch, two_epochs, tmp_path, capsys, region, i):
    run_dir = copy_run(one_epoch, tmp_path / "run")
    path = run_dir / CHECKPOINT
    raw = bytearray(path.read_bytes())
    begin, end = regions(path)[region]
    offset = RNG.randrange(begin, end)
    raw[offset] ^= RNG.randrange(1, 256)
    path.write_bytes(bytes(raw))
    kind = judge(f"{region} byte {offset}", *resume(run_dir, capsys), run_dir, two_epochs)
    if region != "header":  # the digest catches every change to the tensors' bytes
        assert kind == "refused clearly"
        code = cli.main(["eval", str(run_dir)])
        err = capsys.readouterr().err
        assert code == 2 and f"{path}: its contents do not match the digest" in err, err


@pytest.mark.parametrize("i", range(4))
def test_a_truncated_checkpoint_is_refused(one_epoch, two_epochs, tmp_path, capsys, i):
    run_dir = copy_run(one_epoch, tmp_path / "run")
    path = run_dir / CHECKPOINT
    raw = path.read_bytes()
    keep = [0, 5, RNG.randrange(8, regions(path)["header"][1]), RNG.randrange(regions(path)["header"][1], len(raw))][i]
    path.write_bytes(raw[:keep])
    assert judge(f"truncated to {keep} bytes", *resume(run_dir, capsys), run_dir, two_epochs) == "refused clearly"


def test_a_full_disk_stops_the_run_keeps_its_checkpoint_and_it_resumes_exactly(one_epoch, two_epochs, tmp_path):
    """A real ENOSPC: the run lives on a tmpfs with room for its checkpoint but not for the next one."""
    size = (one_epoch / CHECKPOINT).stat().st_size
    disk, out = tmp_path / "disk", tmp_path / "after"
    disk.mkdir()
    result = in_namespace(f"""
        mount -t tmpfs -o size={size + 256 * 1024} tmpfs {disk}
        cp -r {one_epoch} {disk}/run && rm -f {disk}/run/{LOCK}
        $PY -m mtsnn.experiments.cli train --resume {disk}/run --epochs 2 2>&1 && exit 9 || echo "rc=$?"
        cmp {one_epoch}/{CHECKPOINT} {disk}/run/{CHECKPOINT} && echo "checkpoint intact"
        ls -A {disk}/run
        cp -r {disk}/run {out}""")
    text = result.stdout
    assert result.returncode == 0 and "rc=1" in text and "checkpoint intact" in text, text + result.stderr
    assert (
        f"cannot write {disk}/run/{CHECKPOINT}: No space left on device. The last checkpoint, "
        f"{disk}/run/{CHECKPOINT}, holds the run at the end of epoch 1"
    ) in text, text
    assert ".tmp" not in text and "Traceback" not in text, text  # no temporary file left behind
    code, said = mtsnn_done("train", "--resume", out, "--epochs", "2")
    judge("disk full, then resumed", code, said, out, two_epochs)


def test_a_simulated_full_disk_is_said_and_the_checkpoint_kept(one_epoch, two_epochs, tmp_path, capsys, monkeypatch):
    """Where namespaces are not allowed: the writer raises ENOSPC on the checkpoint."""
    run_dir = copy_run(one_epoch, tmp_path / "run")
    before = (run_dir / CHECKPOINT).read_bytes()

    def full(path, *args):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr("mtsnn.experiments.rundir.save_checkpoint", full)
    code, out = resume(run_dir, capsys)
    assert code == 1 and "No space left on device. The last checkpoint" in out and "Traceback" not in out, out
    assert (run_dir / CHECKPOINT).read_bytes() == before
    monkeypatch.undo()
    judge("simulated disk full, then resumed", *resume(run_dir, capsys), run_dir, two_epochs)


def test_two_trainers_started_at_once_one_trains_and_one_is_refused(one_epoch, tmp_path):
    run_dir = tmp_path / "run"
    both = [mtsnn("train", "fmnist-mlp", "--epochs", "1", *SMALL, "--run-dir", run_dir) for _ in range(2)]
    ends = [(p.pid, p.wait(timeout=300), p.stdout.read()) for p in both]
    codes = sorted(code for _, code, _ in ends)
    assert codes == [0, 2], ends
    pid, _, said = next(end for end in ends if end[1] == 2)
    other = next(p.pid for p in both if p.pid != pid)
    assert f"in use by process {other}" in said or "already holds a run" in said, said
    OUTCOMES["refused clearly"].append("second of two trainers started at once")
    assert_same_run(run_dir, one_epoch)  # the one that trained is the run that met no fault
    OUTCOMES["resumed exactly"].append("first of two trainers started at once (ran as if alone)")


@needs_fmnist
def test_sigkill_at_random_moments_then_resume_reaches_the_uninterrupted_run(tmp_path):
    args = [
        "train",
        "fmnist-mlp",
        "--epochs",
        "2",
        "--train-limit",
        "2048",
        "--test-limit",
        "500",
        "--deterministic",
        "--seed",
        "5",
        "--schedule",
        "cosine",
        "--warmup-epochs",
        "0.5",
    ]
    reference = tmp_path / "reference"
    code, out = mtsnn_done(*args, "--run-dir", reference)
    assert code == 0, out
    run_dir = tmp_path / "run"
    for kill in range(4):
        started = (run_dir / CHECKPOINT).exists()
        p = mtsnn(*(["train", "--resume", run_dir] if started else [*args, "--run-dir", run_dir]))
        for line in p.stdout:  # training begins after this line
            if line.startswith(("neuron backend", "resumed")):
                break
        time.sleep(RNG.uniform(0.0, 2.5))
        p.kill()
        p.wait()
        OUTCOMES["resumed exactly"].append(f"SIGKILL {kill + 1} of 4")  # judged by the final comparison
    if not (run_dir / CHECKPOINT).exists():  # every kill came before the first checkpoint: kill once after it
        p = mtsnn(*args, "--run-dir", run_dir)
        while not (run_dir / CHECKPOINT).exists() and p.poll() is None:
            time.sleep(0.05)
        p.kill()
        p.wait()
    assert (run_dir / CHECKPOINT).exists()  # so the last start resumes
    code, out = mtsnn_done("train", "--resume", run_dir)
    assert code == 0 and "Traceback" not in out, out
    assert_same_run(run_dir, reference)
