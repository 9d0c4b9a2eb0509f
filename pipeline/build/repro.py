"""Reproducibility: build the same triples twice and compare every byte.

Two clean builds of one recipe, each in a project of its own (so the build
path differs, package sources included), the second with everything that
must not matter changed: time zone, locale, umask, the build host's host
name (in a UTS namespace of its own) and Python's hash seed.  Then the
kernel, initramfs, root image and manifest of every triple the second build
made are compared by sha256.  Where they differ, a diffoscope report of each
differing part is written next to the second build's file
(``<part file>.diffoscope.txt``).

Root images and initramfs images are not handed to diffoscope as they are:
without libguestfs it would only diff the raw bytes of a sparse
multi-hundred-MB file, and it reads only the first of the archives an
initramfs holds back to back.  Each side is turned into a folder instead --
a listing of every path (type, mode, owner, size, times, xattrs, content
hash; for an initramfs, which archive), the files whose listing line
differs, and for a root image its superblock -- and diffoscope compares the
two folders.  A root image is read by mounting it read-only, an initramfs
by the pipeline's own cpio reader.  When no path of a root image differs but
the bytes do, the report names the first blocks that differ and what owns
them.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import stat
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import yaml

from pipeline import ext4, cpio, runner
from pipeline.errors import PipelineError
from pipeline.fsutil import remove_tree, sha256_file
from pipeline.naming import SUFFIXES, Triple
from pipeline.build.scratch import write_project
from pipeline.build.recipe import Recipe

TOOLS = ["diffoscope", "unshare", "mount", "umount", "debugfs", "dumpe2fs"]


@dataclass(frozen=True)
class Variation:
    """What one build runs with, none of which may change its output."""

    name: str
    tz: str
    lang: str
    umask: int
    hostname: str
    hash_seed: str

    def describe(self) -> str:
        return (f"TZ={self.tz} LANG={self.lang} umask {self.umask:04o} "
                f"hostname {self.hostname} PYTHONHASHSEED={self.hash_seed}")


FIRST = Variation("first", tz="UTC", lang="C.UTF-8", umask=0o022,
                  hostname=socket.gethostname(), hash_seed="0")
# Far from the first in every respect: a time zone 13.75 hours ahead (with
# summer time), a locale that is not even installed, a umask that makes
# every new file private, a host name of its own.
SECOND = Variation("second", tz="Pacific/Chatham", lang="fr_FR.UTF-8", umask=0o077,
                   hostname="repro-second-build", hash_seed="4242")


def recipe_text(recipe: Recipe, flavours: list[str] | None) -> str:
    """The recipe as a copy for a project elsewhere: only ``flavours``, and
    the lock's manifests by absolute path."""
    data = yaml.safe_load(recipe.path.read_text(encoding="utf-8"))
    if flavours:
        data["kernel_flavours"] = list(flavours)
    if recipe.lock_files:
        data["lock"] = [str((recipe.path.parent / name).resolve()) for name in recipe.lock_files]
    return yaml.safe_dump(data, sort_keys=False)


def prepare(source_project: Path, recipe: Recipe, flavours: list[str] | None,
            dest: Path) -> None:
    """A fresh project in ``dest`` holding a copy of ``recipe`` and its inputs."""
    remove_tree(dest)
    write_project(dest, {recipe.path.name: recipe_text(recipe, flavours)},
                  overlays=source_project / "overlays", packages_from=source_project)


def build(project: Path, task: str, variation: Variation) -> None:
    """Run ``doit task`` in ``project`` as ``variation`` says."""
    script = 'hostname "$1" && umask "$2" && shift 2 && exec "$@"'
    argv = ["unshare", "--uts", "sh", "-c", script, "sh", variation.hostname,
            f"{variation.umask:04o}", sys.executable, "-m", "doit", task]
    print(f"    build in {project}: {variation.describe()}", flush=True)
    runner.run(argv, cwd=project, echo=True,
               env={"TZ": variation.tz, "LANG": variation.lang, "LC_ALL": variation.lang,
                    "PYTHONHASHSEED": variation.hash_seed})


@dataclass
class PartResult:
    part: str
    first: Path
    second: Path
    first_sha256: str | None
    second_sha256: str | None
    report: Path | None = None

    @property
    def same(self) -> bool:
        return self.first_sha256 is not None and self.first_sha256 == self.second_sha256


@dataclass
class Result:
    parts: list[PartResult] = field(default_factory=list)

    @property
    def same(self) -> bool:
        return bool(self.parts) and all(p.same for p in self.parts)

    @property
    def different(self) -> list[PartResult]:
        return [p for p in self.parts if not p.same]

    def table(self) -> str:
        lines = []
        for p in self.parts:
            verdict = "same" if p.same else "DIFFERENT"
            lines.append(f"  {verdict:<9} {p.second.name}")
            lines.append(f"            first  {p.first_sha256 or '(missing)'}")
            if not p.same:
                lines.append(f"            second {p.second_sha256 or '(missing)'}")
            if p.report:
                lines.append(f"            report {p.report}")
        return "\n".join(lines)


