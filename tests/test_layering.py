"""Layering: every import inside ``audiomoe`` points down the declared stack (docs/architecture.md).

No exemptions. A module may import its own package or any package on a lower layer; packages that share a layer
(``evaluation`` / ``analysis``, ``recipes`` / ``benchmarks``) may not import each other. Within a package imports
are free, but two modules of one package may not import each other (directly or round a longer loop): the shared
piece belongs one layer down. Top-level and function-level imports count the same.
"""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

# Layer rank of each top-level unit under ``audiomoe``; equal ranks are siblings that may not import each other.
# ``config``, ``runtime``, ``tensors``, ``text``, ``plugins``, ``allocator`` and the package ``__init__`` are the
# bottom helpers.
LAYERS: dict[str, int] = {
    "__init__": 0,
    "config": 0,
    "runtime": 0,
    "tensors": 0,
    "text": 0,
    "plugins": 0,
    "allocator": 0,
    "data": 1,
    "adapters": 2,
    "models": 3,
    "evaluation": 4,
    "analysis": 4,
    "training": 5,
    "recipes": 6,
    "benchmarks": 6,
    "serve": 7,
    "cli": 8,
}
BOTTOM = {name for name, rank in LAYERS.items() if rank == 0}


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def unit_of(module: str) -> str:
    """The layer unit of a dotted ``audiomoe...`` module name: ``audiomoe.models.lalm`` -> ``models``."""
    parts = module.split(".")
    if len(parts) == 1:
        return "__init__"
    return parts[1]


def imported_modules(
    tree: ast.AST, module: str, is_package: bool, modules: set[str]
) -> list[tuple[int, str]]:
    """Every ``audiomoe...`` module the source imports, with its line: absolute, relative, anywhere in the file.

    ``from audiomoe.x import y`` yields ``audiomoe.x``, and also ``audiomoe.x.y`` when that is a module.
    """
    package = module if is_package else module.rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.append((node.lineno, target))
            found += [
                (node.lineno, f"{target}.{a.name}") for a in node.names if f"{target}.{a.name}" in modules
            ]
    return [(line, name) for line, name in found if name == "audiomoe" or name.startswith("audiomoe.")]


