"""Print a Markdown table of every probe run under results/probes/ (final and best test accuracy)."""

import json
import sys
from pathlib import Path

HERE = Path(__file__).parent


def main(folders):
    print("| round | run | epochs | final test % | best test % (epoch) | final train % | firing rate per layer |")
    print("|---|---|---|---|---|---|---|")
    for metrics in sorted(p for f in folders for p in (HERE / f).glob("*/metrics.jsonl")):
        rows = [json.loads(line) for line in metrics.read_text().splitlines() if line]
        best = max(rows, key=lambda r: r["test_acc"])
        rates = ", ".join(f"{r:.2f}" for r in rows[-1]["firing_rate"]) or "-"
        print(
            f"| {metrics.parent.parent.name} | {metrics.parent.name} | {len(rows)} | {rows[-1]['test_acc']:.2f} | "
            f"{best['test_acc']:.2f} ({best['epoch']}) | {rows[-1]['train_acc']:.2f} | {rates} |"
        )


if __name__ == "__main__":
    main(sys.argv[1:] or ["screen", "probe15", "crop40"])