PARTS = ("kernel", "initrd", "root", "manifest")


def compare(first: Path, second: Path) -> Result:
    """Compare every triple in the folder ``second`` with its namesake in ``first``."""
    result = Result()
    manifests = sorted(second.glob("*" + SUFFIXES["manifest"]))
    if not manifests:
        raise PipelineError(f"{second}: no triple to compare (no *{SUFFIXES['manifest']})")
    for manifest in manifests:
        theirs, ours = Triple.from_manifest(first / manifest.name), Triple.from_manifest(manifest)
        for part in PARTS:
            a, b = theirs.path(part), ours.path(part)
            result.parts.append(PartResult(part, a, b, sha256_file(a) if a.is_file() else None,
                                           sha256_file(b) if b.is_file() else None))
    return result


def report(result: Result) -> None:
    """Write a diffoscope report beside every differing part of the second build."""
    runner.require_tools(["diffoscope"])
    for part in result.different:
        dest = part.second.with_name(part.second.name + ".diffoscope.txt")
        dest.unlink(missing_ok=True)
        if part.first_sha256 is None or part.second_sha256 is None:
            missing = part.first if part.first_sha256 is None else part.second
            dest.write_text(f"{missing}: missing, so there is nothing to compare it with\n")
        elif part.part == "root":
            root_report(part.first, part.second, dest)
        elif part.part == "initrd":
            initrd_report(part.first, part.second, dest)
        else:
            diffoscope(part.first, part.second, dest)
        part.report = dest


# A differing file larger than this is named (listing line, sha256), not
# copied into the report: diffoscope would hexdump it (the root's own copy of
# the initramfs made a 121 MB report).  The initramfs has a report of its own.
COPY_LIMIT = 1 << 20
# And no report grows past this.
REPORT_LIMIT = 32 << 20


def diffoscope(first: Path, second: Path, dest: Path) -> None:
    # The report's own folders are made here: their metadata says nothing.
    status, out = runner.run_status(["diffoscope", "--no-progress", "--text", str(dest),
                                     "--exclude-directory-metadata=yes",
                                     "--max-text-report-size", str(REPORT_LIMIT),
                                     str(first), str(second)])
    if status not in (0, 1):
        raise PipelineError(f"diffoscope could not compare {first} and {second}:\n{out[-2000:]}")


# -- root images ---------------------------------------------------------------

@contextmanager
def mounted_ro(image: Path) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="repro-mnt-") as point:
        runner.run(["mount", "-t", "ext4", "-o", "ro,loop,noload", str(image), point])
        try:
            yield Path(point)
        finally:
            runner.run(["umount", point], check=False)


def describe(path: str) -> str:
    """One line of everything the image says about a path (not its inode number)."""
    st = os.lstat(path)
    if stat.S_ISREG(st.st_mode):
        what = "sha256:" + sha256_file(Path(path))
    elif stat.S_ISLNK(st.st_mode):
        what = "-> " + os.readlink(path)
    elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
        what = f"device {os.major(st.st_rdev)},{os.minor(st.st_rdev)}"
    else:
        what = ""
    xattrs = " ".join(f"{name}={os.getxattr(path, name, follow_symlinks=False).hex()}"
                      for name in sorted(os.listxattr(path, follow_symlinks=False)))
    return (f"{stat.filemode(st.st_mode)} {st.st_uid}:{st.st_gid} links {st.st_nlink} "
            f"size {st.st_size} mtime {st.st_mtime_ns} ctime {st.st_ctime_ns} {what} {xattrs}"
            ).rstrip()


def listing(root: Path) -> dict[str, str]:
    """Every path of a mounted image -> :func:`describe`."""
    entries = {"/": describe(str(root))}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            path = os.path.join(dirpath, name)
            entries["/" + os.path.relpath(path, root)] = describe(path)
    return entries


def root_report(first: Path, second: Path, dest: Path) -> None:
    """diffoscope over what two root images hold (see the module's text)."""
    views = {}
    with mounted_ro(first) as root_a, mounted_ro(second) as root_b:
        roots = {"first": root_a, "second": root_b}
        listings = {side: listing(root) for side, root in roots.items()}
        changed = changed_paths(listings)
        for side, root in roots.items():
            files = {}
            for path in changed:
                source = root / path.lstrip("/")
                if source.is_file() and not source.is_symlink() \
                        and source.stat().st_size <= COPY_LIMIT:
                    files[path.lstrip("/")] = source.read_bytes()
            views[side] = (listings[side], files)
    extra = {side: {"superblock.txt": runner.output(["dumpe2fs", "-h", str(image)]) + "\n"}
             for side, image in (("first", first), ("second", second))}
    if not changed:
        for side, image in (("first", first), ("second", second)):
            extra[side]["layout.txt"] = layout_note(first, second, image) + "\n"
    view_report(views, extra, dest)


