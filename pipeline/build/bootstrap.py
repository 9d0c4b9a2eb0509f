"""Step 1: the shared base tree of an image (no kernel yet).

One base per recipe; each kernel flavour starts from a copy of it.  The
package lists are kept in the base so that the kernel step can install a
kernel without another ``apt-get update``; the strip step removes them later.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from pipeline.build import chroot, lock
from pipeline import runner
from pipeline.fsutil import commit, fresh_partial
from pipeline.build.recipe import Recipe


def command(recipe: Recipe, target: Path, lock_options: list[str] | None = None) -> list[str]:
    """The bootstrapper's command line for ``recipe`` into ``target``."""
    packages = ",".join(recipe.packages)
    if recipe.bootstrapper == "mmdebstrap":
        options = ["--aptopt=Acquire::Languages \"none\""]
        if not recipe.mirror_check_valid_until:
            # A snapshot mirror serves Release files whose Valid-Until has
            # passed; the option stays in the tree for the later apt runs.
            options.append("--aptopt=Acquire::Check-Valid-Until \"false\"")
        return ["mmdebstrap", "--mode=root", "--format=directory", "--variant=apt",
                "--skip=cleanup/apt/lists", *options, *(lock_options or []),
                f"--include={packages}", recipe.suite, str(target), recipe.mirror]
    return ["debootstrap", "--variant=minbase", f"--include={packages}",
            recipe.suite, str(target), recipe.mirror]


def bootstrap(recipe: Recipe, dest: Path) -> None:
    """Bootstrap ``recipe``'s base tree into ``dest`` (atomically)."""
    runner.require_tools([recipe.bootstrapper])
    tmp = fresh_partial(dest)
    if recipe.bootstrapper == "debootstrap":
        tmp.mkdir()
    env = {"SOURCE_DATE_EPOCH": str(recipe.source_date_epoch), "DEBIAN_FRONTEND": "noninteractive"}
    pref_file = fresh_partial(dest.with_name(dest.name + ".lock-pref"))
    try:
        options = lock.mmdebstrap_options(recipe.locked_versions, pref_file)
        runner.run(command(recipe, tmp, options), env=env, echo=True)
    finally:
        pref_file.unlink(missing_ok=True)
    lock.check(f"bootstrap {recipe.image}", tmp, recipe.locked_versions)
    if recipe.bootstrapper == "debootstrap":
        # debootstrap leaves no package lists; fetch them as mmdebstrap does.
        with chroot.mounted(tmp):
            chroot.run(tmp, ["apt-get", "update"], env=env, echo=True)
    commit(tmp, dest)


def dpkg_status_digest(tree: Path) -> str:
    """Digest of the installed package set of a tree (names, versions, state)."""
    return hashlib.sha256((tree / "var/lib/dpkg/status").read_bytes()).hexdigest()
