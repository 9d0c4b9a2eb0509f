"""The code identity of a build step: the project code it runs, as one digest.

A step must re-run when any code that shapes its output changes, and only
then.  Hand-kept lists of module names drift (a module gains an import, the
list does not), so the set is computed from the source itself: the
``import`` and ``from ... import`` statements of the entry, followed
transitively with :mod:`ast` inside the ``pipeline`` package.  Nothing is
imported or executed.

An entry is either a module (``pipeline.build.package``: its whole source
counts) or one top-level function of a module
(``pipeline.build.steps:do_build``): then only the source of that function,
of the module-level definitions it uses, and the modules it names count, so
that editing one step's action does not re-run the others.

Non-Python files a module reads live in the ``data/`` folder of its package
(``pipeline/build/data/``, ``pipeline/lab/data/``): every file there counts
for every closure holding a module of that package.  Over-inclusive on
purpose: a missing file is a stale build, an extra one only a rebuild.

The digest covers paths relative to the ``pipeline`` folder and file
contents, sorted, so it is the same in any checkout of the same code.
"""

from __future__ import annotations

import ast
import hashlib
import os
from pathlib import Path
from types import FunctionType, ModuleType
from typing import Iterable

# The folder of the ``pipeline`` package; tests point the functions at a copy.
PACKAGE_ROOT = Path(__file__).resolve().parent

DATA_DIR = "data"


def entry_of(obj: ModuleType | FunctionType) -> str:
    """The entry name of a module (``pkg.mod``) or a function (``pkg.mod:func``)."""
    if isinstance(obj, ModuleType):
        return obj.__name__
    return f"{obj.__module__}:{obj.__qualname__}"


def module_file(name: str, root: Path = PACKAGE_ROOT) -> Path | None:
    """The source file of project module *name* under *root*, or None."""
    parts = name.split(".")
    if parts[0] != root.name:
        return None
    base = root.joinpath(*parts[1:])
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    if len(parts) > 1 and base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    return None


def _package_of(name: str, root: Path) -> str:
    """The package that relative imports in module *name* start from."""
    path = module_file(name, root)
    if path is not None and path.name == "__init__.py":
        return name
    return name.rpartition(".")[0]


