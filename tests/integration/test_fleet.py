"""Publishing proved in the lab: two machines, cloned from one template, boot
from the network through the published tree at the same time.

The lab serves what publish wrote and nothing else: dnsmasq reads the
generated configuration (DHCP host entries, iPXE chain loading, TFTP from the
published tree), tgtd loads the generated tgt configuration (one target per
machine, its initiator name and CHAP password), and each qemu machine boots
through its NIC's iPXE ROM with the MAC of its inventory entry.

Uses the session's one build (conftest.py's ``built``); its last test
rebuilds that triple (an overlay change) and publishes again.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from pipeline.fleet import chap
from pipeline.fleet.derive import derive
from pipeline.fleet.inventory import load_inventory
from pipeline.lab.agent import add_agent
from pipeline.lab.namespace import PORTALS, Lab
from pipeline.naming import Store, Triple, mac_hyphen
from pipeline.fleet.publish import gc, publish
from scratch_build import TASK, TEST_OVERLAY, current_manifest, doit, scratch_recipes

# An overlay file of the test's own that goes into the initramfs.
INITRAMFS_MARKER = "etc/initramfs-tools/conf.d/zz-pipeline-it-marker"
BOOT_BOUND = 480        # two TCG machines at once, kernel and initramfs over TFTP
# The inventory key is the MAC of the NIC iPXE boots from; the second NIC's
# MAC is the lab's own.
MACHINES = {"alpha": ("52:54:00:aa:00:01", "52:54:00:ab:00:01"),
            "beta": ("52:54:00:aa:00:02", "52:54:00:ab:00:02")}


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


class Fleet:
    def __init__(self, work: Path) -> None:
        self.work = work
        self.path = work / "inventory.yaml"
        lines = ["site:",
                 "  authority: 2025-01.org.example.lab",
                 f"  portals: [{', '.join(PORTALS)}]",
                 f"  boot_server: {PORTALS[0]}",
                 f"  tftp_root: {work / 'tftp'}",
                 f"  store: {work / 'store'}",
                 '  cmdline: "console=ttyS0,115200 panic=10"',
                 "machines:"]
        lines += [f"  {macs[0]}: {{name: {name}, image: trixie}}" for name, macs in MACHINES.items()]
        self.path.write_text("\n".join(lines) + "\n")
        self.inventory = load_inventory(self.path, scratch_recipes())
        self.store = Store(self.inventory.site.store)
        self.derived = {m.name: derive(self.inventory.site, m) for m in self.inventory.machines}

    def publish(self, triples: Path):
        lines: list[str] = []
        report = publish(self.inventory, triples, log=lines.append)
        return report, "\n".join(lines)


@pytest.fixture(scope="module")
def fleet(built):
    # Not under pytest's private (0700) folder: dnsmasq serves the TFTP tree
    # as its own unprivileged user, as on a site.
    work = Path(tempfile.mkdtemp(prefix="fleet-", dir="/var/tmp"))
    work.chmod(0o755)
    try:
        yield make_fleet(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def make_fleet(work: Path) -> Fleet:
    fleet = Fleet(work)
    report, log = fleet.publish(current_manifest().parent)
    assert len(report.disks_created) == 2, log
    for derived in fleet.derived.values():
        # The test-only agent goes into the lab's own clones, never a template.
        add_agent(derived.disk, work)
    fleet.disk_hashes_before_boot = {n: sha256(d.disk) for n, d in fleet.derived.items()}
    return fleet


@pytest.fixture(scope="module")
def booted(fleet, built):
    lab = Lab(Triple.from_manifest(built), fleet.work / "lab",
              dnsmasq_conf=fleet.inventory.site.dnsmasq_conf, tgt_conf=fleet.store.tgt_conf)
    with lab:
        guests = {name: lab.boot(name=name, macs=macs, network_boot=True)
                  for name, macs in MACHINES.items()}
        try:
            for name, guest in guests.items():
                try:
                    guest.wait_ready(BOOT_BOUND)
                except TimeoutError:
                    pytest.fail(f"{name} did not reach multi-user in {BOOT_BOUND}s; console:\n"
                                + guest.console_text()[-4000:] + "\ndnsmasq:\n"
                                + (lab.work / "dnsmasq.log").read_text()[-3000:])
            yield lab, guests
        finally:
            for guest in guests.values():
                if guest.qemu.alive():
                    guest.poweroff(60)


def test_both_machines_boot_from_the_network_onto_their_own_multipath_disk(fleet, booted):
    lab, guests = booted
    dnsmasq = (lab.work / "dnsmasq.log").read_text()
    for name, guest in guests.items():
        derived = fleet.derived[name]
        # iPXE fetched this machine's own script over TFTP.
        assert f"{mac_hyphen(derived.mac)}.ipxe" in dnsmasq, dnsmasq[-3000:]
        assert guest.wait_paths(2, 120) is not None, f"{name}: not 2 active paths"
        assert guest.check("lsblk -n -o TYPE $(findmnt -n -o SOURCE /)").strip() == "mpath"
        assert guest.check("findmnt -n -o UUID /").strip() == derived.fs_uuid
        assert re.search(r"open-iscsi-boot: root /dev/dm-\d+ .*paths 2/2 active.*CHAP|"
                         r"open-iscsi-boot: root /dev/dm-\d+ .*paths 2/2 active",
                         guest.console_text())


def test_clones_differ_in_everything_that_belongs_to_one_machine(fleet, booted):
    _lab, guests = booted
    seen: dict[str, dict[str, str]] = {}
    for name, guest in guests.items():
        derived = fleet.derived[name]
        facts = {
            "hostname": guest.check("hostname").strip(),
            "machine-id": guest.check("cat /etc/machine-id").strip(),
            "ssh host key": guest.check(
                "ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub").split()[1],
            "fs uuid": guest.check("findmnt -n -o UUID /").strip(),
            "initiator": guest.check("cat /etc/iscsi/initiatorname.iscsi"),
        }
        assert facts["hostname"] == name
        assert re.fullmatch(r"[0-9a-f]{32}", facts["machine-id"])
        assert f"InitiatorName={derived.initiator}" in facts["initiator"]
        seen[name] = facts
    for key in seen["alpha"]:
        assert seen["alpha"][key] != seen["beta"][key], key
    # IPv4 from DHCP on both NICs; IPv6 left on (router advertisements accepted).
    alpha = guests["alpha"]
    assert "inet 192.0.2." in alpha.check("ip -4 addr show")
    assert alpha.check("cat /proc/sys/net/ipv6/conf/all/disable_ipv6").strip() == "0"
    assert "inet6 fe80::" in alpha.check("ip -6 addr show")


def test_no_secret_on_the_command_line_or_in_a_readable_file(fleet, booted):
    _lab, guests = booted
    passwords = chap.load(fleet.inventory.site.secrets)
    for name, guest in guests.items():
        password = passwords[fleet.derived[name].mac]
        assert password not in guest.check("cat /proc/cmdline")
        found = guest.check(f"grep -rl -- '{password}' /etc /run 2>/dev/null || true").split()
        for path in found:
            assert guest.check(f"stat -c %a {path}").strip() == "600", path


def iscsi_login(guest, target: str, user: str, password: str) -> tuple[int, str]:
    """Log in to ``target`` on the first portal through a separate iface, so
    the root's own node records are never touched; log out again if it
    worked.  Returns iscsiadm's status and output."""
    node = f"-m node -T {target} -p {PORTALS[0]} -I labprobe"
    guest.check("iscsiadm -m iface -I labprobe -o new >/dev/null 2>&1 || true")
    guest.check(f"iscsiadm {node} -o new >/dev/null")
    settings = [("node.session.initial_login_retry_max", "1")]
    if user:
        settings += [("node.session.auth.authmethod", "CHAP"),
                     ("node.session.auth.username", user),
                     ("node.session.auth.password", password)]
    for key, value in settings:
        guest.check(f"iscsiadm {node} -o update -n {key} -v '{value}'")
    status, out = guest.run(f"iscsiadm {node} --login", timeout=120)
    if status == 0:
        out += "\n" + guest.check("iscsiadm -m session -P 1; cat /etc/iscsi/initiatorname.iscsi; iscsiadm -m iface -I labprobe")
        guest.check(f"iscsiadm {node} --logout", timeout=60)
    guest.check(f"iscsiadm {node} -o delete")
    return status, out


