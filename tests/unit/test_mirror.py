"""host_mirror(): reading the host's apt sources (all URIs are made up)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.build.mirror import host_mirror, is_release_suite

MAIN = "http://mirror.example/debian"


def apt_dir(tmp_path: Path, files: dict[str, str]) -> Path:
    """Create an apt dir; keys are paths relative to it."""
    root = tmp_path / "apt"
    (root / "sources.list.d").mkdir(parents=True)
    for name, text in files.items():
        (root / name).write_text(text)
    return root


def test_one_line_format(tmp_path: Path) -> None:
    root = apt_dir(tmp_path, {"sources.list": (
        "# a comment\n"
        "deb-src http://src.example/debian bookworm main\n"
        "deb http://security.example/debian-security bookworm-security main\n"
        "deb [ arch=amd64 signed-by=/usr/share/keyrings/x.gpg ]\thttp://mirror.example/debian/ bookworm main  # trailing\n"
        "deb http://other.example/debian trixie main\n"
    )})
    assert host_mirror(root) == MAIN


def test_deb822_format(tmp_path: Path) -> None:
    root = apt_dir(tmp_path, {"sources.list.d/debian.sources": (
        "Types: deb\n"
        "# a comment inside the paragraph\n"
        "URIs: http://security.example/debian-security\n"
        "Suites: bookworm-security\n"
        "Components: main\n"
        "\n"
        "Types: deb-src\n"
        "URIs: http://src.example/debian\n"
        "Suites: bookworm\n"
        "\n"
        "Types: deb\n"
        "URIs: http://off.example/debian\n"
        "Suites: bookworm\n"
        "Enabled: no\n"
        "\n"
        "types: deb-src deb\n"
        "URIs: http://mirror.example/debian/\n"
        "  http://second.example/debian\n"
        "Suites: bookworm-updates\n"
        " bookworm\n"
        "Components: main\n"
    )})
    assert host_mirror(root) == MAIN


@pytest.mark.parametrize("suite", [
    "bookworm-security", "bookworm-updates", "bookworm-backports",
    "nodistro", "cloud-sdk-bookworm", "jammy", "bookworm/updates",
])
def test_non_release_suites_are_skipped(tmp_path: Path, suite: str) -> None:
    root = apt_dir(tmp_path, {
        "sources.list": f"deb http://third.example/repo {suite} main\n",
        "sources.list.d/x.sources": f"Types: deb\nURIs: http://third.example/x\nSuites: {suite}\n",
    })
    assert host_mirror(root) is None


@pytest.mark.parametrize("suite", ["bookworm", "trixie", "forky", "duke", "sid", "stable", "testing", "unstable", "oldstable"])
def test_release_suites(suite: str) -> None:
    assert is_release_suite(suite)


def test_disabled_files_are_ignored(tmp_path: Path) -> None:
    root = apt_dir(tmp_path, {
        "sources.list.d/a.list.disabled": "deb http://off.example/debian bookworm main\n",
        "sources.list.d/b.sources.disabled-by-admin": "Types: deb\nURIs: http://off.example/d\nSuites: bookworm\n",
        "sources.list.d/c.save": "deb http://off.example/debian bookworm main\n",
    })
    assert host_mirror(root) is None


def test_order_sources_list_first_then_sorted(tmp_path: Path) -> None:
    files = {
        "sources.list.d/b.list": "deb http://b.example/debian bookworm main\n",
        "sources.list.d/a.sources": "Types: deb\nURIs: http://a.example/debian\nSuites: trixie\n",
    }
    assert host_mirror(apt_dir(tmp_path / "1", files)) == "http://a.example/debian"
    files["sources.list"] = "deb http://mirror.example/debian sid main\n"
    assert host_mirror(apt_dir(tmp_path / "2", files)) == MAIN


def test_nothing_found(tmp_path: Path) -> None:
    assert host_mirror(tmp_path / "does-not-exist") is None
    assert host_mirror(apt_dir(tmp_path, {"sources.list": "# only comments\n"})) is None
