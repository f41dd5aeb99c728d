"""mtsnn report: results/summary.json and REPORT.md from hand-made run directories."""

import importlib.util
import json

import pytest

from mtsnn.config import dump_toml, preset
from mtsnn.experiments import cli


def make_run(
    root,
    name,
    seed,
    accs,
    epochs,
    ann=False,
    seconds=None,
    silent=None,
    output_surrogate="",
    preset_name="fmnist-mlp",
    unverified=None,
    recipe="paper",
    teacher="",
    distill=0.5,
    machine="cpu",
    **settings,
):
    run = root / "runs" / name / f"seed{seed}"
    run.mkdir(parents=True)
    cfg = preset(preset_name, seed=seed, epochs=epochs, ann=ann, output_surrogate=output_surrogate, recipe=recipe)
    cfg = cfg.replace(teacher=teacher, distill=distill if teacher else 0.0, **settings).validate()
    (run / "config.toml").write_text(dump_toml(cfg.__dict__))
    seconds = seconds or [2.0] * len(accs)
    rows = [
        {"epoch": i + 1, "train_loss": 1.0, "train_acc": a, "firing_rate": [0.1], "epoch_seconds": t, "test_acc": a}
        for i, (a, t) in enumerate(zip(accs, seconds))
    ]
    if silent is not None:
        rows[-1]["silent_outputs"] = silent
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if len(accs) == epochs:
        summary = {"preset": preset_name, "epochs": epochs, "wall_seconds": sum(seconds), "test_acc": accs[-1]}
        summary["machine"] = {"device": machine}
        if unverified is not None:
            summary["unverified_data"] = unverified
        (run / "summary.json").write_text(json.dumps(summary))


