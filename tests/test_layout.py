"""The layout: the library never needs the experiment machinery."""

import subprocess
import sys

LIBRARY = [
    "neuron",
    "surrogate",
    "layers",
    "models",
    "config",
    "data",
    "download",
    "energy",
    "events",
    "export",
    "integer",
    "checkpoint",
    "zoo",
]

BLOCK_EXPERIMENTS = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.startswith("mtsnn.experiments"):
            raise ImportError("the experiments were imported: " + name)
sys.meta_path.insert(0, Block())
"""


def test_the_library_imports_and_builds_a_network_without_the_experiment_code():
    code = (
        BLOCK_EXPERIMENTS
        + f"""
import mtsnn, torch
from mtsnn import {", ".join(LIBRARY)}
net = config.build_model(config.preset("mnist-mlp"))
assert net(torch.rand(3, 1, 28, 28)).shape == (2, 3, 10)
print("ok")
"""
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_the_blocker_itself_catches_an_import_of_the_experiments():
    out = subprocess.run(
        [sys.executable, "-c", BLOCK_EXPERIMENTS + "import mtsnn.experiments.train"], capture_output=True, text=True
    )
    assert out.returncode != 0 and "the experiments were imported: mtsnn.experiments" in out.stderr
