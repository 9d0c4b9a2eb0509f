"""pipeline/ext4.py (with the real mkfs.ext4/debugfs/dumpe2fs) and pipeline/fit.py."""

from __future__ import annotations

import os
import subprocess
import uuid
from datetime import datetime, timezone
from pathlib import Path

import pytest

from pipeline import ext4
from pipeline.build import fit
from pipeline.errors import PipelineError
from tiny_artifacts import MIB, ext4_image, gzip_initrd

EPOCH = 1700000000


def dumpe2fs(image: Path) -> dict[str, str]:
    text = subprocess.run(["dumpe2fs", "-h", str(image)], capture_output=True, text=True,
                          check=True).stdout
    return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in text.splitlines())
            if v}


def small_tree(root: Path, release: str = "6.1.0-9-amd64") -> Path:
    (root / "etc").mkdir(parents=True)
    (root / "etc/foo").write_text("hello from the image\n")
    (root / "etc/bar").symlink_to("foo")
    (root / f"usr/lib/modules/{release}/kernel").mkdir(parents=True)
    (root / f"usr/lib/modules/{release}/kernel/x.ko").write_bytes(b"\x7fELF" + b"\0" * 100)
    (root / "var/lib").mkdir(parents=True)
    return root


# -- sizes and UUIDs -----------------------------------------------------------

@pytest.mark.parametrize("content", [0, 1, 5 * MIB + 3, 700 * MIB + 12345, 3 << 30])
def test_image_size_is_mib_aligned_and_fits(content):
    size = ext4.image_size(content, 0, 0)
    assert size % MIB == 0
    assert size >= content + ext4.JOURNAL
    # metadata share on top, but not absurdly much
    assert size < (content + ext4.JOURNAL) * 1.2 + MIB


def test_image_size_grows_with_headroom():
    content = 300 * MIB + 7
    base = ext4.image_size(content, 0, 0)
    assert ext4.image_size(content, 20, 0) > base
    assert ext4.image_size(content, 40, 0) > ext4.image_size(content, 20, 0)
    assert ext4.image_size(content, 0, 128) == base + 128 * MIB
    both = ext4.image_size(content, 20, 128)
    assert both % MIB == 0
    assert both >= base * 1.2 + 128 * MIB - MIB


def test_image_size_grows_with_content():
    sizes = [ext4.image_size(c * MIB, 20, 128) for c in (10, 100, 1000)]
    assert sizes == sorted(sizes) and len(set(sizes)) == 3


def test_content_bytes_counts_hard_links_once(tmp_path):
    (tmp_path / "a").write_bytes(b"x" * 10000)
    one = ext4.content_bytes(tmp_path)
    (tmp_path / "b").hardlink_to(tmp_path / "a")
    assert ext4.content_bytes(tmp_path) == one
    (tmp_path / "c").write_bytes(b"x" * 10000)
    assert ext4.content_bytes(tmp_path) > one


def test_derived_uuid():
    a = ext4.derived_uuid("root", "digest", "6.1.0-9-amd64")
    assert a == ext4.derived_uuid("root", "digest", "6.1.0-9-amd64")
    assert uuid.UUID(a).version == 5
    assert a != ext4.derived_uuid("root", "digest", "6.1.0-10-amd64")
    assert a != ext4.derived_uuid("hash-seed", "digest", "6.1.0-9-amd64")
    # parts are separated, not concatenated
    assert ext4.derived_uuid("ab", "c") != ext4.derived_uuid("a", "bc")


# -- a real image ----------------------------------------------------------------

@pytest.fixture(scope="module")
def image(tmp_path_factory):
    base = tmp_path_factory.mktemp("ext4")
    tree = small_tree(base / "tree")
    dest = base / "root.ext4"
    want = {"label": "test-root", "uuid": ext4.derived_uuid("root", "t"),
            "seed": ext4.derived_uuid("hash-seed", "t")}
    size = ext4.make_image(tree, dest, label=want["label"], fs_uuid=want["uuid"],
                           hash_seed=want["seed"], headroom_percent=0, headroom_mib=0,
                           source_date_epoch=EPOCH)
    return dest, size, want, base


def test_make_image_size(image):
    dest, size, _want, _base = image
    assert dest.stat().st_size == size
    assert size % MIB == 0


def test_make_image_is_sparse(image):
    dest, size, _want, _base = image
    st = dest.stat()
    assert st.st_blocks * 512 < st.st_size


