"""The rbd store against a real throwaway Ceph cluster (pipeline/lab/ceph.py).

One cluster for the module (a monitor and a memstore OSD on 127.0.0.1,
cephx on), started and stopped here.  What the backend did is read back
with other tools than the ones it used: ``rbd export`` of a disk, then
dumpe2fs, e2fsck and debugfs on the exported file; ``rbd du`` for space.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from pipeline.build import manifest
from pipeline.errors import PipelineError
from pipeline.fleet import publish as pub
from pipeline.fleet.inventory import load_inventory
from pipeline.fleet.store import open_store
from pipeline.fleet.store import rbd as rbd_backend
from pipeline.fleet.store.rbd import RbdSettings, RbdStore
from pipeline.lab import ceph
from pipeline.naming import Layout, Store, published_name

pytestmark = pytest.mark.slow

RELEASE = "6.1.0-9-amd64"
WEB1, WEB2 = "52:54:00:12:34:01", "52:54:00:12:34:02"
UUID1, UUID2 = "6406b288-c69f-5174-bac2-004c70946789", "0e0cb8a6-9c7b-5d43-8a8e-1c1f4d2b7a10"
TEMPLATE = published_name("trixie", RELEASE, "0123456789ab", "root")
MIB = 1 << 20

needs = ["ceph-mon", "ceph-osd", "rbd", "rbd-fuse", "mkfs.ext4"]
if not all(shutil.which(tool) for tool in needs) or not Path("/dev/fuse").exists():
    pytest.skip("needs ceph-mon ceph-osd ceph-common rbd-fuse and /dev/fuse (./setup-host --test)",
                allow_module_level=True)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    started = ceph.start(tmp_path_factory.mktemp("ceph") / "cluster")
    try:
        yield started
    finally:
        started.stop()


def settings_of(cluster: ceph.Cluster, **changes) -> RbdSettings:
    values = dict(conf=cluster.conf, client_id=cluster.client_id, keyring=cluster.keyring,
                  pool=cluster.pool)
    values.update(changes)
    return RbdSettings(**values)


@pytest.fixture(scope="module")
def root_image(tmp_path_factory) -> Path:
    """A 64 MiB ext4 root (1 KiB blocks: several superblock copies) with modules."""
    base = tmp_path_factory.mktemp("root")
    tree = base / "tree"
    (tree / "usr/lib/modules" / RELEASE / "kernel").mkdir(parents=True)
    (tree / "lib").symlink_to("usr/lib")
    (tree / "etc").mkdir()
    (tree / "etc/fstab").write_text("LABEL=fleet-root / ext4 defaults 0 1\n")
    image = base / "root.ext4"
    with open(image, "wb") as handle:
        handle.truncate(64 * MIB)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-b", "1024", "-L", "fleet-root", "-d", str(tree),
                    str(image)], check=True)
    return image


@pytest.fixture(scope="module")
def store(cluster, root_image, tmp_path_factory) -> RbdStore:
    the_store = RbdStore(settings_of(cluster), Store(tmp_path_factory.mktemp("site") / "store"))
    the_store.check()
    the_store.put_template(TEMPLATE, root_image)
    return the_store


def rbd(cluster: ceph.Cluster, *args: str) -> str:
    return subprocess.run(["rbd", "-c", str(cluster.conf), "--id", cluster.client_id, "--keyring",
                           str(cluster.keyring), *args], check=True, capture_output=True,
                          text=True).stdout


def exported(cluster: ceph.Cluster, image: str, dest: Path) -> Path:
    dest.unlink(missing_ok=True)
    rbd(cluster, "export", "--no-progress", f"{cluster.pool}/{image}", str(dest))
    return dest


def superblock(image: Path) -> dict[str, str]:
    text = subprocess.run(["dumpe2fs", "-h", str(image)], capture_output=True, text=True,
                          check=True).stdout
    return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in text.splitlines()) if v}


def used(cluster: ceph.Cluster, image: str) -> int:
    [entry] = json.loads(rbd(cluster, "du", "--format", "json", f"{cluster.pool}/{image}"))["images"]
    return int(entry["used_size"])


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_template_is_a_protected_snapshot(cluster, store, root_image, tmp_path):
    assert store.has_template(TEMPLATE) and store.template_names() == [TEMPLATE]
    info = json.loads(rbd(cluster, "info", "--format", "json", f"{cluster.pool}/{TEMPLATE}@template"))
    assert info["protected"] == "true"
    assert sha256(exported(cluster, TEMPLATE, tmp_path / "t.img")) == sha256(root_image)
    with pytest.raises(subprocess.CalledProcessError):     # the snapshot cannot be removed
        rbd(cluster, "snap", "rm", f"{cluster.pool}/{TEMPLATE}@template")


def test_two_clones_each_with_its_own_uuid(cluster, store, root_image, tmp_path, capsys):
    template_uuid = superblock(root_image)["Filesystem UUID"]
    for mac, fs_uuid in ((WEB1, UUID1), (WEB2, UUID2)):
        start = time.monotonic()
        ref = store.clone(TEMPLATE, mac, fs_uuid)
        took = time.monotonic() - start
        name = ref.split("/", 1)[1]
        assert ref == store.disk_ref(mac) and store.has_disk(mac)
        info = json.loads(rbd(cluster, "info", "--format", "json", ref))
        assert info["parent"]["image"] == TEMPLATE and info["parent"]["snapshot"] == "template"
        disk = exported(cluster, name, tmp_path / f"{name}.img")
        sb = superblock(disk)
        assert sb["Filesystem UUID"] == fs_uuid != template_uuid
        assert sb["Filesystem volume name"] == "fleet-root"
        subprocess.run(["e2fsck", "-fn", str(disk)], check=True, capture_output=True)
        # Only the superblock copies were written: a few 1 MiB objects, not the image.
        groups = subprocess.run(["dumpe2fs", str(disk)], capture_output=True, text=True).stdout
        copies = groups.count("uperblock at")
        with capsys.disabled():
            print(f"\n  clone {name}: {took:.2f} s, {used(cluster, name) // 1024} KiB used "
                  f"({copies} superblock copies), template {used(cluster, TEMPLATE + '@template') // 1024} KiB")
        assert used(cluster, name) <= copies * MIB
        assert took < 10
    assert store.disks() == [store.disk_ref(WEB1), store.disk_ref(WEB2)]
    assert store.disk_releases(WEB1) == {RELEASE}
    space = store.space()
    assert space.provisioned == 3 * 64 * MIB and 0 < space.used < 64 * MIB


def test_an_existing_clone_is_never_overwritten(cluster, store, tmp_path):
    if not store.has_disk(WEB1):
        store.clone(TEMPLATE, WEB1, UUID1)
    name = store.disk_ref(WEB1).split("/", 1)[1]
    with store.exposed(name) as path:      # the machine writes to its disk
        subprocess.run(["debugfs", "-w", "-R", "write /etc/hostname /marker", str(path)],
                       check=True, capture_output=True)
    before = sha256(exported(cluster, name, tmp_path / "before.img"))
    with pytest.raises(PipelineError, match="never overwritten"):
        store.clone(TEMPLATE, WEB1, UUID2)
    assert sha256(exported(cluster, name, tmp_path / "after.img")) == before
    assert not any(n.endswith(".partial") for n in json.loads(rbd(cluster, "ls", "--format", "json",
                                                                   cluster.pool)))


def test_reprovision_keeps_a_backup_until_removed(cluster, store, tmp_path):
    if not store.has_disk(WEB2):
        store.clone(TEMPLATE, WEB2, UUID2)
    name = store.disk_ref(WEB2).split("/", 1)[1]
    with store.exposed(name) as path:
        subprocess.run(["debugfs", "-w", "-R", "write /etc/hostname /marker", str(path)],
                       check=True, capture_output=True)
    written = sha256(exported(cluster, name, tmp_path / "written.img"))
    backup = store.keep_backup(WEB2, "20250102T030405Z")
    assert backup == f"{cluster.pool}/52-54-00-12-34-02.ext4.backup-20250102T030405Z"
    assert not store.has_disk(WEB2) and store.backups(WEB2) == [backup]
    store.clone(TEMPLATE, WEB2, UUID2)
    fresh = exported(cluster, name, tmp_path / "fresh.img")
    assert "marker" not in subprocess.run(["debugfs", "-R", "ls /", str(fresh)],
                                          capture_output=True, text=True).stdout
    assert superblock(fresh)["Filesystem UUID"] == UUID2
    assert sha256(exported(cluster, backup.split("/", 1)[1], tmp_path / "b.img")) == written
    # The template cannot go while disks are clones of it.
    assert "disk(s) are clones of it" in store.template_kept_because(TEMPLATE)
    store.remove_backup(backup)
    assert store.backups(WEB2) == [] and store.has_disk(WEB2)


@pytest.mark.parametrize("problem", ["no such pool", "missing keyring", "not a keyring", "wrong client",
                                     "cluster down", "keyring readable by others"])
def test_bad_settings_give_one_clear_line(cluster, tmp_path, problem, monkeypatch):
    if problem == "no such pool":
        settings, expected = settings_of(cluster, pool="nopool"), "the cluster has no pool 'nopool'"
    elif problem == "missing keyring":
        settings, expected = settings_of(cluster, keyring=tmp_path / "gone"), "cannot read the keyring"
    elif problem == "not a keyring":
        (tmp_path / "bad.keyring").write_text("this is not a keyring\n")
        (tmp_path / "bad.keyring").chmod(0o600)
        settings, expected = settings_of(cluster, keyring=tmp_path / "bad.keyring"), "not a Ceph keyring"
    elif problem == "keyring readable by others":
        shared = tmp_path / "shared.keyring"
        shared.write_bytes(cluster.keyring.read_bytes())
        shared.chmod(0o644)
        settings, expected = settings_of(cluster, keyring=shared), "readable by others (mode 0644)"
    elif problem == "wrong client":
        settings, expected = settings_of(cluster, client_id="nobody"), "the cluster refused client.nobody"
    else:
        # The same cluster's settings, but its monitor at a port where nothing listens.
        conf = tmp_path / "down.conf"
        port = ceph.free_port()
        conf.write_text("\n".join(f"mon host = v2:127.0.0.1:{port}" if line.startswith("mon host")
                                  else line for line in cluster.conf.read_text().splitlines()) + "\n")
        monkeypatch.setattr(rbd_backend, "CONNECT_TIMEOUT", 3)
        settings, expected = settings_of(cluster, conf=conf), "cannot reach the Ceph cluster"
    with pytest.raises(PipelineError) as info:
        RbdStore(settings, Store(tmp_path / "store")).check()
    message = str(info.value)
    assert expected in message and "\n" not in message, message


# -- publish, gc and re-provision through the rbd store ------------------------------

def make_triple(base: Path, root_image: Path) -> Path:
    layout = Layout(base / "out")
    layout.triples.mkdir(parents=True)
    triple = layout.triple("trixie", RELEASE)
    triple.kernel.write_bytes(b"kernel")
    triple.initrd.write_bytes(b"initramfs")
    shutil.copyfile(root_image, triple.root)
    parts = {part: manifest.part_entry(path, path.name) for part, path in triple.parts().items()}
    parts["root"].update(label="fleet-root", uuid="unused-here")
    triple.manifest.write_text(json.dumps({"format": 1, "image": "trixie", "flavour": "amd64",
                                           "kernel_release": RELEASE, "parts": parts}))
    return layout.triples


def test_publish_gc_and_reprovision_on_rbd(cluster, root_image, tmp_path):
    from pipeline.build.recipe import Initramfs, Recipe, RootImage
    recipe = Recipe(path=Path("/recipes/trixie.yaml"), image="trixie", suite="trixie",
                    mirror="http://mirror.example/debian", bootstrapper="mmdebstrap",
                    packages=("systemd",), kernel_flavours=("amd64",), overlays=(),
                    root_image=RootImage(), initramfs=Initramfs(), source_date_epoch=0, description="")
    triples = make_triple(tmp_path, root_image)
    path = tmp_path / "inventory.yaml"
    path.write_text("site:\n  authority: 2025-01.org.example\n  portals: [192.0.2.1]\n"
                    "  tftp_root: tftp\n  store: store\nmachines:\n"
                    f"  {WEB1}: {{name: web1, image: trixie}}\n")
    inventory = load_inventory(path, {"trixie": recipe})
    # A pool of its own for this test, so that the module's images do not show here.
    subprocess.run(["ceph", "-c", str(cluster.conf), "osd", "pool", "create", "publish", "8"],
                   check=True, capture_output=True)
    subprocess.run(["rbd", "-c", str(cluster.conf), "pool", "init", "publish"], check=True)
    subprocess.run(["ceph", "-c", str(cluster.conf), "auth", "caps", f"client.{cluster.client_id}",
                    "mon", "profile rbd", "osd", f"profile rbd pool={cluster.pool}, profile rbd pool=publish"],
                   check=True, capture_output=True)
    store = open_store(inventory.site, backend="rbd", settings=settings_of(cluster, pool="publish"))
    log: list[str] = []
    report = pub.publish(inventory, triples, log=log.append, store=store)
    assert report.disks_created == ["publish/52-54-00-12-34-01.ext4"]
    conf = (tmp_path / "store/tgt/targets.conf").read_text()
    assert "    bs-type rbd\n" in conf and "    backing-store publish/52-54-00-12-34-01.ext4\n" in conf
    pretend = subprocess.run(["tgt-admin", "-p", "-e", "-C", "32000", "-c", str(tmp_path / "store/tgt/targets.conf")],
                             capture_output=True, text=True).stdout
    assert f"-b \"publish/52-54-00-12-34-01.ext4\"  --bstype rbd --bsopts 'conf={cluster.conf};id=fleet'" in pretend
    record = json.loads((tmp_path / "store/records/52-54-00-12-34-01.json").read_text())
    assert record["cloned"]["template"] == store.template_names()[0]
    # A second publish reads the modules off the disk and changes nothing.
    assert pub.publish(inventory, triples, log=log.append, store=store).changes == 0
    # Re-provision keeps the old disk; remove-backup removes it; gc keeps the template in use.
    report = pub.reprovision(inventory, "web1", triples, log=log.append, store=store)
    [backup] = store.backups(WEB1)
    assert any(backup in note for note in report.notes)
    assert pub.remove_backup(inventory, "web1", log=log.append, store=store) == [backup]
    assert pub.gc(inventory, triples, log=log.append, store=store).removed == []
    assert store.disks() == ["publish/52-54-00-12-34-01.ext4"]