def test_report_rows_by_hand(tmp_path, capsys):
    make_run(tmp_path, "fmnist-mlp", 0, [85.0, 91.2, 91.5], 3, seconds=[30.0, 60.0, 600.0])
    make_run(tmp_path, "fmnist-mlp", 1, [86.0, 89.0, 90.5], 3, seconds=[2.0, 2.0, 50.0], silent=[])
    make_run(tmp_path, "fmnist-mlp", 2, [80.0, 88.0], 3)  # stopped after 2 of 3 epochs
    make_run(tmp_path, "fmnist-mlp-ann", 0, [88.0, 89.0, 89.5], 3, ann=True)
    make_run(tmp_path, "fmnist-mlp-output-arctan", 0, [87.0, 91.0, 92.0], 3, output_surrogate="arctan")
    make_run(tmp_path, "mnist-cnn", 0, [97.0], 3, preset_name="mnist-cnn")  # stopped after 1 of 3 epochs
    (tmp_path / "runs" / "fmnist-mlp" / "seed0" / "eval.json").write_text(json.dumps({"silent_outputs": [9, 4]}))
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "fmnist-mlp.md").write_text("**What was tried.** Five seeds.\n")
    assert cli.main(["report", "--results", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    rows = {r["variant"]: r for r in summary if r["preset"] == "fmnist-mlp"}
    snn, ann, arctan = rows["SNN"], rows["ANN twin"], rows["SNN, output layer arctan"]
    assert arctan["accs"] == [92.0] and arctan["paper_acc"] == 91.08 and len(rows) == 3
    # the unfinished seed 2 is listed apart, not averaged in
    assert snn["accs"] == [91.5, 90.5] and snn["seeds"] == [0, 1]
    assert snn["mean_acc"] == pytest.approx(91.0)
    assert snn["std_acc"] == pytest.approx((0.5**2 * 2) ** 0.5)
    assert snn["partial"] == [False, False] and snn["epochs"] == [3, 3]
    assert snn["unfinished"] == [{"seed": 2, "epochs": 2, "test_acc": 88.0}]
    assert snn["paper_acc"] == 91.08 and ann["paper_acc"] is None and ann["T"] is None
    assert snn["training_seconds"] == pytest.approx((690.0 + 54.0) / 2)  # the epochs' seconds, not the wall clock
    assert snn["seconds_per_epoch"] == 16.0  # median of 8 epochs: 2, 2, 2, 2, 30, 50, 60, 600
    assert snn["silent_outputs"] == {"0": [9, 4]}
    # seed 0 first reaches 91.08% at epoch 2, after 30 + 60 s of training
    assert snn["reached_paper"] == [{"epoch": 2, "minutes": 1.5}, None] and ann["reached_paper"] is None
    for key in [
        "preset",
        "dataset",
        "spec",
        "T",
        "epochs",
        "seeds",
        "accs",
        "mean_acc",
        "std_acc",
        "paper_acc",
        "training_seconds",
        "machine",
    ]:
        assert key in snn
    report = (tmp_path / "REPORT.md").read_text()
    assert "Table 4" in report and "91.08%" in report and "91.00 ± 0.71%" in report
    assert (
        "| paper table | preset | paper | mtsnn SNN | mtsnn SNN, output layer arctan | mtsnn ANN twin |\n"
        "|---|---|---|---|---|---|\n"
        "| Table 3 | mnist-cnn | 99.56% | 97.00% (1 seed), **partial**: 1/3 epochs | - | - |\n"
        "| Table 4 | fmnist-mlp | 91.08% | 91.00 ± 0.71% (2 seeds), silent outputs in seed(s) 0 | 92.00% (1 seed) "
        "| 89.50% (1 seed) |"
    ) in report
    assert "(by seed: 91.50, 90.50)" in report
    assert "\n**What was tried.** Five seeds.\n" in report
    assert "| mtsnn SNN, output layer arctan | 784-400-400-10 | 2 | 3 | 92.00% over 1 seed(s) |" in report
    assert "mtsnn SNN, output layer arctan: +0.92 points from the paper." in report
    assert (
        "The paper's 91.08% was reached by seed 0 at epoch 2 (1.5 min) of training. Never reached by seed(s) 1.\n"
    ) in report
    assert "mtsnn SNN: -2.56 points from the paper. Not yet reached by seed 0 (1/3 epochs).\n" in report
    assert "seed 0: class(es) 9, 4 never predicted (silent output neuron)" in report
    assert "unfinished: seed 2 at epoch 2/3: 88.00%" in report and "89.50% over 1 seed(s)" in report
    if importlib.util.find_spec("matplotlib") is not None:  # the curves are drawn when matplotlib is there
        assert (tmp_path / "curves-fmnist-mlp-snn.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
        assert "![fmnist-mlp SNN learning curves](curves-fmnist-mlp-snn.png)" in report


@pytest.mark.parametrize("make_runs, message", [(False, "no such folder"), (True, "holds no runs")])
def test_report_on_a_missing_or_empty_results_folder_says_so_and_writes_nothing(tmp_path, capsys, make_runs, message):
    if make_runs:
        (tmp_path / "runs").mkdir()
    assert cli.main(["report", "--results", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert message in err and str(tmp_path / "runs") in err and "Traceback" not in err
    assert not (tmp_path / "REPORT.md").exists() and not (tmp_path / "summary.json").exists()


def test_a_run_scored_on_part_of_the_test_set_is_refused_naming_it(tmp_path, capsys):
    make_run(tmp_path, "fmnist-mlp", 0, [85.0, 91.2, 91.5], 3)
    make_run(tmp_path, "fmnist-mlp", 1, [86.0, 89.0, 90.5], 3, test_limit=500)
    assert cli.main(["report", "--results", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'runs' / 'fmnist-mlp' / 'seed1'} was scored on only 500 test images" in err
    assert not (tmp_path / "REPORT.md").exists() and not (tmp_path / "summary.json").exists()


@pytest.mark.parametrize(
    "unverified, label",
    [
        (None, "CIFAR-10, unverified copy (our CIFAR-10 is a JPEG proxy, not the original)"),  # not recorded
        (["/data/cifar-10-batches-bin/test_batch.bin"], "CIFAR-10, unverified copy"),
        ([], "CIFAR-10\n"),  # every file checked against the official release
    ],
)
def test_cifar_is_marked_unless_its_files_were_verified(tmp_path, unverified, label):
    make_run(tmp_path, "cifar10-cnn", 0, [60.0], 1, preset_name="cifar10-cnn", unverified=unverified)
    make_run(tmp_path, "fmnist-mlp", 0, [90.0], 1, unverified=[])
    assert cli.main(["report", "--results", str(tmp_path)]) == 0
    report = (tmp_path / "REPORT.md").read_text()
    assert f"## Table 6: cifar10-cnn on {label}" in report
    assert "## Table 4: fmnist-mlp on Fashion-MNIST\n" in report


def test_fast_recipe_runs_are_rows_of_their_own_beside_the_papers(tmp_path):
    make_run(tmp_path, "mnist-mlp", 0, [98.0, 99.0], 2, preset_name="mnist-mlp")
    make_run(tmp_path, "mnist-mlp-fast", 0, [98.5, 99.2], 2, preset_name="mnist-mlp", recipe="fast")
    make_run(tmp_path, "mnist-mlp-fast", 1, [98.7, 99.3], 2, preset_name="mnist-mlp", recipe="fast")
    make_run(tmp_path, "mnist-mlp-fast-bn", 0, [98.9, 99.4], 2, preset_name="mnist-mlp", recipe="fast", batch_norm=True)
    make_run(tmp_path, "mnist-mlp-ann", 0, [97.0, 97.5], 2, preset_name="mnist-mlp", ann=True)
    make_run(tmp_path, "mnist-mlp-fast-ann", 0, [98.9, 99.1], 2, preset_name="mnist-mlp", ann=True, recipe="fast")
    # a trained model fine-tuned with the fast recipe is not a seed of it
    tuned = dict(preset_name="mnist-mlp", recipe="fast", init_from="pretrained:mnist-mlp")
    make_run(tmp_path, "mnist-mlp-qat", 0, [99.3, 99.26], 2, qat=True, **tuned)
    make_run(tmp_path, "mnist-mlp-tuned", 0, [99.3, 99.28], 2, **tuned)
    assert cli.main(["report", "--results", str(tmp_path)]) == 0
    rows = {r["variant"]: r for r in json.loads((tmp_path / "summary.json").read_text())}
    assert set(rows) == {
        "SNN",
        "SNN, fast recipe",
        "SNN, fast recipe, batch norm",
        "SNN, fast recipe, fine-tuned with qat",
        "SNN, fast recipe, fine-tuned",
        "ANN twin",
        "ANN twin, tuned (fast recipe)",
    }
    assert rows["SNN, fast recipe, fine-tuned with qat"]["accs"] == [99.26]
    assert rows["SNN, fast recipe, fine-tuned"]["accs"] == [99.28]
    assert rows["SNN, fast recipe"]["accs"] == [99.2, 99.3] and rows["SNN"]["accs"] == [99.0]
    assert rows["SNN, fast recipe, batch norm"]["accs"] == [99.4] and rows["SNN, fast recipe, batch norm"]["batch_norm"]
    assert rows["ANN twin, tuned (fast recipe)"]["accs"] == [99.1] and rows["ANN twin"]["accs"] == [97.5]
    assert rows["SNN, fast recipe"]["reached_paper"] == [{"epoch": 2, "minutes": 0.1}] * 2
    report = (tmp_path / "REPORT.md").read_text()
    assert "| mtsnn SNN, fast recipe | 784-800-10 | 2 | 2 | 99.25 ± 0.07% over 2 seed(s)" in report
    for name in (
        "curves-mnist-mlp-snn.png",
        "curves-mnist-mlp-snn-fast.png",
        "curves-mnist-mlp-snn-fast-bn.png",
        "curves-mnist-mlp-ann.png",
        "curves-mnist-mlp-ann-fast.png",
        "curves-mnist-mlp-snn-fast-finetuned-with-qat.png",
    ):
        if importlib.util.find_spec("matplotlib"):
            assert f"({name})" in report and (tmp_path / name).exists()


def test_the_footer_names_each_machine_with_the_rows_that_ran_on_it(tmp_path):
    make_run(tmp_path, "mnist-mlp", 0, [98.0, 99.0], 2, preset_name="mnist-mlp", machine="Intel Xeon")
    make_run(tmp_path, "mnist-mlp-fast", 0, [98.5, 99.2], 2, preset_name="mnist-mlp", recipe="fast", machine="AMD EPYC")
    make_run(tmp_path, "mnist-mlp-ann", 0, [97.0, 97.5], 2, preset_name="mnist-mlp", ann=True, machine="AMD EPYC")
    assert cli.main(["report", "--results", str(tmp_path)]) == 0
    report = (tmp_path / "REPORT.md").read_text()
    assert "- device Intel Xeon: mnist-mlp SNN\n" in report
    assert "- device AMD EPYC: mnist-mlp SNN, fast recipe; mnist-mlp ANN twin\n" in report


def test_ann_teachers_with_a_network_of_their_own_are_named_by_it_not_as_twins(tmp_path):
    wide = "32C5-P2-64C5-P2-1024"
    folders = []
    for seed in range(3):  # mnist-cnn's data set, fmnist-cnn's network: not mnist-cnn's twin
        folder = tmp_path / "teachers" / f"wide{seed}"
        folder.mkdir(parents=True)
        (folder / "config.toml").write_text(dump_toml(preset("mnist-cnn", ann=True, spec=wide, seed=seed).__dict__))
        folders.append(str(folder))
    make_run(tmp_path, "mnist-cnn-wide", 0, [99.0, 99.6], 2, preset_name="mnist-cnn", recipe="fast",
             teacher=",".join(folders), distill=0.9)  # fmt: skip
    assert cli.main(["report", "--results", str(tmp_path)]) == 0
    (row,) = json.loads((tmp_path / "summary.json").read_text())
    assert row["variant"] == f"SNN, fast recipe, batch norm, distilled 0.9 from 3 {wide} ANNs, tau 4"
    assert row["teachers"] == [f"{wide} ANN"] * 3 and row["spec"] == "15C5-P2-40C5-P2-300"


def test_distilled_runs_are_rows_of_their_own_named_by_share_and_teachers(tmp_path):
    def teacher(name, ann):  # a teacher's run folder, outside runs/: only its config is read
        folder = tmp_path / "teachers" / name
        folder.mkdir(parents=True)
        (folder / "config.toml").write_text(dump_toml(preset("fmnist-cnn", ann=ann).__dict__))
        return str(folder)

    twins = [teacher(f"twin{seed}", ann=True) for seed in range(3)]
    snns = [teacher(f"snn{seed}", ann=False) for seed in range(3)]
    make_run(tmp_path, "fmnist-cnn-fast", 0, [91.0, 92.4], 2, preset_name="fmnist-cnn", recipe="fast")
    common = dict(preset_name="fmnist-cnn", recipe="fast")
    for seed, acc in ((0, 93.1), (1, 93.3)):  # each seed its own twin: one row
        make_run(tmp_path, "fmnist-cnn-fast-kd", seed, [92.0, acc], 2, teacher=twins[seed], **common)
    make_run(tmp_path, "fmnist-cnn-kd9", 0, [92.0, 93.5], 2, teacher=twins[0], distill=0.9, **common)
    # ensembles of the same size and share: rows apart when their teachers differ in kind
    make_run(tmp_path, "fmnist-cnn-ens3", 0, [92.0, 93.7], 2, teacher=",".join(twins), distill=0.9, **common)
    make_run(tmp_path, "fmnist-cnn-snn3", 0, [92.0, 92.9], 2, teacher=",".join(snns), distill=0.9, **common)
    make_run(tmp_path, "fmnist-cnn-lost", 0, [92.0, 92.8], 2, teacher="gone/a,gone/b", distill=0.9, **common)
    # another network's teachers are named with their preset: the MLP learns from the CNN's twins
    make_run(tmp_path, "fmnist-mlp-x", 0, [90.0, 91.3], 2, teacher=",".join(twins), distill=0.9, recipe="fast")
    assert cli.main(["report", "--results", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    rows = {r["variant"]: r for r in summary if r["preset"] == "fmnist-cnn"}
    base = "SNN, fast recipe"
    (mlp,) = [r for r in summary if r["preset"] == "fmnist-mlp"]
    assert mlp["variant"] == f"{base}, distilled 0.9 from 3 fmnist-cnn ANN twins, tau 4"
    assert mlp["teachers"] == ["fmnist-cnn ANN twin"] * 3 and mlp["accs"] == [91.3]
    distilled = f"{base}, distilled 0.5 from an ANN twin, tau 4"
    assert set(rows) == {
        base,
        distilled,
        f"{base}, distilled 0.9 from an ANN twin, tau 4",
        f"{base}, distilled 0.9 from 3 ANN twins, tau 4",
        f"{base}, distilled 0.9 from 3 SNNs, tau 4",
        f"{base}, distilled 0.9 from 2 teachers, tau 4",  # teachers whose configs are not found
    }
    assert rows[distilled]["accs"] == [93.1, 93.3] and rows[base]["accs"] == [92.4]
    assert rows[distilled]["distill"] == 0.5 and rows[base]["distill"] == 0.0
    assert rows[distilled]["teachers"] == ["ANN twin"] and rows[base]["teachers"] == []
    assert rows[f"{base}, distilled 0.9 from 3 SNNs, tau 4"]["accs"] == [92.9]
    assert rows[f"{base}, distilled 0.9 from 3 ANN twins, tau 4"]["accs"] == [93.7]
    report = (tmp_path / "REPORT.md").read_text()
    assert f"| mtsnn {distilled} | 32C5-P2-64C5-P2-1024 | 2 | 2 | 93.20 ± 0.14% over 2 seed(s)" in report
    if importlib.util.find_spec("matplotlib"):
        for suffix in ("0.5-from1ann", "0.9-from3ann", "0.9-from3snn", "0.9-from2"):
            assert (tmp_path / f"curves-fmnist-cnn-snn-fast-distilled{suffix}.png").exists()
        assert (tmp_path / "curves-fmnist-mlp-snn-fast-distilled0.9-from3fmnist-cnn-ann.png").exists()
