"""pipeline/fleet/gateways.py: one tgt configuration per gateway, the same disks on each."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from pipeline.errors import ConfigError
from pipeline.fleet.derive import derive
from pipeline.fleet.gateways import Gateway, from_site, gateway_tgt_configs
from pipeline.fleet.inventory import Gateway as InventoryGateway, Machine
from pipeline.fleet.store.file import FileStore
from pipeline.fleet.store.rbd import RbdSettings, RbdStore
from pipeline.naming import Store
from tests.unit.test_derive import SITE, WEB1

WEB2 = Machine(mac="52:54:00:12:34:02", name="web2", image="trixie", kernel=None, address=None,
               key="machines[52:54:00:12:34:02]", flavour="amd64")
INVENTORY = Path("/srv/iscsi/inventory.yaml")
GATEWAYS = (Gateway("gw-a", ("192.0.2.1",)), Gateway("gw-b", ("198.51.100.1", "203.0.113.1")))
RBD = RbdStore(RbdSettings(Path("/etc/ceph/site.conf"), "fleet", Path("/etc/ceph/fleet.keyring"),
                           "fleet"), Store(Path("/srv/iscsi")))

TARGETS = """\
default-driver iscsi

# web1 (52:54:00:12:34:01)
<target iqn.2025-01.org.example:root.525400123401>
    controller_tid 1
    bs-type rbd
    bsopts "'conf=/etc/ceph/site.conf;id=fleet'"
    backing-store fleet/52-54-00-12-34-01.ext4
    write-cache off
    scsi_id 94aa71b456b255b09b0fe8d92f759c25
    scsi_sn 525400123401
    initiator-address 255.255.255.255
    initiator-name iqn.2025-01.org.example:initiator.525400123401
    incominguser iqn.2025-01.org.example:initiator.525400123401 secret-1
</target>

# web2 (52:54:00:12:34:02)
<target iqn.2025-01.org.example:root.525400123402>
    controller_tid 2
    bs-type rbd
    bsopts "'conf=/etc/ceph/site.conf;id=fleet'"
    backing-store fleet/52-54-00-12-34-02.ext4
    write-cache off
    scsi_id {web2_id}
    scsi_sn 525400123402
    initiator-address 255.255.255.255
    initiator-name iqn.2025-01.org.example:initiator.525400123402
    incominguser iqn.2025-01.org.example:initiator.525400123402 secret-2
