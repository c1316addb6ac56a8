"""The package's folders are its architecture: no module imports a layer above its own."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "apga"

# Lowest first. A module may import its own layer and the layers below it.
LAYERS = [
    ("apga", "apga.errors", "apga.config", "apga.utils", "apga.distributed"),
    ("apga.data",),
    ("apga.models",),
    ("apga.methods",),
    ("apga.evaluation",),
    ("apga.reporting",),
    ("apga.training",),
    ("apga.experiment",),
    ("apga.cli", "apga.predict", "apga.report", "apga.sweep"),
]


def layer_of(module: str) -> int:
    best = None
    for number, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and (best is None or len(prefix) > best[1]):
                best = (number, len(prefix))
    assert best is not None, f"{module} belongs to no layer: add it to LAYERS"
    return best[0]


def module_name(path: Path, package: Path) -> str:
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _main_block(node) -> bool:
    """`if __name__ == "__main__":`: a module's command line, an entry point of its own."""
    return (isinstance(node, ast.If) and isinstance(node.test, ast.Compare) and isinstance(node.test.left, ast.Name)
            and node.test.left.id == "__name__")


def imported(path: Path, package: Path) -> set[str]:
    """The apga modules `path` imports (`from apga.x import y` counts y when it is a module), outside its
    `__main__` block (which may use the entry points' layer: `python -m apga.data.synthetic`)."""
    names = set()
    tree = ast.parse(path.read_text())
    tree.body = [node for node in tree.body if not _main_block(node)]
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("apga"):
            names.add(node.module)
            folder = package.parent / node.module.replace(".", "/")
            names |= {f"{node.module}.{alias.name}" for alias in node.names
                      if (folder / alias.name).is_dir() or (folder / f"{alias.name}.py").is_file()}
        elif isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names if alias.name.startswith("apga")}
    return names


def upward_imports(package: Path) -> list[str]:
    upward = []
    for path in sorted(package.rglob("*.py")):
        module = module_name(path, package)
        for name in imported(path, package):
            if name != "apga" and layer_of(name) > layer_of(module):
                upward.append(f"{module} imports {name}")
    return upward


def test_no_module_imports_a_layer_above_its_own():
    assert not upward_imports(ROOT), upward_imports(ROOT)


def test_the_layer_check_sees_an_upward_import(tmp_path):
    """The check itself: an evaluation module that imports the training loop is reported."""
    package = tmp_path / "apga"
    (package / "evaluation").mkdir(parents=True)
    (package / "training").mkdir()
    (package / "training" / "loop.py").write_text("")
    (package / "evaluation" / "metrics.py").write_text("from apga.training import loop\n")
    assert sorted(upward_imports(package)) == ["apga.evaluation.metrics imports apga.training",
                                       "apga.evaluation.metrics imports apga.training.loop"]


def test_top_level_holds_only_foundations_and_entry_points():
    top = sorted(p.stem for p in ROOT.glob("*.py"))
    assert top == sorted(["__init__", "errors", "config", "utils", "distributed", "models", "experiment", "cli",
                          "predict", "report"] + (["sweep"] if (ROOT / "sweep.py").exists() else [])), top