def test_a_machine_reaches_its_own_disk_only_and_only_with_its_secret(fleet, booted):
    _lab, guests = booted
    passwords = chap.load(fleet.inventory.site.secrets)
    alpha, beta = fleet.derived["alpha"], fleet.derived["beta"]
    guest = guests["alpha"]
    own = passwords[alpha.mac]
    results = {
        # Positive control: the probe itself works with the right name and secret.
        "own target, own secret": iscsi_login(guest, alpha.target, alpha.chap_user, own),
        # Machine A's initiator cannot log in to B's target: not with its own
        # credentials, not with B's, not without CHAP.
        "B's target, A's secret": iscsi_login(guest, beta.target, alpha.chap_user, own),
        "B's target, B's secret": iscsi_login(guest, beta.target, beta.chap_user,
                                              passwords[beta.mac]),
        "B's target, no CHAP": iscsi_login(guest, beta.target, "", ""),
        # A wrong secret for its own target is refused.
        "own target, wrong secret": iscsi_login(guest, alpha.target, alpha.chap_user,
                                                "wrong" + own[5:]),
    }
    report = "\n".join(f"{case}: {status}\n{out}" for case, (status, out) in results.items())
    assert results["own target, own secret"][0] == 0, report
    for case, (status, _out) in results.items():
        if case != "own target, own secret":
            assert status != 0, report + _lab.tgtadm("--mode", "target", "--op", "show")
    # The root still has both paths.
    assert guest.wait_paths(2, 60) is not None


