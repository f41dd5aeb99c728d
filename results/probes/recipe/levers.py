"""Draw every finished mnist-cnn SNN probe of 60 epochs or more as a point: its mean validation
accuracy over the last ten epochs (the figure the rounds compare), one row per lever, against
the recipe's seeds 0-2 (a band of mean ± std, and the mean plus the spread that a lever's mean
must pass to be taken). Writes ``mnist-cnn-levers.png`` beside this file.

    python results/probes/recipe/levers.py
"""

import statistics
from collections import defaultdict

import matplotlib.pyplot as plt
from summarize import BY_SCRIPT, HERE, LAST, by_script, changed

from mtsnn.config import preset
from mtsnn.experiments.rundir import read_run

# the recipe rounds 1-49 compared against: the fast recipe before it took batch norm (round 49)
FAST = preset("mnist-cnn", recipe="fast", batch_norm=False).__dict__


def lever(cfg: dict, run_dir) -> str:
    """The settings a run changed from the fast recipe (``recipe`` for none), teachers by number."""
    diff = changed(cfg, FAST)
    if teacher := diff.get("teacher"):
        diff["teacher"] = f"{len(teacher.split(','))} {'ANNs' if 'ann' in teacher else 'SNNs'}"
    return ", ".join(by_script(run_dir) + [f"{k}={v}" for k, v in diff.items()]) or "recipe"


def main():
    points = defaultdict(list)  # lever -> [(seed, last-ten mean)]
    for path in sorted(p for folder in ["mnist-cnn", *BY_SCRIPT] for p in (HERE / folder).glob("*/config.toml")):
        run = read_run(path.parent)
        if run is None or run.config["ann"] or run.config["epochs"] < 60:
            continue
        if len(run.rows) < run.config["epochs"]:
            continue  # stopped early: no last ten epochs to compare
        last = statistics.mean(r.score for r in run.rows[-LAST:])
        points[lever(run.config, run.dir)].append((run.config["seed"], last))
    recipe = [last for _, last in points["recipe"]]
    mean, spread = statistics.mean(recipe), statistics.stdev(recipe)
    levers = sorted(set(points) - {"recipe"}, key=lambda n: statistics.mean(last for _, last in points[n]))
    names = [*levers, "recipe"]  # the recipe's own seeds on the top row
    fig, ax = plt.subplots(figsize=(7.5, 0.3 * len(names) + 1.6))
    ax.axvspan(mean - spread, mean + spread, color="0.85", label=f"recipe, seeds 0-2: {mean:.3f} ± {spread:.3f}")
    ax.axvline(mean, color="0.4", lw=1)
    ax.axvline(mean + spread, color="tab:red", lw=1, ls="--", label="mean + spread: a lever's mean must pass it")
    for y, name in enumerate(names):
        seeds, lasts = zip(*points[name])
        ax.scatter(lasts, [y] * len(lasts), c=["tab:blue" if s == 0 else "tab:orange" for s in seeds], s=18, zorder=3)
        if len(lasts) > 1:
            ax.plot([statistics.mean(lasts)] * 2, [y - 0.3, y + 0.3], color="k", lw=1.5, zorder=4)
    ax.scatter([], [], c="tab:blue", s=18, label="seed 0")
    ax.scatter([], [], c="tab:orange", s=18, label="seeds 1-2 (bar: the mean over seeds)")
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.set_xlabel("validation accuracy %, mean of the last ten epochs (5,000 held-out images)", fontsize=8)
    ax.set_title("mnist-cnn, fast recipe: every lever of 60+ epochs against the recipe's seeds", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(HERE / "mnist-cnn-levers.png", dpi=130)
    print(f"{len(levers)} levers, {sum(len(points[n]) for n in levers)} runs; recipe {mean:.3f} ± {spread:.3f}")


if __name__ == "__main__":
    main()
