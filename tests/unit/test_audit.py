"""pipeline/audit.py on real artifacts: an ext4 image and a cpio initramfs made here."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.build import audit
from pipeline import ext4
from pipeline.errors import PipelineError
from pipeline.naming import Triple
from tiny_artifacts import ext4_image, gzip_initrd, write_files

FS_UUID = "0f3b4c55-8a9d-4e2f-9b1a-2c3d4e5f6a7b"
RELEASE = "6.1.0-9-amd64"
PEM = "-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n-----END OPENSSH PRIVATE KEY-----\n"

CLEAN_ROOT = {
    "etc/fstab": "# generic\nLABEL=x / ext4 defaults 0 1\n",
    "etc/machine-id": "",
    "etc/hosts": "127.0.0.1 localhost\n",
    "etc/ssh/sshd_config": "PermitRootLogin no\n",
    "var/log/empty.log": "",
    f"usr/lib/modules/{RELEASE}/kernel/x.ko": "ko",
    "usr/share/doc/example.key": PEM,   # outside the audited directories
}
CLEAN_INITRD = {
    "conf/initramfs.conf": "MODULES=most\n",
    "scripts/local-top/iscsi": "#!/bin/sh\n",
    "etc/modprobe.d/x.conf": "options x y=1\n",
    f"usr/lib/modules/{RELEASE}/kernel/x.ko": "ko",
}


def make_root(tmp_path: Path, files: dict[str, str], name: str = "root.ext4") -> Path:
    tree = write_files(tmp_path / (name + ".tree"), files)
    return ext4_image(tree, tmp_path / name, "-L", "x", "-U", FS_UUID)


def make_initrd(tmp_path: Path, files: dict[str, str], name: str = "initrd.img") -> Path:
    return gzip_initrd(write_files(tmp_path / (name + ".tree"), files), tmp_path / name)


def test_clean_pair_has_no_findings(tmp_path):
    root = make_root(tmp_path, CLEAN_ROOT)
    initrd = make_initrd(tmp_path, CLEAN_INITRD)
    assert ext4.fs_uuid(root) == FS_UUID
    assert audit.audit_parts(initrd, root) == []
    audit.require_clean([])   # no exception


def test_dirty_root_and_initramfs(tmp_path):
    root = make_root(tmp_path, {
        **CLEAN_ROOT,
        "etc/fstab": f"UUID={FS_UUID} / ext4 defaults 0 1\n",
        "etc/ssh/ssh_host_ed25519_key": PEM,
        "etc/default/boot": f"root=UUID={FS_UUID.upper()}\n",
        "root/.bash_history": "ls\n",
    })
    initrd = make_initrd(tmp_path, {
        **CLEAN_INITRD,
        "etc/initiatorname.iscsi": "InitiatorName=iqn.1993-08.org.debian:01:abc\n",
        "conf/conf.d/resume": f"RESUME=UUID={FS_UUID}\n",
    })
    findings = audit.audit_parts(initrd, root)
    text = "\n".join(findings)

    def has(prefix: str, fragment: str) -> bool:
        return any(f.startswith(prefix) and fragment in f for f in findings)

    assert has("root.ext4: /etc/ssh/ssh_host_ed25519_key: ", "SSH host key")
    assert has("root.ext4: /etc/ssh/ssh_host_ed25519_key: ", "private key material")
    assert has("root.ext4: /etc/fstab: ", "does not mount / by LABEL=")
    assert has("root.ext4: /etc/fstab: ", f"names the root's own UUID {FS_UUID}")
    assert has("root.ext4: /etc/default/boot: ", "own UUID")
    assert has("root.ext4: /root/.bash_history: ", "shell history")
    assert has("initrd.img: /etc/initiatorname.iscsi: ", "iSCSI initiator name")
    assert has("initrd.img: /conf/conf.d/resume: ", "own UUID")
    # the clean files are not named
    assert "machine-id" not in text and "sshd_config" not in text and "empty.log" not in text
    assert "usr/share" not in text

    with pytest.raises(PipelineError) as info:
        audit.require_clean(findings)
    assert "/etc/initiatorname.iscsi" in str(info.value)
    assert "/etc/ssh/ssh_host_ed25519_key" in str(info.value)


def test_root_without_fstab(tmp_path):
    files = {k: v for k, v in CLEAN_ROOT.items() if k != "etc/fstab"}
    root = make_root(tmp_path, files)
    assert audit.audit_root(root) == ["root.ext4: /etc/fstab: missing"]


def test_fstab_mounting_other_path_by_label(tmp_path):
    root = make_root(tmp_path, {**CLEAN_ROOT,
                                "etc/fstab": "/dev/sda1 / ext4 defaults 0 1\n"
                                             "LABEL=data /srv ext4 defaults 0 2\n"})
    assert audit.audit_root(root) == ["root.ext4: /etc/fstab: does not mount / by LABEL="]


def test_machine_specific_machine_id_in_root(tmp_path):
    root = make_root(tmp_path, {**CLEAN_ROOT, "etc/machine-id": "0123456789abcdef0123456789abcdef\n"})
    findings = audit.audit_root(root)
    assert len(findings) == 1
    assert findings[0].startswith("root.ext4: /etc/machine-id: ")


def test_initramfs_uuid_only_checked_with_uuid(tmp_path):
    initrd = make_initrd(tmp_path, {**CLEAN_INITRD, "conf/conf.d/root": f"ROOT=UUID={FS_UUID}\n"})
    assert audit.audit_initramfs(initrd) == []
    assert audit.audit_initramfs(initrd, FS_UUID) == [
        f"initrd.img: /conf/conf.d/root: names the root's own UUID {FS_UUID}"]


def test_audit_triple(tmp_path):
    t = Triple(tmp_path, "trixie", RELEASE)
    with pytest.raises(PipelineError, match="no such file"):
        audit.audit_triple(t)
    make_root(tmp_path, CLEAN_ROOT, name=t.root.name)
    make_initrd(tmp_path, {**CLEAN_INITRD, "etc/hostname": "build\n"}, name=t.initrd.name)
    assert audit.audit_triple(t) == [f"{t.initrd.name}: /etc/hostname: "
                                     "the build host's hostname (the name comes from the inventory)"]
