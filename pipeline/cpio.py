"""Reading an initramfs without unpacking it to disk.

An initramfs is one or more newc cpio archives, back to back: uncompressed
ones first (early microcode), then usually one compressed archive.  Parsing
it here is one decompression and one pass, where ``lsinitramfs`` plus
``unmkinitramfs`` took two slow passes; the fit check and the audit share it.
"""

from __future__ import annotations

import gzip
import lzma
import os
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from pipeline import runner
from pipeline.errors import PipelineError

HEADER_LEN = 110
LEADING = re.compile(r"^(?:\./|/)+")
TRAILER = "TRAILER!!!"

# Compressed formats by magic number: (magic, decompressor argv or None for stdlib).
EXTERNAL = (
    (b"\x28\xb5\x2f\xfd", ["zstd", "-dc"]),
    (b"\x02\x21\x4c\x18", ["lz4", "-dc"]),
    (b"\x89\x4c\x5a\x4f", ["lzop", "-dc"]),
)


@dataclass(frozen=True)
class Member:
    name: str       # relative, without a leading ./ or /
    mode: int
    data: bytes     # file content, or the link target for a symlink
    uid: int = 0
    gid: int = 0
    mtime: int = 0
    archive: int = 0  # which of the archives back to back (0: the first)

    @property
    def is_file(self) -> bool:
        return (self.mode & 0o170000) == 0o100000

    @property
    def is_dir(self) -> bool:
        return (self.mode & 0o170000) == 0o040000

    @property
    def is_symlink(self) -> bool:
        return (self.mode & 0o170000) == 0o120000


def _decompress(blob: bytes, source: Path) -> bytes:
    try:
        if blob[:2] == b"\x1f\x8b":
            return gzip.decompress(blob)
        if blob[:6] == b"\xfd7zXZ\x00" or blob[:3] == b"\x5d\x00\x00":
            return lzma.decompress(blob)
    except (OSError, EOFError, zlib.error, lzma.LZMAError) as exc:
        raise PipelineError(f"{source}: corrupt compressed data: {exc}") from None
    for magic, argv in EXTERNAL:
        if blob.startswith(magic):
            return runner.output_bytes(argv, input=blob)
    raise PipelineError(f"{source}: unknown compression (magic {blob[:6].hex()})")


def _archive(data: bytes, pos: int, source: Path, number: int) -> Iterator[Member | int]:
    """Members of the cpio archive at ``pos``; finally the offset after it."""
    while True:
        header = data[pos:pos + HEADER_LEN]
        if len(header) < HEADER_LEN or header[:6] not in (b"070701", b"070702"):
            raise PipelineError(f"{source}: corrupt cpio header at offset {pos}")
        try:
            fields = [int(header[6 + 8 * i:14 + 8 * i], 16) for i in range(13)]
        except ValueError:
            raise PipelineError(f"{source}: corrupt cpio header at offset {pos}") from None
        mode, uid, gid, mtime, size, namesize = (fields[1], fields[2], fields[3], fields[5],
                                                  fields[6], fields[11])
        name_end = pos + HEADER_LEN + namesize
        name = data[pos + HEADER_LEN:name_end - 1].decode("utf-8", errors="replace")
        pos = (name_end + 3) & ~3
        body = data[pos:pos + size]
        pos = (pos + size + 3) & ~3
        if name == TRAILER:
            yield pos
            return
        name = LEADING.sub("", name)
        if name == ".":
            name = ""
        if name:
            yield Member(name, mode, body, uid, gid, mtime, number)


def members(path: Path) -> Iterator[Member]:
    """Every member of every archive in the initramfs at ``path``."""
    data = path.read_bytes()
    pos, number = 0, 0
    while pos < len(data):
        while pos < len(data) and data[pos] == 0:
            pos += 1
        if pos >= len(data):
            return
        if data[pos:pos + 4] != b"0707":
            data, pos = _decompress(data[pos:], path), 0
            continue
        for item in _archive(data, pos, path, number):
            if isinstance(item, int):
                pos = item
            else:
                yield item
        number += 1


MODULE_DIR = re.compile(r"^(?:usr/)?lib/modules/([^/]+)/")


def module_releases(path: Path) -> set[str]:
    return {m.group(1) for member in members(path) if (m := MODULE_DIR.match(member.name))}


# What the audit needs from an initramfs: configuration and scripts, not
# modules, firmware or binaries.
AUDIT_PREFIXES = ("etc/", "conf/", "scripts/", "root/", "home/", "var/", "tmp/", "run/")


def extract(path: Path, dest: Path, prefixes: tuple[str, ...] = AUDIT_PREFIXES) -> set[str]:
    """Write the members under ``prefixes`` to ``dest``; return every release seen."""
    releases = set()
    for member in members(path):
        if m := MODULE_DIR.match(member.name):
            releases.add(m.group(1))
        if not member.name.startswith(prefixes) or ".." in member.name.split("/"):
            continue
        target = dest / member.name
        # A symlink member must not lead a later member outside dest.
        if not os.path.realpath(target.parent).startswith(os.path.realpath(dest) + os.sep) \
                and os.path.realpath(target.parent) != os.path.realpath(dest):
            raise PipelineError(f"{path}: member {member.name} leads outside the archive")
        if member.is_dir:
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        if os.path.lexists(target):
            target.unlink()
        if member.is_symlink:
            target.symlink_to(member.data.decode("utf-8", errors="replace"))
        elif member.is_file:
            target.write_bytes(member.data)
            target.chmod(member.mode & 0o777)
    return releases


# -- writing ------------------------------------------------------------------
#
# A small archive that a boot loader appends to the real initramfs (iPXE's
# second ``initrd``): the kernel unpacks archives one after the other into the
# same root.  Written here, not by cpio(1), so that it is byte-for-byte the
# same for the same content (mtime 0, owner root, inode numbers from 1).

S_IFDIR = 0o040000
S_IFREG = 0o100000


def _newc_entry(ino: int, name: str, mode: int, data: bytes) -> bytes:
    encoded = name.encode("utf-8") + b"\0"
    nlink = 2 if mode & 0o170000 == S_IFDIR else 1
    # ino mode uid gid nlink mtime filesize devmajor devminor rdevmajor rdevminor namesize check
    fields = (ino, mode, 0, 0, nlink, 0, len(data), 0, 0, 0, 0, len(encoded), 0)
    header = b"070701" + b"".join(b"%08X" % value for value in fields)
    entry = header + encoded
    entry += b"\0" * (-len(entry) % 4)
    return entry + data + b"\0" * (-len(data) % 4)


def write_newc(entries: list[tuple[str, int, bytes]]) -> bytes:
    """An uncompressed newc archive of ``entries`` (name, mode with file type,
    data) in the given order, ended by the trailer.  Names are relative
    (``etc/x``); a directory must come before what is in it."""
    out = bytearray()
    for ino, (name, mode, data) in enumerate(entries, start=1):
        name = LEADING.sub("", name)
        if not name or ".." in name.split("/") or mode & 0o170000 not in (S_IFDIR, S_IFREG):
            raise ValueError(f"cannot archive {name!r} with mode {mode:o}")
        if mode & 0o170000 == S_IFDIR and data:
            raise ValueError(f"directory {name!r} with data")
        out += _newc_entry(ino, name, mode, data)
    out += _newc_entry(0, TRAILER, 0, b"")
    return bytes(out)
