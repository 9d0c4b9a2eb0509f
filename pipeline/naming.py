"""Every artifact name and path, in one place.

A triple is named by its image and its kernel release; the three parts and
the manifest differ only by suffix, so a directory listing shows at once
which files go together::

    out/triples/trixie_6.12.57+deb13-amd64.vmlinuz
    out/triples/trixie_6.12.57+deb13-amd64.initrd.img
    out/triples/trixie_6.12.57+deb13-amd64.root.ext4
    out/triples/trixie_6.12.57+deb13-amd64.manifest.json

Work trees (bootstrap, kernel, root) live under ``out/work/<image>/``; each
finished tree has a small JSON stamp beside it.  No other module builds these
names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

SUFFIXES = {
    "kernel": ".vmlinuz",
    "initrd": ".initrd.img",
    "root": ".root.ext4",
    "manifest": ".manifest.json",
}

# A kernel release as Debian writes it: 6.12.57+deb13-amd64, 6.1.0-28-cloud-amd64.
RELEASE_RE = re.compile(r"[0-9]+\.[0-9]+[0-9A-Za-z.+~_-]*")

# Marks a file or tree that is being written; never taken as finished.
PARTIAL = ".partial"


def check_release(release: str) -> str:
    if not RELEASE_RE.fullmatch(release) or ".." in release or "/" in release:
        raise ValueError(f"not a kernel release string: {release!r}")
    return release


def stem(image: str, release: str) -> str:
    """The shared part of the names of one triple: ``<image>_<release>``."""
    return f"{image}_{check_release(release)}"


def parse_stem(name: str) -> tuple[str, str]:
    """Split a triple file name (or stem) back into (image, release)."""
    base = Path(name).name
    for suffix in SUFFIXES.values():
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    image, sep, release = base.partition("_")
    if not sep or not image:
        raise ValueError(f"not a triple name: {name!r}")
    return image, check_release(release)


def task_name(image: str, flavour: str) -> str:
    """Name of a triple's doit sub-task, e.g. ``trixie-amd64``."""
    return f"{image}-{flavour}"


@dataclass(frozen=True)
class Triple:
    """The four files of one triple."""

    directory: Path
    image: str
    release: str

    @property
    def stem(self) -> str:
        return stem(self.image, self.release)

    def path(self, part: str) -> Path:
        return self.directory / (self.stem + SUFFIXES[part])

    @property
    def kernel(self) -> Path:
        return self.path("kernel")

    @property
    def initrd(self) -> Path:
        return self.path("initrd")

    @property
    def root(self) -> Path:
        return self.path("root")

    @property
    def manifest(self) -> Path:
        return self.path("manifest")

    def parts(self) -> dict[str, Path]:
        """The three boot parts (not the manifest), by role."""
        return {part: self.path(part) for part in ("kernel", "initrd", "root")}

    @classmethod
    def from_manifest(cls, manifest: Path) -> "Triple":
        image, release = parse_stem(manifest.name)
        return cls(manifest.parent, image, release)


@dataclass(frozen=True)
class Layout:
    """Where everything lives under one output directory."""

    out: Path

    @property
    def triples(self) -> Path:
        return self.out / "triples"

    @property
    def doit_db(self) -> Path:
        return self.out / ".doit.db"

    def work(self, image: str) -> Path:
        return self.out / "work" / image

    def base_tree(self, image: str) -> Path:
        return self.work(image) / "base"

    def base_stamp(self, image: str) -> Path:
        return self.work(image) / "base.json"

    def flavour_dir(self, image: str, flavour: str) -> Path:
        return self.work(image) / flavour

    def kernel_tree(self, image: str, flavour: str) -> Path:
        return self.flavour_dir(image, flavour) / "kernel"

    def kernel_stamp(self, image: str, flavour: str) -> Path:
        return self.flavour_dir(image, flavour) / "kernel.json"

    def root_tree(self, image: str, flavour: str) -> Path:
        return self.flavour_dir(image, flavour) / "rootfs"

    def root_stamp(self, image: str, flavour: str) -> Path:
        return self.flavour_dir(image, flavour) / "rootfs.json"

    def triple_stamp(self, image: str, flavour: str) -> Path:
        """Which triple this flavour produced last (release and hashes)."""
        return self.flavour_dir(image, flavour) / "triple.json"

    def initramfs_cache(self, image: str, flavour: str, key: str | None = None) -> Path:
        """Initramfs files made earlier for this flavour, by the digest of their inputs.

        Without ``key``: the folder that holds them; with it: the one file.
        """
        folder = self.flavour_dir(image, flavour) / "initramfs-cache"
        if key is None:
            return folder
        if not re.fullmatch(r"[0-9a-f]{16,64}", key):
            raise ValueError(f"not an initramfs cache key: {key!r}")
        return folder / f"{key}.initrd.img"

    def triple(self, image: str, release: str) -> Triple:
        return Triple(self.triples, image, release)

    def packages_dir(self) -> Path:
        """Where the pipeline builds the injected Debian packages."""
        return self.out / "packages"


def partial(path: Path) -> Path:
    """The temporary name a file or tree is written under before rename."""
    return path.with_name(path.name + PARTIAL)
