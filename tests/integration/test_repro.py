"""Reproducibility proved with real builds.

The first build is the session's one build (conftest.py's ``built``, in
``out/it``).  The second is a clean build of the same recipe in another
project (``out/it-repro``): other build path, time zone, locale, umask, host name and hash seed, and a lock
made from the first build's manifest, so that an update of the mirror
between the two builds cannot pass for a reproducibility failure (and the
lock is proved on the way).  Every part of the triple must be the same.

Then a deliberately varied input, an initramfs hook that writes the build
time into the initramfs and into the root, must be caught, with diffoscope
reports that name the file.
"""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

import pytest
import yaml

from pipeline.build import repro
from pipeline.runner import CommandError
from scratch_build import FLAVOUR, IMAGE, PROJECT, SCRATCH, TASK, current_manifest, doit, scratch_recipes

SECOND = PROJECT / "out" / "it-repro"
HOOK = "etc/initramfs-tools/hooks/zz-pipeline-it-build-time"
HOOK_TEXT = """\
#!/bin/sh
# Test only: what a careless hook does.  Token {token}
PREREQ=""
case "$1" in prereqs) echo "$PREREQ"; exit 0 ;; esac
date +%s.%N > "$DESTDIR/etc/pipeline-it-build-time"
date +%s.%N > /etc/pipeline-it-build-time
"""


def make_second(dest: Path, lock: dict[str, str]) -> None:
    """A copy of the first build's project, locked to ``lock``."""
    repro.prepare(SCRATCH, scratch_recipes()[IMAGE], [FLAVOUR], dest)
    (dest / "recipes" / "first.manifest.json").write_text(json.dumps({"packages": lock}))
    path = dest / "recipes" / f"{IMAGE}.yaml"
    data = yaml.safe_load(path.read_text())
    data["lock"] = "first.manifest.json"
    path.write_text(yaml.safe_dump(data, sort_keys=False))


@pytest.fixture(scope="module")
def second(built):
    first_packages = json.loads(built.read_text())["packages"]
    make_second(SECOND, first_packages)
    repro.build(SECOND, TASK, repro.SECOND)
    return SECOND


def test_a_clean_rebuild_elsewhere_is_the_same_bytes(built, second):
    result = repro.check(built.parent, second / "out" / "triples")
    print("\n" + result.table())
    reports = "\n".join(p.report.read_text()[:3000] for p in result.different if p.report)
    assert result.same, result.table() + "\n" + reports
    assert sorted(p.second.name for p in result.parts) == sorted(
        built.name.replace(".manifest.json", suffix)
        for suffix in (".vmlinuz", ".initrd.img", ".root.ext4", ".manifest.json"))


def test_a_build_time_stamp_is_caught_and_reported(built, second):
    token = uuid.uuid4().hex  # new every run: no initramfs made earlier can be reused
    hooks = [project / "overlays" / "it-marker" / HOOK for project in (SCRATCH, second)]
    try:
        for hook in hooks:
            hook.parent.mkdir(parents=True, exist_ok=True)
            hook.write_text(HOOK_TEXT.format(token=token))
            hook.chmod(0o755)
        doit(TASK)
        repro.build(second, TASK, repro.SECOND)
        result = repro.check(current_manifest().parent, second / "out" / "triples")
        different = {p.part: p for p in result.different}
        assert set(different) == {"initrd", "root", "manifest"}, result.table()
        root_report = different["root"].report.read_text()
        assert "/etc/pipeline-it-build-time" in root_report, root_report[:3000]
        assert "etc/pipeline-it-build-time" in different["initrd"].report.read_text()
        # The manifest differs in exactly the two parts' hashes.
        assert '"sha256"' in different["manifest"].report.read_text()
        assert different["root"].report.parent == second / "out" / "triples"
    finally:
        for hook in hooks:
            hook.unlink(missing_ok=True)
        doit(TASK)  # back to the triple the other tests know


def test_a_version_the_mirror_does_not_have_stops_the_build(built, tmp_path):
    packages = dict(json.loads(built.read_text())["packages"])
    packages["zstd"] = "0.0.1-1"
    project = PROJECT / "out" / "it-repro-lock"
    try:
        make_second(project, packages)
        with pytest.raises(CommandError) as info:
            repro.build(project, f"bootstrap:{IMAGE}", repro.FIRST)
        assert "zstd is " in str(info.value) and "the lock says 0.0.1-1" in str(info.value), \
            str(info.value)[-3000:]
        assert not (project / "out" / "work" / IMAGE / "base").exists()
    finally:
        shutil.rmtree(project, ignore_errors=True)

