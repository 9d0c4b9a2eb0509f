"""Fast tests of the lab's pure parts (the boots are in test_lab.py)."""

from __future__ import annotations

from pathlib import Path

from pipeline.lab import harness as lab
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
