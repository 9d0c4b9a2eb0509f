"""Integration tests: build the default recipe's amd64 triple with the real tools.

The build runs once per test session (conftest.py's ``built``) in the
scratch project of scratch_build.py (``out/it/``), whose ``dodo.py`` imports
this project's task creators, as another project would.  Later runs reuse it
(doit finds it up to date).  Every test here reads that one build or changes
one input and watches what doit re-runs.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import yaml

from pipeline.fsutil import mounts_under
from scratch_build import (FLAVOUR, IMAGE, MARKER, SCRATCH, TASK, TEST_OVERLAY, assert_checks_pass,
                           current_manifest, debugfs_cat, doit, manifest_of, pipeline_cli, steps_run)


def test_triple_is_named_by_image_and_release(built):
    manifest = json.loads(built.read_text())
    release = manifest["kernel_release"]
    stem = f"{IMAGE}_{release}"
    assert built.name == f"{stem}.manifest.json"
    for part, suffix in (("kernel", ".vmlinuz"), ("initrd", ".initrd.img"), ("root", ".root.ext4")):
        assert manifest["parts"][part]["file"] == stem + suffix
        assert (built.parent / (stem + suffix)).is_file()
    assert release.endswith("-amd64") and "cloud" not in release


def test_manifest_records_what_went_in(built):
    manifest = json.loads(built.read_text())
    recipe_text = (SCRATCH / "recipes" / f"{IMAGE}.yaml")
    assert manifest["source_date_epoch"] == yaml.safe_load(recipe_text.read_text())["source_date_epoch"]
    assert len(manifest["recipe"]["digest"]) == 64
    for package in ("linux-image-amd64", "open-iscsi", "multipath-tools-boot", "initramfs-tools"):
        assert package in manifest["packages"], package
    assert manifest["tools"]["mmdebstrap"].startswith("mmdebstrap")
    assert manifest["parts"]["root"]["label"] == "debian-root"
    # No build time and no host name: the manifest must be reproducible.
    values = []

    def walk(node):
        if isinstance(node, dict):
            values.extend(node.keys())
            for child in node.values():
                walk(child)
        elif isinstance(node, list):
            for child in node:
                walk(child)
        else:
            values.append(str(node))
    walk(manifest)
    assert os.uname().nodename not in values
    assert not any(re.search(r"\b20[0-9]{2}-[01][0-9]-[0-3][0-9]T", v) for v in values)


def test_verify_fit_and_audit_pass_on_the_artifacts(built):
    for command in ("verify", "fit", "audit"):
        proc = pipeline_cli(command, str(built))
        assert proc.returncode == 0, f"{command}: {proc.stdout}{proc.stderr}"
        assert f"{command} ok" in proc.stdout


def test_root_image_is_sparse_and_mounts_root_by_label(built, tmp_path):
    manifest = json.loads(built.read_text())
    root = built.parent / manifest["parts"]["root"]["file"]
    st = root.stat()
    assert st.st_blocks * 512 < st.st_size
    fstab = debugfs_cat(root, "/etc/fstab")
    assert re.search(r"^LABEL=debian-root\s+/\s+ext4", fstab, re.M), fstab
    assert "UUID=" not in fstab
    machine_id = debugfs_cat(root, "/etc/machine-id")
    assert machine_id == ""


def test_audit_catches_a_host_key_planted_in_the_image(built, tmp_path):
    """The audit can fail: plant per-machine state in a copy of the image."""
    manifest = json.loads(built.read_text())
    stem = built.name[: -len(".manifest.json")]
    for suffix in (".vmlinuz", ".initrd.img", ".manifest.json"):
        shutil.copyfile(built.parent / (stem + suffix), tmp_path / (stem + suffix))
    root = tmp_path / (stem + ".root.ext4")
    subprocess.run(["cp", "--sparse=always", str(built.parent / manifest["parts"]["root"]["file"]),
                    str(root)], check=True)
    key = tmp_path / "key"
    key.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n-----END OPENSSH PRIVATE KEY-----\n")
    subprocess.run(["debugfs", "-w", "-R", f"write {key} /etc/ssh/ssh_host_ed25519_key", str(root)],
                   check=True, capture_output=True)
    proc = pipeline_cli("audit", str(tmp_path / (stem + ".manifest.json")))
    assert proc.returncode == 1
    assert "/etc/ssh/ssh_host_ed25519_key: SSH host key" in proc.stdout
    assert "/etc/ssh/ssh_host_ed25519_key: private key material" in proc.stdout


def test_noop_rebuild_does_no_work(built):
    before = {p.name: p.stat().st_mtime_ns for p in built.parent.iterdir()}
    proc = doit(TASK)
    assert steps_run(proc.stdout) == set(), proc.stdout
    after = {p.name: p.stat().st_mtime_ns for p in built.parent.iterdir()}
    assert after == before


def test_package_list_change_reruns_the_bootstrap(built):
    path = SCRATCH / "recipes" / f"{IMAGE}.yaml"
    original = path.read_text()
    recipe = yaml.safe_load(original)
    try:
        recipe["packages"].append("less")
        path.write_text(yaml.safe_dump(recipe, sort_keys=False))
        status = doit("list", "--all", "--status").stdout
        assert re.search(rf"^R bootstrap:{IMAGE}\s*$", status, re.M), status
    finally:
        path.write_text(original)
    status = doit("list", "--all", "--status").stdout
    assert re.search(rf"^U bootstrap:{IMAGE}\s*$", status, re.M), status


def test_bad_recipe_stops_before_any_work(built):
    bad = SCRATCH / "recipes" / "broken.yaml"
    def snapshot():
        paths = [*(SCRATCH / "out/triples").iterdir(), *(SCRATCH / "out/work").rglob("*.json*"),
                 *(SCRATCH / "out/work").glob("*/*"), *(SCRATCH / "out/work").glob("*/*/*")]
        return {p: p.lstat().st_mtime_ns for p in paths}
    before = snapshot()
    db_before = (SCRATCH / "out/.doit.db").read_bytes()
    try:
        bad.write_text("image: ../evil\nsuite: trixie\npackages: [bash]\nkernel_flavours: []\n")
        proc = doit(TASK, check=False)
    finally:
        bad.unlink()
    assert proc.returncode != 0
    assert "broken.yaml: image:" in proc.stderr
    assert "broken.yaml: kernel_flavours:" in proc.stderr
    assert "broken.yaml: source_date_epoch:" in proc.stderr
    assert "==>" not in proc.stdout
    assert snapshot() == before
    assert (SCRATCH / "out/.doit.db").read_bytes() == db_before


def start_and_kill(pattern: str, timeout: float = 900) -> str:
    """Start the build; SIGKILL its whole process group once ``pattern`` is printed."""
    proc = subprocess.Popen(["doit", TASK], cwd=SCRATCH, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    seen = []
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            seen.append(line)
            if re.search(pattern, line):
                break
            assert time.monotonic() < deadline, "timed out waiting for " + pattern
        else:
            pytest.fail(f"build ended before {pattern!r}:\n" + "".join(seen[-30:]))
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return "".join(seen)


def assert_old_triple_intact(manifest: Path, data: dict) -> None:
    assert json.loads(manifest.read_text()) == data
    proc = pipeline_cli("verify", str(manifest))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for path in manifest.parent.iterdir():
        assert not path.name.endswith(".old")


def test_overlay_change_survives_sigkill_and_rebuilds_only_after_bootstrap(built):
    old_data = json.loads(built.read_text())
    value = f"{uuid.uuid4()}\n"
    (TEST_OVERLAY / MARKER).write_text(value)

    # Killed in the middle of the root step (while the initramfs is made)...
    start_and_kill(r"update-initramfs|mkinitramfs")
    assert_old_triple_intact(built, old_data)
    assert list(SCRATCH.glob("out/work/*/*/rootfs.partial"))  # it was interrupted mid-write

    # ...and again while the root image is written.
    output = start_and_kill(r"^==> build .*: start")
    assert "==> rootfs" in output
    time.sleep(1.5)
    os.sync()
    assert_old_triple_intact(built, old_data)

    # The next build finishes and is correct; the base and kernel are reused.
    # (doit records a task as done only when the run ends, so the root step
    # that finished before the second kill runs again.)
    proc = doit(TASK)
    ran = steps_run(proc.stdout)
    assert f"build {IMAGE}-{FLAVOUR}" in ran, proc.stdout
    assert ran <= {f"rootfs {IMAGE}-{FLAVOUR}", f"build {IMAGE}-{FLAVOUR}"}, proc.stdout
    manifest = current_manifest()
    new_data = json.loads(manifest.read_text())
    assert new_data["parts"]["root"]["sha256"] != old_data["parts"]["root"]["sha256"]
    root = manifest.parent / new_data["parts"]["root"]["file"]
    assert debugfs_cat(root, f"/{MARKER}") == value
    assert_checks_pass(manifest)
    assert mounts_under(SCRATCH) == []
    assert not list(SCRATCH.glob("out/**/*.partial"))


def test_bookworm_triple_with_debootstrap(built):
    """The other bootstrapper and the other suite: a whole triple, checked."""
    doit("-n", "2", "build:bookworm-amd64")  # also proves the tasks work with doit -n
    manifest = manifest_of("bookworm", "amd64")
    data = json.loads(manifest.read_text())
    assert manifest.name.startswith("bookworm_6.1.")
    assert data["tools"]["debootstrap"].startswith("debootstrap")
    assert data["packages"]["base-files"].startswith("12.")
    assert_checks_pass(manifest)
