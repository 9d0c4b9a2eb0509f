"""pipeline/fleet/store: the factory, the file backend through the interface,
and the rbd backend's command lines (rbd faked: every other tool is real,
so tune2fs really changes the UUID of a local ext4 image standing in for
the clone that rbd-fuse would expose)."""

from __future__ import annotations

import json
import subprocess
from contextlib import contextmanager
from pathlib import Path

import pytest

from pipeline import runner
from pipeline.errors import ConfigError, PipelineError
from pipeline.fleet.store import open_store
from pipeline.fleet.store.file import FileStore
from pipeline.fleet.store.rbd import RbdSettings, RbdStore
from pipeline.naming import Store, published_name
from tiny_artifacts import ext4_image, write_files

MAC = "52:54:00:12:34:01"
DISK = "52-54-00-12-34-01.ext4"
UUID = "6406b288-c69f-5174-bac2-004c70946789"
TEMPLATE = published_name("trixie", "6.1.0-9-amd64", "0123456789ab", "root")
SETTINGS = RbdSettings(Path("/etc/site/ceph.conf"), "fleet", Path("/etc/site/fleet.keyring"), "disks")


class FakeSite:
    def __init__(self, store: Path, **extra) -> None:
        self.store = store
        self.__dict__.update(extra)


def uuid_of(image: Path) -> str:
    text = subprocess.run(["dumpe2fs", "-h", str(image)], capture_output=True, text=True, check=True).stdout
    return next(line.split(":", 1)[1].strip() for line in text.splitlines()
                if line.startswith("Filesystem UUID:"))


@pytest.fixture
def root(tmp_path) -> Path:
    tree = write_files(tmp_path / "tree", {"usr/lib/modules/6.1.0-9-amd64/kernel/x": "",
                                           "etc/fstab": "LABEL=fleet-root / ext4 defaults 0 1\n"})
    (tree / "lib").symlink_to("usr/lib")
    return ext4_image(tree, tmp_path / "root.ext4", "-L", "fleet-root")


# -- the factory ------------------------------------------------------------------

def test_default_backend_is_file(tmp_path):
    store = open_store(FakeSite(tmp_path / "store"))
    assert isinstance(store, FileStore) and store.disk_ref(MAC) == tmp_path / "store/disks" / DISK


def test_rbd_backend_from_site_settings(tmp_path):
    rbd = {"conf": "/etc/site/ceph.conf", "client_id": "fleet", "keyring": "/k", "pool": "disks"}
    store = open_store(FakeSite(tmp_path, store_backend="rbd", rbd=rbd))
    assert isinstance(store, RbdStore) and store.disk_ref(MAC) == f"disks/{DISK}"
    with pytest.raises(ConfigError, match="site.store_backend: expected one of file, rbd, got 'nfs'"):
        open_store(FakeSite(tmp_path, store_backend="nfs"))


def test_rbd_settings_problems_are_one_line_each():
    with pytest.raises(ConfigError) as info:
        RbdSettings.from_mapping({"conf": "/c", "pool": "", "keyring": 3, "user": "x"}, "inv.yaml: site.rbd")
    assert info.value.problems == [
        "inv.yaml: site.rbd: unknown key 'user' (expected conf, client_id, keyring, pool)",
        "inv.yaml: site.rbd.client_id: expected a non-empty string",
        "inv.yaml: site.rbd.keyring: expected a non-empty string",
        "inv.yaml: site.rbd.pool: expected a non-empty string"]
    with pytest.raises(ConfigError) as info:
        RbdSettings.from_mapping({"conf": "/my ceph.conf", "client_id": "client.fleet",
                                  "keyring": "/k", "pool": "a/b"})
    assert info.value.problems == [
        "site.rbd.conf: expected a path without spaces, quotes, ';' or '\\'",
        "site.rbd.pool: expected letters, digits, '.', '_' or '-'"]
    with pytest.raises(ConfigError, match="site.rbd: expected a mapping"):
        RbdSettings.from_mapping(None)


# -- the file backend through the interface ---------------------------------------

def test_file_store_round_trip(tmp_path, root):
    store = FileStore(Store(tmp_path / "store"))
    store.prepare()
    assert not store.has_template(TEMPLATE) and store.template_names() == []
    store.put_template(TEMPLATE, root)
    assert store.has_template(TEMPLATE) and store.template_names() == [TEMPLATE]
    disk = store.clone(TEMPLATE, MAC, UUID)
    assert store.has_disk(MAC) and store.disks() == [disk] and uuid_of(disk) == UUID
    assert store.disk_releases(MAC) == {"6.1.0-9-amd64"}
    with pytest.raises(PipelineError, match="never overwritten"):
        store.clone(TEMPLATE, MAC, UUID)
    assert store.tgt_backing(MAC) == [f"backing-store {disk}"]
    space = store.space()
    assert space.provisioned == 2 * root.stat().st_size and 0 < space.used <= space.provisioned
    backup = store.keep_backup(MAC, "20250102T030405Z")
    assert backup.name == DISK + ".backup-20250102T030405Z" and not store.has_disk(MAC)
    assert store.backups(MAC) == [backup]
    store.remove_backup(backup)
    assert store.backups(MAC) == [] and not backup.exists()
    (tmp_path / "store/disks" / (DISK + ".partial")).write_text("interrupted")
    assert store.remove_leftovers() == [tmp_path / "store/disks" / (DISK + ".partial")]


