"""The site inventory: one YAML file, machines keyed by MAC address.

::

    site:
      authority: 2025-01.org.example      # IQN naming authority
      portals: [192.0.2.1, 198.51.100.1]  # one per path: a.b.c.d[:port] or [IPv6][:port]
      boot_server: 192.0.2.1              # optional: TFTP server (DHCP next-server)
      tftp_root: /srv/tftp
      store: /srv/iscsi                   # templates, disks, tgt config, records
      secrets: /var/lib/iscsi-fleet/secrets.yaml  # default <store>/secrets.yaml
      cmdline: "console=ttyS0"            # optional extra kernel arguments
      # optional: dnsmasq_conf (default <store>/dnsmasq.conf), tftp_group (the
      # group dnsmasq runs as, default dip), pxe_boot_file (default pxelinux.0)
    machines:
      52:54:00:12:34:01: {name: web1, image: trixie}
      52:54:00:12:34:02: {name: web2, image: trixie, kernel: 6.12.57+deb13-amd64}
      52:54:00:12:34:03: {name: web3, image: trixie, kernel: cloud-amd64, address: 192.0.2.23}

A machine boots the newest built release of its image's first kernel
flavour, unless ``kernel`` names another flavour (then the newest of that)
or pins a release.  ``address`` is a fixed IPv4 address for DHCP.

Parsed once into frozen dataclasses; every problem of the file is reported
together (one line each: ``<file>: <key path>: <what was expected>``), and
nothing is published while there is one.  Relative paths are taken from the
inventory file's folder.  Everything else a machine needs is derived from its
MAC by :mod:`pipeline.derive`.

Checks that need the built triples or the machines' disks (an unknown kernel
release, a pinned kernel that the disk lacks) belong to publish's plan.
"""

from __future__ import annotations

import grp
import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from pipeline.config import TOP, Checker, got
from pipeline.errors import ConfigError
from pipeline.naming import check_release
from pipeline.build.recipe import KNOWN_FLAVOURS, Recipe

SITE_KEYS = ("authority", "portals", "gateways", "boot_server", "tftp_root", "store", "secrets",
             "cmdline", "dnsmasq_conf", "tftp_group", "pxe_boot_file", "store_backend", "rbd")
# portals, or gateways (whose portals they are): checked in _site.
SITE_REQUIRED = ("authority", "tftp_root", "store")
STORE_BACKENDS = ("file", "rbd")
RBD_KEYS = ("conf", "client_id", "keyring", "pool")
MACHINE_KEYS = ("name", "image", "kernel", "address")
MACHINE_REQUIRED = ("name", "image")
DEFAULT_PORT = 3260
# dnsmasq's own default group; TFTP can only send files that group may read.
DEFAULT_TFTP_GROUP = "dip"
DEFAULT_PXE_BOOT_FILE = "pxelinux.0"
# Machines are keyed by MAC: their key paths read machines[52:54:00:12:34:01].
MACHINES_KEYED = ("machines",)

# Always used with fullmatch().
_AUTHORITY_RE = re.compile(
    r"[0-9]{4}-(?:0[1-9]|1[0-2])\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*")
_HOSTNAME_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_MAC_INPUT_RE = re.compile(r"[0-9A-Fa-f]{2}([:-])[0-9A-Fa-f]{2}(?:\1[0-9A-Fa-f]{2}){4}")
_FILE_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]*")
# Kernel arguments go into iPXE scripts (which expand ${...}) and PXELINUX
# files (line based): printable ASCII without '$'.
_CMDLINE_RE = re.compile(r"[\x20-\x23\x25-\x7e]*")

