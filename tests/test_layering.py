"""Data flows one way: no package of atlas_gan imports a package above it (function-level imports included)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "atlas_gan"

LAYERS: list[set[str]] = [  # bottom to top; a module may import its own layer's package and any layer below
    {"config"},
    {"storage", "locks"},
    {"samples", "labels"},
    {"geo", "shards"},
    {"preview", "ingest", "tile_index", "split", "figures"},
    {"losses", "models", "degrade", "perceptual"},
    {"runtime"},  # shared at run time by everything above: process groups, checkpoints, loading a generator
    {"export", "recipes"},
    {"train"},
    {"metrics"},  # plugs into training as a hook
    {"tracking"},  # plugs into training as a hook; registers what metrics scored
    {"sampling", "translate"},  # whole-scene inference with a registered or trained generator
    {"pipeline"},
    {"cli"},
]
ENTRY_POINTS = {  # may wire anything together
    "train/__main__.py": "the torchrun entry point adds the evaluation and MLflow hooks to the loop",
}
LEVEL = {package: level for level, packages in enumerate(LAYERS) for package in packages}


def imported_packages(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        found |= {name.split(".")[1] for name in names if name.startswith("atlas_gan.")}
    return found


def modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def package_of(path: Path) -> str:
    return path.relative_to(PACKAGE).parts[0].removesuffix(".py")


def test_every_package_has_a_layer():
    packages = {package_of(p) for p in modules()} - {"__init__"}
    assert packages == set(LEVEL), f"add {sorted(packages - set(LEVEL))} to LAYERS (or drop {set(LEVEL) - packages})"


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_imports_a_package_above_its_own(path):
    if str(path.relative_to(PACKAGE)) in ENTRY_POINTS or package_of(path) == "__init__":
        return
    own = package_of(path)
    above = sorted(p for p in imported_packages(path) if p != own and LEVEL[p] > LEVEL[own])
    assert not above, f"{path.relative_to(PACKAGE)} ({own}) imports {above}, which sit above it"
