"""Small trees, ext4 images and initramfs archives that unit tests make with
the real tools, to feed the code under test.

A plain module, not a test module: tests import it by name (pytest puts this
folder on sys.path).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

MIB = 1 << 20


def write_files(root: Path, files: dict[str, str]) -> Path:
    """Write each ``files`` entry (path relative to ``root``: text); return ``root``."""
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def ext4_image(tree: Path, image: Path, *mkfs_options: str, size: int = 8 * MIB) -> Path:
    """A sparse ext4 image of ``tree`` made by mkfs.ext4 -d (options such as -L, -U)."""
    with open(image, "wb") as handle:
        handle.truncate(size)
    subprocess.run(["mkfs.ext4", "-q", "-F", *mkfs_options, "-d", str(tree), str(image)],
                   check=True, capture_output=True)
    return image


def newc_archive(tree: Path) -> bytes:
    """A newc archive of ``tree`` the way mkinitramfs makes one (find . | cpio)."""
    names = subprocess.run(["find", "."], cwd=tree, check=True, capture_output=True).stdout
    return subprocess.run(["cpio", "--quiet", "-o", "-H", "newc"], cwd=tree, input=names,
                          check=True, capture_output=True).stdout


def gzip_initrd(tree: Path, path: Path) -> Path:
    """An initramfs of ``tree`` at ``path``: a newc archive, gzip-compressed."""
    path.write_bytes(subprocess.run(["gzip", "-n"], input=newc_archive(tree), check=True,
                                    capture_output=True).stdout)
    return path
