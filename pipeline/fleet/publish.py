"""Publish an inventory: TFTP/iPXE tree, iSCSI store, tgt and dnsmasq config.

Everything is checked first (inventory, plan, the triple files about to be
copied); while there is a problem nothing is written.  Then, in an order
that never lets a boot script name something that is not there yet:

1. CHAP passwords for new machines (secrets file, mode 0600);
2. boot files ``images/<image>_<release>_<cid>.vmlinuz|.initrd.img``, named by
   content, so a new build never replaces a file a running machine booted from;
3. templates (read-only copies of the triples' root images) and, for each
   machine without one, its disk: a clone with its own UUID, in the site's
   store (pipeline.fleet.store: files, or RBD images).  An existing disk is
   never written, moved or replaced here;
4. records (what each disk was cloned from, what the machine boots), the tgt
   configuration (mode 0600) and, if asked, ``tgt-admin --update ALL``;
5. per machine: CHAP initrd (mode 0640, group site.tftp_group), iPXE script,
   PXELINUX file; then boot.ipxe and the dnsmasq configuration.

Each file is written to a temporary name and renamed, and only if its content
changed: a second publish with nothing new changes nothing.  Files that no
machine uses any more stay until :func:`gc` removes them.

``apply_tgt`` hands the whole configuration to a running tgtd: tgt-admin then
adds new targets and removes targets that are not in the file (unless in
use), so that tgtd must serve this fleet only.
"""

from __future__ import annotations

import fcntl
import functools
import grp
import json
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from pipeline.fleet import bootfiles, chap
from pipeline import runner
from pipeline.fleet.derive import derive
from pipeline.errors import ConfigError, PipelineError
from pipeline.fsutil import copy_file, write_if_changed
from pipeline.fleet.inventory import Inventory
from pipeline.fleet.store import DiskStore, Ref, open_store
from pipeline.naming import PARTIAL, Store, TftpTree, parse_published
from pipeline.fleet.plan import Plan, plan, read_record

Log = Callable[[str], None]


def exclusive(func):
    """One publish, gc or re-provision of an inventory at a time: they hold
    an flock on the inventory file (nothing is created for it)."""
    @functools.wraps(func)
    def locked(inventory: Inventory, *args, **kwargs):
        with open(inventory.path, "rb") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise PipelineError(f"{inventory.path}: another publish, gc or re-provision of "
                                    "this inventory is running") from None
            return func(inventory, *args, **kwargs)
    return locked


@dataclass
class Report:
    """What a publish, gc or re-provision did."""

    # Paths of files; disks and templates as their store names them (a Ref).
    written: list[Ref] = field(default_factory=list)
    unchanged: list[Ref] = field(default_factory=list)
    disks_created: list[Ref] = field(default_factory=list)
    disks_kept: list[Ref] = field(default_factory=list)
    removed: list[Ref] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def changes(self) -> int:
        return len(self.written) + len(self.disks_created) + len(self.removed)

    def summary(self) -> str:
        lines = [f"{self.changes} change(s): {len(self.written)} file(s) written, "
                 f"{len(self.unchanged)} unchanged, {len(self.disks_created)} disk(s) created, "
                 f"{len(self.disks_kept)} kept, {len(self.removed)} file(s) removed"]
        lines += [f"  wrote {path}" for path in self.written]
        lines += [f"  new disk {path}" for path in self.disks_created]
        lines += [f"  removed {path}" for path in self.removed]
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)


def _store(inventory: Inventory, store: DiskStore | None, *, apply_tgt: bool = False) -> DiskStore:
    """The inventory's store, its tools there and the store reachable."""
    store = store if store is not None else open_store(inventory.site)
    runner.require_tools(store.tools() + (["tgt-admin"] if apply_tgt else []))
    store.check()
    return store


@exclusive
def publish(inventory: Inventory, triples_dir: Path, *, apply_tgt: bool = False,
            tgt_control_port: int | None = None, log: Log = print,
            store: DiskStore | None = None) -> Report:
    """Check, then publish every machine of the inventory (see module doc).
    ``store``: where disks go (default: the site's, see open_store)."""
    store = _store(inventory, store, apply_tgt=apply_tgt)
    the_plan = plan(inventory, triples_dir, store=store)
    the_plan.check()
    report = _apply(the_plan, apply_tgt=apply_tgt, tgt_control_port=tgt_control_port, log=log)
    log(report.summary())
    return report


