"""Templates and machine disks in the iSCSI store.

A template is a triple's root image, copied once into the store and made
read-only.  A machine's disk is a copy of a template made once — a reflink
where the file system can share blocks (XFS with reflink=1, btrfs), else a
sparse copy — with the machine's own file-system UUID.  A disk is never
overwritten: it is made under a temporary name and linked into place, which
fails if a disk is already there.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from pipeline import ext4, runner
from pipeline.errors import PipelineError
from pipeline.fsutil import commit, fresh_partial, fsync_dir

TEMPLATE_MODE = 0o444
DISK_MODE = 0o600


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
