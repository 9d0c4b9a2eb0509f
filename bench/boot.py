#!/usr/bin/env python3
"""Boot benchmark: stock Debian single-path iSCSI boot against open-iscsi-boot.

    python3 bench/boot.py out/triples/<image>_<release>.manifest.json [--rounds N]

Same kernel, same root image copy, in the same lab, one after the other:
(a) stock Debian: an initramfs made by the image's own mkinitramfs from a
    copy of the triple's root tree with open-iscsi-boot purged (open-iscsi
    and multipath-tools-boot stay), booted with iscsi_target_name= /
    iscsi_target_ip= on one path;
(b) the triple's own initramfs over two paths (iscsitarget=).
Prints the time to the multi-user target of each (median of the rounds),
their ratio (goal <= 1.1) and the sizes of the two initramfs files (goal: ours
no larger).  Needs the build's work tree (out/work/<image>/<flavour>/rootfs).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))

from pipeline.build import chroot  # noqa: E402
from pipeline.fsutil import copy_tree, read_json, remove_tree  # noqa: E402
from pipeline.lab.namespace import INITIATOR_IQN, PORTALS, TARGET_IQN, Lab  # noqa: E402
from pipeline.naming import Layout, Triple  # noqa: E402


def stock_initramfs(root_tree: Path, release: str, work: Path) -> Path:
    """Stock Debian's initramfs for the same kernel and image settings.

    Made from a copy of the triple's own root tree with open-iscsi-boot
    purged, so that the difference is the package and nothing else (the
    pipeline's initramfs settings, e.g. FSTYPE=ext4 which brings in fsck,
    apply to both).
    """
    tree = work / "stock-tree"
    copy_tree(root_tree, tree)
    try:
        with chroot.mounted(tree):
            chroot.run(tree, ["dpkg", "--purge", "open-iscsi-boot"],
                       env={"INITRD": "No", "DEBIAN_FRONTEND": "noninteractive"})
            chroot.run(tree, ["mkinitramfs", "-o", "/tmp/stock.img", release])
        out = work / "stock.initrd.img"
        shutil.copyfile(tree / "tmp/stock.img", out)
        return out
    finally:
        remove_tree(tree)


def time_boot(lab: Lab, cmdline: str, name: str) -> float:
    guest = lab.boot(cmdline=cmdline, name=name)
    try:
        return guest.wait_ready(600)
    finally:
        guest.poweroff(60)
        guest.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("manifest", type=Path)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    triple = Triple.from_manifest(args.manifest.resolve())
    manifest = read_json(triple.manifest)
    layout = Layout(triple.directory.parent)
    root_tree = layout.root_tree(triple.image, manifest["flavour"])
    if not root_tree.is_dir():
        parser.error(f"{root_tree}: no root tree (build the triple first)")
    label = manifest["parts"]["root"]["label"]
    work = Path(tempfile.mkdtemp(prefix="bench-boot-"))
    try:
        stock = stock_initramfs(root_tree, triple.release, work)
        stock_triple = work / "stock"
        stock_triple.mkdir()
        for part in ("kernel", "root", "manifest"):
            (stock_triple / triple.path(part).name).symlink_to(triple.path(part))
        (stock_triple / triple.initrd.name).symlink_to(stock)
        ours_times, stock_times = [], []
        first = PORTALS[0]
        with Lab(triple, work / "lab") as lab:
            stock_lab_triple = Triple(stock_triple, triple.image, triple.release)
            for round_ in range(args.rounds):
                lab.triple = stock_lab_triple
                stock_times.append(time_boot(lab, (
                    # stock configures one device: the one on the portal's subnet
                    f"console=ttyS0,115200 root=LABEL={label} ro panic=10 ip=:::::ens2:dhcp "
                    f"iscsi_initiator={INITIATOR_IQN} iscsi_target_name={TARGET_IQN} "
                    f"iscsi_target_ip={first}"), f"stock{round_}"))
                print(f"(a) stock, one path:       {stock_times[-1]:.1f} s", flush=True)
                lab.triple = triple
                ours_times.append(time_boot(lab, lab.cmdline(), f"ours{round_}"))
                print(f"(b) open-iscsi-boot, two:  {ours_times[-1]:.1f} s", flush=True)
        a, b = statistics.median(stock_times), statistics.median(ours_times)
        stock_size, ours_size = stock.stat().st_size, triple.initrd.stat().st_size
        print("\nresults")
        print(f"  boot to multi-user  stock {a:.1f} s  ours {b:.1f} s  ratio {b / a:.2f}"
              f"  goal <= 1.10: {'met' if b / a <= 1.10 else 'NOT met'}")
        print(f"  initramfs size      stock {stock_size / 1e6:.1f} MB  ours {ours_size / 1e6:.1f} MB"
              f"  ratio {ours_size / stock_size:.3f}  goal <= 1: "
              f"{'met' if ours_size <= stock_size else 'NOT met'}")
    finally:
        remove_tree(work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
