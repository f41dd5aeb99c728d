"""``mtsnn report``: our accuracy beside the paper's, from the run directories under ``results/runs/``.

Layout: ``results/runs/<preset>[-ann|-output-<surrogate>]/seed<k>/`` with each run's ``config.toml``,
``metrics.jsonl`` and ``summary.json`` (checkpoints are left out of the repository;
``summary.json`` records their sha256). A run whose ``metrics.jsonl`` stops before its
configured epochs is reported as partial, with the epochs it has. A run whose output
neurons for some classes never fired on the test set (``silent_outputs`` in its last
metrics row, or in an ``eval.json`` written by ``mtsnn eval --json`` for runs logged
before that field existed) is named, with those classes. Runs are grouped by preset, SNN or
ANN twin, the SNN's ``output_surrogate``, the recipe, and the share and temperature of
distillation from a teacher, read from each ``config.toml``.

What was tried where we fall short is written by hand, once per preset, in
``results/notes/<preset>.md``; the report places it under that preset's table.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
from dataclasses import dataclass
from pathlib import Path

from .. import zoo
from ..checkpoint import atomic_write
from ..config import PRESETS, TrainConfig, load_toml, own_network, teachers
from .rundir import RunRecord, read_config, read_run

# "Proposed Method" rows of the paper: (table, mean accuracy over 5 runs); the network and T
# are the preset's (mtsnn.config.PRESETS)
PAPER = {
    "mnist-mlp": ("Table 2", 99.15),
    "mnist-cnn": ("Table 3", 99.56),
    "fmnist-mlp": ("Table 4", 91.08),
    "fmnist-cnn": ("Table 5", 93.08),
    "cifar10-cnn": ("Table 6", 87.90),
}
DATASET_NAMES = {"mnist": "MNIST", "fashion-mnist": "Fashion-MNIST", "cifar10": "CIFAR-10"}


def _dataset_label(name: str, rows: list[TableRow]) -> str:
    """The data set's name, marked when a run trained on files that were not checked against the
    official release; CIFAR-10 is marked unless every run is known to have had verified files
    (the copy on our machines is a JPEG proxy, which no checksum can vouch for)."""
    unverified = [row.data_unverified for row in rows]
    if not (any(unverified) or (name == "cifar10" and not all(u is False for u in unverified))):
        return DATASET_NAMES[name]
    proxy = " (our CIFAR-10 is a JPEG proxy, not the original)" if name == "cifar10" else ""
    return f"{DATASET_NAMES[name]}, unverified copy{proxy}"


@dataclass
class TableRow:
    """One row of the report: a preset's variant (SNN, ANN twin; recipe; output surrogate;
    distilled from a teacher or not) over its seeds. ``results/summary.json`` holds these rows,
    less the curves and run folders."""

    preset: str
    dataset: str
    spec: str
    T: int | None  # None for the ANN twin
    variant: str
    recipe: str
    output_surrogate: str | None
    distill: float  # the share of the loss given to a teacher's outputs (--distill; 0: none)
    teachers: list[str]  # each teacher's kind, 'ANN twin', 'SNN' or '?' (not found); [] none
    start: str  # 'fine-tuned' (--init-from a trained model), 'fine-tuned with qat', or '' (a random start)
    batch_norm: bool  # trained with --batch-norm (folded for inference)
    epochs: list[int]  # trained, per counted seed
    planned_epochs: int
    partial: list[bool]  # per counted seed: unfinished
    seeds: list[int]  # counted: the complete runs, or all if none is complete
    accs: list[float]  # final accuracy per counted seed
    mean_acc: float
    std_acc: float
    paper_acc: float | None
    reached_paper: list[dict | None] | None  # per counted seed: first epoch at the paper's figure
    unfinished: list[dict]  # runs left out of the mean: seed, epochs, test_acc
    training_seconds: float  # mean training time (the epochs' own seconds) per counted seed
    seconds_per_epoch: float
    silent_outputs: dict[int, list[int]]  # seed -> classes never predicted at the end
    machine: dict | None
    data_unverified: bool | None
    runs: list[str]
    curves: list[list[float]]  # accuracy by epoch, per run
    curve_seeds: list[int]

    def to_json(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in ("curves", "curve_seeds", "runs")}


def _machines(table: list[TableRow]) -> list[str]:
    """The footer: the machine of each row's first run, one line for each machine with the rows
    that ran on it when they differ, since seconds per epoch compare only within one machine."""
    rows_by_machine: dict[str, list[str]] = {}
    for row in table:
        if row.machine:
            described = ", ".join(f"{k} {v}" for k, v in row.machine.items())
            rows_by_machine.setdefault(described, []).append(f"{row.preset} {row.variant}")
    if not rows_by_machine:
        return []
    if len(rows_by_machine) == 1:
        return [f"Machine: {next(iter(rows_by_machine))}", ""]
    lines = ["Machines (seconds per epoch compare only within one):", ""]
    lines += [f"- {described}: {'; '.join(rows)}" for described, rows in rows_by_machine.items()]
    return lines + [""]


def collect(runs_root: Path) -> list[TableRow]:
    """One row per preset x variant (SNN or ANN twin, output surrogate, recipe, distillation),
    in the keys of results/summary.json."""
    groups: dict[tuple[str, bool, str, str, bool, float, float, tuple[str, ...], str], list[RunRecord]] = {}
    for run_dir in sorted(p for p in runs_root.glob("*/*") if p.is_dir()):
        run = read_run(run_dir)
        if run is not None:
            cfg = run.config
            if cfg.get("test_limit"):
                raise ValueError(
                    f"{run_dir} was scored on only {cfg['test_limit']} test images (test_limit); "
                    "a report needs the whole test set"
                )
            key = (
                cfg["preset"],
                bool(cfg["ann"]),
                cfg.get("output_surrogate", ""),
                cfg.get("recipe", "paper"),
                bool(cfg.get("batch_norm")),
                cfg.get("distill", 0.0),
                cfg.get("distill_temperature", TrainConfig.distill_temperature) if cfg.get("distill") else 0.0,
                tuple(teacher_kind(name, cfg["preset"]) for name in teachers(cfg.get("teacher", ""))),
                _start(cfg),
            )
            groups.setdefault(key, []).append(run)
    table = []
    for key, runs in sorted(groups.items()):
        preset, ann, output_surrogate, recipe, batch_norm, distill, temperature, taught, start = key
        cfg = runs[0].config
        # Mean and std over complete runs; unfinished ones are listed apart (all of them if none finished).
        counted = [r for r in runs if r.complete] or runs
        accs = [r.rows[-1].score for r in counted]
        paper = None if ann else PAPER.get(preset, (None, None))[1]
        table.append(
            TableRow(
                preset=preset,
                dataset=cfg["dataset"],
                spec=cfg["spec"],
                T=None if ann else cfg["T"],
                variant=_variant(ann, output_surrogate, recipe, batch_norm, distill, temperature, taught)
                + (start and f", {start}"),
                recipe=recipe,
                output_surrogate=output_surrogate or None,
                distill=distill,
                teachers=list(taught),
                start=start,
                batch_norm=batch_norm,
                epochs=[len(r.rows) for r in counted],
                planned_epochs=cfg["epochs"],
                partial=[not r.complete for r in counted],
                seeds=[r.config["seed"] for r in counted],
                accs=accs,
                mean_acc=statistics.mean(accs),
                std_acc=statistics.stdev(accs) if len(accs) > 1 else 0.0,
                paper_acc=paper,
                reached_paper=[_first_reaching(r, paper) for r in counted] if paper is not None else None,
                unfinished=[
                    {"seed": r.config["seed"], "epochs": len(r.rows), "test_acc": r.rows[-1].score}
                    for r in runs
                    if not r.complete and r not in counted
                ],
                training_seconds=statistics.mean(sum(row.epoch_seconds for row in r.rows) for r in counted),
                # median: robust to epochs slowed by other jobs on the machine
                seconds_per_epoch=statistics.median(row.epoch_seconds for r in runs for row in r.rows),
                silent_outputs={r.config["seed"]: r.silent_outputs for r in counted if r.silent_outputs},
                machine=runs[0].summary.machine if runs[0].summary else None,
                # True: some run read unverified files; None: not recorded (unfinished or older runs)
                data_unverified=_unverified([r.summary.unverified_data if r.summary else None for r in runs]),
                runs=[str(r.dir) for r in runs],
                curves=[[row.score for row in r.rows] for r in runs],
                curve_seeds=[r.config["seed"] for r in runs],
            )
        )
    return table


def _start(cfg: dict) -> str:
    """How a run started, for its row: from a trained model (fine-tuned), with qat or without."""
    if not cfg.get("init_from"):
        return "with qat" if cfg.get("qat") else ""
    return "fine-tuned with qat" if cfg.get("qat") else "fine-tuned"


def _variant(
    ann: bool,
    output_surrogate: str,
    recipe: str,
    batch_norm: bool,
    distill: float,
    temperature: float,
    taught: tuple[str, ...],
) -> str:
    """A row's name: the paper's recipe gives "SNN" (and its ANN twin trained the same way),
    the fast recipe "SNN, fast recipe" and the ANN twin tuned on the validation split; runs
    trained with batch norm add ", batch norm"; runs that learned from teachers add the share,
    the teachers and the temperature (", distilled 0.9 from an ANN twin, tau 4", ", distilled
    0.5 from 3 SNNs, tau 4")."""
    if ann:
        name = "ANN twin, tuned (fast recipe)" if recipe == "fast" else "ANN twin"
    else:
        name = f"SNN, output layer {output_surrogate}" if output_surrogate else "SNN"
        name = f"{name}, fast recipe" if recipe == "fast" else name
    name += ", batch norm" * batch_norm
    return f"{name}, distilled {distill:g} from {_teachers_text(taught)}, tau {temperature:g}" if distill else name


def _teachers_text(taught: tuple[str, ...]) -> str:
    """'an ANN twin', '3 SNNs', '2 teachers' (of mixed or unknown kinds)."""
    kinds = set(taught)
    if len(kinds) != 1 or "?" in kinds:
        return f"{len(taught)} teacher{'s' * (len(taught) > 1)}"
    kind = taught[0]
    return f"an {kind}" if len(taught) == 1 else f"{len(taught)} {kind}s"


def teacher_kind(name: str, preset: str) -> str:
    """'ANN twin' or 'SNN': what the teacher ``name`` of a run of ``preset`` is, from its own
    config (a run directory's config.toml, the one beside a checkpoint file, or a shipped
    model's NAME.toml), led by the teacher's preset where it is another network ('fmnist-cnn
    ANN twin' teaching fmnist-mlp), and named by its network where an ANN has one of its own
    ('32C5-P2-64C5-P2-1024 ANN'); '?' where none is found (a relative path is read from the
    working directory)."""
    shipped, path = zoo.shipped(name), Path(name)
    try:
        if shipped:
            config = load_toml(zoo.folder() / f"{shipped}.toml")
        else:
            config = read_config(path if path.is_dir() else path.parent)
        kind = "ANN twin" if config.get("ann") else "SNN"
    except ValueError:  # no such file, or not a config
        return "?"
    taught = config.get("preset", preset)
    if own_network(taught, config.get("spec")):
        return f"{config['spec']} ANN"
    return kind if taught == preset else f"{taught} {kind}"


def _kind_suffix(kind: str) -> str:
    """A teacher's kind (:func:`teacher_kind`) in a curve file's name: 'ann', 'snn',
    'fmnist-cnn-ann'; '' unknown."""
    return "" if kind == "?" else kind.replace("ANN twin", "ann").replace("SNN", "snn").replace(" ", "-")


def _first_reaching(run: RunRecord, target: float) -> dict | None:
    """The first epoch whose test accuracy is at least ``target``, with the training minutes up to it."""
    minutes = 0.0
    for row in run.rows:
        minutes += row.epoch_seconds / 60
        if row.score >= target:
            return {"epoch": row.epoch, "minutes": round(minutes, 1)}
    return None


def _unverified(files: list[list[str] | None]) -> bool | None:
    """True: some run read data files no checksum vouched for; False: every run recorded that
    none did; None: not recorded (unfinished runs, or runs older than the record)."""
    if any(files):
        return True
    return False if all(f == [] for f in files) else None


def _time_to_paper(row: TableRow) -> str:
    reached, missed, running = [], [], []
    for seed, hit, epochs, partial in zip(row.seeds, row.reached_paper, row.epochs, row.partial):
        if hit is not None:
            reached.append(f"seed {seed} at epoch {hit['epoch']} ({hit['minutes']:.1f} min)")
        elif partial:
            running.append(f"seed {seed} ({epochs}/{row.planned_epochs} epochs)")
        else:
            missed.append(str(seed))
    text = f" The paper's {row.paper_acc:.2f}% was reached by {', '.join(reached)} of training." if reached else ""
    text += f" Never reached by seed(s) {', '.join(missed)}." if missed else ""
    return text + (f" Not yet reached by {', '.join(running)}." if running else "")


def _plot(row: TableRow, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for seed, curve in zip(row.curve_seeds, row.curves):
        ax.plot(range(1, len(curve) + 1), curve, label=f"seed {seed}", linewidth=1)
    if row.paper_acc is not None:
        ax.axhline(row.paper_acc, color="black", linestyle="--", linewidth=1, label=f"paper {row.paper_acc}%")
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy (%)")
    low = min(min(c) for c in row.curves)
    ax.set_ylim(max(low, (row.paper_acc or 100) - 10), 100)
    ax.set_title(f"{row.preset} {row.variant} ({row.spec}, T={row.T or '-'})")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _fmt(row: TableRow) -> str:
    spread = f" ± {row.std_acc:.2f}" if len(row.accs) > 1 else ""
    partial = [f"seed {s}: {e}/{row.planned_epochs} epochs" for s, e, p in zip(row.seeds, row.epochs, row.partial) if p]
    note = f" (**partial**: {'; '.join(partial)})" if partial else ""
    running = [
        f"seed {u['seed']} at epoch {u['epochs']}/{row.planned_epochs}: {u['test_acc']:.2f}%" for u in row.unfinished
    ]
    note += f"; not counted, unfinished: {'; '.join(running)}" if running else ""
    silent = [
        f"seed {seed}: class(es) {', '.join(map(str, classes))} never predicted (silent output neuron)"
        for seed, classes in row.silent_outputs.items()
    ]
    note += f"; {'; '.join(silent)}" if silent else ""
    seeds = f" (by seed: {', '.join(f'{a:.2f}' for a in row.accs)})" if len(row.accs) > 1 else ""
    return f"{row.mean_acc:.2f}{spread}% over {len(row.accs)} seed(s){seeds}{note}"


def _overview(table: list[TableRow]) -> list[str]:
    """One line per paper table: the paper's figure and each variant's mean ± std (seeds)."""
    if not table:
        return []
    variants = sorted({row.variant for row in table}, key=lambda v: (v.startswith("ANN"), "fast" in v, v))
    lines = [
        "## Overview",
        "",
        "| paper table | preset | paper | " + " | ".join(f"mtsnn {v}" for v in variants) + " |",
        "|---" * (3 + len(variants)) + "|",
    ]
    for preset, (table_name, paper_acc) in PAPER.items():
        rows = {row.variant: row for row in table if row.preset == preset}
        if not rows:
            continue
        cells = []
        for variant in variants:
            row = rows.get(variant)
            if row is None:
                cells.append("-")
                continue
            seeds = len(row.accs)
            accuracy = (
                f"{row.mean_acc:.2f} ± {row.std_acc:.2f}% ({seeds} seeds)"
                if seeds > 1
                else f"{row.mean_acc:.2f}% (1 seed)"
            )
            partial = f", **partial**: {min(row.epochs)}/{row.planned_epochs} epochs" if any(row.partial) else ""
            silent = (
                f", silent outputs in seed(s) {', '.join(map(str, row.silent_outputs))}" if row.silent_outputs else ""
            )
            cells.append(accuracy + partial + silent)
        lines.append(f"| {table_name} | {preset} | {paper_acc:.2f}% | " + " | ".join(cells) + " |")
    return lines + [""]


def build(results: Path = Path("results")) -> Path:
    """Write ``results/summary.json``, ``results/REPORT.md`` and the learning-curve PNGs.
    ValueError if ``results/runs`` is missing or holds no runs (nothing to report)."""
    if not (results / "runs").is_dir():
        raise ValueError(
            f"{results / 'runs'}: no such folder (give --results the folder whose runs/ holds "
            "run directories as runs/PRESET/seedN)"
        )
    table = collect(results / "runs")
    if not table:
        raise ValueError(
            f"{results / 'runs'} holds no runs (run directories with config.toml and metrics.jsonl, "
            "as runs/PRESET/seedN); no report written"
        )
    public = [row.to_json() for row in table]
    atomic_write(results / "summary.json", [(json.dumps(public, indent=2) + "\n").encode()])
    lines = [
        "# mtsnn against the paper",
        "",
        "Regenerated by `mtsnn report` from the run logs under `results/runs/` "
        "(each run's `config.toml`, `metrics.jsonl`, `summary.json`). Accuracy is the test "
        "accuracy after the last epoch, mean ± sample std over seeds; the paper's figures are "
        "means of 5 runs after 200 epochs on a V100. The ANN twin is the same network with ReLU "
        "and cross-entropy, trained with the SNN's settings (Table 1's Adam and learning rate, "
        "the same cropping), not tuned for an ANN. Rows marked *fast recipe* use mtsnn's own recipe "
        "(`--recipe fast`: warm-up and cosine decay, the output floor, each preset's own rate and epochs; README); "
        "its settings, and the tuned ANN twin's own learning rate and schedule, were chosen on 5,000 "
        "training images held out for validation (`results/probes/recipe/`), and these runs, trained "
        "on all training images, are scored on the test set once per epoch like the others but were "
        "not used to choose anything. Rows marked *distilled* also learned a teacher's outputs "
        "(`--teacher`, `--distill`; each run's config names its teacher), and their minutes leave out "
        "the teacher's training. Minutes to the paper's figure are the run's "
        "training time (evaluation excluded), including any slowdown from other jobs on the machine.",
        "",
    ]
    lines += _overview(table)
    for preset, (table_name, paper_acc) in PAPER.items():
        spec, steps = PRESETS[preset].spec, PRESETS[preset].T
        rows = sorted(
            (row for row in table if row.preset == preset),
            key=lambda row: (row.variant.startswith("ANN"), row.recipe == "fast", row.distill),
        )
        if not rows:
            continue
        lines += [
            f"## {table_name}: {preset} on {_dataset_label(rows[0].dataset, rows)}",
            "",
            "| | network | T | epochs | accuracy | seconds per epoch (median) |",
            "|---|---|---|---|---|---|",
            f"| paper, Proposed Method | {spec} | {steps} | 200 | {paper_acc:.2f}% (5 runs) | (V100) |",
        ]
        for row in rows:
            epochs = "/".join(sorted({str(e) for e in row.epochs}))
            lines.append(
                f"| mtsnn {row.variant} | {row.spec} | {row.T or '-'} | {epochs} | {_fmt(row)} | "
                f"{row.seconds_per_epoch:.1f} |"
            )
        for row in rows:
            if row.paper_acc is not None:
                lines += [
                    "",
                    f"mtsnn {row.variant}: {row.mean_acc - paper_acc:+.2f} points from the paper."
                    + _time_to_paper(row),
                ]
        notes = results / "notes" / f"{preset}.md"
        if notes.exists():
            lines += ["", notes.read_text(encoding="utf-8").strip()]
        for row in rows:
            suffix = f"-output-{row.output_surrogate}" if row.output_surrogate else ""
            suffix += "-fast" if row.recipe == "fast" else ""
            suffix += "-bn" if row.batch_norm else ""
            if row.distill:
                kind = _kind_suffix(row.teachers[0]) if len(set(row.teachers)) == 1 else ""
                suffix += f"-distilled{row.distill:g}-from{len(row.teachers)}{kind}"
            suffix += "-" + row.start.replace("fine-tuned", "finetuned").replace(" ", "-") if row.start else ""
            name = f"curves-{preset}-{'ann' if row.T is None else 'snn'}{suffix}.png"
            if _plot(row, results / name):
                lines += ["", f"![{row.preset} {row.variant} learning curves]({name})"]
        lines.append("")
    lines += _machines(table)
    report = results / "REPORT.md"
    atomic_write(report, ["\n".join(lines).encode()])
    return report
