"""pipeline/generic.py: per-machine state found, stripped, and recreated at first boot."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pipeline.build import generic

PEM = ("-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ\n"
       "-----END OPENSSH PRIVATE KEY-----\n")
RSA = "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA\n-----END RSA PRIVATE KEY-----\n"

# Per-machine state: path -> content (None: a directory).
MACHINE = {
    "etc/ssh/ssh_host_ed25519_key": PEM,
    "etc/ssh/ssh_host_ed25519_key.pub": "ssh-ed25519 AAAAC3Nza root@build\n",
    "etc/ssh/ssh_host_rsa_key": RSA,
    "etc/machine-id": "4c4c4544004d3510804bb7c04f4e4d32\n",
    "var/lib/dbus/machine-id": "4c4c4544004d3510804bb7c04f4e4d32\n",
    "etc/iscsi/initiatorname.iscsi": "InitiatorName=iqn.1993-08.org.debian:01:abcdef012345\n",
    "etc/iscsi/nodes/iqn.2024-01.example:t1/10.0.0.1,3260,1/default": "node.name = x\n",
    "etc/multipath/wwids": "# Multipath wwids, Version : 1.0\n/3600140512345678901234567890abcde/\n",
    "etc/multipath/bindings": "# Multipath bindings\nmpatha 3600140512345678901234567890abcde\n",
    "var/lib/dhcp/dhclient.eth0.leases": "lease { fixed-address 10.0.0.5; }\n",
    "etc/udev/rules.d/70-persistent-net.rules": 'SUBSYSTEM=="net", NAME="eth0"\n',
    "var/log/syslog": "Jan  1 00:00:00 build kernel: hello\n",
    "var/log/apt/history.log": "Start-Date: 2025-01-01\n",
    "var/lib/apt/lists/mirror.example_debian_dists_trixie_main_binary-amd64_Packages": "Package: x\n",
    "var/lib/apt/lists/mirror.example_debian_dists_trixie_InRelease": "Origin: Debian\n",
    "root/.bash_history": "apt-get install vim\n",
    "home/alice/.bash_history": "ls\n",
    "etc/hostname": "buildhost\n",
    "etc/resolv.conf": "nameserver 192.0.2.53\n",
    "tmp/build.log": "scratch\n",
    "tmp/sub/dir/file": "scratch\n",
    "etc/passwd-": "root:x:0:0:root:/root:/bin/bash\n",
    "var/cache/apt/pkgcache.bin": "cache",
}

# Generic files every image may carry; none is a violation, all survive strip.
GENERIC = {
    "var/log/empty.log": "",
    "var/log/journal/.keep-dir/": None,
    "var/lib/apt/lists/lock": "",
    "var/lib/apt/lists/partial/": None,
    "etc/ssh/sshd_config": "PermitRootLogin no\n",
    "etc/passwd": "root:x:0:0:root:/root:/bin/bash\n",
    "etc/iscsi/iscsid.conf": "node.startup = manual\n",
    "etc/fstab": "LABEL=debian-root / ext4 defaults 0 1\n",
    "usr/share/doc/x/copyright": "GPL\n",
    "root/.bashrc": "PS1='# '\n",
    "tmp/": None,
    "var/lib/dhcp/": None,
    "etc/iscsi/nodes/": None,
}


def populate(root: Path, entries: dict[str, str | None]) -> None:
    for rel, content in entries.items():
        path = root / rel
        if content is None:
            path.mkdir(parents=True, exist_ok=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content)


@pytest.fixture
def dirty(tmp_path) -> Path:
    root = tmp_path / "dirty"
    populate(root, GENERIC)
    populate(root, MACHINE)
    return root


@pytest.fixture
def clean(tmp_path) -> Path:
    """A second tree: only generic files, resolv.conf a link, wwids only comments."""
    root = tmp_path / "clean"
    populate(root, GENERIC)
    populate(root, {
        "etc/machine-id": "",
        "etc/multipath/wwids": "# Multipath wwids, Version : 1.0\n\n#   # comment\n",
        "etc/multipath/bindings": "# Format:\n# alias wwid\n",
        "run/systemd/resolve/stub-resolv.conf": "nameserver 127.0.0.53\n",
    })
    (root / "etc/resolv.conf").symlink_to("../run/systemd/resolve/stub-resolv.conf")
    return root


def paths(found: list[tuple[str, str]]) -> set[str]:
    return {rel for rel, _why in found}


def test_violations_reports_each_machine_file(dirty):
    found = generic.violations(dirty)
    assert paths(found) == set(MACHINE)
    # one finding per path, each with a reason
    assert len(found) == len(set(found))
    assert all(why for _rel, why in found)


def test_violation_reasons(dirty):
    why = dict(generic.violations(dirty))
    assert "SSH host key" in why["etc/ssh/ssh_host_rsa_key"]
    assert "machine-id" in why["etc/machine-id"]
    assert "initiator" in why["etc/iscsi/initiatorname.iscsi"]
    assert "multipath" in why["etc/multipath/wwids"]
    assert "DHCP" in why["var/lib/dhcp/dhclient.eth0.leases"]
    assert "log" in why["var/log/syslog"]


def test_generic_tree_has_no_violations(clean):
    assert generic.violations(clean) == []


@pytest.mark.parametrize("rel,content", [
    ("etc/machine-id", "not-an-id\n"),
    ("etc/machine-id", "4c4c4544004d3510804bb7c04f4e4d32\n"),
    ("etc/multipath/wwids", "/36001405aaaa/\n"),
    ("etc/multipath/bindings", "  # comment\nmpathb 36001405bbbb\n"),
    ("var/log/dpkg.log", "x"),
    ("etc/shadow-", ""),
    ("etc/initiatorname.iscsi", "InitiatorName=iqn.x\n"),
    ("etc/open-iscsi-boot/chap", "username=u\npassword=p\n"),
    ("var/lib/systemd/random-seed", "\x00\x01"),
    ("etc/lvm/backup/vg0", "vg0 {}\n"),
])
def test_single_violation(clean, rel, content):
    path = clean / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content)
    assert paths(generic.violations(clean)) == {rel}


def test_machine_id_empty_is_allowed(clean):
    (clean / "etc/machine-id").write_text("")
    assert generic.violations(clean) == []


def test_machine_id_symlink_is_a_violation(clean):
    (clean / "etc/machine-id").unlink()
    (clean / "etc/machine-id").symlink_to("/proc/sys/kernel/random/boot_id")
    assert paths(generic.violations(clean)) == {"etc/machine-id"}


def test_symlink_into_tmp_counts_but_directories_do_not(clean):
    (clean / "tmp/.X11-unix").mkdir()
    assert generic.violations(clean) == []
    (clean / "tmp/link").symlink_to("/etc")
    assert paths(generic.violations(clean)) == {"tmp/link"}


def test_strip_removes_machine_state(dirty):
    removed = generic.strip(dirty)
    assert set(removed) == set(MACHINE)
    for rel in MACHINE:
        if rel != "etc/machine-id":
            assert not os.path.lexists(dirty / rel), rel
    assert (dirty / "etc/machine-id").read_text() == ""
    assert generic.violations(dirty) == []


def test_strip_keeps_generic_files_and_directories(dirty):
    generic.strip(dirty)
    for rel, content in GENERIC.items():
        path = dirty / rel
        if content is None:
            assert path.is_dir(), rel
        else:
            assert path.read_text() == content, rel
    # directories that held removed files are kept
    for rel in ("etc/ssh", "var/lib/dhcp", "var/lib/apt/lists/partial", "tmp", "tmp/sub/dir",
                "etc/iscsi/nodes", "etc/udev/rules.d", "var/log"):
        assert (dirty / rel).is_dir(), rel


def test_strip_of_clean_tree_keeps_symlinked_resolv_conf(clean):
    assert generic.strip(clean) == []
    assert (clean / "etc/resolv.conf").is_symlink()
    assert os.readlink(clean / "etc/resolv.conf") == "../run/systemd/resolve/stub-resolv.conf"
    assert (clean / "etc/multipath/wwids").read_text().startswith("# Multipath wwids")
    assert generic.violations(clean) == []


def test_strip_writes_machine_id_when_missing(clean):
    (clean / "etc/machine-id").unlink()
    generic.strip(clean)
    assert (clean / "etc/machine-id").read_text() == generic.MACHINE_ID_GENERIC
    assert generic.MACHINE_ID_GENERIC == ""


def test_strip_writes_generic_hosts(dirty):
    (dirty / "etc/hosts").write_text("10.1.2.3 buildhost\n")
    generic.strip(dirty)
    hosts = (dirty / "etc/hosts").read_text()
    assert "buildhost" not in hosts
    assert "127.0.0.1\tlocalhost" in hosts


def test_strip_twice_is_harmless(dirty):
    generic.strip(dirty)
    assert generic.strip(dirty) == []
    assert generic.violations(dirty) == []


def test_secrets(tmp_path):
    root = tmp_path / "root"
    populate(root, {
        "etc/foo": "config\n" + RSA,
        "root/x": PEM,
        "usr/share/doc/openssl/example.pem": RSA,
        "etc/ssl/certs/ca.pem": "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
        "var/lib/thing/key": "-----BEGIN EC PRIVATE KEY-----\nxx\n-----END EC PRIVATE KEY-----\n",
        "etc/readme": "no keys here\n",
    })
    (root / "etc/link-to-key").symlink_to("foo")
    found = generic.secrets(root)
    assert paths(found) == {"etc/foo", "root/x", "var/lib/thing/key"}
    assert all(why == "private key material" for _rel, why in found)


def test_secrets_none(clean):
    assert generic.secrets(clean) == []


def test_install_firstboot(tmp_path):
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    generic.install_firstboot(root)
    unit = root / "etc/systemd/system" / generic.FIRSTBOOT_SSH_NAME
    assert unit.read_bytes() == generic.FIRSTBOOT_SSH_UNIT.read_bytes()
    assert "ExecStart=/usr/bin/ssh-keygen -A" in unit.read_text()
    link = root / "etc/systemd/system/multi-user.target.wants" / generic.FIRSTBOOT_SSH_NAME
    assert link.is_symlink()
    assert os.readlink(link) == f"/etc/systemd/system/{generic.FIRSTBOOT_SSH_NAME}"
    # the unit itself is generic: no violation, no secret
    assert generic.violations(root) == []


def test_install_firstboot_twice_replaces_the_link(tmp_path):
    root = tmp_path / "root"
    wants = root / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True)
    (wants / generic.FIRSTBOOT_SSH_NAME).symlink_to("/dev/null")
    generic.install_firstboot(root)
    generic.install_firstboot(root)
    assert os.readlink(wants / generic.FIRSTBOOT_SSH_NAME) == \
        f"/etc/systemd/system/{generic.FIRSTBOOT_SSH_NAME}"