EXPECT = {
    "authority": "an IQN naming authority YYYY-MM.reversed.domain in lower case, "
                 "e.g. 2025-01.org.example",
    "portals": "a non-empty list of portals, one per path: a.b.c.d[:port] or [IPv6][:port]",
    "boot_server": "an IPv4 address (the TFTP server DHCP clients are sent to)",
    "tftp_root": "a folder path",
    "store": "a folder path",
    "secrets": "a file path outside tftp_root",
    "cmdline": "extra kernel arguments: printable ASCII without '$' on one line",
    "dnsmasq_conf": "a file path",
    "tftp_group": "the group dnsmasq runs as (dnsmasq's default: dip)",
    "pxe_boot_file": "a file name in the TFTP tree, e.g. pxelinux.0",
    "gateways": "a mapping of gateway host name to the list of its portals, "
                "e.g. {gw-a: [192.0.2.1], gw-b: [198.51.100.1]}",
    "store_backend": "one of " + ", ".join(STORE_BACKENDS),
    "rbd": "a mapping with keys " + ", ".join(RBD_KEYS),
    "conf": "the path of the Ceph cluster's ceph.conf",
    "client_id": "a Ceph client id: the name after 'client.' (letters, digits, '.', '_', '-')",
    "keyring": "the path of the client's keyring, outside tftp_root",
    "pool": "an RBD pool name (letters, digits, '.', '_', '-')",
    "mac": "six pairs of hex digits separated by ':' or '-', e.g. 52:54:00:12:34:01",
    "name": "a host name: an RFC 1123 label of 1-63 characters a-z 0-9 -, "
            "not starting or ending with '-'",
    "image": "the image of a recipe",
    "kernel": "a kernel release such as 6.12.57+deb13-amd64, or a kernel flavour of the image",
    "address": "an IPv4 address such as 192.0.2.22",
}


@dataclass(frozen=True)
class Site:
    authority: str                 # 2025-01.org.example
    portals: tuple[str, ...]       # as the kernel command line takes them
    boot_server: str | None
    tftp_root: Path
    store: Path
    secrets: Path
    cmdline: str
    dnsmasq_conf: Path
    tftp_group: str
    pxe_boot_file: str
    gateways: tuple["Gateway", ...] = ()   # empty: every portal is on this store's host
    store_backend: str = "file"
    rbd: "RbdSite | None" = None


@dataclass(frozen=True)
class Gateway:
    """An iSCSI gateway host in front of the store; each portal belongs to one."""
    name: str
    portals: tuple[str, ...]


@dataclass(frozen=True)
class RbdSite:
    """The Ceph cluster of an rbd store (``site.rbd``)."""
    conf: Path
    client_id: str
    keyring: Path
    pool: str


@dataclass(frozen=True)
class Machine:
    mac: str                       # canonical: lower case, colons
    name: str
    image: str
    kernel: str | None             # as written: a release, a flavour, or None
    address: str | None
    key: str                       # the key path of its entry, for messages
    flavour: str = ""              # followed when no release is pinned: the kernel key's
                                   # flavour, else the recipe's first
    release: str | None = None     # the pinned release, if the kernel key is one


@dataclass(frozen=True)
class Inventory:
    path: Path
    site: Site
    machines: tuple[Machine, ...]

    def machine(self, name: str) -> Machine:
        for machine in self.machines:
            if machine.name == name:
                return machine
        raise KeyError(name)


def load_inventory(path: Path, recipes: Mapping[str, Recipe]) -> Inventory:
    """Read and check the inventory; ConfigError lists all its problems."""
    check = Checker(path, keyed=MACHINES_KEYED)
    data = check.read()
    inventory = None if check.problems else _build(path, data, recipes, check)
    if inventory is None:  # _build returns None only with problems
        raise ConfigError(check.problems)
    return inventory


def is_release(text: str) -> bool:
    try:
        check_release(text)
    except ValueError:
        return False
    return True


def canonical_mac(text: str) -> str | None:
    """52-54-00-12-34-AB -> 52:54:00:12:34:ab; None if it is not a MAC."""
    if not _MAC_INPUT_RE.fullmatch(text):
        return None
    return text.lower().replace("-", ":")


def is_multicast(mac: str) -> bool:
    return int(mac[:2], 16) & 1 == 1


def _build(path: Path, data: Any, recipes: Mapping[str, Recipe], check: Checker) -> Inventory | None:
    if not isinstance(data, dict):
        what = "the file is empty; " if data is None else ""
        check.add(TOP, f"{what}expected a mapping with the keys site and machines"
                       + ("" if data is None else f", {got(data)}"))
        return None
    check.unknown_keys("", data, ("site", "machines"))
    check.required("", data, ("site", "machines"))
    site = _site(path.parent, data.get("site"), check) if "site" in data else None
    machines = _machines(data.get("machines"), recipes, check) if "machines" in data else []
    if check.problems or site is None:
        return None
    return Inventory(path=path, site=site, machines=tuple(machines))


