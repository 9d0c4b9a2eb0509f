"""Another project that uses the pipeline's task creators: write one.

A project is a folder with ``recipes/``, ``overlays/``, the source folders of
the injected packages and a ``dodo.py`` that imports the task creators from
this checkout.  The integration tests, the build benchmark and the
reproducibility check each build in such a project of their own, so that a
build there never touches this checkout's ``out/``.

Files are only rewritten when their content changes: doit must see an
unchanged project as unchanged.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Mapping

from pipeline.build.package import PACKAGE_SOURCES

# The checkout whose ``pipeline`` package the written dodo.py imports.
CHECKOUT = Path(__file__).resolve().parents[2]

DODO = '''\
"""A project that uses the image pipeline's task creators (written by pipeline.project)."""
import sys
sys.path.insert(0, {checkout!r})
from pipeline import tasks
tasks.configure(project=__file__.rsplit("/", 1)[0])
from pipeline.tasks import *  # noqa: F401,F403
'''


def write_if_different(path: Path, text: str) -> None:
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


def sync_tree(src: Path, dest: Path) -> None:
    """Make ``dest`` a copy of ``src`` (files, modes, symlinks), touching
    only what differs, and removing what ``src`` does not have."""
    dest.mkdir(parents=True, exist_ok=True)
    wanted = set()
    for dirpath, dirnames, filenames in os.walk(src):
        dirnames.sort()
        rel = Path(dirpath).relative_to(src)
        (dest / rel).mkdir(exist_ok=True)
        wanted.add(rel)
        for name in sorted(filenames) + [d for d in dirnames if (Path(dirpath) / d).is_symlink()]:
            source, target = Path(dirpath) / name, dest / rel / name
            wanted.add(rel / name)
            if source.is_symlink():
                link = os.readlink(source)
                if not target.is_symlink() or os.readlink(target) != link:
                    if os.path.lexists(target):
                        _remove(target)
                    target.symlink_to(link)
                continue
            data = source.read_bytes()
            if target.is_symlink() or not target.is_file() or target.read_bytes() != data:
                if os.path.lexists(target):
                    _remove(target)
                target.write_bytes(data)
            mode = source.stat().st_mode & 0o7777
            if target.stat().st_mode & 0o7777 != mode:
                os.chmod(target, mode)
    for dirpath, dirnames, filenames in os.walk(dest, topdown=False):
        rel = Path(dirpath).relative_to(dest)
        for name in filenames + dirnames:
            if rel / name not in wanted:
                _remove(Path(dirpath) / name)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def write_project(dest: Path, recipes: Mapping[str, str], *, overlays: Path,
                  packages_from: Path = CHECKOUT, link_packages: bool = False) -> None:
    """Write (or update) a project in ``dest``.

    ``recipes`` maps file names (``trixie.yaml``) to recipe text; any other
    recipe already in ``dest/recipes`` is removed.  Each folder of
    ``overlays`` is mirrored into ``dest/overlays``.
    The package sources are copied from ``packages_from``, or symlinked with
    ``link_packages`` (cheaper; the build path of the packages is then the
    same as there).
    """
    dest.mkdir(parents=True, exist_ok=True)
    recipe_dir = dest / "recipes"
    recipe_dir.mkdir(exist_ok=True)
    for stale in recipe_dir.iterdir():
        if stale.name not in recipes:
            _remove(stale)
    for name, text in recipes.items():
        write_if_different(recipe_dir / name, text)
    # Each overlay folder is mirrored; folders the caller added itself stay.
    (dest / "overlays").mkdir(exist_ok=True)
    for folder in sorted(overlays.iterdir()):
        if folder.is_dir() and not folder.is_symlink():
            sync_tree(folder, dest / "overlays" / folder.name)
    for name in PACKAGE_SOURCES:
        source, target = packages_from / name, dest / name
        if not source.exists():
            continue
        if link_packages:
            if not target.is_symlink() or Path(os.readlink(target)) != source:
                if os.path.lexists(target):
                    _remove(target)
                target.symlink_to(source)
        else:
            if target.is_symlink():
                target.unlink()
            sync_tree(source, target)
    write_if_different(dest / "dodo.py", DODO.format(checkout=str(CHECKOUT)))
