"""The bootstrappers behind one interface: command lines, mkosi's generated
configuration, what each does after its command, and the host check.

The runner is faked only where a test would otherwise start a real
bootstrapper or chroot; the tool checks run fake tools on a fake PATH.
"""

from __future__ import annotations

import configparser
import os
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from pipeline import runner
from pipeline.build import bootstrap, bootstrappers, lock, manifest, recipe as recipe_module
from pipeline.build.bootstrappers import base_tree, debootstrap, mkosi, mmdebstrap
from pipeline.build.recipe import BOOTSTRAPPERS, load_recipe
from pipeline.errors import ConfigError, PipelineError
from pipeline.naming import Layout

PROJECT = Path(__file__).resolve().parents[2]
MIRROR = "http://mirror.example/debian"
LOCK = {"libc6:amd64": "2.41-12", "systemd": "257.9-1"}


@pytest.fixture
def recipe():
    loaded = load_recipe(PROJECT / "recipes" / "trixie-mkosi.yaml", PROJECT / "overlays")
    return replace(loaded, mirror=MIRROR)


def mkosi_conf(scratch: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # mkosi's keys are case-sensitive
    parser.read_string((scratch / mkosi.CONF / "mkosi.conf").read_text())
    return parser


class FakeRunner:
    """Records runner.run calls; ``mkosi`` leaves a small tree as mkosi would."""

    def __init__(self, scratch: Path) -> None:
        self.scratch = scratch
        self.calls: list[list[str]] = []

    def run(self, argv, **kwargs) -> str:
        argv = [str(a) for a in argv]
        self.calls.append(argv)
        if argv[0] == "mkosi":
            made = self.scratch / mkosi.OUTPUT / mkosi.OUTPUT_NAME
            for name in ("etc/apt/sources.list.d", "var/lib/apt/lists/partial",
                         "var/lib/apt/lists/auxfiles", "var/lib/dpkg", "usr/sbin"):
                (made / name).mkdir(parents=True, exist_ok=True)
            (made / "etc/apt/sources.list.d/trixie.sources").write_text("Types: deb\n")
            (made / "var/lib/apt/lists/mirror_dists_trixie_Release").write_text("unsigned\n")
            (made / "var/lib/dpkg/status").write_text("Package: apt\n")
        return ""


# -- the table and the interface ---------------------------------------------

def test_every_recipe_bootstrapper_has_a_module_with_the_whole_interface() -> None:
    assert set(bootstrappers.TABLE) == set(BOOTSTRAPPERS)
    for name, module in bootstrappers.TABLE.items():
        assert module.NAME == name
        assert module.TOOL and module.PACKAGE and module.INSTALL_HINT
        assert isinstance(module.HOLDS_LOCK, bool)
        assert callable(module.prepare) and callable(module.finish)
    with pytest.raises(PipelineError, match="unknown bootstrapper 'cdebootstrap'"):
        bootstrappers.get("cdebootstrap")


@pytest.mark.parametrize("name", sorted(bootstrappers.TABLE))
def test_the_recipe_takes_a_lock_exactly_for_the_bootstrappers_that_hold_one(
        name: str, tmp_path: Path) -> None:
    (tmp_path / "old.manifest.json").write_text('{"packages": {"systemd": "257.9-1"}}')
    data = yaml.safe_load((PROJECT / "recipes" / "trixie-mkosi.yaml").read_text())
    data.update(bootstrapper=name, lock="old.manifest.json", mirror=MIRROR)
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(data))
    if bootstrappers.get(name).HOLDS_LOCK:
        assert load_recipe(path, PROJECT / "overlays").locked_versions == {"systemd": "257.9-1"}
    else:
        with pytest.raises(ConfigError, match=rf"lock: needs bootstrapper .* not {name}"):
            load_recipe(path, PROJECT / "overlays")


# -- mmdebstrap and debootstrap ----------------------------------------------

