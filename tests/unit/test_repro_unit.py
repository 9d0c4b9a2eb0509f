"""pipeline/repro.py without builds: comparing, reporting, how a build is started."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.build import scratch as project, repro
from pipeline import runner
from pipeline.errors import PipelineError
from pipeline.build.recipe import load_recipe

PROJECT = Path(__file__).resolve().parents[2]
STEM = "demo_6.12.57+deb13-amd64"


def fake_triple(folder: Path, **content: bytes) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    parts = {"kernel": b"bzImage", "initrd": b"cpio", "root": b"ext4",
             "manifest": json.dumps({"image": "demo", "packages": {"vim": "2:9.1-1"}},
                                    indent=2).encode()}
    parts.update(content)
    suffixes = {"kernel": ".vmlinuz", "initrd": ".initrd.img", "root": ".root.ext4",
                "manifest": ".manifest.json"}
    for part, data in parts.items():
        (folder / (STEM + suffixes[part])).write_bytes(data)


def test_same_bytes_are_the_same(tmp_path: Path) -> None:
    fake_triple(tmp_path / "a")
    fake_triple(tmp_path / "b")
    result = repro.compare(tmp_path / "a", tmp_path / "b")
    assert result.same and len(result.parts) == 4 and not result.different
    assert "DIFFERENT" not in result.table()


def test_one_byte_is_a_difference_and_a_missing_part_too(tmp_path: Path) -> None:
    fake_triple(tmp_path / "a")
    fake_triple(tmp_path / "b", initrd=b"cpiO")
    (tmp_path / "a" / f"{STEM}.vmlinuz").unlink()
    result = repro.compare(tmp_path / "a", tmp_path / "b")
    assert not result.same
    assert [(p.part, p.first_sha256 is None) for p in result.different] == [
        ("kernel", True), ("initrd", False)]


def test_nothing_to_compare_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    with pytest.raises(PipelineError, match="no triple to compare"):
        repro.compare(tmp_path / "a", tmp_path / "b")


def test_a_differing_manifest_gets_a_diffoscope_report(tmp_path: Path) -> None:
    fake_triple(tmp_path / "a")
    other = json.dumps({"image": "demo", "packages": {"vim": "2:9.1-2"}}, indent=2).encode()
    fake_triple(tmp_path / "b", manifest=other)
    (tmp_path / "a" / f"{STEM}.initrd.img").unlink()
    result = repro.check(tmp_path / "a", tmp_path / "b")
    reports = {p.part: p.report for p in result.different}
    assert set(reports) == {"initrd", "manifest"}
    text = reports["manifest"].read_text()
    assert reports["manifest"] == tmp_path / "b" / f"{STEM}.manifest.json.diffoscope.txt"
    assert '2:9.1-1' in text and '2:9.1-2' in text
    assert "missing" in reports["initrd"].read_text()
    assert f"report {reports['manifest']}" in result.table()


def test_the_second_build_runs_in_its_own_uts_namespace_with_everything_changed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls, real_run = [], runner.run
    monkeypatch.setattr(runner, "run", lambda argv, **kw: calls.append((argv, kw)) or "")
    repro.build(tmp_path, "build:demo-amd64", repro.SECOND)
    [(argv, kw)] = calls
    assert argv[:3] == ["unshare", "--uts", "sh"]
    assert argv[5:] == ["sh", repro.SECOND.hostname, "0077", sys.executable, "-m", "doit",
                        "build:demo-amd64"]
    assert kw["cwd"] == tmp_path
    assert kw["env"] == {"TZ": "Pacific/Chatham", "LANG": "fr_FR.UTF-8", "LC_ALL": "fr_FR.UTF-8",
                         "PYTHONHASHSEED": "4242"}
    # The script does what it says, in a real shell.
    script = argv[4]
    out = real_run(["unshare", "--uts", "sh", "-c", script, "sh", "repro-probe", "0077",
                      "sh", "-c", "hostname; umask"])
    assert out.split() == ["repro-probe", "0077"]
    assert os.uname().nodename != "repro-probe"
    # Every variation differs from the first build in each respect.
    for name in ("tz", "lang", "umask", "hostname", "hash_seed"):
        assert getattr(repro.FIRST, name) != getattr(repro.SECOND, name), name


def test_the_copied_recipe_keeps_its_content(tmp_path: Path) -> None:
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    (recipes / "lock.json").write_text(json.dumps({"packages": {"systemd": "257.9-1"}}))
    text = (PROJECT / "recipes" / "trixie.yaml").read_text() + "lock: lock.json\n"
    (recipes / "trixie.yaml").write_text(text)
    recipe = load_recipe(recipes / "trixie.yaml", PROJECT / "overlays")
    copy = yaml.safe_load(repro.recipe_text(recipe, ["cloud-amd64"]))
    assert copy["kernel_flavours"] == ["cloud-amd64"]
    assert copy["lock"] == [str(recipes / "lock.json")]
    elsewhere = tmp_path / "elsewhere" / "recipes"
    elsewhere.mkdir(parents=True)
    (elsewhere / "trixie.yaml").write_text(repro.recipe_text(recipe, ["cloud-amd64"]))
    again = load_recipe(elsewhere / "trixie.yaml", PROJECT / "overlays")
    assert again.triple_digest == recipe.triple_digest
    assert again.locked_versions == recipe.locked_versions


def test_listing_says_what_differs(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/issue").write_text("Debian\n")
    (root / "etc/localtime").symlink_to("/usr/share/zoneinfo/UTC")
    first = repro.listing(root)
    assert set(first) == {"/", "/etc", "/etc/issue", "/etc/localtime"}
    assert "-> /usr/share/zoneinfo/UTC" in first["/etc/localtime"]
    assert "sha256:" in first["/etc/issue"] and first["/etc/issue"].startswith("-rw")
    (root / "etc/issue").chmod(0o600)
    assert repro.listing(root)["/etc/issue"] != first["/etc/issue"]


def test_write_project_rewrites_only_what_changed(tmp_path: Path) -> None:
    overlays = tmp_path / "src-overlays"
    (overlays / "base/etc").mkdir(parents=True)
    (overlays / "base/etc/motd").write_text("hello\n")
    (overlays / "base/etc/old").write_text("old\n")
    (overlays / "base/etc/link").symlink_to("motd")
    dest = tmp_path / "project"
    project.write_project(dest, {"demo.yaml": "image: demo\n"}, overlays=overlays)
    assert (dest / "overlays/base/etc/motd").read_text() == "hello\n"
    assert os.readlink(dest / "overlays/base/etc/link") == "motd"
    assert (dest / "open-iscsi-boot/debian/control").is_file()
    assert not (dest / "open-iscsi-boot").is_symlink()
    assert f"sys.path.insert(0, {str(project.CHECKOUT)!r})" in (dest / "dodo.py").read_text()
    # A folder the caller added stays; what the source dropped goes.
    (dest / "overlays/mine").mkdir()
    (overlays / "base/etc/old").unlink()
    stamp = (dest / "overlays/base/etc/motd").stat().st_mtime_ns
    os.utime(dest / "dodo.py", ns=(1, 1))
    project.write_project(dest, {"other.yaml": "image: other\n"}, overlays=overlays,
                          link_packages=True)
    assert (dest / "overlays/base/etc/motd").stat().st_mtime_ns == stamp
    assert (dest / "dodo.py").stat().st_mtime_ns == 1
    assert not (dest / "overlays/base/etc/old").exists() and (dest / "overlays/mine").is_dir()
    assert sorted(p.name for p in (dest / "recipes").iterdir()) == ["other.yaml"]
    assert (dest / "open-iscsi-boot").is_symlink()


def test_repro_refuses_an_mke2fs_that_cannot_repeat_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline import ext4
    monkeypatch.setattr(ext4, "mke2fs_version", lambda text=None: (1, 47, 0))
    with pytest.raises(PipelineError, match="1.47.1 or newer"):
        repro.require_tools()
    monkeypatch.setattr(ext4, "mke2fs_version", lambda text=None: (1, 47, 2))
    repro.require_tools()


def test_an_initramfs_report_names_the_member_that_differs(tmp_path: Path) -> None:
    from pipeline.cpio import S_IFDIR, S_IFREG, write_newc
    early = write_newc([("kernel", S_IFDIR | 0o755, b"")])
    common = [("etc", S_IFDIR | 0o755, b""), ("etc/issue", S_IFREG | 0o644, b"Debian\n")]
    first, second = tmp_path / "first.img", tmp_path / "second.img"
    first.write_bytes(early + write_newc(common + [("etc/stamp", S_IFREG | 0o644, b"1700000000\n")]))
    second.write_bytes(early + write_newc(common + [("etc/stamp", S_IFREG | 0o644, b"1700000042\n")]))
    dest = tmp_path / "second.img.diffoscope.txt"
    repro.initrd_report(first, second, dest)
    text = dest.read_text()
    assert "[1] /etc/stamp" in text and "1700000042" in text and "1700000000" in text
    copies = tmp_path / "second.img.diffoscope"
    assert (copies / "second/files/archive-1/etc/stamp").read_bytes() == b"1700000042\n"
    assert not (copies / "second/files/archive-1/etc/issue").exists()
