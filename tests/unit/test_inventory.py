"""pipeline/inventory.py: the site inventory and its one-message-per-problem checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.errors import ConfigError
from pipeline.fleet.inventory import (DEFAULT_TFTP_GROUP, Inventory, canonical_mac, is_multicast,
                                load_inventory, parse_portal)
from pipeline.build.recipe import Initramfs, Recipe, RootImage


def recipe(image: str, flavours: tuple[str, ...] = ("amd64", "cloud-amd64")) -> Recipe:
    return Recipe(path=Path(f"/recipes/{image}.yaml"), image=image, suite=image,
                  mirror="http://mirror.example/debian", bootstrapper="mmdebstrap",
                  packages=("systemd",), kernel_flavours=flavours, overlays=(),
                  root_image=RootImage(), initramfs=Initramfs(), source_date_epoch=0,
                  description="")


RECIPES = {"trixie": recipe("trixie"), "bookworm": recipe("bookworm", ("amd64",))}

SITE = """site:
  authority: 2025-01.org.example
  portals: [192.0.2.1, 198.51.100.1]
  tftp_root: tftp
  store: store
"""
GW_SITE = """site:
  authority: 2025-01.org.example
  gateways: {gw-a: [192.0.2.1], gw-b: [198.51.100.1]}
  tftp_root: tftp
  store: store
"""
GOOD = SITE + """machines:
  52:54:00:12:34:01: {name: web1, image: trixie}
  52:54:00:12:34:02: {name: web2, image: trixie, kernel: 6.12.57+deb13-amd64, address: 192.0.2.22}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "fleet" / "inventory.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    return path


def load(tmp_path: Path, text: str) -> Inventory:
    return load_inventory(write(tmp_path, text), RECIPES)


def test_good_inventory(tmp_path):
    inv = load(tmp_path, GOOD)
    base = tmp_path / "fleet"
    assert inv.path == base / "inventory.yaml"
    site = inv.site
    assert site.authority == "2025-01.org.example"
    assert site.portals == ("192.0.2.1", "198.51.100.1")
    assert site.tftp_root == base / "tftp" and site.store == base / "store"
    assert site.secrets == base / "store" / "secrets.yaml"
    assert site.dnsmasq_conf == base / "store" / "dnsmasq.conf"
    assert site.boot_server is None and site.cmdline == ""
    assert site.tftp_group == DEFAULT_TFTP_GROUP and site.pxe_boot_file == "pxelinux.0"
    web1, web2 = inv.machines
    assert (web1.mac, web1.name, web1.image, web1.kernel, web1.address) == (
        "52:54:00:12:34:01", "web1", "trixie", None, None)
    assert (web1.flavour, web1.release) == ("amd64", None)  # the recipe's first flavour
    assert (web2.release, web2.address) == ("6.12.57+deb13-amd64", "192.0.2.22")
    assert inv.machine("web2") is web2


def test_keys_stay_text_not_base60(tmp_path):
    # YAML 1.1 reads an unquoted 52:54:00:12:34:01 as the integer 3111138857041.
    inv = load(tmp_path, SITE + "machines:\n  10:20:30:40:50:02: {name: a, image: trixie}\n")
    assert inv.machines[0].mac == "10:20:30:40:50:02"


def test_mac_spellings_are_normalised(tmp_path):
    inv = load(tmp_path, SITE + "machines:\n  52-54-00-AB-CD-EF: {name: a, image: trixie}\n"
                              "  '52:54:00:ab:cd:0F': {name: b, image: trixie}\n")
    assert [m.mac for m in inv.machines] == ["52:54:00:ab:cd:ef", "52:54:00:ab:cd:0f"]


