"""The root image: ext4 from a tree, by LABEL, sized to its content.

The file is created sparse (truncate, then ``mkfs.ext4 -d``), so unused
space costs nothing on disk.  Its UUID and directory hash seed are derived
from the triple's identity, not random; each machine's clone gets its own
UUID when it is made.
"""

from __future__ import annotations

import math
import os
import re
import uuid
from pathlib import Path

from pipeline import runner

MIB = 1 << 20
BLOCK = 4096
# ext4 metadata (inode tables at the default ratio, bitmaps, descriptors)
# plus the 5 % reserved for root: a share of the file-system size.
METADATA_SHARE = 0.03 + 0.05
JOURNAL = 64 * MIB

# A fixed namespace for the UUIDs we derive.
NAMESPACE = uuid.UUID("6f1b8d0e-3c4e-4f0e-9a55-2f0b6c1d7a10")


def content_bytes(tree: Path) -> int:
    """Space the tree's files and directories take in 4 KiB blocks."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for dirpath, dirnames, filenames in os.walk(tree):
        total += BLOCK
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            st = os.lstat(os.path.join(dirpath, name))
            key = (st.st_dev, st.st_ino)
            if key in seen:
                continue
            seen.add(key)
            total += math.ceil(st.st_size / BLOCK) * BLOCK + 256
    return total


def image_size(content: int, headroom_percent: int, headroom_mib: int) -> int:
    """Image size for ``content`` bytes, rounded up to whole MiB."""
    needed = (content + JOURNAL) / (1 - METADATA_SHARE)
    size = needed * (1 + headroom_percent / 100) + headroom_mib * MIB
    return math.ceil(size / MIB) * MIB


def derived_uuid(*parts: str) -> str:
    return str(uuid.uuid5(NAMESPACE, "\0".join(parts)))


# mke2fs's settings, so that the image's features are the pipeline's choice
# and not whatever /etc/mke2fs.conf the build host has (the same as e2fsprogs
# 1.47.2's ext4 defaults; kernels since 5.15 and e2fsck 1.47 know them all).
MKE2FS_CONF = """\
[defaults]
	base_features = sparse_super,large_file,filetype,resize_inode,dir_index,ext_attr
	default_mntopts = acl,user_xattr
	enable_periodic_fsck = 0
	blocksize = 4096
	inode_size = 256
	inode_ratio = 16384

[fs_types]
	ext4 = {
		features = has_journal,extent,huge_file,flex_bg,metadata_csum,metadata_csum_seed,64bit,dir_nlink,extra_isize,orphan_file
	}
"""

# From 1.47.1 on, mke2fs -d sorts each directory and, with SOURCE_DATE_EPOCH,
# clamps every inode time: the same tree gives the same image.  1.47.0 takes
# the order and the ctimes from the build host's file system.
REPRODUCIBLE_FROM = (1, 47, 1)


def mke2fs_version(text: str | None = None) -> tuple[int, ...]:
    """mke2fs's version, e.g. (1, 47, 2), from ``text`` or from ``mkfs.ext4 -V``;
    () if it cannot be read."""
    if text is None:
        text = runner.tool_version(["mkfs.ext4", "-V"])  # "mke2fs 1.47.2 (1-Jan-2025)"
    match = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", text)
    return tuple(int(part or 0) for part in match.groups()) if match else ()


def unrepeatable_mke2fs() -> str | None:
    """None when mke2fs makes the same image twice; else what it says it is."""
    text = runner.tool_version(["mkfs.ext4", "-V"])
    return None if mke2fs_version(text) >= REPRODUCIBLE_FROM else text


def make_image(tree: Path, dest: Path, *, label: str, fs_uuid: str, hash_seed: str,
               headroom_percent: int, headroom_mib: int, source_date_epoch: int) -> int:
    """Write ``tree`` as an ext4 image at ``dest`` (which must not be in use)."""
    size = image_size(content_bytes(tree), headroom_percent, headroom_mib)
    if (old := unrepeatable_mke2fs()) is not None:
        print(f"    warning: {old} cannot make the same "
              "image twice from one tree (1.47.1 or newer can); ./setup-host installs one",
              flush=True)
    if dest.exists():
        dest.unlink()
    with open(dest, "wb") as handle:
        handle.truncate(size)
    conf = dest.with_name(dest.name + ".mke2fs.conf")
    conf.write_text(MKE2FS_CONF, encoding="utf-8")
    env = {"SOURCE_DATE_EPOCH": str(source_date_epoch),
           "E2FSPROGS_FAKE_TIME": str(source_date_epoch),
           "MKE2FS_CONFIG": str(conf)}
    try:
        runner.run(["mkfs.ext4", "-q", "-F", "-t", "ext4", "-L", label, "-U", fs_uuid,
                    "-E", f"hash_seed={hash_seed}", "-d", str(tree), str(dest)], env=env)
    finally:
        conf.unlink(missing_ok=True)
    return size


def fs_uuid(image: Path) -> str:
    text = runner.output(["dumpe2fs", "-h", str(image)])
    for line in text.splitlines():
        if line.startswith("Filesystem UUID:"):
            return line.split(":", 1)[1].strip()
    raise ValueError(f"{image}: no UUID in dumpe2fs output")


def list_dir(image: Path, path: str) -> list[str]:
    """Names in a directory of the image (without mounting it)."""
    text = runner.output(["debugfs", "-R", f"ls -p {path}", str(image)])
    names = []
    for line in text.splitlines():
        fields = line.strip().strip("/").split("/")
        if len(fields) >= 5 and fields[4] not in (".", ".."):
            names.append(fields[4])
    return names


def extract(image: Path, paths: list[str], dest: Path) -> None:
    """Copy directories out of the image (regular files and folders)."""
    dest.mkdir(parents=True, exist_ok=True)
    present = set(list_dir(image, "/"))
    wanted = [p for p in paths if p.strip("/").split("/")[0] in present]
    if wanted:
        runner.run(["debugfs", "-R", "rdump " + " ".join(wanted) + f" {dest}", str(image)])


def superblock(image: Path) -> dict[str, str]:
    """The superblock fields ``dumpe2fs -h`` prints (name -> value)."""
    text = runner.output(["dumpe2fs", "-h", str(image)])
    fields = {}
    for line in text.splitlines():
        name, sep, value = line.partition(":")
        if sep and value.strip():
            fields.setdefault(name.strip(), value.strip())
    return fields


def set_uuid(image: Path, fs_uuid: str, features: str) -> None:
    """Give a copied image its own UUID, changing as few blocks as possible.

    ``features`` is the image's "Filesystem features" line.  With
    metadata_csum, every checksum is seeded by the UUID: changing it would
    rewrite every group descriptor, inode and directory block (which also
    unshares a reflinked clone from its template) and needs a freshly checked
    file system.  Turning on metadata_csum_seed first keeps the old seed in
    the superblock, so only the superblocks change and no e2fsck is needed
    (kernel >= 4.4, e2fsprogs >= 1.43 read it).
    """
    names = features.split()
    extra = ["-O", "metadata_csum_seed"] if "metadata_csum" in names \
        and "metadata_csum_seed" not in names else []
    runner.run(["tune2fs", *extra, "-U", fs_uuid, str(image)])
