"""The boot lab: a triple boots as a real diskless machine, inside a namespace.

Everything lives in a network namespace the lab creates and removes:

    br0 192.0.2.1/24    ── tap<n>p0 ── NIC 1 ┐
    br1 198.51.100.1/24 ── tap<n>p1 ── NIC 2 ┴ qemu (TCG; KVM only where probed to work)
    dnsmasq: DHCP on both bridges        tgtd: one target, a portal on each subnet

The LUN is a sparse copy of the triple's root image, never the build output.
Into that copy (only) the lab writes a small agent: a systemd unit that, once
the multi-user target is reached, reads shell commands from the second serial
port and answers on it.  The first serial port is the console, captured to a
file.  A QMP socket cuts and restores links.

    python3 -m pipeline.lab out/triples/<image>_<release>.manifest.json

boots the triple, prints the status the guest reports, and powers it off.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from pipeline import runner
from pipeline.errors import PipelineError, report
from pipeline.fsutil import read_json
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

AGENT = """#!/bin/sh
# Lab agent (test-only: written into the lab's copy of the image, never into
# a product image).  Reads "ID COMMAND" lines on ttyS1, answers each with
# "LAB-OUT ID <line>" lines and "LAB-END ID <status>".
exec </dev/ttyS1 >/dev/ttyS1 2>&1
stty raw -echo
echo "LAB-READY"
while IFS= read -r line; do
    id=${line%% *}
    cmd=${line#* }
    out=$(sh -c "$cmd" 2>&1)
    rc=$?
    printf '%s\\n' "$out" | sed "s/^/LAB-OUT $id /"
    echo "LAB-END $id $rc"
done
"""

# Test-only workload: write, sync, drop caches, read back, compare, in a
# loop until stopped; one line per round in /root/lab-io.log.
LAB_IO = """#!/bin/sh
case "$1" in
start)
    rm -f /run/lab-io.stop /root/lab-io.log
    (
        i=0
        while [ ! -e /run/lab-io.stop ]; do
            i=$((i + 1))
            f=/root/lab-io.$((i % 4))
            if ! dd if=/dev/urandom of="$f" bs=1M count=4 conv=fsync status=none; then
                echo "FAIL write $i"; continue
            fi
            a=$(sha256sum <"$f")
            echo 3 >/proc/sys/vm/drop_caches
            b=$(sha256sum <"$f") || { echo "FAIL read $i"; continue; }
            [ "$a" = "$b" ] && echo "ok $i" || echo "FAIL compare $i"
        done
    ) >/root/lab-io.log 2>&1 </dev/null &
    ;;
stop)
    touch /run/lab-io.stop
    sleep 3
    echo "rounds $(grep -c '^ok' /root/lab-io.log) failures $(grep -c FAIL /root/lab-io.log)"
    ;;
count)
    grep -c '^ok' /root/lab-io.log || true
    ;;
