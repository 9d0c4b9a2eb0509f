"""Package locks: apt pins from a manifest, and the check after each step."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from dataclasses import replace

from pipeline.build import bootstrap, lock
from pipeline.errors import PipelineError
from pipeline.build.recipe import load_recipe

PROJECT = Path(__file__).resolve().parents[2]

LOCK = {"libc6:amd64": "2.41-12", "systemd": "257.9-1", "zstd": "1.5.7+dfsg-1"}


def test_preferences_pin_every_package_above_any_candidate() -> None:
    text = lock.preferences(LOCK)
    assert text.split("\n", 1)[1] == (
        "\nPackage: libc6\nPin: version 2.41-12\nPin-Priority: 1001\n"
        "\nPackage: systemd\nPin: version 257.9-1\nPin-Priority: 1001\n"
        "\nPackage: zstd\nPin: version 1.5.7+dfsg-1\nPin-Priority: 1001\n")


def test_apt_takes_the_locked_version_even_as_a_downgrade(tmp_path: Path) -> None:
    # Real apt, a local repository with two versions of one package, 2.0-1
    # installed: the pins make the older one the candidate.
    repo, root = tmp_path / "repo", tmp_path / "root"
    repo.mkdir()
    stanza = ("Package: demo\nVersion: {v}\nArchitecture: all\nFilename: demo_{v}_all.deb\n"
              "Size: 1\nSHA256: " + "0" * 64 + "\nDescription: demo\n")
    (repo / "Packages").write_text("\n".join(stanza.format(v=v) for v in ("1.0-1", "2.0-1")))
    for name in ("etc/apt/preferences.d", "etc/apt/apt.conf.d", "etc/apt/sources.list.d",
                 "var/lib/apt/lists/partial", "var/cache/apt/archives/partial", "var/lib/dpkg"):
        (root / name).mkdir(parents=True)
    (root / "var/lib/dpkg/status").write_text(
        "Package: demo\nStatus: install ok installed\nVersion: 2.0-1\nArchitecture: all\n"
        "Maintainer: nobody <nobody@example.org>\nDescription: demo\n")
    (root / "etc/apt/sources.list").write_text(f"deb [trusted=yes] file:{repo} ./\n")
    options = ["-o", f"Dir={root}", "-o", f"Dir::State::status={root}/var/lib/dpkg/status",
               "-o", "APT::Sandbox::User=root"]

    def candidate() -> str:
        out = subprocess.run(["apt-cache", *options, "policy", "demo"], capture_output=True,
                             text=True, check=True)
        assert "W:" not in out.stderr and "E:" not in out.stderr, out.stderr
        return next(line.split()[1] for line in out.stdout.splitlines()
                    if line.strip().startswith("Candidate:"))

    subprocess.run(["apt-get", *options, "update", "-q"], capture_output=True, check=True)
    assert candidate() == "2.0-1"
    with lock.pinned(root, {"demo": "1.0-1", "other:amd64": "3"}):
        assert candidate() == "1.0-1"
    assert candidate() == "2.0-1"


def test_pinned_writes_the_pins_only_while_the_block_runs(tmp_path: Path) -> None:
    pref = tmp_path / lock.PREFERENCES
    with lock.pinned(tmp_path, LOCK):
        assert pref.read_text() == lock.preferences(LOCK)
    assert not pref.exists()
    with pytest.raises(RuntimeError):
        with lock.pinned(tmp_path, LOCK):
            raise RuntimeError("apt failed")
    assert not pref.exists()
    with lock.pinned(tmp_path, {}):
        assert not pref.exists()


def test_mmdebstrap_hooks_copy_the_pins_in_and_take_them_out(tmp_path: Path) -> None:
    pref = tmp_path / "base.lock-pref"
    options = lock.mmdebstrap_options(LOCK, pref)
    assert pref.read_text() == lock.preferences(LOCK)
    setup, customize = options
    assert setup.startswith("--setup-hook=") and customize.startswith("--customize-hook=")
    # Run the hooks as mmdebstrap does: sh -c HOOK exec TARGET.
    target = tmp_path / "tree"
    target.mkdir()
    subprocess.run(["sh", "-c", setup.split("=", 1)[1], "exec", str(target)], check=True)
    assert (target / lock.PREFERENCES).read_text() == lock.preferences(LOCK)
    subprocess.run(["sh", "-c", customize.split("=", 1)[1], "exec", str(target)], check=True)
    assert not (target / lock.PREFERENCES).exists()
    assert lock.mmdebstrap_options({}, tmp_path / "unused") == []


def test_the_bootstrap_command_carries_the_hooks_and_the_snapshot_option(tmp_path: Path) -> None:
    recipe = replace(load_recipe(PROJECT / "recipes" / "trixie.yaml", PROJECT / "overlays"),
                     mirror_check_valid_until=False)
    options = lock.mmdebstrap_options(LOCK, tmp_path / "pref")
    argv = bootstrap.command(recipe, tmp_path / "tree", options)
    assert argv[0] == "mmdebstrap" and argv[-3:] == [recipe.suite, str(tmp_path / "tree"),
                                                       recipe.mirror]
    assert '--aptopt=Acquire::Check-Valid-Until "false"' in argv
    assert all(option in argv for option in options)
    plain = bootstrap.command(replace(recipe, mirror_check_valid_until=True), tmp_path / "tree")
    assert not any("Check-Valid-Until" in a or "hook" in a for a in plain)


def test_problems_name_each_package() -> None:
    installed = {"libc6:amd64": "2.41-12", "systemd": "257.10-1", "vim": "2:9.1-1",
                 "open-iscsi-boot": "0.2.0"}
    assert lock.problems(installed, LOCK, frozenset({"open-iscsi-boot"})) == [
        "systemd is 257.10-1, the lock says 257.9-1",
        "vim 2:9.1-1 is installed but not in the lock",
    ]
    # A locked package the tree does not have is not a problem: a lock made
    # from two flavours' manifests has both kernels.
    assert lock.problems({"zstd": "1.5.7+dfsg-1"}, LOCK) == []


def test_check_fails_with_a_hint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lock, "packages", lambda tree: {"systemd": "257.10-1"})
    with pytest.raises(PipelineError) as info:
        lock.check("kernel amd64", tmp_path, LOCK)
    text = str(info.value)
    assert "kernel amd64: the tree does not match the recipe's lock" in text
    assert "systemd is 257.10-1, the lock says 257.9-1" in text and "snapshot mirror" in text
    lock.check("kernel amd64", tmp_path, {})  # no lock, no check
