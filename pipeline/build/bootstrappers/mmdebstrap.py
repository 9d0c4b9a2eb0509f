"""mmdebstrap: the default bootstrapper.

Variant ``apt`` (Essential packages, apt, the recipe's packages), package
lists kept (``--skip=cleanup/apt/lists``), and the only one that also takes
a ``copy://`` mirror.  A lock is held by an apt preferences file that a
setup hook copies into the tree before the first package is chosen and a
customize hook removes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

from pipeline.build import lock
from pipeline.build.recipe import Recipe

NAME = "mmdebstrap"
TOOL = "mmdebstrap"
PACKAGE = "mmdebstrap"
MIN_VERSION = None
HOLDS_LOCK = True
INSTALL_HINT = "install it with: apt-get install mmdebstrap"

LOCK_PINS = "lock.pref"


def command(recipe: Recipe, target: Path, lock_options: list[str] | None = None) -> list[str]:
    """mmdebstrap's command line for ``recipe`` into ``target``."""
    options = ["--aptopt=Acquire::Languages \"none\""]
    if not recipe.mirror_check_valid_until:
        # A snapshot mirror serves Release files whose Valid-Until has
        # passed; the option stays in the tree for the later apt runs.
        options.append("--aptopt=Acquire::Check-Valid-Until \"false\"")
    return ["mmdebstrap", "--mode=root", "--format=directory", "--variant=apt",
            "--skip=cleanup/apt/lists", *options, *(lock_options or []),
            f"--include={','.join(recipe.packages)}", recipe.suite, str(target), recipe.mirror]


def prepare(recipe: Recipe, target: Path, scratch: Path) -> list[str]:
    """Write the lock's pins (if any) into ``scratch``; the command line."""
    return command(recipe, target, lock.mmdebstrap_options(recipe.locked_versions,
                                                           scratch / LOCK_PINS))


def finish(recipe: Recipe, target: Path, scratch: Path, env: Mapping[str, str]) -> None:
    """Nothing to add (mmdebstrap's tree is the model of a base tree); the
    pins are in the tree no longer, and need not stay beside it either."""
    (scratch / LOCK_PINS).unlink(missing_ok=True)
