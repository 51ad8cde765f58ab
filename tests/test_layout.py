"""The package's shape: no import circle inside cmc (lazy imports included), and no top-level
package other than cmc in the distribution."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def import_graph() -> dict[str, set[str]]:
    files = {}
    for f in (ROOT / "cmc").rglob("*.py"):
        name = ".".join(f.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        files[name] = f
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


def test_only_cmc_is_packaged():
    text = (ROOT / "pyproject.toml").read_text()
    assert 'include = ["cmc*"]' in text
    assert not (ROOT / "training").exists() and not (ROOT / "hooks").exists()


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
