"""Print a Markdown table of the fast-recipe probes: validation accuracy of every run under
results/probes/recipe/PRESET/NAME/, with the settings each changed from the screen's base
(the preset, 30 epochs, one epoch of warm-up, cosine decay: what ``screen.sh`` started from);
then, for the settings run with more than one seed, the mean and sample standard deviation of
their final validation accuracy and of their mean over the last ten epochs (the figure the
mnist-cnn rounds compare, since one epoch's accuracy on 5,000 images moves by 0.05-0.1 points).

    python results/probes/recipe/summarize.py [PRESET ...]
"""

import statistics
import sys
from collections import defaultdict
from pathlib import Path

from mtsnn.config import PRESETS, own_network
from mtsnn.experiments.rundir import read_run

HERE = Path(__file__).parent
SAME = {"seed", "val_holdout", "data_root", "device", "deterministic", "compile", "amp", "recipe", "ann"}
BASE = dict(epochs=30, schedule="cosine", warmup_epochs=1.0)
LAST = 10
# probes run by a script of their own, whose change the config does not show: their folder names it
BY_SCRIPT = {"bn": "batch_norm=True (bn/snn_bn.py, before --batch-norm)"}


def changed(cfg: dict, base: dict) -> dict:
    """The settings of the run ``cfg`` that differ from ``base`` (a config's fields), bookkeeping
    such as the seed left out."""
    return {k: v for k, v in cfg.items() if k not in SAME and base.get(k) != v}


def by_script(run_dir: Path) -> list[str]:
    """What the script that ran ``run_dir`` changed, as ``BY_SCRIPT`` names it (none for ``mtsnn train``)."""
    return [BY_SCRIPT[run_dir.parent.name]] if run_dir.parent.name in BY_SCRIPT else []


def changes(cfg: dict, run_dir: Path) -> str:
    """The settings of the run in ``run_dir`` (its config ``cfg``) that differ from the screen's base for its preset."""
    diff = by_script(run_dir)
    diff += [f"{k}={v}" for k, v in changed(cfg, PRESETS[cfg["preset"]].replace(**BASE).__dict__).items()]
    if cfg["ann"]:
        diff.insert(0, "ANN" if own_network(cfg["preset"], cfg["spec"]) else "ANN twin")
    return ", ".join(diff) or "-"


def main(presets):
    print(
        "| preset | run | settings changed from the base | epochs | final val % | last ten val % "
        "| best val % (epoch) | final train % | silent outputs at the end | minutes |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    seeded = defaultdict(list)
    for run in filter(None, map(read_run, sorted(p.parent for n in presets for p in (HERE / n).glob("*/config.toml")))):
        rows, cfg = run.rows, run.config
        best = max(rows, key=lambda r: r.score)
        status = "" if len(rows) == cfg["epochs"] else f" (of {cfg['epochs']})"
        last = statistics.mean(r.score for r in rows[-LAST:])
        print(
            f"| {cfg['preset']} | {run.dir.name} | {changes(cfg, run.dir)} | {len(rows)}{status} | "
            f"{rows[-1].score:.2f} | {last:.3f} | {best.score:.2f} ({best.epoch}) | {rows[-1].train_acc:.2f} | "
            f"{rows[-1].silent_outputs or '-'} | {sum(r.epoch_seconds for r in rows) / 60:.1f} |"
        )
        if len(rows) == cfg["epochs"]:
            seeded[cfg["preset"], changes(cfg, run.dir)].append((cfg["seed"], run.dir.name, rows[-1].score, last))
    print(
        "\n| preset | settings changed from the base | seeds (runs) | final val %, mean ± std "
        "| last ten val %, mean ± std |"
    )
    print("|---|---|---|---|---|")
    for (name, settings), runs in seeded.items():
        if len({seed for seed, *_ in runs}) > 1:
            finals = [final for _, _, final, _ in runs]
            lasts = [last for *_, last in runs]
            names = ", ".join(f"{seed} ({run})" for seed, run, *_ in sorted(runs))
            print(
                f"| {name} | {settings} | {names} | {statistics.mean(finals):.2f} ± {statistics.stdev(finals):.2f} "
                f"| {statistics.mean(lasts):.3f} ± {statistics.stdev(lasts):.3f} |"
            )


if __name__ == "__main__":
    main(sys.argv[1:] or sorted(p.name for p in HERE.iterdir() if p.is_dir()))
