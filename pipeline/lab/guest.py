"""The lab's machines: qemu guests, their console, agent and QMP sockets.

A guest's first serial port is its console, captured to a file; the second
is a socket to the agent (pipeline/lab/agent.py) that runs shell commands in
the booted machine; QMP cuts and restores links and powers it off.  The
network the guest plugs into is pipeline/lab/namespace.py's.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from pipeline import runner
from pipeline.errors import PipelineError


# Probed once per process: the probe boots a kernel.
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