def initrd_listing(path: Path, wanted: set[str] = frozenset()) -> tuple[dict[str, str], dict[str, bytes]]:
    """An initramfs as listing lines (``[archive] /name`` -> attributes) and
    the content of the ``wanted`` members (by ``archive-N/name``)."""
    entries, files = {}, {}
    for member in cpio.members(path):
        key = f"[{member.archive}] /{member.name}"
        if member.is_file:
            what = "sha256:" + hashlib.sha256(member.data).hexdigest()
            if key in wanted and len(member.data) <= COPY_LIMIT:
                files[f"archive-{member.archive}/{member.name}"] = member.data
        elif member.is_symlink:
            what = "-> " + member.data.decode("utf-8", errors="replace")
        else:
            what = ""
        entries[key] = (f"{stat.filemode(member.mode)} {member.uid}:{member.gid} "
                        f"size {len(member.data)} mtime {member.mtime} {what}").rstrip()
    return entries, files


def initrd_report(first: Path, second: Path, dest: Path) -> None:
    """diffoscope over the members of two initramfs images: the first
    archive (uncompressed, early) and the compressed one after it."""
    listings = {"first": initrd_listing(first)[0], "second": initrd_listing(second)[0]}
    changed = set(changed_paths(listings))
    views = {side: (listings[side], initrd_listing(path, changed)[1])
             for side, path in (("first", first), ("second", second))}
    view_report(views, {"first": {}, "second": {}}, dest)


def changed_paths(listings: dict[str, dict[str, str]]) -> list[str]:
    first, second = listings["first"], listings["second"]
    return sorted(path for path in set(first) | set(second) if first.get(path) != second.get(path))


def view_report(views: dict[str, tuple[dict[str, str], dict[str, bytes]]],
                extra: dict[str, dict[str, str]], dest: Path) -> None:
    """Write each side as a folder (files.txt, the differing files by
    relative path, extra texts) beside ``dest``; diffoscope compares them."""
    work = dest.with_name(dest.name.removesuffix(".txt"))
    if work == dest:
        raise ValueError(f"a report's name ends in .txt, not {dest.name}")
    remove_tree(work)
    for side, (entries, files) in views.items():
        (work / side).mkdir(parents=True)
        (work / side / "files.txt").write_text(
            "".join(f"{path} {line}\n" for path, line in sorted(entries.items())))
        for path, data in files.items():
            copy = work / side / "files" / path
            copy.parent.mkdir(parents=True, exist_ok=True)
            copy.write_bytes(data)
        for name, text in extra[side].items():
            (work / side / name).write_text(text)
    diffoscope(work / "first", work / "second", dest)


def layout_note(first: Path, second: Path, image: Path, block: int = 4096, limit: int = 8) -> str:
    """Every path and attribute is the same, yet the bytes differ: which
    blocks, and which inodes own them (debugfs icheck / ncheck)."""
    blocks = []
    with open(first, "rb") as a, open(second, "rb") as b:
        number = 0
        while len(blocks) < limit:
            x, y = a.read(block), b.read(block)
            if not x and not y:
                break
            if x != y:
                blocks.append(number)
            number += 1
    owners = runner.output(["debugfs", "-R", "icheck " + " ".join(map(str, blocks)), str(image)]) \
        if blocks else ""
    return (f"no path differs in content or attributes, but these {block}-byte blocks do: "
            f"{', '.join(map(str, blocks))}\nblock owners (icheck):\n{owners}")


# -- the whole check -------------------------------------------------------------

def check(first_triples: Path, second_triples: Path) -> Result:
    """Compare two finished builds; write reports for what differs."""
    result = compare(first_triples, second_triples)
    if not result.same:
        report(result)
    return result


def require_tools() -> None:
    runner.require_tools(TOOLS)
    if (old := ext4.unrepeatable_mke2fs()) is not None:
        raise PipelineError(
            f"{old} cannot make the same root image "
            "twice (mke2fs 1.47.1 or newer can)",
            hint="./setup-host installs e2fsprogs from backports on Debian 12")


def run(source_project: Path, recipe: Recipe, flavours: list[str] | None, work: Path,
        task: str) -> Result:
    """``doit repro``: two clean builds of ``task`` under ``work``, compared."""
    require_tools()
    projects = {v.name: work / v.name for v in (FIRST, SECOND)}
    for variation in (FIRST, SECOND):
        prepare(source_project, recipe, flavours, projects[variation.name])
        with runner.step(f"repro {task}: {variation.name} build"):
            build(projects[variation.name], task, variation)
    result = check(projects["first"] / "out" / "triples", projects["second"] / "out" / "triples")
    summary = {"same": result.same, "parts": [
        {"file": p.second.name, "first": p.first_sha256, "second": p.second_sha256,
         "report": str(p.report) if p.report else None} for p in result.parts]}
    (work / "repro.json").write_text(json.dumps(summary, indent=2) + "\n")
    return result

