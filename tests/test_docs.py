"""The tutorials of the documentation site run as written: every code block, in order."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from runs import cli_env, needs_fmnist

TUTORIALS = Path(__file__).resolve().parents[1] / "docs" / "tutorials"
BLOCK = re.compile(r"^```(python|bash)\n(.*?)^```", re.S | re.M)


def blocks(page: str) -> tuple[str, str]:
    """(language, the page's code blocks joined in order); a page keeps to one language."""
    found = BLOCK.findall((TUTORIALS / page).read_text())
    languages = {language for language, _ in found}
    assert len(found) >= 3 and len(languages) == 1, f"{page}: {len(found)} blocks in {languages}"
    return languages.pop(), "\n".join(code for _, code in found)


def run(page: str, cwd: Path) -> str:
    language, code = blocks(page)
    command = [sys.executable, "-c", code] if language == "python" else ["bash", "-euo", "pipefail", "-c", code]
    env = cli_env(PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    out = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, f"{page} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out.stdout


def test_the_neuron_tutorial_runs(tmp_path):
    assert "loss" in run("neuron.md", tmp_path)


@needs_fmnist
def test_the_training_tutorial_runs_and_reports_its_run(tmp_path):
    out = run("train.md", tmp_path)
    assert "fmnist-mlp" in out and (tmp_path / "tutorial" / "REPORT.md").exists()


def test_the_gradient_modes_tutorial_runs(tmp_path):
    out = run("gradient-modes.md", tmp_path)
    assert all(f"{mode:12s} test accuracy" in out for mode in ("paper", "bptt", "bptt-detach"))


@pytest.mark.parametrize("page", ["neuron.md", "train.md", "gradient-modes.md"])
def test_a_failing_block_fails_the_tutorial(tmp_path, page, monkeypatch):
    language = blocks(page)[0]  # the page's language; the blocks themselves ran in the tests above
    broken = "assert False, 'a block failed'\n" if language == "python" else "false\n"
    monkeypatch.setattr(sys.modules[__name__], "blocks", lambda page: (language, broken))
    with pytest.raises(AssertionError, match="failed"):
        run(page, tmp_path)


PACKAGE = Path(__file__).resolve().parents[1] / "src"
# every module whose docstrings hold >>> examples, found rather than listed, so none is left out
LIBRARY = sorted(
    ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
    for path in (PACKAGE / "mtsnn").rglob("*.py")
    if ">>>" in path.read_text()
)


def test_the_doctested_modules_include_the_neuron_and_the_integer_path():
    assert {"mtsnn.neuron", "mtsnn.integer"} <= set(LIBRARY)


@pytest.mark.parametrize("module", LIBRARY)
def test_the_docstring_examples_of_the_library_hold(module):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