def check_layers(root: Path) -> tuple[list[str], dict[str, set[str]]]:
    """Violations (``file:line: audiomoe.A imports audiomoe.B (...)``) and the intra-package import graph."""
    errors: list[str] = []
    graph: dict[str, set[str]] = {}
    modules = {
        module_name(p, root): p
        for p in sorted((root / "audiomoe").rglob("*.py"))
        if "__pycache__" not in p.parts
    }
    for module, path in modules.items():
        src_unit = unit_of(module)
        if src_unit not in LAYERS:
            errors.append(f"{path}:1: audiomoe.{src_unit} is not in the declared layer order")
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        reported: set[tuple[int, str]] = set()
        for line, target in imported_modules(tree, module, path.name == "__init__.py", set(modules)):
            dst_unit = unit_of(target)
            if dst_unit not in LAYERS:
                errors.append(f"{path}:{line}: {module} imports {target} (not in the declared layer order)")
                continue
            if dst_unit == src_unit or {src_unit, dst_unit} <= BOTTOM:
                # one package (the bottom helpers count as one): free, but no cycles
                if target in modules and target != module:
                    graph.setdefault(module, set()).add(target)
                continue
            src_rank, dst_rank = LAYERS[src_unit], LAYERS[dst_unit]
            if (line, dst_unit) in reported:
                continue
            if dst_rank >= src_rank:
                reported.add((line, dst_unit))
                how = "above" if dst_rank > src_rank else "beside"
                errors.append(
                    f"{path}:{line}: {module} imports {target} "
                    f"(layer {dst_unit}={dst_rank} {how} {src_unit}={src_rank})"
                )
    return errors, graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted; a package ``__init__``
    re-exporting its modules is the package itself, so edges into and out of it do not count.
    """
    packages = {m for m in graph} | {t for ts in graph.values() for t in ts}
    inits = {m for m in packages if any(o.startswith(m + ".") for o in packages)}
    edges = {m: {t for t in ts if t not in inits} for m, ts in graph.items() if m not in inits}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in edges.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return cycles


def layering_report(root: Path) -> list[str]:
    errors, graph = check_layers(root)
    return errors + [f"import cycle: {' <-> '.join(cycle)}" for cycle in find_cycles(graph)]


def test_package_imports_point_down_with_no_exemptions() -> None:
    problems = layering_report(SRC)
    assert not problems, "layering violations:\n" + "\n".join(problems)


def test_every_package_has_a_layer() -> None:
    top = SRC / "audiomoe"
    units = {p.name for p in top.iterdir() if (p / "__init__.py").exists()} | {
        p.stem for p in top.glob("*.py")
    }
    assert units <= set(LAYERS), f"add to LAYERS: {sorted(units - set(LAYERS))}"


def write_tree(root: Path, files: dict[str, str]) -> Path:
    """A package tree under ``root/audiomoe``; every folder gets an empty ``__init__.py`` unless given one."""
    for rel, text in files.items():
        path = root / "audiomoe" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for folder in [root / "audiomoe", *(root / "audiomoe").rglob("*/")]:
        if folder.is_dir() and not (folder / "__init__.py").exists():
            (folder / "__init__.py").write_text("")
    return root


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("from audiomoe.training.trainer import Trainer\n", "layer training=5 above models=3"),
        ("def f():\n    from ..training import data\n", "layer training=5 above models=3"),
        ("import audiomoe.cli.main\n", "layer cli=8 above models=3"),
        ("from audiomoe import evaluation\n", "layer evaluation=4 above models=3"),
    ],
)
def test_checker_fails_on_an_upward_import(tmp_path: Path, source: str, expected: str) -> None:
    root = write_tree(tmp_path, {"evaluation/__init__.py": "", "models/bad.py": source})
    problems = layering_report(root)
    assert len(problems) == 1, problems
    assert "models/bad.py:" in problems[0] and "audiomoe.models.bad imports" in problems[0]
    assert expected in problems[0]


def test_checker_fails_on_a_sideways_import_and_allows_down(tmp_path: Path) -> None:
    probe = (
        "from audiomoe.evaluation import stats\nfrom audiomoe.models import lalm\n"
        "from audiomoe.config import ConfigError\nfrom . import other\n"
    )
    root = write_tree(tmp_path, {"config.py": "", "analysis/probe.py": probe, "analysis/other.py": ""})
    problems = layering_report(root)
    assert problems == [
        f"{root}/audiomoe/analysis/probe.py:1: audiomoe.analysis.probe imports audiomoe.evaluation "
        "(layer evaluation=4 beside analysis=4)",
    ]


def test_checker_reports_a_cycle_inside_a_package(tmp_path: Path) -> None:
    root = write_tree(
        tmp_path,
        {
            "models/__init__.py": "from .a import A\nfrom .b import B\n",
            "models/a.py": "def f():\n    from .b import B\n",
            "models/b.py": "from audiomoe.models.c import C\n",
            "models/c.py": "from audiomoe.models import a\n",
        },
    )
    assert layering_report(root) == [
        "import cycle: audiomoe.models.a <-> audiomoe.models.b <-> audiomoe.models.c"
    ]


def layer_line() -> str:
    """The declared order as docs/architecture.md prints it."""
    ranks = sorted(set(LAYERS.values()))
    return " < ".join(" | ".join(sorted(u for u, r in LAYERS.items() if r == rank)) for rank in ranks)


def test_architecture_doc_states_the_enforced_order() -> None:
    doc = (SRC.parent / "docs" / "architecture.md").read_text()
    assert f"`{layer_line()}`" in doc, f"docs/architecture.md must state the enforced order: `{layer_line()}`"


def test_adding_an_upward_import_to_the_real_tree_fails(tmp_path: Path) -> None:
    shutil.copytree(SRC / "audiomoe", tmp_path / "audiomoe", ignore=shutil.ignore_patterns("__pycache__"))
    assert layering_report(tmp_path) == []
    evaluate = tmp_path / "audiomoe" / "evaluation" / "evaluate.py"
    lines = evaluate.read_text().splitlines()
    evaluate.write_text(
        "\n".join([*lines, "", "def later():", "    from audiomoe.training.run import train", ""])
    )
    assert layering_report(tmp_path) == [
        f"{evaluate}:{len(lines) + 3}: audiomoe.evaluation.evaluate imports audiomoe.training.run "
        "(layer training=5 above evaluation=4)"
    ]


def test_bottom_helpers_may_import_each_other_but_not_in_a_cycle(tmp_path: Path) -> None:
    root = write_tree(tmp_path, {"config.py": "import audiomoe.text\n", "text.py": "", "data/x.py": ""})
    assert layering_report(root) == []
    (root / "audiomoe" / "text.py").write_text("from audiomoe import config\n")
    assert layering_report(root) == ["import cycle: audiomoe.config <-> audiomoe.text"]
    (root / "audiomoe" / "text.py").write_text("from audiomoe.data import x\n")
    assert layering_report(root) == [
        f"{root}/audiomoe/text.py:1: audiomoe.text imports audiomoe.data (layer data=1 above text=0)"
    ]
