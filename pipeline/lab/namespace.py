"""The lab's network: a namespace with two subnets, dnsmasq and tgtd, and its machines.

Everything lives in a network namespace the lab creates and removes:

    br0 192.0.2.1/24    ── tap<n>p0 ── NIC 1 ┐
    br1 198.51.100.1/24 ── tap<n>p1 ── NIC 2 ┴ qemu (TCG; KVM only where probed to work)
    dnsmasq: DHCP on both bridges        tgtd: one target, a portal on each subnet

The LUN is a sparse copy of the triple's root image, never the build output;
into that copy (only) the lab writes its agent (pipeline/lab/agent.py).  The
machines are pipeline/lab/guest.py's; ``python3 -m pipeline lab`` boots one
(pipeline/lab/smoke.py).
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path

from pipeline import runner
from pipeline.errors import PipelineError
from pipeline.fsutil import read_json
from pipeline.lab.agent import add_agent
from pipeline.lab.guest import Guest, probe_accel
from pipeline.naming import Triple

# One subnet per path, from the documentation ranges.
PATHS = (
    ("br0", "192.0.2.1", "192.0.2.100", "192.0.2.199"),
    ("br1", "198.51.100.1", "198.51.100.100", "198.51.100.199"),
)
PORTALS = tuple(address for _bridge, address, _first, _last in PATHS)
TARGET_IQN = "iqn.2025-01.org.example.lab:root"
INITIATOR_IQN = "iqn.2025-01.org.example.lab:client"
MACS = ("52:54:00:12:34:01", "52:54:00:12:34:02")


def in_ns(ns: str, *argv: str) -> list[str]:
    return ["ip", "netns", "exec", ns, *argv]


def free_control_port() -> int:
    """A tgtd management port no other tgtd here uses.

    tgtd's management socket is /var/run/tgtd/socket.<port> on the shared
    file system, whatever the namespace; tgtadm takes ports up to 32767.
    """
    start = 10000 + os.getpid() % 20000
    for port in list(range(start, 30000)) + list(range(10000, start)):
        if not os.path.exists(f"/var/run/tgtd/socket.{port}"):
            return port
    raise PipelineError("no free tgtd control port in 10000-29999 (/var/run/tgtd is full)")


class Lab:
    """Namespace, bridges, dnsmasq and tgtd around one triple's root image."""

    def __init__(self, triple: Triple, work: Path | None = None, *,
                 initiator: str = INITIATOR_IQN, target: str = TARGET_IQN,
                 label: str | None = None, dnsmasq_conf: Path | None = None,
                 tgt_conf: Path | None = None) -> None:
        """A lab around ``triple``.

        By default the lab exports a copy of the triple's root image as one
        target.  Given ``tgt_conf`` (a published tgt configuration) it loads
        that instead, and given ``dnsmasq_conf`` (a published dnsmasq
        configuration) dnsmasq also reads it: DHCP host entries, iPXE chain
        loading and TFTP from the published tree.  The triple's kernel is
        then used only to probe for KVM.
        """
        self.triple = triple
        self.initiator = initiator
        self.target = target
        self.dnsmasq_conf = dnsmasq_conf
        self.tgt_conf = tgt_conf
        manifest = read_json(triple.manifest) if triple.manifest.exists() else {}
        self.label = label or manifest.get("parts", {}).get("root", {}).get("label", "debian-root")
        self._own_work = work is None
        self.work = Path(work or tempfile.mkdtemp(prefix="iscsi-lab-"))
        self.ns = f"iscsilab{os.getpid()}"
        self.control_port = free_control_port()
        self.procs: list[runner.Background] = []
        self.guests: list[Guest] = []
        self._ns_made = False

    # -- set-up and tear-down ------------------------------------------------
    def __enter__(self) -> "Lab":
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _ip(self, *args: str) -> None:
        runner.run(in_ns(self.ns, "ip", *args))

    def _start(self) -> None:
        runner.require_tools(["ip", "dnsmasq", "tgtd", "tgtadm", "qemu-system-x86_64", "debugfs"]
                             + (["tgt-admin"] if self.tgt_conf else []))
        self.work.mkdir(parents=True, exist_ok=True)
        lun = self.work / "lun.ext4"
        if self.tgt_conf is None:
            runner.run(["cp", "--sparse=always", str(self.triple.root), str(lun)])
            add_agent(lun, self.work)
        runner.run(["ip", "netns", "add", self.ns])
        self._ns_made = True
        self._ip("link", "set", "lo", "up")
        for bridge, address, _first, _last in PATHS:
            self._ip("link", "add", bridge, "type", "bridge")
            self._ip("addr", "add", f"{address}/24", "dev", bridge)
            self._ip("link", "set", bridge, "up")
        dhcp = []
        for bridge, _address, first, last in PATHS:
            dhcp += [f"--interface={bridge}", f"--dhcp-range={first},{last},255.255.255.0,1h"]
        if self.dnsmasq_conf:
            # As a site runs it: dnsmasq's own unprivileged user, the group
            # the published configuration names.  (Run as root, dnsmasq's
            # TFTP sends world-readable files only, and the CHAP initrds are
            # not.)  The published tree must be reachable for that user.
            # (--no-daemon would keep root: it is dnsmasq's debug mode.)
            conf, user = str(self.dnsmasq_conf), ["--log-facility=-",
                                                  f"--pid-file={self.work / 'dnsmasq.pid'}"]
        else:
            conf, user = "/dev/null", ["--no-daemon", "--user=root"]
        self.procs.append(runner.Background(in_ns(
            self.ns, "dnsmasq", "--keep-in-foreground", f"--conf-file={conf}",
            "--port=0", "--bind-interfaces", "--no-resolv", "--no-hosts", *user,
            "--dhcp-authoritative", "--dhcp-option=option:router", "--log-dhcp",
            f"--dhcp-leasefile={self.work / 'leases'}", *dhcp), self.work / "dnsmasq.log"))
        Path("/run/tgtd").mkdir(exist_ok=True)
        Path("/var/run/tgtd").mkdir(exist_ok=True)
        tgtd = runner.Background(in_ns(self.ns, "tgtd", "-f", "-C", str(self.control_port)),
                                 self.work / "tgtd.log")
        self.procs.append(tgtd)
        self._tgtadm_ready()
        if self.tgt_conf is not None:
            runner.run(in_ns(self.ns, "tgt-admin", "-C", str(self.control_port), "-e",
                             "-c", str(self.tgt_conf)))
            return
        self.tgtadm("--mode", "target", "--op", "new", "--tid", "1", "--targetname", self.target)
        self.tgtadm("--mode", "logicalunit", "--op", "new", "--tid", "1", "--lun", "1",
                    "--backing-store", str(lun))
        self.tgtadm("--mode", "target", "--op", "bind", "--tid", "1",
                    "--initiator-name", self.initiator)

    def tgtadm(self, *args: str) -> str:
        return runner.run(in_ns(self.ns, "tgtadm", "-C", str(self.control_port),
                                "--lld", "iscsi", *args))

    def _tgtadm_ready(self, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.tgtadm("--mode", "target", "--op", "show")
                return
            except PipelineError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def close(self) -> None:
        """Stop everything the lab started and remove the namespace.

        A second Ctrl-C must not cut this short, so SIGINT is ignored while
        it runs; whatever is still inside the namespace at the end was
        started by us and is killed by its process id before the
        namespace goes.
        """
        previous = None
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            for guest in self.guests:
                guest.close()
            for proc in reversed(self.procs):
                proc.stop()
            self.procs.clear()
            if self._ns_made:
                left = runner.run(["ip", "netns", "pids", self.ns], check=False).split()
                for pid in left:
                    if pid.isdigit():
                        try:
                            os.kill(int(pid), signal.SIGKILL)
                        except ProcessLookupError:
                            pass
                runner.run(["ip", "netns", "del", self.ns], check=False)
                self._ns_made = False
            if self._own_work:
                shutil.rmtree(self.work, ignore_errors=True)
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)

    # -- machines ------------------------------------------------------------
    def cmdline(self, extra: str = "") -> str:
        portals = ",".join(PORTALS)
        return (f"console=ttyS0,115200 root=LABEL={self.label} ro panic=10 "
                f"iscsitarget={self.target},{portals} iscsi_initiator={self.initiator} "
                + extra).strip()

    def boot(self, *, cmdline: str | None = None, links_down: tuple[int, ...] = (),
             memory: int = 1024, name: str = "guest", macs: tuple[str, ...] = MACS,
             network_boot: bool = False) -> Guest:
        """Start qemu; the links in ``links_down`` are cut from power-on.

        The machine has one NIC per path, with the MAC addresses ``macs``.
        By default qemu loads the triple's kernel and initramfs itself; with
        ``network_boot`` the first NIC's iPXE ROM boots from the network
        (DHCP and TFTP from the lab's dnsmasq), as a real machine would.
        """
        console = self.work / f"{name}.console.log"
        qmp_path = self.work / f"{name}.qmp"
        agent_path = self.work / f"{name}.agent"
        for path in (console, qmp_path, agent_path):
            if path.exists():
                path.unlink()
        accel = probe_accel(self.triple.kernel, self.work)
        machine = len(self.guests)
        netdevs = []
        for index, (bridge, *_rest) in enumerate(PATHS):
            tap = f"tap{machine}p{index}"
            self._ip("tuntap", "add", "dev", tap, "mode", "tap")
            self._ip("link", "set", tap, "master", bridge)
            self._ip("link", "set", tap, "up")
            device = f"virtio-net-pci,netdev=nic{index},mac={macs[index]}"
            if network_boot and index == 0:
                device += ",bootindex=1"
            netdevs += ["-netdev", f"tap,id=nic{index},ifname={tap},script=no,downscript=no",
                        "-device", device]
        if network_boot:
            boot = []
        else:
            boot = ["-kernel", str(self.triple.kernel), "-initrd", str(self.triple.initrd),
                    "-append", cmdline if cmdline is not None else self.cmdline()]
        argv = in_ns(self.ns, "qemu-system-x86_64", "-accel", accel, "-m", str(memory),
                     "-smp", "1", "-display", "none", "-nodefaults", "-no-reboot",
                     "-serial", f"file:{console}",
                     "-chardev", f"socket,id=agent,path={agent_path},server=on,wait=off",
                     "-serial", "chardev:agent",
                     "-qmp", f"unix:{qmp_path},server=on,wait=off", *boot, *netdevs)
        if links_down:
            argv.append("-S")  # paused until the links are cut
        qemu = runner.Background(argv, self.work / f"{name}.qemu.log")
        guest = Guest(qemu, console, qmp_path, agent_path)
        self.guests.append(guest)
        deadline = time.monotonic() + 10
        while not (qmp_path.exists() and agent_path.exists()):
            if not qemu.alive() or time.monotonic() > deadline:
                raise PipelineError(f"qemu did not start: see {self.work / (name + '.qemu.log')}")
            time.sleep(0.1)
        # Connect now: qemu drops what the guest writes to the agent's port
        # while no client is connected, and a test may boot several machines
        # before it waits for the first.
        guest._connect()
        if links_down:
            for index in links_down:
                guest.set_link(index, False)
            guest.qmp("cont")
        return guest
