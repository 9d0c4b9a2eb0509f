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

    def bootstrapper_scratch(self, image: str) -> Path:
        """The bootstrapper's own folder: its configuration, work and caches (mkosi)."""
        return bootstrapper_scratch(self.base_tree(image))

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


def bootstrapper_scratch(base_tree: Path) -> Path:
    """The bootstrapper's folder beside a base tree: out/work/<image>/bootstrapper."""
    return base_tree.with_name("bootstrapper")


def partial(path: Path) -> Path:
    """The temporary name a file or tree is written under before rename."""
    return path.with_name(path.name + PARTIAL)


# -- the fleet: the TFTP tree and the iSCSI store that publish fills ----------
#
# A machine's files are named by its MAC in the form iPXE's ${mac:hexhyp}
# and PXELINUX use: lower-case hex, hyphens (52-54-00-12-34-01).  Published
# boot files carry a content id (the first 12 hex digits of their sha256)
# next to image and release, so a rebuilt triple gets new names and never
# replaces a file that a running machine booted from.

MAC_RE = re.compile(r"[0-9a-f]{2}(?::[0-9a-f]{2}){5}")
CONTENT_ID_LEN = 12
_CONTENT_ID_RE = re.compile(r"[0-9a-f]{%d}" % CONTENT_ID_LEN)
# What publish writes into images/ (TFTP) and templates/ (store).
PUBLISHED_SUFFIXES = {"kernel": ".vmlinuz", "initrd": ".initrd.img", "root": ".root.ext4"}
BACKUP_INFIX = ".backup-"


def check_mac(mac: str) -> str:
    """A MAC in canonical form (lower case, colons); anything else is a bug."""
    if not MAC_RE.fullmatch(mac):
        raise ValueError(f"not a canonical MAC address: {mac!r}")
    return mac


def mac_hyphen(mac: str) -> str:
    """52:54:00:12:34:01 -> 52-54-00-12-34-01 (iPXE's ${mac:hexhyp})."""
    return check_mac(mac).replace(":", "-")


def mac_hex(mac: str) -> str:
    """52:54:00:12:34:01 -> 525400123401."""
    return check_mac(mac).replace(":", "")


def content_id(sha256: str) -> str:
    """The short content id of a file from its sha256 (hex)."""
    cid = sha256[:CONTENT_ID_LEN]
    if not _CONTENT_ID_RE.fullmatch(cid):
        raise ValueError(f"not a sha256 hex digest: {sha256!r}")
    return cid


def published_name(image: str, release: str, cid: str, part: str) -> str:
    """``<image>_<release>_<cid><suffix>``: a triple's part as publish names it."""
    if not _CONTENT_ID_RE.fullmatch(cid):
        raise ValueError(f"not a content id: {cid!r}")
    return f"{stem(image, release)}_{cid}{PUBLISHED_SUFFIXES[part]}"


def parse_published(name: str) -> tuple[str, str, str, str]:
    """Split a published file name into (image, release, cid, part)."""
    for part, suffix in PUBLISHED_SUFFIXES.items():
        if name.endswith(suffix):
            base, sep, cid = name[: -len(suffix)].rpartition("_")
            if sep and _CONTENT_ID_RE.fullmatch(cid):
                image, release = parse_stem(base)
                return image, release, cid, part
    raise ValueError(f"not a published boot file or template name: {name!r}")


@dataclass(frozen=True)
class TftpTree:
    """Names in the TFTP tree.  Methods return paths relative to the root,
    with '/', as boot scripts and DHCP name them; :meth:`path` makes them
    absolute."""

    root: Path

    BOOT_SCRIPT = "boot.ipxe"
    IMAGES = "images"
    MACHINES = "machines"
    PXELINUX = "pxelinux.cfg"

    def path(self, relative: str) -> Path:
        return self.root / relative

    def image_file(self, image: str, release: str, cid: str, part: str) -> str:
        return f"{self.IMAGES}/{published_name(image, release, cid, part)}"

    def machine_script(self, mac: str) -> str:
        return f"{self.MACHINES}/{mac_hyphen(mac)}.ipxe"

    def auth_initrd(self, mac: str) -> str:
        return f"{self.MACHINES}/{mac_hyphen(mac)}.auth.cpio"

    def pxelinux_config(self, mac: str) -> str:
        # PXELINUX looks for 01-<mac> (01 = Ethernet hardware type).
        return f"{self.PXELINUX}/01-{mac_hyphen(mac)}"


@dataclass(frozen=True)
class Store:
    """Where the iSCSI side lives: templates, one disk per machine, tgt config."""

    root: Path

    @property
    def templates(self) -> Path:
        return self.root / "templates"

    @property
    def disks(self) -> Path:
        return self.root / "disks"

    @property
    def records(self) -> Path:
        return self.root / "records"

    @property
    def tgt_conf(self) -> Path:
        return self.root / "tgt" / "targets.conf"

    @property
    def dnsmasq_conf(self) -> Path:
        return self.root / "dnsmasq.conf"

    @property
    def secrets(self) -> Path:
        return self.root / "secrets.yaml"

    def disk(self, mac: str) -> Path:
        return self.disks / f"{mac_hyphen(mac)}.ext4"

    def disk_backup(self, mac: str, stamp: str) -> Path:
        """The old disk kept by a re-provision; ``stamp`` is UTC, e.g. 20250102T030405Z."""
        if not re.fullmatch(r"[0-9]{8}T[0-9]{6}Z", stamp):
            raise ValueError(f"not a UTC time stamp: {stamp!r}")
        return self.disks / f"{mac_hyphen(mac)}.ext4{BACKUP_INFIX}{stamp}"

    def disk_backups(self, mac: str) -> list[Path]:
        return sorted(self.disks.glob(f"{mac_hyphen(mac)}.ext4{BACKUP_INFIX}*"))

    def record(self, mac: str) -> Path:
        """Which template a machine's disk was cloned from, and what it boots."""
        return self.records / f"{mac_hyphen(mac)}.json"


def initiator_iqn(authority: str, mac: str) -> str:
    """The machine's iSCSI initiator name: iqn.<authority>:initiator.<12 hex>."""
    return f"iqn.{authority}:initiator.{mac_hex(mac)}"


def target_iqn(authority: str, mac: str) -> str:
    """The machine's own target (its root disk): iqn.<authority>:root.<12 hex>."""
    return f"iqn.{authority}:root.{mac_hex(mac)}"
