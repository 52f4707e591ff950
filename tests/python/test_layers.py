"""The package layout: every dpa3-internal import points down the layers, and every error
class lives in ``dpa3/errors.py``.

The modules are parsed with :mod:`ast` (nothing is imported), so imports inside functions
count as much as those at the top of a module.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "python" / "dpa3"

#: Layer of each top-level module or subpackage of ``dpa3`` (``""``: ``dpa3/__init__.py``).
#: A module may import from its own layer and the layers below it, never from above.
LAYERS: dict[str, int] = {
    "cli": 6,
    "__main__": 6,
    "export": 5,
    "calculator": 5,
    "convert": 5,
    "model_devi": 5,
    "plot": 5,
    "lammps": 5,
    "train": 4,
    "model": 3,
    "data": 2,
    "config": 1,
    "errors": 0,
    "device": 0,
    "_ops": 0,
    "malloc": 0,
    "atomic_file": 0,
    "": 0,
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The dpa3 modules ``name`` imports (``from X import m`` counts ``X.m`` if a module)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in known)
    return {t for t in found if t == "dpa3" or t.startswith("dpa3.")}


def _layer_key(module: str) -> str:
    return module.split(".")[1] if "." in module else ""


def test_every_module_has_a_layer():
    unplaced = sorted(m for m in _modules() if _layer_key(m) not in LAYERS)
    assert not unplaced, f"add these to LAYERS in {Path(__file__).name}: {unplaced}"


def test_imports_point_down_the_layers():
    modules = _modules()
    assert "dpa3.cli.main" in modules and "dpa3.train.trainer" in modules  # found the package
    upward = []
    for name, path in modules.items():
        own = LAYERS.get(_layer_key(name))
        if own is None:
            continue  # reported by test_every_module_has_a_layer
        for target in sorted(_imports(name, path, set(modules))):
            layer = LAYERS.get(_layer_key(target))
            if layer is not None and layer > own:
                upward.append(f"{name} (layer {own}) imports {target} (layer {layer})")
    assert not upward, "imports pointing up the layers:\n" + "\n".join(upward)


def test_no_imports_by_name():
    """``importlib.import_module("dpa3...")`` would hide an import from the check above."""
    dynamic = [
        f"{name}:{node.lineno}"
        for name, path in _modules().items()
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Call)
        and (
            (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
            or (isinstance(node.func, ast.Name) and node.func.id in ("import_module", "__import__"))
        )
    ]
    assert not dynamic, f"modules imported by name: {dynamic}"


def test_errors_module_imports_nothing_from_dpa3():
    modules = _modules()
    assert _imports("dpa3.errors", modules["dpa3.errors"], set(modules)) == set()


def _defines_exception(node: ast.ClassDef) -> bool:
    names = {b.id if isinstance(b, ast.Name) else getattr(b, "attr", "") for b in node.bases}
    return any(n.endswith(("Error", "Exception")) for n in names)


def test_error_classes_live_in_errors_module():
    elsewhere = [
        f"{name}.{node.name}"
        for name, path in _modules().items()
        if name != "dpa3.errors"
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ClassDef) and _defines_exception(node)
    ]
    assert not elsewhere, f"define these in dpa3/errors.py: {elsewhere}"


@pytest.mark.parametrize(
    ("old_home", "name", "builtin"),
    [
        ("dpa3.config", "ConfigError", ValueError),
        ("dpa3.data.system", "DataError", ValueError),
        ("dpa3.device", "DeviceError", ValueError),
        ("dpa3.train.checkpoint", "CheckpointError", RuntimeError),
        ("dpa3.plot", "PlotError", ValueError),
    ],
)
def test_old_error_names_still_work(old_home, name, builtin):
    """``from dpa3.config import ConfigError`` and ``except ValueError`` keep working."""
    import importlib

    import dpa3.errors

    cls = getattr(importlib.import_module(old_home), name)
    assert cls is getattr(dpa3.errors, name)
    with pytest.raises(builtin):
        raise cls("x")
    with pytest.raises(dpa3.errors.DPA3Error):
        raise cls("x")


def test_only_ops_module_names_torch_ops_dpa3():
    """``torch.ops.dpa3`` (the compiled op library) is reached only through ``dpa3/_ops.py``:
    any other module that writes ``torch.ops.dpa3.<op>`` in code fails here (mentions in strings
    and docstrings are fine)."""
    offenders = []
    for name, path in _modules().items():
        if name == "dpa3._ops":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (
                isinstance(node, ast.Attribute)
                and node.attr == "dpa3"
                and isinstance(node.value, ast.Attribute)
                and node.value.attr == "ops"
            ):
                offenders.append(f"{name}:{node.lineno}")
    assert not offenders, offenders
