"""open-iscsi-boot/: the boot package's shell code and its Debian packaging.

(a) every shell file is shellcheck-clean as POSIX sh;
(b) the parsing and sysfs functions of lib.sh, run by the shells the code
    meets at boot and on the booted system (dash always; klibc's sh and
    busybox when installed), against fake /proc and /sys trees;
(c) slow: the .deb builds in a copy of the source, lintian reports no error,
    and it holds the expected files.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from bootsh import (DM_STATUS, HOOK, INIT_PREMOUNT, INITIATOR, IQN, LIB, LOCAL_TOP, PKG, STATUS, host_path,
                    link, run_dash, run_handover, run_sh, run_status, sys_env, write)


# ---------------------------------------------------------------------------
# (a) shellcheck
# ---------------------------------------------------------------------------

def _shell_files() -> list[Path]:
    files = []
    for path in sorted(PKG.rglob("*")):
        if not path.is_file() or "debian" in path.relative_to(PKG).parts[:1]:
            continue
        try:
            first = path.read_text(errors="replace").splitlines()[:1]
        except OSError:
            continue
        if first and (first[0].startswith("#!/bin/sh") or first[0].startswith("# shellcheck shell=sh")):
            files.append(path)
    return files


SHELL_FILES = _shell_files()


def test_shell_files_found():
    names = {str(p.relative_to(PKG)) for p in SHELL_FILES}
    assert {"lib/lib.sh", "lib/handover", "sbin/iscsi-boot-status",
            "initramfs/hooks/open-iscsi-boot",
            "initramfs/scripts/local-top/open-iscsi-boot",
            "initramfs/scripts/init-premount/open-iscsi-boot",
            "initramfs/scripts/init-bottom/open-iscsi-boot",
            "initramfs/conf.d/open-iscsi-boot"} <= names


@pytest.mark.parametrize("path", SHELL_FILES, ids=lambda p: str(p.relative_to(PKG)))
def test_shellcheck(path, tmp_path):
    if not shutil.which("shellcheck"):
        pytest.skip("shellcheck is not installed (Debian package shellcheck)")
    proc = subprocess.run(["shellcheck", "-s", "sh", "-x", str(path)], capture_output=True,
                          text=True, cwd=tmp_path, check=False, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("path", [p for p in SHELL_FILES if p.read_text().startswith("#!")],
                         ids=lambda p: str(p.relative_to(PKG)))
def test_executable(path):
    assert os.access(path, os.X_OK), f"{path} must be executable"


# ---------------------------------------------------------------------------
# (b) iscsitarget=
# ---------------------------------------------------------------------------

def parse_target(shell, value):
    proc = run_sh(shell, 'oib_parse_iscsitarget "$V"; rc=$?\n'
                         'printf "%s\\n%s\\n%s\\n%s\\n" "$rc" "$OIB_TARGET" "$OIB_PORTALS" "$OIB_ERROR"',
                  env={"V": value})
    rc, target, portals, error = proc.stdout.split("\n")[:4]
    return int(rc), target, portals.split(), error


GOOD_TARGETS = [
    (f"{IQN},192.0.2.1", IQN, ["192.0.2.1:3260"]),
    (f"{IQN},192.0.2.1:3261", IQN, ["192.0.2.1:3261"]),
    (f"{IQN},192.0.2.1,198.51.100.1:3260", IQN, ["192.0.2.1:3260", "198.51.100.1:3260"]),
    (f"{IQN},0.0.0.1,255.255.255.255:65535,203.0.113.9:1", IQN,
     ["0.0.0.1:3260", "255.255.255.255:65535", "203.0.113.9:1"]),
    (f"{IQN},[2001:db8::1]", IQN, ["[2001:db8::1]:3260"]),
    (f"{IQN},[2001:DB8::1]:860", IQN, ["[2001:db8::1]:860"]),
    (f"{IQN},[::1],[fe80::1:2:3:4]:3260,[1:2:3:4:5:6:7:8]", IQN,
     ["[::1]:3260", "[fe80::1:2:3:4]:3260", "[1:2:3:4:5:6:7:8]:3260"]),
    (f"{IQN},[::ffff:192.0.2.1]:3260,192.0.2.2", IQN, ["[::ffff:192.0.2.1]:3260", "192.0.2.2:3260"]),
    ("iqn.2024-12.org.example,192.0.2.1", "iqn.2024-12.org.example", ["192.0.2.1:3260"]),
    ("iqn.2001-04.com.example:storage.disk2.sys1.xyz,192.0.2.1",
     "iqn.2001-04.com.example:storage.disk2.sys1.xyz", ["192.0.2.1:3260"]),
    ("iqn.2024-01.org.example:a:b_c-d,192.0.2.1", "iqn.2024-01.org.example:a:b_c-d", ["192.0.2.1:3260"]),
    ("eui.02004567A425678D,192.0.2.1", "eui.02004567A425678D", ["192.0.2.1:3260"]),
]


@pytest.mark.parametrize("value,target,portals", GOOD_TARGETS)
def test_iscsitarget_good(shell, value, target, portals):
    rc, got_target, got_portals, error = parse_target(shell, value)
    assert (rc, error) == (0, "")
    assert got_target == target
    assert got_portals == portals


BAD_TARGETS = [
    ("", "is empty"),
    (IQN, "no portal"),
    (f"{IQN},", "no portal"),
    (f"{IQN},192.0.2.1,", "empty portal"),
    (f"{IQN},192.0.2.1,,192.0.2.2", "empty portal"),
    ("iqn.2024-13.org.example:x,192.0.2.1", "not a valid iSCSI target name"),
    ("iqn.24-01.org.example,192.0.2.1", "not a valid iSCSI target name"),
    ("iqn.2024-01,192.0.2.1", "not a valid iSCSI target name"),
    ("iqn.2024-01.org..example,192.0.2.1", "not a valid iSCSI target name"),
    ("iqn.2024-01.org.example:,192.0.2.1", "not a valid iSCSI target name"),
    ("iqn.2024-01.org.example:a/b,192.0.2.1", "not a valid iSCSI target name"),
    ("IQN.2024-01.org.example,192.0.2.1", "not a valid iSCSI target name"),
    ("eui.0123,192.0.2.1", "not a valid iSCSI target name"),
    ("eui.0123456789ABCDEG,192.0.2.1", "not a valid iSCSI target name"),
    ("192.0.2.1,192.0.2.2", "not a valid iSCSI target name"),
    (f"{IQN},192.0.2.256", "'192.0.2.256' is not a valid IPv4"),
    (f"{IQN},300.1.1.1", "is not a valid IPv4"),
    (f"{IQN},192.0.2", "is not a valid IPv4"),
    (f"{IQN},192.0.2.1.5", "is not a valid IPv4"),
    (f"{IQN},192.0.02.1", "is not a valid IPv4"),
    (f"{IQN},target.example.org", "is not a valid IPv4"),
    (f"{IQN},192.0.2.1:0", "'0' is not a valid port"),
    (f"{IQN},192.0.2.1:65536", "'65536' is not a valid port"),
    (f"{IQN},192.0.2.1:", "is not a valid port"),
    (f"{IQN},192.0.2.1:32a", "is not a valid port"),
    (f"{IQN},192.0.2.1:03260", "is not a valid port"),
    (f"{IQN},2001:db8::1", "must be written in brackets"),
    (f"{IQN},[2001:db8::1", "missing ']'"),
    (f"{IQN},[2001:db8::1]3260", "unexpected"),
    (f"{IQN},[2001:db8::g]", "not a valid IPv6"),
    (f"{IQN},[1:2:3:4:5:6:7]", "not a valid IPv6"),
    (f"{IQN},[1:2:3:4:5:6:7:8:9]", "not a valid IPv6"),
    (f"{IQN},[1::2::3]", "not a valid IPv6"),
    (f"{IQN},[12345::1]", "not a valid IPv6"),
    (f"{IQN},[fe80::1%eth0]", "not a valid IPv6"),
    (f"{IQN},[2001:db8::1]:70000", "not a valid port"),
    (f"{IQN},192.0.2.1,192.0.2.1:3260", "given twice"),
]


@pytest.mark.parametrize("value,message", BAD_TARGETS)
def test_iscsitarget_bad(shell, value, message):
    rc, target, portals, error = parse_target(shell, value)
    assert rc == 1
    assert (target, portals) == ("", [])
    assert message in error
    assert error.startswith("iscsitarget=")


# ---------------------------------------------------------------------------
# (b) kernel command line and initiator name
# ---------------------------------------------------------------------------

def cmdline(tmp_path: Path, text: str) -> dict[str, str]:
    path = tmp_path / "cmdline"
    path.write_text(text + "\n")
    return {"OIB_CMDLINE": str(path)}


def test_cmdline_get_last_wins(shell, tmp_path):
    env = cmdline(tmp_path, f"BOOT_IMAGE=/vmlinuz root=LABEL=root iscsitarget=x iscsi_initiator={INITIATOR} "
                            "iscsitarget=iqn.2024-01.org.example,[2001:db8::1] ro quiet")
    proc = run_sh(shell, "oib_cmdline_get iscsitarget; echo rc=$?; oib_cmdline_get nothere; echo rc=$?;"
                         "oib_cmdline_get root; oib_cmdline_has quiet && echo has-quiet;"
                         "oib_cmdline_has iscsi && echo wrong", env=env, cwd=tmp_path)
    assert proc.stdout.splitlines() == ["iqn.2024-01.org.example,[2001:db8::1]", "rc=0", "rc=1",
                                        "LABEL=root", "has-quiet"]


def test_cmdline_values_are_not_globbed(shell, tmp_path):
    (tmp_path / "1:3260").write_text("")  # would match the glob [2001:db8::1]:3260
    env = cmdline(tmp_path, "iscsitarget=x,[2001:db8::1]:3260")
    proc = run_sh(shell, "oib_cmdline_get iscsitarget", env=env, cwd=tmp_path)
    assert proc.stdout.strip() == "x,[2001:db8::1]:3260"


def test_cmdline_all(shell, tmp_path):
    env = cmdline(tmp_path, "ip=dhcp x=1 ip=192.0.2.10::192.0.2.1:255.255.255.0::eth1:none")
    proc = run_sh(shell, "oib_cmdline_all ip", env=env)
    assert proc.stdout.splitlines() == ["dhcp", "192.0.2.10::192.0.2.1:255.255.255.0::eth1:none"]


def test_cmdline_missing_file(shell, tmp_path):
    proc = run_sh(shell, "oib_cmdline_get iscsitarget; echo rc=$?",
                  env={"OIB_CMDLINE": str(tmp_path / "missing")})
    assert proc.stdout.strip() == "rc=1"


@pytest.mark.parametrize("value,ok", [
    (INITIATOR, True),
    ("iqn.1993-08.org.debian:01:f2592241181", True),
    ("eui.0123456789abcdef", True),
    ("", False),
    ("iqn.2024-00.org.example:x", False),
    ("host-52-54-00-12-34-56", False),
    ("iqn.2024-01.org.example:with space", False),
    ("iqn.2024-01.org.example:" + "x" * 200, False),
])
def test_initiator(shell, value, ok):
    proc = run_sh(shell, 'oib_parse_initiator "$V"; echo "$?|$OIB_INITIATOR|$OIB_ERROR"', env={"V": value})
    rc, name, error = proc.stdout.strip().split("|", 2)
    if ok:
        assert (rc, name, error) == ("0", value, "")
    else:
        assert rc == "1" and name == "" and "iscsi_initiator=" in error


def test_initiator_from_file(shell, tmp_path):
    path = tmp_path / "initiatorname.iscsi"
    path.write_text("## comment\nInitiatorName=iqn.2024-01.org.example:a\n")
    gen = tmp_path / "generate"
    gen.write_text("GenerateName=yes\n")
    proc = run_sh(shell, f'oib_initiator_from_file "{path}"; echo rc=$?; '
                         f'oib_initiator_from_file "{gen}"; echo rc=$?; '
                         f'oib_initiator_from_file "{tmp_path}/none"; echo rc=$?')
    assert proc.stdout.splitlines() == ["iqn.2024-01.org.example:a", "rc=0", "rc=1", "rc=1"]


# ---------------------------------------------------------------------------
# (b) settings, network devices, ip=
# ---------------------------------------------------------------------------

def test_defaults(shell):
    proc = run_sh(shell, "oib_apply_defaults; echo \"[$NETWORK_DEVICES] $ISCSI_BOOT_WAIT_FIRST "
                         "$ISCSI_BOOT_WAIT_ALL $ISCSI_BOOT_NET_TIMEOUT\"")
    assert proc.stdout.strip() == "[] 60 10 30"


def test_settings_and_bad_values(shell):
    proc = run_sh(shell, "oib_apply_defaults; echo \"[$NETWORK_DEVICES] $ISCSI_BOOT_WAIT_FIRST "
                         "$ISCSI_BOOT_WAIT_ALL $ISCSI_BOOT_NET_TIMEOUT\"",
                  env={"NETWORK_DEVICES": "eth0 eth1", "ISCSI_BOOT_WAIT_FIRST": "soon",
                       "ISCSI_BOOT_WAIT_ALL": "0", "ISCSI_BOOT_NET_TIMEOUT": "-5"})
    assert proc.stdout.strip() == "[eth0 eth1] 60 0 30"


def test_conf_d_defaults_do_not_override(shell, tmp_path):
    conf = PKG / "initramfs/conf.d/open-iscsi-boot"
    proc = run_sh(shell, f'. "{conf}"; echo "[$NETWORK_DEVICES] $ISCSI_BOOT_WAIT_FIRST '
                         f'$ISCSI_BOOT_WAIT_ALL $ISCSI_BOOT_NET_TIMEOUT"',
                  env={"NETWORK_DEVICES": "enp1s0", "ISCSI_BOOT_WAIT_ALL": "3"})
    assert proc.stdout.strip() == "[enp1s0] 60 3 30"


@pytest.fixture
def fake_net(tmp_path) -> Path:
    """A /sys with two NICs, loopback, a bridge, a veth, a wireless NIC and a bond."""
    sysfs = tmp_path / "sys"
    net = sysfs / "class/net"

    def dev(name, type_, hardware, extra=()):
        (net / name).mkdir(parents=True)
        (net / name / "type").write_text(f"{type_}\n")
        if hardware:
            (net / name / "device").mkdir()
        for sub in extra:
            (net / name / sub).mkdir()

    dev("enp2s0", 1, True)
    dev("enp1s0", 1, True)
    dev("lo", 772, False)
    dev("br0", 1, False, ["bridge"])
    dev("veth0", 1, False)
    dev("wlp3s0", 1, True, ["wireless"])
    dev("bond0", 1, False, ["bonding"])
    dev("ib0", 32, True)
    return sysfs


def test_net_devices_all_ethernet(shell, fake_net):
    proc = run_sh(shell, 'oib_net_devices ""', env={"OIB_SYSFS": str(fake_net)})
    assert proc.stdout.split() == ["enp1s0", "enp2s0"]


def test_net_devices_listed(shell, fake_net):
    proc = run_sh(shell, 'oib_net_devices "eth1  eth0 eth1 bad/name eth2"', env={"OIB_SYSFS": str(fake_net)})
    assert proc.stdout.split() == ["eth1", "eth0", "eth2"]


def test_net_devices_none(shell, tmp_path):
    proc = run_sh(shell, 'oib_net_devices ""; echo rc=$?', env={"OIB_SYSFS": str(tmp_path)})
    assert proc.stdout.split() == ["rc=0"]


def ip_plan(shell, params: list[str], dev: str, ndevs: int):
    proc = run_sh(shell, 'oib_ip_plan "$D" "$N"; echo "$?|$OIB_IP_PLAN|$OIB_ERROR"',
                  env={"OIB_IP_PARAMS": "\n".join(params), "D": dev, "N": str(ndevs)})
    rc, plan, error = proc.stdout.strip().split("|", 2)
    return int(rc), plan, error


STATIC1 = "192.0.2.10::192.0.2.1:255.255.255.0:host:eth1:none"


@pytest.mark.parametrize("params,dev,ndevs,plan", [
    ([], "eth0", 2, "dhcp"),
    (["dhcp"], "eth0", 2, "dhcp"),
    (["on"], "eth0", 1, "dhcp"),
    (["off"], "eth0", 2, "none"),
    (["none"], "eth0", 2, "none"),
    (["::::::dhcp"], "eth0", 2, "dhcp"),
    (["::::::off"], "eth0", 2, "none"),
    ([STATIC1], "eth1", 2, f"spec {STATIC1}"),
    ([STATIC1], "eth0", 2, "dhcp"),                      # others still get DHCP
    (["off", STATIC1], "eth1", 2, f"spec {STATIC1}"),
    ([STATIC1, "198.51.100.10:::255.255.255.0::eth0:none"], "eth0", 2,
     "spec 198.51.100.10:::255.255.255.0::eth0:none"),
    (["192.0.2.10::192.0.2.1:255.255.255.0"], "eth0", 1, "spec 192.0.2.10::192.0.2.1:255.255.255.0::eth0"),
    (["192.0.2.10::192.0.2.1:255.255.255.0:h::none:192.0.2.53"], "enp1s0", 1,
     "spec 192.0.2.10::192.0.2.1:255.255.255.0:h:enp1s0:none:192.0.2.53"),
])
def test_ip_plan(shell, params, dev, ndevs, plan):
    assert ip_plan(shell, params, dev, ndevs) == (0, plan, "")


def test_ip_plan_static_without_device_is_ambiguous(shell):
    rc, plan, error = ip_plan(shell, ["192.0.2.10::192.0.2.1:255.255.255.0"], "eth0", 2)
    assert (rc, plan) == (1, "")
    assert "names no device" in error


def test_ip_plan_garbage(shell):
    rc, _, error = ip_plan(shell, ["maybe"], "eth0", 2)
    assert rc == 1 and "ip=maybe" in error


def test_ip_named_devices(shell):
    proc = run_sh(shell, "oib_ip_named_devices",
                  env={"OIB_IP_PARAMS": f"dhcp\n{STATIC1}\n::::::dhcp\n:::::enp9s0:dhcp"})
    assert proc.stdout.split() == ["eth1", "enp9s0"]


@pytest.mark.parametrize("mask,prefix", [("255.255.255.0", "24"), ("255.255.0.0", "16"),
                                         ("255.255.255.252", "30"), ("0.0.0.0", "0"),
                                         ("255.0.255.0", None), ("255.255.255.1", None), ("x", None)])
def test_netmask_prefix(shell, mask, prefix):
    proc = run_sh(shell, 'oib_netmask_prefix "$M" || echo bad', env={"M": mask})
    assert proc.stdout.strip() == (prefix or "bad")


# ---------------------------------------------------------------------------
# (b) dm status, ip route, quoting
# ---------------------------------------------------------------------------

def test_count_dm_paths(shell):
    proc = run_sh(shell, f"oib_count_dm_paths {DM_STATUS}; oib_count_dm_paths; "
                         f"oib_dm_path_state 8:32 {DM_STATUS}; oib_dm_path_state 8:48 {DM_STATUS} || echo none")
    assert proc.stdout.splitlines() == ["1 2", "0 0", "F", "none"]


def test_route_dev(shell):
    proc = run_sh(shell, "oib_route_dev 192.0.2.1 dev enp1s0 src 192.0.2.10 uid 0 cache; "
                         "oib_route_dev 2001:db8::1 from :: dev enp2s0 proto kernel src 2001:db8::10; "
                         "oib_route_dev unreachable || echo none")
    assert proc.stdout.splitlines() == ["enp1s0", "enp2s0", "none"]


@pytest.mark.parametrize("text", ["plain", "it's", "'", "a b  $x `y` \\z \"q\"", ""])
def test_quote_roundtrip(shell, text):
    proc = run_sh(shell, 'eval "X=$(oib_quote "$T")"; printf "%s" "$X"', env={"T": text})
    assert proc.stdout == text


def test_uptime(shell, tmp_path):
    (tmp_path / "uptime").write_text("1234.56 2000.10\n")
    proc = run_sh(shell, "oib_uptime", env={"OIB_PROC": str(tmp_path)})
    assert proc.stdout.strip() == "1234"


# ---------------------------------------------------------------------------
# (b) sysfs: sessions, disks, maps; status line; iscsi-boot-status
# ---------------------------------------------------------------------------

def test_sessions_disks_maps(shell, fake_root):
    proc = run_sh(shell, f"""
        echo sessions $(oib_sessions_for_target {IQN}) / $(oib_sessions_for_target iqn.2024-01.x.y)
        echo disks $(oib_session_disks 1) $(oib_session_disks 2)
        echo portals $(oib_session_portal 1) $(oib_session_portal 2)
        echo disk-session $(oib_disk_session sdb) $(oib_disk_session sdc)
        echo disk-map $(oib_disk_map sdb) $(oib_disk_map sdc)
        echo slaves $(oib_dm_slaves dm-0)
        echo parts $(oib_map_partitions dm-0)
        echo map-of $(oib_map_of_dm dm-0) $(oib_map_of_dm dm-1) $(oib_map_of_dm dm-2 || echo none)
        echo name $(oib_dm_name dm-0) state $(oib_session_state 1)
    """, env=sys_env(fake_root))
    assert proc.stdout.splitlines() == [
        "sessions 1 2 /",
        "disks sdb sdc",
        "portals 192.0.2.1:3260 [2001:db8::1]:3260",
        "disk-session 1 2",
        "disk-map dm-0 dm-0",
        "slaves sdb sdc",
        "parts dm-1",
        "map-of dm-0 dm-0 none",
        "name mpatha state LOGGED_IN",
    ], proc.stderr


def test_status_line(shell, fake_root):
    proc = run_sh(shell, f'oib_status_line dm-0 2 "{DM_STATUS}" {INITIATOR}; '
                         f'oib_status_line dm-1 3 "{DM_STATUS}" "" "198.51.100.1:3260"',
                  env=sys_env(fake_root))
    assert proc.stdout.splitlines() == [
        f"open-iscsi-boot: root /dev/dm-0 (mpatha) paths 1/2 active portals "
        f"192.0.2.1:3260,[2001:db8::1]:3260 initiator {INITIATOR}",
        "open-iscsi-boot: root /dev/dm-1 (mpatha) paths 1/3 active portals "
        "192.0.2.1:3260,[2001:db8::1]:3260 initiator unknown missing 198.51.100.1:3260",
    ]


def test_iscsi_boot_status(fake_root, tmp_path):
    rundir = tmp_path / "run"
    write(rundir / "state", f"OIB_TARGET='{IQN}'\nOIB_INITIATOR='{INITIATOR}'\n"
                            "OIB_PORTALS='192.0.2.1:3260 [2001:db8::1]:3260 198.51.100.1:3260'\n")
    proc = run_status(fake_root, rundir, "-v")
    lines = proc.stdout.splitlines()
    assert proc.returncode == 1, proc.stderr  # a path failed and one portal is missing
    assert lines[0] == ("open-iscsi-boot: root /dev/dm-0 (mpatha) paths 1/3 active portals "
                        f"192.0.2.1:3260,[2001:db8::1]:3260 initiator {INITIATOR} missing 198.51.100.1:3260")
    assert lines[1] == "  path sdb (8:16) active session 1 LOGGED_IN portal 192.0.2.1:3260 via eth-test"
    assert lines[2].startswith("  path sdc (8:32) failed session 2 LOGGED_IN portal [2001:db8::1]:3260")


def test_iscsi_boot_status_not_multipath(tmp_path):
    proc_dir = tmp_path / "proc/self"
    proc_dir.mkdir(parents=True)
    (proc_dir / "mountinfo").write_text("22 1 8:1 / / rw - ext4 /dev/sda1 rw\n")
    sysfs = tmp_path / "sys"
    write(sysfs / "devices/pci/block/sda/sda1/dev", "8:1")
    link(sysfs / "dev/block/8:1", "../../devices/pci/block/sda/sda1")
    env = {"OIB_LIB": str(LIB), "OIB_SYSFS": str(sysfs), "OIB_PROC": str(tmp_path / "proc"),
           "PATH": host_path()}
    proc = run_dash(STATUS, env=env)
    assert proc.returncode == 2
    assert "sda1, not on a multipath device" in proc.stdout


# ---------------------------------------------------------------------------
# (b) the scripts stay out of the way without iscsitarget=
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("script", [LOCAL_TOP, INIT_PREMOUNT], ids=["local-top", "init-premount"])
def test_scripts_do_nothing_without_iscsitarget(script, tmp_path):
    env = {**cmdline(tmp_path, "root=LABEL=root iscsi_target_name=iqn.2024-01.org.example:x "
                               "iscsi_target_ip=192.0.2.1 ro"),
           "OIB_LIB": str(LIB), "PATH": host_path()}
    proc = run_dash(script, env=env, cwd=tmp_path)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")


def test_script_prereqs():
    def prereqs(path):
        return subprocess.run(["dash", str(path), "prereqs"], capture_output=True, text=True,
                              check=True, timeout=60).stdout.split()
    # after multipath-tools-boot's local-top (which runs after open-iscsi's)
    assert prereqs(LOCAL_TOP) == ["multipath"]
    # after the hooks that copy per-machine files, so that ours can remove them
    assert {"iscsi", "multipath"} <= set(prereqs(HOOK))


# ---------------------------------------------------------------------------
# (b) the hook, with a fake DESTDIR
# ---------------------------------------------------------------------------

def test_hook_generic_initramfs(tmp_path):
    if not Path("/usr/share/initramfs-tools/hook-functions").exists():
        pytest.skip("initramfs-tools is not installed")
    if not (os.access("/sbin/iscsid", os.X_OK) and os.access("/sbin/iscsiadm", os.X_OK)):
        pytest.skip("open-iscsi is not installed")
    dest = tmp_path / "dest"
    for d in ("usr/bin", "usr/sbin", "usr/lib", "etc/multipath", "etc/iscsi", "etc/open-iscsi-boot"):
        (dest / d).mkdir(parents=True)
    for d in ("bin", "sbin", "lib"):
        (dest / d).symlink_to(f"usr/{d}")
    # what open-iscsi's and multipath-tools-boot's hooks copy from the build host
    for f in ("etc/initiatorname.iscsi", "etc/iscsi/initiatorname.iscsi",
              "etc/multipath/wwids", "etc/multipath/bindings", "etc/open-iscsi-boot/chap"):
        (dest / f).write_text("host specific\n")
    share = tmp_path / "share"
    share.mkdir()
    for src in (LIB, PKG / "conf/iscsid.conf", PKG / "conf/multipath.conf"):
        shutil.copy(src, share / src.name)
    env = {"DESTDIR": str(dest), "version": "0.0.0-fake", "MODULESDIR": "/lib/modules/0.0.0-fake",
           "verbose": "n", "OIB_SHAREDIR": str(share), "PATH": host_path()}
    proc = subprocess.run(["sh", str(HOOK)], capture_output=True, text=True, env=env,
                          check=False, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    for gone in ("etc/initiatorname.iscsi", "etc/iscsi/initiatorname.iscsi",
                 "etc/multipath/wwids", "etc/multipath/bindings", "etc/open-iscsi-boot/chap"):
        assert not (dest / gone).exists(), gone
    # where the per-machine initrd puts the CHAP file: there, empty, private
    chap_dir = dest / "etc/open-iscsi-boot"
    assert chap_dir.is_dir() and not any(chap_dir.iterdir())
    assert chap_dir.stat().st_mode & 0o777 == 0o700
    assert (dest / "usr/share/open-iscsi-boot/lib.sh").read_text() == LIB.read_text()
    assert (dest / "etc/iscsi/iscsid.conf").read_text() == (PKG / "conf/iscsid.conf").read_text()
    multipath_conf = (dest / "etc/multipath/conf.d/open-iscsi-boot.conf").read_text()
    assert "find_multipaths greedy" in multipath_conf
    # one path at a time: iSCSI gateways in front of one RBD image must not share writes
    assert re.search(r"^\s*path_grouping_policy failover$", multipath_conf, re.M)
    assert re.search(r"^\s*failback manual$", multipath_conf, re.M)
    for binary in ("usr/sbin/iscsid", "usr/sbin/iscsiadm"):
        assert os.access(dest / binary, os.X_OK), binary
    # no iproute2: the NIC of a path comes from ipconfig's net-<dev>.conf
    copied = {p.name for p in dest.rglob("*")}
    assert not {"ip", "libbpf.so.1", "libmnl.so.0", "libelf.so.1"} & copied


# ---------------------------------------------------------------------------
# (b) the handover on the booted system
# ---------------------------------------------------------------------------

def test_handover_installs_name_and_records(tmp_path):
    rundir = tmp_path / "run"
    write(rundir / "state", f"OIB_TARGET='{IQN}'\nOIB_INITIATOR='{INITIATOR}'\n"
                            "OIB_PORTALS='192.0.2.1:3260'\nOIB_NETDEVS=''\n"
                            "OIB_STATUS='open-iscsi-boot: root ...'\n")
    write(rundir / f"nodes/{IQN}/192.0.2.1,3260", "node.startup = onboot")
    etc = tmp_path / "etc-iscsi"
    write(etc / "initiatorname.iscsi", "GenerateName=yes")
    proc = run_handover("start", rundir, etc)
    assert proc.returncode == 0, proc.stderr
    assert f"InitiatorName={INITIATOR}" in (etc / "initiatorname.iscsi").read_text().splitlines()
    assert (etc / f"nodes/{IQN}/192.0.2.1,3260").read_text().strip() == "node.startup = onboot"
    assert "open-iscsi-boot: root ..." in proc.stdout


def test_handover_without_state_does_nothing(tmp_path):
    for mode in ("start", "login-missing"):
        proc = run_handover(mode, tmp_path / "none", tmp_path / "etc")
        assert (proc.returncode, proc.stdout) == (0, "")
    assert not (tmp_path / "etc").exists()


# ---------------------------------------------------------------------------
# (c) the Debian package
# ---------------------------------------------------------------------------

EXPECTED_FILES = {
    "./usr/share/initramfs-tools/hooks/open-iscsi-boot",
    "./usr/share/initramfs-tools/scripts/init-premount/open-iscsi-boot",
    "./usr/share/initramfs-tools/scripts/local-top/open-iscsi-boot",
    "./usr/share/initramfs-tools/scripts/init-bottom/open-iscsi-boot",
    "./usr/share/initramfs-tools/conf.d/open-iscsi-boot",
    "./usr/share/open-iscsi-boot/lib.sh",
    "./usr/share/open-iscsi-boot/iscsid.conf",
    "./usr/share/open-iscsi-boot/multipath.conf",
    "./etc/multipath/conf.d/open-iscsi-boot.conf",
    "./usr/lib/open-iscsi-boot/handover",
    "./usr/sbin/iscsi-boot-status",
    "./lib/systemd/system/open-iscsi-boot.service",
    "./lib/systemd/system/open-iscsi-boot-paths.service",
    "./usr/share/man/man8/iscsi-boot-status.8.gz",
    "./usr/share/doc/open-iscsi-boot/copyright",
}


@pytest.mark.slow
def test_deb_builds_and_is_lintian_clean(tmp_path):
    for tool in ("dpkg-buildpackage", "dh", "lintian", "dpkg-deb"):
        if not shutil.which(tool):
            pytest.skip(f"{tool} is not installed (dpkg-dev, debhelper, lintian)")
    src = tmp_path / "open-iscsi-boot"
    shutil.copytree(PKG, src, symlinks=True,
                    ignore=shutil.ignore_patterns(".debhelper", "debhelper-build-stamp", "files",
                                                  "*.substvars", "*.debhelper.log"))
    env = {"PATH": host_path(), "LANG": "C.UTF-8", "TZ": "UTC",
           "HOME": str(tmp_path)}
    build = subprocess.run(["dpkg-buildpackage", "--build=all", "-us", "-uc"], cwd=src, env=env,
                           capture_output=True, text=True, check=False, timeout=600,
                           stdin=subprocess.DEVNULL)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    debs = list(tmp_path.glob("open-iscsi-boot_*_all.deb"))
    assert len(debs) == 1

    lintian = subprocess.run(["lintian", "--no-tag-display-limit", str(debs[0])], env=env,
                             capture_output=True, text=True, check=False, timeout=600)
    errors = [line for line in lintian.stdout.splitlines() if line.startswith("E:")]
    assert errors == [], lintian.stdout

    listing = subprocess.run(["dpkg-deb", "-c", str(debs[0])], capture_output=True, text=True,
                             check=True, timeout=60).stdout
    entries = {line.split()[-1]: line.split()[0] for line in listing.splitlines()}
    assert EXPECTED_FILES <= set(entries)
    for path in EXPECTED_FILES:
        if "/scripts/" in path or "/hooks/" in path or path.endswith(("handover", "iscsi-boot-status")):
            assert entries[path].startswith("-rwxr-xr-x"), path

    control = subprocess.run(["dpkg-deb", "-f", str(debs[0]), "Depends"], capture_output=True,
                             text=True, check=True, timeout=60).stdout
    for dep in ("open-iscsi", "multipath-tools-boot", "initramfs-tools | linux-initramfs-tool", "iproute2"):
        assert dep in control
    triggers = subprocess.run(["dpkg-deb", "-I", str(debs[0]), "triggers"], capture_output=True,
                              text=True, check=True, timeout=60).stdout
    assert [line for line in triggers.splitlines() if line and not line.startswith("#")] == \
        ["activate-noawait update-initramfs"]
