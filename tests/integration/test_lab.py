"""Boot proof: the default recipe's amd64 triple boots as a diskless machine
with its root on a multipath iSCSI LUN, in the lab (namespace, dnsmasq,
tgtd, qemu).  Uses the session's one build (conftest.py's ``built``).

Bounds (TCG, 2 cores): multi-user within 300 s; a path comes back within
120 s of its link; poweroff within 60 s; a bad boot parameter ends the boot
(panic=10, qemu -no-reboot) within 150 s.
"""

from __future__ import annotations

import re
import time

import pytest

from pipeline.lab.namespace import INITIATOR_IQN, PORTALS as LAB_PORTALS, TARGET_IQN, Lab
from pipeline.naming import Triple
import scratch_build

BOOT_BOUND = 300
PATH_BOUND = 120
POWEROFF_BOUND = 60
PANIC_BOUND = 150


@pytest.fixture(scope="module")
def lab(built, tmp_path_factory):
    with Lab(Triple.from_manifest(built), tmp_path_factory.mktemp("lab")) as running:
        yield running
    # Lab.__exit__ removed the namespace and stopped what it started.


def boot_ready(lab, **kwargs):
    return scratch_build.boot_ready(lab, BOOT_BOUND, **kwargs)


def assert_sessions_adopted(guest, timeout: float = 60) -> None:
    """The booted iscsid took over the initramfs's sessions without a logout.

    The kernel keeps the sessions the initramfs made (session1, session2)
    and their two SCSI disks; the booted iscsid re-attaches to each by
    open-iscsi's session sync, which re-opens the connection inside the same
    session ("operational after recovery") rather than logging in anew.
    """
    assert guest.check("ls /sys/class/iscsi_session").split() == ["session1", "session2"]
    assert len(guest.check("ls /sys/class/scsi_disk").split()) == 2
    deadline = time.monotonic() + timeout
    while True:
        journal = guest.check("journalctl -b --no-pager -o cat -u iscsid.service")
        adopted = re.findall(r"connection(\d+):0 is operational after recovery", journal)
        if sorted(adopted) == ["1", "2"] or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert sorted(adopted) == ["1", "2"], journal
    assert not re.search(r"(?i)logout|logged out", journal), journal
    assert len(sessions(guest)) == 2


def test_boots_to_multi_user_on_two_paths_and_survives_link_cuts(lab):
    guest, seconds = boot_ready(lab, name="two-paths")
    try:
        status = re.search(r"open-iscsi-boot: root (/dev/dm-\d+) .*paths (\d)/(\d) active", guest.console_text())
        assert status, guest.console_text()[-3000:]
        assert status.group(2) == status.group(3) == "2"
        root = guest.check("findmnt -n -o SOURCE /")
        assert root.startswith("/dev/mapper/") or root.startswith("/dev/dm-"), root
        assert guest.check("lsblk -n -o TYPE $(findmnt -n -o SOURCE /)").strip() == "mpath"
        assert guest.wait_paths(2, 60) is not None
        assert "paths 2/2" in guest.check("iscsi-boot-status")
        # The booted system knows its initiator name (from the boot parameters).
        assert INITIATOR_IQN in guest.check("cat /etc/iscsi/initiatorname.iscsi")
        assert_sessions_adopted(guest)

        guest.check("lab-io start")
        for path in (0, 1):
            before = int(guest.check("lab-io count"))
            guest.set_link(path, False)
            assert guest.wait_paths(1, PATH_BOUND) is not None, f"path {path} not seen failed"
            time.sleep(10)
            during = int(guest.check("lab-io count", timeout=120))
            assert during > before, "no I/O completed while a link was cut"
            guest.set_link(path, True)
            assert guest.wait_paths(2, PATH_BOUND) is not None, f"path {path} did not come back"
        summary = guest.check("lab-io stop")
        rounds, failures = map(int, re.findall(r"\d+", summary))
        assert failures == 0 and rounds > 0, guest.check("cat /root/lab-io.log")
        kernel_log = guest.check("dmesg")
        assert not re.search(r"(Buffer I/O error on dev dm-|EXT4-fs error)", kernel_log), kernel_log[-3000:]

        took = guest.poweroff(POWEROFF_BOUND)
        assert took is not None, "poweroff did not complete"
    finally:
        guest.close()
    print(f"multi-user after {seconds:.1f}s, poweroff {took:.1f}s")


