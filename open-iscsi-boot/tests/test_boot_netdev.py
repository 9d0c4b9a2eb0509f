"""open-iscsi-boot: which NIC reaches a portal, without iproute2 in the initramfs.

lib.sh works it out from the /run/net-<dev>.conf files that klibc's ipconfig
writes (KEY='value' lines, read, never sourced): the NIC whose IPv4 subnet
holds the portal, the longest prefix winning; else the only NIC; else "-".
Run by every shell the code meets (dash; klibc's sh and busybox when
installed), the IPv4 arithmetic cross-checked against Python's ipaddress.
"""

from __future__ import annotations

import ipaddress
import random
import re
from pathlib import Path

import pytest

from bootsh import IQN, LIB, PKG, run_sh, run_status

# What ipconfig (klibc 2.0.x) wrote for a static ip= in a scratch network
# namespace; DHCP leases give the same keys with PROTO='dhcp'.
IPCONFIG_CONF = """DEVICE='{dev}'
PROTO='none'
IPV4ADDR='{addr}'
IPV4BROADCAST='192.0.2.255'
IPV4NETMASK='{mask}'
IPV4GATEWAY='0.0.0.0'
IPV4DNS0='0.0.0.0'
IPV4DNS1='0.0.0.0'
HOSTNAME='myhost'
DNSDOMAIN=''
NISDOMAIN=''
ROOTSERVER='0.0.0.0'
ROOTPATH=''
filename=''
UPTIME='11891'
DHCPLEASETIME='0'
DOMAINSEARCH=''
"""


# ---------------------------------------------------------------------------
# IPv4 subnet arithmetic
# ---------------------------------------------------------------------------

def in_subnet(shell, addr, ifaddr, mask) -> bool | None:
    proc = run_sh(shell, 'if oib_ipv4_in_subnet "$A" "$I" "$M"; then echo yes; else echo no; fi',
                  env={"A": addr, "I": ifaddr, "M": mask})
    assert proc.stderr == ""
    return {"yes\n": True, "no\n": False}.get(proc.stdout)


@pytest.mark.parametrize("addr,ifaddr,mask,expected", [
    # /24
    ("192.0.2.1", "192.0.2.10", "255.255.255.0", True),
    ("192.0.2.255", "192.0.2.10", "255.255.255.0", True),
    ("192.0.3.1", "192.0.2.10", "255.255.255.0", False),
    ("193.0.2.1", "192.0.2.10", "255.255.255.0", False),
    # /16
    ("198.51.7.9", "198.51.100.10", "255.255.0.0", True),
    ("198.52.100.10", "198.51.100.10", "255.255.0.0", False),
    # /30: 203.0.113.4 .. 203.0.113.7
    ("203.0.113.4", "203.0.113.5", "255.255.255.252", True),
    ("203.0.113.7", "203.0.113.5", "255.255.255.252", True),
    ("203.0.113.3", "203.0.113.5", "255.255.255.252", False),
    ("203.0.113.8", "203.0.113.5", "255.255.255.252", False),
    # prefixes that end inside an octet: /20, /9
    ("198.51.111.255", "198.51.100.10", "255.255.240.0", True),
    ("198.51.112.0", "198.51.100.10", "255.255.240.0", False),
    ("10.128.0.1", "10.200.0.5", "255.128.0.0", True),
    ("10.127.255.255", "10.200.0.5", "255.128.0.0", False),
    # /0 holds everything, /32 only itself
    ("203.0.113.9", "192.0.2.10", "0.0.0.0", True),
    ("255.255.255.255", "192.0.2.10", "0.0.0.0", True),
    ("192.0.2.10", "192.0.2.10", "255.255.255.255", True),
    ("192.0.2.11", "192.0.2.10", "255.255.255.255", False),
    # malformed input is never a match
    ("192.0.2", "192.0.2.10", "255.255.255.0", False),
    ("192.0.2.1", "192.0.2.300", "255.255.255.0", False),
    ("192.0.2.1", "192.0.2.10", "255.0.255.0", False),       # not contiguous
    ("192.0.2.1", "192.0.2.10", "255.255.255.1", False),
    ("192.0.2.1", "192.0.2.10", "24", False),
    ("192.0.2.1", "192.0.2.10", "", False),
    ("2001:db8::1", "192.0.2.10", "0.0.0.0", False),         # IPv6
    ("192.0.02.1", "192.0.2.10", "255.255.255.0", False),    # octal-looking
    ("192.0.2.1 ", "192.0.2.10", "255.255.255.0", False),
])
def test_ipv4_in_subnet(shell, addr, ifaddr, mask, expected):
    assert in_subnet(shell, addr, ifaddr, mask) is expected


