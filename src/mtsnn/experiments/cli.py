"""The ``mtsnn`` command: ``train``, ``eval``, ``export``, ``presets``, ``report``, ``sweep`` and ``figures``."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import statistics
import sys
import time
from pathlib import Path

from .. import __version__
from ..config import PRESETS, TrainConfig, dump_toml, load_toml, preset
from .distributed import is_main_process
from .rundir import SCORE_LABELS, Summary, score_name
from .sweep import SWEEPS

# Settings that are not command-line options of `train`.
_INTERNAL = {"preset", "dataset", "spec"}


def _option(field: str) -> str:
    return "--T" if field == "T" else "--" + field.replace("_", "-")


def _add_setting_options(parser: argparse.ArgumentParser) -> None:
    for field in dataclasses.fields(TrainConfig):
        if field.name in _INTERNAL:
            continue
        kind, help, choices = type(field.default), field.metadata["help"], field.metadata["choices"]
        if kind is bool:
            parser.add_argument(
                _option(field.name), dest=field.name, action=argparse.BooleanOptionalAction, default=None, help=help
            )
        elif choices:
            parser.add_argument(
                _option(field.name),
                dest=field.name,
                default=None,
                choices=choices,
                help=help,
                metavar="{" + ",".join(c or "''" for c in choices) + "}",
            )
        else:
            parser.add_argument(
                _option(field.name), dest=field.name, type=kind, default=None, help=help, metavar=kind.__name__.upper()
            )


def _parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    parser = argparse.ArgumentParser(prog="mtsnn", description="Multi-threshold spiking neural networks.")
    parser.add_argument("--version", action="version", version=f"mtsnn {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser(
        "train",
        help="train a preset (one per 'Proposed Method' row of the paper)",
        description="Train a preset. Each setting not given keeps the preset's value, in the "
        "recipe chosen (`mtsnn presets` lists them): Table 1's where the paper gives one.",
    )
    train.add_argument("preset", nargs="?", choices=sorted(PRESETS), help="preset to train")
    train.add_argument("--config", metavar="FILE.toml", help="settings from a TOML file (the command line wins)")
    train.add_argument("--run-dir", help="run directory (default: runs/PRESET[-ann]-TIMESTAMP)")
    train.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its checkpoint")
    train.add_argument("--seeds", help="comma-separated seeds: one run each, then mean and std")
    _add_setting_options(train)
    evaluate = sub.add_parser("eval", help="test accuracy, spikes per neuron and parameters of a run")
    evaluate.add_argument(
        "run", metavar="RUN", help="a run directory, a checkpoint file, or pretrained:NAME (a model shipped in models/)"
    )
    evaluate.add_argument("--json", action="store_true", help="print JSON")
    evaluate.add_argument(
        "--energy", action="store_true", help="also count spikes, synaptic operations and energy per inference"
    )
    evaluate.add_argument(
        "--data-root",
        default=None,
        help="where the data sets are (default: where the run found them, else $MTSNN_DATA, else the user cache)",
    )
    evaluate.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    evaluate.add_argument(
        "--int8",
        action="store_true",
        help="also the accuracy of the integer-only network: int8 weights, int32 accumulators, "
        "integer potentials and thresholds (mtsnn.integer)",
    )
    evaluate.add_argument(
        "--test-limit", type=int, default=0, metavar="N", help="score only the first N test images (default: all)"
    )
    evaluate.add_argument(
        "--keep-weights",
        metavar="OUT",
        help="also write the weights alone (OUT.safetensors) with the config and this accuracy",
    )
    exporter = sub.add_parser(
        "export",
        help="write a trained SNN for another tool: NIR (any NIR consumer) or Sinabs",
        description="Write a trained SNN for another tool (mtsnn.export).",
    )
    exporter.add_argument("run", metavar="RUN", help="a run directory, a checkpoint file, or pretrained:NAME")
    exporter.add_argument(
        "--to",
        required=True,
        choices=["nir", "sinabs"],
        help="nir: a NIR graph file (nir.read reads it; S_max in the neuron nodes' metadata); "
        "sinabs: the Sinabs twin's parameters and layer list (mtsnn.export.load_sinabs)",
    )
    exporter.add_argument("out", metavar="OUT", help="the file to write")
    presets = sub.add_parser("presets", help="list the presets and their settings")
    sweep = sub.add_parser("sweep", help=f"train the points of a figure's sweep ({', '.join(SWEEPS)})")
    sweep.add_argument("figure", help=", ".join(SWEEPS))
    sweep.add_argument("--preset", default="fmnist-mlp", choices=sorted(PRESETS))
    sweep.add_argument("--out", default="results/figures/sweeps", help="where the run directories go")
    _add_setting_options(sweep)
    figures = sub.add_parser("figures", help="draw the paper's figures (fig1, fig4-fig9) as PNGs")
    figures.add_argument("names", nargs="*", metavar="NAME", help="figures to draw (default: all)")
    figures.add_argument("--out", default="results/figures")
    figures.add_argument("--sweeps", default="results/figures/sweeps", help="where `mtsnn sweep` put its runs")
    report = sub.add_parser("report", help="build REPORT.md and summary.json from RESULTS/runs/")
    report.add_argument("--results", default="results", help="the results folder (default: results)")
    commands = {
        "train": (train, cmd_train),
        "eval": (evaluate, cmd_eval),
        "export": (exporter, cmd_export),
        "presets": (presets, cmd_presets),
        "report": (report, cmd_report),
        "sweep": (sweep, cmd_sweep),
        "figures": (figures, cmd_figures),
    }
    for command, handler in commands.values():
        command.set_defaults(handler=handler)
    return parser, {name: command for name, (command, _) in commands.items()}


def _settings(args: argparse.Namespace) -> dict:
    return {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(TrainConfig)
        if f.name not in _INTERNAL and getattr(args, f.name) is not None
    }


def _config(args: argparse.Namespace) -> TrainConfig:
    """The preset, then its recipe's settings, then the TOML file's, then the command line's."""
    settings, given = load_toml(args.config) if args.config else {}, _settings(args)
    # A run's own config.toml names its preset, data set and network: fine if they are the
    # preset's. An ANN (a teacher for distillation, not the SNN's twin) may take a network of its own.
    free = {"spec"} if given.get("ann", settings.get("ann")) else set()
    fixed = sorted(
        name for name in set(settings) & (_INTERNAL - free) if settings[name] != getattr(PRESETS[args.preset], name)
    )
    if fixed:
        raise ValueError(
            f"config file {args.config}: {', '.join(f'{name}={settings[name]!r}' for name in fixed)} "
            f"differs from preset {args.preset} (the preset chooses the data set, and the network "
            "of an SNN; only an ANN, --ann, may set its own spec)"
        )
    try:
        cfg = preset(args.preset, **{**settings, **{k: v for k, v in given.items() if k in ("recipe", "ann")}})
    except ValueError as e:
        raise ValueError(f"config file {args.config}: {e}" if args.config else str(e)) from None
    return cfg.replace(**given).validate()


