"""What belongs to one machine, and how the image stays free of it.

One table, :data:`RULES`, says which files are per-machine state.  The strip
step applies it to the staging tree before the initramfs is made (so no hook
copies such a file into it); the audit applies the same table to the
finished artifacts and fails on anything left.  libguestfs virt-sysprep's
operations were the checklist; the iSCSI initiator name, iSCSI node records
and multipath ``wwids``/``bindings`` are added because an iSCSI-root image
must not carry them.

Decision on machine-id: the image holds an EMPTY /etc/machine-id, as
Debian's cloud images and virt-sysprep leave it.  systemd makes a new ID on
each machine's first boot and commits it once the root is writable.  We
tried ``uninitialized`` first (machine-id(5): "first boot"): it makes
systemd-firstboot ask for locale, time zone and root password on the
console ("Press any key to proceed") and a headless machine never finishes
booting -- seen in the qemu lab.
"""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass
from pathlib import Path

from pipeline.fsutil import data_file

MACHINE_ID_GENERIC = ""


@dataclass(frozen=True)
class Rule:
    pattern: str    # glob relative to the root; '**' matches any depth
    why: str
    # remove: the path must not exist (files only; directories are kept)
    # comments-only: may exist but hold nothing but comments and blank lines
    action: str = "remove"


RULES: tuple[Rule, ...] = (
    Rule("etc/ssh/ssh_host_*", "SSH host key (made at first boot)"),
    Rule("etc/machine-id", "machine-id (must be empty)", "machine-id"),
    Rule("var/lib/dbus/machine-id", "D-Bus machine-id"),
    Rule("var/lib/systemd/random-seed", "systemd random seed"),
    Rule("var/lib/systemd/credential.secret", "systemd credential secret"),
    Rule("var/lib/urandom/random-seed", "random seed"),
    Rule("boot/efi/loader/random-seed", "boot loader random seed"),
    Rule("etc/iscsi/initiatorname.iscsi", "iSCSI initiator name (comes from the boot parameters)"),
    Rule("etc/initiatorname.iscsi", "iSCSI initiator name (initramfs copy)"),
    Rule("etc/open-iscsi-boot/chap", "iSCSI CHAP credentials (come from the per-machine initrd)"),
    Rule("etc/iscsi/nodes/**", "iSCSI node record"),
    Rule("etc/iscsi/send_targets/**", "iSCSI discovery record"),
    Rule("var/lib/iscsi/**", "iSCSI node record"),
    Rule("etc/multipath/wwids", "multipath wwids (names one machine's LUN)", "comments-only"),
    Rule("etc/multipath/bindings", "multipath bindings (names one machine's LUN)", "comments-only"),
    Rule("var/lib/dhcp/*", "DHCP lease"),
    Rule("var/lib/dhclient/*", "DHCP lease"),
    Rule("var/lib/NetworkManager/*", "NetworkManager lease or state"),
    Rule("var/lib/systemd/network/*", "systemd-networkd lease"),
    Rule("etc/udev/rules.d/70-persistent-*.rules", "udev persistent device rules"),
    Rule("var/log/**", "log file", "empty"),
    Rule("var/lib/apt/lists/*", "apt package lists", "apt-lists"),
    Rule("var/cache/apt/*.bin", "apt cache"),
    Rule("var/cache/apt/archives/*.deb", "downloaded package"),
    Rule("var/cache/debconf/*-old", "debconf backup"),
    Rule("var/lib/dpkg/*-old", "dpkg backup"),
    Rule("var/backups/*", "backup of system files"),
    Rule("etc/*-", "backup of an account file (passwd-, shadow-, …)"),
    Rule("root/.*_history", "shell history"),
    Rule("home/*/.*_history", "shell history"),
    Rule("root/.lesshst", "pager history"),
    Rule("root/.viminfo", "editor history"),
    Rule("root/.wget-hsts", "wget history"),
    Rule("root/.ssh/known_hosts", "SSH known hosts of the build"),
    Rule("etc/hostname", "the build host's hostname (the name comes from the inventory)"),
    Rule("etc/resolv.conf", "the build host's resolver configuration", "no-regular-file"),
    Rule("tmp/**", "temporary file"),
    Rule("var/tmp/**", "temporary file"),
    Rule("var/cache/ldconfig/aux-cache", "ldconfig cache of the build"),
    Rule("var/lib/systemd/timers/*", "timer stamps"),
    Rule("var/lib/systemd/catalog/database", "journal catalog, rebuilt on boot"),
    Rule("var/lib/logrotate/status", "logrotate state"),
    Rule("var/cache/man/**", "man page index"),
    Rule("var/mail/*", "mail"),
    Rule("var/spool/mail/*", "mail"),
    Rule("etc/lvm/archive/*", "LVM metadata of the build host"),
    Rule("etc/lvm/backup/*", "LVM metadata of the build host"),
)