def _path(base: Path, check: Checker, key: str, value: Any) -> Path:
    text = check.string(key, value, EXPECT[key.split(".")[-1]])
    if text is not None and not text.strip():
        check.add(key, f"expected {EXPECT[key.split('.')[-1]]}, got an empty string")
    return (base / text).resolve() if text else Path("/nonexistent")


def _site(base: Path, value: Any, check: Checker) -> Site | None:
    section = check.mapping("site", value, SITE_KEYS, "a mapping with keys " + ", ".join(SITE_KEYS))
    if not isinstance(value, dict):
        return None
    check.required("site", section, SITE_REQUIRED, EXPECT)
    authority = check.string("site.authority", section.get("authority", ""), EXPECT["authority"]) or ""
    if "authority" in section and authority and not _AUTHORITY_RE.fullmatch(authority):
        check.add("site.authority", f"{authority!r} is not valid; expected {EXPECT['authority']}")
    portals = _portals(check, section["portals"]) if "portals" in section else []
    gateways: tuple[Gateway, ...] = ()
    if "gateways" in section:
        if "portals" in section:
            check.add("site.portals", "not with site.gateways (the gateways name their portals); "
                                      "expected one of the two")
        gateways = _gateways(check, section["gateways"])
        portals = [portal for gateway in gateways for portal in gateway.portals]
    elif "portals" not in section:
        check.add("site.portals", f"missing required key; expected {EXPECT['portals']} (or site.gateways)")
    boot_server = None
    if section.get("boot_server") is not None:
        boot_server = _ipv4(check, "site.boot_server", section["boot_server"], EXPECT["boot_server"])
    tftp_root = _path(base, check, "site.tftp_root", section.get("tftp_root", "."))
    store = _path(base, check, "site.store", section.get("store", "."))
    secrets = (_path(base, check, "site.secrets", section["secrets"]) if "secrets" in section
               else store / "secrets.yaml")
    dnsmasq_conf = (_path(base, check, "site.dnsmasq_conf", section["dnsmasq_conf"])
                    if "dnsmasq_conf" in section else store / "dnsmasq.conf")
    # TFTP serves everything under its root to anyone who asks.
    if "tftp_root" in section and "store" in section:
        if store.is_relative_to(tftp_root):
            check.add("site.store", f"{store} is inside site.tftp_root ({tftp_root}), which TFTP "
                                    "serves to anyone; expected a folder outside it")
        elif secrets.is_relative_to(tftp_root):
            check.add("site.secrets", f"{secrets} is inside site.tftp_root ({tftp_root}), which "
                                      "TFTP serves to anyone; expected a path outside it")
    cmdline = check.string("site.cmdline", section.get("cmdline", ""), EXPECT["cmdline"]) or ""
    if not _CMDLINE_RE.fullmatch(cmdline):
        check.add("site.cmdline", f"{cmdline!r} is not valid; expected {EXPECT['cmdline']}")
    group = check.string("site.tftp_group", section.get("tftp_group", DEFAULT_TFTP_GROUP),
                         EXPECT["tftp_group"]) or ""
    if group:
        try:
            grp.getgrnam(group)
        except KeyError:
            check.add("site.tftp_group", f"no group {group!r} on this host; expected {EXPECT['tftp_group']}")
    boot_file = check.string("site.pxe_boot_file", section.get("pxe_boot_file", DEFAULT_PXE_BOOT_FILE),
                             EXPECT["pxe_boot_file"]) or ""
    if boot_file and (not _FILE_NAME_RE.fullmatch(boot_file) or ".." in boot_file.split("/")):
        check.add("site.pxe_boot_file", f"{boot_file!r} is not valid; expected {EXPECT['pxe_boot_file']}")
    backend = check.choice("site.store_backend", section.get("store_backend", "file"), STORE_BACKENDS)
    rbd = None
    if backend == "rbd" or "rbd" in section:
        rbd = _rbd(base, check, section.get("rbd"), tftp_root if "tftp_root" in section else None)
        if backend != "rbd":
            check.add("site.rbd", "given, but site.store_backend is not rbd; expected "
                                  "store_backend: rbd with it, or no rbd")
    return Site(authority=authority, portals=tuple(portals), boot_server=boot_server,
                tftp_root=tftp_root, store=store, secrets=secrets, cmdline=cmdline,
                dnsmasq_conf=dnsmasq_conf, tftp_group=group, pxe_boot_file=boot_file,
                gateways=gateways, store_backend=backend, rbd=rbd)


