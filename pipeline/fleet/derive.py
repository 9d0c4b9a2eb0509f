"""Everything a machine needs, derived from its MAC address by one rule.

The inventory gives a machine three things: its MAC address (the key), a
name and an image.  All the rest is derived here, so that nothing is typed
twice and nothing can disagree::

    MAC address    52:54:00:12:34:01    canonical: lower case, colons (input may
                                        be upper case or use '-')
    mac_hyphen     52-54-00-12-34-01    iPXE's ${mac:hexhyp}; names its files
    initiator      iqn.<authority>:initiator.525400123401
    target         iqn.<authority>:root.525400123401
    CHAP user      the initiator name   (the usual convention; unique, as tgt's
                                        CHAP accounts are global)
    CHAP password  random, made once and kept in the secrets file (not derived)
    disk (LUN)     <store>/disks/52-54-00-12-34-01.ext4
    record         <store>/records/52-54-00-12-34-01.json
    fs UUID        uuid5(NAMESPACE, "machine-root" \\0 authority \\0 MAC)
    SCSI identity  scsi_id: uuid5(NAMESPACE, "scsi-disk" \\0 authority \\0 MAC),
                   as 32 hex digits; scsi_sn: the MAC as 12 hex digits.  What
                   the disk's gateways (tgt) report in VPD pages 0x80/0x83:
                   every gateway sets the same values, so the paths through
                   all of them have one WWID and become one multipath map.
    hostname       the inventory name (systemd.hostname= on the kernel command line)
    TFTP files     machines/52-54-00-12-34-01.ipxe        iPXE script
                   machines/52-54-00-12-34-01.auth.cpio   CHAP credentials (initrd)
                   pxelinux.cfg/01-52-54-00-12-34-01      legacy PXE

With authority ``2025-01.org.example`` that is
``iqn.2025-01.org.example:initiator.525400123401`` and
``iqn.2025-01.org.example:root.525400123401``, and the file-system UUID
``6406b288-c69f-5174-bac2-004c70946789`` (NAMESPACE is
6f1b8d0e-3c4e-4f0e-9a55-2f0b6c1d7a10, the project's fixed UUID namespace).

The machine's kernel command line names all of it::

    iscsitarget=<target>,<portal 1>,<portal 2>... iscsi_initiator=<initiator>
    root=LABEL=<the triple's root label> ro systemd.hostname=<name> <site cmdline>

and its CHAP user and password travel in the per-machine initrd (file
etc/open-iscsi-boot/chap, mode 0600: ``username=...`` and ``password=...``),
never on the command line.

The disk, the target, the initiator and the UUID depend on the MAC (and the
site's authority) only, never on the name: renaming a machine changes its
hostname and nothing else, so it never orphans its disk.  Moving the boot
network card to another machine moves the identity with it, which is what a
diskless machine is.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.ext4 import derived_uuid
from pipeline.fleet.inventory import Machine, Site
from pipeline.naming import Store, TftpTree, initiator_iqn, target_iqn

__all__ = ["Derived", "derive"]


@dataclass(frozen=True)
class Derived:
    mac: str
    hostname: str
    initiator: str
    target: str
    chap_user: str
    fs_uuid: str
    scsi_id: str            # 32 hex digits
    scsi_sn: str            # 12 hex digits
    disk: Path
    record: Path
    boot_script: str        # relative to the TFTP root
    auth_initrd: str        # relative to the TFTP root
    pxelinux_config: str    # relative to the TFTP root


def derive(site: Site, machine: Machine) -> Derived:
    """The one derivation: see the module documentation."""
    mac = machine.mac
    store, tftp = Store(site.store), TftpTree(site.tftp_root)
    initiator = initiator_iqn(site.authority, mac)
    return Derived(
        mac=mac,
        hostname=machine.name,
        initiator=initiator,
        target=target_iqn(site.authority, mac),
        chap_user=initiator,
        fs_uuid=derived_uuid("machine-root", site.authority, mac),
        scsi_id=derived_uuid("scsi-disk", site.authority, mac).replace("-", ""),
        scsi_sn=mac.replace(":", ""),
        disk=store.disk(mac),
        record=store.record(mac),
        boot_script=tftp.machine_script(mac),
        auth_initrd=tftp.auth_initrd(mac),
        pxelinux_config=tftp.pxelinux_config(mac),
    )
