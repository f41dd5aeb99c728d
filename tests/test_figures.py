"""mtsnn figures and mtsnn sweep: the files appear, sweeps skip finished points and resume."""

import dataclasses
import json

import pytest
import torch

from mtsnn.checkpoint import save_checkpoint
from mtsnn.config import preset
from mtsnn.experiments import cli
from mtsnn.experiments.sweep import SWEEPS, point_dir, run_sweep
from mtsnn.experiments.train import Run
from runs import PROGRESS, SHARED

pytest.importorskip("matplotlib")


def test_figures_from_the_equations_draw_hand_computed_values(tmp_path, monkeypatch):
    from mtsnn.experiments import figures

    drawn, save = {}, figures._save

    def recording(fig, path, **layout):  # what each figure plots, read before it is cleared
        drawn[path.stem] = {
            "titles": [ax.get_title() for ax in fig.axes],
            "lines": {line.get_label(): line.get_xydata() for ax in fig.axes for line in ax.get_lines()},
        }
        return save(fig, path, **layout)

    monkeypatch.setattr(figures, "_save", recording)
    assert cli.main(["figures", "fig1", "fig4", "fig5", "--out", str(tmp_path)]) == 0
    for name in ("fig1", "fig4", "fig5"):
        png = tmp_path / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    # Figure 1, by hand (V_th 10, leak 0.9): dense input 34, 27, 0, 41, 0, 0 gives the LIF one spike
    # a step (v = 34, 48.6, 34.74, 63.27, 47.94, 34.15), the multi-threshold LIF 3, 3, 0, 4, 0, 0
    # (v = 34, 30.6, 0.54, 41.49, 1.34, 1.20); sparse input 6, 0, 7, 0, 0, 12 gives both 0, 0, 1, 0, 0, 1
    titles = drawn["fig1"]["titles"]
    assert "(a) sparse input: LIF, spikes 0, 0, 1, 0, 0, 1 (total 2)" in titles
    assert "(a) sparse input: multi-threshold LIF, spikes 0, 0, 1, 0, 0, 1 (total 2)" in titles
    assert "(b) dense input: LIF, spikes 1, 1, 1, 1, 1, 1 (total 6)" in titles
    assert "(b) dense input: multi-threshold LIF, spikes 3, 3, 0, 4, 0, 0 (total 10)" in titles

    def at(curve, v):
        x, y = curve[:, 0], curve[:, 1]
        return y[abs(x - v).argmin()]

    staircase = drawn["fig4"]["lines"]["s = clip(floor(v / V_th), 0, 3)"]
    assert [at(staircase, v) for v in (-5, 9.9, 10, 25, 45)] == [0, 0, 1, 2, 3]
    lines = drawn["fig5"]["lines"]  # alpha_H = alpha_W = 1, V_th = 10, S_max = 3
    f1, f2, f3 = lines["f1 (eq. 14)"], lines["f2 (eq. 15)"], lines["f3 (eq. 16)"]
    assert at(f1, 20) == pytest.approx(2.0) and at(f1, 15) == pytest.approx(0.0, abs=1e-9)  # i e^0 at v = i V_th
    assert at(f2, 30) == pytest.approx(1.0) and at(f2, 25) == pytest.approx(0.0, abs=1e-9)  # e^-25 between
    assert at(f3, 5) == pytest.approx(0.5) and at(f3, 20) == 1.0 and at(f3, 35) == pytest.approx(0.5)
    assert at(f3, -1) == at(f3, 41) == 0.0


def data_boxes(fig):
    """Display-space boxes of what each axes draws: every point along its lines (sampled between
    vertices too), its bars and its arrows."""
    import numpy as np
    from matplotlib.collections import LineCollection
    from matplotlib.transforms import Bbox

    boxes = []
    for ax in fig.axes:
        for line in ax.get_lines():
            xy = line.get_transform().transform(line.get_xydata())
            t = np.linspace(0, 1, 40)[:, None]
            for a, b in zip(xy[:-1], xy[1:]):
                boxes += [Bbox([p, p]) for p in a + t * (b - a)]
        for collection in ax.collections:
            if isinstance(collection, LineCollection):
                for segment in collection.get_segments():
                    xy = collection.get_transform().transform(segment)
                    boxes.append(Bbox([xy.min(0), xy.max(0)]))
        boxes += [patch.get_window_extent() for patch in ax.patches]
        boxes += [text.arrow_patch.get_window_extent() for text in ax.texts if getattr(text, "arrow_patch", None)]
    return boxes


