"""The layers of `shared/src` import each other in one direction only (docs/architecture.md):
no import circle between two modules of the crate (a module = a top-level file such as
`config.rs`, or a file or folder under `adapters/`, `app/`, `domain/`, `http/`, `ports/`,
`store/`, ...); a module's own submodules may use their parent."""

from __future__ import annotations

import re
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "shared" / "src"
USE = re.compile(r"\buse\s+crate::([\s\S]*?);")
PATH = re.compile(r"\bcrate::([a-z_]+)(?:::([a-z_]+))?")


def unit_of(file: Path) -> str:
    """`store/orders.rs` -> `store::orders`, `store/mod.rs` -> `store`, `config.rs` -> `config`."""
    parts = list(file.relative_to(SRC).with_suffix("").parts)
    if parts[-1] in ("mod", "lib"):
        parts = parts[:-1]
    return "::".join(parts[:2]) or "lib"


def units() -> set[str]:
    return {unit_of(f) for f in SRC.rglob("*.rs")}


def target(first: str, second: str | None, known: set[str]) -> str:
    candidate = f"{first}::{second}" if second else first
    return candidate if candidate in known else first


def imports() -> dict[str, set[str]]:
    known = units()
    graph: dict[str, set[str]] = {u: set() for u in known}
    for file in SRC.rglob("*.rs"):
        text = file.read_text()
        # Test modules may reach anywhere; they are not part of the layering.
        text = text.split("#[cfg(test)]")[0]
        here = unit_of(file)
        for m in PATH.finditer(text):
            there = target(m.group(1), m.group(2), known)
            # A parent and its children are one unit of layering.
            if there != here and not here.startswith(there + "::") and not there.startswith(here + "::"):
                graph[here].add(there)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found, state, stack = [], {}, []

    def visit(node: str) -> None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                found.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return found


def test_no_import_circles_in_shared():
    assert cycles(imports()) == []


def test_the_check_sees_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]


def test_error_and_domain_depend_on_no_layer_above_them():
    graph = imports()
    assert graph["error"] == set(), graph["error"]
    above = ("app", "http", "store", "adapters", "config")
    for unit, deps in graph.items():
        if unit.startswith("domain"):
            assert not any(d.split("::")[0] in above for d in deps), (unit, deps)
