"""pipeline/tasks.py: the doit task dicts, on a project made in tmp_path.

Nothing is built: the tests only look at (and pickle) what the creators yield.
"""

from __future__ import annotations

import io
import json
import pickle
from contextlib import redirect_stdout
from pathlib import Path

import pytest
from doit.cmd_base import ModuleTaskLoader
from doit.doit_cmd import DoitMain

from pipeline import identity, tasks
from pipeline.build import steps
from pipeline.naming import Layout

PROJECT = Path(__file__).resolve().parents[2]

RECIPE = """\
image: trixie
suite: trixie
mirror: http://mirror.example/debian
bootstrapper: mmdebstrap
packages: [systemd, open-iscsi]
kernel_flavours: [amd64, cloud-amd64]
overlays: [diskless]
source_date_epoch: 1735689600
"""

CHANGELOG = """\
open-iscsi-boot (1.2-1) unstable; urgency=medium

  * Test.

 -- Someone <someone@example.org>  Wed, 01 Jan 2025 00:00:00 +0000
"""

CREATORS = ("task_preflight", "task_package", "task_bootstrap", "task_kernel", "task_rootfs",
            "task_build")


@pytest.fixture
def restore_settings():
    saved = tasks.SETTINGS
    saved_db = tasks.DOIT_CONFIG["dep_file"]
    yield
    # back to what the import set up (the real project root when run from it)
    tasks.configure(project=saved.root, out=saved.out)
    assert tasks.SETTINGS == saved
    assert tasks.DOIT_CONFIG["dep_file"] == saved_db


@pytest.fixture
def project(tmp_path, restore_settings):
    proj = tmp_path / "project"
    (proj / "recipes").mkdir(parents=True)
    (proj / "recipes/trixie.yaml").write_text(RECIPE)
    (proj / "overlays/diskless/etc").mkdir(parents=True)
    (proj / "overlays/diskless/etc/motd").write_text("diskless\n")
    deb = proj / "open-iscsi-boot/debian"
    deb.mkdir(parents=True)
    (deb / "control").write_text("Source: open-iscsi-boot\n")
    (deb / "changelog").write_text(CHANGELOG)
    (deb / "rules").write_text("#!/usr/bin/make -f\n")
    out = tmp_path / "out"
    tasks.configure(project=proj, out=out)
    return proj, out


def collect(creator: str) -> list[dict]:
    result = getattr(tasks, creator)()
    return [result] if isinstance(result, dict) else list(result)


def by_name(creator: str) -> dict[str, dict]:
    return {t["name"]: t for t in collect(creator)}


def test_configure(project):
    proj, out = project
    assert tasks.SETTINGS.root == proj.resolve()
    assert tasks.SETTINGS.out == out.resolve()
    assert tasks.DOIT_CONFIG["dep_file"] == str(out.resolve() / ".doit.db")


def test_task_names(project):
    assert set(by_name("task_bootstrap")) == {"trixie"}
    assert set(by_name("task_kernel")) == {"trixie-amd64", "trixie-cloud-amd64"}
    assert set(by_name("task_rootfs")) == {"trixie-amd64", "trixie-cloud-amd64"}
    assert set(by_name("task_build")) == {"trixie", "trixie-amd64", "trixie-cloud-amd64"}
    assert set(by_name("task_package")) == {"open-iscsi-boot"}


def test_build_group(project):
    group = by_name("task_build")["trixie"]
    assert group["actions"] is None
    assert sorted(group["task_dep"]) == ["build:trixie-amd64", "build:trixie-cloud-amd64"]


def test_file_dep_chain(project):
    _proj, out = project
    lay = Layout(out.resolve())
    boot = by_name("task_bootstrap")["trixie"]
    assert boot["targets"] == [str(lay.base_stamp("trixie"))]
    assert boot["task_dep"] == ["preflight"]
    for flavour in ("amd64", "cloud-amd64"):
        name = f"trixie-{flavour}"
        kernel = by_name("task_kernel")[name]
        rootfs = by_name("task_rootfs")[name]
        build = by_name("task_build")[name]
        assert kernel["file_dep"] == [str(lay.base_stamp("trixie"))]
        assert kernel["targets"] == [str(lay.kernel_stamp("trixie", flavour))]
        assert str(lay.kernel_stamp("trixie", flavour)) in rootfs["file_dep"]
        assert rootfs["targets"] == [str(lay.root_stamp("trixie", flavour))]
        assert build["file_dep"] == [str(lay.root_stamp("trixie", flavour))]
        assert build["targets"] == [str(lay.triple_stamp("trixie", flavour))]