def test_ipv4_in_subnet_agrees_with_python(shell):
    """400 random (address, interface, prefix) triples, near misses included."""
    rng = random.Random(20240701)
    cases = []
    for _ in range(400):
        prefix = rng.randint(0, 32)
        ifaddr = ipaddress.IPv4Address(rng.getrandbits(32))
        net = ipaddress.IPv4Network(f"{ifaddr}/{prefix}", strict=False)
        if rng.random() < 0.5:  # inside, or just outside either edge
            pick = rng.choice([int(net.network_address), int(net.broadcast_address),
                               int(net.network_address) - 1, int(net.broadcast_address) + 1])
            addr = ipaddress.IPv4Address(pick % 2**32)
        else:
            addr = ipaddress.IPv4Address(rng.getrandbits(32))
        cases.append((str(addr), str(ifaddr), str(net.netmask), addr in net))
    script = "".join(f'oib_ipv4_in_subnet {a} {i} {m} && echo 1 || echo 0\n' for a, i, m, _ in cases)
    proc = run_sh(shell, script)
    got = proc.stdout.split()
    assert len(got) == len(cases), proc.stderr
    wrong = [(c, g) for c, g in zip(cases, got) if (g == "1") != c[3]]
    assert wrong == []
    assert {c[3] for c in cases} == {True, False}


# ---------------------------------------------------------------------------
# net-<dev>.conf, read without sourcing
# ---------------------------------------------------------------------------

def test_net_conf_value(shell, tmp_path):
    conf = tmp_path / "net-eth0.conf"
    conf.write_text(IPCONFIG_CONF.format(dev="eth0", addr="192.0.2.10", mask="255.255.255.0")
                    + "PLAIN=unquoted\nHALF='x\nQUOTE='\n")
    proc = run_sh(shell, f"""
        for key in DEVICE IPV4ADDR IPV4NETMASK DNSDOMAIN PLAIN HALF QUOTE MISSING IPV4; do
            v=$(oib_net_conf_value "{conf}" "$key") && echo "$key=[$v]" || echo "$key missing"
        done
        oib_net_conf_value "{tmp_path}/none" DEVICE || echo no-file""")
    assert proc.stdout.splitlines() == [
        "DEVICE=[eth0]", "IPV4ADDR=[192.0.2.10]", "IPV4NETMASK=[255.255.255.0]", "DNSDOMAIN=[]",
        "PLAIN=[unquoted]", "HALF=['x]", "QUOTE=[']", "MISSING missing", "IPV4 missing", "no-file"]


def test_net_conf_is_not_sourced(shell, tmp_path):
    marker = tmp_path / "ran"
    (tmp_path / "net-eth0.conf").write_text(
        f"DEVICE='eth0'\nIPV4ADDR='192.0.2.10'$(touch {marker})\n"
        f"IPV4NETMASK=`touch {marker}`\ntouch {marker}\n")
    proc = run_sh(shell, 'oib_portal_netdev 192.0.2.1 || echo none',
                  env={"OIB_NET_CONF_DIR": str(tmp_path)})
    assert proc.stdout.strip() == "none"
    assert not marker.exists()


# ---------------------------------------------------------------------------
# oib_portal_netdev
# ---------------------------------------------------------------------------

