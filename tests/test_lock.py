"""Package locks: apt pins from a manifest, and the check after each step."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from dataclasses import replace

from pipeline import bootstrap, lock
from pipeline.errors import PipelineError
from pipeline.recipe import load_recipe

PROJECT = Path(__file__).resolve().parent.parent

LOCK = {"libc6:amd64": "2.41-12", "systemd": "257.9-1", "zstd": "1.5.7+dfsg-1"}


def test_preferences_pin_every_package_above_any_candidate() -> None:
    text = lock.preferences(LOCK)
    assert text.split("\n", 1)[1] == (
        "\nPackage: libc6\nPin: version 2.41-12\nPin-Priority: 1001\n"
        "\nPackage: systemd\nPin: version 257.9-1\nPin-Priority: 1001\n"
        "\nPackage: zstd\nPin: version 1.5.7+dfsg-1\nPin-Priority: 1001\n")


def test_apt_reads_the_preferences(tmp_path: Path) -> None:
    # apt itself parses the file: a syntax error would only show at build time.
    (tmp_path / "etc/apt/preferences.d").mkdir(parents=True)
    (tmp_path / lock.PREFERENCES).write_text(lock.preferences(LOCK))
    for name in ("var/lib/apt/lists/partial", "var/cache/apt/archives/partial",
                 "var/lib/dpkg", "etc/apt/sources.list.d", "etc/apt/apt.conf.d"):
        (tmp_path / name).mkdir(parents=True, exist_ok=True)
    (tmp_path / "var/lib/dpkg/status").write_text("")
    out = subprocess.run(["apt-cache", "-o", f"Dir={tmp_path}", "-o", "Dir::State::status="
                          f"{tmp_path}/var/lib/dpkg/status", "policy"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "E:" not in out.stderr and "W:" not in out.stderr, out.stderr


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
    import pipeline.manifest
    monkeypatch.setattr(pipeline.manifest, "packages", lambda tree: {"systemd": "257.10-1"})
    with pytest.raises(PipelineError) as info:
        lock.check("kernel amd64", tmp_path, LOCK)
    text = str(info.value)
    assert "kernel amd64: the tree does not match the recipe's lock" in text
    assert "systemd is 257.10-1, the lock says 257.9-1" in text and "snapshot mirror" in text
    lock.check("kernel amd64", tmp_path, {})  # no lock, no check
