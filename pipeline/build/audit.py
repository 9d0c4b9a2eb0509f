"""The audit: inspect finished artifacts for per-machine state and secrets.

It reads the artifacts themselves (the ext4 image through debugfs, the
initramfs through our own cpio reader), never the staging tree, so what it passes
is what machines boot.  Run it on any triple with
``python3 -m pipeline audit out/triples/<image>_<release>.manifest.json``.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from pipeline import ext4, cpio
from pipeline.build import generic
from pipeline.errors import PipelineError
from pipeline.naming import Triple

# Directories of the root image that can hold per-machine state.
ROOT_DIRS = ["/etc", "/var", "/root", "/home", "/tmp", "/srv", "/opt", "/boot/efi"]


def _text_files(root: Path, tops: tuple[str, ...]):
    for top in tops:
        base = root / top
        if not base.is_dir():
            continue
        for dirpath, _dirnames, filenames in os.walk(base):
            for name in filenames:
                path = Path(dirpath) / name
                if path.is_file() and not path.is_symlink() and path.stat().st_size < (1 << 20):
                    yield path


def _uuid_mentions(root: Path, fs_uuid: str, tops: tuple[str, ...]) -> list[tuple[str, str]]:
    needle = fs_uuid.lower().encode()
    found = []
    for path in _text_files(root, tops):
        if needle in path.read_bytes().lower():
            found.append((str(path.relative_to(root)), f"names the root's own UUID {fs_uuid}"))
    return found


def audit_root(image: Path, fs_uuid: str | None = None) -> list[str]:
    fs_uuid = fs_uuid or ext4.fs_uuid(image)
    with tempfile.TemporaryDirectory(prefix="audit-root-") as tmp:
        tree = Path(tmp)
        ext4.extract(image, ROOT_DIRS, tree)
        found = generic.violations(tree) + generic.secrets(tree)
        found += _uuid_mentions(tree, fs_uuid, ("etc",))
        fstab = tree / "etc/fstab"
        if not fstab.is_file():
            found.append(("etc/fstab", "missing"))
        elif not any(line.split()[:2][-1:] == ["/"] and line.startswith("LABEL=")
                     for line in fstab.read_text().splitlines() if line.strip() and not line.startswith("#")):
            found.append(("etc/fstab", "does not mount / by LABEL="))
    return [f"{image.name}: /{rel}: {why}" for rel, why in found]


def audit_initramfs(initrd: Path, fs_uuid: str | None = None) -> list[str]:
    with tempfile.TemporaryDirectory(prefix="audit-initrd-") as tmp:
        root = Path(tmp)
        cpio.extract(initrd, root)
        found = generic.violations(root) + generic.secrets(root)
        if fs_uuid:
            found += _uuid_mentions(root, fs_uuid, ("etc", "conf", "scripts"))
    return [f"{initrd.name}: /{rel}: {why}" for rel, why in found]


def audit_parts(initrd: Path, root: Path) -> list[str]:
    fs_uuid = ext4.fs_uuid(root)
    return audit_root(root, fs_uuid) + audit_initramfs(initrd, fs_uuid)


def audit_triple(triple: Triple) -> list[str]:
    for path in (triple.initrd, triple.root):
        if not path.is_file():
            raise PipelineError(f"{path}: no such file")
    return audit_parts(triple.initrd, triple.root)


def require_clean(findings: list[str]) -> None:
    if findings:
        raise PipelineError("per-machine state or secrets found in the artifacts:\n"
                            + "\n".join("  " + f for f in findings),
                            hint="add a rule to pipeline/generic.py or fix the overlay that adds it")