def net_dir(tmp_path: Path, nics: dict[str, tuple[str, str]], extra: dict[str, str] | None = None) -> Path:
    """A /run with one ipconfig-style net-<dev>.conf per NIC (dev: (addr, mask))."""
    run = tmp_path / "run"
    run.mkdir(exist_ok=True)
    for dev, (addr, mask) in nics.items():
        (run / f"net-{dev}.conf").write_text(IPCONFIG_CONF.format(dev=dev, addr=addr, mask=mask))
    for name, text in (extra or {}).items():
        (run / name).write_text(text)
    return run


def portal_netdev(shell, run: Path, *addrs: str) -> list[str]:
    script = "set -f\n" + "".join(f'oib_portal_netdev "{a}" || echo -\n' for a in addrs)
    proc = run_sh(shell, script, env={"OIB_NET_CONF_DIR": str(run)}, cwd=run)
    assert proc.stderr == ""
    return proc.stdout.split()


TWO_PATHS = {"enp1s0": ("192.0.2.10", "255.255.255.0"), "enp2s0": ("198.51.100.10", "255.255.255.0")}


def test_portal_netdev_one_subnet_per_path(shell, tmp_path):
    run = net_dir(tmp_path, TWO_PATHS)
    assert portal_netdev(shell, run, "192.0.2.1", "198.51.100.1", "198.51.100.255",
                         "203.0.113.1", "2001:db8::1") == ["enp1s0", "enp2s0", "enp2s0", "-", "-"]


def test_portal_netdev_single_nic_takes_everything(shell, tmp_path):
    run = net_dir(tmp_path, {"eth0": ("192.0.2.10", "255.255.255.0")})
    # behind a gateway, or IPv6: the only NIC is the only way out
    assert portal_netdev(shell, run, "192.0.2.1", "203.0.113.1", "2001:db8::1") == ["eth0"] * 3


def test_portal_netdev_longest_prefix_wins(shell, tmp_path):
    run = net_dir(tmp_path, {"eth0": ("10.0.0.5", "255.0.0.0"), "eth1": ("10.1.2.5", "255.255.255.0"),
                             "eth2": ("10.1.2.129", "255.255.255.252"), "eth3": ("192.0.2.10", "0.0.0.0")})
    assert portal_netdev(shell, run, "10.1.2.9", "10.9.9.9", "10.1.2.130", "203.0.113.1") == \
        ["eth1", "eth0", "eth2", "eth3"]


def test_portal_netdev_same_subnet_twice_is_undecided(shell, tmp_path):
    run = net_dir(tmp_path, {"eth0": ("192.0.2.10", "255.255.255.0"), "eth1": ("192.0.2.11", "255.255.255.0"),
                             "eth2": ("192.0.2.12", "255.255.255.252")})
    # the kernel would use whichever route came first: we do not guess
    assert portal_netdev(shell, run, "192.0.2.200", "192.0.2.13") == ["-", "eth2"]


def test_portal_netdev_ignores_malformed_files(shell, tmp_path):
    run = net_dir(tmp_path, {"enp1s0": ("192.0.2.10", "255.255.255.0"),
                             "bad1": ("192.0.2.300", "255.255.255.0"),     # bad address
                             "bad2": ("198.51.100.10", "255.0.255.0"),      # bad mask
                             "bad3": ("0.0.0.0", "255.255.255.0")},         # no address
                  extra={"net-bad4.conf": "DEVICE='bad4'\nIPV4ADDR='203.0.113.10'\n",  # no mask
                         "net-bad5.conf": "",
                         "net-bad6.conf": "\x00\x01\xff garbage\nIPV4ADDR\n",
                         "net-bad7.conf": "DEVICE='a/b'\nIPV4ADDR='203.0.113.10'\nIPV4NETMASK='255.255.255.0'\n",
                         "net6-enp2s0.conf": "DEVICE6='enp2s0'\nIPV6ADDR='2001:db8::10'\n",
                         "net-.conf": "IPV4ADDR='203.0.113.10'\nIPV4NETMASK='255.255.255.0'\n",
                         "other.conf": IPCONFIG_CONF.format(dev="other", addr="203.0.113.10",
                                                            mask="255.255.255.0")})
    # only enp1s0 counts, so it is also the only NIC for any other address
    assert portal_netdev(shell, run, "192.0.2.1", "198.51.100.1", "203.0.113.1") == ["enp1s0"] * 3


