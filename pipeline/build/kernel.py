"""Step 2: one kernel flavour installed into a copy of the base tree.

The kernel's own initramfs run is switched off (``INITRD=No``): the
initramfs is made later, once, after the boot package is in and the tree is
stripped, so no hook can copy per-machine state into it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

from pipeline.build import chroot, lock
from pipeline.errors import PipelineError
from pipeline.fsutil import commit, copy_tree, fresh_partial
from pipeline.naming import check_release


def package(flavour: str) -> str:
    return f"linux-image-{flavour}"


def module_releases(tree: Path) -> list[str]:
    """Kernel releases that have a module directory in ``tree``."""
    found: set[str] = set()
    for base in ("usr/lib/modules", "lib/modules"):
        directory = tree / base
        if directory.is_dir():
            found.update(name for name in os.listdir(directory) if (directory / name).is_dir())
    return sorted(found)


def installed_release(tree: Path) -> str:
    """The one kernel release installed in ``tree`` (vmlinuz and modules)."""
    releases = module_releases(tree)
    if len(releases) != 1:
        raise PipelineError(f"{tree}: expected exactly one kernel in /lib/modules, found: "
                            + (", ".join(releases) or "none"))
    release = check_release(releases[0])
    if not (tree / "boot" / f"vmlinuz-{release}").is_file():
        raise PipelineError(f"{tree}: /boot/vmlinuz-{release} is missing")
    return release


# What ``apt-get clean`` removes: downloaded packages, partial downloads and
# apt's binary caches of the package lists.
APT_CACHES = ("var/cache/apt/archives/*.deb", "var/cache/apt/archives/partial/*",
              "var/cache/apt/*.bin")


def drop_apt_caches(tree: Path) -> None:
    """``apt-get clean`` without starting apt in a chroot.

    The kernel tree is copied by every root step, so it should not carry the
    kernel package it was installed from (tens of MB) nor apt's caches (about
    90 MB); the strip would remove them too (generic.RULES), but only after
    that copy.
    """
    for pattern in APT_CACHES:
        for path in tree.glob(pattern):
            if path.is_file() or path.is_symlink():
                path.unlink()


def install_kernel(base: Path, dest: Path, flavour: str, source_date_epoch: int,
                   locked: Mapping[str, str] | None = None) -> str:
    """Copy ``base`` to ``dest`` and install the flavour's kernel; return its release.

    With ``locked`` (package -> version), apt is pinned to those versions and
    the tree must end up with exactly them.
    """
    tmp = fresh_partial(dest)
    copy_tree(base, tmp)
    env = {"DEBIAN_FRONTEND": "noninteractive", "INITRD": "No",
           "SOURCE_DATE_EPOCH": str(source_date_epoch)}
    with chroot.mounted(tmp), lock.pinned(tmp, locked or {}):
        lists = tmp / "var/lib/apt/lists"
        if not any(p.name.endswith("_Packages") for p in lists.glob("*")):
            chroot.run(tmp, ["apt-get", "update"], env=env, echo=True)
        chroot.run(tmp, ["apt-get", "install", "-y", "--no-install-recommends",
                         "-o", "Dpkg::Use-Pty=0", package(flavour)], env=env, echo=True)
    drop_apt_caches(tmp)
    lock.check(f"kernel {flavour}", tmp, locked or {})
    release = installed_release(tmp)
    commit(tmp, dest)
    return release