def test_mmdebstrap_keeps_lists_and_carries_the_lock_pins(recipe, tmp_path: Path) -> None:
    plain = replace(recipe, bootstrapper="mmdebstrap")
    argv = mmdebstrap.prepare(plain, tmp_path / "tree", tmp_path)
    assert argv[:5] == ["mmdebstrap", "--mode=root", "--format=directory", "--variant=apt",
                        "--skip=cleanup/apt/lists"]
    assert argv[-3:] == ["trixie", str(tmp_path / "tree"), MIRROR]
    assert f"--include={','.join(recipe.packages)}" in argv
    assert not any("hook" in a for a in argv)
    locked = replace(plain, lock=tuple(sorted(LOCK.items())))
    argv = mmdebstrap.prepare(locked, tmp_path / "tree", tmp_path)
    pins = tmp_path / mmdebstrap.LOCK_PINS
    assert pins.read_text() == lock.preferences(LOCK)
    assert any(a.startswith("--setup-hook=") and str(pins) in a for a in argv)
    mmdebstrap.finish(locked, tmp_path / "tree", tmp_path, {})
    assert not pins.exists()


def test_debootstrap_gets_its_target_made_and_fetches_lists_after(recipe, tmp_path: Path,
                                                                 monkeypatch) -> None:
    target = tmp_path / "tree"
    argv = debootstrap.prepare(replace(recipe, bootstrapper="debootstrap"), target, tmp_path)
    assert target.is_dir()
    assert argv == ["debootstrap", "--variant=minbase", f"--include={','.join(recipe.packages)}",
                    "trixie", str(target), MIRROR]
    (target / "usr/sbin").mkdir(parents=True)  # as debootstrap leaves it
    fake = FakeRunner(tmp_path)
    monkeypatch.setattr(runner, "run", fake.run)
    debootstrap.finish(recipe, target, tmp_path, {"DEBIAN_FRONTEND": "noninteractive"})
    assert ["chroot", str(target), "apt-get", "update"] in fake.calls


# -- mkosi ------------------------------------------------------------------

def test_mkosi_conf_makes_a_kernel_less_directory_from_the_recipe(recipe, tmp_path: Path) -> None:
    scratch = tmp_path / "bootstrapper"
    argv = mkosi.prepare(recipe, tmp_path / "base.partial", scratch)
    assert argv == ["mkosi", f"--directory={scratch / 'conf'}", "--force", "build"]
    conf = mkosi_conf(scratch)
    assert dict(conf["Distribution"]) == {
        "Distribution": "debian", "Release": "trixie", "Mirror": MIRROR,
        "PackageManagerTrees": str(scratch / mkosi.APT_TREE)}
    assert conf["Output"]["Format"] == "directory"
    content = conf["Content"]
    assert content["Bootable"] == "no"
    assert content["CleanPackageMetadata"] == "no"       # the kernel step needs apt's state
    assert content["SourceDateEpoch"] == "1735689600"
    packages = content["Packages"].split(",")
    assert packages == ["apt", *recipe.packages]
    assert not any(p.startswith("linux-image") for p in packages)
    assert conf["Host"]["Incremental"] == "no"
    # Every folder mkosi writes is under the scratch folder, none in a checkout.
    for key in ("OutputDirectory", "WorkspaceDirectory", "CacheDirectory", "PackageCacheDirectory"):
        assert Path(conf["Output"][key]).parent == scratch, key
    assert content["BuildSources"] == ""


def test_mkosi_apt_uses_one_signed_source_and_the_recipe_options(recipe, tmp_path: Path) -> None:
    snapshot = replace(recipe, mirror_check_valid_until=False)
    mkosi.prepare(snapshot, tmp_path / "base.partial", tmp_path)
    tree = tmp_path / mkosi.APT_TREE
    assert (tree / mkosi.APT_SOURCES).read_text() == (
        f"Types: deb\nURIs: {MIRROR}\nSuites: trixie\nComponents: main\n"
        f"Signed-By: {mkosi.HOST_KEYRING}\n")
    options = (tree / base_tree.APT_CONF).read_text()
    assert 'Acquire::Check-Valid-Until "false";' in options
    assert 'Acquire::Languages "none";' in options
    assert not (tree / lock.PREFERENCES).exists()
    assert "LocalMirror" not in (tmp_path / "conf/mkosi.conf").read_text()


