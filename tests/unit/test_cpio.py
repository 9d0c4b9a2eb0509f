"""pipeline/cpio.py on real initramfs files made with cpio and real compressors."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from pipeline import cpio
from pipeline.errors import PipelineError
from tiny_artifacts import newc_archive

RELEASE = "6.1.0-9-amd64"

FILES = {
    f"usr/lib/modules/{RELEASE}/kernel/x.ko": b"\x7fELF fake module\n",
    "etc/foo": b"foo contents\n",
    "conf/conf.d/net": b"DEVICE=eth0\n",
    "scripts/local-top/run": b"#!/bin/sh\necho hi\n",
}
LINKS = {"etc/bar": "foo", "etc/mtab": "/proc/mounts"}
DIRS = ["etc/empty.d", "run/initramfs"]


def make_tree(root: Path, files=FILES, links=LINKS, dirs=DIRS) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    if "scripts/local-top/run" in files:
        (root / "scripts/local-top/run").chmod(0o755)
    for name, target in links.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.symlink_to(target)
    for name in dirs:
        (root / name).mkdir(parents=True, exist_ok=True)
    return root


def compress(data: bytes, how: str) -> bytes:
    if how == "none":
        return data
    argv = {"gzip": ["gzip", "-9n"], "xz": ["xz", "--check=crc32", "-c"],
            "zstd": ["zstd", "-q", "-c"], "lz4": ["lz4", "-l", "-q", "-c"]}[how]
    return subprocess.run(argv, input=data, check=True, capture_output=True).stdout


@pytest.fixture
def tree(tmp_path):
    return make_tree(tmp_path / "tree")


def write(tmp_path: Path, data: bytes, name: str = "initrd.img") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def by_name(path: Path) -> dict[str, cpio.Member]:
    return {m.name: m for m in cpio.members(path)}


def check_members(found: dict[str, cpio.Member]) -> None:
    for name, data in FILES.items():
        assert found[name].is_file, name
        assert found[name].data == data
    for name, target in LINKS.items():
        assert found[name].is_symlink, name
        assert found[name].data == target.encode()
    for name in DIRS + ["etc", "usr/lib/modules", f"usr/lib/modules/{RELEASE}"]:
        assert found[name].is_dir, name
    assert found["scripts/local-top/run"].mode & 0o777 == 0o755
    # names are relative: no "." entry, no leading "./" or "/"
    assert "" not in found and "." not in found
    assert not any(n.startswith(("/", "./")) for n in found)


@pytest.mark.parametrize("how", ["none", "gzip", "xz", "zstd"])
def test_members(tmp_path, tree, how):
    path = write(tmp_path, compress(newc_archive(tree), how))
    found = by_name(path)
    check_members(found)
    expected = set(FILES) | set(LINKS) | set(DIRS)
    assert expected <= set(found)


@pytest.mark.parametrize("how", ["gzip", "xz", "zstd"])
def test_module_releases(tmp_path, tree, how):
    path = write(tmp_path, compress(newc_archive(tree), how))
    assert cpio.module_releases(path) == {RELEASE}


def test_module_releases_two_kernels_and_lib_modules(tmp_path):
    tree = make_tree(tmp_path / "tree", files={
        "usr/lib/modules/6.1.0-9-amd64/a.ko": b"a",
        "lib/modules/6.1.0-10-cloud-amd64/b.ko": b"b",
        "usr/share/modules/not-this/c": b"c"}, links={}, dirs=[])
    path = write(tmp_path, compress(newc_archive(tree), "gzip"))
    assert cpio.module_releases(path) == {"6.1.0-9-amd64", "6.1.0-10-cloud-amd64"}


def test_no_modules(tmp_path):
    tree = make_tree(tmp_path / "tree", files={"etc/foo": b"x"}, links={}, dirs=[])
    path = write(tmp_path, compress(newc_archive(tree), "zstd"))
    assert cpio.module_releases(path) == set()


@pytest.mark.parametrize("how", ["gzip", "xz", "zstd"])
def test_early_cpio_then_compressed_main(tmp_path, tree, how):
    early = make_tree(tmp_path / "early", files={
        "kernel/x86/microcode/GenuineIntel.bin": b"\x01\x02microcode"}, links={}, dirs=[])
    early_cpio = newc_archive(early)
    assert len(early_cpio) % 4 == 0
    path = write(tmp_path, early_cpio + compress(newc_archive(tree), how))
    found = by_name(path)
    assert found["kernel/x86/microcode/GenuineIntel.bin"].data == b"\x01\x02microcode"
    check_members(found)
    assert cpio.module_releases(path) == {RELEASE}


def test_zero_padding_between_archives(tmp_path, tree):
    early = make_tree(tmp_path / "early", files={"early.bin": b"e"}, links={}, dirs=[])
    path = write(tmp_path, newc_archive(early) + b"\0" * 512 + compress(newc_archive(tree), "zstd"))
    found = by_name(path)
    assert found["early.bin"].data == b"e"
    check_members(found)


@pytest.mark.parametrize("how", ["none", "gzip", "xz", "zstd"])
def test_extract(tmp_path, tree, how):
    path = write(tmp_path, compress(newc_archive(tree), how))
    dest = tmp_path / "dest"
    releases = cpio.extract(path, dest)
    assert releases == {RELEASE}
    assert (dest / "etc/foo").read_bytes() == FILES["etc/foo"]
    assert (dest / "conf/conf.d/net").read_bytes() == FILES["conf/conf.d/net"]
    assert (dest / "scripts/local-top/run").read_bytes() == FILES["scripts/local-top/run"]
    assert os.access(dest / "scripts/local-top/run", os.X_OK)
    assert (dest / "etc/bar").is_symlink() and os.readlink(dest / "etc/bar") == "foo"
    assert os.readlink(dest / "etc/mtab") == "/proc/mounts"
    assert (dest / "etc/empty.d").is_dir()
    assert (dest / "run/initramfs").is_dir()
    # modules are not wanted by the audit: only the listed prefixes are written
    assert not (dest / "usr").exists()


def test_extract_with_other_prefixes(tmp_path, tree):
    path = write(tmp_path, compress(newc_archive(tree), "gzip"))
    dest = tmp_path / "dest"
    cpio.extract(path, dest, prefixes=("usr/",))
    assert (dest / f"usr/lib/modules/{RELEASE}/kernel/x.ko").read_bytes() == \
        FILES[f"usr/lib/modules/{RELEASE}/kernel/x.ko"]
    assert not (dest / "etc").exists()


def test_extract_twice_replaces_files_and_links(tmp_path, tree):
    path = write(tmp_path, compress(newc_archive(tree), "gzip"))
    dest = tmp_path / "dest"
    cpio.extract(path, dest)
    (dest / "etc/foo").write_text("changed")
    cpio.extract(path, dest)
    assert (dest / "etc/foo").read_bytes() == FILES["etc/foo"]
    assert os.readlink(dest / "etc/bar") == "foo"


# -- bad input -----------------------------------------------------------------

def test_unknown_compression(tmp_path):
    path = write(tmp_path, b"BZh91AY&SY" + os.urandom(64))
    with pytest.raises(PipelineError, match="unknown compression"):
        list(cpio.members(path))


def test_unknown_compression_after_early_cpio(tmp_path, tree):
    path = write(tmp_path, newc_archive(tree) + b"\x42\x5a\x68garbage")
    with pytest.raises(PipelineError, match="unknown compression"):
        list(cpio.members(path))


def test_truncated_cpio(tmp_path, tree):
    data = newc_archive(tree)
    path = write(tmp_path, data[: len(data) // 2])
    with pytest.raises(PipelineError, match="corrupt cpio header"):
        list(cpio.members(path))


def test_bad_magic_in_second_header(tmp_path, tree):
    data = bytearray(newc_archive(tree))
    # the first member is "."; its header and name take 112 bytes, body 0
    assert data[:6] == b"070701" and data[112:118] == b"070701"
    data[112:118] = b"999999"
    path = write(tmp_path, bytes(data))
    with pytest.raises(PipelineError, match="corrupt cpio header at offset 112"):
        list(cpio.members(path))


def test_corrupt_zstd(tmp_path, tree):
    blob = compress(newc_archive(tree), "zstd")
    path = write(tmp_path, blob[: len(blob) // 2])
    with pytest.raises(PipelineError):
        list(cpio.members(path))


def test_empty_file_has_no_members(tmp_path):
    assert list(cpio.members(write(tmp_path, b""))) == []


@pytest.mark.parametrize("how", ["gzip", "xz"])
def test_corrupt_stdlib_compression(tmp_path, tree, how):
    blob = compress(newc_archive(tree), how)
    path = write(tmp_path, blob[: len(blob) // 2])
    with pytest.raises(PipelineError):
        list(cpio.members(path))


def test_non_hex_header(tmp_path):
    path = write(tmp_path, b"070701" + b"zz" * 60)
    with pytest.raises(PipelineError):
        list(cpio.members(path))


def test_top_level_dotfile_keeps_its_name(tmp_path):
    tree = make_tree(tmp_path / "tree", files={".profile": b"p", "etc/.hidden": b"h"},
                     links={}, dirs=[])
    names = set(by_name(write(tmp_path, newc_archive(tree))))
    assert "etc/.hidden" in names
    assert ".profile" in names


def test_extract_does_not_write_through_symlinks(tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    first = make_tree(tmp_path / "a", files={}, links={"etc/esc": str(victim)}, dirs=[])
    second = make_tree(tmp_path / "b", files={"etc/esc/owned": b"x"}, links={}, dirs=[])
    path = write(tmp_path, newc_archive(first) + newc_archive(second))
    dest = tmp_path / "dest"
    try:
        cpio.extract(path, dest)
    except PipelineError:
        pass
    assert not (victim / "owned").exists()


def test_member_kinds():
    f = cpio.Member("a", 0o100644, b"")
    d = cpio.Member("b", 0o040755, b"")
    s = cpio.Member("c", 0o120777, b"a")
    assert (f.is_file, f.is_dir, f.is_symlink) == (True, False, False)
    assert (d.is_file, d.is_dir, d.is_symlink) == (False, True, False)
    assert (s.is_file, s.is_dir, s.is_symlink) == (False, False, True)
