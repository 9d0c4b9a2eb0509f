"""pipeline/initramfs_cache.py: the key of an initramfs, and keeping and reusing one."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from pipeline.build import initramfs_cache as cache_mod
from pipeline.build.initramfs_cache import Cache, counts, key
from pipeline.naming import Layout
from tiny_artifacts import write_files

RELEASE = "6.12.57+deb13-amd64"

# The two lines of trixie's udev hook that read /etc/systemd (bookworm's
# differs only by '*.link' for '*.link*').
UDEV_HOOK = """\
#!/bin/sh -e
. /usr/share/initramfs-tools/hook-functions
mkdir -p "$DESTDIR/usr/lib/systemd/network/"
find -L /usr/lib/systemd/network -name '*.link*' -execdir cp -r -pt "$DESTDIR/usr/lib/systemd/network/" '{}' +
if [ -d /etc/systemd/network ]; then
  find -L /etc/systemd/network -name '*.link*' -execdir cp -r -pt "$DESTDIR/usr/lib/systemd/network/" '{}' +
fi
"""

# open-iscsi-boot's hook writes a passwd line that names /root.
BOOT_HOOK = """\
#!/bin/sh
# iscsi_target_name=/root=iscsi:: in a comment
if [ ! -e "${DESTDIR}/etc/passwd" ]; then
	echo "root:x:0:0:root:/root:/bin/sh" >"${DESTDIR}/etc/passwd"