@pytest.mark.parametrize("name", ["fig1", "fig4", "fig5"])
def test_no_legend_covers_what_the_figure_draws(tmp_path, monkeypatch, name):
    from mtsnn.experiments import figures

    seen = []
    save = figures._save

    def check_then_save(fig, path, **kwargs):
        fig.tight_layout(rect=kwargs.get("rect", (0, 0, 1, 1)))
        fig.canvas.draw()
        legends = fig.legends + [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
        assert legends
        for legend in legends:
            box = legend.get_window_extent()
            covered = [b for b in data_boxes(fig) if box.overlaps(b)]
            assert not covered, f"{name}: the legend covers {len(covered)} drawn points, e.g. {covered[0]}"
        seen.append(name)
        return save(fig, path, **kwargs)

    monkeypatch.setattr(figures, "_save", check_then_save)
    assert cli.main(["figures", name, "--out", str(tmp_path)]) == 0 and seen == [name]


def test_figures_need_their_sweep(tmp_path, capsys):
    assert cli.main(["figures", "fig7", "--out", str(tmp_path), "--sweeps", str(tmp_path / "none")]) == 2
    assert "mtsnn sweep fig7" in capsys.readouterr().err
    assert cli.main(["figures", "fig99", "--out", str(tmp_path)]) == 2


def test_sweeps_match_the_paper_sections():
    assert SWEEPS["fig7"][1] == [0.2, 2.0, 20.0, 200.0, 2000.0] and SWEEPS["fig7"][2] == {"alpha_h": 1.0}
    assert SWEEPS["fig8"][2] == {"T": 1} and SWEEPS["fig9"][2] == {"s_max": 1}
    assert SWEEPS["fig6"][1] == ["f1", "f2", "f3"]


@pytest.mark.skipif(not (SHARED / "FashionMNIST" / "raw").is_dir(), reason=f"no Fashion-MNIST under {SHARED}")
def test_a_tiny_sweep_then_its_figure(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MTSNN_DATA", str(SHARED))
    args = ["sweep", "fig9", "--epochs", "1", "--train-limit", "256", "--out", str(tmp_path / "sweeps")]
    assert cli.main(args) == 0
    points = sorted((tmp_path / "sweeps" / "fig9").iterdir())
    assert [p.name for p in points] == [f"T={t}" for t in (1, 2, 3, 4, 5)]
    configs = [(p / "config.toml").read_text() for p in points]
    assert all("s_max = 1\n" in c for c in configs) and "T = 3\n" in configs[2]
    capsys.readouterr()
    assert cli.main(args) == 0  # everything done: nothing retrained
    assert capsys.readouterr().out.count("finished before, kept") == 5
    assert cli.main(["figures", "fig9", "--out", str(tmp_path), "--sweeps", str(tmp_path / "sweeps")]) == 0
    assert (tmp_path / "fig9.png").exists()
    assert json.loads((points[0] / "summary.json").read_text())["epochs"] == 1


def test_a_sweep_refuses_settings_it_sets_itself(tmp_path, capsys):
    assert cli.main(["sweep", "fig9", "--s-max", "3", "--T", "2", "--out", str(tmp_path)]) == 2
    assert "fig9 sets T, s_max itself" in capsys.readouterr().err


def test_a_sweep_accepts_a_held_setting_repeated(tmp_path, monkeypatch):
    started = []

    class Recorded:
        def fit(self):
            pass

    monkeypatch.setattr(Run, "start", classmethod(lambda cls, cfg, run_dir, log: started.append(cfg) or Recorded()))
    run_sweep("fig8", "fmnist-mlp", tmp_path, log=lambda *a: None, T=1, epochs=3)
    assert [cfg.s_max for cfg in started] == SWEEPS["fig8"][1]
    assert all(cfg.T == 1 and cfg.epochs == 3 for cfg in started)


@pytest.mark.parametrize(
    "arguments, change",
    [
        (["--lr", "0.001"], "lr=0.005 to 0.001"),  # a setting given anew
        (["--preset", "mnist-mlp"], "preset='fmnist-mlp' to 'mnist-mlp'"),  # a preset's own setting, not given
    ],
)
def test_a_stopped_sweep_point_resumes_only_with_its_own_settings(tmp_path, capsys, arguments, change):
    point = point_dir(tmp_path, "fig9", 1)
    point.mkdir(parents=True)
    saved = preset("fmnist-mlp", T=1, s_max=1, lr=0.005)
    state = {"config": dataclasses.asdict(saved), **PROGRESS}
    save_checkpoint(point / "checkpoint.safetensors", {"a": torch.ones(1)}, state)
    assert cli.main(["sweep", "fig9", *arguments, "--out", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert "a resumed run keeps its settings" in error and change in error
