"""The layout's rules (attnvgg_export/__init__.py), read from the source with ast: which sub-package
may import which, the box-side package (box/attnvgg_runtime) importing nothing of the toolchain,
no import cycles (imports inside functions count: deferring one does not remove it), torch at
module level only in graphs/ and runtime/eager.py, and the measures, budgets and CPU readers
importable where torch is not installed."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# sub-package -> the sub-packages it may import ("common": attnvgg_export/console.py, cli.py; "box":
# the box-side package attnvgg_runtime, which every layer may import and which imports none of
# them; models/ and calibration/, the variants and the images, under every stage)
BASE = {"box", "models", "calibration"}
ALLOWED = {
    "box": set(),
    "models": {"box"},
    "calibration": {"models", "box"},
    "common": {"box", "models"},
    "manifest": {"common"} | BASE,
    "runtime": {"common", "manifest"} | BASE,
    "report": {"common", "manifest"} | BASE,
    "convert": {"common", "manifest", "runtime"} | BASE,
    "verify": {"common", "manifest", "runtime", "report"} | BASE,
    "bench": {"common", "manifest", "runtime", "report"} | BASE,
    "graphs": {"common", "manifest", "runtime", "verify", "convert"} | BASE,
}
TOOLCHAIN = ("attnvgg_export", "benchmarks")
# they dispatch to every stage: the command, and the API that runs the whole chain
ENTRY_POINTS = {"attnvgg_export.cli", "attnvgg_export.__main__", "attnvgg_export.api"}
TORCH_ALLOWED = ("attnvgg_export.graphs.", "attnvgg_export.runtime.eager", "attnvgg_export.models.",
                 "attnvgg_export.calibration.")
TORCH_FREE = ("attnvgg_export", "attnvgg_export.models", "attnvgg_export.verify",
              "attnvgg_export.verify.budgets", "attnvgg_export.verify.structure", "attnvgg_export.runtime",
              "attnvgg_export.report.report", "attnvgg_runtime", "attnvgg_runtime.cli",
              "attnvgg_runtime.readers.tensorrt", "attnvgg_runtime.readers.emulated_reader")


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    return isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def imports(path: Path, root: Path) -> list[tuple[str, bool]]:
    """(imported module, at module level) for every import in the file, TYPE_CHECKING blocks
    left out; ``from package import submodule`` names the submodule."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: list[tuple[str, bool]] = []

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                continue
            inner = top and not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                found.extend((alias.name, top) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".")[:len(package.split(".")) - child.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                for alias in child.names:
                    candidate = f"{base}.{alias.name}"
                    is_module = any((r / Path(*candidate.split("."))).with_suffix(".py").is_file() or
                                    (r / Path(*candidate.split(".")) / "__init__.py").is_file()
                                    for r in (root, root.parent / "box", root.parent))
                    found.append((candidate if is_module else base, top))
            visit(child, inner)

    visit(ast.parse(path.read_text()), True)
    return found


def import_graph(root: Path) -> dict[str, list[tuple[str, bool]]]:
    """Every module of the toolchain (attnvgg_export/) and of the box-side package, with its imports."""
    graph = {}
    for base, package in ((root, "attnvgg_export"), (root / "box", "attnvgg_runtime")):
        graph |= {module_name(p, base): imports(p, base) for p in sorted((base / package).rglob("*.py"))}
    return graph


def layer(module: str) -> str:
    if module.split(".")[0] == "attnvgg_runtime":
        return "box"
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in ALLOWED) else "common"


def layer_violations(graph: dict) -> list[str]:
    found = []
    for module, imported in graph.items():
        if module in ENTRY_POINTS or module == "attnvgg_export":
            continue
        for target, _ in imported:
            if layer(module) == "box" and target.split(".")[0] in TOOLCHAIN:
                found.append(f"{module} imports {target}: the box-side package imports nothing "
                             f"of the toolchain (it installs without it)")
                continue
            if not target.startswith(("attnvgg_export.", "attnvgg_runtime")) or target in ENTRY_POINTS:
                continue
            source, into = layer(module), layer(target)
            if into != source and into not in ALLOWED[source]:
                found.append(f"{module} imports {target}: {source}/ may import only "
                             f"{', '.join(sorted(ALLOWED[source])) or 'nothing'}")
    return found


