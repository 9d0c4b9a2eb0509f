"""Publish's plan: which triple each machine boots, checked before any write.

A machine boots the newest release of its image's first kernel flavour (or
of the flavour it names, or the release it pins).  A machine whose disk
already exists must boot a kernel whose modules that disk holds: its disk was
cloned from an older template and is never changed by publishing.  When the
newest release is not on the disk, the machine stays on the newest release
that is, and the plan says so; a pinned release that the disk lacks is an
error.  Every problem is collected, and publish writes nothing while there
is one.

Reading the plan writes nothing: it reads manifests, the machines' records
and (read-only, through the store: pipeline.fleet.store) the /lib/modules
folder of their disks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.fleet import debversion
from pipeline.fleet.bootfiles import BootSet
from pipeline.fleet.derive import Derived, derive
from pipeline.errors import ConfigError, PipelineError
from pipeline.fsutil import read_json, sha256_file
from pipeline.fleet.inventory import Inventory, Machine
from pipeline.fleet.store import DiskStore, open_store
from pipeline.naming import TftpTree, Triple, content_id, published_name


@dataclass(frozen=True)
class Built:
    """One complete triple in the triples folder, as its manifest describes it."""

    triple: Triple
    flavour: str
    sha256: tuple[tuple[str, str], ...]   # (part, hex digest) for kernel, initrd, root
    label: str

    @property
    def image(self) -> str:
        return self.triple.image

    @property
    def release(self) -> str:
        return self.triple.release

    def cid(self, part: str) -> str:
        return content_id(dict(self.sha256)[part])

    def boot(self, tftp: TftpTree) -> BootSet:
        return BootSet(self.image, self.release, self.flavour,
                       tftp.image_file(self.image, self.release, self.cid("kernel"), "kernel"),
                       tftp.image_file(self.image, self.release, self.cid("initrd"), "initrd"),
                       self.label)

    @property
    def template_name(self) -> str:
        """The name of its template in any store (named by the root's content)."""
        return published_name(self.image, self.release, self.cid("root"), "root")


@dataclass(frozen=True)
class MachinePlan:
    machine: Machine
    derived: Derived
    wanted: Built          # what the inventory asks for; new disks are cloned from it
    boot: BootSet          # what the machine will boot (wanted, unless its disk says otherwise)
    boot_from: Built | None  # the triple its boot files come from; None: already published
    has_disk: bool
    note: str | None       # why the machine does not boot what it asked for


@dataclass(frozen=True)
class Plan:
    inventory: Inventory
    machines: tuple[MachinePlan, ...]
    problems: tuple[str, ...]
    store: DiskStore

    def check(self) -> None:
        if self.problems:
            raise ConfigError(list(self.problems))

    @property
    def notes(self) -> list[str]:
        return [m.note for m in self.machines if m.note]

    def sources(self) -> dict[str, Path]:
        """TFTP-relative boot file -> the triple file it is copied from."""
        found: dict[str, Path] = {}
        for m in self.machines:
            if m.boot_from is not None:
                found[m.boot.kernel] = m.boot_from.triple.kernel
                found[m.boot.initrd] = m.boot_from.triple.initrd
        return found


def read_built(triples_dir: Path) -> tuple[list[Built], list[str]]:
    """Every triple whose manifest is in place (the manifest is written last)."""
    built, problems = [], []
    for manifest in sorted(triples_dir.glob("*.manifest.json")):
        try:
            triple = Triple.from_manifest(manifest)
            data = read_json(manifest)
            parts = data["parts"]
            sha = tuple((part, str(parts[part]["sha256"])) for part in ("kernel", "initrd", "root"))
            for _part, digest in sha:
                content_id(digest)
            if (data["image"], data["kernel_release"]) != (triple.image, triple.release):
                raise ValueError("image or kernel_release differ from the file name")
            built.append(Built(triple, str(data["flavour"]), sha, str(parts["root"]["label"])))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            problems.append(f"{manifest}: not a usable triple manifest ({exc})")
    return built, problems


def _newest(candidates: list[Built]) -> Built | None:
    if not candidates:
        return None
    release = debversion.newest([b.release for b in candidates])
    return next(b for b in candidates if b.release == release)


def read_record(path: Path) -> dict[str, Any]:
    try:
        data = read_json(path)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def plan(inventory: Inventory, triples_dir: Path, *, fresh: frozenset[str] = frozenset(),
         store: DiskStore | None = None) -> Plan:
    """Decide what every machine boots.  ``fresh``: MACs whose disk is about
    to be made anew (re-provisioning), so their current disk does not count.
    ``store``: where the disks are (default: the site's, see open_store)."""
    site = inventory.site
    store = store if store is not None else open_store(site)
    tftp = TftpTree(site.tftp_root)
    built, problems = read_built(triples_dir)
    where = f"{inventory.path}"
    machines = []
    for machine in inventory.machines:
        derived = derive(site, machine)
        wanted, problem = _wanted(machine, built, triples_dir)
        if wanted is None:
            problems.append(f"{where}: {problem}")
            continue
        has_disk = machine.mac not in fresh and store.has_disk(machine.mac)
        boot, boot_from, note = wanted.boot(tftp), wanted, None
        if has_disk:
            boot, boot_from, note, problem = _match_disk(machine, derived, wanted, built, tftp, store)
            if problem:
                problems.append(f"{where}: {problem}")
                continue
        machines.append(MachinePlan(machine, derived, wanted, boot, boot_from, has_disk, note))
    plan_ = Plan(inventory, tuple(machines), tuple(problems), store)
    if not problems:
        problems.extend(_unpublished_parts_problems(plan_))
    return Plan(inventory, tuple(machines), tuple(problems), store)


def _wanted(machine: Machine, built: list[Built], triples_dir: Path) -> tuple[Built | None, str]:
    mine = [b for b in built if b.image == machine.image]
    if machine.release:
        match = [b for b in mine if b.release == machine.release]
        have = ", ".join(sorted(b.release for b in mine)) or "none"
        return (match[0] if match else None,
                f"{machine.key}.kernel: no triple {machine.image}_{machine.release} in {triples_dir} "
                f"(built releases of {machine.image}: {have}); build it or pin another release")
    newest = _newest([b for b in mine if b.flavour == machine.flavour])
    return newest, (f"{machine.key}: no triple of image {machine.image} with kernel flavour "
                    f"{machine.flavour} in {triples_dir}; build it first (doit build)")


def _match_disk(machine: Machine, derived: Derived, wanted: Built, built: list[Built],
                tftp: TftpTree, store: DiskStore) -> tuple[BootSet, Built | None, str | None, str | None]:
    """What a machine with a disk boots: (boot, its triple, note, problem)."""
    disk = store.disk_ref(machine.mac)
    try:
        on_disk = store.disk_releases(machine.mac)
    except PipelineError as exc:
        return wanted.boot(tftp), wanted, None, (
            f"{machine.key}: cannot read /lib/modules on the machine's disk {disk}: "
            f"{exc.message.splitlines()[-1].strip(' |')}")
    if wanted.release in on_disk:
        return wanted.boot(tftp), wanted, None, None
    have = ", ".join(sorted(on_disk)) or "none"
    if machine.release:
        return wanted.boot(tftp), wanted, None, (
            f"{machine.key}.kernel: pinned to {machine.release}, but the machine's disk "
            f"{disk} has no modules for it (it has: {have}); install that kernel inside "
            "the machine, pin one it has, or re-provision the machine")
    record = read_record(derived.record)
    disk_image = str(record.get("cloned", {}).get("image", machine.image))
    usable = [b for b in built if b.image == disk_image and b.release in on_disk]
    fallback = _newest([b for b in usable if b.flavour == wanted.flavour]) or _newest(usable)
    boot = fallback.boot(tftp) if fallback else _still_published(record, on_disk, tftp)
    if boot is None:
        return wanted.boot(tftp), wanted, None, (
            f"{machine.key}: the machine's disk {disk} has modules for {have} only, and "
            f"no triple of image {disk_image} with one of those releases is built or still "
            f"published; {wanted.release} would not find its modules.  Re-provision the machine, "
            "or build a triple for a release its disk has")
    note = (f"{machine.name} stays on {boot.release}: its disk has no modules for "
            f"{wanted.release}; re-provision it or install {wanted.release} inside the machine")
    if disk_image != machine.image:
        note += f" (its disk was cloned from image {disk_image}, not {machine.image})"
    return boot, fallback, note, None


def _still_published(record: dict[str, Any], on_disk: set[str], tftp: TftpTree) -> BootSet | None:
    """The boot set the machine had at the last publish, if its triple is gone
    from the triples folder but its files are still in the TFTP tree."""
    try:
        boot = BootSet(**record["boot"])
    except (KeyError, TypeError):
        return None
    if boot.release in on_disk and tftp.path(boot.kernel).is_file() and tftp.path(boot.initrd).is_file():
        return boot
    return None


def _unpublished_parts_problems(plan_: Plan) -> list[str]:
    """Check the triple files that are about to be copied against their
    manifests, before anything is written."""
    tftp = TftpTree(plan_.inventory.site.tftp_root)
    to_check: dict[Path, str] = {}
    for m in plan_.machines:
        if m.boot_from is not None:
            digests = dict(m.boot_from.sha256)
            for part, rel in (("kernel", m.boot.kernel), ("initrd", m.boot.initrd)):
                if not tftp.path(rel).is_file():
                    to_check[m.boot_from.triple.path(part)] = digests[part]
        if not plan_.store.has_template(m.wanted.template_name):
            to_check[m.wanted.triple.root] = dict(m.wanted.sha256)["root"]
    problems = []
    for path, digest in sorted(to_check.items()):
        if not path.is_file():
            problems.append(f"{path}: missing (its manifest is in place)")
        elif sha256_file(path) != digest:
            problems.append(f"{path}: does not match the sha256 in its manifest; rebuild the triple")
    return problems


__all__ = ["Built", "MachinePlan", "Plan", "plan", "read_built"]