# Directories where no secret may be, scanned file by file by the audit.
SECRET_DIRS = ("etc", "root", "home", "var/lib", "srv", "opt", "conf", "scripts")
SECRET_MARKERS = (b"PRIVATE KEY-----", b"BEGIN OPENSSH PRIVATE KEY")

# Lines allowed in /etc/hostname-like generic files, and in apt's lists dir.
APT_LISTS_KEEP = {"lock", "partial", "auxfiles"}


def _walk(root: Path, pattern: str) -> list[Path]:
    """Files (and symlinks) under ``root`` that match ``pattern``.

    ``**`` at the end matches every file below that directory; otherwise
    matching is per path component, like a shell glob.
    """
    if pattern.endswith("/**"):
        top = root / pattern[:-3]
        if not top.is_dir() or top.is_symlink():
            return []
        found = []
        for dirpath, dirnames, filenames in os.walk(top):
            dirnames.sort()
            for name in sorted(filenames):
                found.append(Path(dirpath) / name)
            for name in dirnames:
                if os.path.islink(os.path.join(dirpath, name)):
                    found.append(Path(dirpath) / name)
        return found
    parts = pattern.split("/")
    current = [root]
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        following = []
        for directory in current:
            if not directory.is_dir() or directory.is_symlink():
                continue
            try:
                names = sorted(os.listdir(directory))
            except OSError:
                continue
            for name in names:
                if fnmatch.fnmatchcase(name, part):
                    path = directory / name
                    if last and path.is_dir() and not path.is_symlink():
                        continue
                    following.append(path)
        current = following
    return current


def _comment_only(path: Path) -> bool:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return False
    return all(not line.strip() or line.lstrip().startswith("#") for line in text.splitlines())


def violations(root: Path) -> list[tuple[str, str]]:
    """Per-machine state found under ``root``: (path relative to root, why)."""
    found: list[tuple[str, str]] = []
    for rule in RULES:
        for path in _walk(root, rule.pattern):
            rel = str(path.relative_to(root))
            if rule.action == "machine-id":
                if path.is_symlink() or path.read_text(errors="replace").strip() != "":
                    found.append((rel, rule.why))
            elif rule.action == "comments-only":
                if not _comment_only(path):
                    found.append((rel, rule.why))
            elif rule.action == "empty":
                if path.is_file() and not path.is_symlink() and path.stat().st_size > 0:
                    found.append((rel, rule.why))
            elif rule.action == "apt-lists":
                if path.name not in APT_LISTS_KEEP:
                    found.append((rel, rule.why))
            elif rule.action == "no-regular-file":
                if not path.is_symlink():
                    found.append((rel, rule.why))
            else:
                found.append((rel, rule.why))
    return found


def secrets(root: Path) -> list[tuple[str, str]]:
    """Files holding private key material under the scanned directories."""
    found = []
    for top in SECRET_DIRS:
        base = root / top
        if not base.is_dir():
            continue
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames.sort()
            for name in sorted(filenames):
                path = Path(dirpath) / name
                if path.is_symlink() or not path.is_file():
                    continue
                try:
                    with open(path, "rb") as handle:
                        data = handle.read(1 << 20)
                except OSError:
                    continue
                if any(marker in data for marker in SECRET_MARKERS):
                    found.append((str(path.relative_to(root)), "private key material"))
    return found


def strip(root: Path) -> list[str]:
    """Remove per-machine state from a staging tree; return what was removed."""
    removed = []
    for rel, _why in violations(root):
        path = root / rel
        if path.is_dir() and not path.is_symlink():
            continue
        path.unlink()
        removed.append(rel)
    # Empty, whatever the bootstrapper left (see the module docstring).
    machine_id = root / "etc/machine-id"
    if os.path.lexists(machine_id):
        machine_id.unlink()
    machine_id.write_text(MACHINE_ID_GENERIC)
    machine_id.chmod(0o444)
    # Node-record directories left empty by the removal above are fine;
    # files the image needs (e.g. a generic /etc/hosts) are written here.
    hosts = root / "etc/hosts"
    hosts.write_text("127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n"
                     "ff02::1\t\tip6-allnodes\nff02::2\t\tip6-allrouters\n")
    return removed


# The unit that makes each machine's SSH host keys on its first boot: the
# generic image carries none (see RULES).
FIRSTBOOT_SSH_UNIT = data_file("pipeline.build", "ssh-host-keys.service")
FIRSTBOOT_SSH_NAME = "ssh-host-keys.service"


def install_firstboot(root: Path) -> None:
    """Install and enable what recreates per-machine state on first boot."""
    units = root / "etc/systemd/system"
    (units / "multi-user.target.wants").mkdir(parents=True, exist_ok=True)
    (units / FIRSTBOOT_SSH_NAME).write_bytes(FIRSTBOOT_SSH_UNIT.read_bytes())
    link = units / "multi-user.target.wants" / FIRSTBOOT_SSH_NAME
    if os.path.lexists(link):
        link.unlink()
    link.symlink_to(f"/etc/systemd/system/{FIRSTBOOT_SSH_NAME}")
