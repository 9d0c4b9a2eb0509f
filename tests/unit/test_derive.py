"""pipeline/derive.py: the one derivation from a MAC address, with golden values.

Plus the small pieces it and publish stand on: the fleet names in naming.py,
Debian version order, and the newc writer.
"""

from __future__ import annotations

import dataclasses
import itertools
import subprocess
import uuid
from pathlib import Path

import pytest

from pipeline.fleet import debversion
from pipeline import cpio, naming
from pipeline.fleet.bootfiles import CHAP_FILE, chap_initrd
from pipeline.fleet.derive import derive
from pipeline.fleet.inventory import Machine, Site

SITE = Site(authority="2025-01.org.example", portals=("192.0.2.1", "198.51.100.1"),
            boot_server=None, tftp_root=Path("/srv/tftp"), store=Path("/srv/iscsi"),
            secrets=Path("/var/lib/iscsi-fleet/secrets.yaml"), cmdline="",
            dnsmasq_conf=Path("/srv/iscsi/dnsmasq.conf"), tftp_group="dip",
            pxe_boot_file="pxelinux.0")
WEB1 = Machine(mac="52:54:00:12:34:01", name="web1", image="trixie", kernel=None, address=None,
               key="machines[52:54:00:12:34:01]", flavour="amd64")


def test_golden_values():
    d = derive(SITE, WEB1)
    assert d.mac == "52:54:00:12:34:01"
    assert naming.mac_hyphen(d.mac) == "52-54-00-12-34-01"
    assert naming.mac_hex(d.mac) == "525400123401"
    assert d.hostname == "web1"
    assert d.initiator == "iqn.2025-01.org.example:initiator.525400123401"
    assert d.target == "iqn.2025-01.org.example:root.525400123401"
    assert d.chap_user == d.initiator
    assert d.disk == Path("/srv/iscsi/disks/52-54-00-12-34-01.ext4")
    assert d.record == Path("/srv/iscsi/records/52-54-00-12-34-01.json")
    assert d.boot_script == "machines/52-54-00-12-34-01.ipxe"
    assert d.auth_initrd == "machines/52-54-00-12-34-01.auth.cpio"
    assert d.pxelinux_config == "pxelinux.cfg/01-52-54-00-12-34-01"
    # The value the module documentation (and the README) shows.
    assert d.fs_uuid == "6406b288-c69f-5174-bac2-004c70946789"
    # The SCSI identity every gateway gives the disk (pipeline/fleet/gateways.py).
    assert d.scsi_id == "94aa71b456b255b09b0fe8d92f759c25"
    assert d.scsi_sn == "525400123401"


def test_golden_values_second_way():
    """The same values built independently of the code under test."""
    d = derive(SITE, WEB1)
    octets = bytes(int(x, 16) for x in WEB1.mac.split(":"))
    assert naming.mac_hex(d.mac) == octets.hex()
    assert naming.mac_hyphen(d.mac) == "-".join(f"{o:02x}" for o in octets)
    namespace = uuid.UUID("6f1b8d0e-3c4e-4f0e-9a55-2f0b6c1d7a10")
    assert d.fs_uuid == str(uuid.uuid5(namespace, "machine-root\x002025-01.org.example\x0052:54:00:12:34:01"))
    assert uuid.UUID(d.fs_uuid).version == 5
    assert d.scsi_id == uuid.uuid5(namespace, "scsi-disk\x002025-01.org.example\x0052:54:00:12:34:01").hex
    assert d.scsi_sn == octets.hex()


def test_documentation_shows_the_golden_values():
    import pipeline.fleet.derive as module
    doc = module.__doc__
    for value in ("iqn.2025-01.org.example:initiator.525400123401",
                  "iqn.2025-01.org.example:root.525400123401",
                  "6406b288-c69f-5174-bac2-004c70946789", "disks/52-54-00-12-34-01.ext4",
                  "pxelinux.cfg/01-52-54-00-12-34-01"):
        assert value in doc


def test_renaming_keeps_disk_and_identity():
    before = derive(SITE, WEB1)
    after = derive(SITE, dataclasses.replace(WEB1, name="db7", image="bookworm"))
    assert after.hostname == "db7"
    for field in ("disk", "target", "initiator", "chap_user", "fs_uuid", "record", "boot_script"):
        assert getattr(after, field) == getattr(before, field), field


def test_each_machine_and_site_differs():
    other = derive(SITE, dataclasses.replace(WEB1, mac="52:54:00:12:34:02"))
    mine = derive(SITE, WEB1)
    assert all(getattr(other, f) != getattr(mine, f)
               for f in ("disk", "target", "initiator", "fs_uuid", "auth_initrd"))
    elsewhere = derive(dataclasses.replace(SITE, authority="2025-02.org.example"), WEB1)
    assert elsewhere.fs_uuid != mine.fs_uuid and elsewhere.disk == mine.disk


def test_non_canonical_mac_is_a_bug():
    with pytest.raises(ValueError):
        derive(SITE, dataclasses.replace(WEB1, mac="52-54-00-12-34-01"))


# -- fleet names ------------------------------------------------------------------

def test_published_names_round_trip():
    for part in ("kernel", "initrd", "root"):
        name = naming.published_name("trixie", "6.12.57+deb13-amd64", "0123456789ab", part)
        assert name.startswith("trixie_6.12.57+deb13-amd64_0123456789ab.")
        assert naming.parse_published(name) == ("trixie", "6.12.57+deb13-amd64", "0123456789ab", part)
    for bad in ("trixie_6.1.0-9-amd64.vmlinuz", "trixie_6.1.0-9-amd64_0123.vmlinuz",
                "x.ipxe", "trixie_6.1.0-9-amd64_0123456789AB.vmlinuz"):
        with pytest.raises(ValueError):
            naming.parse_published(bad)


