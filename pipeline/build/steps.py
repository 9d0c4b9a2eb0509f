"""The actions of the build steps: run a step's module, then write its stamp.

Kept out of :mod:`pipeline.tasks` (which is only doit wiring) because what
these functions write into the stamps shapes when the next step re-runs: each
action is its step's code identity entry (see :mod:`pipeline.identity`), so
editing one re-runs that step.  Each action uses only its arguments, never
the project settings, and stays module-level so that ``doit -n 2`` can pickle
it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from pipeline.build import bootstrap, initramfs_cache, kernel, rootfs, triple
from pipeline.build.recipe import Recipe
from pipeline.fsutil import read_json, sha256_file, write_json
from pipeline.naming import Layout


def file_digest(path: Path) -> str:
    return sha256_file(path)[:16] if path.exists() else "missing"


def inputs_digest(identity: str, files: list[str]) -> str:
    """Digest of a step's identity and the content of its input files.

    It goes into the step's stamp, so that the next step re-runs whenever
    this one's inputs changed, even when the tree's package set did not.
    """
    digest = hashlib.sha256(identity.encode())
    for path in files:
        digest.update(path.encode() + b"\0" + sha256_file(Path(path)).encode())
    return digest.hexdigest()


def do_bootstrap(recipe: Recipe, layout: Layout) -> None:
    base = layout.base_tree(recipe.image)
    bootstrap.bootstrap(recipe, base)
    write_json(layout.base_stamp(recipe.image), {
        "identity": recipe.bootstrap_identity(),
        "dpkg_status": bootstrap.dpkg_status_digest(base)})


def do_kernel(recipe: Recipe, flavour: str, layout: Layout) -> None:
    tree = layout.kernel_tree(recipe.image, flavour)
    release = kernel.install_kernel(layout.base_tree(recipe.image), tree, flavour,
                                    recipe.source_date_epoch, recipe.locked_versions)
    write_json(layout.kernel_stamp(recipe.image, flavour), {
        "base": file_digest(layout.base_stamp(recipe.image)), "flavour": flavour,
        "release": release, "dpkg_status": bootstrap.dpkg_status_digest(tree)})


def do_rootfs(recipe: Recipe, flavour: str, layout: Layout, debs: list[Path],
              identity: str, files: list[str], overlays: list[Path], code: str) -> None:
    """*overlays*: the recipe's overlay folders; *code*: the code identity of
    every step up to this one (the initramfs is made from all of it)."""
    stamp = layout.kernel_stamp(recipe.image, flavour)
    release = read_json(stamp)["release"]
    tree = layout.root_tree(recipe.image, flavour)
    # What the initramfs is made from that the root tree does not show: the
    # kernel step's stamp and the code of every step up to this one.
    cache = initramfs_cache.Cache(layout, recipe.image, flavour, {
        "kernel": sha256_file(stamp), "code": code})
    removed = rootfs.make_root(layout.kernel_tree(recipe.image, flavour), tree, recipe,
                               release, overlays, debs, cache)
    write_json(layout.root_stamp(recipe.image, flavour), {
        "kernel": file_digest(stamp), "release": release, "stripped": removed,
        "inputs": inputs_digest(identity, [*files, *map(str, debs)]),
        "dpkg_status": bootstrap.dpkg_status_digest(tree)})


def do_build(recipe: Recipe, flavour: str, layout: Layout) -> None:
    stamp = layout.root_stamp(recipe.image, flavour)
    release = read_json(stamp)["release"]
    made = triple.assemble(recipe, flavour, release, layout.root_tree(recipe.image, flavour),
                           layout)
    print(f"    triple: {made.directory}/{made.stem}.{{vmlinuz,initrd.img,root.ext4,manifest.json}}")
    write_json(layout.triple_stamp(recipe.image, flavour), {
        "rootfs": file_digest(stamp), "release": release,
        "files": {p.name: p.stat().st_size for p in [*made.parts().values(), made.manifest]}})
