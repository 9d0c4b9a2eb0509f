"""pipeline/rootfs.py and kernel.py: the package and initramfs steps, tools replaced by fakes.

Nothing runs in a chroot here: ``chroot.run`` is replaced by a recorder that
does what the real command would do to the tree, as far as the code under
test looks at it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.build import initramfs_cache, kernel, rootfs
from pipeline.errors import PipelineError
from pipeline.naming import Layout
from pipeline.build.recipe import load_recipe
from pipeline.runner import CommandError
from tiny_artifacts import write_files

PROJECT = Path(__file__).resolve().parents[2]
RELEASE = "6.12.57+deb13-amd64"
ENV = {"SOURCE_DATE_EPOCH": "1735689600"}


class FakeChroot:
    """Records chroot commands; dpkg fails when told to, update-initramfs writes a file."""

    def __init__(self, dpkg_fails: bool = False) -> None:
        self.calls: list[list[str]] = []
        self.dpkg_fails = dpkg_fails

    def __call__(self, tree: Path, argv, *, env=None, echo=False) -> str:
        self.calls.append(list(argv))
        if argv[:2] == ["dpkg", "-i"] and self.dpkg_fails:
            raise CommandError(argv, 1, "dpkg: dependency problems prevent configuration\n")
        if argv[0] == "update-initramfs":
            initrd = tree / "boot" / f"initrd.img-{argv[-1]}"
            initrd.write_bytes(b"made %d" % len(self.calls))
        return ""

    def ran(self, tool: str) -> bool:
        return any(call[0] == tool for call in self.calls)


@pytest.fixture
def tree(tmp_path) -> Path:
    return write_files(tmp_path / "tree", {"var/lib/dpkg/status": "Package: base-files\n",
                                           "usr/sbin/update-initramfs": "#!/bin/sh\n",
                                           "boot/vmlinuz-" + RELEASE: "kernel"})


@pytest.fixture
def deb(tmp_path) -> Path:
    path = tmp_path / "open-iscsi-boot_0.1.0_all.deb"
    path.write_bytes(b"!<arch>\n")
    return path


def fake_installed(monkeypatch, installed: set[str]) -> None:
    monkeypatch.setattr(rootfs, "package_name", lambda deb: deb.name.split("_")[0])
    monkeypatch.setattr(rootfs, "installed", lambda tree, name: name in installed)


# -- the injected packages --------------------------------------------------

def test_dpkg_alone_when_it_can(monkeypatch, tree, deb):
    fake = FakeChroot()
    monkeypatch.setattr(rootfs.chroot, "run", fake)
    fake_installed(monkeypatch, {"open-iscsi-boot"})
    rootfs.install_debs(tree, [deb], ENV)
    assert fake.calls == [["dpkg", "-i", "/tmp/image-pipeline-debs/open-iscsi-boot_0.1.0_all.deb"]]
    assert not (tree / rootfs.DEB_INBOX).exists()


def test_apt_when_dependencies_are_missing(monkeypatch, tree, deb, capsys):
    fake = FakeChroot(dpkg_fails=True)
    monkeypatch.setattr(rootfs.chroot, "run", fake)
    fake_installed(monkeypatch, {"open-iscsi-boot"})
    rootfs.install_debs(tree, [deb], ENV)
    assert fake.calls[0][:2] == ["dpkg", "-i"]
    assert fake.calls[1][:4] == ["apt-get", "install", "-f", "-y"]
    assert "--no-install-recommends" in fake.calls[1]
    assert "apt-get install -f" in capsys.readouterr().out


def test_a_package_that_did_not_get_installed_fails_the_step(monkeypatch, tree, deb):
    monkeypatch.setattr(rootfs.chroot, "run", FakeChroot(dpkg_fails=True))
    fake_installed(monkeypatch, set())   # apt-get -f chose to remove it
    with pytest.raises(PipelineError, match="not installed in the root: open-iscsi-boot"):
        rootfs.install_debs(tree, [deb], ENV)


# -- the initramfs ----------------------------------------------------------

@pytest.fixture
def recipe():
    return load_recipe(PROJECT / "recipes" / "trixie.yaml", PROJECT / "overlays")


@pytest.fixture
def cache(tmp_path):
    return initramfs_cache.Cache(Layout(tmp_path / "out"), "trixie", "amd64",
                                 {"kernel": "k", "code": "c"})


def test_made_then_reused(monkeypatch, tree, deb, recipe, cache, capsys, tmp_path):
    overlay = tmp_path / "overlay"
    (overlay / "etc/systemd/network").mkdir(parents=True)
    network = overlay / "etc/systemd/network/50-diskless.network"
    network.write_text("[Match]\n")
    initrd = tree / "boot" / f"initrd.img-{RELEASE}"

    fake = FakeChroot()
    monkeypatch.setattr(rootfs.chroot, "run", fake)
    rootfs.make_initramfs(tree, RELEASE, ENV, recipe, [overlay], [deb], cache)
    assert fake.ran("update-initramfs")
    assert "initramfs: made, no earlier one" in capsys.readouterr().out
    made = initrd.read_bytes()
    assert len(list(cache.folder.iterdir())) == 1

    # The next root step: a fresh tree (no initrd), an irrelevant overlay change.
    initrd.unlink()
    network.write_text("[Match]\nType=ether\n")
    fake = FakeChroot()
    monkeypatch.setattr(rootfs.chroot, "run", fake)
    rootfs.make_initramfs(tree, RELEASE, ENV, recipe, [overlay], [deb], cache)
    assert fake.calls == []
    assert "initramfs: reused" in capsys.readouterr().out
    assert initrd.read_bytes() == made

    # A relevant change: made again.
    initrd.unlink()
    (overlay / "etc/modprobe.d").mkdir()
    (overlay / "etc/modprobe.d/x.conf").write_text("options x y=1\n")
    rootfs.make_initramfs(tree, RELEASE, ENV, recipe, [overlay], [deb], cache)
    assert fake.ran("update-initramfs")
    assert len(list(cache.folder.iterdir())) == 2


@pytest.mark.parametrize("change", ["label", "compression", "epoch"])
def test_recipe_settings_count(monkeypatch, tree, deb, recipe, cache, change):
    from dataclasses import replace
    monkeypatch.setattr(rootfs.chroot, "run", FakeChroot())
    rootfs.make_initramfs(tree, RELEASE, ENV, recipe, [], [deb], cache)
    if change == "label":
        other = replace(recipe, root_image=replace(recipe.root_image, label="other"))
    elif change == "compression":
        other = replace(recipe, initramfs=replace(recipe.initramfs, compression="gzip"))
    else:
        other = replace(recipe, source_date_epoch=recipe.source_date_epoch + 1)
    fake = FakeChroot()
    monkeypatch.setattr(rootfs.chroot, "run", fake)
    rootfs.make_initramfs(tree, RELEASE, ENV, other, [], [deb], cache)
    assert fake.ran("update-initramfs")


def test_modules_dep_is_never_kept(monkeypatch, tree, deb, recipe, cache, capsys):
    from dataclasses import replace
    dep = replace(recipe, initramfs=replace(recipe.initramfs, modules="dep"))
    for _ in range(2):
        fake = FakeChroot()
        monkeypatch.setattr(rootfs.chroot, "run", fake)
        rootfs.make_initramfs(tree, RELEASE, ENV, dep, [], [deb], cache)
        assert fake.ran("update-initramfs")
    assert "MODULES=dep" in capsys.readouterr().out
    assert not cache.folder.exists()


def test_without_a_cache_it_is_always_made(monkeypatch, tree, deb, recipe):
    fake = FakeChroot()
    monkeypatch.setattr(rootfs.chroot, "run", fake)
    rootfs.make_initramfs(tree, RELEASE, ENV, recipe, [], [deb], None)
    assert fake.ran("update-initramfs")


# -- the kernel tree ----------------------------------------------------------

def test_drop_apt_caches(tmp_path):
    files = ["var/cache/apt/pkgcache.bin", "var/cache/apt/srcpkgcache.bin",
             "var/cache/apt/archives/linux-image-amd64_6.12_amd64.deb",
             "var/cache/apt/archives/partial/linux-image.deb.FAILED"]
    kept = ["var/cache/apt/archives/lock", "var/lib/apt/lists/mirror.example_InRelease",
            "var/cache/debconf/config.dat"]
    for rel in files + kept:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x")
    kernel.drop_apt_caches(tmp_path)
    assert [rel for rel in files + kept if (tmp_path / rel).exists()] == kept
    assert (tmp_path / "var/cache/apt/archives/partial").is_dir()


def test_apt_sandbox_dirs_get_apts_owner_wherever_the_build_ran(tmp_path):
    # As apt leaves them when a folder above the tree was closed to _apt.
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n"
                                         "_apt:x:42:65534::/nonexistent:/usr/sbin/nologin\n")
    for rel, _mode in rootfs.APT_SANDBOX_DIRS:
        (tmp_path / rel).mkdir(parents=True)
        (tmp_path / rel).chmod(0o755)
    rootfs.settle_apt_dirs(tmp_path)
    for rel, mode in rootfs.APT_SANDBOX_DIRS:
        st = (tmp_path / rel).stat()
        assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (42, 0, mode), rel
    # No _apt user (a tree without apt): nothing to do, nothing fails.
    (tmp_path / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    rootfs.settle_apt_dirs(tmp_path)