@pytest.mark.parametrize("down", [0, 1])
def test_boots_with_one_path_down_from_power_on(lab, down):
    guest, seconds = boot_ready(lab, links_down=(down,), name=f"down{down}")
    try:
        assert re.search(r"open-iscsi-boot: root /dev/dm-\d+ .*paths 1/2 active", guest.console_text()), \
            guest.console_text()[-3000:]
        assert guest.check("lsblk -n -o TYPE $(findmnt -n -o SOURCE /)").strip() == "mpath"
        # The missing path joins the map once its link is back.
        guest.set_link(down, True)
        assert guest.wait_paths(2, PATH_BOUND + 60) is not None
        assert guest.poweroff(POWEROFF_BOUND) is not None
    finally:
        guest.close()
    print(f"path {down} down: multi-user after {seconds:.1f}s")


PORTALS = ",".join(LAB_PORTALS)
BAD = {
    "malformed target": (f"iscsitarget=not-an-iqn,{PORTALS} iscsi_initiator={INITIATOR_IQN}",
                         r"iscsitarget"),
    "bad portal octet": (f"iscsitarget={TARGET_IQN},192.0.2.300 iscsi_initiator={INITIATOR_IQN}",
                         r"192\.0\.2\.300"),
    "no initiator": (f"iscsitarget={TARGET_IQN},{PORTALS}", r"iscsi_initiator"),
    "no portal reachable": (f"iscsitarget={TARGET_IQN},203.0.113.1 iscsi_initiator={INITIATOR_IQN}",
                            r"203\.0\.113\.1"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_boot_parameter_says_what_is_wrong_and_does_not_hang(lab, case):
    params, expected = BAD[case]
    cmdline = f"console=ttyS0,115200 root=LABEL={lab.label} ro panic=10 {params}"
    guest = lab.boot(cmdline=cmdline, name=f"bad-{case.replace(' ', '-')}")
    try:
        status = guest.qemu.wait(PANIC_BOUND)
        console = guest.console_text()
        assert status is not None, f"still running after {PANIC_BOUND}s:\n{console[-3000:]}"
        messages = [line for line in console.splitlines() if "open-iscsi-boot" in line]
        assert any(re.search(expected, line) for line in messages), "\n".join(messages) or console[-3000:]
        assert "Welcome to" not in console  # never reached the real root
    finally:
        guest.close()


STOCK = f"iscsi_target_name={TARGET_IQN} iscsi_target_ip={LAB_PORTALS[0]}"


def sessions(guest) -> list[str]:
    """The guest's iSCSI sessions (the kernel's list, as iscsiadm shows it).

    Not tgtd's view: the lab's target keeps the sessions of earlier guests,
    which by design never log out their root paths, until they time out.
    """
    return [line for line in guest.check("iscsiadm -m session").splitlines() if line.strip()]


def test_stock_debian_parameters_still_boot(lab):
    """Without iscsitarget= the package stays out of the way: stock open-iscsi logs in."""
    # Stock initramfs-tools configures one device: name the one on the
    # portal's subnet (ens2, the first NIC), or it may pick the other one.
    cmdline = (f"console=ttyS0,115200 root=LABEL={lab.label} ro panic=10 ip=:::::ens2:dhcp "
               f"iscsi_initiator={INITIATOR_IQN} {STOCK}")
    guest, seconds = boot_ready(lab, cmdline=cmdline, name="stock")
    try:
        assert "open-iscsi-boot: target" not in guest.console_text()
        assert len(sessions(guest)) == 1, sessions(guest)
        assert guest.check("findmnt -n -o TARGET /").strip() == "/"
        assert guest.poweroff(POWEROFF_BOUND) is not None
    finally:
        guest.close()
    print(f"stock parameters: multi-user after {seconds:.1f}s")


def test_both_forms_given_log_in_once_per_path(lab):
    """iscsitarget= wins; the stock script does not add a second login."""
    guest, seconds = boot_ready(lab, cmdline=lab.cmdline(STOCK), name="both")
    try:
        assert re.search(r"open-iscsi-boot: root /dev/dm-\d+ .*paths 2/2 active", guest.console_text())
        found = sessions(guest)
        assert len(found) == 2, found
        portals = set(LAB_PORTALS)
        assert {re.search(r"(\d+\.\d+\.\d+\.\d+):", line).group(1) for line in found} == portals
        assert guest.poweroff(POWEROFF_BOUND) is not None
    finally:
        guest.close()
