"""pipeline/package.py: the injected packages' names, versions and inputs (no build)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.build import package
from pipeline.errors import PipelineError
from pipeline.naming import Layout

CHANGELOG = """\
open-iscsi-boot (0.3.1-2~bpo13+1) trixie-backports; urgency=medium

  * Rebuild.

 -- Someone <someone@example.org>  Wed, 01 Jan 2025 00:00:00 +0000

open-iscsi-boot (0.3.0-1) unstable; urgency=medium

  * Older.

 -- Someone <someone@example.org>  Tue, 31 Dec 2024 00:00:00 +0000
"""


def make_source(root: Path, changelog: str = CHANGELOG, control: bool = True) -> Path:
    (root / "debian").mkdir(parents=True)
    (root / "debian/changelog").write_text(changelog)
    if control:
        (root / "debian/control").write_text("Source: open-iscsi-boot\n")
    return root


def test_name_version(tmp_path):
    src = make_source(tmp_path / "open-iscsi-boot")
    assert package.name_version(src) == ("open-iscsi-boot", "0.3.1-2~bpo13+1")


@pytest.mark.parametrize("first_line,expected", [
    ("foo (1.0) unstable; urgency=low", ("foo", "1.0")),
    ("lib+x.y-2 (2:1.2.3+dfsg-4) experimental; urgency=low", ("lib+x.y-2", "2:1.2.3+dfsg-4")),
])
def test_name_version_variants(tmp_path, first_line, expected):
    src = make_source(tmp_path / "src", first_line + "\n\n  * x\n")
    assert package.name_version(src) == expected


@pytest.mark.parametrize("changelog", ["", "\nfoo (1.0) unstable\n", "Foo (1.0) unstable\n",
                                       "foo 1.0 unstable\n", "foo (1.0 beta) unstable\n"])
def test_name_version_bad_changelog(tmp_path, changelog):
    src = make_source(tmp_path / "src", changelog)
    with pytest.raises(PipelineError, match="first line is not"):
        package.name_version(src)


def test_deb_path(tmp_path):
    src = make_source(tmp_path / "open-iscsi-boot")
    layout = Layout(tmp_path / "out")
    assert package.deb_path(layout, src) == \
        tmp_path / "out/packages/open-iscsi-boot_0.3.1-2~bpo13+1_all.deb"


def test_source_files_skips_build_leftovers(tmp_path):
    src = make_source(tmp_path / "open-iscsi-boot")
    wanted = ["debian/changelog", "debian/control", "debian/rules", "debian/source/format",
              "hooks/iscsi-boot", "scripts/local-top/iscsi"]
    for rel in wanted:
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_text(rel)
    leftovers = ["debian/.debhelper/generated/x/installed-by-dh_install",
                 "debian/files", "debian/debhelper-build-stamp",
                 "debian/open-iscsi-boot.substvars"]
    for rel in leftovers:
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_text("leftover")
    found = package.source_files(src)
    assert sorted(found) == sorted(str(src / rel) for rel in wanted)
    assert len(found) == len(set(found))


def test_source_files_order_is_stable(tmp_path):
    src = make_source(tmp_path / "p")
    for rel in ("b/z", "b/a", "a/y", "c"):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_text(rel)
    found = [str(Path(p).relative_to(src)) for p in package.source_files(src)]
    assert found == ["c", "a/y", "b/a", "b/z", "debian/changelog", "debian/control"]


def test_sources_needs_debian_control(tmp_path, monkeypatch):
    monkeypatch.setattr(package, "PACKAGE_SOURCES", ("with-control", "no-control", "absent"))
    make_source(tmp_path / "with-control")
    make_source(tmp_path / "no-control", control=False)
    (tmp_path / "stray/debian").mkdir(parents=True)
    (tmp_path / "stray/debian/control").write_text("Source: stray\n")
    assert package.sources(tmp_path) == [tmp_path / "with-control"]


def test_sources_default_folder(tmp_path):
    assert package.sources(tmp_path) == []
    make_source(tmp_path / "open-iscsi-boot")
    assert package.sources(tmp_path) == [tmp_path / "open-iscsi-boot"]


def test_build_names_missing_tool(tmp_path, monkeypatch):
    """build() checks for dpkg-buildpackage before it touches anything."""
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setattr(package.runner, "PATH", str(empty))
    src = make_source(tmp_path / "open-iscsi-boot")
    deb = tmp_path / "out/packages/x.deb"
    with pytest.raises(PipelineError) as info:
        package.build(src, deb)
    assert "dpkg-buildpackage" in str(info.value)
    assert "dpkg-dev" in str(info.value)
    assert not (tmp_path / "out").exists()
