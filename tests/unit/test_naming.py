"""pipeline/naming.py: triple names, work-tree layout, temporary names."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline import naming
from pipeline.naming import SUFFIXES, Layout, Triple, parse_stem, partial, stem

RELEASES = ["6.12.57+deb13-amd64", "6.1.0-28-cloud-amd64", "6.1.0-9-amd64", "6.12.9+bpo-rt-amd64"]


@pytest.mark.parametrize("release", RELEASES)
def test_stem_round_trip(release):
    s = stem("trixie", release)
    assert s == f"trixie_{release}"
    assert parse_stem(s) == ("trixie", release)


@pytest.mark.parametrize("release", RELEASES)
@pytest.mark.parametrize("suffix", sorted(SUFFIXES.values()))
def test_parse_stem_of_file_names_and_paths(release, suffix):
    name = stem("bookworm", release) + suffix
    assert parse_stem(name) == ("bookworm", release)
    assert parse_stem(f"/srv/out/triples/{name}") == ("bookworm", release)


@pytest.mark.parametrize("release", ["../x", "a/b", "", "abc", "6", "6.1/../../etc", "6.1..0",
                                     "6.1.0 amd64"])
def test_bad_release_rejected(release):
    with pytest.raises(ValueError, match="not a kernel release"):
        naming.check_release(release)
    with pytest.raises(ValueError):
        stem("trixie", release)


@pytest.mark.parametrize("name", ["trixie", "trixie.root.ext4", "_6.1.0-9-amd64", "",
                                  "trixie_abc.vmlinuz", "trixie_../x.manifest.json"])
def test_parse_stem_rejects_non_triple_names(name):
    with pytest.raises(ValueError):
        parse_stem(name)


def test_task_name():
    assert naming.task_name("trixie", "cloud-amd64") == "trixie-cloud-amd64"


def test_triple_paths_differ_only_by_suffix(tmp_path):
    t = Triple(tmp_path, "trixie", "6.12.57+deb13-amd64")
    paths = {part: t.path(part) for part in SUFFIXES}
    assert paths["kernel"] == t.kernel and paths["initrd"] == t.initrd
    assert paths["root"] == t.root and paths["manifest"] == t.manifest
    assert len(set(paths.values())) == 4
    for part, path in paths.items():
        assert path.parent == tmp_path
        assert path.name == "trixie_6.12.57+deb13-amd64" + SUFFIXES[part]
        # every part names its image and release
        assert parse_stem(path.name) == ("trixie", "6.12.57+deb13-amd64")
    assert t.parts() == {"kernel": t.kernel, "initrd": t.initrd, "root": t.root}


def test_triple_from_manifest(tmp_path):
    t = Triple(tmp_path / "triples", "bookworm", "6.1.0-28-cloud-amd64")
    back = Triple.from_manifest(t.manifest)
    assert back == t
    assert back.stem == "bookworm_6.1.0-28-cloud-amd64"


def test_triple_with_bad_release_has_no_paths(tmp_path):
    t = Triple(tmp_path, "trixie", "../../etc")
    with pytest.raises(ValueError):
        t.root


def test_layout_paths(tmp_path):
    out = tmp_path / "out"
    lay = Layout(out)
    assert lay.triples == out / "triples"
    assert lay.doit_db == out / ".doit.db"
    assert lay.work("trixie") == out / "work" / "trixie"
    assert lay.base_tree("trixie") == out / "work/trixie/base"
    assert lay.base_stamp("trixie") == out / "work/trixie/base.json"
    assert lay.flavour_dir("trixie", "amd64") == out / "work/trixie/amd64"
    assert lay.kernel_tree("trixie", "amd64") == out / "work/trixie/amd64/kernel"
    assert lay.kernel_stamp("trixie", "amd64") == out / "work/trixie/amd64/kernel.json"
    assert lay.root_tree("trixie", "amd64") == out / "work/trixie/amd64/rootfs"
    assert lay.root_stamp("trixie", "amd64") == out / "work/trixie/amd64/rootfs.json"
    assert lay.triple_stamp("trixie", "amd64") == out / "work/trixie/amd64/triple.json"
    assert lay.packages_dir() == out / "packages"
    t = lay.triple("trixie", "6.1.0-9-amd64")
    assert t == Triple(out / "triples", "trixie", "6.1.0-9-amd64")
    assert t.root == out / "triples/trixie_6.1.0-9-amd64.root.ext4"


def test_layout_flavours_do_not_share_paths(tmp_path):
    lay = Layout(tmp_path)
    a = [lay.kernel_tree("t", "amd64"), lay.root_tree("t", "amd64"), lay.triple_stamp("t", "amd64")]
    b = [lay.kernel_tree("t", "cloud-amd64"), lay.root_tree("t", "cloud-amd64"),
         lay.triple_stamp("t", "cloud-amd64")]
    assert not set(a) & set(b)


def test_partial():
    final = Path("/srv/out/triples/trixie_6.1.0-9-amd64.root.ext4")
    tmp = partial(final)
    assert tmp.parent == final.parent
    assert tmp.name == final.name + ".partial"
    assert tmp != final
    assert partial(Path("/x/rootfs")) == Path("/x/rootfs.partial")
    # a partial name is never mistaken for a finished triple part
    assert not any(tmp.name.endswith(s) for s in SUFFIXES.values())


def test_release_with_trailing_newline_rejected():
    with pytest.raises(ValueError):
        naming.check_release("6.1.0-9-amd64\n")
