"""The doit task graph.  This is the only module that imports doit.

Per recipe: ``bootstrap:<image>``.  Per recipe and kernel flavour
(``<image>-<flavour>``): ``kernel:``, ``rootfs:`` and ``build:``; plus
``build:<image>`` for all flavours of one recipe.  ``doit build`` builds every
triple of every recipe.

Another project can use these task creators in its own ``dodo.py``::

    from pipeline import tasks
    tasks.configure(project="/srv/images", out="/srv/images/out")
    from pipeline.tasks import *  # noqa: F401,F403  (DOIT_CONFIG and task_*)

Each task's identity is what determines its output: the recipe fields it
uses, the digest of the step's own code, and the stamp of the step before it.
The code digest is computed (:mod:`pipeline.identity`) from the step's action
in :mod:`pipeline.build.steps` and every project module it imports,
transitively.  Stamps are small JSON files beside the big trees, so doit
never hashes a multi-GB file on a no-op run.
"""

from __future__ import annotations

import functools
from contextlib import contextmanager
import json
import os
from pathlib import Path

from doit.exceptions import TaskFailed
from doit.tools import config_changed

from pipeline.build import bootstrappers, package, repro, steps
from pipeline import runner
from pipeline.errors import ConfigError, PipelineError, report
from pipeline.fsutil import read_json, remove_tree
from pipeline.identity import digest as code_digest, entry_of
from pipeline.naming import task_name
from pipeline.project import Project
from pipeline.fleet.inventory import load_inventory
from pipeline.fleet.publish import publish
from pipeline.build.recipe import Recipe, load_recipes

__all__ = ["DOIT_CONFIG", "task_preflight", "task_package", "task_bootstrap", "task_kernel",
           "task_rootfs", "task_build", "task_publish", "task_repro"]

# Every step creates files with this umask, whatever the caller's is: modes
# of files the pipeline writes end up in the images.
UMASK = 0o022

# Host tools every build needs (the bootstrapper is checked per recipe).
HOST_TOOLS = ["mkfs.ext4", "debugfs", "dumpe2fs", "zstd", "chroot",
              "mount", "umount", "cp", "dpkg-query"]


SETTINGS = Project.at(Path.cwd())

DOIT_CONFIG = {
    "default_tasks": ["build"],
    "dep_file": str(SETTINGS.layout.doit_db),
    "backend": "json",
    "verbosity": 2,
}


def configure(project: str | os.PathLike[str] | None = None,
              out: str | os.PathLike[str] | None = None) -> None:
    """Point the task creators at another project folder or output folder."""
    global SETTINGS
    SETTINGS = Project.at(project or SETTINGS.root, out)
    DOIT_CONFIG["dep_file"] = str(SETTINGS.layout.doit_db)
    load.cache_clear()


@functools.cache
def load() -> tuple[Recipe, ...]:
    """Parse every recipe once; on any problem, report all and stop before work."""
    try:
        recipes = load_recipes(SETTINGS.recipes, SETTINGS.overlays)
    except ConfigError as exc:
        raise SystemExit(report(exc, "bad recipe(s), nothing was built:")) from None
    with pipeline_umask():  # apt's sandbox user must be able to enter out/
        SETTINGS.out.mkdir(parents=True, exist_ok=True)
    return tuple(recipes)


@contextmanager
def pipeline_umask():
    caller_umask = os.umask(UMASK)
    try:
        yield
    finally:
        os.umask(caller_umask)


@functools.cache
def step_code(*implementations) -> str:
    """Code identity of the modules or step actions that implement a step.

    Computed from what they import (see :mod:`pipeline.identity`), once per
    process: parsing the sources is cheap, but not free on every task.
    """
    return code_digest(entry_of(each) for each in implementations)


def guarded(label: str, func, *args) -> TaskFailed | None:
    """Run one step: print start/end, turn user errors into a clean failure."""
    try:
        with pipeline_umask(), runner.step(label):
            func(*args)
    except PipelineError as exc:
        report(exc)
        return TaskFailed(str(exc))
    return None


def overlay_files(recipe: Recipe) -> list[str]:
    files = []
    for name in recipe.overlays:
        for dirpath, dirnames, filenames in os.walk(SETTINGS.overlays / name):
            dirnames.sort()
            files.extend(os.path.join(dirpath, f) for f in sorted(filenames))
    return files