def test_kernel_flavour_and_optional_site_keys(tmp_path):
    text = ("site:\n  authority: 2024-12.net.example.lab\n"
            "  portals: ['192.0.2.1:3261', '[2001:DB8::1]', '[2001:db8::2]:3260']\n"
            "  boot_server: 192.0.2.1\n  tftp_root: /srv/tftp\n  store: /srv/iscsi\n"
            "  secrets: /var/lib/fleet/secrets.yaml\n  cmdline: console=ttyS0 quiet\n"
            "  dnsmasq_conf: /etc/dnsmasq.d/fleet.conf\n  tftp_group: root\n"
            "  pxe_boot_file: bios/pxelinux.0\n"
            "machines:\n  52:54:00:12:34:01: {name: a, image: trixie, kernel: cloud-amd64}\n")
    inv = load(tmp_path, text)
    site = inv.site
    assert site.portals == ("192.0.2.1:3261", "[2001:db8::1]", "[2001:db8::2]")
    assert site.boot_server == "192.0.2.1" and site.cmdline == "console=ttyS0 quiet"
    assert site.secrets == Path("/var/lib/fleet/secrets.yaml")
    assert site.dnsmasq_conf == Path("/etc/dnsmasq.d/fleet.conf")
    assert (site.tftp_group, site.pxe_boot_file) == ("root", "bios/pxelinux.0")
    machine = inv.machines[0]
    assert (machine.kernel, machine.flavour, machine.release) == ("cloud-amd64", "cloud-amd64", None)


def test_no_machines_yet_is_fine(tmp_path):
    assert load(tmp_path, SITE + "machines:\n").machines == ()


M1 = "52:54:00:12:34:01"

