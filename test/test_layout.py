"""The package's layers import one way, read from the source (every import statement, also inside functions):
offline (the top-level offline/ folder, installed as rgbd_fusion_seg.offline) -> ros -> serving -> core ->
models. A module may import its own layer and the layers below it, never one above; and no two modules import
each other. A planted bad import of each kind must be caught, so the checks can fail."""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "rgbd_fusion_seg"
LAYERS = ("offline", "ros", "serving", "core", "models")  # highest first


def source_modules(repo: Path) -> dict[str, Path]:
    """Every module of the package by its dotted name: rgbd_fusion_seg/ and offline/ (as rgbd_fusion_seg.offline)."""
    modules = {}
    for folder, prefix in ((repo / PACKAGE, (PACKAGE,)), (repo / "offline", (PACKAGE, "offline"))):
        for path in sorted(folder.rglob("*.py")):
            parts = prefix + path.relative_to(folder).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def imports(name: str, path: Path) -> list[tuple[str, int]]:
    """(imported dotted name, line) of every import in the module, relative ones resolved; a from-import names
    each imported name under its module (a submodule or an attribute, the layer is the same)."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            found += [(f"{base}.{alias.name}", node.lineno) for alias in node.names]
    return found


def layer(name: str) -> str | None:
    parts = name.split(".")
    return parts[1] if parts[0] == PACKAGE and len(parts) > 1 and parts[1] in LAYERS else None


def upward_imports(repo: Path) -> list[str]:
    """Each import of a higher layer than the importing module's, as 'file:line: module (layer) imports name'."""
    wrong = []
    for name, path in source_modules(repo).items():
        own = layer(name)
        for target, line in imports(name, path):
            other = layer(target)
            if own and other and LAYERS.index(other) < LAYERS.index(own):
                wrong.append(f"{path.relative_to(repo)}:{line}: {name} ({own}) imports {target} ({other})")
    return wrong


def mutual_imports(repo: Path) -> list[str]:
    """Each pair of modules that import each other (a from-import counts for the module it names)."""
    modules = source_modules(repo)

    def module_of(target: str) -> str:  # "" for a module outside the package
        while target and target not in modules:
            target = target.rpartition(".")[0]
        return target

    edges = {(name, module_of(target)) for name, path in modules.items() for target, _ in imports(name, path)}
    return sorted(f"{a} <-> {b}" for a, b in edges if a < b and (b, a) in edges)


def test_every_import_runs_down_the_layers():
    assert upward_imports(REPO) == []


def test_no_two_modules_import_each_other():
    assert mutual_imports(REPO) == []


def test_planted_imports_against_the_layers_or_in_a_cycle_are_caught(tmp_path):
    planted = {
        f"{PACKAGE}/__init__.py": "",
        f"{PACKAGE}/models/__init__.py": "",
        f"{PACKAGE}/models/blocks.py": "from rgbd_fusion_seg.core import checkpoint\n",  # absolute
        f"{PACKAGE}/core/__init__.py": "",
        f"{PACKAGE}/core/checkpoint.py": "from ..models import blocks\n",  # down: allowed
        f"{PACKAGE}/serving/__init__.py": "",
        f"{PACKAGE}/serving/model_serving.py": "def export():\n    from ..offline.export import run\n",  # in a function
        f"{PACKAGE}/ros/__init__.py": "",
        f"{PACKAGE}/ros/node.py": "import rgbd_fusion_seg.serving.model_serving\n",  # down: allowed
        "offline/__init__.py": "",
        "offline/export.py": "from . import bench\nrun = None\n",
        "offline/bench.py": "from .export import run\n",  # offline's modules: one layer, but a cycle
    }
    for name, text in planted.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert upward_imports(tmp_path) == [
        f"{PACKAGE}/models/blocks.py:1: {PACKAGE}.models.blocks (models) imports {PACKAGE}.core.checkpoint (core)",
        f"{PACKAGE}/serving/model_serving.py:2: {PACKAGE}.serving.model_serving (serving) imports "
        f"{PACKAGE}.offline.export.run (offline)",
    ]
    assert mutual_imports(tmp_path) == [
        f"{PACKAGE}.core.checkpoint <-> {PACKAGE}.models.blocks",
        f"{PACKAGE}.offline.bench <-> {PACKAGE}.offline.export",
    ]