def _with_parents(name: str) -> list[str]:
    """``a.b.c`` -> ``a``, ``a.b``, ``a.b.c``: importing a module imports its packages."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def _parse(path: Path) -> tuple[str, ast.Module]:
    text = path.read_text(encoding="utf-8")
    return text, ast.parse(text, filename=str(path))


def _bindings(node: ast.Import | ast.ImportFrom, module: str, root: Path) -> dict[str, set[str]]:
    """Names one import statement binds, each to the project modules it stands for."""
    bound: dict[str, set[str]] = {}
    if isinstance(node, ast.Import):
        for alias in node.names:
            if alias.name.split(".")[0] != root.name:
                continue
            # ``import a.b.c`` binds ``a`` but makes ``a.b.c`` reachable through it
            local = alias.asname or alias.name.split(".")[0]
            bound.setdefault(local, set()).add(alias.name)
        return bound
    if node.level:
        package = _package_of(module, root).split(".")
        package = package[:len(package) - (node.level - 1)]
        base = ".".join(package + ([node.module] if node.module else []))
    else:
        base = node.module or ""
    if base.split(".")[0] != root.name:
        return bound
    for alias in node.names:
        # ``from pipeline.build import audit`` means the module audit when
        # there is one; otherwise a name defined in pipeline.build itself.
        target = f"{base}.{alias.name}"
        if alias.name == "*" or module_file(target, root) is None:
            target = base
        bound.setdefault(alias.asname or alias.name, set()).add(target)
    return bound


def imports_of(name: str, root: Path = PACKAGE_ROOT) -> set[str]:
    """Project modules module *name* imports anywhere (also inside functions)."""
    path = module_file(name, root)
    if path is None:
        return set()
    _text, tree = _parse(path)
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            for targets in _bindings(node, name, root).values():
                found |= targets
    return found


def closure(modules: Iterable[str], root: Path = PACKAGE_ROOT) -> list[str]:
    """Every project module (packages included) that importing *modules* imports, sorted."""
    seen: set[str] = set()
    todo = list(modules)
    for name in todo:
        if module_file(name, root) is None:
            raise ValueError(f"{root}: no project module {name!r}")
    while todo:
        name = todo.pop()
        for each in _with_parents(name):
            if each in seen or module_file(each, root) is None:
                continue
            seen.add(each)
            todo.extend(imports_of(each, root))
    return sorted(seen)


def function_code(entry: str, root: Path = PACKAGE_ROOT) -> tuple[set[str], list[str]]:
    """For ``module:function``: the project modules it uses and its source.

    The source is that of the function and of every module-level definition
    (function, class, constant) it uses, transitively; the modules are those
    these bind through the module's imports, plus the function's own imports.
    """
    module, _, function = entry.partition(":")
    path = module_file(module, root)
    if path is None:
        raise ValueError(f"{root}: no project module {module!r} (entry {entry!r})")
    text, tree = _parse(path)
    defined: dict[str, ast.stmt] = {}
    imported: dict[str, set[str]] = {}
    for stmt in tree.body:
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            defined[stmt.name] = stmt
        elif isinstance(stmt, (ast.Assign, ast.AnnAssign)):
            targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
            for target in targets:
                for node in ast.walk(target):
                    if isinstance(node, ast.Name):
                        defined[node.id] = stmt
        elif isinstance(stmt, (ast.Import, ast.ImportFrom)):
            for local, targets in _bindings(stmt, module, root).items():
                imported.setdefault(local, set()).update(targets)
    if function not in defined:
        raise ValueError(f"{path}: no top-level definition {function!r} (entry {entry!r})")
    modules = set(_with_parents(module)) - {module}
    sources: list[str] = []
    done: set[int] = set()
    todo = [defined[function]]
    while todo:
        stmt = todo.pop()
        if id(stmt) in done:
            continue
        done.add(id(stmt))
        sources.append(ast.get_source_segment(text, stmt) or "")
        for node in ast.walk(stmt):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for targets in _bindings(node, module, root).values():
                    modules |= targets
            elif isinstance(node, ast.Name):
                modules |= imported.get(node.id, set())
                if node.id in defined:
                    todo.append(defined[node.id])
    return modules, sorted(sources)


def data_files(modules: Iterable[str], root: Path = PACKAGE_ROOT) -> list[Path]:
    """Every file under the ``data/`` folder of a package holding one of *modules*."""
    folders = set()
    for name in modules:
        path = module_file(name, root)
        if path is not None:
            folders.add(path.parent / DATA_DIR)
    files = []
    for folder in sorted(folders):
        for dirpath, dirnames, filenames in os.walk(folder):
            dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
            files.extend(Path(dirpath) / f for f in sorted(filenames))
    return files


def code_files(entries: Iterable[str], root: Path = PACKAGE_ROOT) -> list[str]:
    """The files the identity of *entries* covers, relative to *root*, sorted.

    A function entry's own module is not among them: only its used parts count.
    """
    modules: set[str] = set()
    for entry in entries:
        if ":" in entry:
            used = function_code(entry, root)[0]
            modules |= {name for name in used if module_file(name, root) is not None}
        else:
            modules.add(entry)
    names = closure(modules, root)
    paths = [module_file(name, root) for name in names] + data_files(names, root)
    return sorted(p.relative_to(root).as_posix() for p in paths if p is not None)


def digest(entries: Iterable[str], root: Path = PACKAGE_ROOT) -> str:
    """The code identity of *entries*: 16 hex digits over the code they run."""
    entries = sorted(set(entries))
    hashed = hashlib.sha256()
    for rel in code_files(entries, root):
        content = hashlib.sha256((root / rel).read_bytes()).hexdigest()
        hashed.update(f"{rel}\0{content}\n".encode())
    for entry in entries:
        if ":" in entry:
            for source in function_code(entry, root)[1]:
                content = hashlib.sha256(source.encode()).hexdigest()
                hashed.update(f"{entry}\0{content}\n".encode())
    return hashed.hexdigest()[:16]