def triple_present(stamp: str) -> bool:
    """doit uptodate check: the files a build stamp lists are all there.

    Only names and sizes are compared: hashing multi-GB files on every run
    is what the manifest (and ``python3 -m pipeline verify``) is for.
    """
    path = Path(stamp)
    if not path.exists():
        return False
    files = read_json(path)["files"]
    for name, size in files.items():
        artifact = SETTINGS.layout.triples / name
        if not artifact.exists() or artifact.stat().st_size != size:
            return False
    return True


def do_clean(paths: list[Path]) -> None:
    for path in paths:
        remove_tree(path)


# -- task creators ----------------------------------------------------------

def task_preflight():
    """Check that the host has every tool the build needs."""
    return {"actions": [(guarded, ["preflight", preflight, sorted({r.bootstrapper for r in load()})])],
            "uptodate": [False], "verbosity": 1}


def preflight(bootstrapper_names: list[str]) -> None:
    """Every host tool, then each recipe's bootstrapper (present and new enough)."""
    runner.require_tools(sorted(HOST_TOOLS))
    bootstrappers.require(bootstrapper_names)


def task_package():
    """Build the injected Debian packages (open-iscsi-boot) from source."""
    for source in package.sources(SETTINGS.root):
        deb = package.deb_path(SETTINGS.layout, source)
        yield {"name": source.name,
               "actions": [(guarded, [f"package {source.name}", package.build, source, deb])],
               "file_dep": package.source_files(source),
               "targets": [str(deb)],
               "uptodate": [config_changed(step_code(package))],
               "clean": [(do_clean, [[deb]])]}


def task_bootstrap():
    """Bootstrap each recipe's shared base tree (no kernel)."""
    layout = SETTINGS.layout
    for recipe in load():
        identity = json.dumps(recipe.bootstrap_identity(), sort_keys=True)
        yield {"name": recipe.image,
               "actions": [(guarded, [f"bootstrap {recipe.image}", steps.do_bootstrap, recipe,
                                       layout])],
               "targets": [str(layout.base_stamp(recipe.image))],
               "uptodate": [config_changed(identity + step_code(steps.do_bootstrap))],
               "task_dep": ["preflight"],
               "clean": [(do_clean, [[layout.base_tree(recipe.image),
                                      layout.base_stamp(recipe.image),
                                      layout.bootstrapper_scratch(recipe.image)]])]}


def task_kernel():
    """Install each kernel flavour into a copy of its recipe's base."""
    layout = SETTINGS.layout
    for recipe in load():
        for flavour in recipe.kernel_flavours:
            name = task_name(recipe.image, flavour)
            yield {"name": name,
                   "actions": [(guarded, [f"kernel {name}", steps.do_kernel, recipe, flavour,
                                          layout])],
                   "file_dep": [str(layout.base_stamp(recipe.image))],
                   "targets": [str(layout.kernel_stamp(recipe.image, flavour))],
                   "uptodate": [config_changed(flavour + step_code(steps.do_kernel))],
                   "clean": [(do_clean, [[layout.kernel_tree(recipe.image, flavour),
                                          layout.kernel_stamp(recipe.image, flavour)]])]}


def task_rootfs():
    """Overlays, boot package, strip, first boot, initramfs: the root tree."""
    layout = SETTINGS.layout
    debs = [package.deb_path(layout, s) for s in package.sources(SETTINGS.root)]
    # The initramfs is made from the trees of every step up to rootfs.
    initramfs_code = step_code(steps.do_bootstrap, steps.do_kernel, steps.do_rootfs)
    for recipe in load():
        files = overlay_files(recipe)
        overlays = [SETTINGS.overlays / name for name in recipe.overlays]
        identity = json.dumps({
            "overlays": recipe.overlays, "files": files, "label": recipe.root_image.label,
            "initramfs": [recipe.initramfs.compression, recipe.initramfs.modules],
            "epoch": recipe.source_date_epoch,
            "code": step_code(steps.do_rootfs)}, sort_keys=True)
        for flavour in recipe.kernel_flavours:
            name = task_name(recipe.image, flavour)
            yield {"name": name,
                   "actions": [(guarded, [f"rootfs {name}", steps.do_rootfs, recipe, flavour,
                                          layout, debs, identity, files, overlays,
                                          initramfs_code])],
                   "file_dep": [str(layout.kernel_stamp(recipe.image, flavour)), *files,
                                *map(str, debs)],
                   "targets": [str(layout.root_stamp(recipe.image, flavour))],
                   "uptodate": [config_changed(identity)],
                   "clean": [(do_clean, [[layout.root_tree(recipe.image, flavour),
                                          layout.root_stamp(recipe.image, flavour),
                                          layout.initramfs_cache(recipe.image, flavour)]])]}


