"""pyproject.toml against the code and the locks: console scripts resolve to the tool modules,
``python tools/X.py`` and ``python -m pmnet.tools.X`` are the same tool, and the exact pins of
requirements*.txt fall inside the declared dependency ranges."""

from __future__ import annotations

import importlib
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
SCRIPTS = PYPROJECT["project"]["scripts"]
TOOLS = sorted(p.stem for p in (REPO / "tools").glob("*.py"))


def _pins(name: str) -> dict[str, str]:
    """name (normalised) -> version of every ``name==version`` line, following ``-r`` includes."""
    out: dict[str, str] = {}
    for line in (REPO / name).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith("-r "):
            out.update(_pins(line[3:].strip()))
        elif "==" in line:
            pkg, ver = line.split("==", 1)
            out[_norm(pkg)] = ver.strip()
    return out


def _norm(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def test_every_tool_has_a_console_script() -> None:
    targets = {value.split(":")[1] for value in SCRIPTS.values()}
    assert TOOLS, "no tools/*.py found"
    assert set(TOOLS) <= targets, f"tools without a console script: {set(TOOLS) - targets}"
    assert "train" in targets


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_console_script_target_is_importable(script: str) -> None:
    module, func = SCRIPTS[script].split(":")
    if func != "train":  # the tool module first: importing it must not hide the entry function
        assert callable(importlib.import_module(f"pmnet.tools.{func}").main)
    assert callable(getattr(importlib.import_module(module), func))


@pytest.mark.parametrize("tool", TOOLS)
def test_shim_and_module_are_the_same_tool(tool: str) -> None:
    def run(*cmd: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, *cmd, "--help"], cwd=REPO, capture_output=True, text=True, timeout=300)

    shim, module = run(f"tools/{tool}.py"), run("-m", f"pmnet.tools.{tool}")
    assert shim.returncode == 0, shim.stderr
    assert module.returncode == 0, module.stderr
    assert shim.stdout.startswith("usage: ")
    assert shim.stdout == module.stdout


def test_locks_satisfy_the_declared_ranges() -> None:
    pins = _pins("requirements-dev.txt")
    declared = list(PYPROJECT["project"]["dependencies"])
    for extra in PYPROJECT["project"]["optional-dependencies"].values():
        declared += extra
    for text in declared:
        req = Requirement(text)
        version = pins.get(_norm(req.name))
        assert version is not None, f"{req.name} is declared in pyproject.toml but not pinned in requirements*.txt"
        assert req.specifier.contains(version, prereleases=True), f"{req.name}=={version} outside {req.specifier}"


def test_dev_tools_are_not_in_the_runtime_lock() -> None:
    runtime = _pins("requirements.txt")
    for tool in ("pytest", "pytest-timeout", "ruff", "mypy"):
        assert tool not in runtime, f"{tool} belongs in requirements-dev.txt"
        assert tool in _pins("requirements-dev.txt")
