#!/usr/bin/env python3
"""Publish benchmark: 100 generated machines on one template.

    python3 bench/publish.py [--triples out/triples] [--machines 100]
                             [--host-machines N] [--keep]

Uses the newest triple in ``--triples`` if given, else makes a test triple:
a ~700 MB sparse ext4 root (``mkfs.ext4 -d``) from a small tree plus a
300 MB file of random bytes, so that the image holds real data, not only
holes.  Then, for an inventory of ``--machines`` generated machines:

(a) on the host file system (here ext4: no reflinks, so sparse copies):
    publish into a scratch folder, then publish again (a no-op);
(b) on a loop-mounted XFS made with ``mkfs.xfs -m reflink=1`` (reflinks):
    the same.  The loop mount is removed afterwards.

For each: seconds for the publish and for the no-op, and the disk the clones
use against 100 full copies (their apparent size).  On (a) the clones' own
blocks are their st_blocks.  On (b) st_blocks counts shared blocks in every
file, so the figure is what the file system lost (statvfs before and after)
less the template and the boot files.  Goals: <= 10 s for 100 machines,
clones <= 5 % of the full copies where reflinks allow.

(a) copies the template's data once per machine: ``--host-machines`` (default
``--machines``) limits it, and it is capped to a quarter of the free space;
the figures are then scaled to 100.  Needs
root, and xfsprogs for (b) (``apt-get install -y xfsprogs``; without it (b)
is skipped).  Work happens under out/bench-publish/ (removed first; kept
with --keep, the XFS image is always removed).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))

from pipeline import ext4, runner
from pipeline.build import manifest  # noqa: E402
from pipeline.fleet.store.file import allocated  # noqa: E402
from pipeline.fsutil import mounts_under, remove_tree  # noqa: E402
from pipeline.fleet.inventory import load_inventory  # noqa: E402
from pipeline.naming import Layout, Triple  # noqa: E402
from pipeline.fleet.plan import read_built  # noqa: E402
from pipeline.fleet.publish import publish  # noqa: E402
from pipeline.build.recipe import Initramfs, Recipe, RootImage  # noqa: E402

MIB = 1 << 20
RELEASE = "6.1.0-99-amd64"
GOAL_SECONDS, GOAL_SHARE = 10.0, 0.05


def test_triple(work: Path) -> Triple:
    """A triple whose root has real data: modules folder, fstab, random bytes."""
    tree = work / "tree"
    (tree / "usr/lib/modules" / RELEASE / "kernel").mkdir(parents=True)
    (tree / "lib").symlink_to("usr/lib")
    (tree / "etc").mkdir()
    (tree / "etc/fstab").write_text("LABEL=bench-root / ext4 defaults 0 1\n")
    with open(tree / "usr/lib/data.bin", "wb") as handle:
        for _ in range(300):
            handle.write(os.urandom(MIB))
    triple = Layout(work / "out").triple("bench", RELEASE)
    triple.directory.mkdir(parents=True)
    triple.kernel.write_bytes(os.urandom(8 * MIB))
    triple.initrd.write_bytes(os.urandom(30 * MIB))
    ext4.make_image(tree, triple.root, label="bench-root", fs_uuid=ext4.derived_uuid("bench"),
                    hash_seed=ext4.derived_uuid("bench-seed"), headroom_percent=100,
                    headroom_mib=0, source_date_epoch=0)
    parts = {part: manifest.part_entry(path, path.name) for part, path in triple.parts().items()}
    parts["root"].update(label="bench-root")
    triple.manifest.write_text(json.dumps({"format": 1, "image": "bench", "flavour": "amd64",
                                           "kernel_release": RELEASE, "parts": parts}))
    remove_tree(tree)
    return triple


def inventory(site_dir: Path, image: str, flavour: str, count: int):
    lines = ["site:", "  authority: 2025-01.org.example", "  portals: [192.0.2.1, 198.51.100.1]",
             "  tftp_root: tftp", "  store: store", "machines:"]
    lines += [f"  52:54:00:be:{i // 256:02x}:{i % 256:02x}: {{name: m{i:03d}, image: {image}}}"
              for i in range(1, count + 1)]
    site_dir.mkdir(parents=True, exist_ok=True)
    (site_dir / "inventory.yaml").write_text("\n".join(lines) + "\n")
    recipe = Recipe(path=Path(f"{image}.yaml"), image=image, suite=image, mirror="file:///unused",
                    bootstrapper="mmdebstrap", packages=("x",), kernel_flavours=(flavour,),
                    overlays=(), root_image=RootImage(), initramfs=Initramfs(),
                    source_date_epoch=0, description="")
    return load_inventory(site_dir / "inventory.yaml", {image: recipe})


def fs_used(path: Path) -> int:
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def run(label: str, site_dir: Path, triples: Path, image: str, flavour: str, count: int,
        shared_fs: bool) -> dict[str, float]:
    inv = inventory(site_dir, image, flavour, count)
    used_before = fs_used(site_dir)
    start = time.monotonic()
    publish(inv, triples, log=lambda line: None)
    seconds = time.monotonic() - start
    used = fs_used(site_dir) - used_before
    start = time.monotonic()
    report = publish(inv, triples, log=lambda line: None)
    noop = time.monotonic() - start
    assert report.changes == 0, report.summary()
    store = site_dir / "store"
    disks = sorted((store / "disks").glob("*.ext4"))
    apparent = sum(d.stat().st_size for d in disks)
    own = sum(allocated(d) for d in disks)
    if shared_fs:
        others = sum(allocated(p) for p in (store / "templates").iterdir())
        others += sum(allocated(p) for p in (site_dir / "tftp").rglob("*") if p.is_file())
        own = max(used - others, 0)
    share = own / apparent
    print(f"{label}: {count} machines published in {seconds:.2f} s "
          f"({seconds / count * 100:.2f} s per 100), no-op publish {noop:.2f} s; "
          f"clones use {own / MIB:.1f} MiB against {apparent / MIB:.0f} MiB for full copies "
          f"= {share:.2%}", flush=True)
    return {"seconds": seconds, "per100": seconds / count * 100, "noop": noop, "share": share}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--triples", type=Path, help="use the newest triple in this folder")
    parser.add_argument("--machines", type=int, default=100)
    parser.add_argument("--host-machines", type=int, help="machines for (a); default --machines")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    runner.require_tools(["mkfs.ext4", "tune2fs", "dumpe2fs", "debugfs", "cp"])
    work = PROJECT / "out" / "bench-publish"
    remove_tree(work)
    work.mkdir(parents=True)
    results = {}
    try:
        if args.triples:
            built, problems = read_built(args.triples)
            if problems or not built:
                print("\n".join(problems) or f"no triple in {args.triples}", file=sys.stderr)
                return 2
            chosen = max(built, key=lambda b: b.triple.root.stat().st_mtime)
        else:
            triple = test_triple(work)
            chosen = next(b for b in read_built(triple.directory)[0])
        triples, image, flavour = chosen.triple.directory, chosen.image, chosen.flavour
        root = chosen.triple.root
        print(f"template: {root} ({root.stat().st_size / MIB:.0f} MiB, "
              f"{allocated(root) / MIB:.0f} MiB allocated)", flush=True)

        host_count = args.host_machines or args.machines
        fits = int(shutil.disk_usage(work).free / 4 // max(allocated(root), 1))
        if fits < host_count:
            print(f"host: only {fits} machines fit in a quarter of the free space; "
                  "figures are scaled to 100", flush=True)
            host_count = max(fits, 1)
        results["host"] = run("host file system (sparse copies)", work / "host", triples,
                              image, flavour, host_count, shared_fs=False)
        remove_tree(work / "host")

        if shutil.which("mkfs.xfs", path=runner.PATH):
            results["xfs"] = xfs(work, triples, image, flavour, args.machines, root)
        else:
            print("xfs: skipped, mkfs.xfs not found (apt-get install -y xfsprogs)")
    finally:
        if not args.keep:
            remove_tree(work)
    for name, r in results.items():
        ok_time = "meets" if r["per100"] <= GOAL_SECONDS else "misses"
        ok_share = "meets" if r["share"] <= GOAL_SHARE else "misses"
        print(f"{name}: {r['per100']:.2f} s per 100 machines ({ok_time} the {GOAL_SECONDS:.0f} s goal), "
              f"clones {r['share']:.2%} of full copies ({ok_share} the {GOAL_SHARE:.0%} goal), "
              f"no-op {r['noop']:.2f} s")
    return 0


def xfs(work: Path, triples: Path, image: str, flavour: str, count: int, root: Path) -> dict[str, float]:
    disk_image, mount = work / "xfs.img", work / "xfs"
    with open(disk_image, "wb") as handle:
        handle.truncate(max(4 << 30, 3 * root.stat().st_size))
    runner.run(["mkfs.xfs", "-q", "-m", "reflink=1", str(disk_image)])
    mount.mkdir()
    runner.run(["mount", "-o", "loop", str(disk_image), str(mount)])
    try:
        return run("XFS with reflink=1 (reflinks)", mount / "site", triples, image, flavour,
                   count, shared_fs=True)
    finally:
        runner.run(["umount", str(mount)], check=False)
        if mounts_under(mount):
            runner.run(["umount", "--lazy", str(mount)], check=False)
        if not mounts_under(mount):
            disk_image.unlink()


if __name__ == "__main__":
    sys.exit(main())