def task_build():
    """Assemble, fit-check, audit and name every triple."""
    layout = SETTINGS.layout
    for recipe in load():
        identity = json.dumps({
            # Not recipe.digest: adding a flavour or editing the description
            # must not rebuild the images of the other flavours.
            "recipe": recipe.triple_digest,
            "code": step_code(steps.do_build)}, sort_keys=True)
        names = []
        for flavour in recipe.kernel_flavours:
            name = task_name(recipe.image, flavour)
            names.append(f"build:{name}")
            stamp = layout.triple_stamp(recipe.image, flavour)
            yield {"name": name,
                   "actions": [(guarded, [f"build {name}", steps.do_build, recipe, flavour,
                                          layout])],
                   "file_dep": [str(layout.root_stamp(recipe.image, flavour))],
                   "targets": [str(stamp)],
                   "uptodate": [config_changed(identity), (triple_present, [str(stamp)])],
                   "clean": [(do_clean, [[stamp]])]}
        yield {"name": recipe.image, "actions": None, "task_dep": names,
               "doc": f"every triple of recipe {recipe.image}"}


def publish_action(inventory: str, apply_tgt: bool, control_port: int | None):
    """doit action of ``publish``: load the inventory, then publish it."""
    def run() -> None:
        path = Path(inventory)
        if not path.is_file():
            raise PipelineError(f"{path}: no such inventory",
                                hint="copy inventory.example.yaml to inventory.yaml and edit it, "
                                     "or name one with: doit publish --inventory FILE")
        recipes = {recipe.image: recipe for recipe in load()}
        fleet = load_inventory(path, recipes)
        publish(fleet, SETTINGS.layout.triples, apply_tgt=apply_tgt,
                tgt_control_port=control_port)
    return guarded("publish", run)


def task_publish():
    """Publish the inventory's machines: TFTP/iPXE tree, disks, tgt and dnsmasq configuration."""
    return {"actions": [(publish_action,)],
            "params": [
                {"name": "inventory", "long": "inventory", "default": str(SETTINGS.inventory),
                 "help": "the site inventory (default: inventory.yaml in the project)"},
                {"name": "apply_tgt", "long": "apply", "type": bool, "default": False,
                 "help": "also load the tgt configuration into the running tgtd (tgt-admin)"},
                {"name": "control_port", "long": "control-port", "type": int, "default": None,
                 "help": "tgtd's control port for --apply (tgt-admin -C)"}],
            "task_dep": ["build"],
            "uptodate": [False],
            "verbosity": 2}


def do_repro(recipe: Recipe, flavours: list[str] | None, name: str) -> None:
    work = SETTINGS.out / "repro" / name
    result = repro.run(SETTINGS.root, recipe, flavours, work, f"build:{name}")
    print(result.table(), flush=True)
    if not result.same:
        raise PipelineError(
            f"{name} is not reproducible: {len(result.different)} of {len(result.parts)} "
            "files differ between the two builds; the reports are named above",
            hint=f"both builds stay in {work} for a closer look")
    print(f"    {name}: both builds are the same, byte for byte ({len(result.parts)} files)")


def task_repro():
    """Build a recipe's triples twice from clean state, varying what must not matter, and compare."""
    for recipe in load():
        names = [(recipe.image, None)] + [(task_name(recipe.image, f), [f])
                                          for f in recipe.kernel_flavours]
        for name, flavours in names:
            yield {"name": name,
                   "actions": [(guarded, [f"repro {name}", do_repro, recipe, flavours, name])],
                   "uptodate": [False],
                   "verbosity": 2,
                   "doc": f"build {name} twice in {SETTINGS.out / 'repro' / name} and compare"}
