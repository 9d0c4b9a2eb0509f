"""The lab with two iSCSI gateways in front of one Ceph cluster.

    lab namespace (pipeline/lab/namespace.py's Lab)          gateway namespaces
    br0 192.0.2.1/24     ── NIC 1 of the machine   ── gwa-path 192.0.2.2     gwa: tgtd, tgt-rbd
    br1 198.51.100.1/24  ── NIC 2 of the machine   ── gwb-path 198.51.100.2  gwb: tgtd, tgt-rbd
    br2 203.0.113.1/24   ceph-mon, ceph-osd (memstore) ── gwa-store .11, gwb-store .12

The machine's two portals are the two gateways, one per path.  Its disk is
made through the rbd store (pipeline/fleet/store/rbd.py) exactly as publish
makes it: the triple's root image (a lab copy with the agent written into
it) imported as a template, then one layered clone with the machine's own
UUID.  The store's commands run inside the lab namespace (the cluster is
only reachable there), as ``python3 -m pipeline.lab.gateways provision``.
The gateways' tgt configurations are pipeline/fleet/gateways.py's, so the
targets carry the same IQN, tid, LUN, SCSI identity and CHAP on both; the
machine's CHAP initrd is appended to the triple's initramfs, as iPXE would
load it.  The Lab's own tgtd is given an empty configuration.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from pipeline import runner
from pipeline.errors import PipelineError
from pipeline.fleet import bootfiles
from pipeline.fleet.derive import Derived, derive
from pipeline.fleet.gateways import Gateway, gateway_tgt_configs
from pipeline.fleet.inventory import Machine, Site
from pipeline.fleet.store.rbd import RbdSettings, RbdStore
from pipeline.lab import ceph
from pipeline.lab.agent import add_agent
from pipeline.lab.guest import Guest
from pipeline.lab.namespace import MACS, Lab, free_control_port, in_ns
from pipeline.naming import Store, Triple

AUTHORITY = "2025-01.org.example.lab"
MAC = MACS[0]
CHAP_PASSWORD = "lab-gateway-secret-1"   # tgt and open-iscsi want 12 characters or more
TEMPLATE = "lab-template"
STORAGE_BRIDGE, CEPH_ADDRESS = "br2", "203.0.113.1"
# (name, portal, the lab bridge of its path, its address towards Ceph)
HOSTS = (("gwa", "192.0.2.2", "br0", "203.0.113.11"),
         ("gwb", "198.51.100.2", "br1", "203.0.113.12"))
# The dead gateway's watch on the image holds up the other's first write
# until the OSD drops it (librbd then blocklists the dead client and takes
# the exclusive lock).  Ceph's default is 30 s, as long as the guest's SCSI
# command time-out; the lab measures with this, and a site sets the same.
WATCH_TIMEOUT = 10
ROOT = Path(__file__).resolve().parents[2]


def lab_site(store: Path) -> Site:
    return Site(authority=AUTHORITY, portals=tuple(h[1] for h in HOSTS), boot_server=None,
                tftp_root=store / "tftp", store=store, secrets=store / "secrets.yaml", cmdline="",
                dnsmasq_conf=store / "dnsmasq.conf", tftp_group="root", pxe_boot_file="pxelinux.0")


LAB_MACHINE = Machine(mac=MAC, name="gw-guest", image="lab", kernel=None, address=None,
                      key=f"machines[{MAC}]")


@dataclass
class GatewayHost:
    """One gateway: a namespace of its own with one tgtd on its own control port."""

    gateway: Gateway
    ns: str
    conf: Path
    log: Path
    tgtd: runner.Background | None = None
    starts: int = 0

    def tgtadm(self, *args: str, check: bool = True) -> str:
        return runner.run(in_ns(self.ns, "tgtadm", "-C", str(self.gateway.control_port),
                                "--lld", "iscsi", *args), check=check, timeout=30)

    def start(self) -> None:
        """Start tgtd on the gateway's portal and load its configuration."""
        portal = self.gateway.portals[0]
        self.starts += 1
        self.tgtd = runner.Background(in_ns(self.ns, "tgtd", "-f", "-C", str(self.gateway.control_port),
                                            "--iscsi", f"portal={portal}:3260"),
                                      self.log.with_suffix(f".{self.starts}.log"))
        deadline = time.monotonic() + 15
        while True:
            try:
                self.tgtadm("--mode", "target", "--op", "show")
                break
            except PipelineError:
                if not self.tgtd.alive() or time.monotonic() > deadline:
                    raise PipelineError(f"gateway {self.gateway.name}: tgtd did not start; see "
                                        f"{self.tgtd.log}") from None
                time.sleep(0.2)
        runner.run(in_ns(self.ns, "tgt-admin", "-C", str(self.gateway.control_port), "-e",
                         "-c", str(self.conf)), timeout=120)
        shown = self.tgtadm("--mode", "target", "--op", "show")
        if "Backing store type: rbd" not in shown:
            raise PipelineError(f"gateway {self.gateway.name}: no rbd LUN after tgt-admin:\n{shown}")

    def kill(self) -> None:
        """SIGKILL tgtd: the gateway dies without a word to anyone."""
        if self.tgtd is not None and self.tgtd.alive():
            os.kill(self.tgtd.pid, signal.SIGKILL)
            self.tgtd.wait(10)

    def stop(self) -> None:
        """tgtd ignores SIGTERM: ask it to stop, then make sure."""
        if self.tgtd is None:
            return
        if self.tgtd.alive():
            self.tgtadm("--op", "delete", "--mode", "system", check=False)
            if self.tgtd.wait(10) is None:
                self.kill()
        self.tgtd = None