def test_make_image_label_and_uuid(image):
    dest, _size, want, _base = image
    assert ext4.fs_uuid(dest) == want["uuid"]
    info = dumpe2fs(dest)
    assert info["Filesystem UUID"] == want["uuid"]
    assert info["Filesystem volume name"] == want["label"]
    assert info["Directory Hash Seed"] == want["seed"]


def test_make_image_time_is_source_date_epoch(image):
    dest, _size, _want, _base = image
    created = dumpe2fs(dest)["Filesystem created"]
    stamp = datetime.strptime(created, "%a %b %d %H:%M:%S %Y").replace(tzinfo=timezone.utc)
    assert int(stamp.timestamp()) == EPOCH


def test_make_image_is_reproducible(image, tmp_path):
    dest, _size, want, base = image
    again = tmp_path / "again.ext4"
    ext4.make_image(base / "tree", again, label=want["label"], fs_uuid=want["uuid"],
                    hash_seed=want["seed"], headroom_percent=0, headroom_mib=0,
                    source_date_epoch=EPOCH)
    assert again.read_bytes() == dest.read_bytes()


def test_make_image_replaces_existing_file(tmp_path):
    tree = small_tree(tmp_path / "tree")
    dest = tmp_path / "root.ext4"
    dest.write_bytes(b"old junk" * 1000)
    ext4.make_image(tree, dest, label="x", fs_uuid=ext4.derived_uuid("x"),
                    hash_seed=ext4.derived_uuid("y"), headroom_percent=0, headroom_mib=0,
                    source_date_epoch=EPOCH)
    assert dumpe2fs(dest)["Filesystem volume name"] == "x"


def test_list_dir(image):
    dest, _size, _want, _base = image
    assert sorted(ext4.list_dir(dest, "/etc")) == ["bar", "foo"]
    assert ext4.list_dir(dest, "/usr/lib/modules") == ["6.1.0-9-amd64"]
    assert {"etc", "usr", "var"} <= set(ext4.list_dir(dest, "/"))
    assert ext4.list_dir(dest, "/no/such/dir") == []


def test_extract(image, tmp_path):
    dest, _size, _want, _base = image
    out = tmp_path / "out"
    ext4.extract(dest, ["/etc", "/var", "/home", "/boot/efi"], out)
    assert (out / "etc/foo").read_text() == "hello from the image\n"
    assert (out / "var/lib").is_dir()
    assert not (out / "home").exists()
    assert not (out / "usr").exists()


def test_extract_nothing_present(image, tmp_path):
    dest, _size, _want, _base = image
    out = tmp_path / "out"
    ext4.extract(dest, ["/srv", "/opt"], out)
    assert out.is_dir() and list(out.iterdir()) == []


# -- fit -------------------------------------------------------------------------

def fake_bzimage(path: Path, version: str, pointer: int = 0x3C0) -> Path:
    data = bytearray(0x1000)
    data[0x1FE:0x200] = b"\x55\xaa"
    data[0x202:0x206] = b"HdrS"
    data[0x20E:0x210] = pointer.to_bytes(2, "little")
    text = version.encode() + b"\0"
    data[pointer + 0x200:pointer + 0x200 + len(text)] = text
    path.write_bytes(bytes(data))
    return path


def test_bzimage_release(tmp_path):
    k = fake_bzimage(tmp_path / "vmlinuz",
                     "6.1.0-9-amd64 (debian-kernel@lists.debian.org) #1 SMP PREEMPT_DYNAMIC")
    assert fit.bzimage_release(k) == "6.1.0-9-amd64"


def test_bzimage_release_other_pointer(tmp_path):
    k = fake_bzimage(tmp_path / "vmlinuz", "6.12.57+deb13-amd64 (debian-kernel@...) #1 SMP",
                     pointer=0x700)
    assert fit.bzimage_release(k) == "6.12.57+deb13-amd64"


def test_bzimage_without_hdrs(tmp_path):
    k = tmp_path / "vmlinuz"
    k.write_bytes(b"\x7fELF" + b"\0" * 0x1000)
    with pytest.raises(PipelineError, match="not an x86 bzImage"):
        fit.bzimage_release(k)


def test_bzimage_too_short(tmp_path):
    k = tmp_path / "vmlinuz"
    k.write_bytes(b"MZ")
    with pytest.raises(PipelineError):
        fit.bzimage_release(k)