def test_mkosi_holds_a_lock_through_its_own_apt_only(recipe, tmp_path: Path) -> None:
    locked = replace(recipe, lock=tuple(sorted(LOCK.items())))
    mkosi.prepare(locked, tmp_path / "base.partial", tmp_path)
    pins = tmp_path / mkosi.APT_TREE / lock.PREFERENCES
    assert pins.read_text() == lock.preferences(LOCK)
    # The pins are given to mkosi's apt, not copied into the image.
    conf = mkosi_conf(tmp_path)
    assert str(tmp_path / mkosi.APT_TREE) not in conf["Content"]["ExtraTrees"]


def test_mkosi_presets_keep_units_as_packages_left_them_and_are_removed(recipe,
                                                                       tmp_path: Path) -> None:
    mkosi.prepare(recipe, tmp_path / "base.partial", tmp_path)
    conf = mkosi_conf(tmp_path)
    extra = Path(conf["Content"]["ExtraTrees"])
    removed = conf["Content"]["RemoveFiles"].split(",")
    for name in mkosi.PRESET_FILES:
        assert "ignore *" in (extra / name).read_text().splitlines()
        assert "/" + name in removed
    assert {"/init", "/efi", "/usr/lib/clock-epoch"} <= set(removed)


def test_mkosi_prepare_rewrites_its_config_but_keeps_the_package_cache(recipe,
                                                                      tmp_path: Path) -> None:
    mkosi.prepare(recipe, tmp_path / "base.partial", tmp_path)
    (tmp_path / mkosi.CONF / "mkosi.local.conf").write_text("[Content]\nPackages=vim\n")
    (tmp_path / mkosi.OUTPUT / "base").mkdir()
    (tmp_path / mkosi.PACKAGE_CACHE / "kept.deb").write_text("deb")
    mkosi.prepare(recipe, tmp_path / "base.partial", tmp_path)
    assert sorted(os.listdir(tmp_path / mkosi.CONF)) == ["mkosi.conf"]
    assert not (tmp_path / mkosi.OUTPUT / "base").exists()
    assert (tmp_path / mkosi.PACKAGE_CACHE / "kept.deb").exists()


def test_the_bootstrap_step_with_mkosi_leaves_an_mmdebstrap_like_apt(recipe, tmp_path: Path,
                                                                    monkeypatch) -> None:
    layout = Layout(tmp_path / "out")
    dest, scratch = layout.base_tree(recipe.image), layout.bootstrapper_scratch(recipe.image)
    assert scratch.parent == dest.parent
    fake = FakeRunner(scratch)
    monkeypatch.setattr(runner, "run", fake.run)
    monkeypatch.setattr(bootstrappers, "require", lambda names: None)
    bootstrap.bootstrap(recipe, dest)
    assert fake.calls[0] == mkosi.command(scratch)
    assert ["chroot", str(dest.with_name("base.partial")), "apt-get", "update"] in fake.calls
    assert (dest / "etc/apt/sources.list").read_text() == f"deb {MIRROR} trixie main\n"
    assert list((dest / "etc/apt/sources.list.d").iterdir()) == []
    # mkosi's unsigned lists are gone; apt's own folders stay.
    assert sorted(os.listdir(dest / "var/lib/apt/lists")) == ["partial"]
    assert (dest / base_tree.APT_CONF).read_text() == 'Acquire::Languages "none";\n'
    assert not (scratch / mkosi.OUTPUT).exists() and not (scratch / mkosi.WORKSPACE).exists()


