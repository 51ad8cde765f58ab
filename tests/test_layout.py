"""The package's shape: the card's top-level layout, no import circle inside cmc (lazy imports
included), and no top-level package other than cmc in a regular or an editable install."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Folders of the source tree and the package each installs as (pyproject's package-dir).
INSTALLED_AS = {"cmc": "cmc", "training": "cmc.training", "hooks": "cmc.hooks"}


def source_modules() -> dict[str, Path]:
    """Every module of the distribution, by the name it is imported as."""
    files = {}
    for folder, package in INSTALLED_AS.items():
        for f in (ROOT / folder).rglob("*.py"):
            parts = f.relative_to(ROOT / folder).with_suffix("").parts
            files[".".join((package, *parts)).removesuffix(".__init__")] = f
    return files


def import_graph() -> dict[str, set[str]]:
    files = source_modules()
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, f in files.items():
        for node in ast.walk(ast.parse(f.read_text())):
            targets = []
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("cmc"):
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            graph[name] |= {t for t in targets if t in files and t not in ("cmc", name)}
    return graph


def test_no_import_circle_in_cmc():
    graph = import_graph()
    assert len(graph) > 20
    cycles, state, stack = [], {}, []

    def visit(node: str) -> None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(" -> ".join([*stack[stack.index(nxt) :], nxt]))
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert cycles == []


def test_the_cards_top_level_layout():
    for entry in ("pyproject.toml", "README.md"):
        assert (ROOT / entry).is_file(), entry
    for entry in ("cmc", "hooks", "training", "tests"):
        assert (ROOT / entry).is_dir(), entry
    assert (ROOT / "hooks" / "prepare-commit-msg").read_text().startswith("#!/bin/sh")
    assert (ROOT / "training" / "train.py").is_file()
    # One home each: nothing left at the old places.
    assert not (ROOT / "cmc" / "training").exists() and not (ROOT / "cmc" / "resources").exists()
    modules = source_modules()
    assert "cmc.training.train" in modules and "cmc.training.recipes.trip" in modules


IMPORT_CHECK = """
import importlib.util, json, sys
import cmc, cmc.hooks, cmc.training.train, cmc.training.recipes.trip
from cmc.hook import script_template
print(json.dumps({"cmc": cmc.__file__, "training": cmc.training.__file__,
                  "script": script_template(),
                  "top_level": [n for n in ("training", "hooks")
                                if importlib.util.find_spec(n) is not None]}))
"""


def _import_check(python: str, cwd: Path, env: dict | None = None) -> dict:
    out = subprocess.run([python, "-c", IMPORT_CHECK], cwd=cwd, capture_output=True, text=True,
                         env={**os.environ, **(env or {})}, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout)


@pytest.mark.slow
def test_a_wheel_installs_training_and_hooks_inside_cmc_only(tmp_path: Path):
    # Built from a copy: an in-tree build would leave build/ behind, and stale files in it.
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "runs", "*.egg-info", "__pycache__", "node_modules"))  # fmt: skip
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(wheels), str(source)], check=True, capture_output=True,
                   timeout=600)  # fmt: skip
    (wheel,) = wheels.glob("cmc-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"cmc", wheel.name.split("-py")[0] + ".dist-info"}
    assert "cmc/hooks/prepare-commit-msg" in names and "cmc/training/train.py" in names
    assert "cmc/training/recipes/trip_on_device.sh" in names
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target",
                    str(target), str(wheel)], check=True, capture_output=True,
                   timeout=600)  # fmt: skip
    packages = [p.name for p in target.iterdir() if p.name not in ("bin",)]  # bin: the script
    assert sorted(p for p in packages if not p.endswith(".dist-info")) == ["cmc"]
    seen = _import_check(sys.executable, tmp_path, {"PYTHONPATH": str(target)})
    assert Path(seen["cmc"]).is_relative_to(target)
    assert Path(seen["training"]) == target / "cmc" / "training" / "__init__.py"
    assert seen["script"] == (ROOT / "hooks" / "prepare-commit-msg").read_text()
    assert seen["top_level"] == []


@pytest.mark.slow
def test_an_editable_install_maps_the_folders(tmp_path: Path):
    """setuptools' editable installs of mapped sub-packages have had bugs (a namespace package
    inside a regular one is not found): the real thing, in a fresh environment."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    # The dependencies (and pip, setuptools) of this environment, without cmc itself.
    (Path(site) / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {"PYTHONNOUSERSITE": "1"}
    out = subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                          "--ignore-installed", "-e", str(ROOT)], capture_output=True, text=True,
                         env={**os.environ, **env}, timeout=600)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    seen = _import_check(python, tmp_path, env)
    assert Path(seen["cmc"]) == ROOT / "cmc" / "__init__.py"
    assert Path(seen["training"]) == ROOT / "training" / "__init__.py"
    assert seen["script"] == (ROOT / "hooks" / "prepare-commit-msg").read_text()
    assert seen["top_level"] == []


def test_every_command_option_has_help():
    import click

    from cmc.cli import main

    def missing(cmd: click.Command, path: str):
        if isinstance(cmd, click.Group):
            for name, sub in cmd.commands.items():
                yield from missing(sub, f"{path} {name}")
            return
        for p in cmd.params:
            if isinstance(p, click.Option) and not p.hidden and not p.help:
                yield f"{path} {p.opts[0]}"

    assert list(missing(main, "cmc")) == []


def test_every_cmc_variable_is_read_in_settings_only():
    """One settings surface: a `CMC_*` name appears as a string only in cmc.settings, which lists
    each one it reads (and refuses to read one it does not list)."""
    import re

    from cmc.settings import ENVIRONMENT, _env

    name = re.compile(r"CMC_[A-Z0-9_]+")
    elsewhere, in_settings = [], set()
    for module, path in source_modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                found = set(name.findall(node.value)) if module == "cmc.settings" else set()
                if module == "cmc.settings":
                    in_settings |= found
                elif name.fullmatch(node.value) or re.search(r"CMC_[A-Z_]+=?$", node.value):
                    elsewhere.append(f"{module}: {node.value}")
    assert elsewhere == []
    assert {n for n in in_settings if n != "CMC_"} <= set(ENVIRONMENT)
    with pytest.raises(KeyError):
        _env("CMC_NOT_LISTED")


def test_boolean_variables_take_every_spelling(monkeypatch):
    from cmc.settings import daemon_disabled_by_env, prefetch_enabled

    for value, disabled in (("1", True), ("true", True), ("YES", True), ("0", False), ("", False)):
        monkeypatch.setenv("CMC_NO_DAEMON", value)
        assert daemon_disabled_by_env() is disabled, value
    for value, enabled in (("0", False), ("false", False), ("off", False), ("1", True), ("", True)):
        monkeypatch.setenv("CMC_PREFETCH", value)
        assert prefetch_enabled() is enabled, value


def test_the_readme_is_short_and_its_links_and_commands_hold():
    import re

    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 200
    for link in re.findall(r"\]\(([^)#:]+)\)", text):
        assert (ROOT / link).exists(), link
    blocks = re.findall(r"```sh\n(.*?)```", text, re.S)
    setup, tests = blocks[0].strip(), blocks[1].strip()
    assert setup.startswith("python3 -m venv .venv") and "cmc hook install" in setup
    ci = (ROOT / ".ci" / "run").read_text().replace(" -q ", " ")  # CI installs quietly
    for step in tests.split("&&")[1:]:  # CI runs each step of the README's test command
        assert step.strip() in ci, step
