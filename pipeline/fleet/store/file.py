"""The file backend: templates and machine disks as files in the store folder.

A template is a triple's root image, copied once into ``templates/`` and
made read-only.  A machine's disk is a copy of a template made once — a
reflink where the file system can share blocks (XFS with reflink=1, btrfs),
else a sparse copy — with the machine's own file-system UUID.  A disk is
never overwritten: it is made under a temporary name and linked into place,
which fails if a disk is already there.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from pipeline import ext4, runner
from pipeline.errors import PipelineError
from pipeline.fleet.store import Ref, Space
from pipeline.fsutil import commit, fresh_partial, fsync_dir
from pipeline.naming import PARTIAL, Store

TEMPLATE_MODE = 0o444
DISK_MODE = 0o600
TOOLS = ["cp", "tune2fs", "dumpe2fs", "debugfs"]


def copy_shared(src: Path, dst: Path) -> None:
    """Copy sharing blocks where possible: reflink, else sparse."""
    runner.run(["cp", "--reflink=auto", "--sparse=always", str(src), str(dst)])


def make_template(root_image: Path, template: Path) -> None:
    tmp = fresh_partial(template)
    copy_shared(root_image, tmp)
    os.chmod(tmp, TEMPLATE_MODE)
    commit(tmp, template)


def clone(template: Path, disk: Path, fs_uuid: str, features: str) -> None:
    """Make ``disk`` from ``template`` with the UUID ``fs_uuid``.

    ``features``: the template's "Filesystem features" (see ext4.set_uuid).
    """
    if os.path.lexists(disk):
        raise PipelineError(f"{disk}: a disk is already there; it is never overwritten")
    tmp = fresh_partial(disk)
    try:
        copy_shared(template, tmp)
        os.chmod(tmp, DISK_MODE)
        ext4.set_uuid(tmp, fs_uuid, features)
        link_new(tmp, disk)
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)


def link_new(src: Path, dst: Path) -> None:
    """Give ``src`` the name ``dst`` unless something has that name (no clobber)."""
    try:
        os.link(src, dst)
    except FileExistsError:
        raise PipelineError(f"{dst}: already exists; refusing to overwrite it") from None
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EXDEV, errno.EOPNOTSUPP):
            raise
        # No hard links here: rename, after checking (not atomic, still no clobber
        # while we are the only writer of the store).
        if os.path.lexists(dst):
            raise PipelineError(f"{dst}: already exists; refusing to overwrite it") from None
        os.rename(src, dst)
    else:
        os.unlink(src)
    fsync_dir(dst.parent)


def allocated(path: Path) -> int:
    """Bytes a file really takes on disk (st_blocks), as against its size."""
    return os.stat(path).st_blocks * 512


def disk_releases(image: Path) -> set[str]:
    """Kernel releases whose modules are in an ext4 image's /lib/modules (read-only).

    debugfs exits 0 even when it cannot open the file system; only its
    messages (on stderr) tell, so they are read too.
    """
    text = runner.run(["debugfs", "-R", "ls -p /lib/modules", str(image)])
    if "Filesystem not open" in text or "while trying to open" in text:
        reason = next((line for line in text.splitlines() if "while trying to open" in line), text)
        raise PipelineError(reason.strip())
    return {fields[4] for line in text.splitlines()
            if line.startswith("/") and len(fields := line.strip().strip("/").split("/")) >= 5
            and fields[4] not in (".", "..")}


class FileStore:
    """:class:`pipeline.fleet.store.DiskStore` on files under ``naming.root``."""

    kind = "file"

    def __init__(self, naming: Store) -> None:
        self.naming = naming
        self._features: dict[str, str] = {}   # template name -> "Filesystem features"

    def tools(self) -> list[str]:
        return list(TOOLS)

    def check(self) -> None:
        """Nothing to reach: the folder is made by :meth:`prepare`."""

    def prepare(self) -> None:
        for folder, mode in ((self.naming.templates, 0o755), (self.naming.disks, 0o700)):
            if not folder.is_dir():
                folder.mkdir(parents=True, exist_ok=True)
                os.chmod(folder, mode)

    # -- templates
    def template_ref(self, name: str) -> Path:
        return self.naming.templates / name

    def has_template(self, name: str) -> bool:
        return self.template_ref(name).is_file()

    def put_template(self, name: str, root_image: Path) -> Path:
        make_template(root_image, self.template_ref(name))
        return self.template_ref(name)

    def template_names(self) -> list[str]:
        folder = self.naming.templates
        return [p.name for p in sorted(folder.glob("*")) if p.is_file() or p.is_symlink()] \
            if folder.is_dir() else []

    def template_kept_because(self, name: str) -> str | None:
        return None    # disks are copies: removing their template takes nothing from them

    def remove_template(self, name: str) -> Path:
        path = self.template_ref(name)
        path.unlink()
        return path

    # -- disks
    def disk_ref(self, mac: str) -> Path:
        return self.naming.disk(mac)

    def has_disk(self, mac: str) -> bool:
        return os.path.lexists(self.disk_ref(mac))

    def clone(self, template: str, mac: str, fs_uuid: str) -> Path:
        path = self.template_ref(template)
        if template not in self._features:
            self._features[template] = ext4.superblock(path).get("Filesystem features", "")
        clone(path, self.disk_ref(mac), fs_uuid, self._features[template])
        return self.disk_ref(mac)

    def disk_releases(self, mac: str) -> set[str]:
        return disk_releases(self.disk_ref(mac))

    def disks(self) -> list[Ref]:
        folder = self.naming.disks
        return list(sorted(folder.glob("*.ext4"))) if folder.is_dir() else []

    def remove_leftovers(self) -> list[Ref]:
        folder = self.naming.disks
        removed: list[Ref] = []
        for path in sorted(folder.glob("*" + PARTIAL)) if folder.is_dir() else []:
            path.unlink()
            removed.append(path)
        return removed

    def keep_backup(self, mac: str, stamp: str) -> Path:
        backup = self.naming.disk_backup(mac, stamp)
        link_new(self.disk_ref(mac), backup)
        return backup

    def backups(self, mac: str) -> list[Ref]:
        return list(self.naming.disk_backups(mac))

    def remove_backup(self, ref: Ref) -> None:
        Path(ref).unlink()

    def space(self) -> Space:
        files = [p for folder in (self.naming.templates, self.naming.disks) if folder.is_dir()
                 for p in folder.iterdir() if p.is_file()]
        return Space(provisioned=sum(p.stat().st_size for p in files),
                     used=sum(allocated(p) for p in files))

    def tgt_backing(self, mac: str) -> list[str]:
        return [f"backing-store {self.disk_ref(mac)}"]