def test_mkosi_finish_fails_clearly_without_an_output(recipe, tmp_path: Path) -> None:
    mkosi.prepare(recipe, tmp_path / "base.partial", tmp_path)
    with pytest.raises(PipelineError, match="left no tree"):
        mkosi.finish(recipe, tmp_path / "base.partial", tmp_path, {})


# -- the host check and the manifest -------------------------------------------

def fake_tool(folder: Path, name: str, version_line: str) -> None:
    folder.mkdir(exist_ok=True)
    tool = folder / name
    tool.write_text(f"#!/bin/sh\necho '{version_line}'\n")
    tool.chmod(0o755)


def test_require_names_the_package_when_mkosi_is_missing_or_too_old(tmp_path: Path,
                                                                    monkeypatch) -> None:
    monkeypatch.setattr(runner, "PATH", str(tmp_path / "bin"))
    with pytest.raises(PipelineError) as missing:
        bootstrappers.require(["mkosi"])
    assert "mkosi (package mkosi) is not installed" in str(missing.value)
    assert "bookworm-backports" in (missing.value.hint or "")
    fake_tool(tmp_path / "bin", "mkosi", "mkosi 14")
    with pytest.raises(PipelineError, match=r"needs mkosi 24 or newer, this host has 'mkosi 14'"):
        bootstrappers.require(["mkosi"])
    fake_tool(tmp_path / "bin", "mkosi", "mkosi 24.3")
    bootstrappers.require(["mkosi"])


def test_require_lists_every_unusable_bootstrapper_once(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(runner, "PATH", str(tmp_path / "bin"))
    fake_tool(tmp_path / "bin", "mmdebstrap", "mmdebstrap 1.3.5")
    with pytest.raises(PipelineError) as err:
        bootstrappers.require(["mmdebstrap", "debootstrap", "mkosi", "mkosi"])
    assert "debootstrap (package debootstrap)" in str(err.value)
    assert str(err.value).count("mkosi (package mkosi)") == 1
    assert "mmdebstrap (" not in str(err.value)


def test_the_manifest_records_the_bootstrappers_version_through_the_interface(
        recipe, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(runner, "PATH", str(tmp_path / "bin"))
    fake_tool(tmp_path / "bin", "mkosi", "mkosi 24.3")
    versions = manifest.tool_versions(recipe, {})
    assert versions["mkosi"] == "mkosi 24.3"


def test_version_numbers_compare_as_numbers() -> None:
    assert bootstrappers.version_number("mkosi 24.3") == (24, 3)
    assert bootstrappers.version_number("mkosi 100") > bootstrappers.version_number("mkosi 24.3")
    assert bootstrappers.version_number("no number here") is None


def test_no_other_module_branches_on_a_bootstrapper_name() -> None:
    pipeline = PROJECT / "pipeline"
    allowed = {pipeline / "build" / "recipe.py"}  # the recipe's lock and copy:// rules
    for path in pipeline.rglob("*.py"):
        if path.is_relative_to(pipeline / "build" / "bootstrappers") or path in allowed:
            continue
        text = path.read_text()
        assert "bootstrapper ==" not in text and "bootstrapper !=" not in text, path
    assert recipe_module.BOOTSTRAPPERS


def test_base_tree_devices_replace_a_plain_file_left_for_dev_null(tmp_path: Path) -> None:
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev/null").write_text("output of a tool that found no /dev/null\n")
    base_tree.make_devices(tmp_path)
    for name, major, minor in base_tree.DEVICES:
        st = os.lstat(tmp_path / "dev" / name)
        assert (os.major(st.st_rdev), os.minor(st.st_rdev)) == (major, minor), name
        assert st.st_mode & 0o777 == 0o666 and (tmp_path / "dev" / name).is_char_device()
    assert os.readlink(tmp_path / "dev/stdout") == "/proc/self/fd/1"
    assert (tmp_path / "dev/pts").is_dir() and (tmp_path / "dev/shm").is_dir()