def test_rootfs_depends_on_overlay_files_and_package(project):
    proj, out = project
    rootfs = by_name("task_rootfs")["trixie-amd64"]
    assert str(proj.resolve() / "overlays/diskless/etc/motd") in rootfs["file_dep"]
    assert str(out.resolve() / "packages/open-iscsi-boot_1.2-1_all.deb") in rootfs["file_dep"]


def test_package_task(project):
    proj, out = project
    pkg = by_name("task_package")["open-iscsi-boot"]
    assert pkg["targets"] == [str(out.resolve() / "packages/open-iscsi-boot_1.2-1_all.deb")]
    src = proj.resolve() / "open-iscsi-boot/debian"
    assert sorted(pkg["file_dep"]) == sorted(str(src / n) for n in ("changelog", "control", "rules"))


def test_targets_are_small_stamps(project):
    _proj, out = project
    triples = out.resolve() / "triples"
    for creator in ("task_bootstrap", "task_kernel", "task_rootfs", "task_build"):
        for task in collect(creator):
            for target in task.get("targets", []):
                assert target.endswith(".json"), (creator, target)
                assert Path(target).parent != triples
                assert not target.endswith((".ext4", ".img", ".vmlinuz"))


def test_build_uptodate_checks_triple_present(project):
    _proj, out = project
    build = by_name("task_build")["trixie-amd64"]
    stamp = str(Layout(out.resolve()).triple_stamp("trixie", "amd64"))
    assert (tasks.triple_present, [stamp]) in build["uptodate"]


def test_preflight_lists_host_tools_and_bootstrapper(project):
    task = collect("task_preflight")[0]
    (func, args), = task["actions"]
    assert func is tasks.guarded
    label, check, names = args
    assert check is tasks.preflight
    assert names == ["mmdebstrap"]
    assert "mkfs.ext4" in tasks.HOST_TOOLS and "debugfs" in tasks.HOST_TOOLS


def test_preflight_names_the_package_of_a_missing_bootstrapper(monkeypatch):
    import shutil
    real_which = shutil.which
    monkeypatch.setattr(shutil, "which",
                        lambda tool, *a, **k: None if tool == "mkosi" else real_which(tool, *a, **k))
    with pytest.raises(tasks.PipelineError) as info:
        tasks.preflight(["mkosi"])
    assert "mkosi" in str(info.value)


def test_actions_are_picklable_tuples(project):
    count = 0
    for creator in CREATORS:
        for task in collect(creator):
            for action in task.get("actions") or []:
                assert isinstance(action, tuple) and len(action) == 2, (creator, task.get("name"))
                func, args = action
                assert callable(func)
                assert isinstance(args, list)
                back = pickle.loads(pickle.dumps(action))
                assert back[0] is func
                count += 1
            for action in task.get("clean", []):
                pickle.dumps(action)
            for check in task.get("uptodate", []):
                pickle.dumps(check)
    # preflight, package, bootstrap, 2 kernel, 2 rootfs, 2 build
    assert count == 9


def test_actions_carry_recipe_and_layout(project):
    _proj, out = project
    (func, args), = by_name("task_kernel")["trixie-cloud-amd64"]["actions"]
    label, step, recipe, flavour, layout = args
    assert step is steps.do_kernel
    assert label == "kernel trixie-cloud-amd64"
    assert recipe.image == "trixie" and recipe.mirror == "http://mirror.example/debian"
    assert flavour == "cloud-amd64"
    assert layout == Layout(out.resolve())


def test_doit_accepts_the_tasks(project):
    _proj, out = project
    members = {name: getattr(tasks, name) for name in tasks.__all__}
    buf = io.StringIO()
    with redirect_stdout(buf):
        rc = DoitMain(ModuleTaskLoader(members)).run(["list", "--all", "--quiet"])
    assert rc == 0
    listed = set(buf.getvalue().split())
    assert {"bootstrap:trixie", "kernel:trixie-amd64", "rootfs:trixie-cloud-amd64",
            "build:trixie", "build:trixie-amd64", "package:open-iscsi-boot",
            "preflight"} <= listed


