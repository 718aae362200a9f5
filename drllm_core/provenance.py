"""Which code computed a result: the repository modules a stage imports, and a hash of their code.

DVC reruns a stage when one of its `deps` changes, and a checkpoint is resumed only by the code that wrote
it; both ask the same question, answered here once. A module's imports are read from its source (nothing
is executed), lazy imports inside functions included, and followed within this repository only. The hash
ignores comments and docstrings, so a documentation edit never renames a checkpoint.
"""

from __future__ import annotations

import ast
import hashlib
from collections.abc import Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("drllm_core", "pipeline")


def module_file(name: str) -> Path | None:
    """The source file of a repository module (a package's __init__.py), or None outside the repository."""
    if name.split(".")[0] not in PACKAGES:
        return None
    base = ROOT.joinpath(*name.split("."))
    for candidate in (base / "__init__.py", base.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def _imports(name: str, source: Path) -> set[str]:
    """Modules named by the imports of one file: `from a import b` names a, and a.b when b is a module."""
    package = name if source.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(source.read_text(), str(source))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def import_closure(modules: Iterable[str]) -> list[Path]:
    """Source files of `modules` and of every repository module they import, directly or transitively,
    parent packages (__init__.py, which Python runs first) included; sorted."""
    todo, seen, files = list(modules), set(), set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        source = module_file(name)
        if source is None:
            continue
        files.add(source)
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # parent packages
        todo += sorted(_imports(name, source))
    return sorted(files)


def _without_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            first = node.body[0] if node.body else None
            if (
                isinstance(first, ast.Expr)
                and isinstance(first.value, ast.Constant)
                and isinstance(first.value.value, str)
            ):
                node.body = node.body[1:] or [ast.Pass()]
    return tree


def code_version(modules: Iterable[str]) -> str:
    """A short hash of the code of `modules` and everything they import from the repository, comments and
    docstrings left out."""
    digest = hashlib.sha256()
    for path in import_closure(modules):
        tree = _without_docstrings(ast.parse(path.read_text(), str(path)))
        digest.update(path.relative_to(ROOT).as_posix().encode() + b"\0")
        digest.update(ast.dump(tree, include_attributes=False).encode())
    return digest.hexdigest()[:12]