def test_portal_netdev_device_from_file_name(shell, tmp_path):
    run = net_dir(tmp_path, {}, extra={
        "net-eth0.conf": "IPV4ADDR='192.0.2.10'\nIPV4NETMASK='255.255.255.0'\n",
        "net-eth1.conf": "IPV4ADDR=198.51.100.10\nIPV4NETMASK=255.255.255.0\n"})
    assert portal_netdev(shell, run, "192.0.2.1", "198.51.100.1") == ["eth0", "eth1"]


def test_portal_netdev_no_files(shell, tmp_path):
    assert portal_netdev(shell, net_dir(tmp_path, {}), "192.0.2.1", "2001:db8::1") == ["-", "-"]
    proc = run_sh(shell, 'oib_portal_netdev 192.0.2.1 || echo -',
                  env={"OIB_NET_CONF_DIR": str(tmp_path / "missing")})
    assert proc.stdout.split() == ["-"]


# ---------------------------------------------------------------------------
# nothing in the initramfs calls ip; the hook does not copy it
# ---------------------------------------------------------------------------

IP_COMMAND = re.compile(r"(^|[;&|(`]|\$\(|\b(then|do|else|command|exec)\b)\s*ip(\s|$)")
INITRAMFS_SHELL = [LIB, *sorted((PKG / "initramfs/scripts").glob("*/open-iscsi-boot"))]


def ip_calls(text: str) -> list[str]:
    code = (line.split(" #", 1)[0] for line in text.splitlines() if not line.lstrip().startswith("#"))
    return [line for line in code if IP_COMMAND.search(line)]


def test_ip_call_detector_can_fail():
    old = 'netdev=$(oib_route_dev $(ip -o route get "$OIB_PORTAL_ADDR" 2>/dev/null)) || netdev=-'
    assert ip_calls(old) == [old]
    assert ip_calls("\tip route add default via x") and ip_calls("x && ip link set eth0 up")
    assert ip_calls('OIB_IP_PARAMS=$(oib_cmdline_all ip)\n# ip -o route\ncase ip=*) ;;') == []


@pytest.mark.parametrize("path", INITRAMFS_SHELL, ids=lambda p: str(p.relative_to(PKG)))
def test_initramfs_code_never_runs_ip(path):
    assert ip_calls(path.read_text()) == []


def test_local_top_uses_the_conf_lookup():
    text = (PKG / "initramfs/scripts/local-top/open-iscsi-boot").read_text()
    assert 'netdev=$(oib_portal_netdev "$OIB_PORTAL_ADDR") || netdev=-' in text


def test_hook_does_not_copy_ip():
    code = [line for line in (PKG / "initramfs/hooks/open-iscsi-boot").read_text().splitlines()
            if not line.lstrip().startswith("#")]
    assert [line for line in code if re.search(r"\bcopy_exec\b.*/ip\b", line)] == []
    assert any(re.search(r"\bcopy_exec /sbin/iscsiadm\b", line) for line in code)


# ---------------------------------------------------------------------------
# iscsi-boot-status on the booted system: ip first, the conf files as fallback
# ---------------------------------------------------------------------------

def test_iscsi_boot_status_falls_back_to_net_conf(fake_root, tmp_path):
    rundir = tmp_path / "state"
    rundir.mkdir()
    (rundir / "state").write_text(f"OIB_TARGET='{IQN}'\n")
    (fake_root / "bin/ip").write_text("#!/bin/sh\nexit 2\n")   # ip knows no route
    run = net_dir(tmp_path, TWO_PATHS)
    proc = run_status(fake_root, rundir, "-v", env={"OIB_NET_CONF_DIR": str(run)})
    lines = proc.stdout.splitlines()
    assert lines[1] == "  path sdb (8:16) active session 1 LOGGED_IN portal 192.0.2.1:3260 via enp1s0", \
        proc.stdout + proc.stderr
    assert lines[2].endswith("portal [2001:db8::1]:3260 via -")

