"""A machine survives losing an iSCSI gateway: two gateways (a tgtd each, in
namespaces of their own) in front of one Ceph cluster, the machine's root an
RBD clone on a multipath map with one path per gateway (pipeline/lab/gateways.py).

Under the lab agent's write/fsync/read-back loop, gateway A's tgtd is
SIGKILLed and later started again, then the same for B: no I/O error on the
map, no corrupt byte, both paths back after each return.  The stall (kill to
the next completed round of the loop) is printed.

Uses the session's one build (conftest.py's ``built``), or the triple whose
manifest LAB_TRIPLE_MANIFEST names (a build made earlier).
"""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

import pytest

from pipeline.lab.gateways import WATCH_TIMEOUT, GatewayLab
from pipeline.naming import Triple

BOOT_BOUND = 420
PATH_BOUND = 120
# The first write through the other gateway waits for the dead one's watch
# to expire (WATCH_TIMEOUT), then a path switch and a loop round of 4 MiB.
STALL_BOUND = WATCH_TIMEOUT + 60
POWEROFF_BOUND = 60

needs = ["ceph-mon", "ceph-osd", "rbd", "rbd-fuse", "tgtd", "tgt-admin", "qemu-system-x86_64"]
if not all(shutil.which(tool) for tool in needs) or not Path("/dev/fuse").exists() \
        or not Path("/usr/lib/tgt/backing-store/bs_rbd.so").exists():
    pytest.skip("needs ceph-mon ceph-osd ceph-common rbd-fuse tgt tgt-rbd qemu and /dev/fuse",
                allow_module_level=True)


@pytest.fixture(scope="module")
def manifest(request) -> Path:
    given = os.environ.get("LAB_TRIPLE_MANIFEST")
    return Path(given) if given else request.getfixturevalue("built")


@pytest.fixture(scope="module")
def gwlab(manifest, tmp_path_factory):
    with GatewayLab(Triple.from_manifest(manifest), tmp_path_factory.mktemp("gwlab")) as running:
        yield running


def count(guest) -> int:
    return int(guest.check("lab-io count", timeout=120).strip() or 0)


def stall_after(guest, before: int, bound: float) -> float | None:
    """Seconds until the loop completes a round that began after the kill.

    Round ``before + 1`` may have been under way (and past its writes) at
    the kill; round ``before + 2`` began after it, so the time until it
    completes bounds the stall from above (by one round, a few seconds).
    """
    start = time.monotonic()
    while time.monotonic() - start < bound:
        if count(guest) >= before + 2:
            return time.monotonic() - start
        time.sleep(1)
    return None


def active_gateway(gwlab, guest) -> str:
    """The gateway whose path carries the I/O: the disk of the map's active
    path group, and the portal of the session that disk belongs to."""
    topology = guest.check("multipath -ll")
    disk = re.search(r"status=active\n[^\n]*? (sd[a-z]+) ", topology)
    assert disk, topology
    detail = guest.check("iscsiadm -m session -P 3")
    for block in detail.split("Current Portal: ")[1:]:
        if re.search(rf"Attached scsi disk {disk.group(1)}\b", block):
            return gwlab.gateway_of(block.split(":", 1)[0])
    raise AssertionError(f"no session has {disk.group(1)}:\n{detail}")


def test_survives_losing_each_gateway(gwlab, capsys):
    guest = gwlab.boot(name="gw")
    try:
        try:
            booted = guest.wait_ready(BOOT_BOUND)
        except TimeoutError:
            pytest.fail(f"no multi-user target within {BOOT_BOUND}s; console tail:\n"
                        f"{guest.console_text()[-4000:]}")
        status = re.search(r"open-iscsi-boot: root (/dev/dm-\d+) .*paths (\d)/(\d) active",
                           guest.console_text())
        assert status and status.group(2) == status.group(3) == "2", guest.console_text()[-3000:]
        assert guest.check("lsblk -n -o TYPE $(findmnt -n -o SOURCE /)").strip() == "mpath"
        assert guest.wait_paths(2, 60) is not None
        topology = guest.check("multipath -ll")
        # One path per group (failover): writes go through one gateway at a time.
        assert len(re.findall(r"policy=", topology)) == 2, topology
        sessions = guest.check("iscsiadm -m session")
        assert "192.0.2.2:3260" in sessions and "198.51.100.2:3260" in sessions, sessions

        guest.check("lab-io start")
        time.sleep(20)
        round_time = 20 / max(count(guest), 1)
        stalls = {}
        # The gateway carrying the I/O first: after it returns the map stays
        # on the other (failback manual), so each kill hits the one in use.
        first = active_gateway(gwlab, guest)
        for name in (first, *(h.gateway.name for h in gwlab.hosts if h.gateway.name != first)):
            assert active_gateway(gwlab, guest) == name
            host = gwlab.host(name)
            time.sleep(5)
            before = count(guest)
            host.kill()
            stall = stall_after(guest, before, STALL_BOUND)
            assert stall is not None, f"no write completed within {STALL_BOUND}s of killing {name}"
            stalls[name] = stall
            assert guest.wait_paths(1, PATH_BOUND) is not None, f"{name}'s path not seen failed"
            time.sleep(5)
            assert count(guest) > before
            host.start()
            assert guest.wait_paths(2, PATH_BOUND) is not None, f"{name}'s path did not come back"
        summary = guest.check("lab-io stop")
        rounds, failures = map(int, re.findall(r"\d+", summary))
        assert failures == 0 and rounds > 0, guest.check("cat /root/lab-io.log")
        kernel_log = guest.check("dmesg")
        assert not re.search(r"(Buffer I/O error on dev dm-|EXT4-fs error|I/O error, dev dm-)",
                             kernel_log), kernel_log[-3000:]
        assert guest.poweroff(POWEROFF_BOUND) is not None
    finally:
        guest.close()
    with capsys.disabled():
        print(f"\n  multi-user after {booted:.0f}s; stall after killing the active gateway "
              f"{first} {stalls[first]:.1f}s, then {', '.join(f'{k} {v:.1f}s' for k, v in stalls.items() if k != first)} (osd client watch timeout {WATCH_TIMEOUT}s); "
              f"{rounds} rounds, {failures} failures, a quiet round {round_time:.1f}s\n{topology}")


@pytest.mark.parametrize("dead", ["gwa", "gwb"])
def test_boots_with_a_gateway_dead_from_power_on(gwlab, dead, capsys):
    """With one gateway's tgtd gone from power-on the machine boots on the
    other's path, and the dead gateway's path joins the map once it is back."""
    host = gwlab.host(dead)
    host.stop()
    try:
        guest = gwlab.boot(name=f"dead-{dead}")
        try:
            booted = guest.wait_ready(BOOT_BOUND)
            assert re.search(r"open-iscsi-boot: root /dev/dm-\d+ .*paths 1/2 active",
                             guest.console_text()), guest.console_text()[-3000:]
            assert guest.check("lsblk -n -o TYPE $(findmnt -n -o SOURCE /)").strip() == "mpath"
            guest.check("dd if=/dev/urandom of=/root/dead-gw bs=1M count=4 conv=fsync status=none")
            host.start()
            joined = guest.wait_paths(2, PATH_BOUND + 60)
            assert joined is not None, guest.check("multipath -ll")
            assert guest.poweroff(POWEROFF_BOUND) is not None
        finally:
            guest.close()
    finally:
        if host.tgtd is None:
            host.start()
    with capsys.disabled():
        print(f"\n  {dead} dead from power-on: multi-user after {booted:.0f}s, its path joined "
              f"{joined:.0f}s after it came back")
