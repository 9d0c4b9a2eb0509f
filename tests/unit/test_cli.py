"""``python3 -m pipeline`` (pipeline/cli.py), run as the user runs it."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[2]
RELEASE = "6.1.0-9-amd64"
COMMANDS = ("audit", "fit", "verify", "publish", "gc", "reprovision", "remove-backup", "lab")


def cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(PROJECT)}
    return subprocess.run([sys.executable, "-m", "pipeline", *map(str, args)], cwd=PROJECT,
                          env=env, capture_output=True, text=True, timeout=60)


@pytest.fixture
def triple(tmp_path) -> dict[str, Path]:
    """Three small files and a manifest naming their sha256 and size."""
    stem = f"trixie_{RELEASE}"
    contents = {"kernel": (".vmlinuz", b"kernel bytes\x00\x01"),
                "initrd": (".initrd.img", b"initramfs bytes" * 10),
                "root": (".root.ext4", bytes(range(256)) * 4)}
    paths, parts = {}, {}
    for part, (suffix, data) in contents.items():
        path = tmp_path / (stem + suffix)
        path.write_bytes(data)
        paths[part] = path
        parts[part] = {"file": path.name, "sha256": hashlib.sha256(data).hexdigest(),
                       "size": len(data)}
    manifest = tmp_path / (stem + ".manifest.json")
    manifest.write_text(json.dumps({"format": 1, "image": "trixie", "kernel_release": RELEASE,
                                    "parts": parts}))
    paths["manifest"] = manifest
    return paths


def test_no_arguments_is_a_usage_error():
    r = cli()
    assert r.returncode == 2
    assert "usage:" in r.stderr


def test_unknown_command():
    r = cli("frobnicate", "x_6.1.0-9-amd64.manifest.json")
    assert r.returncode == 2
    assert "usage:" in r.stderr
    assert "invalid choice: 'frobnicate'" in r.stderr


def test_unknown_command_alone_names_every_command():
    r = cli("lab-boot")
    assert r.returncode == 2
    assert r.stderr.startswith("usage: python3 -m pipeline ")
    assert "invalid choice: 'lab-boot'" in r.stderr
    for command in COMMANDS:
        assert f"'{command}'" in r.stderr
    assert "Traceback" not in r.stderr and r.stdout == ""


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command):
    r = cli(command, "--help")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"usage: python3 -m pipeline {command} ")


def test_lab_help():
    r = cli("lab", "--help")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("usage: python3 -m pipeline lab ")
    for option in ("MANIFEST", "--down N", "--timeout S", "--keep DIR"):
        assert option in r.stdout


def test_lab_without_a_manifest_is_a_usage_error():
    r = cli("lab", "--down", "0")
    assert r.returncode == 2
    assert r.stderr.startswith("usage: python3 -m pipeline lab ")
    assert "required: MANIFEST" in r.stderr


def test_lab_bad_triple_name_is_one_error_line(tmp_path):
    r = cli("lab", tmp_path / "notatriple.manifest.json")
    assert r.returncode == 2
    assert r.stderr.startswith("error: ") and "notatriple.manifest.json" in r.stderr
    assert len(r.stderr.splitlines()) == 1 and r.stdout == ""


def test_help_lists_commands():
    r = cli("--help")
    assert r.returncode == 0
    for command in ("audit", "fit", "verify"):
        assert command in r.stdout


@pytest.mark.parametrize("name", ["notatriple.manifest.json", "trixie_abc.manifest.json",
                                  "trixie_..manifest.json"])
def test_bad_triple_name(tmp_path, name):
    r = cli("verify", tmp_path / name)
    assert r.returncode == 2
    assert r.stderr.startswith("error: ")
    assert name in r.stderr
    assert "Traceback" not in r.stderr
    assert r.stdout == ""


def test_verify_ok(triple):
    r = cli("verify", triple["manifest"])
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout == f"trixie_{RELEASE}: verify ok\n"


@pytest.mark.parametrize("part", ["kernel", "initrd", "root"])
def test_verify_accepts_any_file_of_the_triple(triple, part):
    r = cli("verify", triple[part])
    assert r.returncode == 0, r.stdout + r.stderr
    assert "verify ok" in r.stdout


@pytest.mark.parametrize("part", ["kernel", "initrd", "root"])
def test_verify_fails_after_one_byte_changes(triple, part):
    path = triple[part]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    r = cli("verify", triple["manifest"])
    assert r.returncode == 1
    assert r.stdout.splitlines() == [f"{path}: does not match the manifest's size or sha256"]


def test_verify_missing_part(triple):
    triple["initrd"].unlink()
    r = cli("verify", triple["manifest"])
    assert r.returncode == 1
    assert f"{triple['initrd']}: missing" in r.stdout
    assert "verify ok" not in r.stdout


def test_verify_missing_manifest(tmp_path):
    manifest = tmp_path / f"trixie_{RELEASE}.manifest.json"
    r = cli("verify", manifest)
    assert r.returncode == 1
    assert r.stdout.strip() == f"{manifest}: no such file"


def test_verify_several_triples_one_bad(triple, tmp_path):
    missing = tmp_path / "other" / f"bookworm_{RELEASE}.manifest.json"
    r = cli("verify", triple["manifest"], missing)
    assert r.returncode == 1
    assert f"trixie_{RELEASE}: verify ok" in r.stdout
    assert f"{missing}: no such file" in r.stdout


def test_audit_missing_files_is_an_error(tmp_path):
    r = cli("audit", tmp_path / f"trixie_{RELEASE}.manifest.json")
    assert r.returncode == 2
    assert "no such file" in r.stderr


def fit_triple(tmp_path: Path, initrd_release: str) -> Path:
    """A triple that fit can read: fake bzImage, gzip cpio initramfs, ext4 root."""
    stem = tmp_path / f"trixie_{RELEASE}"
    kernel = bytearray(0x1000)
    kernel[0x202:0x206] = b"HdrS"
    kernel[0x20E:0x210] = (0x300).to_bytes(2, "little")
    text = f"{RELEASE} (debian-kernel@lists.debian.org) #1 SMP".encode() + b"\0"
    kernel[0x500:0x500 + len(text)] = text
    Path(f"{stem}.vmlinuz").write_bytes(bytes(kernel))
    for name, release in (("initrd", initrd_release), ("root", RELEASE)):
        tree = tmp_path / f"{name}-tree"
        (tree / f"usr/lib/modules/{release}").mkdir(parents=True)
        (tree / f"usr/lib/modules/{release}/modules.dep").write_text("")
    names = subprocess.run(["find", "."], cwd=tmp_path / "initrd-tree", check=True,
                           capture_output=True).stdout
    archive = subprocess.run(["cpio", "--quiet", "-o", "-H", "newc"], cwd=tmp_path / "initrd-tree",
                             input=names, check=True, capture_output=True).stdout
    Path(f"{stem}.initrd.img").write_bytes(
        subprocess.run(["gzip", "-n"], input=archive, check=True, capture_output=True).stdout)
    root = Path(f"{stem}.root.ext4")
    with open(root, "wb") as handle:
        handle.truncate(8 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(tmp_path / "root-tree"), str(root)],
                   check=True, capture_output=True)
    return Path(f"{stem}.manifest.json")


def test_fit_ok(tmp_path):
    r = cli("fit", fit_triple(tmp_path, RELEASE))
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout == f"trixie_{RELEASE}: fit ok\n"


def test_fit_mismatch(tmp_path):
    r = cli("fit", fit_triple(tmp_path, "6.1.0-10-amd64"))
    assert r.returncode == 1
    assert f"initramfs trixie_{RELEASE}.initrd.img has modules for ['6.1.0-10-amd64']" in r.stdout
    assert "kernel trixie" not in r.stdout and "root image" not in r.stdout


def test_fit_missing_files_is_a_clean_error(tmp_path):
    r = cli("fit", tmp_path / f"trixie_{RELEASE}.manifest.json")
    assert "Traceback" not in r.stderr
    assert r.returncode in (1, 2)
    assert "no such file" in (r.stdout + r.stderr).lower()


def test_example_inventory_is_valid():
    from pipeline.fleet.inventory import load_inventory
    from pipeline.build.recipe import load_recipes
    recipes = {r.image: r for r in load_recipes(PROJECT / "recipes", PROJECT / "overlays")}
    fleet = load_inventory(PROJECT / "inventory.example.yaml", recipes)
    assert [m.name for m in fleet.machines] == ["web1", "web2"]


def test_fleet_command_on_a_bad_inventory_names_file_and_key(tmp_path):
    bad = tmp_path / "inventory.yaml"
    text = (PROJECT / "inventory.example.yaml").read_text()
    bad.write_text(text.replace("tftp_root: /srv/tftp", f"tftp_root: {tmp_path / 'tftp'}")
                   .replace("store: /srv/iscsi", f"store: {tmp_path / 'store'}")
                   .replace("name: web2", "name: Web_2"))
    proc = cli("publish", "--inventory", bad, "--triples", tmp_path / "none")
    assert proc.returncode == 2
    assert f"{bad}: machines[52:54:00:12:34:02].name: " in proc.stderr, proc.stderr
    assert not (tmp_path / "tftp").exists() and not (tmp_path / "store").exists()


def test_fleet_command_without_inventory_says_how_to_make_one(tmp_path):
    proc = cli("gc", "--inventory", tmp_path / "missing.yaml")
    assert proc.returncode == 2
    assert "no such inventory" in proc.stderr and "inventory.example.yaml" in proc.stderr
