"""House rules checked on the source: data flows one way and the core knows none of its front-ends.

- The core (``src/poolkit`` outside ``entrypoints``) imports neither ``poolkit.entrypoints`` nor any
  integration package; integrations find their way in through entry points.
- ``poolkit.entrypoints`` imports no integration either.
- Integrations use the public API: no ``llm.engine`` (the engine's internals).
- ``POOLKIT_*`` variables are read in ``poolkit.settings`` only.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src" / "poolkit"
INTEGRATIONS = {
    "poolkit_faiss": REPO / "integrations" / "faiss" / "poolkit_faiss",
    "langchain_poolkit": REPO / "integrations" / "langchain" / "langchain_poolkit",
    "poolkit_ray": REPO / "integrations" / "ray" / "poolkit_ray",
    "poolkit_lightning": REPO / "integrations" / "lightning" / "poolkit_lightning",
}


def _module_name(path: Path, root: Path, package: str) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join([package, *parts])


def imports_of(path: Path, module: str) -> Iterator[tuple[int, str]]:
    """Absolute names of everything ``path`` imports (relative imports resolved), with line numbers."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            yield node.lineno, base
            for alias in node.names:  # ``from . import entrypoints``
                yield node.lineno, f"{base}.{alias.name}"


def _core_files() -> Iterator[Path]:
    for path in sorted(SRC.rglob("*.py")):
        if "entrypoints" not in path.relative_to(SRC).parts:
            yield path


def _violations(files: Iterator[Path], root: Path, package: str, forbidden: tuple[str, ...]) -> list[str]:
    found = []
    for path in files:
        module = _module_name(path, root, package)
        for line, name in imports_of(path, module):
            if any(name == f or name.startswith(f + ".") for f in forbidden):
                shown = path.relative_to(REPO) if path.is_relative_to(REPO) else path
                found.append(f"{shown}:{line} imports {name}")
    return found


def test_core_imports_no_entrypoint_and_no_integration() -> None:
    forbidden = ("poolkit.entrypoints", *INTEGRATIONS)
    assert _violations(_core_files(), SRC, "poolkit", forbidden) == []


def test_entrypoints_import_no_integration() -> None:
    files = iter(sorted((SRC / "entrypoints").rglob("*.py")))
    assert _violations(files, SRC, "poolkit", tuple(INTEGRATIONS)) == []


def test_the_checker_sees_relative_imports(tmp_path) -> None:
    pkg = tmp_path / "poolkit"
    (pkg / "sub").mkdir(parents=True)
    bad = pkg / "sub" / "mod.py"
    bad.write_text("from ..entrypoints import cli\nfrom .. import entrypoints\nimport poolkit_ray\n")
    found = _violations(iter([bad]), pkg, "poolkit", ("poolkit.entrypoints", "poolkit_ray"))
    assert len(found) == 4  # entrypoints, entrypoints.cli, poolkit.entrypoints (from ..), poolkit_ray


@pytest.mark.parametrize("name", sorted(INTEGRATIONS))
def test_integrations_use_the_public_api(name: str) -> None:
    offenders = []
    for path in sorted(INTEGRATIONS[name].rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr == "engine" and not isinstance(node.ctx, ast.Store):
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert offenders == [], "integrations must not reach into LLM.engine"


def test_poolkit_variables_are_read_in_settings_only() -> None:
    offenders = []
    roots = [SRC, *INTEGRATIONS.values()]
    for root in roots:
        for path in sorted(root.rglob("*.py")):
            if path == SRC / "settings.py":
                continue
            for lineno, line in enumerate(path.read_text().splitlines(), start=1):
                if ("os.environ" in line and "POOLKIT_" in line) or "getenv(\"POOLKIT_" in line:
                    offenders.append(f"{path.relative_to(REPO)}:{lineno}: {line.strip()}")
    assert offenders == []
