"""Integration: the mkosi recipe's triple, built with the real mkosi.

The recipe (recipes/trixie-mkosi.yaml, one flavour) is built in a scratch
project of its own (``out/it-mkosi/``), once per module; the tests read that
build.  Everything after the base tree is the same code as for mmdebstrap,
so the checks are those of the default build: fit, audit, manifest, plus
what the base tree must be whichever tool made it, and the boot proof of
tests/integration/test_lab.py's first test in short: multi-user in the lab
within the same bound, the root on the multipath map with both paths
active, a clean poweroff.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest

from pipeline.build import bootstrappers, kernel
from pipeline.build.bootstrappers import base_tree, mkosi
from pipeline.lab.namespace import Lab
from pipeline.naming import Triple
from scratch_build import (SCRATCH, assert_checks_pass, boot_ready, doit_in,
                           make_single_recipe_project, manifest_in, steps_run)

IMAGE, FLAVOUR = "trixie-mkosi", "amd64"
TASK = f"build:{IMAGE}-{FLAVOUR}"
PROJECT_DIR = SCRATCH.with_name(SCRATCH.name + "-mkosi")
BASE = PROJECT_DIR / "out/work" / IMAGE / "base"
# test_lab.py's bounds (TCG, 2 cores): the mkosi triple must boot as fast.
BOOT_BOUND = 300
POWEROFF_BOUND = 60


@pytest.fixture(scope="module")
def mkosi_manifest() -> Path:
    problem = bootstrappers.problem("mkosi")
    if problem:
        pytest.fail(f"{problem} ({mkosi.INSTALL_HINT})")
    make_single_recipe_project(PROJECT_DIR, IMAGE)
    start = time.monotonic()
    proc = doit_in(PROJECT_DIR, TASK)
    print(f"\n{TASK}: {time.monotonic() - start:.0f} s; steps: {sorted(steps_run(proc.stdout))}")
    return manifest_in(PROJECT_DIR, IMAGE, FLAVOUR)


def test_the_triple_passes_verify_fit_and_audit(mkosi_manifest):
    assert_checks_pass(mkosi_manifest)


def test_the_manifest_names_mkosi_and_the_same_package_set_as_the_recipe(mkosi_manifest):
    manifest = json.loads(mkosi_manifest.read_text())
    assert manifest["image"] == IMAGE and manifest["flavour"] == FLAVOUR
    assert manifest["suite"] == "trixie"
    assert mkosi_manifest.name == f"{IMAGE}_{manifest['kernel_release']}.manifest.json"
    assert manifest["tools"]["mkosi"].startswith("mkosi 2")
    for package in ("apt", "linux-image-amd64", "open-iscsi", "multipath-tools-boot",
                    "initramfs-tools", "openssh-server"):
        assert package in manifest["packages"], package
    assert manifest["parts"]["root"]["label"] == "debian-root"


def test_the_triple_boots_in_the_lab_with_its_root_on_two_paths(mkosi_manifest, tmp_path):
    with Lab(Triple.from_manifest(mkosi_manifest), tmp_path / "lab") as lab:
        guest, seconds = boot_ready(lab, BOOT_BOUND, name="mkosi")
        try:
            console = guest.console_text()
            status = re.search(r"open-iscsi-boot: root (/dev/dm-\d+) .*paths (\d)/(\d) active",
                               console)
            assert status, console[-3000:]
            assert status.group(2) == status.group(3) == "2"
            root = guest.check("findmnt -n -o SOURCE /")
            assert root.startswith(("/dev/mapper/", "/dev/dm-")), root
            assert guest.check("lsblk -n -o TYPE $(findmnt -n -o SOURCE /)").strip() == "mpath"
            assert guest.wait_paths(2, 60) is not None, guest.check("multipath -ll")
            took = guest.poweroff(POWEROFF_BOUND)
            assert took is not None, "poweroff did not complete"
        finally:
            guest.close()
    print(f"\nmkosi triple: multi-user after {seconds:.1f}s, poweroff {took:.1f}s")


def test_the_base_tree_is_what_every_bootstrapper_gives(mkosi_manifest):
    assert kernel.module_releases(BASE) == []
    assert not list((BASE / "boot").glob("vmlinuz*")) and not list((BASE / "boot").glob("initrd*"))
    lists = {p.name for p in (BASE / "var/lib/apt/lists").iterdir()}
    assert any(name.endswith("_InRelease") for name in lists), lists
    assert any(name.endswith("_Packages") for name in lists), lists
    sources = (BASE / "etc/apt/sources.list").read_text()
    assert sources.startswith("deb ") and sources.rstrip().endswith(" trixie main")
    assert list((BASE / "etc/apt/sources.list.d").glob("*")) == []
    assert "Package: apt\n" in (BASE / "var/lib/dpkg/status").read_text()
    for name, _, _ in base_tree.DEVICES:
        assert (BASE / "dev" / name).is_char_device(), name
    # What mkosi adds on its own is gone, and its presets changed no unit.
    for name in ("init", "efi", "usr/lib/clock-epoch", *mkosi.PRESET_FILES):
        assert not os.path.lexists(BASE / name), name
    wants = BASE / "etc/systemd/system/sockets.target.wants"
    assert not (wants / "ssh.socket").exists()


def test_mkosi_worked_in_its_scratch_folder_only(mkosi_manifest):
    scratch = PROJECT_DIR / "out/work" / IMAGE / "bootstrapper"
    conf = (scratch / mkosi.CONF / "mkosi.conf").read_text()
    for line in conf.splitlines():
        if line.split("=", 1)[0].endswith(("Directory", "Trees")):
            assert line.split("=", 1)[1].startswith(str(scratch)), line
    assert any((scratch / mkosi.PACKAGE_CACHE).rglob("*.deb"))
    assert not (scratch / mkosi.WORKSPACE).exists()


def test_a_second_build_does_no_work(mkosi_manifest):
    proc = doit_in(PROJECT_DIR, TASK)
    assert steps_run(proc.stdout) == set(), proc.stdout
