"""Fixtures of the boot package's tests (the helpers are in bootsh.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bootsh import DM_STATUS, IQN, link, shells, write, write_exec


@pytest.fixture(params=shells())
def shell(request) -> list[str]:
    """Each shell the code meets, as the argv that runs a script."""
    return request.param


@pytest.fixture
def fake_root(tmp_path) -> Path:
    """/sys and /proc of a machine whose root is dm-0 (mpatha, partition dm-1 unused) over
    session 1 (sdb, 192.0.2.1) and session 2 (sdc, [2001:db8::1]:3260)."""
    root = tmp_path / "fake"
    sysfs = root / "sys"
    for sid, host, disk, devno, addr in [(1, 2, "sdb", "8:16", "192.0.2.1"),
                                         (2, 3, "sdc", "8:32", "2001:db8::1")]:
        sess = sysfs / f"devices/platform/host{host}/session{sid}"
        blk = sess / f"target{host}:0:0/{host}:0:0:1/block/{disk}"
        write(blk / "dev", devno)
        link(blk / "holders/dm-0", "../../../../../../../../virtual/block/dm-0")
        link(sysfs / f"block/{disk}", f"../devices/platform/host{host}/session{sid}/"
                                       f"target{host}:0:0/{host}:0:0:1/block/{disk}")
        cls = sysfs / f"class/iscsi_session/session{sid}"
        write(cls / "targetname", IQN)
        write(cls / "state", "LOGGED_IN")
        link(cls / "device", f"../../../devices/platform/host{host}/session{sid}")
        conn = sysfs / f"class/iscsi_connection/connection{sid}:0"
        write(conn / "persistent_address", addr)
        write(conn / "persistent_port", "3260")
        link(sysfs / f"devices/virtual/block/dm-0/slaves/{disk}", f"../../../../platform/host{host}/"
             f"session{sid}/target{host}:0:0/{host}:0:0:1/block/{disk}")
    write(sysfs / "devices/virtual/block/dm-0/dm/uuid", "mpath-360000000000000000e00000000010001")
    write(sysfs / "devices/virtual/block/dm-0/dm/name", "mpatha")
    write(sysfs / "devices/virtual/block/dm-1/dm/uuid", "part1-mpath-360000000000000000e00000000010001")
    write(sysfs / "devices/virtual/block/dm-1/dm/name", "mpatha-part1")
    link(sysfs / "devices/virtual/block/dm-1/slaves/dm-0", "../../dm-0")
    write(sysfs / "devices/virtual/block/dm-2/dm/uuid", "LVM-something")
    for dm in ("dm-0", "dm-1", "dm-2"):
        link(sysfs / f"block/{dm}", f"../devices/virtual/block/{dm}")
    link(sysfs / "dev/block/253:0", "../../devices/virtual/block/dm-0")
    write(root / "proc/self/mountinfo", "1 0 0:20 / / rw - rootfs rootfs rw\n"
                                        "22 1 253:0 / / rw,relatime - ext4 /dev/mapper/mpatha rw\n"
                                        "23 22 0:21 / /proc rw - proc proc rw")
    # stand-ins for dmsetup and ip on PATH
    bin_dir = root / "bin"
    write_exec(bin_dir / "dmsetup", f"#!/bin/sh\necho '{DM_STATUS}'")
    write_exec(bin_dir / "ip", "#!/bin/sh\necho \"$4 dev eth-test src 192.0.2.10 uid 0\"")
    return root