def test_republish_after_a_rebuild_leaves_both_disks_as_they_were(fleet, booted, built):
    _lab, guests = booted
    for name, guest in guests.items():
        assert guest.poweroff(60) is not None, f"{name}: poweroff"
    before = {name: sha256(d.disk) for name, d in fleet.derived.items()}
    assert before != fleet.disk_hashes_before_boot  # the machines did write to their disks
    scripts = {name: fleet.inventory.site.tftp_root / d.boot_script
               for name, d in fleet.derived.items()}
    old_scripts = {name: path.read_text() for name, path in scripts.items()}

    # A rebuild in which the root image and the initramfs change: an overlay
    # file that mkinitramfs copies (conf.d settings go into the initramfs).
    # A change that only reaches the root image would leave the boot files
    # as they were: the initramfs is reproducible, and so are its names.
    conf = TEST_OVERLAY / INITRAMFS_MARKER
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.write_text(f"# fleet rebuild {time.time()}\n")
    old_manifest = json.loads(current_manifest().read_text())
    doit(TASK)
    new_manifest = json.loads(current_manifest().read_text())
    for part in ("initrd", "root"):
        assert new_manifest["parts"][part]["sha256"] != old_manifest["parts"][part]["sha256"], part
    report, log = fleet.publish(current_manifest().parent)
    assert report.disks_created == [] and len(report.disks_kept) == 2, log
    for name, disk in ((n, d.disk) for n, d in fleet.derived.items()):
        assert sha256(disk) == before[name], f"{name}'s disk changed"
    for name, path in scripts.items():
        new = path.read_text()
        assert new != old_scripts[name], log
        old_files = set(re.findall(r"/(images/\S+)", old_scripts[name]))
        # The files the machines booted from are still there (until gc).
        for old in old_files:
            assert (fleet.inventory.site.tftp_root / old).is_file(), old
    # A second publish changes nothing.
    again, log = fleet.publish(current_manifest().parent)
    assert again.changes == 0, log
    # gc removes what no machine references any more, and no disk.
    lines: list[str] = []
    collected = gc(fleet.inventory, current_manifest().parent, log=lines.append)
    assert collected.removed and not any(p.parent == fleet.store.disks for p in collected.removed)
    for name, disk in ((n, d.disk) for n, d in fleet.derived.items()):
        assert sha256(disk) == before[name]
