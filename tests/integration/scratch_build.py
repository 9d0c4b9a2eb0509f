"""The integration tier's scratch project and the commands the tests run in it.

One scratch project (``out/it/``, or ``$PIPELINE_IT_PROJECT``) holds the
default recipe with one flavour and a test overlay with a marker file; its
``dodo.py`` imports this project's task creators, as another project would.
conftest.py builds it once per session (the ``built`` fixture); the tests
here read that build, change one input, or build elsewhere and compare.

A plain module, not a test module: tests import it by name (pytest puts this
folder on sys.path).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from pipeline.build.recipe import Recipe, load_recipes
from pipeline.build.scratch import write_project

PROJECT = Path(__file__).resolve().parents[2]
SCRATCH = Path(os.environ.get("PIPELINE_IT_PROJECT", PROJECT / "out" / "it"))
IMAGE, FLAVOUR = "trixie", "amd64"
TASK = f"build:{IMAGE}-{FLAVOUR}"
MARKER = "etc/pipeline-it-marker"
# The test overlay: files the tests add to the image (marker, hooks, conf.d).
TEST_OVERLAY = SCRATCH / "overlays" / "it-marker"


def make_scratch_project() -> None:
    """The default recipe with one flavour, plus a test overlay with a marker."""
    recipe = yaml.safe_load((PROJECT / "recipes" / f"{IMAGE}.yaml").read_text())
    recipe["kernel_flavours"] = [FLAVOUR]
    recipe["overlays"] = [*recipe.get("overlays", []), "it-marker"]
    other = PROJECT / "recipes" / "bookworm.yaml"
    write_project(SCRATCH, {f"{IMAGE}.yaml": yaml.safe_dump(recipe, sort_keys=False),
                            other.name: other.read_text()},
                  overlays=PROJECT / "overlays", link_packages=True)
    marker = TEST_OVERLAY / MARKER
    if not marker.exists():  # keep the last test's value: no rebuild at session start
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text("first\n")


def scratch_recipes() -> dict[str, Recipe]:
    """The scratch project's recipes, by image."""
    return {r.image: r for r in load_recipes(SCRATCH / "recipes", SCRATCH / "overlays")}


def doit(*args: str, check: bool = True, timeout: float = 1800) -> subprocess.CompletedProcess:
    """Run doit in the scratch project; every run is appended to its doit.log."""
    return doit_in(SCRATCH, *args, check=check, timeout=timeout)


def doit_in(project: Path, *args: str, check: bool = True,
            timeout: float = 1800) -> subprocess.CompletedProcess:
    """Run doit in ``project``; every run is appended to its doit.log."""
    proc = subprocess.run(["doit", *args], cwd=project, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=timeout)
    with open(project / "doit.log", "a") as log:
        log.write(f"\n$ doit {' '.join(args)}\n{proc.stdout}{proc.stderr}")
    if check and proc.returncode != 0:
        pytest.fail(f"doit {' '.join(args)} failed ({proc.returncode}):\n"
                    + "\n".join((proc.stdout + proc.stderr).splitlines()[-40:]))
    return proc


def steps_run(output: str) -> set[str]:
    """Steps that started, e.g. {'rootfs trixie-amd64'}."""
    return set(re.findall(r"^==> (.+?): start$", output, re.M)) - {"preflight"}


def manifest_of(image: str, flavour: str) -> Path:
    """The manifest of the triple the last build of ``image``-``flavour`` made."""
    return manifest_in(SCRATCH, image, flavour)


def manifest_in(project: Path, image: str, flavour: str) -> Path:
    """Like :func:`manifest_of`, in another scratch project."""
    stamp = json.loads((project / "out/work" / image / flavour / "triple.json").read_text())
    return project / "out/triples" / next(n for n in stamp["files"] if n.endswith(".manifest.json"))


def make_single_recipe_project(dest: Path, recipe_name: str) -> None:
    """A scratch project of its own holding one of this checkout's recipes as it is.

    Apart from the shared one, so that neither project's doit runs see the
    other's recipes (write_project removes recipes it was not given).
    """
    recipe = PROJECT / "recipes" / f"{recipe_name}.yaml"
    write_project(dest, {recipe.name: recipe.read_text()}, overlays=PROJECT / "overlays",
                  link_packages=True)


def current_manifest() -> Path:
    return manifest_of(IMAGE, FLAVOUR)


def pipeline_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["python3", "-m", "pipeline", *args], cwd=PROJECT,
                          capture_output=True, text=True, stdin=subprocess.DEVNULL)


def assert_checks_pass(manifest: Path) -> None:
    """verify, fit and audit each pass on the triple of ``manifest``."""
    for command in ("verify", "fit", "audit"):
        proc = pipeline_cli(command, str(manifest))
        assert proc.returncode == 0, f"{command}: {proc.stdout}{proc.stderr}"


def debugfs_cat(image: Path, path: str) -> str:
    """The text of ``path`` inside the ext4 ``image``, read without mounting it."""
    return subprocess.run(["debugfs", "-R", f"cat {path}", str(image)], capture_output=True,
                          text=True, check=True).stdout


def boot_ready(lab, bound: float, **boot_args):
    """Boot a machine in ``lab``; return (guest, seconds to multi-user).

    Fails the test with the console's tail if multi-user is not reached
    within ``bound`` seconds (the machine is stopped first).
    """
    guest = lab.boot(**boot_args)
    try:
        seconds = guest.wait_ready(bound)
    except TimeoutError:
        tail = guest.console_text()[-4000:]
        guest.close()
        pytest.fail(f"no multi-user target within {bound}s; console tail:\n{tail}")
    return guest, seconds