def _apply(the_plan: Plan, *, apply_tgt: bool, tgt_control_port: int | None, log: Log) -> Report:
    inventory, site = the_plan.inventory, the_plan.inventory.site
    tftp, store, disk_store = TftpTree(site.tftp_root), Store(site.store), the_plan.store
    report = Report(notes=the_plan.notes)
    for note in report.notes:
        log(f"note: {note}")
    group = grp.getgrnam(site.tftp_group).gr_gid
    secrets_before = site.secrets.read_bytes() if site.secrets.is_file() else None
    passwords = chap.ensure(site.secrets, [m.derived.mac for m in the_plan.machines], log)
    (report.unchanged if site.secrets.read_bytes() == secrets_before else report.written).append(site.secrets)
    for folder in (TftpTree.IMAGES, TftpTree.MACHINES, TftpTree.PXELINUX):
        _mkdir(tftp.path(folder), 0o755)
    disk_store.prepare()
    for folder in (store.records, store.tgt_conf.parent):
        _mkdir(folder, 0o700)

    for relative, source in sorted(the_plan.sources().items()):
        target = tftp.path(relative)
        if target.is_file():      # named by content: there means identical
            report.unchanged.append(target)
        else:
            copy_file(source, target)
            report.written.append(target)

    _disks(the_plan, report, log)

    for m in the_plan.machines:
        # A kept disk keeps the record of where it came from.
        record = read_record(m.derived.record) if m.has_disk else {"cloned": _cloned(m)}
        record.update(mac=m.derived.mac, name=m.machine.name, boot=asdict(m.boot))
        _write(report, m.derived.record, json.dumps(record, indent=2, sort_keys=True) + "\n", 0o644)

    entries = [(m.machine, m.derived, passwords[m.derived.mac]) for m in the_plan.machines]
    _write(report, store.tgt_conf, _tgt_config(inventory.path, entries, disk_store), 0o600)
    if apply_tgt:
        apply_tgt_config(store.tgt_conf, tgt_control_port, passwords.values(), log)

    for m in the_plan.machines:
        d = m.derived
        _write(report, tftp.path(d.auth_initrd),
               bootfiles.chap_initrd(d.chap_user, passwords[d.mac]), 0o640, group)
        _write(report, tftp.path(d.boot_script), bootfiles.machine_ipxe(site, d, m.boot), 0o644)
        _write(report, tftp.path(d.pxelinux_config), bootfiles.pxelinux_config(site, d, m.boot), 0o644)
    _write(report, tftp.path(TftpTree.BOOT_SCRIPT), bootfiles.boot_ipxe(), 0o644)
    _write(report, site.dnsmasq_conf, bootfiles.dnsmasq_config(
        inventory.path, site, [(m.machine, m.derived) for m in the_plan.machines]), 0o644)
    return report


def _disks(the_plan: Plan, report: Report, log: Log) -> None:
    """Templates for what machines ask for; a clone for each machine without a disk."""
    store = the_plan.store
    for built in sorted({m.wanted for m in the_plan.machines}, key=lambda b: b.triple.stem):
        name = built.template_name
        if store.has_template(name):
            report.unchanged.append(store.template_ref(name))
        else:
            log(f"template {name}: copying {built.triple.root}")
            report.written.append(store.put_template(name, built.triple.root))
    new = [m for m in the_plan.machines if not m.has_disk]
    start = time.monotonic()
    for number, m in enumerate(new, 1):
        disk = store.clone(m.wanted.template_name, m.machine.mac, m.derived.fs_uuid)
        report.disks_created.append(disk)
        if number == len(new) or number % 10 == 0 or number == 1:
            log(f"cloned {number}/{len(new)} disks ({m.machine.name}: {Path(str(disk)).name}), "
                f"{time.monotonic() - start:.1f}s")
    report.disks_kept.extend(store.disk_ref(m.machine.mac) for m in the_plan.machines if m.has_disk)


