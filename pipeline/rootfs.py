"""Step 3: the finished root tree of one triple.

From a copy of the kernel tree: apply the recipe's overlays, install the
injected boot packages, write the generic fstab and initramfs settings,
strip per-machine state, install the first-boot units, and only then make
the initramfs with the image's own initramfs-tools.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Sequence

from . import chroot, generic
from .fsutil import commit, copy_tree, fresh_partial
from .recipe import Recipe

INITRAMFS_CONF = "etc/initramfs-tools/conf.d/zz-image-pipeline.conf"


def apply_overlay(tree: Path, overlay: Path) -> list[str]:
    """Copy an overlay folder into the tree; files become root-owned.

    Modes are kept from the overlay (git keeps the executable bit); owners
    are not, since a checkout's owner means nothing inside the image.
    """
    written = []
    for dirpath, dirnames, filenames in os.walk(overlay):
        dirnames.sort()
        rel_dir = Path(dirpath).relative_to(overlay)
        target_dir = tree / rel_dir
        if not target_dir.exists():
            target_dir.mkdir(mode=0o755, parents=True)
        for name in sorted(filenames) + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            src = Path(dirpath) / name
            dst = target_dir / name
            if os.path.lexists(dst) and (dst.is_symlink() or not dst.is_dir()):
                dst.unlink()
            if src.is_symlink():
                dst.symlink_to(os.readlink(src))
            else:
                shutil.copyfile(src, dst)
                os.chmod(dst, src.stat().st_mode & 0o7777)
                os.chown(dst, 0, 0)
            written.append(str(rel_dir / name))
    return written


def fstab(label: str) -> str:
    return ("# Written by the image pipeline.  The root is named by LABEL, never by\n"
            "# UUID: every machine's clone gets its own file-system UUID.\n"
            f"LABEL={label}\t/\text4\tdefaults,errors=remount-ro\t0\t1\n")


def initramfs_conf(recipe: Recipe) -> str:
    return ("# Written by the image pipeline from the recipe.\n"
            f"MODULES={recipe.initramfs.modules}\n"
            f"COMPRESS={recipe.initramfs.compression}\n"
            "# Never look for a resume device: the build host's swap is not the\n"
            "# machine's, and a diskless machine resumes from nothing.\n"
            "RESUME=none\n"
            "# The root is named by LABEL and its device does not exist while the\n"
            "# image is built, so the fsck hook cannot detect the type: say it.\n"
            "FSTYPE=ext4\n")


def make_root(kernel_tree: Path, dest: Path, recipe: Recipe, release: str,
              overlays: Sequence[Path], debs: Sequence[Path]) -> list[str]:
    """Build the root tree into ``dest``; return the paths the strip removed."""
    tmp = fresh_partial(dest)
    copy_tree(kernel_tree, tmp)
    for overlay in overlays:
        apply_overlay(tmp, overlay)
    (tmp / "etc/fstab").write_text(fstab(recipe.root_image.label))
    conf = tmp / INITRAMFS_CONF
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.write_text(initramfs_conf(recipe))
    env = {"DEBIAN_FRONTEND": "noninteractive", "INITRD": "No",
           "SOURCE_DATE_EPOCH": str(recipe.source_date_epoch)}
    with chroot.mounted(tmp):
        if debs:
            inbox = tmp / "tmp/image-pipeline-debs"
            inbox.mkdir(parents=True, exist_ok=True)
            for deb in debs:
                shutil.copyfile(deb, inbox / deb.name)
            chroot.run(tmp, ["apt-get", "install", "-y", "--no-install-recommends",
                             "-o", "Dpkg::Use-Pty=0",
                             *[f"/tmp/image-pipeline-debs/{deb.name}" for deb in debs]],
                       env=env, echo=True)
            shutil.rmtree(inbox)
        chroot.run(tmp, ["apt-get", "clean"], env=env)
        removed = generic.strip(tmp)
        generic.install_firstboot(tmp)
        chroot.run(tmp, ["update-initramfs", "-c", "-k", release], env=env, echo=True)
    # mkinitramfs may leave temporary files; the tree must still be clean.
    removed += generic.strip(tmp)
    commit(tmp, dest)
    return removed
