"""The rbd backend: templates and machine disks as RBD images in a Ceph pool.

A template is imported once (``rbd import``), snapshotted and the snapshot
protected: clones are made from that snapshot, which cannot change, so the
template is read-only where it matters.  A machine's disk is a layered clone
of it (``rbd clone``, well under a second, no space until written), named
like the file backend's disk (``<mac>.ext4``).  Both are made under a
``.partial`` name and renamed into place; ``rbd rename`` refuses a name that
is taken, so a disk is never overwritten.

The UUID reaches the clone without copying it: the clone is exposed as a
file by rbd-fuse and tune2fs changes it there (this host has no kernel rbd,
nbd or device-mapper).  tune2fs writes the superblock and its backups only
(see ext4.set_uuid), but RBD copies up a whole object from the parent for
each object it writes into, so a clone's first write costs one object per
superblock copy.  Templates are therefore imported with objects of
TEMPLATE_OBJECT_SIZE (clones inherit it) instead of Ceph's 4 MiB: measured
on a 2 GiB ext4 image (6 superblock copies), a fresh clone uses 24 MiB with
4 MiB objects, 6 MiB with 1 MiB objects.

Every command gets the site's ceph.conf, client id and keyring explicitly
(nothing is read from /etc/ceph), and fails within CONNECT_TIMEOUT when the
cluster cannot be reached.
"""

from __future__ import annotations

import json
import os
import re
import stat
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from pipeline import ext4, runner
from pipeline.errors import ConfigError, PipelineError
from pipeline.fleet.store import Ref, Space
from pipeline.fleet.store.file import disk_releases
from pipeline.naming import BACKUP_INFIX, PARTIAL, Store, parse_published

SNAPSHOT = "template"
TEMPLATE_OBJECT_SIZE = "1M"
CONNECT_TIMEOUT = 20          # seconds a command waits for the monitors
OP_TIMEOUT = 120              # seconds one monitor or OSD operation may take
FUSE_TIMEOUT = 30.0
TOOLS = ["rbd", "rbd-fuse", "tune2fs", "dumpe2fs", "debugfs", "umount"]
_DISK = re.compile(r"[0-9a-f]{2}(?:-[0-9a-f]{2}){5}\.ext4")
# tgt-admin hands bsopts to a shell inside single quotes: none of these in the conf path.
_UNSAFE_FOR_TGT = re.compile(r"[\s'\";\\]")


@dataclass(frozen=True)
class RbdSettings:
    """How to reach the pool: ceph.conf, cephx client id and keyring, pool.

    Inventory keys (site.rbd): conf, client_id, keyring, pool.
    """

    conf: Path
    client_id: str
    keyring: Path
    pool: str

    KEYS = ("conf", "client_id", "keyring", "pool")

    @classmethod
    def from_mapping(cls, data: Any, where: str = "site.rbd") -> "RbdSettings":
        """Settings from an inventory's mapping; every problem is one line."""
        if not isinstance(data, dict):
            raise ConfigError([f"{where}: expected a mapping with keys {', '.join(cls.KEYS)}"])
        problems = [f"{where}: unknown key {key!r} (expected {', '.join(cls.KEYS)})"
                    for key in data if key not in cls.KEYS]
        for key in cls.KEYS:
            if not isinstance(data.get(key), str) or not data[key]:
                problems.append(f"{where}.{key}: expected a non-empty string")
        if problems:
            raise ConfigError(problems)
        if _UNSAFE_FOR_TGT.search(data["conf"]):
            problems.append(f"{where}.conf: expected a path without spaces, quotes, ';' or '\\'")
        if not re.fullmatch(r"[A-Za-z0-9._-]+", data["client_id"]):
            problems.append(f"{where}.client_id: expected letters, digits, '.', '_' or '-' "
                            "(the name after 'client.')")
        if not re.fullmatch(r"[A-Za-z0-9._-]+", data["pool"]):
            problems.append(f"{where}.pool: expected letters, digits, '.', '_' or '-'")
        if problems:
            raise ConfigError(problems)
        return cls(Path(data["conf"]), data["client_id"], Path(data["keyring"]), data["pool"])


