"""Fast tests of the lab that boot nothing (the boots are in tests/integration/test_lab.py)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from pipeline.fsutil import data_file
from pipeline.lab import namespace as lab
from pipeline.lab.agent import add_agent
from pipeline.naming import Triple


def test_control_port_is_in_tgtadms_range_and_skips_used_ones(monkeypatch):
    taken = set(range(10000, 29990))
    monkeypatch.setattr(lab.os.path, "exists",
                        lambda p: int(str(p).rsplit(".", 1)[1]) in taken)
    port = lab.free_control_port()
    assert 10000 <= port <= 32767 and port not in taken


def test_cmdline_names_every_portal_the_initiator_and_the_label(tmp_path):
    triple = Triple(tmp_path, "trixie", "6.12.57+deb13-amd64")
    line = lab.Lab(triple, tmp_path, label="rootlabel").cmdline("quiet")
    assert f"iscsitarget={lab.TARGET_IQN},192.0.2.1,198.51.100.1" in line.split()
    assert f"iscsi_initiator={lab.INITIATOR_IQN}" in line.split()
    assert "root=LABEL=rootlabel" in line.split()
    assert line.endswith(" quiet")


def test_lab_subnets_are_documentation_ranges():
    for _bridge, address, first, last in lab.PATHS:
        for ip in (address, first, last):
            assert ip.startswith(("192.0.2.", "198.51.100.", "203.0.113."))


def test_add_agent_writes_the_data_files_into_the_image(tmp_path):
    """Into a real (small) ext4 image: the payloads' bytes, modes and the enabling link."""
    if not (shutil.which("debugfs") and shutil.which("mkfs.ext4")):
        pytest.skip("needs e2fsprogs (debugfs, mkfs.ext4)")
    tree = tmp_path / "tree"
    (tree / "usr/local").mkdir(parents=True)
    (tree / "etc/systemd/system").mkdir(parents=True)
    image = tmp_path / "root.ext4"
    with open(image, "wb") as handle:
        handle.truncate(8 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(tree), str(image)], check=True)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    add_agent(image, scratch)

    def debugfs(request: str) -> str:
        return subprocess.run(["debugfs", "-R", request, str(image)], check=True,
                              capture_output=True, text=True).stdout

    for name, where, mode in (("lab-agent", "/usr/local/sbin/lab-agent", "0100755"),
                              ("lab-io", "/usr/local/sbin/lab-io", "0100755"),
                              ("lab-agent.service", "/etc/systemd/system/lab-agent.service",
                               "0100644")):
        out = tmp_path / f"{name}.out"
        debugfs(f"dump {where} {out}")
        assert out.read_bytes() == data_file("pipeline.lab", name).read_bytes(), where
        assert f"Mode:  {mode[-4:]}" in debugfs(f"stat {where}"), where
    link = debugfs("stat /etc/systemd/system/multi-user.target.wants/lab-agent.service")
    assert 'Fast link dest: "/etc/systemd/system/lab-agent.service"' in link
