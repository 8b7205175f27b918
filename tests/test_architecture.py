"""The house's rooms: dependencies between the packages point one way, and no module imports itself in a circle.

Read from the source with ast (nothing is imported), every import counted, function-level ones too.
"""

import ast
import inspect
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOP = ("idap", "components", "pipelines", "benchmarks")

# what each package of idap/ may import from idap/ (besides itself); everything else is a wrong-way arrow
ALLOWED = {
    "idap.atomic": set(),
    "idap._moved": set(),  # the deprecated flat paths: strings only
    "idap.measure": {"idap.atomic"},
    "idap.models": {"idap.atomic", "idap.measure"},
    "idap.bundle": {"idap.atomic", "idap.measure", "idap.models"},
    "idap.data": {"idap.atomic", "idap.measure", "idap.bundle"},
    "idap.prune": {"idap.atomic", "idap.measure", "idap.models", "idap.bundle", "idap.data"},
    "idap.report": {"idap.atomic", "idap.measure", "idap.models", "idap.bundle", "idap.data", "idap.prune"},
    "idap.dense": {"idap.atomic", "idap.measure", "idap.models", "idap.bundle", "idap.data", "idap.prune",
                   "idap.report"},
}
# leaf modules every package may use: whole-or-nothing writes, the deprecated paths' table
LEAVES = {"idap.atomic", "idap._moved"}
# the method may use data's shared types, never a loader
PRUNE_MAY_USE_FROM_DATA = {"idap.data.splits"}


def modules() -> dict[str, Path]:
    found = {}
    for top in TOP:
        for path in (ROOT / top).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if "work" in parts:
                continue
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


MODULES = modules()


def imports_of(name: str, path: Path) -> set[str]:
    """The project modules ``name`` imports (``from a.b import c`` counts as a.b.c when that is a module)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        for target in targets:
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


GRAPH = {name: imports_of(name, path) for name, path in MODULES.items()}


def package_of(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "idap" and len(parts) > 1 else parts[0]


def test_no_import_circles():
    index, low, stack, on, circles = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                circles.append(sorted(comp))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    assert not circles, f"import circles: {circles}"


def test_the_layers_point_one_way():
    wrong = []
    for name, targets in GRAPH.items():
        for target in targets:
            src, dst = name.split(".")[0], target.split(".")[0]
            if src == "idap" and dst != "idap":
                wrong.append(f"{name} -> {target} (idap imports no orchestration)")
            elif src == "components" and dst in ("pipelines", "benchmarks"):
                wrong.append(f"{name} -> {target}")
            elif src == "pipelines" and dst == "benchmarks":
                wrong.append(f"{name} -> {target}")
    assert not wrong, wrong


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_a_package_of_idap_imports_only_the_packages_below_it(package):
    wrong = []
    for name, targets in GRAPH.items():
        if package_of(name) != package:
            continue
        for target in targets:
            dst = package_of(target)
            if dst != package and dst.startswith("idap.") and dst not in ALLOWED[package] | LEAVES:
                wrong.append(f"{name} -> {target}")
            if package == "idap.prune" and dst == "idap.data" and target not in PRUNE_MAY_USE_FROM_DATA:
                wrong.append(f"{name} -> {target} (the method uses data's shared types, never a loader)")
    assert not wrong, wrong


def test_nothing_in_idap_imports_the_command_line():
    users = [n for n, t in GRAPH.items() if n.startswith("idap.") and package_of(n) not in ("idap.cli", "idap.__main__")
             and any(package_of(x) == "idap.cli" for x in t)]
    assert not users, users


def test_the_service_package_imports_no_step():
    steps = {n for n in MODULES if n.startswith("components.") and not n.startswith("components.services")}
    wrong = [f"{n} -> {t}" for n, ts in GRAPH.items() if n.startswith("components.services") for t in ts & steps]
    assert not wrong, wrong


def test_no_module_is_over_400_lines():
    long = {n: len(p.read_text().splitlines()) for n, p in MODULES.items()}
    assert not {n: k for n, k in long.items() if k > 400}


def test_every_package_says_what_it_holds():
    for name, path in MODULES.items():
        if path.name == "__init__.py" and name.startswith("idap."):
            assert ast.get_docstring(ast.parse(path.read_text())), f"{name}/__init__.py has no docstring"


def test_the_old_flat_paths_still_import_with_a_deprecation_warning():
    import importlib
    import sys

    import idap
    from idap._moved import MOVED

    for old, homes in MOVED.items():
        leaf = old.rpartition(".")[2]
        # idap.compress: the function keeps its name, the old module path forwards (an old path an earlier test
        # imported is also an attribute of the package by then, but a module: that case is the one below)
        if hasattr(idap, leaf) and not inspect.ismodule(getattr(idap, leaf)):
            with pytest.warns(DeprecationWarning, match=homes[0]):
                assert importlib.import_module(old).run_stages is importlib.import_module(homes[0]).run_stages
            continue
        sys.modules.pop(old, None)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            module = importlib.import_module(old)
        assert any(issubclass(w.category, DeprecationWarning) and homes[0] in str(w.message) for w in caught), old
        if len(homes) == 1:
            assert module is importlib.import_module(homes[0])
    from idap.filter_stage import run_filter_stage  # the old spelling of a name

    from idap.prune.filter_stage import run_filter_stage as new

    assert run_filter_stage is new
    with pytest.warns(DeprecationWarning, match="idap.report.evaluate"):
        from idap.report import layer_widths  # noqa: F401  (a name of the former idap/report.py)
    assert callable(idap.compress) and idap.compress.__module__ == "idap.prune.compress"  # still the function