def test_content_id_and_backup_names():
    assert naming.content_id("ab" * 32) == "abababababab"
    with pytest.raises(ValueError):
        naming.content_id("xyz")
    store = naming.Store(Path("/s"))
    assert store.disk_backup("52:54:00:12:34:01", "20250102T030405Z") == \
        Path("/s/disks/52-54-00-12-34-01.ext4.backup-20250102T030405Z")
    with pytest.raises(ValueError):
        store.disk_backup("52:54:00:12:34:01", "../x")


# -- Debian version order ---------------------------------------------------------

# Kernel releases and the corner cases of the order: '~', letters, leading
# zeros, hyphens inside the release (no epochs: a release never has one).
VERSIONS = ["1.0", "1.0-1", "1.0~rc1", "1.0~rc1-1", "1.0+b1", "1.0a", "1.0.1", "1.00",
            "2.0~~", "2.0~", "2.0", "1.0-1.1", "1.0-10", "6.1.0-28", "6.1.0-9",
            "6.12.57+deb13", "6.12.9+deb13", "6.1.0-28-amd64", "6.1.0-9-amd64",
            "6.1.0-10-cloud-amd64", "6.12.57+deb13-amd64", "6.12.57~rc1+deb13-amd64"]


def test_release_order_agrees_with_dpkg():
    """compare_part and newest (what the plan picks with) against dpkg itself.

    A release is compared as one string; dpkg compares ``<release>-0`` the
    same way (upstream part: the whole release; revisions equal)."""
    pairs = list(itertools.combinations(VERSIONS, 2))
    script = "".join(f"dpkg --compare-versions '{a}-0' lt '{b}-0' && echo lt || "
                     f"{{ dpkg --compare-versions '{a}-0' eq '{b}-0' && echo eq || echo gt; }}\n"
                     for a, b in pairs)
    answers = subprocess.run(["sh", "-c", script], capture_output=True, text=True,
                             check=True).stdout.split()
    for (a, b), answer in zip(pairs, answers, strict=True):
        r = debversion.compare_part(a, b)
        assert {"lt": r < 0, "eq": r == 0, "gt": r > 0}[answer], (a, b, answer, r)
        if answer != "eq":
            assert debversion.newest([a, b]) == debversion.newest([b, a]) == \
                (b if answer == "lt" else a), (a, b, answer)


def test_newest_kernel_release():
    assert debversion.newest(["6.1.0-9-amd64", "6.1.0-28-amd64", "6.1.0-10-amd64"]) == "6.1.0-28-amd64"
    assert debversion.newest(["6.12.9+deb13-amd64", "6.12.57+deb13-amd64"]) == "6.12.57+deb13-amd64"
    assert debversion.newest(["6.12.57+deb13-amd64", "6.12.57~rc1+deb13-amd64"]) == "6.12.57+deb13-amd64"


# -- the newc writer and the CHAP initrd ------------------------------------------

def test_chap_initrd_contract(tmp_path):
    blob = chap_initrd("iqn.2025-01.org.example:initiator.525400123401", "Secret.123_-@:x")
    assert blob == chap_initrd("iqn.2025-01.org.example:initiator.525400123401", "Secret.123_-@:x")
    path = tmp_path / "auth.cpio"
    path.write_bytes(blob)
    members = list(cpio.members(path))
    files = [m for m in members if m.is_file]
    assert [m.name for m in files] == [CHAP_FILE] == ["etc/open-iscsi-boot/chap"]
    assert files[0].mode == 0o100600
    assert files[0].data == (b"username=iqn.2025-01.org.example:initiator.525400123401\n"
                             b"password=Secret.123_-@:x\n")
    assert all(m.is_dir for m in members if not m.is_file)
    # The folder of the secret is as closed as the one open-iscsi-boot's hook makes.
    assert {m.name: m.mode & 0o777 for m in members if m.is_dir} == {
        "etc": 0o755, "etc/open-iscsi-boot": 0o700}
    assert len(blob) % 4 == 0 and b"TRAILER!!!" in blob
    # GNU cpio reads it too, with the same modes, owners and times.
    listing = subprocess.run(["cpio", "-itv", "--quiet"], input=blob, capture_output=True,
                             check=True).stdout.decode().splitlines()
    assert [line.split()[-1] for line in listing] == ["etc", "etc/open-iscsi-boot", CHAP_FILE]
    assert listing[2].startswith("-rw-------   1 root     root           ")
    assert "1970" in listing[2]
    out = tmp_path / "x"
    out.mkdir()
    subprocess.run(["cpio", "-idm", "--quiet"], input=blob, cwd=out, check=True)
    assert (out / CHAP_FILE).read_text().startswith("username=iqn.2025-01")


@pytest.mark.parametrize("user, password", [("a b", "secret123456"), ("user", "pass\nword"),
                                            ("user", "pa$$word1234"), ("", "secret123456")])
def test_chap_initrd_refuses_unsafe_values(user, password):
    with pytest.raises(ValueError):
        chap_initrd(user, password)


def test_newc_writer_refuses_odd_entries():
    with pytest.raises(ValueError):
        cpio.write_newc([("../etc/x", cpio.S_IFREG | 0o600, b"")])
    with pytest.raises(ValueError):
        cpio.write_newc([("dev/x", 0o020600, b"")])