esac
"""

AGENT_UNIT = """[Unit]
Description=Lab agent (test-only, in the lab's copy of the image)
After=multi-user.target

[Service]
ExecStart=/usr/local/sbin/lab-agent
Restart=always
RestartSec=1

[Install]
WantedBy=multi-user.target
"""


def in_ns(ns: str, *argv: str) -> list[str]:
    return ["ip", "netns", "exec", ns, *argv]


def add_agent(image: Path, scratch: Path) -> None:
    """Write the agent and its enabled unit into a (lab-only) image copy."""
    agent = scratch / "lab-agent"
    unit = scratch / "lab-agent.service"
    agent.write_text(AGENT)
    unit.write_text(AGENT_UNIT)
    (scratch / "lab-io").write_text(LAB_IO)
    commands = scratch / "debugfs.cmds"
    commands.write_text("\n".join([
        "mkdir /usr/local/sbin",
        f"write {agent} /usr/local/sbin/lab-agent",
        "set_inode_field /usr/local/sbin/lab-agent mode 0100755",
        f"write {scratch / 'lab-io'} /usr/local/sbin/lab-io",
        "set_inode_field /usr/local/sbin/lab-io mode 0100755",
        f"write {unit} /etc/systemd/system/lab-agent.service",
        "mkdir /etc/systemd/system/multi-user.target.wants",
        "symlink /etc/systemd/system/multi-user.target.wants/lab-agent.service "
        "/etc/systemd/system/lab-agent.service",
    ]) + "\n")
    runner.run(["debugfs", "-w", "-f", str(commands), str(image)])


_ACCEL: str | None = None


def probe_accel(kernel: Path, scratch: Path) -> str:
    """'kvm' if a KVM guest really runs here, else 'tcg'.

    Opening /dev/kvm is not enough on these machines (qemu hangs or aborts),
    so boot the kernel with no root for real: with KVM it panics within a
    few seconds; anything else means TCG.
    """
    global _ACCEL
    if _ACCEL is None:
        _ACCEL = "tcg"
        if os.environ.get("LAB_ACCEL") in ("tcg", "kvm"):
            _ACCEL = os.environ["LAB_ACCEL"]
        elif os.access("/dev/kvm", os.R_OK | os.W_OK):
            log = scratch / "kvm-probe.log"
            probe = runner.Background(
                ["qemu-system-x86_64", "-accel", "kvm", "-m", "256", "-display", "none",
                 "-no-reboot", "-nodefaults", "-serial", f"file:{log}", "-kernel", str(kernel),
                 "-append", "console=ttyS0 panic=-1 root=/dev/nonexistent"], scratch / "kvm-qemu.log")
            probe.wait(15)
            probe.stop(1)
            if log.exists() and "Kernel panic" in log.read_text(errors="replace"):
                _ACCEL = "kvm"
    return _ACCEL


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


@dataclass
class Guest:
    """A running qemu machine of the lab."""

    qemu: runner.Background
    console: Path
    qmp_path: Path
    agent_path: Path
    _agent: socket.socket | None = None
    _buffer: bytes = b""
    _next_id: int = 0

    # -- console ------------------------------------------------------------
    def console_text(self) -> str:
        return self.console.read_text(errors="replace") if self.console.exists() else ""

    def wait_console(self, pattern: str, timeout: float) -> re.Match[str] | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = re.search(pattern, self.console_text(), re.M)
            if match:
                return match
            if not self.qemu.alive():
                return re.search(pattern, self.console_text(), re.M)
            time.sleep(0.5)
        return None

    # -- agent --------------------------------------------------------------
    def _connect(self) -> socket.socket:
        if self._agent is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(str(self.agent_path))
            self._agent = sock
        return self._agent

    def _read_until(self, marker: bytes, timeout: float) -> bytes:
        sock = self._connect()
        deadline = time.monotonic() + timeout
        while marker not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self.qemu.alive():
                raise TimeoutError(f"guest did not answer {marker!r} in {timeout:g}s")
            sock.settimeout(min(remaining, 1.0))
            try:
                chunk = sock.recv(65536)
            except socket.timeout:
                continue
            if not chunk:
                raise TimeoutError("agent connection closed")
            self._buffer += chunk
        head, _, self._buffer = self._buffer.partition(marker)
        return head

    def wait_ready(self, timeout: float) -> float:
        """Wait for the multi-user target (the agent's first line); return seconds."""
        start = time.monotonic()
        # Keep the last line: the marker may arrive in pieces.
        self._read_until(b"LAB-READY\n", timeout)
        return time.monotonic() - start

    def run(self, command: str, timeout: float = 60) -> tuple[int, str]:
        """Run a shell command in the guest; return (status, output)."""
        self._next_id += 1
        ident = str(self._next_id)
        self._connect().sendall(f"{ident} {command}\n".encode())
        end = f"LAB-END {ident} ".encode()
        head = self._read_until(end, timeout)
        status_line = self._read_until(b"\n", timeout)  # may arrive after the marker
        prefix = f"LAB-OUT {ident} "
        lines = [line[len(prefix):] for line in head.decode(errors="replace").splitlines()
                 if line.startswith(prefix)]
        return int(status_line.decode().strip() or "255"), "\n".join(lines)

    def check(self, command: str, timeout: float = 60) -> str:
        status, out = self.run(command, timeout)
        if status != 0:
            raise PipelineError(f"guest command failed ({status}): {command}\n{out}")
        return out

    # -- QMP ----------------------------------------------------------------
    def qmp(self, command: str, **arguments) -> dict:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(10)
            sock.connect(str(self.qmp_path))
            stream = sock.makefile("rw")
            json.loads(stream.readline())  # greeting
            for message in ({"execute": "qmp_capabilities"},
                            {"execute": command, "arguments": arguments}):
                stream.write(json.dumps(message) + "\n")
                stream.flush()
                while True:
                    reply = json.loads(stream.readline())
                    if "return" in reply or "error" in reply:
                        break
            if "error" in reply:
                raise PipelineError(f"QMP {command}: {reply['error']}")
            return reply["return"]

    def set_link(self, path: int, up: bool) -> None:
        """Cut (up=False) or restore the link of NIC ``path`` (0 or 1)."""
        self.qmp("set_link", name=f"nic{path}", up=up)

    def paths(self) -> int:
        """Active paths of the root's multipath map, as the guest sees them."""
        out = self.check("multipath -ll 2>/dev/null | grep -c 'active ready' || true")
        return int(out.strip() or 0)

    def wait_paths(self, count: int, timeout: float) -> float | None:
        """Wait until the root has ``count`` active paths; return the seconds taken."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if self.paths() == count:
                return time.monotonic() - start
            time.sleep(2)
        return None

    def poweroff(self, timeout: float = 60) -> float | None:
        """Ask for a clean poweroff; return its duration, or None on time-out."""
        start = time.monotonic()
        try:
            self._connect().sendall(b"0 systemctl poweroff\n")
        except OSError:
            pass
        status = self.qemu.wait(timeout)
        return None if status is None else time.monotonic() - start

    def close(self) -> None:
        if self._agent is not None:
            self._agent.close()
            self._agent = None
        self.qemu.stop(2)


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m pipeline.lab", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("manifest", type=Path, help="the triple's manifest")
    parser.add_argument("--down", type=int, action="append", default=[],
                        help="cut this path (0 or 1) from power-on")
    parser.add_argument("--timeout", type=float, default=300,
                        help="seconds to wait for the multi-user target (default 300)")
    parser.add_argument("--keep", type=Path, help="keep logs and the LUN copy in this folder")
    args = parser.parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)
    # SIGTERM ends the lab like Ctrl-C: through Lab.__exit__, which stops
    # every process it started and removes the namespace.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        triple = Triple.from_manifest(args.manifest)
        with Lab(triple, args.keep) as lab:
            print(f"lab: namespace {lab.ns}, work {lab.work}, accel "
                  f"{probe_accel(triple.kernel, lab.work)}", flush=True)
            guest = lab.boot(links_down=tuple(args.down))
            try:
                seconds = guest.wait_ready(args.timeout)
            except TimeoutError:
                print(guest.console_text()[-3000:])
                print("lab: the guest did not reach the multi-user target", file=sys.stderr)
                return 1
            print(f"lab: multi-user target after {seconds:.1f}s")
            status = re.findall(r"^.*open-iscsi-boot:.*$", guest.console_text(), re.M)
            print("\n".join(status[-3:]))
            print(guest.check("iscsi-boot-status || true"))
            print(f"lab: active paths {guest.paths()}")
            took = guest.poweroff()
            print("lab: poweroff " + (f"took {took:.1f}s" if took is not None else "timed out"))
    except PipelineError as exc:
        return report(exc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