# (id, YAML text, [(key path, fragment), ...]): every message must appear, and
# no other.  The key path follows "<file>: ".
BAD = [
    ("yaml-syntax", SITE + "machines:\n  52:54:00:12:34:01: {name: a, image: trixie\n",
     [("", "YAML syntax error")]),
    ("empty-file", "", [("(top level)", "the file is empty")]),
    ("not-a-mapping", "- a\n", [("(top level)", "got a list")]),
    ("missing-both", "other: 1\n", [("other", "unknown key"), ("site", "missing required key"),
                                    ("machines", "missing required key")]),
    ("missing-site-keys", "site: {authority: 2025-01.org.example}\nmachines:\n",
     [("site.portals", "missing required key"), ("site.tftp_root", "missing required key"),
      ("site.store", "missing required key")]),
    ("unknown-site-key", SITE + "  colour: red\nmachines:\n", [("site.colour", "unknown key")]),
    ("bad-authority", SITE.replace("2025-01.org.example", "2025-13.Org.Example") + "machines:\n",
     [("site.authority", "'2025-13.Org.Example' is not valid")]),
    ("bad-portals", SITE.replace("[192.0.2.1, 198.51.100.1]",
                                 "[192.0.2.1, 'portal.example', '2001:db8::1', '192.0.2.1:3260', "
                                 "'192.0.2.9:0']") + "machines:\n",
     [("site.portals[1]", "'portal.example' is not a portal"),
      ("site.portals[2]", "'2001:db8::1' is not a portal"),
      ("site.portals[3]", "the same portal as site.portals[0]"),
      ("site.portals[4]", "'192.0.2.9:0' is not a portal")]),
    ("no-portals", SITE.replace("[192.0.2.1, 198.51.100.1]", "[]") + "machines:\n",
     [("site.portals", "got an empty list")]),
    ("secrets-in-tftp", SITE + "  secrets: tftp/keys/secrets.yaml\nmachines:\n",
     [("site.secrets", "inside site.tftp_root")]),
    ("store-in-tftp", SITE.replace("store: store", "store: tftp/store") + "machines:\n",
     [("site.store", "inside site.tftp_root")]),
    ("bad-boot-server", SITE + "  boot_server: tftp.example\nmachines:\n",
     [("site.boot_server", "'tftp.example' is not an IPv4 address")]),
    ("bad-cmdline", SITE + "  cmdline: 'x=${y}'\nmachines:\n", [("site.cmdline", "without '$'")]),
    ("unknown-group", SITE + "  tftp_group: no-such-group-here\nmachines:\n",
     [("site.tftp_group", "no group 'no-such-group-here'")]),
    ("machines-list", SITE + "machines: [a]\n", [("machines", "expected a mapping of MAC address")]),
    ("duplicate-mac", SITE + f"machines:\n  {M1}: {{name: a, image: trixie}}\n"
                             f"  {M1}: {{name: b, image: trixie}}\n",
     [(f"machines[{M1}]", "duplicate key (lines 7 and 8)")]),
    ("duplicate-mac-spelled-differently",
     SITE + f"machines:\n  {M1}: {{name: a, image: trixie}}\n  52-54-00-12-34-01: {{name: b, image: trixie}}\n",
     [("machines[52-54-00-12-34-01]", f"the same MAC address as machines[{M1}]")]),
    ("duplicate-mac-upper-case",
     SITE + "machines:\n  52:54:00:ab:cd:ef: {name: a, image: trixie}\n  52:54:00:AB:CD:EF: {name: b, image: trixie}\n",
     [("machines[52:54:00:AB:CD:EF]", "the same MAC address as machines[52:54:00:ab:cd:ef]")]),
    ("duplicate-name", SITE + f"machines:\n  {M1}: {{name: a, image: trixie}}\n"
                              "  52:54:00:12:34:02: {name: a, image: trixie}\n",
     [("machines[52:54:00:12:34:02].name", f"'a' is already the name of machines[{M1}]")]),
    ("duplicate-address", SITE + f"machines:\n  {M1}: {{name: a, image: trixie, address: 192.0.2.5}}\n"
                                 "  52:54:00:12:34:02: {name: b, image: trixie, address: 192.0.2.5}\n",
     [("machines[52:54:00:12:34:02].address", "192.0.2.5 is already the address")]),
    ("malformed-macs", SITE + "machines:\n  52:54:00:12:34: {name: a, image: trixie}\n"
                              "  52:54:00-12-34-01: {name: b, image: trixie}\n"
                              "  5254.0012.3401: {name: c, image: trixie}\n"
                              "  52:54:00:12:34:0g: {name: d, image: trixie}\n",
     [("machines[52:54:00:12:34]", "is not a MAC address"),
      ("machines[52:54:00-12-34-01]", "is not a MAC address"),
      ("machines[5254.0012.3401]", "is not a MAC address"),
      ("machines[52:54:00:12:34:0g]", "is not a MAC address")]),
    ("multicast-mac", SITE + "machines:\n  01:00:5e:00:00:01: {name: a, image: trixie}\n"
                             "  ff:ff:ff:ff:ff:ff: {name: b, image: trixie}\n",
     [("machines[01:00:5e:00:00:01]", "is a multicast address"),
      ("machines[ff:ff:ff:ff:ff:ff]", "is a multicast address")]),
    ("zero-mac", SITE + "machines:\n  00:00:00:00:00:00: {name: a, image: trixie}\n",
     [("machines[00:00:00:00:00:00]", "all-zero")]),
    ("bad-hostnames", SITE + f"machines:\n  {M1}: {{name: Web1, image: trixie}}\n"
                             "  52:54:00:12:34:02: {name: web_2, image: trixie}\n"
                             "  52:54:00:12:34:03: {name: -web3, image: trixie}\n"
                             "  52:54:00:12:34:04: {name: web4.example, image: trixie}\n"
                             f"  52:54:00:12:34:05: {{name: {'a' * 64}, image: trixie}}\n",
     [(f"machines[{M1}].name", "'Web1' is not a valid host name (upper-case letters are not allowed)"),
      ("machines[52:54:00:12:34:02].name", "'web_2' is not a valid host name"),
      ("machines[52:54:00:12:34:03].name", "'-web3' is not a valid host name"),
      ("machines[52:54:00:12:34:04].name", "'web4.example' is not a valid host name"),
      ("machines[52:54:00:12:34:05].name", "is not a valid host name")]),
    ("unknown-image", SITE + f"machines:\n  {M1}: {{name: a, image: sid}}\n",
     [(f"machines[{M1}].image", "unknown image 'sid'; expected one of the recipes' images: bookworm, trixie")]),
    ("bad-kernel", SITE + f"machines:\n  {M1}: {{name: a, image: trixie, kernel: latest}}\n"
                          "  52:54:00:12:34:02: {name: b, image: bookworm, kernel: cloud-amd64}\n"
                          "  52:54:00:12:34:03: {name: c, image: trixie, kernel: 6.1/../x}\n",
     [(f"machines[{M1}].kernel", "'latest' is neither a kernel release"),
      ("machines[52:54:00:12:34:02].kernel", "nor a kernel flavour of image 'bookworm' (amd64)"),
      ("machines[52:54:00:12:34:03].kernel", "'6.1/../x' is neither")]),
    ("unknown-machine-key", SITE + f"machines:\n  {M1}: {{name: a, image: trixie, ram: 4G}}\n",
     [(f"machines[{M1}].ram", "unknown key; expected one of name, image, kernel, address")]),
    ("missing-machine-keys", SITE + f"machines:\n  {M1}: {{kernel: amd64}}\n",
     [(f"machines[{M1}].name", "missing required key"), (f"machines[{M1}].image", "missing required key")]),
    ("machine-not-mapping", SITE + f"machines:\n  {M1}: web1\n", [(f"machines[{M1}]", "expected a mapping")]),
    ("bad-address", SITE + f"machines:\n  {M1}: {{name: a, image: trixie, address: 192.0.2.300}}\n"
                           "  52:54:00:12:34:02: {name: b, image: trixie, address: '2001:db8::5'}\n",
     [(f"machines[{M1}].address", "'192.0.2.300' is not an IPv4 address"),
      ("machines[52:54:00:12:34:02].address", "'2001:db8::5' is not an IPv4 address")]),
    # Gateways: each names its portals; site.portals is then not given.
    ("gateways-and-portals", GW_SITE.replace("  tftp_root:", "  portals: [192.0.2.1]\n  tftp_root:")
     + "machines:\n", [("site.portals", "not with site.gateways")]),
    ("no-portals-no-gateways", "site: {authority: 2025-01.org.example, tftp_root: t, store: s}\nmachines:\n",
     [("site.portals", "missing required key")]),
    ("gateway-shared-portal", GW_SITE.replace("gw-b: [198.51.100.1]", "gw-b: [192.0.2.1]")
     + "machines:\n", [("site.gateways.gw-b[0]", "already a portal of gateway gw-a")]),
    ("gateway-bad-name", GW_SITE.replace("gw-b:", "Gw_B:") + "machines:\n",
     [("site.gateways.Gw_B", "is not a gateway name")]),
    ("gateway-no-portals", GW_SITE.replace("[198.51.100.1]", "[]") + "machines:\n",
     [("site.gateways.gw-b", "got an empty list")]),
    ("gateways-not-mapping", GW_SITE.replace("{gw-a: [192.0.2.1], gw-b: [198.51.100.1]}", "[gw-a]")
     + "machines:\n", [("site.gateways", "expected a mapping of gateway host name")]),
    # The rbd store.
    ("unknown-backend", SITE + "  store_backend: nfs\nmachines:\n",
     [("site.store_backend", "unknown value 'nfs'; expected one of file, rbd")]),
    ("rbd-without-settings", SITE + "  store_backend: rbd\nmachines:\n",
     [("site.rbd", "expected a mapping with keys conf, client_id, keyring, pool")]),
    ("rbd-missing-keys", SITE + "  store_backend: rbd\n  rbd: {conf: ceph.conf}\nmachines:\n",
     [("site.rbd.client_id", "missing required key"), ("site.rbd.keyring", "missing required key"),
      ("site.rbd.pool", "missing required key")]),
    ("rbd-bad-values", SITE + "  store_backend: rbd\n  rbd: {conf: 'my ceph.conf', client_id: 'a b',"
     " keyring: tftp/keyring, pool: 'p;q', size: 3}\nmachines:\n",
     [("site.rbd.size", "unknown key"), ("site.rbd.client_id", "'a b' is not valid"),
      ("site.rbd.pool", "'p;q' is not valid"), ("site.rbd.conf", "has a space"),
      ("site.rbd.keyring", "inside site.tftp_root")]),
    ("rbd-but-file-backend", SITE + "  rbd: {conf: c, client_id: i, keyring: k, pool: p}\nmachines:\n",
     [("site.rbd", "site.store_backend is not rbd")]),
]