def _gateways(check: Checker, value: Any) -> tuple[Gateway, ...]:
    section = value
    if not isinstance(section, dict) or not section:
        check.add("site.gateways", f"expected {EXPECT['gateways']}, {got(value)}")
        return ()
    gateways: list[Gateway] = []
    seen: dict[str, str] = {}
    for name, listed in section.items():
        key = f"site.gateways.{name}"
        if not isinstance(name, str) or not _HOSTNAME_RE.fullmatch(name):
            check.add(key, f"{name!r} is not a gateway name; expected {EXPECT['name']}")
            continue
        portals: list[str] = []
        for item_key, text in check.name_list(key, listed, "a non-empty list of its portals: "
                                              "a.b.c.d[:port] or [IPv6][:port]", required=True):
            portal = parse_portal(text)
            if portal is None:
                check.add(item_key, f"{text!r} is not a portal; expected a.b.c.d[:port] or "
                                    "[IPv6][:port] (no host names)")
            elif portal in seen:
                check.add(item_key, f"{text!r} is already a portal of gateway {seen[portal]}; "
                                    "expected each portal on one gateway")
            else:
                seen[portal] = name
                portals.append(portal)
        gateways.append(Gateway(name, tuple(portals)))
    return tuple(gateways)


def _rbd(base: Path, check: Checker, value: Any, tftp_root: Path | None) -> RbdSite | None:
    section = check.mapping("site.rbd", value, RBD_KEYS, EXPECT["rbd"])
    if not isinstance(value, dict):
        return None
    check.required("site.rbd", section, RBD_KEYS, EXPECT)
    if any(name not in section for name in RBD_KEYS):
        return None
    conf = _path(base, check, "site.rbd.conf", section["conf"])
    keyring = _path(base, check, "site.rbd.keyring", section["keyring"])
    client_id = check.string("site.rbd.client_id", section["client_id"], EXPECT["client_id"]) or ""
    pool = check.string("site.rbd.pool", section["pool"], EXPECT["pool"]) or ""
    for key, text in (("client_id", client_id), ("pool", pool)):
        if text and not re.fullmatch(r"[A-Za-z0-9._-]+", text):
            check.add(f"site.rbd.{key}", f"{text!r} is not valid; expected {EXPECT[key]}")
    # tgt-admin hands the conf path to a shell inside bsopts.
    if re.search(r"[\s'\";\\]", str(conf)):
        check.add("site.rbd.conf", f"{str(conf)!r} has a space, quote, ';' or '\\'; expected a "
                                   "plain path (tgt-admin passes it through a shell)")
    # The keyring is a secret, like the CHAP secrets file: never where TFTP serves.
    if tftp_root is not None and keyring.is_relative_to(tftp_root):
        check.add("site.rbd.keyring", f"{keyring} is inside site.tftp_root ({tftp_root}), which "
                                      "TFTP serves to anyone; expected a path outside it")
    return RbdSite(conf=conf, client_id=client_id, keyring=keyring, pool=pool)


def _ipv4(check: Checker, key: str, value: Any, expect: str) -> str | None:
    text = check.string(key, value, expect)
    if text is None:
        return None
    try:
        return str(ipaddress.IPv4Address(text))
    except ValueError:
        check.add(key, f"{text!r} is not an IPv4 address; expected {expect}")
        return None


def parse_portal(text: str) -> str | None:
    """Normalise a portal (a.b.c.d[:port] or [IPv6][:port]); None if invalid."""
    match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\](?::([0-9]+))?|([0-9.]+)(?::([0-9]+))?", text)
    if not match:
        return None
    v6, port6, v4, port4 = match.groups()
    port = port6 or port4
    if port is not None and (port.startswith("0") or not 1 <= int(port) <= 65535):
        return None
    try:
        address = f"[{ipaddress.IPv6Address(v6).compressed}]" if v6 else str(ipaddress.IPv4Address(v4))
    except ValueError:
        return None
    return address + (f":{port}" if port and int(port) != DEFAULT_PORT else "")


def _portals(check: Checker, value: Any) -> list[str]:
    portals: list[str] = []
    for key, text in check.name_list("site.portals", value, EXPECT["portals"], required=True):
        portal = parse_portal(text)
        if portal is None:
            check.add(key, f"{text!r} is not a portal; expected a.b.c.d[:port] or [IPv6][:port] "
                           "(no host names)")
        elif portal in portals:
            check.add(key, f"{text!r} is the same portal as site.portals[{portals.index(portal)}]")
        else:
            portals.append(portal)
    return portals


