"""A throwaway single-node Ceph cluster in a folder, for the RBD store's tests.

One ceph-mon and one ceph-osd whose object store lives in memory
(memstore), one replica, cephx on, no manager (RBD needs none).  Everything
is in the folder: the ceph.conf every command is given with ``-c``, the
keyrings, the daemons' data, logs and admin sockets; nothing goes to
/etc/ceph.  The daemons listen on 127.0.0.1 (a free port) or, when the
caller names a network namespace it made, on the address it gives there.

:func:`start` returns a :class:`Cluster`: its conf, a client id and that
client's keyring (mode 0600), allowed the RBD profile on one pool.
:meth:`Cluster.stop` stops the daemons by the process ids it started.
Every wait is bounded.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from pipeline import runner
from pipeline.errors import PipelineError

TOOLS = ["ceph-mon", "ceph-osd", "ceph", "ceph-authtool", "monmaptool", "rbd"]

# How long the cluster may take to come up (it takes about 6 s here) and
# how long one admin command may take before it is given up.
START_TIMEOUT = 60.0
COMMAND_TIMEOUT = 30.0
MON_PORT_IN_NAMESPACE = 3300

CONF = """\
[global]
fsid = {fsid}
mon host = v2:{address}:{port}
mon initial members = a
public addr = {address}
cluster addr = {address}
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
ms bind ipv6 = false
auth allow insecure global id reclaim = false
# A scratch cluster on a full-ish disk is still healthy (the default warns below 30 %).
mon data avail warn = 2
mon data avail crit = 1
# One OSD, one copy: pools of size 1, placed on that OSD alone.
osd pool default size = 1
osd pool default min size = 1
mon allow pool size one = true
mon warn on pool no redundancy = false
osd crush chooseleaf type = 0
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
mon allow pool delete = true
osd objectstore = memstore
memstore device bytes = {memstore_bytes}
# Everything in the folder; $pid: several clients may run at once.
run dir = {base}/run
admin socket = {base}/run/$cluster-$name.$pid.asok
log file = {base}/log/$cluster-$name.log
pid file =
mon data = {base}/mon/$cluster-$id
osd data = {base}/osd/$cluster-$id
# A client that cannot reach the cluster says so soon, instead of after 5 min.
client mount timeout = 15
rados mon op timeout = 30
rados osd op timeout = 60

[client.admin]
keyring = {base}/admin.keyring

