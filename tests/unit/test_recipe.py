"""Recipe parsing and validation (all mirror URIs are made up)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from pipeline.errors import ConfigError
from pipeline.build.recipe import Initramfs, Recipe, RootImage, load_recipe, load_recipes

PROJECT = Path(__file__).resolve().parents[2]

# One YAML line (or block) per top-level key of a valid recipe; the bad cases
# below replace or drop entries of it.
GOOD = {
    "image": "image: demo-1.0",
    "suite": "suite: bookworm",
    "mirror": "mirror: http://mirror.example/debian/",
    "packages": "packages: [systemd, open-iscsi, linux-base]",
    "kernel_flavours": "kernel_flavours: [amd64, rt-amd64]",
    "overlays": "overlays: [base]",
    "root_image": "root_image:\n  label: demo-root\n  headroom_percent: 30\n  headroom_mib: 256",
    "initramfs": "initramfs:\n  compression: xz\n  modules: netboot",
    "source_date_epoch": "source_date_epoch: 1700000000",
    "description": "description: A demo.",
}


def recipe_text(drop: tuple[str, ...] = (), **replace: str) -> str:
    lines = {**GOOD, **replace}
    return "\n".join(v for k, v in lines.items() if k not in drop) + "\n"


@pytest.fixture
def overlays(tmp_path: Path) -> Path:
    d = tmp_path / "overlays"
    (d / "base").mkdir(parents=True)
    (d / "extra").mkdir()
    (d / "a-file").write_text("not a folder")
    return d


@pytest.fixture
def apt(tmp_path: Path) -> Path:
    d = tmp_path / "apt"
    d.mkdir()
    (d / "sources.list").write_text("deb http://host-mirror.example/debian/ trixie main\n")
    return d


def write(tmp_path: Path, text: str, name: str = "demo.yaml") -> Path:
    path = tmp_path / "recipes" / name
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    return path


# (id, YAML text, [(what follows the file name, fragment), ...]).  The prefix
# pins the key path right after the file name; the fragment the explanation.
BAD = [
    ("yaml-syntax", "image: demo\nsuite: [bookworm\npackages: x\n", [(":3:9: ", "YAML syntax error: expected ',' or ']'")]),
    ("yaml-syntax-indent", "image: demo\n  suite: x\n", [(":2:8: ", "YAML syntax error: mapping values")]),
    ("top-level-list", "- image: demo\n", [(": (top level): ", "expected a mapping"), (": (top level): ", "got a list")]),
    ("empty-file", "", [(": (top level): ", "the file is empty")]),
    ("unknown-top-key", recipe_text(extra="colour: blue"), [(": colour: ", "unknown key; expected one of image, suite")]),
    ("unknown-nested-key", recipe_text(root_image="root_image:\n  size: 3"),
     [(": root_image.size: ", "unknown key; expected one of label, headroom_percent, headroom_mib")]),
    ("root-image-not-mapping", recipe_text(root_image="root_image: big"), [(": root_image: ", "expected a mapping")]),
    ("packages-string", recipe_text(packages="packages: vim"), [(": packages: ", "got string 'vim'")]),
    ("packages-empty", recipe_text(packages="packages: []"), [(": packages: ", "got an empty list")]),
    ("package-bad-name", recipe_text(packages="packages: [vim, Vim_X, 3]"),
     [(": packages[1]: ", "'Vim_X' is not valid"), (": packages[2]: ", "expected a string, got int 3")]),
    ("duplicate-package", recipe_text(packages="packages: [vim, curl, vim]"),
     [(": packages[2]: ", "'vim' is listed twice (first at packages[0])")]),
    ("epoch-string", recipe_text(source_date_epoch="source_date_epoch: soon"),
     [(": source_date_epoch: ", "expected a non-negative integer")]),
    ("epoch-bool", recipe_text(source_date_epoch="source_date_epoch: true"),
     [(": source_date_epoch: ", "got boolean true")]),
    ("epoch-negative", recipe_text(source_date_epoch="source_date_epoch: -1"), [(": source_date_epoch: ", "got -1")]),
    ("headroom-negative", recipe_text(root_image="root_image:\n  headroom_percent: -5"),
     [(": root_image.headroom_percent: ", "expected an integer from 0 to 1000, got -5")]),
    ("headroom-too-big", recipe_text(root_image="root_image:\n  headroom_percent: 1001"),
     [(": root_image.headroom_percent: ", "got 1001")]),
    ("headroom-mib-float", recipe_text(root_image="root_image:\n  headroom_mib: 1.5"),
     [(": root_image.headroom_mib: ", "got float 1.5")]),
    ("unknown-flavour", recipe_text(kernel_flavours="kernel_flavours: [amd64, arm64]"),
     [(": kernel_flavours[1]: ", "'arm64' is not valid; expected one of amd64, cloud-amd64, rt-amd64")]),
    ("empty-flavours", recipe_text(kernel_flavours="kernel_flavours: []"), [(": kernel_flavours: ", "got an empty list")]),
    ("duplicate-flavour", recipe_text(kernel_flavours="kernel_flavours: [amd64, rt-amd64, amd64]"),
     [(": kernel_flavours[2]: ", "'amd64' is listed twice")]),
    ("image-slash", recipe_text(image="image: a/b"), [(": image: ", "path separator")]),
    ("image-backslash", recipe_text(image="image: 'a\\b'"), [(": image: ", "path separator")]),
    ("image-dotdot", recipe_text(image="image: a..b"), [(": image: ", "contains '..'")]),
    ("image-uppercase", recipe_text(image="image: Demo"), [(": image: ", "upper-case letters are not allowed")]),
    ("image-number", recipe_text(image="image: 12.5"), [(": image: ", "got float 12.5")]),
    ("image-too-long", recipe_text(image="image: " + "a" * 64), [(": image: ", "is not a valid image name")]),
    ("suite-bad", recipe_text(suite="suite: Bookworm"), [(": suite: ", "'Bookworm' is not valid; expected a Debian suite name")]),
    ("suite-empty", recipe_text(suite="suite: ''"), [(": suite: ", "'' is not valid")]),
    ("missing-overlay", recipe_text(overlays="overlays: [base, nope]"), [(": overlays[1]: ", "missing overlay folder")]),
    ("overlay-is-file", recipe_text(overlays="overlays: [a-file]"), [(": overlays[0]: ", "missing overlay folder")]),
    ("overlay-slash", recipe_text(overlays="overlays: [base/etc]"), [(": overlays[0]: ", "not a plain folder name")]),
    ("overlay-dotdot", recipe_text(overlays="overlays: ['..']"), [(": overlays[0]: ", "not a plain folder name")]),
    ("overlay-duplicate", recipe_text(overlays="overlays: [base, base]"), [(": overlays[1]: ", "listed twice")]),
    ("overlays-null", recipe_text(overlays="overlays:"), [(": overlays: ", "got an empty value")]),
    ("label-too-long", recipe_text(root_image="root_image:\n  label: a-very-long-label-x"),
     [(": root_image.label: ", "(19 characters) is not valid")]),
    ("label-space", recipe_text(root_image="root_image:\n  label: my root"), [(": root_image.label: ", "not valid")]),
    ("unknown-bootstrapper", recipe_text(extra="bootstrapper: cdebootstrap"),
     [(": bootstrapper: ", "unknown value 'cdebootstrap'; expected one of mmdebstrap, debootstrap")]),
    ("unknown-compression", recipe_text(initramfs="initramfs:\n  compression: bzip3"),
     [(": initramfs.compression: ", "unknown value 'bzip3'")]),
    ("unknown-modules", recipe_text(initramfs="initramfs:\n  modules: all"), [(": initramfs.modules: ", "unknown value 'all'")]),
    ("mirror-scheme", recipe_text(mirror="mirror: ftp://mirror.example/debian"),
     [(": mirror: ", "is not a valid mirror; expected a URI starting with http://")]),
    ("mirror-empty-host", recipe_text(mirror="mirror: 'http://'"), [(": mirror: ", "is not a valid mirror")]),
    ("copy-needs-mmdebstrap", recipe_text(mirror="mirror: copy:///srv/mirror", extra="bootstrapper: debootstrap"),
     [(": mirror: ", "copy:// mirrors need bootstrapper mmdebstrap")]),
    ("duplicate-key", recipe_text(extra="suite: trixie"), [(": suite: ", "duplicate key (lines 2 and 16)")]),
    ("missing-required", "description: nothing else\n", [
        (": image: ", "missing required key"), (": suite: ", "missing required key"),
        (": packages: ", "missing required key"), (": kernel_flavours: ", "missing required key"),
        (": source_date_epoch: ", "missing required key"),
    ]),
]


@pytest.mark.parametrize("text, expected", [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_recipe(tmp_path: Path, overlays: Path, apt: Path, text: str,
                    expected: list[tuple[str, str]]) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_recipe(path, overlays, apt)
    problems = info.value.problems
    assert problems
    for line in problems:
        assert line.startswith(f"{path}:"), line
        assert "\n" not in line
    for prefix, fragment in expected:
        assert any(line.startswith(f"{path}{prefix}") and fragment in line for line in problems), \
            f"no problem {prefix!r} ... {fragment!r} in:\n" + "\n".join(problems)
    assert str(info.value) == "\n".join(problems)


def test_all_problems_of_a_file_are_reported(tmp_path: Path, overlays: Path, apt: Path) -> None:
    text = recipe_text(
        drop=("suite",),
        image="image: Bad/Name",
        packages="packages: [vim, vim]",
        kernel_flavours="kernel_flavours: [arm64]",
        overlays="overlays: [nope]",
        root_image="root_image:\n  label: ''\n  headroom_mib: true\n  size: 1",
        initramfs="initramfs:\n  compression: none",
        source_date_epoch="source_date_epoch: '1700000000'",
        extra="colour: blue",
    )
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_recipe(path, overlays, apt)
    keys = [line[len(f"{path}: "):].split(":", 1)[0] for line in info.value.problems]
    assert sorted(keys) == sorted([
        "image", "suite", "packages[1]", "kernel_flavours[0]", "overlays[0]", "root_image.label",
        "root_image.headroom_mib", "root_image.size", "initramfs.compression", "source_date_epoch",
        "colour",
    ])
    assert len(info.value.problems) == 11


def test_missing_keys_reported_once(tmp_path: Path, overlays: Path, apt: Path) -> None:
    path = write(tmp_path, "description: nothing else\n")
    with pytest.raises(ConfigError) as info:
        load_recipe(path, overlays, apt)
    assert len(info.value.problems) == 5


def test_unreadable_file(tmp_path: Path, overlays: Path, apt: Path) -> None:
    path = tmp_path / "missing.yaml"
    with pytest.raises(ConfigError) as info:
        load_recipe(path, overlays, apt)
    assert info.value.problems == [f"{path}: (top level): cannot read file: No such file or directory"]
    path.write_bytes(b"image: \xff\n")
    with pytest.raises(ConfigError, match=r"\(top level\): cannot read file: not UTF-8"):
        load_recipe(path, overlays, apt)


def test_good_recipe(tmp_path: Path, overlays: Path, apt: Path) -> None:
    path = write(tmp_path, recipe_text(extra="bootstrapper: debootstrap"))
    r = load_recipe(path, overlays, apt)
    assert r == Recipe(
        path=path,
        image="demo-1.0",
        suite="bookworm",
        mirror="http://mirror.example/debian",  # trailing slash stripped
        bootstrapper="debootstrap",
        packages=("systemd", "open-iscsi", "linux-base"),
        kernel_flavours=("amd64", "rt-amd64"),
        overlays=("base",),
        root_image=RootImage(label="demo-root", headroom_percent=30, headroom_mib=256),
        initramfs=Initramfs(compression="xz", modules="netboot"),
        source_date_epoch=1700000000,
        description="A demo.",
    )
    assert r.bootstrap_identity() == {
        "suite": "bookworm",
        "mirror": "http://mirror.example/debian",
        "bootstrapper": "debootstrap",
        "packages": ["systemd", "open-iscsi", "linux-base"],
        "source_date_epoch": 1700000000,
    }
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.image = "other"  # type: ignore[misc]


def test_defaults_and_host_mirror(tmp_path: Path, overlays: Path, apt: Path) -> None:
    path = write(tmp_path, recipe_text(drop=("mirror", "overlays", "root_image", "initramfs", "description")))
    r = load_recipe(path, overlays, apt)
    assert r.mirror == "http://host-mirror.example/debian"
    assert r.bootstrapper == "mmdebstrap"
    assert r.overlays == ()
    assert r.root_image == RootImage("debian-root", 20, 128)
    assert r.initramfs == Initramfs("zstd", "most")
    assert r.description == ""
    # Partial nested sections keep the defaults of the keys left out.
    path = write(tmp_path, recipe_text(root_image="root_image:\n  label: x", initramfs="initramfs: {}"))
    r = load_recipe(path, overlays, apt)
    assert r.root_image == RootImage("x", 20, 128)
    assert r.initramfs == Initramfs("zstd", "most")


def test_no_host_mirror(tmp_path: Path, overlays: Path) -> None:
    empty_apt = tmp_path / "empty-apt"
    empty_apt.mkdir()
    path = write(tmp_path, recipe_text(drop=("mirror",)))
    with pytest.raises(ConfigError) as info:
        load_recipe(path, overlays, empty_apt)
    [problem] = info.value.problems
    assert problem.startswith(f"{path}: mirror: no mirror found in the host's apt sources")
    assert "set `mirror:`" in problem
    # An explicit mirror does not need the host's.
    assert load_recipe(write(tmp_path, recipe_text()), overlays, empty_apt).mirror == "http://mirror.example/debian"


def test_unusable_host_mirror(tmp_path: Path, overlays: Path) -> None:
    odd_apt = tmp_path / "odd-apt"
    odd_apt.mkdir()
    (odd_apt / "sources.list").write_text("deb mirror+file:///etc/apt/mirrors/debian.list bookworm main\n")
    path = write(tmp_path, recipe_text(drop=("mirror",)))
    with pytest.raises(ConfigError, match=r"mirror: the host's apt mirror 'mirror\+file:.*set `mirror:`"):
        load_recipe(path, overlays, odd_apt)


def test_digest(tmp_path: Path, overlays: Path, apt: Path) -> None:
    a = load_recipe(write(tmp_path, recipe_text(), "a.yaml"), overlays, apt)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # Same content written differently (flow vs block style, key order).
    other_text = recipe_text(packages="packages:\n  - systemd\n  - open-iscsi\n  - linux-base")
    other = elsewhere / "b.yaml"
    other.write_text("\n".join(reversed(other_text.strip().split("\n", 1))) + "\n")
    b = load_recipe(other, overlays, apt)
    assert a.path != b.path
    assert len(a.digest) == 64 and a.digest == b.digest
    c = load_recipe(write(tmp_path, recipe_text(packages="packages: [systemd, open-iscsi, linux-base, vim]"),
                          "c.yaml"), overlays, apt)
    assert c.digest != a.digest
    d = load_recipe(write(tmp_path, recipe_text(root_image="root_image:\n  headroom_mib: 1"), "d.yaml"),
                    overlays, apt)
    assert d.digest != a.digest


def test_load_recipes(tmp_path: Path, overlays: Path, apt: Path) -> None:
    write(tmp_path, recipe_text(image="image: zeta"), "1.yaml")
    write(tmp_path, recipe_text(image="image: alpha"), "2.yaml")
    write(tmp_path, "not a recipe", "notes.txt")
    recipes = load_recipes(tmp_path / "recipes", overlays, apt)
    assert [r.image for r in recipes] == ["alpha", "zeta"]


def test_load_recipes_duplicate_image(tmp_path: Path, overlays: Path, apt: Path) -> None:
    first = write(tmp_path, recipe_text(), "a.yaml")
    second = write(tmp_path, recipe_text(), "b.yaml")
    with pytest.raises(ConfigError) as info:
        load_recipes(tmp_path / "recipes", overlays, apt)
    [problem] = info.value.problems
    assert problem.startswith(f"{second}: image: 'demo-1.0' is already the image of {first}")


def test_load_recipes_collects_across_files(tmp_path: Path, overlays: Path, apt: Path) -> None:
    a = write(tmp_path, recipe_text(image="image: A"), "a.yaml")
    b = write(tmp_path, recipe_text(suite="suite: 1"), "b.yaml")
    c = write(tmp_path, recipe_text(), "c.yml")
    with pytest.raises(ConfigError) as info:
        load_recipes(tmp_path / "recipes", overlays, apt)
    problems = info.value.problems
    assert len(problems) == 3
    assert any(p.startswith(f"{a}: image: ") for p in problems)
    assert any(p.startswith(f"{b}: suite: ") for p in problems)
    assert any(p.startswith(f"{c}: ") and "*.yaml" in p for p in problems)


def test_load_recipes_empty_dir(tmp_path: Path, overlays: Path, apt: Path) -> None:
    empty = tmp_path / "recipes"
    empty.mkdir()
    with pytest.raises(ConfigError) as info:
        load_recipes(empty, overlays, apt)
    assert info.value.problems == [f"{empty}: no recipe files (*.yaml) found; add at least one"]
    with pytest.raises(ConfigError, match="does not exist"):
        load_recipes(tmp_path / "nowhere", overlays, apt)


def test_project_recipes_parse() -> None:
    recipes_dir = PROJECT / "recipes"
    if not sorted(recipes_dir.glob("*.yaml")):
        pytest.skip("no recipes/*.yaml in the project yet")
    recipes = load_recipes(recipes_dir, PROJECT / "overlays")  # the real /etc/apt
    assert recipes


# -- lock and snapshot mirrors ------------------------------------------------

def manifest_file(directory: Path, name: str, packages: object) -> Path:
    path = directory / name
    path.write_text(__import__("json").dumps({"format": 1, "packages": packages}))
    return path


def test_lock_from_manifests(tmp_path: Path, overlays: Path, apt: Path) -> None:
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    manifest_file(recipes, "a.manifest.json", {"libc6:amd64": "2.41-12", "systemd": "257.9-1"})
    manifest_file(recipes, "b.manifest.json", {"systemd": "257.9-1", "linux-image-6.12.57+deb13-cloud-amd64": "6.12.57-1"})
    path = write(tmp_path, recipe_text(lock="lock: [a.manifest.json, b.manifest.json]"))
    recipe = load_recipe(path, overlays, apt)
    assert recipe.locked_versions == {"libc6:amd64": "2.41-12", "systemd": "257.9-1",
                                      "linux-image-6.12.57+deb13-cloud-amd64": "6.12.57-1"}
    assert recipe.lock_files == ("a.manifest.json", "b.manifest.json")
    single = load_recipe(write(tmp_path, recipe_text(lock="lock: a.manifest.json"), "s.yaml"),
                         overlays, apt)
    assert single.locked_versions == {"libc6:amd64": "2.41-12", "systemd": "257.9-1"}
    # The lock is part of what the bootstrap depends on.
    unlocked = load_recipe(write(tmp_path, recipe_text(), "u.yaml"), overlays, apt)
    assert "lock" not in unlocked.bootstrap_identity()
    assert single.bootstrap_identity()["lock"] != recipe.bootstrap_identity()["lock"]


@pytest.mark.parametrize("lock, files, expected", [
    ("lock: missing.json", {}, ": lock: {dir}/missing.json: no such file"),
    ("lock: bad.json", {"bad.json": "{not json"}, ": lock: {dir}/bad.json: not JSON (line 1"),
    ("lock: empty.json", {"empty.json": "{}"}, ": lock: {dir}/empty.json: has no 'packages' mapping"),
    ("lock: odd.json", {"odd.json": '{"packages": {"vim": "not a version"}}'},
     ": lock: {dir}/odd.json: packages.vim: expected a Debian package name and version"),
    ("lock: [x.json, y.json]", {"x.json": '{"packages": {"vim": "2:9.1-1"}}',
                                "y.json": '{"packages": {"vim": "2:9.0-1"}}'},
     ": lock[1]: {dir}/y.json: package 'vim' is '2:9.0-1', but '2:9.1-1' in {dir}/x.json"),
    ("lock: 7", {}, ": lock: expected a manifest of an earlier build"),
    ("lock: []", {}, ": lock: expected a manifest of an earlier build"),
])
def test_bad_lock(tmp_path: Path, overlays: Path, apt: Path, lock: str, files: dict[str, str],
                  expected: str) -> None:
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    for name, text in files.items():
        (recipes / name).write_text(text)
    path = write(tmp_path, recipe_text(lock=lock))
    with pytest.raises(ConfigError) as info:
        load_recipe(path, overlays, apt)
    wanted = f"{path}{expected.format(dir=recipes)}"
    assert any(p.startswith(wanted) for p in info.value.problems), info.value.problems


def test_lock_needs_mmdebstrap(tmp_path: Path, overlays: Path, apt: Path) -> None:
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    manifest_file(recipes, "a.json", {"vim": "2:9.1-1"})
    path = write(tmp_path, recipe_text(lock="lock: a.json", bootstrapper="bootstrapper: debootstrap"))
    with pytest.raises(ConfigError, match=r": lock: needs bootstrapper mmdebstrap"):
        load_recipe(path, overlays, apt)


def test_mirror_check_valid_until(tmp_path: Path, overlays: Path, apt: Path) -> None:
    path = write(tmp_path, recipe_text(extra="mirror_check_valid_until: false"))
    recipe = load_recipe(path, overlays, apt)
    assert recipe.mirror_check_valid_until is False
    assert recipe.bootstrap_identity()["mirror_check_valid_until"] is False
    assert load_recipe(write(tmp_path, recipe_text(), "b.yaml"), overlays, apt).mirror_check_valid_until
    bad = write(tmp_path, recipe_text(extra="mirror_check_valid_until: no-thanks"), "c.yaml")
    with pytest.raises(ConfigError, match=r": mirror_check_valid_until: expected true or false"):
        load_recipe(bad, overlays, apt)


def test_triple_digest_leaves_out_where_packages_come_from(tmp_path: Path, overlays: Path,
                                                           apt: Path) -> None:
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    manifest_file(recipes, "a.json", {"vim": "2:9.1-1"})
    base = load_recipe(write(tmp_path, recipe_text(), "a.yaml"), overlays, apt)
    # (case, recipe text, whether the triple's bytes may stay the same)
    cases = [
        ("mirror", recipe_text(mirror="mirror: http://snapshot.example/archive/debian/20250101T000000Z"), True),
        ("valid-until", recipe_text(extra="mirror_check_valid_until: false"), True),
        ("lock", recipe_text(lock="lock: a.json"), True),
        ("flavours", recipe_text(kernel_flavours="kernel_flavours: [amd64]"), True),
        ("description", recipe_text(description="description: Another text."), True),
        ("packages", recipe_text(packages="packages: [systemd, open-iscsi]"), False),
        ("epoch", recipe_text(source_date_epoch="source_date_epoch: 1700000001"), False),
        ("label", recipe_text(root_image="root_image:\n  label: other"), False),
        ("suite", recipe_text(suite="suite: trixie"), False),
    ]
    for name, text, same in cases:
        other = load_recipe(write(tmp_path, text, f"{name}.yaml"), overlays, apt)
        assert (other.triple_digest == base.triple_digest) is same, name
        if same:
            assert other.digest != base.digest, name
