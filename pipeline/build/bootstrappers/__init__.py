"""The bootstrappers: the tools that make a recipe's base tree.

Each is one module of this package, with the same interface:

``NAME``, ``TOOL``, ``PACKAGE``, ``INSTALL_HINT``
    the recipe's ``bootstrapper:`` value, the command it runs, the Debian
    package that has it and how to get it (named when the tool is missing
    or too old);
``MIN_VERSION``
    the oldest ``TOOL --version`` that works, or None;
``HOLDS_LOCK``
    whether it can install the exact versions of a recipe's ``lock:``;
``prepare(recipe, target, scratch) -> argv``
    writes what the command needs (its configuration, the lock's pins) into
    ``scratch``, a folder of its own, and returns the command line that
    makes the tree ``target``;
``finish(recipe, target, scratch, env)``
    runs after the command and leaves ``target`` as every bootstrapper's
    base must be (see below).

What a base tree is, whichever tool made it: the recipe's packages and apt
installed (dpkg status in ``var/lib/dpkg``), ``/etc/apt/sources.list``
naming the recipe's mirror and suite with their package lists kept in
``var/lib/apt/lists`` (the kernel step installs without ``apt-get
update``; the strip removes them), its own device nodes in ``/dev`` (the
chroot steps mount no host /dev), no kernel and no initramfs.

The bootstrap step (:mod:`pipeline.build.bootstrap`) and everything after
it know only this interface; no other module names a bootstrapper.
"""

from __future__ import annotations

import re
import shutil
from types import ModuleType
from typing import Iterable

from pipeline import runner
from pipeline.build.bootstrappers import debootstrap, mkosi, mmdebstrap
from pipeline.errors import PipelineError

TABLE: dict[str, ModuleType] = {module.NAME: module for module in (mmdebstrap, debootstrap, mkosi)}


def get(name: str) -> ModuleType:
    """The module of bootstrapper ``name`` (a recipe's ``bootstrapper:`` value)."""
    try:
        return TABLE[name]
    except KeyError:
        raise PipelineError(f"unknown bootstrapper {name!r}; expected one of "
                            + ", ".join(TABLE)) from None


def version_number(text: str) -> tuple[int, ...] | None:
    """The first dotted number in a ``--version`` line: 'mkosi 24.3' -> (24, 3)."""
    found = re.search(r"\b([0-9]+(?:\.[0-9]+)*)", text)
    return tuple(int(part) for part in found.group(1).split(".")) if found else None


def tool_version(name: str) -> str:
    """What the bootstrapper's tool says its version is (for the manifest)."""
    return runner.tool_version([get(name).TOOL, "--version"])


def problem(name: str) -> str | None:
    """Why bootstrapper ``name`` cannot run on this host, or None."""
    module = get(name)
    if shutil.which(module.TOOL, path=runner.PATH) is None:
        return f"{module.TOOL} (package {module.PACKAGE}) is not installed"
    if module.MIN_VERSION is None:
        return None
    wanted = version_number(module.MIN_VERSION)
    line = tool_version(name)
    found = version_number(line)
    if found is None or wanted is None or found < wanted:
        return (f"bootstrapper {name} needs {module.TOOL} {module.MIN_VERSION} or newer, "
                f"this host has {line!r}")
    return None


def require(names: Iterable[str]) -> None:
    """Fail with one message if any of these bootstrappers cannot run here."""
    found = {name: problem(name) for name in sorted(set(names))}
    bad = {name: text for name, text in found.items() if text}
    if bad:
        hints = sorted({get(name).INSTALL_HINT for name in bad})
        raise PipelineError("bootstrapper not usable: " + "; ".join(bad.values()),
                            hint="; ".join(hints))