def _say(text: str) -> None:
    if is_main_process():  # only rank 0 reports
        print(text)


def _train_one(cfg: TrainConfig, run_dir: Path, resumable: dict) -> Summary:
    from .train import finish

    _say(f"run directory: {run_dir}\n--- effective configuration ---\n{dump_toml(dataclasses.asdict(cfg))}---")
    return finish(cfg, run_dir, _say, **resumable)


def _accuracy(summary: Summary, cfg: TrainConfig) -> str:
    """'test accuracy 99.10%', or 'validation accuracy ...' for a run on a held-out split
    (only rank 0, which prints it, knows the score)."""
    return f"{SCORE_LABELS[score_name(cfg)]} accuracy {summary.score or 0.0:.2f}%"


def cmd_train(args: argparse.Namespace) -> int:
    from .train import RESUMABLE_SETTINGS, Run
    from .tuning import tune_process

    tune_process()

    if args.resume:
        extra = [
            name
            for name, given in (
                ("PRESET", args.preset),
                ("--config", args.config),
                ("--run-dir", args.run_dir),
                ("--seeds", args.seeds),
            )
            if given
        ]
        if extra:
            raise ValueError(
                f"--resume continues {args.resume} in place with its saved settings; it takes no {' or '.join(extra)}"
            )
        run = Run.resume(args.resume, **_settings(args))
        summary = run.fit()
        _say(f"{_accuracy(summary, run.cfg)} after {summary.epochs} epochs")
        return 0
    if args.preset is None:
        raise ValueError(f"name a preset ({', '.join(sorted(PRESETS))}) or --resume RUN_DIR")
    cfg = _config(args)
    # Run again, the same command finishes the job: finished runs are kept, stopped ones resume
    resumable = {name: value for name, value in _settings(args).items() if name in RESUMABLE_SETTINGS}
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path(args.run_dir or f"runs/{cfg.preset}{'-ann' if cfg.ann else ''}-{stamp}")
    if not args.seeds:
        summary = _train_one(cfg, base, resumable)
        _say(f"{_accuracy(summary, cfg)} after {summary.epochs} epochs ({summary.wall_seconds:.0f} s)")
        return 0
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        raise ValueError(f"--seeds {args.seeds!r}: expected comma-separated integers such as 0,1,2") from None
    score = score_name(cfg)
    accs = [_train_one(cfg.replace(seed=seed), base / f"seed{seed}", resumable).score or 0.0 for seed in seeds]
    spread = statistics.stdev(accs) if len(accs) > 1 else 0.0
    _say(
        f"{SCORE_LABELS[score]} accuracy {statistics.mean(accs):.2f} ± {spread:.2f}% over seeds {seeds}: "
        + ", ".join(f"{a:.2f}" for a in accs)
    )
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .evaluate import evaluate_checkpoint, keep_weights

    if args.keep_weights and args.test_limit:
        raise ValueError(
            f"--keep-weights records the accuracy on the whole test set, not on --test-limit {args.test_limit} "
            "images: drop one of them"
        )

    report = evaluate_checkpoint(
        args.run,
        data_root=args.data_root,
        device=args.device,
        energy=args.energy,
        test_limit=args.test_limit,
        int8=args.int8,
    )
    if args.keep_weights:
        kept = keep_weights(args.run, args.keep_weights, report)
        print(
            f"kept the weights in {Path(args.keep_weights).parent / kept['weights']} (sha256 {kept['sha256']})",
            file=sys.stderr,
        )
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    scored = f" on the first {report['test_images']:,} test images" if args.test_limit else ""
    recorded = (
        f" (recorded when its weights were kept: {report['recorded_test_acc']:.2f}%)"
        if "recorded_test_acc" in report
        else ""
    )
    print(
        f"{report['preset']} ({report['spec']}, T={report['T']}): test accuracy {report['test_acc']:.2f}%{scored}"
        f"{recorded}, {report['parameters']:,} parameters"
    )
    if "int8_test_acc" in report:
        print(
            f"  integer-only (int8 weights): test accuracy {report['int8_test_acc']:.2f}% "
            f"({report['int8_test_acc'] - report['test_acc']:+.2f} points); "
            f"same prediction as the float network on {report['int8_agreement']:.2f}% of the images"
        )
    for i, s in enumerate(report["spikes_per_neuron"]):
        print(f"  layer {i + 1}: {s:.4f} spikes per neuron per inference")
    if report["silent_outputs"]:
        print(f"  silent output neurons (classes never predicted): {report['silent_outputs']}")
    if "energy" in report:
        _print_energy(report["energy"])
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    import warnings

    from .. import export
    from .evaluate import load_trained

    model, cfg = load_trained(args.run)
    if cfg.ann:
        raise ValueError(f"{args.run} is an ANN twin: it has no neuron to export")
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        if args.to == "nir":
            export.write_nir(model, args.out)
        else:
            export.save_sinabs(model, args.out)
    for warning in said:
        print(f"mtsnn: warning: {warning.message}", file=sys.stderr)
    print(f"wrote {args.out} ({args.to}: {cfg.preset}, {cfg.spec}, T={cfg.T})")
    return 0