def test_bad_recipe_exits_2_and_creates_nothing(project, capsys):
    proj, out = project
    (proj / "recipes/trixie.yaml").write_text(
        RECIPE.replace("suite: trixie", "suite: Trixie!")
              .replace("[amd64, cloud-amd64]", "[amd64, arm64]"))
    (proj / "recipes/other.yml").write_text("image: other\n")
    tasks.configure(project=proj, out=out)
    for creator in ("task_bootstrap", "task_build", "task_preflight"):
        with pytest.raises(SystemExit) as info:
            collect(creator)
        assert info.value.code == 2
    err = capsys.readouterr().err
    assert "nothing was built" in err
    assert "suite: 'Trixie!' is not valid" in err
    assert "kernel_flavours[1]: 'arm64' is not valid" in err
    assert "other.yml" in err and "must be named *.yaml" in err
    assert not out.exists()


def test_load_is_cached_until_configure(project):
    proj, out = project
    first = tasks.load()
    assert tasks.load() is first
    (proj / "recipes/trixie.yaml").write_text(RECIPE.replace("[amd64, cloud-amd64]", "[amd64]"))
    assert tasks.load() is first
    tasks.configure(project=proj, out=out)
    assert tasks.load()[0].kernel_flavours == ("amd64",)


# -- triple_present --------------------------------------------------------------

def test_triple_present(project):
    _proj, out = project
    lay = Layout(out.resolve())
    stamp = lay.triple_stamp("trixie", "amd64")
    assert tasks.triple_present(str(stamp)) is False
    lay.triples.mkdir(parents=True)
    files = {"trixie_6.1.0-9-amd64.vmlinuz": b"kernel",
             "trixie_6.1.0-9-amd64.initrd.img": b"initrd!",
             "trixie_6.1.0-9-amd64.root.ext4": b"root image",
             "trixie_6.1.0-9-amd64.manifest.json": b"{}"}
    for name, data in files.items():
        (lay.triples / name).write_bytes(data)
    stamp.parent.mkdir(parents=True)
    stamp.write_text(json.dumps({"release": "6.1.0-9-amd64",
                                 "files": {n: len(d) for n, d in files.items()}}))
    assert tasks.triple_present(str(stamp)) is True
    (lay.triples / "trixie_6.1.0-9-amd64.root.ext4").write_bytes(b"other size")
    assert tasks.triple_present(str(stamp)) is True      # same size: not hashed on purpose
    (lay.triples / "trixie_6.1.0-9-amd64.root.ext4").write_bytes(b"a different size")
    assert tasks.triple_present(str(stamp)) is False
    (lay.triples / "trixie_6.1.0-9-amd64.root.ext4").write_bytes(b"root image")
    assert tasks.triple_present(str(stamp)) is True
    (lay.triples / "trixie_6.1.0-9-amd64.manifest.json").unlink()
    assert tasks.triple_present(str(stamp)) is False


# -- initramfs cache ------------------------------------------------------------

def test_rootfs_clean_removes_the_initramfs_cache(project):
    _proj, out = project
    lay = Layout(out.resolve())
    (func, (paths,)), = by_name("task_rootfs")["trixie-amd64"]["clean"]
    assert func is tasks.do_clean
    assert lay.initramfs_cache("trixie", "amd64") in paths
    assert lay.initramfs_cache("trixie", "cloud-amd64") not in paths


def test_rootfs_identity_covers_the_cache_code(project):
    rootfs_code = identity.code_files([identity.entry_of(steps.do_rootfs)])
    assert "build/initramfs_cache.py" in rootfs_code
    assert "build/rootfs.py" in rootfs_code
    task = by_name("task_rootfs")["trixie-amd64"]
    assert json.loads(task["uptodate"][0].config)["code"] == tasks.step_code(steps.do_rootfs)


def test_step_identities_are_the_computed_code(project):
    def config(creator, name):
        return by_name(creator)[name]["uptodate"][0].config
    assert config("task_bootstrap", "trixie").endswith(tasks.step_code(steps.do_bootstrap))
    assert config("task_kernel", "trixie-amd64") == "amd64" + tasks.step_code(steps.do_kernel)
    assert json.loads(config("task_build", "trixie-amd64"))["code"] == \
        tasks.step_code(steps.do_build)
    assert config("task_package", "open-iscsi-boot") == tasks.step_code(tasks.package)


def test_initramfs_cache_key_has_the_code_of_every_step_up_to_rootfs(project):
    (func, args), = by_name("task_rootfs")["trixie-amd64"]["actions"]
    assert args[1] is steps.do_rootfs
    assert args[-1] == identity.digest(identity.entry_of(f) for f in (
        steps.do_bootstrap, steps.do_kernel, steps.do_rootfs))
    assert args[-1] != tasks.step_code(steps.do_rootfs)