def make_initrd(tmp_path: Path, release: str) -> Path:
    tree = tmp_path / f"initrd-tree-{release}"
    (tree / f"usr/lib/modules/{release}/kernel").mkdir(parents=True)
    (tree / f"usr/lib/modules/{release}/kernel/x.ko").write_bytes(b"ko")
    (tree / "etc").mkdir()
    return gzip_initrd(tree, tmp_path / f"{release}.initrd.img")


def make_root(tmp_path: Path, release: str) -> Path:
    tree = small_tree(tmp_path / f"root-tree-{release}", release)
    return ext4_image(tree, tmp_path / f"{release}.root.ext4")


def test_fit_check_matching_set(tmp_path):
    release = "6.1.0-9-amd64"
    kernel = fake_bzimage(tmp_path / "k.vmlinuz", f"{release} (debian-kernel@x) #1 SMP")
    initrd = make_initrd(tmp_path, release)
    root = make_root(tmp_path, release)
    assert fit.root_releases(root) == {release}
    fit.check(kernel, initrd, root, release)  # no exception: the parts fit


def test_fit_check_mismatch_names_each_part(tmp_path):
    kernel = fake_bzimage(tmp_path / "k.vmlinuz", "6.1.0-9-amd64 (debian-kernel@x) #1 SMP")
    initrd = make_initrd(tmp_path, "6.1.0-10-amd64")
    root = make_root(tmp_path, "6.1.0-11-cloud-amd64")
    with pytest.raises(PipelineError) as info:
        fit.check(kernel, initrd, root, "6.1.0-12-amd64")
    message = str(info.value)
    assert "6.1.0-12-amd64" in message
    assert f"kernel {kernel.name} is release '6.1.0-9-amd64'" in message
    assert f"initramfs {initrd.name} has modules for ['6.1.0-10-amd64']" in message
    assert f"root image {root.name}" in message and "6.1.0-11-cloud-amd64" in message


def test_fit_check_only_the_wrong_part_is_named(tmp_path):
    release = "6.1.0-9-amd64"
    kernel = fake_bzimage(tmp_path / "k.vmlinuz", f"{release} (debian-kernel@x) #1 SMP")
    initrd = make_initrd(tmp_path, release)
    root = make_root(tmp_path, "6.1.0-11-amd64")
    with pytest.raises(PipelineError) as info:
        fit.check(kernel, initrd, root, release)
    message = str(info.value)
    assert "root image" in message
    assert "kernel k.vmlinuz" not in message and "initramfs" not in message


def test_the_same_tree_copied_elsewhere_gives_the_same_image(image, tmp_path):
    # A copy has new ctimes and its own directory order on the build host's
    # file system; files created after SOURCE_DATE_EPOCH are clamped to it.
    # (mke2fs 1.47.1 and newer; ./setup-host installs one.)
    dest, _size, want, base = image
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-a", str(base / "tree"), str(copy)], check=True)
    for path in sorted(copy.rglob("*")):
        if not path.is_symlink():
            os.utime(path)  # now: later than the epoch
    again = tmp_path / "again.ext4"
    ext4.make_image(copy, again, label=want["label"], fs_uuid=want["uuid"],
                    hash_seed=want["seed"], headroom_percent=0, headroom_mib=0,
                    source_date_epoch=EPOCH)
    assert again.read_bytes() == dest.read_bytes()


def test_features_are_the_pipelines_not_the_hosts(image):
    dest, _size, _want, _base = image
    features = set(dumpe2fs(dest)["Filesystem features"].split())
    assert {"metadata_csum", "metadata_csum_seed", "orphan_file", "64bit", "extent"} <= features


@pytest.mark.parametrize("text, version", [
    ("mke2fs 1.47.0 (5-Feb-2023)", (1, 47, 0)),
    ("mke2fs 1.47.2 (1-Jan-2025)", (1, 47, 2)),
    ("mke2fs 1.48 (1-Jan-2030)", (1, 48, 0)),
    ("unknown", ()),
])
def test_mke2fs_version(monkeypatch, text, version):
    monkeypatch.setattr(ext4.runner, "tool_version", lambda argv: text)
    assert ext4.mke2fs_version() == version
    assert ext4.unrepeatable_mke2fs() == (None if version >= (1, 47, 1) else text)
