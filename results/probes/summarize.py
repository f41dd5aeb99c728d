"""Print a Markdown table of every probe run under results/probes/ (final and best test accuracy)."""

import sys
from pathlib import Path

from mtsnn.experiments.rundir import read_run

HERE = Path(__file__).parent


def main(folders):
    print("| round | run | epochs | final test % | best test % (epoch) | final train % | firing rate per layer |")
    print("|---|---|---|---|---|---|---|")
    for run in filter(None, map(read_run, sorted(p.parent for f in folders for p in (HERE / f).glob("*/config.toml")))):
        rows = run.rows
        best = max(rows, key=lambda r: r.score)
        rates = ", ".join(f"{r:.2f}" for r in rows[-1].firing_rate) or "-"
        print(
            f"| {run.dir.parent.name} | {run.dir.name} | {len(rows)} | {rows[-1].score:.2f} | "
            f"{best.score:.2f} ({best.epoch}) | {rows[-1].train_acc:.2f} | {rates} |"
        )


if __name__ == "__main__":
    main(sys.argv[1:] or ["screen", "probe15", "crop40"])
