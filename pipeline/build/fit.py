"""The fit check: do the kernel, the initramfs and the root image belong together?

The kernel's release string is read from the bzImage header itself; the
initramfs's module directory from its file list; the root's from the image.
All three must name the same release.
"""

from __future__ import annotations

from pathlib import Path

from pipeline import ext4, cpio
from pipeline.errors import PipelineError


def bzimage_release(kernel: Path) -> str:
    """The release string in an x86 bzImage's header (boot protocol >= 2.00)."""
    with open(kernel, "rb") as handle:
        header = handle.read(0x400)
        if header[0x202:0x206] != b"HdrS":
            raise PipelineError(f"{kernel}: not an x86 bzImage (no HdrS header)")
        offset = int.from_bytes(header[0x20E:0x210], "little") + 0x200
        handle.seek(offset)
        text = handle.read(256).split(b"\0", 1)[0].decode("ascii", errors="replace")
    return text.split(" ", 1)[0]


def root_releases(image: Path) -> set[str]:
    found: set[str] = set()
    for directory in ("/usr/lib/modules", "/lib/modules"):
        try:
            found.update(ext4.list_dir(image, directory))
        except PipelineError:
            continue
    return found


def check(kernel: Path, initrd: Path, root: Path, release: str) -> None:
    """Raise unless all three parts name ``release``."""
    missing = [str(p) for p in (kernel, initrd, root) if not p.is_file()]
    if missing:
        raise PipelineError("no such file: " + ", ".join(missing))
    problems = []
    found = bzimage_release(kernel)
    if found != release:
        problems.append(f"kernel {kernel.name} is release {found!r}")
    in_initrd = cpio.module_releases(initrd)
    if in_initrd != {release}:
        problems.append(f"initramfs {initrd.name} has modules for {sorted(in_initrd) or 'no release'}")
    in_root = root_releases(root)
    if in_root != {release}:
        problems.append(f"root image {root.name} has /lib/modules/{sorted(in_root) or 'nothing'}")
    if problems:
        raise PipelineError(f"the triple's parts do not fit release {release}: " + "; ".join(problems))