[client.{client_id}]
keyring = {keyring}
"""


@dataclass
class Cluster:
    base: Path
    conf: Path
    client_id: str
    keyring: Path
    pool: str
    netns: str | None = None
    daemons: list[runner.Background] = field(default_factory=list)

    def admin(self, *args: str, timeout: float = COMMAND_TIMEOUT) -> str:
        """Run a ceph tool as client.admin (in the cluster's namespace)."""
        return runner.run(_in_ns(self.netns, [*args, "-c", str(self.conf)]), timeout=timeout)

    def stop(self) -> None:
        """Stop the daemons this cluster started (by process id), newest first."""
        for daemon in reversed(self.daemons):
            daemon.stop(grace=10)
        self.daemons.clear()

    def __enter__(self) -> "Cluster":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _in_ns(netns: str | None, argv: list[str]) -> list[str]:
    return ["ip", "netns", "exec", netns, *argv] if netns else argv


def free_port(address: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((address, 0))
        return sock.getsockname()[1]


def start(base: Path, *, pool: str = "fleet", client_id: str = "fleet",
          netns: str | None = None, address: str = "127.0.0.1",
          memstore_bytes: int = 1 << 30, timeout: float = START_TIMEOUT,
          options: dict[str, str] | None = None) -> Cluster:
    """Make and start a cluster in ``base`` (which must be empty or absent).

    ``options`` are more ``[global]`` settings (name -> value), e.g. the
    watch time-out the gateway lab shortens.
    """
    runner.require_tools(TOOLS + (["ip"] if netns else []))
    base = base.resolve()
    if base.exists() and any(base.iterdir()):
        raise PipelineError(f"{base}: not empty; a throwaway cluster needs a folder of its own")
    for sub in ("run", "log", "mon", "osd/ceph-0"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    port = MON_PORT_IN_NAMESPACE if netns else free_port(address)
    keyring = base / f"client.{client_id}.keyring"
    conf = base / "ceph.conf"
    conf.write_text(CONF.format(fsid=uuid.uuid4(), address=address, port=port, base=base,
                                memstore_bytes=memstore_bytes, client_id=client_id,
                                keyring=keyring), encoding="utf-8")
    if options:
        text = conf.read_text(encoding="utf-8")
        more = "".join(f"{name} = {value}\n" for name, value in sorted(options.items()))
        conf.write_text(text.replace("\n[client.admin]", f"{more}\n[client.admin]", 1), encoding="utf-8")
    cluster = Cluster(base, conf, client_id, keyring, pool, netns)
    try:
        _start_mon(cluster, address, port)
        _wait(cluster, "the monitor answers", timeout, lambda: _answers(cluster))
        _start_osd(cluster)
        _wait(cluster, "the OSD is up", timeout, lambda: _osd_up(cluster))
        # A pool of its own, and a client that may use RBD on it only.
        cluster.admin("ceph", "osd", "pool", "create", pool, "8", "8")
        cluster.admin("ceph", "osd", "pool", "application", "enable", pool, "rbd")
        cluster.admin("rbd", "pool", "init", pool, timeout=timeout)
        cluster.admin("ceph", "auth", "get-or-create", f"client.{client_id}", "mon", "profile rbd",
                      "osd", f"profile rbd pool={pool}", "-o", str(keyring))
        os.chmod(keyring, 0o600)
        _wait(cluster, "HEALTH_OK", timeout,
              lambda: cluster.admin("ceph", "health").strip().startswith("HEALTH_OK"),
              detail=lambda: cluster.admin("ceph", "health", "detail").strip())
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _start_mon(cluster: Cluster, address: str, port: int) -> None:
    base, conf = cluster.base, str(cluster.conf)
    mon_keyring, admin_keyring = base / "mon.keyring", base / "admin.keyring"
    runner.run(["ceph-authtool", "--create-keyring", str(mon_keyring), "--gen-key", "-n", "mon.",
                "--cap", "mon", "allow *"])
    runner.run(["ceph-authtool", "--create-keyring", str(admin_keyring), "--gen-key",
                "-n", "client.admin", "--cap", "mon", "allow *", "--cap", "osd", "allow *",
                "--cap", "mgr", "allow *"])
    runner.run(["ceph-authtool", str(mon_keyring), "--import-keyring", str(admin_keyring)])
    for path in (mon_keyring, admin_keyring):
        os.chmod(path, 0o600)
    fsid = next(line.split("=", 1)[1].strip() for line in cluster.conf.read_text().splitlines()
                if line.startswith("fsid"))
    monmap = base / "monmap"
    runner.run(["monmaptool", "--create", "--fsid", fsid, "--addv", "a",
                f"[v2:{address}:{port}]", str(monmap)])
    runner.run(["ceph-mon", "-c", conf, "--mkfs", "-i", "a", "--monmap", str(monmap),
                "--keyring", str(mon_keyring)], timeout=COMMAND_TIMEOUT)
    cluster.daemons.append(runner.Background(
        _in_ns(cluster.netns, ["ceph-mon", "-f", "-c", conf, "-i", "a"]), base / "log" / "mon.out"))


def _start_osd(cluster: Cluster) -> None:
    base, conf = cluster.base, str(cluster.conf)
    osd_uuid = str(uuid.uuid4())
    secret = runner.output(["ceph-authtool", "--gen-print-key"])
    secrets = base / "osd-secret.json"
    secrets.write_text('{"cephx_secret": "%s"}' % secret, encoding="utf-8")
    osd_id = cluster.admin("ceph", "osd", "new", osd_uuid, "-i", str(secrets)).strip()
    secrets.unlink()
    if osd_id != "0":
        raise PipelineError(f"{base}: the new OSD got id {osd_id!r}, expected 0")
    data = base / "osd" / "ceph-0"
    runner.run(["ceph-authtool", "--create-keyring", str(data / "keyring"), "--name", "osd.0",
                "--add-key", secret])
    os.chmod(data / "keyring", 0o600)
    runner.run(_in_ns(cluster.netns, ["ceph-osd", "-c", conf, "-i", "0", "--mkfs",
                                      "--osd-uuid", osd_uuid]), timeout=COMMAND_TIMEOUT)
    cluster.daemons.append(runner.Background(
        _in_ns(cluster.netns, ["ceph-osd", "-f", "-c", conf, "-i", "0"]), base / "log" / "osd.out"))


def _answers(cluster: Cluster) -> bool:
    try:
        cluster.admin("ceph", "mon", "stat", timeout=10)
    except PipelineError:
        return False
    return True


def _osd_up(cluster: Cluster) -> bool:
    return '"num_up_osds":1' in cluster.admin("ceph", "osd", "stat", "-f", "json").replace(" ", "")


def _wait(cluster: Cluster, what: str, timeout: float, ready: Callable[[], bool],
          detail: Callable[[], str] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while True:
        for daemon in cluster.daemons:
            if not daemon.alive():
                name = next(a for a in daemon.argv if a.startswith("ceph-"))
                raise PipelineError(f"{cluster.base}: {name} exited while waiting for {what}; "
                                    f"see {daemon.log}")
        if ready():
            return
        if time.monotonic() > deadline:
            said = f" ({detail().splitlines()[0]})" if detail else ""
            raise PipelineError(f"{cluster.base}: no {what} after {timeout:g} s{said}; "
                                f"see {cluster.base}/log")
        time.sleep(0.2)
