"""debootstrap: the classic bootstrapper, for hosts without mmdebstrap.

Variant ``minbase`` plus the recipe's packages.  It leaves no package
lists, so :func:`finish` fetches them as mmdebstrap keeps them.  It cannot
hold a lock (it chooses versions without apt) nor fetch from ``copy://``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

from pipeline.build.bootstrappers import base_tree
from pipeline.build.recipe import Recipe

NAME = "debootstrap"
TOOL = "debootstrap"
PACKAGE = "debootstrap"
MIN_VERSION = None
HOLDS_LOCK = False
INSTALL_HINT = "install it with: apt-get install debootstrap"


def command(recipe: Recipe, target: Path) -> list[str]:
    return ["debootstrap", "--variant=minbase", f"--include={','.join(recipe.packages)}",
            recipe.suite, str(target), recipe.mirror]


def prepare(recipe: Recipe, target: Path, scratch: Path) -> list[str]:
    target.mkdir()  # debootstrap wants its target to exist
    return command(recipe, target)


def finish(recipe: Recipe, target: Path, scratch: Path, env: Mapping[str, str]) -> None:
    base_tree.update_lists(target, env)