def _print_energy(counts: dict) -> None:
    if "snn_accumulate_hardware" not in counts["energy_pj"]:  # an ANN twin run
        for i, r in enumerate(counts["layers"]):
            print(f"  layer {i + 1}: {r['ann_macs']:,.0f} multiply-accumulates per inference")
        print(f"energy per inference: {counts['energy_pj']['ann_twin'] / 1e6:.3f} uJ ({counts['assumptions']})")
        return
    print(
        "\nper inference      neurons  firing rate  spikes/neuron  dense MACs        ACs  event MACs"
        "  neuron updates  ANN twin MACs"
    )
    rows = [(f"layer {i + 1}", r) for i, r in enumerate(counts["layers"])] + [("total", counts["total"])]
    for name, r in rows:
        print(
            f"{name:16s} {r['neurons']:9,d} {r['firing_rate']:12.4f} {r['spikes_per_neuron']:14.4f} "
            f"{r['dense_macs']:11,.0f} {r['acs']:10,.0f} {r['event_macs']:11,.0f} {r['neuron_updates']:15,.0f} "
            f"{r['ann_macs']:14,.0f}"
        )
    e, ratio = counts["energy_pj"], counts["energy_ratio_to_ann"]
    print(
        f"\nenergy per inference: SNN on accumulate hardware {e['snn_accumulate_hardware'] / 1e6:.3f} uJ "
        f"({ratio['snn_accumulate_hardware']:.3f} x ANN twin), SNN on MAC hardware "
        f"{e['snn_mac_hardware'] / 1e6:.3f} uJ ({ratio['snn_mac_hardware']:.3f} x), ANN twin "
        f"{e['ann_twin'] / 1e6:.3f} uJ\n({counts['assumptions']})"
    )


