"""mkosi (24 or newer): the base tree made by systemd's image builder.

The pipeline writes mkosi's whole configuration into the bootstrapper's
scratch folder (``mkosi.conf`` and two small trees), never into a checkout,
and points every folder mkosi writes (output, workspace, caches) into that
scratch folder too.  mkosi makes a plain directory with the recipe's
packages and apt, and no kernel and no boot loader (``Bootable=no``): the
kernel step installs the flavour's kernel as for the other bootstrappers.

mkosi also post-processes its images; a base tree must not differ from
mmdebstrap's in what the later steps see, so:

* its apt gets one source, the recipe's mirror and suite signed by the
  host's Debian keyring (by default mkosi adds the -updates, -security and
  -debug suites, which a plain mirror may not serve; ``LocalMirror=`` would
  avoid them but marks the mirror ``Trusted: yes``, unsigned);
* its ``systemctl preset-all`` would enable every unit with an [Install]
  section (ssh.socket next to ssh.service, systemd-networkd, ...): a preset
  file ``ignore *`` keeps the units as the packages' maintainer scripts
  left them, and is removed again (``RemoveFiles=``) with the files mkosi
  adds on its own (``/init``, ``/efi``, ``/usr/lib/clock-epoch``);
* the tree is then completed as mmdebstrap leaves it (:mod:`.base_tree`):
  device nodes (mkosi makes none), an empty machine-id, one sources.list
  line, the apt options, the host's resolv.conf (the strip removes it), and
  the lists fetched by the tree's own apt (mkosi keeps its lists outside).

A lock is held by the same apt preferences file as for mmdebstrap, given
to mkosi's apt only (``PackageManagerTrees=``), so it is never in the tree.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Mapping

from pipeline.build import lock
from pipeline.build.bootstrappers import base_tree
from pipeline.build.recipe import Recipe
from pipeline.errors import PipelineError
from pipeline.fsutil import remove_tree

NAME = "mkosi"
TOOL = "mkosi"
PACKAGE = "mkosi"
# mkosi 14 (Debian 12 itself) needs a running systemd for systemd-nspawn.
MIN_VERSION = "24"
HOLDS_LOCK = True
INSTALL_HINT = ("install mkosi 24 or newer; on Debian 12 from bookworm-backports: "
                "apt-get install -t bookworm-backports mkosi (./setup-host does this)")

# The folders of the scratch folder; CONF and the two trees are rewritten
# on every build, the package cache is kept (apt checks each file's hash).
CONF = "conf"
APT_TREE = "apt-config"        # mkosi's apt only (PackageManagerTrees=)
PRESET_TREE = "presets"        # into the tree, removed again (ExtraTrees=, RemoveFiles=)
OUTPUT = "output"
WORKSPACE = "workspace"
CACHE = "cache"
PACKAGE_CACHE = "packages"
OUTPUT_NAME = "base"
REWRITTEN = (CONF, APT_TREE, PRESET_TREE, OUTPUT, WORKSPACE)

# mkosi writes its own sources only when its apt tree has none.
APT_SOURCES = "etc/apt/sources.list.d/mkosi.sources"
HOST_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"

PRESET_FILES = ("etc/systemd/system-preset/00-image-pipeline.preset",
                "etc/systemd/user-preset/00-image-pipeline.preset")
PRESET_TEXT = ("# Written by the image pipeline: keep units as the packages left them.\n"
               "ignore *\n")
# What mkosi adds that an mmdebstrap tree does not have.
MKOSI_ADDITIONS = ("/init", "/efi", "/usr/lib/clock-epoch")


def config(recipe: Recipe, scratch: Path) -> str:
    """The text of mkosi.conf for ``recipe``, with every folder under ``scratch``."""
    packages = ["apt", *(p for p in recipe.packages if p != "apt")]
    remove = [*MKOSI_ADDITIONS, *("/" + name for name in PRESET_FILES)]
    return "\n".join([
        f"# Written by the image pipeline from {recipe.path.name}; rewritten on every build.",
        "[Distribution]",
        "Distribution=debian",
        f"Release={recipe.suite}",
        f"Mirror={recipe.mirror}",
        f"PackageManagerTrees={scratch / APT_TREE}",
        "",
        "[Output]",
        "Format=directory",
        f"Output={OUTPUT_NAME}",
        f"OutputDirectory={scratch / OUTPUT}",
        f"WorkspaceDirectory={scratch / WORKSPACE}",
        f"CacheDirectory={scratch / CACHE}",
        f"PackageCacheDirectory={scratch / PACKAGE_CACHE}",
        "",
        "[Content]",
        f"SourceDateEpoch={recipe.source_date_epoch}",
        "Bootable=no",
        "WithRecommends=no",
        "CleanPackageMetadata=no",
        # No sources to mount: the config folder holds only this file.
        "BuildSources=",
        f"ExtraTrees={scratch / PRESET_TREE}",
        f"RemoveFiles={','.join(remove)}",
        f"Packages={','.join(packages)}",
        "",
        "[Host]",
        "Incremental=no",
        "",
    ])


def apt_sources(recipe: Recipe) -> str:
    """mkosi's apt source (deb822): the recipe's one suite, signature checked."""
    return (f"Types: deb\nURIs: {recipe.mirror}\nSuites: {recipe.suite}\nComponents: main\n"
            f"Signed-By: {HOST_KEYRING}\n")


def command(scratch: Path) -> list[str]:
    return [TOOL, f"--directory={scratch / CONF}", "--force", "build"]


def prepare(recipe: Recipe, target: Path, scratch: Path) -> list[str]:
    """Write mkosi.conf and its trees into ``scratch``; the command line."""
    for name in REWRITTEN:
        remove_tree(scratch / name)
    for name in (CONF, OUTPUT, WORKSPACE, CACHE, PACKAGE_CACHE):
        (scratch / name).mkdir(parents=True, exist_ok=True)
    (scratch / CONF / "mkosi.conf").write_text(config(recipe, scratch), encoding="utf-8")
    sources = scratch / APT_TREE / APT_SOURCES
    sources.parent.mkdir(parents=True)
    sources.write_text(apt_sources(recipe), encoding="utf-8")
    apt_conf = scratch / APT_TREE / base_tree.APT_CONF
    apt_conf.parent.mkdir(parents=True)
    apt_conf.write_text("".join(line + "\n" for line in base_tree.apt_options(recipe)),
                        encoding="utf-8")
    if recipe.locked_versions:
        pins = scratch / APT_TREE / lock.PREFERENCES
        pins.parent.mkdir(parents=True, exist_ok=True)
        pins.write_text(lock.preferences(recipe.locked_versions), encoding="utf-8")
    for name in PRESET_FILES:
        preset = scratch / PRESET_TREE / name
        preset.parent.mkdir(parents=True, exist_ok=True)
        preset.write_text(PRESET_TEXT, encoding="utf-8")
    return command(scratch)


def finish(recipe: Recipe, target: Path, scratch: Path, env: Mapping[str, str]) -> None:
    """Move mkosi's output to ``target`` and give it mmdebstrap's apt setup."""
    made = scratch / OUTPUT / OUTPUT_NAME
    if not made.is_dir() or made.is_symlink():
        raise PipelineError(f"mkosi reported success but left no tree at {made}")
    os.rename(made, target)
    # mkosi's own sources (every suite it would use without LocalMirror) and
    # the unsigned lists of its local mirror give way to mmdebstrap's setup.
    for sources in (target / "etc/apt/sources.list.d").glob("*.sources"):
        sources.unlink()
    lists = target / "var/lib/apt/lists"
    if lists.is_dir():
        for entry in lists.iterdir():
            if entry.is_file() or entry.is_symlink():
                entry.unlink()
            elif entry.name != "partial":
                shutil.rmtree(entry)
    base_tree.make_devices(target)
    base_tree.settle_identity(target)
    base_tree.write_apt_config(recipe, target)
    base_tree.copy_host_resolver(target)
    base_tree.update_lists(target, env)
    for name in (OUTPUT, WORKSPACE):
        remove_tree(scratch / name)