@dataclass
class GatewayLab:
    """A Lab whose machine boots from an RBD clone through two gateways."""

    triple: Triple
    work: Path
    watch_timeout: int = WATCH_TIMEOUT     # the OSDs' osd_client_watch_timeout (Ceph's default: 30)
    lab: Lab | None = None
    cluster: ceph.Cluster | None = None
    hosts: list[GatewayHost] = field(default_factory=list)
    derived: Derived | None = None
    _namespaces: list[str] = field(default_factory=list)

    def __enter__(self) -> "GatewayLab":
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _start(self) -> None:
        runner.require_tools(["rbd", "rbd-fuse", "tgtd", "tgt-admin", "ip"])
        self.work.mkdir(parents=True, exist_ok=True)
        site = lab_site(self.work / "store")
        self.derived = derive(site, LAB_MACHINE)
        boot_triple = self._triple_with_chap()
        empty = self.work / "lab-tgt.conf"
        empty.write_text("default-driver iscsi\n", encoding="utf-8")
        self.lab = Lab(boot_triple, self.work / "lab", tgt_conf=empty,
                       initiator=self.derived.initiator, target=self.derived.target)
        self.lab.__enter__()
        ns = self.lab.ns
        self._ip(ns, "link", "add", STORAGE_BRIDGE, "type", "bridge")
        self._ip(ns, "addr", "add", f"{CEPH_ADDRESS}/24", "dev", STORAGE_BRIDGE)
        self._ip(ns, "link", "set", STORAGE_BRIDGE, "up")
        self.cluster = ceph.start(self.work / "ceph", netns=ns, address=CEPH_ADDRESS,
                                  options={"osd client watch timeout": str(self.watch_timeout)})
        settings = RbdSettings(self.cluster.conf, self.cluster.client_id, self.cluster.keyring,
                               self.cluster.pool)
        self._provision(settings, site.store)
        gateways = []
        for name, portal, bridge, storage in HOSTS:
            gw_ns = f"{ns}{name}"
            runner.run(["ip", "netns", "add", gw_ns])
            self._namespaces.append(gw_ns)
            self._ip(gw_ns, "link", "set", "lo", "up")
            for side, bridge_name, address in (("path", bridge, portal),
                                               ("store", STORAGE_BRIDGE, storage)):
                inner, outer = f"{side}0", f"{name}-{side}"
                self._ip(gw_ns, "link", "add", inner, "type", "veth", "peer", "name", outer,
                         "netns", ns)
                self._ip(ns, "link", "set", outer, "master", bridge_name)
                self._ip(ns, "link", "set", outer, "up")
                self._ip(gw_ns, "addr", "add", f"{address}/24", "dev", inner)
                self._ip(gw_ns, "link", "set", inner, "up")
            gateway = Gateway(name, (portal,), free_control_port_not(self._ports()))
            gateways.append(gateway)
            self.hosts.append(GatewayHost(gateway, gw_ns, self.work / f"tgt-{name}.conf",
                                          self.work / f"tgtd-{name}"))
        store = RbdStore(settings, Store(site.store))
        configs = gateway_tgt_configs(self.work / "lab-inventory", gateways,
                                      [(LAB_MACHINE, self.derived, CHAP_PASSWORD)], store)
        for host in self.hosts:
            host.conf.write_text(configs[host.gateway.name], encoding="utf-8")
            os.chmod(host.conf, 0o600)
            host.start()

    def _ports(self) -> set[int]:
        return {h.gateway.control_port for h in self.hosts} | {self.lab.control_port}

    @staticmethod
    def _ip(ns: str, *args: str) -> None:
        runner.run(["ip", "-n", ns, *args])

    def _triple_with_chap(self) -> Triple:
        """The triple, its initramfs followed by the machine's CHAP initrd (as iPXE loads them)."""
        folder = self.work / "triple"
        folder.mkdir(exist_ok=True)
        boot = Triple(folder, self.triple.image, self.triple.release)
        for part in ("kernel", "root", "manifest"):
            if self.triple.path(part).exists() and not boot.path(part).exists():
                boot.path(part).symlink_to(self.triple.path(part))
        initramfs = self.triple.initrd.read_bytes()
        # The kernel reads the next archive at a 4-byte boundary.
        padding = b"\0" * (-len(initramfs) % 4)
        chap = bootfiles.chap_initrd(self.derived.chap_user, CHAP_PASSWORD)
        boot.initrd.write_bytes(initramfs + padding + chap)
        return boot

    def _provision(self, settings: RbdSettings, store: Path) -> None:
        """Template and clone, by the rbd store, inside the lab namespace."""
        image = self.work / "root-with-agent.ext4"
        runner.run(["cp", "--sparse=always", str(self.triple.root), str(image)])
        add_agent(image, self.work)
        runner.run(in_ns(self.lab.ns, "env", f"PYTHONPATH={ROOT}", sys.executable, "-m",
                         "pipeline.lab.gateways", "provision", "--conf", str(settings.conf),
                         "--client-id", settings.client_id, "--keyring", str(settings.keyring),
                         "--pool", settings.pool, "--store", str(store), "--image", str(image),
                         "--mac", MAC, "--fs-uuid", self.derived.fs_uuid), timeout=600)
        image.unlink()

    # -- the machine -----------------------------------------------------------
    def cmdline(self) -> str:
        d = self.derived
        portals = ",".join(h[1] for h in HOSTS)
        return (f"console=ttyS0,115200 root=LABEL={self.lab.label} ro panic=10 "
                f"iscsitarget={d.target},{portals} iscsi_initiator={d.initiator}")

    def boot(self, **kwargs) -> Guest:
        return self.lab.boot(cmdline=self.cmdline(), **kwargs)

    def host(self, name: str) -> GatewayHost:
        return next(h for h in self.hosts if h.gateway.name == name)

    def gateway_of(self, address: str) -> str:
        """The name of the gateway with a portal at ``address``."""
        return next(h.gateway.name for h in self.hosts
                    if any(p.split(":")[0] == address for p in h.gateway.portals))

    def close(self) -> None:
        if self.lab is not None:
            for guest in self.lab.guests:
                guest.close()
        for host in self.hosts:
            try:
                host.stop()
            except PipelineError:
                host.kill()
        for gw_ns in self._namespaces:
            left = runner.run(["ip", "netns", "pids", gw_ns], check=False).split()
            for pid in left:
                if pid.isdigit():
                    try:
                        os.kill(int(pid), signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            runner.run(["ip", "netns", "del", gw_ns], check=False)
        self._namespaces.clear()
        if self.cluster is not None:
            self.cluster.stop()
            self.cluster = None
        if self.lab is not None:
            self.lab.close()
            self.lab = None


def free_control_port_not(taken: set[int]) -> int:
    """A tgtd control port unused here and not already given to another tgtd of the lab
    (their sockets appear only once those tgtds run)."""
    port = free_control_port()
    while port in taken or os.path.exists(f"/var/run/tgtd/socket.{port}"):
        port += 1
    return port


def _provision_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m pipeline.lab.gateways provision")
    for option in ("conf", "client-id", "keyring", "pool", "store", "image", "mac", "fs-uuid"):
        parser.add_argument(f"--{option}", required=True)
    args = parser.parse_args(argv)
    store = RbdStore(RbdSettings(Path(args.conf), args.client_id, Path(args.keyring), args.pool),
                     Store(Path(args.store)))
    store.check()
    if not store.has_template(TEMPLATE):
        store.put_template(TEMPLATE, Path(args.image))
    if not store.has_disk(args.mac):
        store.clone(TEMPLATE, args.mac, args.fs_uuid)
    print(store.disk_ref(args.mac))
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] != ["provision"]:
        sys.exit("usage: python3 -m pipeline.lab.gateways provision --conf ... (the lab runs this)")
    try:
        sys.exit(_provision_main(sys.argv[2:]))
    except PipelineError as exc:
        sys.exit(str(exc))