def _cloned(m) -> dict[str, str]:
    return {"image": m.wanted.image, "release": m.wanted.release, "flavour": m.wanted.flavour,
            "template": m.wanted.template_name, "root_sha256": dict(m.wanted.sha256)["root"],
            "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def _tgt_config(inventory_path: Path, entries: list, store: DiskStore) -> str:
    """bootfiles.tgt_config, with each target's disk named as the store wants.

    bootfiles writes ``backing-store <derived.disk>`` (a file); a store whose
    disks are not files (rbd) needs other lines there.  Until tgt_config
    takes those lines itself, they replace its line here, exactly once per target.
    """
    text = bootfiles.tgt_config(inventory_path, entries)
    for _machine, derived, _password in entries:
        lines = store.tgt_backing(derived.mac)
        default = f"    backing-store {derived.disk}\n"
        if lines == [f"backing-store {derived.disk}"]:
            continue
        if text.count(default) != 1:
            raise PipelineError(f"{inventory_path}: cannot name the disk of {derived.mac} in the "
                                "tgt configuration (its backing-store line is not there once)")
        text = text.replace(default, "".join(f"    {line}\n" for line in lines))
    return text


def _write(report: Report, path: Path, data: str | bytes, mode: int, group: int | None = None) -> None:
    blob = data.encode("utf-8") if isinstance(data, str) else data
    path.parent.mkdir(parents=True, exist_ok=True)
    (report.written if write_if_changed(path, blob, mode, group) else report.unchanged).append(path)


def _mkdir(path: Path, mode: int) -> None:
    if not path.is_dir():
        path.mkdir(parents=True, exist_ok=True)
        os.chmod(path, mode)


# -- tgt --------------------------------------------------------------------------

def _redact(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, "<secret>")
    return text


def _tgt_admin(args: list[str], control_port: int | None, secrets: Iterable[str]) -> str:
    argv = ["tgt-admin", *args] + (["-C", str(control_port)] if control_port is not None else [])
    try:
        return runner.run(argv)
    except runner.CommandError as exc:
        # tgt-admin prints the failing tgtadm command, which may hold a password.
        raise PipelineError(_redact(str(exc), list(secrets)),
                            hint="is tgtd running (with this control port)?") from None


def apply_tgt_config(conf: Path, control_port: int | None, secrets: Iterable[str], log: Log) -> None:
    """Make a running tgtd match ``conf``: new targets appear, targets in use
    are left alone, targets not in the file are removed (unless in use)."""
    secrets = list(secrets)
    output = _tgt_admin(["--update", "ALL", "-c", str(conf)], control_port, secrets)
    for line in output.splitlines():
        if line.strip():
            log("tgt-admin: " + _redact(line, secrets))
    log(f"tgt: applied {conf}")


def tgt_targets(control_port: int | None) -> set[str]:
    """Names of the targets a running tgtd serves."""
    argv = ["tgtadm", "--mode", "target", "--op", "show"]
    if control_port is not None:
        argv[1:1] = ["-C", str(control_port)]
    text = runner.output(argv)
    return {m.group(1) for m in re.finditer(r"^Target [0-9]+: (\S+)$", text, re.MULTILINE)}


# -- garbage collection, re-provisioning ------------------------------------------

_MACHINE_FILE = re.compile(r"(?:01-)?[0-9a-f]{2}(?:-[0-9a-f]{2}){5}(?:\.ipxe|\.auth\.cpio)?")


@exclusive
def gc(inventory: Inventory, triples_dir: Path, *, log: Log = print,
       store: DiskStore | None = None) -> Report:
    """Remove the boot files, per-machine files and templates that no machine
    of the inventory uses, and leftovers of interrupted runs.  Never touches
    disks, their backups, records or secrets: a disk that belongs to no
    machine is only reported (and so is an unused template that disks
    still depend on, in a store where clones share their template's blocks)."""
    store = _store(inventory, store)
    the_plan = plan(inventory, triples_dir, store=store)
    the_plan.check()
    tftp = TftpTree(inventory.site.tftp_root)
    report = Report()
    keep = {tftp.path(TftpTree.BOOT_SCRIPT)}
    for m in the_plan.machines:
        d = m.derived
        keep |= {tftp.path(p) for p in (m.boot.kernel, m.boot.initrd, d.boot_script,
                                         d.auth_initrd, d.pxelinux_config)}
    candidates = [(tftp.path(TftpTree.IMAGES), _is_published),
                  (tftp.path(TftpTree.MACHINES), _MACHINE_FILE.fullmatch),
                  (tftp.path(TftpTree.PXELINUX), _MACHINE_FILE.fullmatch)]
    for folder, ours in candidates:
        for path in sorted(folder.glob("*")) if folder.is_dir() else []:
            name = path.name[:-len(PARTIAL)] if path.name.endswith(PARTIAL) else path.name
            if path not in keep and ours(name) and (path.is_file() or path.is_symlink()):
                path.unlink()
                report.removed.append(path)
    used_templates = {m.wanted.template_name for m in the_plan.machines}
    for name in store.template_names():
        base = name[:-len(PARTIAL)] if name.endswith(PARTIAL) else name
        if name in used_templates or not _is_published(base):
            continue
        reason = store.template_kept_because(name)
        if reason:
            report.notes.append(reason)
        else:
            report.removed.append(store.remove_template(name))
    report.removed.extend(store.remove_leftovers())
    in_use = {store.disk_ref(m.machine.mac) for m in the_plan.machines}
    for disk in store.disks():
        if disk not in in_use:
            report.notes.append(f"disk {disk} belongs to no machine of the inventory; kept "
                                "(remove it yourself when it is no longer needed)")
    log(report.summary())
    return report


def _is_published(name: str) -> bool:
    try:
        parse_published(name)
    except ValueError:
        return False
    return True


@exclusive
def reprovision(inventory: Inventory, name: str, triples_dir: Path, *, apply_tgt: bool = False,
                tgt_control_port: int | None = None, log: Log = print,
                store: DiskStore | None = None) -> Report:
    """Give machine ``name`` a fresh disk from its current template.

    The old disk is kept as ``<disk>.backup-<UTC time>`` until
    :func:`remove_backup`.  The machine must be powered off: with
    ``apply_tgt`` its target is first deleted from tgtd (tgt-admin refuses
    while the machine is logged in), so that tgtd opens the new disk.
    """
    try:
        machine = inventory.machine(name)
    except KeyError:
        raise ConfigError([f"{inventory.path}: machines: no machine named {name!r}"]) from None
    store = _store(inventory, store, apply_tgt=apply_tgt)
    the_plan = plan(inventory, triples_dir, fresh=frozenset({machine.mac}), store=store)
    the_plan.check()
    derived = derive(inventory.site, machine)
    backup = None
    if store.has_disk(machine.mac):
        if apply_tgt:
            secrets = chap.load(inventory.site.secrets).values()
            _tgt_admin(["--delete", derived.target], tgt_control_port, secrets)
            # tgt-admin leaves a target that is in use and still exits 0.
            if derived.target in tgt_targets(tgt_control_port):
                raise PipelineError(f"{name} is still logged in to {derived.target}; nothing was "
                                    "changed", hint=f"power {name} off first")
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        backup = store.keep_backup(machine.mac, stamp)
        log(f"{name}: old disk moved to {backup}")
    report = _apply(the_plan, apply_tgt=apply_tgt, tgt_control_port=tgt_control_port, log=log)
    if backup is not None:
        report.notes.append(f"{name}: the old disk is kept as {backup}; remove it with "
                            "remove_backup when it is no longer needed")
    log(report.summary())
    return report


@exclusive
def remove_backup(inventory: Inventory, name: str, *, log: Log = print,
                  store: DiskStore | None = None) -> list[Ref]:
    """Delete the disk backups that re-provisioning machine ``name`` kept."""
    try:
        machine = inventory.machine(name)
    except KeyError:
        raise ConfigError([f"{inventory.path}: machines: no machine named {name!r}"]) from None
    store = _store(inventory, store)
    removed = store.backups(machine.mac)
    for backup in removed:
        store.remove_backup(backup)
        log(f"removed {backup}")
    if not removed:
        log(f"{name}: no disk backup to remove")
    return removed
