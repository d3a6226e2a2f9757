"""The package layout: imports run one way, through each package's __init__, with no cycles."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

PIPELINE = Path(__file__).resolve().parent.parent / "pipeline"

# Lower stages first; a module imports only from its own package or a lower stage.
STAGES = (
    ("common",),
    ("inputs",),
    ("models",),
    ("outputs",),
    ("destinations", "similarity", "report"),
    ("options",),
    ("run",),
    ("console",),
    (None,),  # the top level: job, plan, cli, launch, ...
)
RANK = {package: rank for rank, packages in enumerate(STAGES) for package in packages}


def module_name(path: Path) -> str:
    parts = path.relative_to(PIPELINE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_of(module: str) -> str | None:
    """The stage package of pipeline.PACKAGE.x, None for a top-level module."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in RANK else None


def imports_of(path: Path) -> list[tuple[str, list[str], int]]:
    """(module, names, line) of every pipeline import in the file, also inside functions."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if (
            isinstance(node, ast.ImportFrom)
            and node.module
            and node.module.split(".")[0] == ("pipeline")
        ):
            found.append((node.module, [alias.name for alias in node.names], node.lineno))
        elif isinstance(node, ast.Import):
            found += [
                (alias.name, [], node.lineno)
                for alias in node.names
                if alias.name.split(".")[0] == "pipeline"
            ]
    return found


def imported_modules(module: str, names: list[str]) -> list[str]:
    """`from pipeline.x import y` imports pipeline.x.y when y is a module, else pipeline.x."""
    submodules = [f"{module}.{name}" for name in names if _is_module(f"{module}.{name}")]
    return submodules or [module]


def _is_module(name: str) -> bool:
    path = PIPELINE.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


SOURCES = sorted(PIPELINE.rglob("*.py"))


def layering_violations(sources: list[Path]) -> list[str]:
    """Every import that goes up a stage, across sibling stages, or around a package's
    __init__ into another package's modules."""
    found = []
    for path in sources:
        importer = module_name(path)
        own = package_of(importer)
        for module, _names, line in imports_of(path):
            target = package_of(module)
            where = f"{path.relative_to(PIPELINE.parent)}:{line} imports {module}"
            if target == own:
                continue
            if RANK[target] > RANK[own] or (RANK[target] == RANK[own] and target != own):
                found.append(f"{where}: up or across, {own or 'top'} to {target or 'top'}")
            elif target is not None and module != f"pipeline.{target}":
                found.append(f"{where}: not through pipeline.{target}")
    return found


def import_cycle(sources: list[Path]) -> list[str] | None:
    """One cycle among the modules' imports, or None."""
    graph: dict[str, set[str]] = {}
    for path in sources:
        importer = module_name(path)
        graph[importer] = set()
        for module, names, _line in imports_of(path):
            graph[importer].update(imported_modules(module, names))
        package = importer.rsplit(".", 1)[0]
        if package != importer and package in {module_name(s) for s in sources}:
            graph[importer].add(package)  # importing a submodule runs its package first
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = "open"
        for target in sorted(graph.get(node, ())):
            if target == node or target.startswith(node + "."):
                continue  # a package's __init__ importing its own modules is no cycle
            if state.get(target) == "open":
                return [*path[path.index(target) :], target] if target in path else [node, target]
            if target not in state and (cycle := visit(target, [*path, target])):
                return cycle
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start, [start])):
            return cycle
    return None


def test_no_module_imports_up_a_stage_or_around_a_packages_init():
    assert layering_violations(SOURCES) == []


def test_the_modules_import_no_cycle():
    assert import_cycle(SOURCES) is None


@pytest.mark.parametrize("package", [name for name in RANK if name])
def test_each_package_exports_what_its_init_names(package):
    module = importlib.import_module(f"pipeline.{package}")
    assert module.__doc__, f"pipeline/{package}/__init__.py says what the package holds"
    for name in module.__all__:
        assert hasattr(module, name), f"pipeline.{package} exports {name} but has none"


def test_other_packages_import_only_exported_names():
    for path in SOURCES:
        own = package_of(module_name(path))
        for module, names, line in imports_of(path):
            target = package_of(module)
            if target and target != own and module == f"pipeline.{target}":
                exported = importlib.import_module(module).__all__
                assert set(names) <= set(exported), f"{path}:{line} {set(names) - set(exported)}"


def test_the_checks_find_an_upward_import_an_import_around_init_and_a_cycle(tmp_path):
    """The checks above can fail: a made-up tree with each fault."""
    root = tmp_path / "pipeline"
    for folder in ("inputs", "outputs"):
        (root / folder).mkdir(parents=True)
        (root / folder / "__init__.py").write_text("")
    (root / "job.py").write_text("from pipeline.outputs.sinks import x\n")
    (root / "inputs" / "sources.py").write_text("from pipeline import job\n")
    (root / "outputs" / "sinks.py").write_text("from pipeline.outputs import other\n")
    (root / "outputs" / "other.py").write_text("from pipeline.outputs import sinks\n")
    sources = sorted(root.rglob("*.py"))
    global PIPELINE
    saved, PIPELINE = PIPELINE, root
    try:
        violations = layering_violations(sources)
        cycle = import_cycle(sources)
    finally:
        PIPELINE = saved
    assert sorted(violations) == [
        "pipeline/inputs/sources.py:1 imports pipeline: up or across, inputs to top",
        "pipeline/job.py:1 imports pipeline.outputs.sinks: not through pipeline.outputs",
    ]
    assert cycle is not None and {"pipeline.outputs.sinks", "pipeline.outputs.other"} <= set(cycle)