</target>
"""


def entries(order=(WEB1, WEB2)):
    return [(m, derive(SITE, m), f"secret-{m.mac[-1]}") for m in order]


def test_golden_text_for_each_gateway():
    configs = gateway_tgt_configs(INVENTORY, GATEWAYS, entries(), RBD)
    assert sorted(configs) == ["gw-a", "gw-b"]
    web2_id = derive(SITE, WEB2).scsi_id
    assert re.fullmatch(r"[0-9a-f]{32}", web2_id) and web2_id != derive(SITE, WEB1).scsi_id
    for name, portals in (("gw-a", "192.0.2.1"), ("gw-b", "198.51.100.1, 203.0.113.1")):
        assert configs[name] == (
            f"# iSCSI targets of the fleet in {INVENTORY} on gateway {name}, one per machine.\n"
            f"# Its tgtd listens on {portals} (tgtd --iscsi portal=...); every gateway has the same targets.\n"
            "# Made by publish; edits are overwritten.  Holds CHAP secrets: keep it mode 0600.\n"
            "# initiator-address 255.255.255.255 matches no initiator: it only stops tgt-admin\n"
            "# from allowing every address, so that initiator-name is what admits a machine.\n"
            + TARGETS.format(web2_id=web2_id))


def test_the_same_tid_whatever_the_inventory_order():
    forward = gateway_tgt_configs(INVENTORY, GATEWAYS, entries((WEB1, WEB2)), RBD)
    backward = gateway_tgt_configs(INVENTORY, GATEWAYS, entries((WEB2, WEB1)), RBD)
    assert forward == backward


def test_gateways_from_the_inventory_site():
    site = type("S", (), {"gateways": (InventoryGateway("gw-a", ("192.0.2.1",)),)})()
    assert from_site(site) == (Gateway("gw-a", ("192.0.2.1",), 0),)


@pytest.mark.parametrize("gateways, expected", [
    ((), "site.gateways: expected at least one gateway"),
    ((Gateway("a", ("192.0.2.1",)), Gateway("a", ("192.0.2.2",))), "site.gateways.a: a second gateway"),
    ((Gateway("a", ()),), "site.gateways.a: expected a non-empty list of its portals"),
    ((Gateway("a", ("192.0.2.1",)), Gateway("b", ("192.0.2.1",))),
     "site.gateways.b: portal 192.0.2.1 is already gateway a's"),
])
def test_bad_gateways_one_line_each(gateways, expected):
    with pytest.raises(ConfigError) as info:
        gateway_tgt_configs(INVENTORY, gateways, entries(), RBD)
    assert expected in str(info.value)


def test_a_file_store_cannot_have_gateways(tmp_path):
    with pytest.raises(ConfigError, match="expected site.store_backend rbd"):
        gateway_tgt_configs(INVENTORY, GATEWAYS, entries(), FileStore(Store(tmp_path)))


def _free_port() -> int:
    for port in range(31000 + os.getpid() % 1000, 32767):
        if not os.path.exists(f"/var/run/tgtd/socket.{port}"):
            return port
    pytest.skip("no free tgtd control port")


@pytest.mark.skipif(os.geteuid() != 0 or not all(shutil.which(t) for t in ("tgtd", "tgt-admin", "ip")),
                    reason="needs root, tgt and ip")
def test_tgt_admin_reads_it_as_meant(tmp_path):
    """tgt-admin (pretending, against a real tgtd in a namespace of ours)
    turns the text into the tid, the rbd backing store, the SCSI identity
    and write-cache off that it is meant to."""
    conf = tmp_path / "gw-a.conf"
    conf.write_text(gateway_tgt_configs(INVENTORY, GATEWAYS, entries(), RBD)["gw-a"])
    ns, port = f"gwunit{os.getpid()}", _free_port()
    Path("/var/run/tgtd").mkdir(exist_ok=True)
    subprocess.run(["ip", "netns", "add", ns], check=True)
    tgtd = None
    try:
        tgtd = subprocess.Popen(["ip", "netns", "exec", ns, "tgtd", "-f", "-C", str(port)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        show = ["ip", "netns", "exec", ns, "tgtadm", "-C", str(port), "--mode", "target", "--op", "show"]
        deadline = time.monotonic() + 10
        while subprocess.run(show, capture_output=True).returncode != 0:
            assert time.monotonic() < deadline, "tgtd did not answer"
            time.sleep(0.1)
        out = subprocess.run(["ip", "netns", "exec", ns, "tgt-admin", "-C", str(port), "-p", "-e",
                              "-c", str(conf)], capture_output=True, text=True, check=True).stdout
    finally:
        subprocess.run(["ip", "netns", "exec", ns, "tgtadm", "-C", str(port), "--lld", "iscsi", "--op", "delete",
                        "--mode", "system"], capture_output=True)
        if tgtd is not None:
            try:
                tgtd.wait(10)
            except subprocess.TimeoutExpired:
                tgtd.kill()
                tgtd.wait()
        subprocess.run(["ip", "netns", "del", ns], check=False)
    web1, web2 = derive(SITE, WEB1), derive(SITE, WEB2)
    assert f"--op new --mode target --tid 1 -T {web1.target}" in out
    assert f"--op new --mode target --tid 2 -T {web2.target}" in out
    assert re.search(r"--op new --mode logicalunit --tid 1 --lun 1 -b \"fleet/52-54-00-12-34-01\.ext4\""
                     r" +--bstype rbd --bsopts 'conf=/etc/ceph/site\.conf;id=fleet'", out), out
    assert f"--tid 1 --lun=1 --params scsi_id=\"{web1.scsi_id}\"" in out
    assert f"--tid 1 --lun=1 --params scsi_sn=\"{web1.scsi_sn}\"" in out
    # write-cache off: mode page 8 with the WCE bit clear.
    assert "--tid 1 --lun=1 --params mode_page=8:0:18:0x10:0:0xff" in out
    assert f"--op bind --mode target --tid 1 -Q {web1.initiator}" in out
    assert "-I ALL" not in out
