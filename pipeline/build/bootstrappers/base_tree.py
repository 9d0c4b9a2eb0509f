"""What every base tree has, whichever tool made it; mmdebstrap is the model.

Its apt: one line in ``/etc/apt/sources.list`` for the recipe's mirror and
suite, its options in one apt.conf.d file, and the package lists of that one
source fetched by apt itself (signed InRelease and Packages), so that the
apt runs of the later steps trust them.  Its own device nodes (the chroot
steps never mount the host's /dev), an empty machine-id and the
placeholder fstab.
"""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path
from typing import Mapping

from pipeline.build import chroot
from pipeline.build.generic import MACHINE_ID_GENERIC
from pipeline.build.recipe import Recipe

# Where the options go in a tree not made by mmdebstrap (mmdebstrap writes
# the same lines to its own 99mmdebstrap).
APT_CONF = "etc/apt/apt.conf.d/99image-pipeline"


def sources_list(recipe: Recipe) -> str:
    return f"deb {recipe.mirror} {recipe.suite} main\n"


def apt_options(recipe: Recipe) -> list[str]:
    """The apt options of every apt run of a build, as apt.conf lines."""
    options = ['Acquire::Languages "none";']
    if not recipe.mirror_check_valid_until:
        # A snapshot mirror serves Release files whose Valid-Until has passed.
        options.append('Acquire::Check-Valid-Until "false";')
    return options


def write_apt_config(recipe: Recipe, tree: Path) -> None:
    """The tree's sources.list and apt options, as mmdebstrap leaves them."""
    (tree / "etc/apt/apt.conf.d").mkdir(parents=True, exist_ok=True)
    (tree / "etc/apt/sources.list").write_text(sources_list(recipe), encoding="utf-8")
    (tree / APT_CONF).write_text("".join(line + "\n" for line in apt_options(recipe)),
                                 encoding="utf-8")


def copy_host_resolver(tree: Path, host: Path = Path("/etc/resolv.conf")) -> None:
    """The host's resolver configuration, as mmdebstrap copies it: the tree's
    apt needs it to reach the mirror; the strip step removes it."""
    target = tree / "etc/resolv.conf"
    if host.exists() and not os.path.lexists(target):
        shutil.copyfile(host, target)


def update_lists(tree: Path, env: Mapping[str, str]) -> None:
    """Fetch the package lists of the tree's own sources, inside the tree."""
    with chroot.mounted(tree):
        chroot.run(tree, ["apt-get", "update"], env=env, echo=True)


# (name, major, minor) of the character devices mmdebstrap makes, all 0666,
# and its links into /proc.
DEVICES = (("console", 5, 1), ("full", 1, 7), ("null", 1, 3), ("ptmx", 5, 2),
           ("random", 1, 8), ("tty", 5, 0), ("urandom", 1, 9), ("zero", 1, 5))
DEVICE_LINKS = (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2"))
FSTAB_PLACEHOLDER = "# UNCONFIGURED FSTAB FOR BASE SYSTEM\n"


def make_devices(tree: Path) -> None:
    """/dev as mmdebstrap leaves it: the nodes tools in a chroot write to."""
    dev = tree / "dev"
    for name in ("pts", "shm"):
        (dev / name).mkdir(parents=True, exist_ok=True)
    for name, major, minor in DEVICES:
        node = dev / name
        if os.path.lexists(node):
            if node.is_char_device():
                continue
            node.unlink()  # e.g. a plain file some tool wrote to a missing /dev/null
        os.mknod(node, 0o666 | stat.S_IFCHR, os.makedev(major, minor))
        os.chmod(node, 0o666)  # mknod honours the umask
    for name, target in DEVICE_LINKS:
        if not os.path.lexists(dev / name):
            (dev / name).symlink_to(target)


def settle_identity(tree: Path) -> None:
    """An empty machine-id and the placeholder fstab, as mmdebstrap leaves them."""
    (tree / "etc/machine-id").write_text(MACHINE_ID_GENERIC, encoding="utf-8")
    fstab = tree / "etc/fstab"
    if not os.path.lexists(fstab):
        fstab.write_text(FSTAB_PLACEHOLDER, encoding="utf-8")
