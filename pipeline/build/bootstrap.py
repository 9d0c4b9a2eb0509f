"""Step 1: the shared base tree of an image (no kernel yet).

One base per recipe; each kernel flavour starts from a copy of it.  The
package lists are kept in the base so that the kernel step can install a
kernel without another ``apt-get update``; the strip step removes them later.

The recipe's bootstrapper (mmdebstrap, debootstrap, mkosi) is one module of
:mod:`pipeline.build.bootstrappers`; this step is the same for each: write
the tree under a partial name, check it against the lock, then commit it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from pipeline import runner
from pipeline.build import bootstrappers, lock
from pipeline.build.bootstrappers import mmdebstrap
from pipeline.build.recipe import Recipe
from pipeline.fsutil import commit, fresh_partial
from pipeline.naming import bootstrapper_scratch

# Kept for the callers that build mmdebstrap's command line themselves (tests).
command = mmdebstrap.command


def bootstrap(recipe: Recipe, dest: Path, scratch: Path | None = None) -> None:
    """Bootstrap ``recipe``'s base tree into ``dest`` (atomically).

    ``scratch`` is the bootstrapper's own folder (configuration, caches);
    by default the one naming gives for ``dest``.
    """
    tool = bootstrappers.get(recipe.bootstrapper)
    bootstrappers.require([recipe.bootstrapper])
    scratch = scratch or bootstrapper_scratch(dest)
    scratch.mkdir(parents=True, exist_ok=True)
    tmp = fresh_partial(dest)
    env = {"SOURCE_DATE_EPOCH": str(recipe.source_date_epoch), "DEBIAN_FRONTEND": "noninteractive"}
    argv = tool.prepare(recipe, tmp, scratch)
    runner.run(argv, env=env, echo=True)
    tool.finish(recipe, tmp, scratch, env)
    lock.check(f"bootstrap {recipe.image}", tmp, recipe.locked_versions)
    commit(tmp, dest)


def dpkg_status_digest(tree: Path) -> str:
    """Digest of the installed package set of a tree (names, versions, state)."""
    return hashlib.sha256((tree / "var/lib/dpkg/status").read_bytes()).hexdigest()
