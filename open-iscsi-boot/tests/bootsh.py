"""What the boot package's tests share: its paths, the names the fakes use,
and the ways its shell code is run.

A plain module, not a test module: tests and conftest.py import it by name
(pytest puts this folder on sys.path).  The fixtures (``shell``,
``fake_root``) are in conftest.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[2]
PKG = PROJECT / "open-iscsi-boot"
LIB = PKG / "lib" / "lib.sh"
LOCAL_TOP = PKG / "initramfs/scripts/local-top/open-iscsi-boot"
INIT_PREMOUNT = PKG / "initramfs/scripts/init-premount/open-iscsi-boot"
HOOK = PKG / "initramfs/hooks/open-iscsi-boot"
HANDOVER = PKG / "lib/handover"
STATUS = PKG / "sbin/iscsi-boot-status"

IQN = "iqn.2024-01.org.example:root"
INITIATOR = "iqn.2024-01.org.example:host-52-54-00-12-34-56"
# dmsetup status of the fake root's map: path 8:16 active, 8:32 failed.
DM_STATUS = "0 41943040 multipath 2 0 0 0 1 1 A 0 2 0 8:16 A 0 0 1 8:32 F 3 0 1"


def host_path() -> str:
    return os.environ.get("PATH", "/usr/bin:/bin")


def shells() -> list[pytest.param]:
    """The shells the code meets: dash always; klibc's sh and busybox when installed."""
    found = [pytest.param(["dash"], id="dash")] if shutil.which("dash") else []
    if os.access("/usr/lib/klibc/bin/sh", os.X_OK):
        found.append(pytest.param(["/usr/lib/klibc/bin/sh"], id="klibc"))
    if shutil.which("busybox"):
        found.append(pytest.param(["busybox", "sh"], id="busybox"))
    return found or [pytest.param(["sh"], id="sh")]


def run_sh(shell: list[str], script: str, env: dict[str, str] | None = None,
           cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run SCRIPT after sourcing lib.sh; return the finished process."""
    full_env = {"PATH": host_path(), "LANG": "C"}
    full_env.update(env or {})
    return subprocess.run(
        [*shell, "-c", f'. "{LIB}"\n{script}'],
        capture_output=True, text=True, env=full_env, cwd=cwd,
        stdin=subprocess.DEVNULL, timeout=60, check=False,
    )


def run_dash(script: Path, *args: str, env: dict[str, str],
             cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run one of the package's scripts as the booted system does (dash)."""
    return subprocess.run(["dash", str(script), *args], capture_output=True, text=True, env=env,
                          check=False, timeout=60, cwd=cwd)


def run_status(root: Path, rundir: Path, *args: str,
               env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """iscsi-boot-status on the fake ``root`` (see sys_env), with the handover
    state in ``rundir``."""
    full_env = {**sys_env(root), "OIB_LIB": str(LIB), "OIB_RUNDIR": str(rundir), "LANG": "C"}
    full_env.update(env or {})
    return run_dash(STATUS, *args, env=full_env)


def run_handover(mode: str, rundir: Path, etc: Path) -> subprocess.CompletedProcess:
    """The handover with the initramfs's state in ``rundir``, installing into
    ``etc`` and its node database ``etc``/nodes (never the host's own)."""
    env = {"OIB_LIB": str(LIB), "OIB_RUNDIR": str(rundir), "OIB_ETC_ISCSI": str(etc),
           "OIB_NODE_DB": str(etc / "nodes"), "PATH": host_path()}
    return run_dash(HANDOVER, mode, env=env)


def write(path: Path, text: str) -> None:
    """Write TEXT and a final newline, making the folders on the way."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")


def write_exec(path: Path, text: str) -> None:
    """A stand-in program: write it as ``write`` does, executable."""
    write(path, text)
    path.chmod(0o755)


def link(path: Path, target: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.symlink_to(target)


def sys_env(root: Path) -> dict[str, str]:
    """The environment that points lib.sh at a fake root's /sys, /proc and bin/."""
    return {"OIB_SYSFS": str(root / "sys"), "OIB_PROC": str(root / "proc"),
            "PATH": f"{root / 'bin'}:{host_path()}"}
