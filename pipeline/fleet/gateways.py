"""Several iSCSI gateways in front of one Ceph cluster: a tgt configuration each.

A site with ``site.gateways`` serves every machine's disk (an RBD image)
from each gateway host, and a machine's portals (one per path) are spread
over the gateways, so the machine keeps its root when a gateway dies.  For
that the gateways must present each disk as the *same* SCSI device:

- the same target IQN, tid and LUN on every gateway.  tgt-admin numbers
  targets in the order it reads them unless told (``controller_tid``), so
  each target's tid is written out: its place in the fleet sorted by MAC.
  The LUN is 1 (the first backing store of a target) everywhere.
- the same SCSI identity (``scsi_id``, ``scsi_sn``, from pipeline/fleet/derive.py):
  tgt's own defaults come from the tid and are not unique across sites.
  With the same values two tgtds report byte-identical VPD pages 0x80 and
  0x83, so multipath sees one WWID and builds one map over all paths.
- ``write-cache off``: the initiator then sends no cache flushes, librbd
  stays in write-through (``rbd cache writethrough until flush``), and a
  write is on the OSDs when its SCSI command completes.  A gateway that dies
  loses nothing the machine was told is written.
- the same ACL and CHAP lines as the single-host configuration.

tgt has no ALUA and shares no SCSI reservations across gateways, and each
write through a gateway takes the image's exclusive lock from the other:
so a disk must take writes through one gateway at a time.  The machine's
multipath uses a failover policy for that (open-iscsi-boot/conf/multipath.conf).

Nothing differs between the gateways' configurations but their first lines
(which gateway, which portals its tgtd must listen on): tgtd's portals are
its command line (``--iscsi portal=<address>:<port>``), not targets.conf.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from pipeline.errors import ConfigError
from pipeline.fleet import bootfiles
from pipeline.fleet.derive import Derived
from pipeline.fleet.inventory import Machine

LUN = 1


@dataclass(frozen=True)
class Gateway:
    """One gateway host: its name, the portals its tgtd listens on, and the
    tgtd control port tgt-admin and tgtadm talk to (tgt's default is 0)."""

    name: str
    portals: tuple[str, ...]
    control_port: int = 0


def from_site(site: Any) -> tuple[Gateway, ...]:
    """The gateways of an inventory's Site (``site.gateways``: name, portals)."""
    return tuple(Gateway(g.name, tuple(g.portals)) for g in getattr(site, "gateways", ()) or ())


def check_gateways(gateways: Iterable[Gateway], where: str = "site.gateways") -> tuple[Gateway, ...]:
    """Every problem of a gateway list, one line each."""
    gateways = tuple(gateways)
    problems = []
    if not gateways:
        problems.append(f"{where}: expected at least one gateway")
    names: set[str] = set()
    owner: dict[str, str] = {}
    for gateway in gateways:
        if gateway.name in names:
            problems.append(f"{where}.{gateway.name}: a second gateway of that name")
        names.add(gateway.name)
        if not gateway.portals:
            problems.append(f"{where}.{gateway.name}: expected a non-empty list of its portals")
        for portal in gateway.portals:
            if portal in owner:
                problems.append(f"{where}.{gateway.name}: portal {portal} is already gateway "
                                f"{owner[portal]}'s; expected each portal on one gateway")
            owner.setdefault(portal, gateway.name)
    if problems:
        raise ConfigError(problems)
    return gateways


def target_lines(tid: int, machine: Machine, derived: Derived, password: str,
                 backing: list[str]) -> list[str]:
    """One machine's target, the same on every gateway."""
    return [f"# {machine.name} ({derived.mac})",
            f"<target {derived.target}>",
            f"    controller_tid {tid}",
            *(f"    {line}" for line in backing),
            "    write-cache off",
            f"    scsi_id {derived.scsi_id}",
            f"    scsi_sn {derived.scsi_sn}",
            *(f"    {line}" for line in bootfiles.tgt_access(derived, password)),
            "</target>", ""]


def gateway_tgt_configs(inventory_path: Path, gateways: Iterable[Gateway],
                        entries: list[tuple[Machine, Derived, str]], store: Any) -> dict[str, str]:
    """Gateway name -> its tgt configuration (targets.conf text).

    ``entries`` are (machine, derived, CHAP password); ``store`` is the
    site's DiskStore, which must be rbd: every gateway has to reach the
    same disks.
    """
    gateways = check_gateways(gateways)
    if getattr(store, "kind", None) != "rbd":
        raise ConfigError([f"{inventory_path}: site.gateways: expected site.store_backend rbd "
                           f"(every gateway must reach the same disks), got {getattr(store, 'kind', None)!r}"])
    ordered = sorted(entries, key=lambda entry: entry[1].mac)
    targets: list[str] = []
    for tid, (machine, derived, password) in enumerate(ordered, start=1):
        targets += target_lines(tid, machine, derived, password, store.tgt_backing(derived.mac))
    configs = {}
    for gateway in gateways:
        head = bootfiles.tgt_header(f"iSCSI targets of the fleet in {inventory_path} on gateway "
                                    f"{gateway.name}, one per machine.")
        head.insert(1, f"# Its tgtd listens on {', '.join(gateway.portals)} (tgtd --iscsi "
                       "portal=...); every gateway has the same targets.")
        configs[gateway.name] = "\n".join(head + targets)
    return configs


__all__ = ["Gateway", "LUN", "check_gateways", "from_site", "gateway_tgt_configs", "target_lines"]