@pytest.mark.parametrize("text, expected", [case[1:] for case in BAD], ids=[case[0] for case in BAD])
def test_bad_inventory(tmp_path, text, expected):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_inventory(path, RECIPES)
    problems = info.value.problems
    for key, fragment in expected:
        prefix = f"{path}: {key}: " if key else f"{path}:"
        assert any(p.startswith(prefix) and fragment in p for p in problems), (key, fragment, problems)
    assert len(problems) == len(expected), problems


def test_yaml_error_names_the_line(tmp_path):
    path = write(tmp_path, SITE + "machines:\n  52:54:00:12:34:01: {name: a, image: trixie\n")
    with pytest.raises(ConfigError) as info:
        load_inventory(path, RECIPES)
    assert info.value.problems[0].startswith(f"{path}:8:")


@pytest.mark.parametrize("text, mac", [("52:54:00:12:34:01", "52:54:00:12:34:01"),
                                       ("52-54-00-AB-cd-EF", "52:54:00:ab:cd:ef"),
                                       ("52:54:00:12:34", None), ("52:54-00:12:34:01", None),
                                       ("525400123401", None), (" 52:54:00:12:34:01", None)])
def test_canonical_mac(text, mac):
    assert canonical_mac(text) == mac


def test_multicast_bit():
    assert is_multicast("01:00:5e:00:00:01") and is_multicast("33:33:00:00:00:01")
    assert not is_multicast("52:54:00:12:34:01") and not is_multicast("02:00:00:00:00:01")


