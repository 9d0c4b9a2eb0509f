"""Step 3: the finished root tree of one triple.

From a copy of the kernel tree: apply the recipe's overlays, install the
injected boot packages, write the generic fstab and initramfs settings,
strip per-machine state, install the first-boot units, and only then make
the initramfs with the image's own initramfs-tools -- or put in the one made
earlier from the same inputs (see :mod:`pipeline.initramfs_cache`).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Sequence

from pipeline.build import chroot, generic, initramfs_cache, lock
from pipeline import runner
from pipeline.errors import PipelineError
from pipeline.fsutil import commit, copy_tree, fresh_partial
from pipeline.build.recipe import Recipe

INITRAMFS_CONF = "etc/initramfs-tools/conf.d/zz-image-pipeline.conf"


def apply_overlay(tree: Path, overlay: Path) -> list[str]:
    """Copy an overlay folder into the tree; files become root-owned.

    Modes are kept from the overlay (git keeps the executable bit); owners
    are not, since a checkout's owner means nothing inside the image.
    """
    written = []
    for dirpath, dirnames, filenames in os.walk(overlay):
        dirnames.sort()
        rel_dir = Path(dirpath).relative_to(overlay)
        target_dir = tree / rel_dir
        if not target_dir.exists():
            target_dir.mkdir(mode=0o755, parents=True)
        for name in sorted(filenames) + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            src = Path(dirpath) / name
            dst = target_dir / name
            if os.path.lexists(dst) and (dst.is_symlink() or not dst.is_dir()):
                dst.unlink()
            if src.is_symlink():
                dst.symlink_to(os.readlink(src))
            else:
                shutil.copyfile(src, dst)
                os.chmod(dst, src.stat().st_mode & 0o7777)
                os.chown(dst, 0, 0)
            written.append(str(rel_dir / name))
    return written


def fstab(label: str) -> str:
    return ("# Written by the image pipeline.  The root is named by LABEL, never by\n"
            "# UUID: every machine's clone gets its own file-system UUID.\n"
            f"LABEL={label}\t/\text4\tdefaults,errors=remount-ro\t0\t1\n")


def initramfs_conf(recipe: Recipe) -> str:
    return ("# Written by the image pipeline from the recipe.\n"
            f"MODULES={recipe.initramfs.modules}\n"
            f"COMPRESS={recipe.initramfs.compression}\n"
            "# Never look for a resume device: the build host's swap is not the\n"
            "# machine's, and a diskless machine resumes from nothing.\n"
            "RESUME=none\n"
            "# The root is named by LABEL and its device does not exist while the\n"
            "# image is built, so the fsck hook cannot detect the type: say it.\n"
            "FSTYPE=ext4\n")


DEB_INBOX = "tmp/image-pipeline-debs"


def package_name(deb: Path) -> str:
    return runner.output(["dpkg-deb", "--field", str(deb), "Package"])


def installed(tree: Path, name: str) -> bool:
    status = runner.output(["dpkg-query", f"--admindir={tree}/var/lib/dpkg", "-W",
                            "-f", "${db:Status-Abbrev}", name], check=False)
    return status.startswith("ii")


def install_debs(tree: Path, debs: Sequence[Path], env: dict[str, str]) -> None:
    """Install the injected packages: with dpkg alone when it can, apt only when it must.

    apt-get spends a second or more reading the package lists before it hands
    a local .deb to dpkg.  Their dependencies are normally in the recipe's
    package list already, so ``dpkg -i`` does the same job.  When it cannot
    (unmet dependencies) dpkg leaves the packages unpacked and fails;
    ``apt-get install -f`` then fetches what is missing and configures them.
    Either way every package must end up installed.
    """
    inbox = tree / DEB_INBOX
    inbox.mkdir(parents=True, exist_ok=True)
    for deb in debs:
        shutil.copyfile(deb, inbox / deb.name)
    try:
        chroot.run(tree, ["dpkg", "-i", *[f"/{DEB_INBOX}/{deb.name}" for deb in debs]],
                   env=env, echo=True)
    except runner.CommandError:
        print("    dpkg -i left the packages unconfigured (unmet dependencies?): "
              "apt-get install -f", flush=True)
        chroot.run(tree, ["apt-get", "install", "-f", "-y", "--no-install-recommends",
                          "-o", "Dpkg::Use-Pty=0"], env=env, echo=True)
    shutil.rmtree(inbox)
    missing = [name for name in map(package_name, debs) if not installed(tree, name)]
    if missing:
        raise PipelineError("injected package(s) not installed in the root: " + ", ".join(missing),
                            hint="see apt-get's output above for the dependency it could not meet")


def make_initramfs(tree: Path, release: str, env: dict[str, str], recipe: Recipe,
                   overlays: Sequence[Path], debs: Sequence[Path],
                   cache: initramfs_cache.Cache | None) -> None:
    """Make the initramfs, or put in the one made earlier from the same inputs."""
    key = None
    if cache is None:
        reason = "no cache given"
    else:
        reason = initramfs_cache.not_reusable(tree, recipe.initramfs.modules)
    if cache is not None and reason is None:
        # The tree shows its packages and the overlays' files; the text this
        # step wrote and what came before it (kernel stamp, code) are named.
        key = initramfs_cache.key(tree, overlays, debs, {
            **cache.inputs, "release": release, "conf": initramfs_conf(recipe),
            "fstab": fstab(recipe.root_image.label), "epoch": str(recipe.source_date_epoch)})
        if cache.path(key).is_file():
            initramfs_cache.install(cache, key, tree, release)
            print(f"    initramfs: reused, its inputs are unchanged (key {key[:12]})", flush=True)
            return
        reason = f"no earlier one has these inputs (key {key[:12]})"
    print(f"    initramfs: made, {reason}", flush=True)
    chroot.run(tree, ["update-initramfs", "-c", "-k", release], env=env, echo=True)
    if cache is not None and key is not None:
        if initramfs_cache.state_matches(tree, release):
            initramfs_cache.store(cache, key, tree, release)
        else:
            # A reuse would not leave the tree as update-initramfs did: keep none.
            print(f"    initramfs: not kept, /{initramfs_cache.STATE_DIR} is not as expected",
                  flush=True)


# apt gives these to its sandbox user (_apt) when it can reach them as that
# user, and leaves them root's when a folder above the build tree is closed
# to it (a checkout under /root, say): their owner would say where the image
# was built.  They get what apt gives them.
APT_SANDBOX_DIRS = (("var/lib/apt/lists/partial", 0o700),
                    ("var/cache/apt/archives/partial", 0o700),
                    ("var/lib/apt/lists/auxfiles", 0o755))


def settle_apt_dirs(tree: Path) -> None:
    uid = None
    passwd = tree / "etc/passwd"
    for line in passwd.read_text(encoding="utf-8").splitlines() if passwd.is_file() else []:
        fields = line.split(":")
        if len(fields) > 2 and fields[0] == "_apt":
            uid = int(fields[2])
    if uid is None:
        return
    for rel, mode in APT_SANDBOX_DIRS:
        path = tree / rel
        if path.is_dir() and not path.is_symlink():
            os.chown(path, uid, 0)
            os.chmod(path, mode)


def make_root(kernel_tree: Path, dest: Path, recipe: Recipe, release: str,
              overlays: Sequence[Path], debs: Sequence[Path],
              cache: initramfs_cache.Cache | None = None) -> list[str]:
    """Build the root tree into ``dest``; return the paths the strip removed."""
    tmp = fresh_partial(dest)
    copy_tree(kernel_tree, tmp)
    for overlay in overlays:
        apply_overlay(tmp, overlay)
    (tmp / "etc/fstab").write_text(fstab(recipe.root_image.label))
    conf = tmp / INITRAMFS_CONF
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.write_text(initramfs_conf(recipe))
    env = {"DEBIAN_FRONTEND": "noninteractive", "INITRD": "No",
           "SOURCE_DATE_EPOCH": str(recipe.source_date_epoch)}
    with chroot.mounted(tmp):
        if debs:
            with lock.pinned(tmp, recipe.locked_versions):
                install_debs(tmp, debs, env)
            # The injected packages are built here, not taken from the mirror.
            lock.check(f"rootfs {recipe.image}", tmp, recipe.locked_versions,
                       exempt=frozenset(map(package_name, debs)))
        # No apt-get clean: nothing is downloaded unless apt had to step in,
        # and the strip removes apt's caches and downloads (generic.RULES:
        # var/cache/apt/*.bin, var/cache/apt/archives/*.deb) either way.
        removed = generic.strip(tmp)
        generic.install_firstboot(tmp)
        make_initramfs(tmp, release, env, recipe, overlays, debs, cache)
    # mkinitramfs may leave temporary files; the tree must still be clean.
    removed += generic.strip(tmp)
    settle_apt_dirs(tmp)
    commit(tmp, dest)
    return removed
