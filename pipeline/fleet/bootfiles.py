"""The text (and one small archive) that publish writes: boot scripts, the
per-machine CHAP initrd, and the tgt and dnsmasq configurations.

Pure functions of their arguments: the same inventory and triples give the
same bytes, which is what lets publish leave unchanged files alone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from pipeline.fleet.derive import Derived
from pipeline.cpio import S_IFDIR, S_IFREG, write_newc
from pipeline.fleet.inventory import Machine, Site
from pipeline.naming import TftpTree

# The contract with the initramfs (open-iscsi-boot): this file, mode 0600,
# two lines username=<user> and password=<secret>.
CHAP_FILE = "etc/open-iscsi-boot/chap"
_CHAP_VALUE_RE = re.compile(r"[A-Za-z0-9._:@-]+")


@dataclass(frozen=True)
class BootSet:
    """What one machine boots: a kernel and initramfs in the TFTP tree, and
    the LABEL of the root file system that matches them."""

    image: str
    release: str
    flavour: str
    kernel: str         # relative to the TFTP root
    initrd: str         # relative to the TFTP root
    label: str


def kernel_cmdline(site: Site, derived: Derived, boot: BootSet) -> str:
    portals = ",".join(site.portals)
    args = [f"iscsitarget={derived.target},{portals}", f"iscsi_initiator={derived.initiator}",
            f"root=LABEL={boot.label}", "ro", f"systemd.hostname={derived.hostname}"]
    if site.cmdline.strip():
        args.append(site.cmdline.strip())
    return " ".join(args)


def _banner(comment: str, derived: Derived, boot: BootSet) -> str:
    return (f"{comment} {derived.hostname} ({derived.mac}): image {boot.image}, kernel {boot.release}\n"
            f"{comment} Made by publish from the inventory; edits are overwritten.\n")


def machine_ipxe(site: Site, derived: Derived, boot: BootSet) -> str:
    """The per-MAC iPXE script.  Absolute paths: iPXE resolves them against
    the server the script came from."""
    return ("#!ipxe\n" + _banner("#", derived, boot)
            + f"kernel /{boot.kernel} {kernel_cmdline(site, derived, boot)}\n"
            + f"initrd /{boot.initrd}\n"
            + f"initrd /{derived.auth_initrd}\n"
            + "boot\n")


def pxelinux_config(site: Site, derived: Derived, boot: BootSet) -> str:
    """The same boot for PXELINUX (INITRD takes a comma-separated list)."""
    return (_banner("#", derived, boot)
            + "DEFAULT diskless\n"
            + "LABEL diskless\n"
            + f"  KERNEL /{boot.kernel}\n"
            + f"  INITRD /{boot.initrd},/{derived.auth_initrd}\n"
            + f"  APPEND {kernel_cmdline(site, derived, boot)}\n")


def boot_ipxe() -> str:
    """The script every iPXE client gets first: chain to its own script."""
    script = f"/{TftpTree.MACHINES}/${{mac:hexhyp}}.ipxe"
    return ("#!ipxe\n"
            "# Made by publish: chain to this machine's own script, named by its MAC.\n"
            f"chain --autofree {script} || goto unknown\n"
            ":unknown\n"
            f"echo No boot script {script} for MAC ${{mac}}:\n"
            "echo this machine is not in the inventory, or the inventory is not published.\n"
            "echo Trying the next boot device in 10 seconds.\n"
            "sleep 10 ||\n"
            "exit 1\n")


def chap_initrd(user: str, password: str) -> bytes:
    """The per-machine initrd that iPXE adds after the triple's initramfs."""
    for value in (user, password):
        if not _CHAP_VALUE_RE.fullmatch(value):
            raise ValueError("CHAP user names and passwords must be of A-Z a-z 0-9 . _ : @ -")
    content = f"username={user}\npassword={password}\n".encode("ascii")
    # The kernel creates no missing parent folders when it unpacks a cpio,
    # and applies each folder entry's mode even when the folder exists:
    # open-iscsi-boot's hook makes etc/open-iscsi-boot 0700, and so do we.
    return write_newc([("etc", S_IFDIR | 0o755, b""),
                       ("etc/open-iscsi-boot", S_IFDIR | 0o700, b""),
                       (CHAP_FILE, S_IFREG | 0o600, content)])


# tgt admits an initiator that passes its address ACL *or* its name ACL
# (tgt 1.0.83 and later), and tgt-admin binds the address ACL "ALL" to every
# target that names no initiator-address: the name ACL would then never
# refuse anyone.  The limited broadcast address is never the source of a TCP
# connection (and, compared against an IPv6 peer, never equals its 20-bit
# flow label), so with it as the only address the name decides.
NO_ADDRESS = "255.255.255.255"


def tgt_header(title: str) -> list[str]:
    """The opening lines of every tgt configuration publish makes."""
    return [f"# {title}",
            "# Made by publish; edits are overwritten.  Holds CHAP secrets: keep it mode 0600.",
            f"# initiator-address {NO_ADDRESS} matches no initiator: it only stops tgt-admin",
            "# from allowing every address, so that initiator-name is what admits a machine.",
            "default-driver iscsi", ""]


def tgt_access(derived: Derived, password: str) -> list[str]:
    """The lines of a target that admit its machine alone (name ACL and CHAP)."""
    return [f"initiator-address {NO_ADDRESS}",
            f"initiator-name {derived.initiator}",
            f"incominguser {derived.chap_user} {password}"]


def tgt_config(inventory_path: Path, entries: list[tuple[Machine, Derived, str]]) -> str:
    """tgt's targets.conf: one target per machine, open only to that
    machine's initiator name with its CHAP password."""
    lines = tgt_header(f"iSCSI targets of the fleet in {inventory_path}, one per machine.")
    for machine, derived, password in entries:
        lines += [f"# {machine.name} ({derived.mac})",
                  f"<target {derived.target}>",
                  f"    backing-store {derived.disk}",
                  *(f"    {line}" for line in tgt_access(derived, password)),
                  "</target>", ""]
    return "\n".join(lines)


def dnsmasq_config(inventory_path: Path, site: Site, machines: list[tuple[Machine, Derived]]) -> str:
    """DHCP host entries and TFTP/iPXE boot for dnsmasq.  No dhcp-range:
    the subnets are the site's; add them beside this file (conf-file=)."""
    server = f",,{site.boot_server}" if site.boot_server else ""
    lines = [f"# DHCP and TFTP for the fleet in {inventory_path}.",
             "# Made by publish; edits are overwritten.",
             "enable-tftp",
             f"tftp-root={site.tftp_root}",
             "# The CHAP initrds are readable by this group only (mode 0640), not by all.",
             f"group={site.tftp_group}",
             "# iPXE says so in its requests (option 175): it gets the boot script;",
             "# other PXE clients get the legacy boot loader.",
             "dhcp-match=set:ipxe,175",
             f"dhcp-boot=tag:ipxe,{TftpTree.BOOT_SCRIPT}{server}",
             f"dhcp-boot=tag:!ipxe,{site.pxe_boot_file}{server}",
             ""]
    for machine, derived in machines:
        address = f",{machine.address}" if machine.address else ""
        lines.append(f"dhcp-host={derived.mac},{derived.hostname}{address}")
    return "\n".join(lines) + "\n"