def cmd_presets(args: argparse.Namespace) -> int:
    for name, cfg in PRESETS.items():
        print(
            f"{name:12s} {cfg.dataset:14s} {cfg.spec:46s} lr={cfg.lr} T={cfg.T} epochs={cfg.epochs} "
            f"batch={cfg.batch_size} s_max={cfg.s_max} surrogate={cfg.surrogate} grad_mode={cfg.grad_mode}"
        )
        for ann in (False, True):
            fast = preset(name, recipe="fast", ann=ann)
            changed = [
                f"{f.name}={getattr(fast, f.name)}"
                for f in dataclasses.fields(cfg)
                if f.name not in ("recipe", "ann") and getattr(fast, f.name) != getattr(cfg, f.name)
            ]
            print(f"{'':12s}   --recipe fast{' --ann' if ann else '':6s} {' '.join(changed)}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from .sweep import run_sweep
    from .tuning import tune_process

    tune_process()

    for run_dir in run_sweep(args.figure, args.preset, Path(args.out), log=_say, **_settings(args)):
        _say(f"{run_dir}")
    return 0


def cmd_figures(args: argparse.Namespace) -> int:
    from .figures import draw

    for path in draw(args.names, Path(args.out), Path(args.sweeps)):
        print(f"wrote {path}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .report import build

    print(f"wrote {build(Path(args.results))}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser, commands = _parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        valid = sorted(a for action in commands[args.command]._actions for a in action.option_strings)
        parser.error(f"unknown option(s) {' '.join(unknown)}; valid options of '{args.command}': {', '.join(valid)}")
    from ..checkpoint import CheckpointError
    from ..data import DatasetError
    from .distributed import shutdown
    from .figures import FigureError
    from .train import Interrupted, StorageError

    try:
        code = args.handler(args)
        sys.stdout.flush()  # here, where a closed pipe is caught, not at exit
        return code
    except Interrupted as e:
        print(f"mtsnn: {e}; continue with --resume", file=sys.stderr)
        return 128 + e.signum
    except (ValueError, DatasetError, CheckpointError, FloatingPointError, FigureError, StorageError) as e:
        print(f"mtsnn: error: {e}", file=sys.stderr)
        return 1 if isinstance(e, (FloatingPointError, StorageError)) else 2
    except BrokenPipeError:  # the reader went away (`mtsnn eval RUN | head`): stop quietly, as cat does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit's flush cannot fail again
        return 128 + signal.SIGPIPE
    except OSError as e:  # outside a training loop: creating a run directory, writing a report, ...
        print(
            f"mtsnn: error: cannot use {e.filename}: {e.strerror}" if e.filename else f"mtsnn: error: {e}",
            file=sys.stderr,
        )
        return 1
    finally:
        shutdown()


if __name__ == "__main__":
    sys.exit(main())
