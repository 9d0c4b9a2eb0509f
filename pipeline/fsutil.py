"""Atomic outputs and careful tree handling.

Every step writes under a temporary name (see :func:`naming.partial`) and
renames into place, so a build killed at any moment never leaves a file or
tree that a later run takes as finished.  Trees are only removed after
checking that nothing is mounted inside them: a build tree with a mount left
in it must never be deleted recursively.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import json
import os
import shutil
import stat
from pathlib import Path
from typing import Any

from pipeline import runner
from pipeline.errors import PipelineError
from pipeline.naming import partial


def mounts_under(path: Path) -> list[str]:
    """Mount points at or below ``path`` (from /proc/self/mountinfo)."""
    target = os.path.realpath(path)
    found = []
    with open("/proc/self/mountinfo", encoding="utf-8") as info:
        for line in info:
            point = line.split()[4].replace("\\040", " ")
            if point == target or point.startswith(target.rstrip("/") + "/"):
                found.append(point)
    return found


def remove_tree(path: Path) -> None:
    """Remove a file or tree; refuse if anything is mounted inside it."""
    if not os.path.lexists(path):
        return
    if path.is_symlink() or not path.is_dir():
        path.unlink()
        return
    mounted = mounts_under(path)
    if mounted:
        raise PipelineError(f"refusing to remove {path}: still mounted inside: {', '.join(mounted)}",
                            hint="unmount them (umount -R) and run again")
    shutil.rmtree(path)


def release_mounts(path: Path) -> None:
    """Unmount what a killed build left mounted in one of our partial trees."""
    for point in sorted(mounts_under(path), key=len, reverse=True):
        runner.run(["umount", "--lazy", point], check=False)


def fresh_partial(final: Path) -> Path:
    """Return the temporary name for ``final``, with any leftover removed.

    A leftover is what an interrupted run was writing; it is ours to discard,
    including the proc/sysfs mounts a killed chroot step may have left in it.
    """
    tmp = partial(final)
    if tmp.is_dir() and not tmp.is_symlink():
        release_mounts(tmp)
    remove_tree(tmp)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    return tmp


def commit(tmp: Path, final: Path) -> None:
    """Move a finished file or tree into place, replacing an older one."""
    if tmp.is_dir() and not tmp.is_symlink():
        old = final.with_name(final.name + ".old")
        remove_tree(old)
        if os.path.lexists(final):
            os.rename(final, old)
        os.rename(tmp, final)
        remove_tree(old)
    else:
        os.replace(tmp, final)
    fsync_dir(final.parent)


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_text(path: Path, text: str, mode: int = 0o644) -> None:
    """Write a small file atomically."""
    tmp = fresh_partial(path)
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.chmod(tmp, mode)
    commit(tmp, path)


def write_json(path: Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def copy_tree(src: Path, dst: Path) -> None:
    """Copy a root tree with owners, modes, links, device nodes and xattrs."""
    runner.run(["cp", "-a", "--reflink=auto", str(src), str(dst)])


def sha256_file(path: Path, chunk: int = 4 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def copy_file(src: Path, dst: Path) -> None:
    """Copy one file atomically (to dst's temporary name, then rename)."""
    tmp = fresh_partial(dst)
    shutil.copyfile(src, tmp)
    os.chmod(tmp, 0o644)
    commit(tmp, dst)


def write_if_changed(path: Path, data: bytes, mode: int, group: int | None = None) -> bool:
    """Write ``data`` atomically unless ``path`` already holds exactly it.

    Returns whether the file was written.  The temporary file is created with
    mode 0600 and only then given its group and ``mode``, so a file that holds
    a secret is never readable by anyone else, not even for a moment.  An
    unchanged file is left alone (same inode, same mtime), which is what
    makes a second publish a no-op.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        pass
    else:
        if (stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == mode
                and (group is None or st.st_gid == group) and st.st_size == len(data)
                and path.read_bytes() == data):
            return False
    tmp = fresh_partial(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        if group is not None:
            os.fchown(fd, -1, group)
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    commit(tmp, path)
    return True


# Non-Python files a package uses (scripts and units installed into images)
# live in its ``data/`` folder; the step identities count every file there.
DATA_DIR = "data"


def data_file(package: str, name: str) -> Path:
    """The file ``name`` in the data/ folder of project package ``package``.

    ``data_file("pipeline.lab", "lab-agent")`` is pipeline/lab/data/lab-agent,
    in a checkout and in an installed copy alike (pyproject.toml ships data/).
    """
    path = Path(str(importlib.resources.files(package) / DATA_DIR / name))
    if not path.is_file():
        raise FileNotFoundError(f"{path}: data file missing from package {package}")
    return path
