"""``mtsnn sweep NAME``: the training sweeps behind Figures 6-9, one run directory per point.

A point whose run finished is kept, one with a checkpoint resumes, the others start
(:func:`mtsnn.experiments.train.finish`); so an interrupted sweep continues where it stopped. The paper ran these on
CIFAR-10 with the 7-layer network for 100-200 epochs (a GPU's work); on a CPU use a
smaller preset and budget, which the figures state.
"""

from __future__ import annotations

from pathlib import Path

from ..config import preset
from .train import RESUMABLE_SETTINGS, finish

# figure -> (what varies, its values, settings held for the whole sweep)
SWEEPS = {
    "fig6": ("surrogate", ["f1", "f2", "f3"], {}),
    "fig7": ("alpha_w", [0.2, 2.0, 20.0, 200.0, 2000.0], {"alpha_h": 1.0}),
    "fig8": ("s_max", [1, 2, 3, 5, 7, 9, 11, 15], {"T": 1}),
    "fig9": ("T", [1, 2, 3, 4, 5], {"s_max": 1}),
}


def point_dir(out: Path, figure: str, value) -> Path:
    name, _, _ = SWEEPS[figure]
    return out / figure / f"{name}={value}"


def run_sweep(figure: str, preset_name: str, out: Path, log=print, **overrides) -> list[Path]:
    """Train every point of ``figure``'s sweep (see :data:`SWEEPS`); return their run directories."""
    if figure not in SWEEPS:
        raise ValueError(f"unknown sweep {figure!r}; choose one of {', '.join(SWEEPS)}")
    name, values, held = SWEEPS[figure]
    clash = sorted(key for key in overrides if key == name or key in held and overrides[key] != held[key])
    if clash:
        raise ValueError(f"{figure} sets {', '.join(clash)} itself ({name} varies over {values}, held: {held})")
    dirs = []
    for value in values:
        run_dir = point_dir(out, figure, value)
        dirs.append(run_dir)
        log(f"{figure}: {name}={value}")
        cfg = preset(preset_name, **{**overrides, **held, name: value})
        finish(cfg, run_dir, log, **{key: given for key, given in overrides.items() if key in RESUMABLE_SETTINGS})
    return dirs
