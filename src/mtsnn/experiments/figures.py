"""The paper's figures, regenerated: ``mtsnn figures [NAMES] --out DIR``.

fig1, fig4 and fig5 are computed from the equations. fig6-fig9 plot training sweeps
(:mod:`mtsnn.experiments.sweep`) read from their run directories. Needs matplotlib (``pip install
mtsnn[report]``).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..neuron import LIFParams, lif_step, spike_count
from ..surrogate import get as surrogate
from .rundir import RunRecord, read_run
from .sweep import SWEEPS, point_dir

NAMES = ("fig1", "fig4", "fig5", "fig6", "fig7", "fig8", "fig9")


class FigureError(Exception):
    """A figure that cannot be drawn: matplotlib missing, or its sweep not run."""


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise FigureError("figures need matplotlib: pip install 'mtsnn[report]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _simulate(currents: list[float], s_max: int) -> tuple[list[float], list[float]]:
    """Pre-reset potentials and spike counts of one neuron (Table 1's V_th and tau_m)."""
    p = LIFParams(s_max=s_max, grad_mode="bptt-detach")
    u = torch.zeros(1, dtype=torch.float64)
    v_trace, spikes = [], []
    for current in currents:
        s, u_next = lif_step(torch.tensor([current], dtype=torch.float64), u, p)
        v_trace.append((p.decay * u + current).item())
        spikes.append(s.item())
        u = u_next
    return v_trace, spikes


def fig1(out: Path) -> Path:
    """LIF (S_max = 1) and multi-threshold LIF (S_max = 15) driven by the same input."""
    plt = _pyplot()
    inputs = {"(a) sparse input": [6.0, 0.0, 7.0, 0.0, 0.0, 12.0], "(b) dense input": [34.0, 27.0, 0.0, 41.0, 0.0, 0.0]}
    fig, axes = plt.subplots(2, 2, figsize=(10, 6), sharex=True)
    steps = range(1, 7)
    for row, (label, currents) in enumerate(inputs.items()):
        for col, (name, s_max) in enumerate((("LIF", 1), ("multi-threshold LIF", 15))):
            v, s = _simulate(currents, s_max)
            ax = axes[row, col]
            ax.bar(steps, currents, color="lightgray", label="input current I[t] (mV)")
            ax.plot(steps, v, "o-", color="tab:blue", label="membrane potential v[t] (mV)")
            ax.axhline(10, color="tab:red", linestyle="--", linewidth=1, label="threshold V_th = 10 mV")
            twin = ax.twinx()
            twin.stem(steps, s, linefmt="tab:orange", markerfmt="o", basefmt=" ", label="spikes s[t]")
            twin.set_ylim(0, max(4, max(s) + 1))
            twin.set_ylabel("spikes per step")
            ax.set_title(
                f"{label}: {name}, spikes {', '.join(str(int(x)) for x in s)} (total {int(sum(s))})", fontsize=9
            )
            ax.set_ylabel("mV")
            if row == 1:
                ax.set_xlabel("time step (1 ms)")
            if row == 0 and col == 0:  # one legend for all four panels, below them, where it hides nothing
                handles = ax.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
                labels = ax.get_legend_handles_labels()[1] + twin.get_legend_handles_labels()[1]
                fig.legend(handles, labels, fontsize=8, loc="lower center", ncol=4)
    fig.suptitle("Figure 1: LIF vs multi-threshold LIF on sparse and dense input (V_th = 10 mV, tau_m = 10 ms)")
    return _save(fig, out / "fig1.png", rect=(0, 0.05, 1, 1))


def fig4(out: Path) -> Path:
    """The staircase s(v) and its true derivative, Dirac pulses at every threshold."""
    plt = _pyplot()
    v_th, s_max = LIFParams.v_th, 3
    v = torch.linspace(-10, 50, 2401, dtype=torch.float64)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    left.plot(v, spike_count(v, v_th, s_max), color="tab:blue", label=f"s = clip(floor(v / V_th), 0, {s_max})")
    left.set_xlabel("membrane potential v (mV)")
    left.set_ylabel("output spikes s")
    left.legend(fontsize=8)
    left.set_title("(a) multi-step activation")
    for i in range(1, s_max + 1):
        right.annotate(
            "", xy=(i * v_th, 1.0), xytext=(i * v_th, 0.0), arrowprops={"arrowstyle": "->", "color": "tab:red"}
        )
    right.plot([-10, 50], [0, 0], color="tab:red", label="ds/dv: 0, with Dirac pulses at v = n V_th")
    right.set_ylim(-0.05, 1.3)  # room above the pulses for the legend
    right.set_xlim(-10, 50)
    right.set_xlabel("membrane potential v (mV)")
    right.set_ylabel("ds/dv (pulses drawn as arrows)")
    right.legend(fontsize=8, loc="upper left")
    right.set_title("(b) its derivative")
    fig.suptitle(
        f"Figure 4: spike activity of the multi-threshold LIF and its derivative (V_th = 10 mV, S_max = {s_max})"
    )
    return _save(fig, out / "fig4.png")


def fig5(out: Path) -> Path:
    """f1, f2, f3 with S_max = 3 and alpha_h = alpha_w = 1, as in the paper, at Table 1's V_th = 10."""
    plt = _pyplot()
    v = torch.linspace(-5, 45, 5001, dtype=torch.float64)
    fig, ax = plt.subplots(figsize=(8, 4))
    for name, style in (("f1", "-"), ("f2", "--"), ("f3", ":")):
        f = surrogate(name, alpha_h=1.0, alpha_w=1.0, v_th=LIFParams.v_th, s_max=3)
        ax.plot(v, f(v), style, label=f"{name} (eq. {13 + int(name[1])})")
    ax.set_xlabel("membrane potential v (mV)")
    ax.set_ylabel("approximate ds/dv")
    ax.legend()
    ax.grid(alpha=0.3)
    ax.set_title("Figure 5: surrogate curves, S_max = 3, alpha_H = alpha_W = 1, V_th = 10 mV")
    return _save(fig, out / "fig5.png")


def _sweep_runs(sweeps: Path, figure: str) -> list[tuple[object, RunRecord]]:
    name, values, _ = SWEEPS[figure]
    runs = [(value, read_run(point_dir(sweeps, figure, value))) for value in values]
    found = [(value, run) for value, run in runs if run is not None]
    if not found:
        raise FigureError(f"no runs of the {figure} sweep under {sweeps / figure}; run `mtsnn sweep {figure}` first")
    return found


def _budget(runs) -> str:
    cfg = runs[0][1].config
    epochs = sorted({len(run.rows) for _, run in runs})
    partial = any(not run.complete for _, run in runs)
    return (
        f"{cfg['preset']} ({cfg['spec']}), {'/'.join(map(str, epochs))} epochs"
        f"{' (partial)' if partial else ''}, CPU budget; the paper: CIFAR-10, 7-layer CNN"
    )


def fig6(out: Path, sweeps: Path) -> Path:
    """Test accuracy against epoch for f1, f2 and f3."""
    plt = _pyplot()
    runs = _sweep_runs(sweeps, "fig6")
    fig, ax = plt.subplots(figsize=(7, 4))
    for value, run in runs:
        ax.plot([r.epoch for r in run.rows], [r.score for r in run.rows], label=str(value))
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy (%)")
    ax.legend(title="surrogate")
    ax.grid(alpha=0.3)
    ax.set_title(f"Figure 6: surrogate curves compared\n{_budget(runs)}", fontsize=9)
    return _save(fig, out / "fig6.png")


def _final_against(
    out: Path, sweeps: Path, figure: str, xlabel: str, title: str, log_x: bool = False, with_train: bool = False
) -> Path:
    plt = _pyplot()
    runs = _sweep_runs(sweeps, figure)
    x = [float(value) for value, _ in runs]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(x, [run.rows[-1].score for _, run in runs], "o-", label="test")
    if with_train:
        ax.plot(x, [run.rows[-1].train_acc for _, run in runs], "s--", label="training")
    if log_x:
        ax.set_xscale("log")
    ax.set_xticks(x)
    ax.set_xticklabels([str(value) for value, _ in runs])
    ax.set_xlabel(xlabel)
    ax.set_ylabel("accuracy after the last epoch (%)")
    ax.legend()
    ax.grid(alpha=0.3)
    ax.set_title(f"{title}\n{_budget(runs)}", fontsize=9)
    return _save(fig, out / f"{figure}.png")


def fig7(out: Path, sweeps: Path) -> Path:
    return _final_against(
        out, sweeps, "fig7", "alpha_W (alpha_H = 1)", "Figure 7: width of the surrogate (f2)", log_x=True
    )


def fig8(out: Path, sweeps: Path) -> Path:
    return _final_against(out, sweeps, "fig8", "S_max", "Figure 8: impact of S_max at T = 1")


def fig9(out: Path, sweeps: Path) -> Path:
    return _final_against(
        out, sweeps, "fig9", "time steps T", "Figure 9: impact of the number of time steps (S_max = 1)", with_train=True
    )


def draw(names: list[str], out: Path, sweeps: Path):
    """Draw the named figures (all by default) into ``out``, yielding each path as it is written."""
    unknown = [n for n in names if n not in NAMES]
    if unknown:
        raise ValueError(f"unknown figure(s) {', '.join(unknown)}; choose from {', '.join(NAMES)}")
    from_equations = {"fig1": fig1, "fig4": fig4, "fig5": fig5}
    from_sweeps = {"fig6": fig6, "fig7": fig7, "fig8": fig8, "fig9": fig9}
    for name in names or NAMES:
        yield from_equations[name](out) if name in from_equations else from_sweeps[name](out, sweeps)


def _save(fig, path: Path, rect=(0, 0, 1, 1)) -> Path:
    """Lay out the axes inside ``rect`` (figure fractions: left, bottom, right, top), write the PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout(rect=rect)
    fig.savefig(path, dpi=110)
    fig.clf()
    return path