@pytest.mark.parametrize("text, portal", [
    ("192.0.2.1", "192.0.2.1"), ("192.0.2.1:3260", "192.0.2.1"), ("192.0.2.1:3261", "192.0.2.1:3261"),
    ("[2001:DB8:0::1]", "[2001:db8::1]"), ("[2001:db8::1]:860", "[2001:db8::1]:860"),
    ("2001:db8::1", None), ("192.0.2.256", None), ("192.0.2.1:65536", None), ("192.0.2.1:03260", None),
    ("host.example", None), ("[192.0.2.1]", None), ("", None)])
def test_parse_portal(text, portal):
    assert parse_portal(text) == portal


def test_gateways_name_the_portals(tmp_path):
    site = load(tmp_path, GW_SITE.replace("[198.51.100.1]", "[198.51.100.1, '[2001:db8::1]:3261']")
                + "machines:\n").site
    assert [(g.name, g.portals) for g in site.gateways] == [
        ("gw-a", ("192.0.2.1",)), ("gw-b", ("198.51.100.1", "[2001:db8::1]:3261"))]
    assert site.portals == ("192.0.2.1", "198.51.100.1", "[2001:db8::1]:3261")


def test_a_site_without_a_backend_is_file(tmp_path):
    from pipeline.fleet.store import open_store
    site = load(tmp_path, GOOD).site
    assert (site.store_backend, site.rbd, site.gateways) == ("file", None, ())
    assert open_store(site).kind == "file"


def test_an_rbd_site_opens_an_rbd_store(tmp_path):
    from pipeline.fleet.store import open_store
    site = load(tmp_path, SITE + "  store_backend: rbd\n  rbd: {conf: ceph/ceph.conf, client_id: fleet,"
                          " keyring: ceph/fleet.keyring, pool: machines}\nmachines:\n").site
    base = tmp_path / "fleet"
    assert site.rbd.conf == base / "ceph/ceph.conf" and site.rbd.keyring == base / "ceph/fleet.keyring"
    store = open_store(site)
    assert store.kind == "rbd"
    assert (store.settings.client_id, store.settings.pool) == ("fleet", "machines")