class RbdStore:
    """:class:`pipeline.fleet.store.DiskStore` on an RBD pool."""

    kind = "rbd"

    def __init__(self, settings: RbdSettings, naming: Store) -> None:
        self.settings = settings
        self.naming = naming        # only for names: disks/<mac>.ext4 and their backups
        self._listing: list[str] | None = None

    # -- commands
    def _connection(self) -> list[str]:
        s = self.settings
        return ["--conf", str(s.conf), "--id", s.client_id, "--keyring", str(s.keyring)]

    def rbd(self, *args: str) -> str:
        """Run rbd; a failure is one line saying what is wrong with the store.

        The client bounds its own waits: for the monitors (CONNECT_TIMEOUT)
        and for each operation (OP_TIMEOUT), so no command hangs on a
        cluster that is down.
        """
        argv = ["rbd", *self._connection(), "--client_mount_timeout", str(CONNECT_TIMEOUT),
                "--rados_mon_op_timeout", str(OP_TIMEOUT), "--rados_osd_op_timeout", str(OP_TIMEOUT),
                *args]
        try:
            return runner.output(argv)
        except runner.CommandError as exc:
            raise PipelineError(self._explain(exc.tail, args)) from None

    @property
    def where(self) -> str:
        s = self.settings
        return f"{s.pool} (client.{s.client_id}, {s.conf})"

    def _explain(self, text: str, args: tuple[str, ...]) -> str:
        s = self.settings
        said = [line.strip() for line in text.splitlines() if line.strip().startswith("rbd:")]
        last = said[-1] if said else (text.strip().splitlines() or ["no message"])[-1].strip()
        if "error parsing file" in text or "failed to load" in text:
            return f"{s.keyring}: not a Ceph keyring that rbd can read (rbd store {self.where})"
        if "couldn't connect to the cluster" in text or "(110) Connection timed out" in text:
            if "(13) Permission denied" in text or "(1) Operation not permitted" in text:
                return (f"rbd store {self.where}: the cluster refused client.{s.client_id} "
                        f"(is {s.keyring} its keyring?)")
            return f"rbd store {self.where}: cannot reach the Ceph cluster ({last})"
        if "error opening pool" in text:
            return f"rbd store {self.where}: the cluster has no pool {s.pool!r}"
        return f"rbd store {self.where}: rbd {args[0]} failed: {last}"

    def _spec(self, image: str, snapshot: str | None = None) -> str:
        return f"{self.settings.pool}/{image}" + (f"@{snapshot}" if snapshot else "")

    def _images(self) -> list[str]:
        """Image names in the pool, listed once until something changes it."""
        if self._listing is None:
            self._listing = json.loads(self.rbd("ls", "--format", "json", self.settings.pool) or "[]")
        return self._listing

    def _changed(self) -> None:
        self._listing = None

    # -- the interface
    def tools(self) -> list[str]:
        return list(TOOLS)

    def check(self) -> None:
        s = self.settings
        for label, path in (("ceph.conf", s.conf), ("keyring", s.keyring)):
            try:
                with open(path, "rb"):
                    pass
            except OSError as exc:
                raise PipelineError(f"{path}: cannot read the {label} of rbd store {self.where}: "
                                    f"{exc.strerror}") from None
        # The keyring is a secret, kept like the CHAP secrets file.
        mode = stat.S_IMODE(s.keyring.stat().st_mode)
        if mode & 0o077:
            raise PipelineError(f"{s.keyring}: the keyring of rbd store {self.where} is readable "
                                f"by others (mode {mode:04o}); expected mode 0600 (chmod 600)")
        self._changed()
        self._images()

    def prepare(self) -> None:
        """The pool is the site's: made and sized by whoever runs the cluster."""

    def template_ref(self, name: str) -> str:
        return self._spec(name)

    def has_template(self, name: str) -> bool:
        return name in self._images()

    def put_template(self, name: str, root_image: Path) -> str:
        partial = name + PARTIAL
        if partial in self._images():
            self._remove_image(partial)
        self.rbd("import", "--no-progress", "--image-format", "2", "--object-size",
                 TEMPLATE_OBJECT_SIZE, str(root_image), self._spec(partial))
        self._changed()
        self.rbd("snap", "create", "--no-progress", self._spec(partial, SNAPSHOT))
        self.rbd("snap", "protect", self._spec(partial, SNAPSHOT))
        self.rbd("rename", self._spec(partial), self._spec(name))
        return self._spec(name)

    def template_names(self) -> list[str]:
        names = []
        for name in self._images():
            base = name[:-len(PARTIAL)] if name.endswith(PARTIAL) else name
            try:
                parse_published(base)
            except ValueError:
                continue
            names.append(name)
        return sorted(names)

    def _children(self, name: str) -> list[str]:
        if SNAPSHOT not in self._snapshots(name):
            return []
        found = json.loads(self.rbd("children", "--format", "json", self._spec(name, SNAPSHOT)) or "[]")
        return [f"{c['pool']}/{c['image']}" for c in found]

    def _snapshots(self, name: str) -> list[str]:
        return [s["name"] for s in json.loads(self.rbd("snap", "ls", "--format", "json",
                                                       self._spec(name)) or "[]")]

    def template_kept_because(self, name: str) -> str | None:
        children = self._children(name)
        if not children:
            return None
        return (f"template {self._spec(name)} is no machine's any more but {len(children)} "
                f"disk(s) are clones of it ({', '.join(children[:3])}{', ...' if len(children) > 3 else ''}); "
                "kept until they are removed")

    def remove_template(self, name: str) -> str:
        self._remove_image(name)
        return self._spec(name)

    def _remove_image(self, name: str) -> None:
        """Remove an image and its snapshots (a protected one is unprotected first)."""
        for snapshot in self._snapshots(name):
            info = json.loads(self.rbd("info", "--format", "json", self._spec(name, snapshot)))
            if info.get("protected") == "true":
                self.rbd("snap", "unprotect", self._spec(name, snapshot))
        self.rbd("snap", "purge", "--no-progress", self._spec(name))
        self.rbd("rm", "--no-progress", self._spec(name))
        self._changed()

    def _disk_name(self, mac: str) -> str:
        return self.naming.disk(mac).name

    def disk_ref(self, mac: str) -> str:
        return self._spec(self._disk_name(mac))

    def has_disk(self, mac: str) -> bool:
        return self._disk_name(mac) in self._images()

    def clone(self, template: str, mac: str, fs_uuid: str) -> str:
        name = self._disk_name(mac)
        if name in self._images():
            raise PipelineError(f"{self._spec(name)}: a disk is already there; it is never overwritten")
        partial = name + PARTIAL
        if partial in self._images():
            self._remove_image(partial)
        self.rbd("clone", self._spec(template, SNAPSHOT), self._spec(partial))
        self._changed()
        try:
            with self.exposed(partial) as path:
                features = ext4.superblock(path).get("Filesystem features", "")
                ext4.set_uuid(path, fs_uuid, features)
            # Refuses a taken name: the disk is never overwritten.
            self.rbd("rename", self._spec(partial), self._spec(name))
        except BaseException:
            self._remove_image(partial)
            raise
        finally:
            self._changed()
        return self._spec(name)

    def disk_releases(self, mac: str) -> set[str]:
        with self.exposed(self._disk_name(mac)) as path:
            return disk_releases(path)

    def disks(self) -> list[Ref]:
        return [self._spec(n) for n in sorted(self._images()) if _DISK.fullmatch(n)]

    def remove_leftovers(self) -> list[Ref]:
        removed: list[Ref] = []
        for name in sorted(self._images()):
            if name.endswith(PARTIAL) and _DISK.fullmatch(name[:-len(PARTIAL)]):
                self._remove_image(name)
                removed.append(self._spec(name))
        return removed

    def keep_backup(self, mac: str, stamp: str) -> str:
        backup = self.naming.disk_backup(mac, stamp).name
        self.rbd("rename", self.disk_ref(mac), self._spec(backup))
        self._changed()
        return self._spec(backup)

    def backups(self, mac: str) -> list[Ref]:
        prefix = self._disk_name(mac) + BACKUP_INFIX
        return [self._spec(n) for n in sorted(self._images()) if n.startswith(prefix)]

    def remove_backup(self, ref: Ref) -> None:
        pool, _, name = str(ref).partition("/")
        if pool != self.settings.pool or BACKUP_INFIX not in name:
            raise PipelineError(f"{ref}: not a disk backup of rbd store {self.where}")
        self._remove_image(name)

    def usage(self) -> dict[str, tuple[int, int]]:
        """Image (or image@snapshot) -> (provisioned, used) bytes, from ``rbd du``."""
        found = json.loads(self.rbd("du", "--format", "json", "--pool", self.settings.pool))
        return {img["name"] + (f"@{img['snapshot']}" if img.get("snapshot") else ""):
                (int(img["provisioned_size"]), int(img["used_size"])) for img in found["images"]}

    def space(self) -> Space:
        """Over templates and disks: provisioned by the images, used by them and
        their snapshots (a template's data is in its snapshot)."""
        ours = set(self.template_names()) | {str(r).split("/", 1)[1] for r in self.disks()}
        sizes = {k: v for k, v in self.usage().items() if k.split("@")[0] in ours}
        return Space(provisioned=sum(p for k, (p, _) in sizes.items() if "@" not in k),
                     used=sum(u for _, u in sizes.values()))

    def tgt_backing(self, mac: str) -> list[str]:
        s = self.settings
        # tgt-admin runs tgtadm through a shell: the ';' must stay inside quotes.
        return ["bs-type rbd", f"bsopts \"'conf={s.conf};id={s.client_id}'\"",
                f"backing-store {self.disk_ref(mac)}"]

    # -- an image as a file
    @contextmanager
    def exposed(self, image: str) -> Iterator[Path]:
        """The image as a file, through rbd-fuse, until the block ends."""
        mount = Path(tempfile.mkdtemp(prefix="rbd-fuse-"))
        log = mount.with_name(mount.name + ".log")
        fuse = runner.Background(["rbd-fuse", *self._connection(), "-p", self.settings.pool,
                                  "-r", image, str(mount), "-f"], log)
        try:
            deadline = time.monotonic() + FUSE_TIMEOUT
            while not (os.path.ismount(mount) and (mount / image).exists()):
                if not fuse.alive() or time.monotonic() > deadline:
                    said = log.read_text(errors="replace").strip().splitlines()[-1:] or ["no message"]
                    raise PipelineError(f"rbd store {self.where}: rbd-fuse could not expose "
                                        f"{image} as a file ({said[0]})")
                time.sleep(0.05)
            yield mount / image
        finally:
            if os.path.ismount(mount):
                runner.run(["umount", str(mount)], check=False, timeout=FUSE_TIMEOUT)
            if fuse.wait(FUSE_TIMEOUT) is None:
                fuse.stop(grace=5)
            os.rmdir(mount)
            log.unlink(missing_ok=True)