# -- the rbd backend's commands ---------------------------------------------------

class FakeRbd:
    """Stands in for the rbd tool: records each call, keeps a list of images."""

    def __init__(self, images: list[str]) -> None:
        self.images = list(images)
        self.calls: list[list[str]] = []
        self.real_output = runner.output

    def output(self, argv, **kwargs):
        if argv[0] != "rbd":
            return self.real_output(argv, **kwargs)
        assert argv[1:11] == ["--conf", "/etc/site/ceph.conf", "--id", "fleet", "--keyring",
                              "/etc/site/fleet.keyring", "--client_mount_timeout", "20",
                              "--rados_mon_op_timeout", "120"], argv
        args = argv[13:]
        self.calls.append(args)
        if args[0] == "ls":
            return json.dumps(self.images)
        if args[0] == "clone" or args[0] == "import":
            self.images.append(args[-1].split("/", 1)[1])
        if args[0] == "rename":
            self.images.remove(args[1].split("/", 1)[1])
            self.images.append(args[2].split("/", 1)[1])
        if args[0] == "rm":
            self.images.remove(args[-1].split("/", 1)[1])
        if args[:2] == ["snap", "ls"]:
            return "[]"
        return ""


@pytest.fixture
def fake(monkeypatch):
    def install(images: list[str]) -> FakeRbd:
        the_fake = FakeRbd(images)
        monkeypatch.setattr(runner, "output", the_fake.output)
        return the_fake
    return install


def rbd_store(tmp_path, exposed_file: Path | None = None) -> RbdStore:
    store = RbdStore(SETTINGS, Store(tmp_path / "store"))
    if exposed_file is not None:
        @contextmanager
        def exposed(image):
            yield exposed_file
        store.exposed = exposed
    return store


def test_rbd_template_is_imported_snapshotted_protected_then_renamed(tmp_path, fake, root):
    rbd = fake([])
    ref = rbd_store(tmp_path).put_template(TEMPLATE, root)
    assert ref == f"disks/{TEMPLATE}"
    partial = f"disks/{TEMPLATE}.partial"
    assert rbd.calls[1:] == [
        ["import", "--no-progress", "--image-format", "2", "--object-size", "1M", str(root), partial],
        ["snap", "create", "--no-progress", f"{partial}@template"],
        ["snap", "protect", f"{partial}@template"],
        ["rename", partial, f"disks/{TEMPLATE}"]]


def test_rbd_clone_sets_the_uuid_then_takes_its_name(tmp_path, fake, root):
    rbd = fake([TEMPLATE])
    store = rbd_store(tmp_path, exposed_file=root)
    assert store.clone(TEMPLATE, MAC, UUID) == f"disks/{DISK}"
    assert ["clone", f"disks/{TEMPLATE}@template", f"disks/{DISK}.partial"] in rbd.calls
    assert rbd.calls[-1] == ["rename", f"disks/{DISK}.partial", f"disks/{DISK}"]
    assert uuid_of(root) == UUID          # tune2fs ran on the exposed clone
    assert store.has_disk(MAC) and store.disks() == [f"disks/{DISK}"]


def test_rbd_clone_never_overwrites(tmp_path, fake, root):
    rbd = fake([TEMPLATE, DISK])
    with pytest.raises(PipelineError, match=f"disks/{DISK}: a disk is already there; it is never overwritten"):
        rbd_store(tmp_path, exposed_file=root).clone(TEMPLATE, MAC, UUID)
    assert [call[0] for call in rbd.calls] == ["ls"]


def test_rbd_backup_names_and_tgt_lines(tmp_path, fake):
    rbd = fake([TEMPLATE, DISK, "someone-elses-image"])
    store = rbd_store(tmp_path)
    backup = store.keep_backup(MAC, "20250102T030405Z")
    assert rbd.calls[-1] == ["rename", f"disks/{DISK}", f"disks/{DISK}.backup-20250102T030405Z"]
    assert store.backups(MAC) == [backup] and store.disks() == [] and store.template_names() == [TEMPLATE]
    store.remove_backup(backup)
    assert rbd.calls[-1] == ["rm", "--no-progress", backup]
    with pytest.raises(PipelineError, match="not a disk backup"):
        store.remove_backup(f"disks/{TEMPLATE}")
    assert store.tgt_backing(MAC) == ["bs-type rbd",
                                      "bsopts \"'conf=/etc/site/ceph.conf;id=fleet'\"",
                                      f"backing-store disks/{DISK}"]


def test_rbd_failure_is_one_line(tmp_path, monkeypatch):
    def no_pool(argv, **kwargs):
        raise runner.CommandError(argv, 2, "rbd: error opening pool 'disks': (2) No such file or "
                                           "directory\nrbd: listing images failed: (2) No such file\n")
    monkeypatch.setattr(runner, "output", no_pool)
    with pytest.raises(PipelineError) as info:
        rbd_store(tmp_path).has_disk(MAC)
    assert str(info.value) == "rbd store disks (client.fleet, /etc/site/ceph.conf): the cluster has no pool 'disks'"
