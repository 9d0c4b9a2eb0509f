"""Build the Debian packages that the pipeline injects into every image.

Their source lives in this repository (``open-iscsi-boot/``).  They are
built with dpkg-buildpackage in a scratch copy, so the checkout stays clean,
and the .deb is moved into ``out/packages/`` atomically.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

from pipeline import runner
from pipeline.errors import PipelineError
from pipeline.fsutil import commit, fresh_partial
from pipeline.naming import Layout

# Source folders of injected packages, relative to the project.
PACKAGE_SOURCES = ("open-iscsi-boot",)

# Left by a build in debian/ of the source tree; never inputs.
BUILD_LEFTOVERS = {".debhelper", "files", "debhelper-build-stamp"}
# The package's own tests (run by pytest from the checkout) and what running
# them leaves: not part of what dpkg-buildpackage builds.
NOT_SHIPPED = {"tests"}
TEST_LEFTOVERS = {"__pycache__", ".pytest_cache"}


def _leftover(source: Path, path: str) -> bool:
    rel = Path(path).relative_to(source)
    if rel.parts and (rel.parts[0] in NOT_SHIPPED or TEST_LEFTOVERS.intersection(rel.parts)):
        return True
    return (len(rel.parts) == 2 and rel.parts[0] == "debian"
            and (rel.parts[1] in BUILD_LEFTOVERS or rel.parts[1].endswith(".substvars")))

CHANGELOG_HEAD = re.compile(r"^(?P<name>[a-z0-9][a-z0-9+.-]+) \((?P<version>[^)\s]+)\)")


def sources(project: Path) -> list[Path]:
    return [project / name for name in PACKAGE_SOURCES
            if (project / name / "debian" / "control").is_file()]


def source_files(source: Path) -> list[str]:
    files = []
    for dirpath, dirnames, filenames in os.walk(source):
        dirnames[:] = sorted(d for d in dirnames
                             if not _leftover(source, os.path.join(dirpath, d)))
        files.extend(os.path.join(dirpath, f) for f in sorted(filenames)
                     if not _leftover(source, os.path.join(dirpath, f)))
    return files


def name_version(source: Path) -> tuple[str, str]:
    changelog = source / "debian" / "changelog"
    match = CHANGELOG_HEAD.match(changelog.read_text(encoding="utf-8"))
    if not match:
        raise PipelineError(f"{changelog}: first line is not 'name (version) …'")
    return match["name"], match["version"]


def deb_path(layout: Layout, source: Path) -> Path:
    name, version = name_version(source)
    return layout.packages_dir() / f"{name}_{version}_all.deb"


def build(source: Path, deb: Path) -> None:
    runner.require_tools(["dpkg-buildpackage"])
    deb.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="pkg-build-") as scratch:
        work = Path(scratch) / source.name
        shutil.copytree(source, work, symlinks=True,
                        ignore=lambda d, names: [n for n in names
                                                 if _leftover(source, os.path.join(d, n))])
        runner.run(["dpkg-buildpackage", "--build=all", "-us", "-uc"], cwd=work, echo=True)
        built = Path(scratch) / deb.name
        if not built.is_file():
            raise PipelineError(f"dpkg-buildpackage did not produce {deb.name}")
        tmp = fresh_partial(deb)
        shutil.copyfile(built, tmp)
        commit(tmp, deb)