fi
"""

OVERLAY = {
    "etc/systemd/network/50-diskless.network": "[Match]\nType=ether\n",
    "etc/systemd/system/foo.service": "[Service]\nExecStart=/bin/true\n",
    "etc/ssh/sshd_config.d/diskless.conf": "PermitRootLogin no\n",
    "etc/motd": "diskless\n",
    "etc/issue.net": "Debian\n",
    "root/.ssh/authorized_keys": "ssh-ed25519 AAAA admin\n",
    "home/admin/.profile": "umask 022\n",
    "srv/www/index.html": "<p>hi</p>\n",
    "etc/network/interfaces": "auto lo\n",
    "etc/modprobe.d/diskless.conf": "options bonding max_bonds=0\n",
}


@pytest.fixture
def setup(tmp_path):
    """A tree as the root step has it before the initramfs, one overlay, one .deb."""
    tree = tmp_path / "tree"
    write_files(tree, {
        "var/lib/dpkg/status": "Package: initramfs-tools\nStatus: install ok installed\n",
        "usr/share/initramfs-tools/hooks/udev": UDEV_HOOK,
        "usr/share/initramfs-tools/hooks/open-iscsi-boot": BOOT_HOOK,
        "usr/share/initramfs-tools/hook-functions": "copy_exec() { :; }\n",
        "usr/sbin/mkinitramfs": "#!/bin/sh\n. /etc/initramfs-tools/initramfs.conf\n",
        "usr/sbin/update-initramfs": "#!/bin/sh\nBOOTDIR=/boot\n",
        "etc/initramfs-tools/initramfs.conf": "MODULES=most\n",
        "etc/initramfs-tools/conf.d/zz-image-pipeline.conf": "RESUME=none\n",
        "boot/vmlinuz-" + RELEASE: "kernel",
    })
    overlay = tmp_path / "overlays/diskless"
    write_files(overlay, OVERLAY)
    deb = tmp_path / "open-iscsi-boot_0.1.0_all.deb"
    deb.write_bytes(b"!<arch>\nfirst")
    return tree, overlay, deb


SETTINGS = {"kernel": "k1", "code": "c1", "conf": "MODULES=most\n", "fstab": "LABEL=x / ext4\n",
            "epoch": "1735689600", "release": RELEASE}


def key_of(setup, settings=SETTINGS, overlays=None) -> str:
    tree, overlay, deb = setup
    return key(tree, overlays if overlays is not None else [overlay], [deb], settings)


# -- the key ----------------------------------------------------------------

def test_key_is_stable(setup):
    assert key_of(setup) == key_of(setup)
    assert len(key_of(setup)) == 64


@pytest.mark.parametrize("rel", [
    "etc/systemd/network/50-diskless.network",   # the file the benchmark changes
    "etc/systemd/system/foo.service",
    "etc/ssh/sshd_config.d/diskless.conf",
    "etc/motd",
    "etc/issue.net",
    "root/.ssh/authorized_keys",
    "home/admin/.profile",
    "srv/www/index.html",
    "etc/network/interfaces",
])
def test_irrelevant_overlay_change_keeps_the_key(setup, rel):
    before = key_of(setup)
    _tree, overlay, _deb = setup
    (overlay / rel).write_text("changed\n")
    assert key_of(setup) == before
    (overlay / rel).unlink()
    assert key_of(setup) == before


@pytest.mark.parametrize("rel", [
    "etc/modprobe.d/diskless.conf",              # read by mkinitramfs
    "usr/sbin/x",                                # unknown: counts
    "etc/initramfs-tools/conf.d/y",              # sourced by mkinitramfs
    "etc/initramfs-tools/hooks/z",
    "etc/systemd/network/10-nic.link",           # copied by udev's hook
    "etc/systemd/network/99-default.link.d/x.conf",
    "etc/udev/rules.d/70-names.rules",
    "etc/issues",                                # not a login banner
    "var/lib/plymouth/boot-duration",            # var/ is never irrelevant
    "etc/apt/apt.conf.d/99x",                    # apt runs when dpkg -i cannot
    "etc/fstab.d/x.fstab",
])
def test_relevant_overlay_change_changes_the_key(setup, rel):
    before = key_of(setup)
    _tree, overlay, _deb = setup
    write_files(overlay, {rel: "one\n"})
    added = key_of(setup)
    assert added != before
    write_files(overlay, {rel: "two\n"})
    assert key_of(setup) not in (before, added)


def test_mode_of_a_relevant_file_counts(setup):
    _tree, overlay, _deb = setup
    write_files(overlay, {"etc/initramfs-tools/hooks/z": "#!/bin/sh\n"})
    before = key_of(setup)
    os.chmod(overlay / "etc/initramfs-tools/hooks/z", 0o755)
    assert key_of(setup) != before


def test_symlinks_count_even_under_irrelevant_prefixes(setup):
    _tree, overlay, _deb = setup
    link = overlay / "etc/systemd/network/nics"
    link.symlink_to("/usr/lib/nics")
    before = key_of(setup)
    link.unlink()
    link.symlink_to("/usr/lib/other")
    assert key_of(setup) != before


def test_empty_folder_at_a_relevant_path_counts(setup):
    before = key_of(setup)
    _tree, overlay, _deb = setup
    (overlay / "etc/initramfs-tools/scripts/local-top").mkdir(parents=True)
    assert key_of(setup) != before
    before = key_of(setup)
    (overlay / "etc/systemd/system/x.target.wants").mkdir(parents=True)
    assert key_of(setup) == before


@pytest.mark.parametrize("name", ["kernel", "code", "conf", "fstab", "epoch", "release"])
def test_settings_count(setup, name):
    assert key_of(setup, {**SETTINGS, name: "other"}) != key_of(setup)


def test_deb_content_counts(setup):
    before = key_of(setup)
    _tree, _overlay, deb = setup
    deb.write_bytes(b"!<arch>\nsecond")
    assert key_of(setup) != before


def test_installed_packages_count(setup):
    before = key_of(setup)
    tree, _overlay, _deb = setup
    with open(tree / "var/lib/dpkg/status", "a") as handle:
        handle.write("\nPackage: dropbear-initramfs\nStatus: install ok installed\n")
    assert key_of(setup) != before


def test_overlay_order_counts(setup, tmp_path):
    _tree, overlay, _deb = setup
    other = tmp_path / "overlays/other"
    write_files(other, {"etc/modprobe.d/other.conf": "options x y=1\n"})
    assert key_of(setup, overlays=[overlay, other]) != key_of(setup, overlays=[other, overlay])


# -- hooks that read an "irrelevant" prefix void it ----------------------------

def test_known_hook_mentions_keep_the_rules(setup):
    tree, _overlay, _deb = setup
    assert cache_mod.active_rules(tree) == cache_mod.IRRELEVANT


def test_a_hook_that_reads_etc_ssh_makes_it_count(setup):
    tree, overlay, _deb = setup
    write_files(tree, {"usr/share/initramfs-tools/hooks/sshkeys":
                 '#!/bin/sh\ncp /etc/ssh/ssh_host_ed25519_key.pub "${DESTDIR}/etc/"\n'})
    prefixes = [rule.prefix for rule in cache_mod.active_rules(tree)]
    assert "etc/ssh/" not in prefixes and "etc/systemd/" in prefixes
    before = key_of(setup)
    (overlay / "etc/ssh/sshd_config.d/diskless.conf").write_text("changed\n")
    assert key_of(setup) != before


def test_a_new_mention_of_etc_systemd_in_udevs_hook_voids_the_rule(setup):
    tree, overlay, _deb = setup
    with open(tree / "usr/share/initramfs-tools/hooks/udev", "a") as handle:
        handle.write('cp /etc/systemd/network/*.network "$DESTDIR/etc/"\n')
    assert "etc/systemd/" not in [rule.prefix for rule in cache_mod.active_rules(tree)]
    before = key_of(setup)
    (overlay / "etc/systemd/network/50-diskless.network").write_text("changed\n")
    assert key_of(setup) != before


def test_comments_and_destdir_writes(setup):
    tree, _overlay, _deb = setup
    write_files(tree, {"etc/initramfs-tools/hooks/a": "#!/bin/sh\n# reads /etc/motd? no\n"})
    assert "etc/motd" in [rule.prefix for rule in cache_mod.active_rules(tree)]
    write_files(tree, {"etc/initramfs-tools/hooks/a": '#!/bin/sh\nmkdir -p "${DESTDIR}/root/.ssh"\n'})
    assert "root/" not in [rule.prefix for rule in cache_mod.active_rules(tree)]


def test_a_hook_symlink_out_of_the_tree_voids_every_rule(setup):
    tree, _overlay, _deb = setup
    (tree / "etc/initramfs-tools/hooks").mkdir(parents=True)
    (tree / "etc/initramfs-tools/hooks/evil").symlink_to("../../../../../../../etc/passwd")
    assert cache_mod.active_rules(tree) == ()


def test_hook_symlinks_are_read_inside_the_tree(setup):
    tree, _overlay, _deb = setup
    write_files(tree, {"usr/lib/foo/hook": "cp /srv/x $DESTDIR\n"})
    (tree / "etc/initramfs-tools/hooks").mkdir(parents=True)
    (tree / "etc/initramfs-tools/hooks/foo").symlink_to("/usr/lib/foo/hook")
    assert "srv/" not in [rule.prefix for rule in cache_mod.active_rules(tree)]


@pytest.mark.parametrize("rel,is_link,expected", [
    ("etc/systemd/network/50-diskless.network", False, False),
    ("etc/systemd/network/10-nic.link", False, True),
    ("etc/systemd/network/10-nic.link", True, True),
    ("etc/systemd/system/ssh.service", True, True),
    ("etc/issue", False, False),
    ("etc/issue.d/banner", False, False),
    ("etc/issuer", False, True),
    ("etc/motd", False, False),
    ("etc/sshd", False, True),
    ("root/.bashrc", False, False),
    ("rootfs/x", False, True),
    ("usr/sbin/x", False, True),
    ("etc/initramfs-tools/conf.d/y", False, True),
])
def test_counts(rel, is_link, expected):
    assert counts(rel, is_link) is expected


# -- keeping and reusing ---------------------------------------------------

@pytest.fixture
def cache(tmp_path):
    return Cache(Layout(tmp_path / "out"), "trixie", "amd64", {})


def make_initrd(tree: Path, content: bytes) -> None:
    (tree / "boot").mkdir(parents=True, exist_ok=True)
    (tree / "boot" / f"initrd.img-{RELEASE}").write_bytes(content)


def test_layout_path(tmp_path):
    lay = Layout(tmp_path)
    assert lay.initramfs_cache("trixie", "amd64") == tmp_path / "work/trixie/amd64/initramfs-cache"
    assert lay.initramfs_cache("trixie", "amd64", "ab" * 32) == \
        tmp_path / f"work/trixie/amd64/initramfs-cache/{'ab' * 32}.initrd.img"
    for bad in ("../x", "", "ABCDEF0123456789", "abc"):
        with pytest.raises(ValueError):
            lay.initramfs_cache("trixie", "amd64", bad)


def test_store_then_install(setup, cache):
    tree, _overlay, _deb = setup
    make_initrd(tree, b"initramfs one")
    k = key_of(setup)
    cache_mod.store(cache, k, tree, RELEASE)
    assert cache.path(k).read_bytes() == b"initramfs one"
    (tree / "boot" / f"initrd.img-{RELEASE}").unlink()
    cache_mod.install(cache, k, tree, RELEASE)
    installed = tree / "boot" / f"initrd.img-{RELEASE}"
    assert installed.read_bytes() == b"initramfs one"
    assert installed.stat().st_mode & 0o777 == 0o644
    assert not list(tree.rglob("*.partial"))
    assert not (tree / cache_mod.STATE_DIR).exists()   # trixie's update-initramfs keeps none
    assert cache_mod.state_matches(tree, RELEASE)


def test_keeps_the_latest_two(setup, cache):
    tree, _overlay, _deb = setup
    keys = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(4)]
    for i, k in enumerate(keys):
        make_initrd(tree, f"initramfs {i}".encode())
        cache_mod.store(cache, k, tree, RELEASE)
        stamp = 1_000_000 + i
        os.utime(cache.path(k), (stamp, stamp))
    assert sorted(p.name for p in cache.folder.iterdir()) == \
        sorted(cache.path(k).name for k in keys[2:])
    # A reuse makes that one the latest: the next store drops the other.
    cache_mod.install(cache, keys[2], tree, RELEASE)
    (cache.folder / (cache.path(keys[0]).name + ".partial")).write_bytes(b"killed")
    make_initrd(tree, b"initramfs 4")
    cache_mod.store(cache, keys[0], tree, RELEASE)
    assert sorted(p.name for p in cache.folder.iterdir()) == \
        sorted(cache.path(k).name for k in (keys[0], keys[2]))


def test_older_update_initramfs_state_is_reproduced(setup, cache):
    """initramfs-tools before 0.148 kept `sha1sum /boot/initrd.img-<release>`."""
    tree, _overlay, _deb = setup
    write_files(tree, {"usr/sbin/update-initramfs": "#!/bin/sh\nSTATEDIR=/var/lib/initramfs-tools\n"})
    make_initrd(tree, b"initramfs one")
    assert not cache_mod.state_matches(tree, RELEASE)       # update-initramfs would have written it
    sha1 = hashlib.sha1(b"initramfs one").hexdigest()
    write_files(tree, {f"var/lib/initramfs-tools/{RELEASE}": f"{sha1}  /boot/initrd.img-{RELEASE}\n"})
    assert cache_mod.state_matches(tree, RELEASE)
    k = key_of(setup)
    cache_mod.store(cache, k, tree, RELEASE)
    (tree / "var/lib/initramfs-tools" / RELEASE).unlink()
    (tree / "boot" / f"initrd.img-{RELEASE}").unlink()
    cache_mod.install(cache, k, tree, RELEASE)
    assert (tree / "var/lib/initramfs-tools" / RELEASE).read_text() == \
        f"{sha1}  /boot/initrd.img-{RELEASE}\n"


def test_unexpected_state_is_noticed(setup):
    tree, _overlay, _deb = setup
    make_initrd(tree, b"initramfs one")
    write_files(tree, {f"var/lib/initramfs-tools/{RELEASE}": "something\n"})
    assert not cache_mod.state_matches(tree, RELEASE)


def test_not_reusable(setup):
    tree, _overlay, _deb = setup
    assert cache_mod.not_reusable(tree, "most") is None
    assert "MODULES=dep" in cache_mod.not_reusable(tree, "dep")
    (tree / "etc/initramfs/post-update.d").mkdir(parents=True)
    assert cache_mod.not_reusable(tree, "most") is None
    write_files(tree, {"etc/initramfs/post-update.d/zz-flash-kernel": "#!/bin/sh\n"})
    assert "post-update.d" in cache_mod.not_reusable(tree, "most")