def _machines(value: Any, recipes: Mapping[str, Recipe], check: Checker) -> list[Machine]:
    if value is None:
        return []  # an inventory without machines yet is fine
    if not isinstance(value, dict):
        check.add("machines", f"expected a mapping of MAC address to machine, {got(value)}")
        return []
    machines: list[Machine] = []
    by_mac: dict[str, str] = {}
    by_name: dict[str, str] = {}
    by_address: dict[str, str] = {}
    for raw_mac, entry in value.items():
        key = f"machines[{raw_mac}]"
        mac = canonical_mac(str(raw_mac))
        if mac is None:
            check.add(key, f"{raw_mac!r} is not a MAC address; expected {EXPECT['mac']}")
        elif is_multicast(mac):
            check.add(key, f"{raw_mac} is a multicast address (lowest bit of the first octet set); "
                           "expected the unicast MAC of the machine's boot network card")
        elif mac == "00:00:00:00:00:00":
            check.add(key, f"{raw_mac} is the all-zero address; expected a real MAC address")
        elif mac in by_mac:
            check.add(key, f"the same MAC address as {by_mac[mac]}; list each machine once")
        else:
            by_mac[mac] = key
        machine = _machine(key, mac, entry, recipes, check)
        if machine is None:
            continue
        # A machine with a bad MAC is never returned (problems were added),
        # but its name and address still count for the duplicate checks.
        if machine.name in by_name:
            check.add(f"{key}.name", f"{machine.name!r} is already the name of {by_name[machine.name]}; "
                                     "names must be unique")
        else:
            by_name[machine.name] = key
        if machine.address is not None:
            if machine.address in by_address:
                check.add(f"{key}.address", f"{machine.address} is already the address of "
                                            f"{by_address[machine.address]}")
            else:
                by_address[machine.address] = key
        if mac is not None:
            machines.append(machine)
    return machines


def _machine(key: str, mac: str | None, entry: Any, recipes: Mapping[str, Recipe],
             check: Checker) -> Machine | None:
    expect = "a mapping with keys name and image (and optionally kernel, address)"
    if not isinstance(entry, dict):
        check.add(key, f"expected {expect}, {got(entry)}")
        return None
    check.unknown_keys(key, entry, MACHINE_KEYS)
    check.required(key, entry, MACHINE_REQUIRED, EXPECT)
    name = check.string(f"{key}.name", entry.get("name", ""), EXPECT["name"]) or ""
    if "name" in entry and name and not _HOSTNAME_RE.fullmatch(name):
        hint = " (upper-case letters are not allowed)" if _HOSTNAME_RE.fullmatch(name.lower()) else ""
        check.add(f"{key}.name", f"{name!r} is not a valid host name{hint}; expected {EXPECT['name']}")
    image = check.string(f"{key}.image", entry.get("image", ""), EXPECT["image"]) or ""
    recipe = recipes.get(image)
    if "image" in entry and image and recipe is None:
        known = ", ".join(sorted(recipes)) or "(no recipes)"
        check.add(f"{key}.image", f"unknown image {image!r}; expected one of the recipes' images: {known}")
    kernel = None
    if entry.get("kernel") is not None:
        kernel = check.string(f"{key}.kernel", entry["kernel"], EXPECT["kernel"])
        # Without a known image its flavours are unknown (that is reported
        # already): accept any flavour the pipeline knows.
        flavours = recipe.kernel_flavours if recipe else KNOWN_FLAVOURS
        if kernel is not None and not is_release(kernel) and kernel not in flavours:
            check.add(f"{key}.kernel", f"{kernel!r} is neither a kernel release (e.g. "
                      f"6.12.57+deb13-amd64) nor a kernel flavour of image {image!r} "
                      f"({', '.join(flavours) or 'none'})")
    address = None
    if entry.get("address") is not None:
        address = _ipv4(check, f"{key}.address", entry["address"], EXPECT["address"])
    release = kernel if kernel is not None and is_release(kernel) else None
    flavour = kernel if kernel is not None and release is None else (
        recipe.kernel_flavours[0] if recipe and recipe.kernel_flavours else "")
    return Machine(mac=mac or "", name=name, image=image, kernel=kernel, address=address, key=key,
                   flavour=flavour, release=release)