def cycles(graph: dict) -> list[list[str]]:
    """Every import cycle among the modules, one per strongly connected set."""
    edges = {m: sorted({t for t, _ in imported if t in graph and t != m}) for m, imported in graph.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def connect(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in edges[node]:
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in edges:
        if node not in index:
            connect(node)
    return found


def torch_at_module_level(graph: dict) -> list[str]:
    return [f"{module} imports {target} at module level" for module, imported in graph.items()
            for target, top in imported
            if top and target.split(".")[0] in ("torch", "torchvision")
            and not module.startswith(TORCH_ALLOWED)]


def test_every_sub_package_imports_only_the_layers_below_it():
    assert layer_violations(import_graph(ROOT)) == []


def test_no_module_of_the_toolchain_is_in_an_import_cycle():
    assert cycles(import_graph(ROOT)) == []


def test_torch_is_imported_at_module_level_only_by_graphs_and_the_eager_reader():
    assert torch_at_module_level(import_graph(ROOT)) == []


def _copy_tree(tmp_path: Path) -> Path:
    copy = tmp_path / "tree"
    for part in ("attnvgg_export", "box/attnvgg_runtime"):
        shutil.copytree(ROOT / part, copy / part, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


def _planted(tmp_path: Path, module: str, line: str) -> Path:
    copy = _copy_tree(tmp_path)
    base = copy / "box" if module.startswith("attnvgg_runtime") else copy
    path = base / Path(*module.split(".")).with_suffix(".py")
    path.write_text(path.read_text() + f"\n\ndef planted():\n    {line}\n")
    return copy


@pytest.mark.parametrize(("module", "line", "violation"), [
    # a forbidden import, even inside a function
    ("attnvgg_export.verify.structure", "from attnvgg_export.graphs.export import peak_rss_mib",
     "attnvgg_export.verify.structure imports attnvgg_export.graphs.export: verify/ may import only "
     "box, calibration, common, manifest, models, report, runtime"),
    # the box-side package importing the toolchain
    ("attnvgg_runtime.verify.measures", "from attnvgg_export.models import create_model",
     "attnvgg_runtime.verify.measures imports attnvgg_export.models: the box-side package imports "
     "nothing of the toolchain (it installs without it)"),
])
def test_the_rules_catch_a_planted_import(tmp_path, module, line, violation):
    assert layer_violations(import_graph(_planted(tmp_path, module, line))) == [violation]


def test_the_rules_catch_a_cycle_made_by_a_deferred_import(tmp_path):
    tree = _planted(tmp_path, "attnvgg_runtime.readers.cpu",
                    "from attnvgg_runtime.readers.emulated_reader import main")
    found = cycles(import_graph(tree))
    assert found and {"attnvgg_runtime.readers.cpu",
                      "attnvgg_runtime.readers.emulated_reader"} <= set(found[0])


def test_the_rules_catch_torch_imported_at_module_level(tmp_path):
    tree = _copy_tree(tmp_path)
    path = tree / "attnvgg_export" / "verify" / "budgets.py"
    path.write_text("import torch\n" + path.read_text())
    assert torch_at_module_level(import_graph(tree)) == [
        "attnvgg_export.verify.budgets imports torch at module level"]


@pytest.mark.parametrize("blocked", [("torch", "torchvision")])
def test_measures_budgets_and_cpu_readers_import_without_torch(blocked):
    """As in a venv without torch: torch cannot be imported at all (sys.modules[name] = None)."""
    script = (f"import sys\nfor name in {blocked!r}: sys.modules[name] = None\n"
              + "".join(f"import {m}\n" for m in TORCH_FREE)
              + "from attnvgg_export.verify.budgets import load_tolerances\n"
              + "from attnvgg_runtime.verify.budgets import breaches\n"
              + "from attnvgg_runtime.verify.measures import metrics\n"
              + "import numpy as np\n"
              + "x = np.eye(4, dtype=np.float32)\n"
              + "print(breaches(metrics(x, x), load_tolerances('se')['int8'], trained=True))\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"
