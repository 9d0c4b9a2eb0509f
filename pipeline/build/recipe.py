"""Recipes: one YAML file in ``recipes/`` per image triple.

Each file is parsed once into frozen dataclasses.  Validation collects every
problem of a file before raising a single ConfigError, one line per problem:
``<file>: <key path>: <what is wrong / what was expected>``.  List items are
addressed with zero-based indexes (``packages[0]`` is the first package); the
offending value is quoted in the message so the index is never the only clue.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.config import (TOP, Checker, Unreadable, escape, got, join, key_path, load,
                             problem_line)
from pipeline.errors import ConfigError
from pipeline.build.mirror import host_mirror

KNOWN_FLAVOURS = ("amd64", "cloud-amd64", "rt-amd64")
BOOTSTRAPPERS = ("mmdebstrap", "debootstrap", "mkosi")
# initramfs-tools COMPRESS values.  "none" is left out on purpose: older
# initramfs-tools releases do not accept it.
COMPRESSIONS = ("zstd", "gzip", "xz", "lz4", "lzma", "lzop")
MODULES_POLICIES = ("most", "dep", "netboot", "list")
MIRROR_SCHEMES = ("http://", "https://", "file://", "copy://")

DEFAULT_BOOTSTRAPPER = "mmdebstrap"
DEFAULT_LABEL = "debian-root"
DEFAULT_HEADROOM_PERCENT = 20
DEFAULT_HEADROOM_MIB = 128
DEFAULT_COMPRESSION = "zstd"
DEFAULT_MODULES = "most"
MAX_HEADROOM_PERCENT = 1000

# Always used with fullmatch(): "$" would also accept a trailing newline.
_IMAGE_RE = re.compile(r"[a-z0-9][a-z0-9.+-]{0,62}")
_SUITE_RE = re.compile(r"[a-z][a-z0-9-]*")
_PACKAGE_RE = re.compile(r"[a-z0-9][a-z0-9+.-]+")
_KERNEL_RE = re.compile(r"linux-(image|headers)-.*")
_LABEL_RE = re.compile(r"[A-Za-z0-9_-]{1,16}")
_MIRROR_RE = re.compile(r"(https?|file|copy)://\S+")

_TOP_KEYS = (
    "image", "suite", "mirror", "mirror_check_valid_until", "bootstrapper", "packages",
    "kernel_flavours", "overlays", "root_image", "initramfs", "source_date_epoch",
    "description", "lock",
)
_REQUIRED = ("image", "suite", "packages", "kernel_flavours", "source_date_epoch")
_ROOT_IMAGE_KEYS = ("label", "headroom_percent", "headroom_mib")
_INITRAMFS_KEYS = ("compression", "modules")

# What each key expects, reused by "missing" and "wrong value" messages.
_EXPECT = {
    "image": "an image name: 1-63 characters of a-z 0-9 . + -, "
             "starting with a letter or digit",
    "suite": "a Debian suite name such as bookworm or trixie (a-z 0-9 -)",
    "mirror": "a URI starting with " + ", ".join(MIRROR_SCHEMES),
    "bootstrapper": "one of " + ", ".join(BOOTSTRAPPERS),
    "packages": "a non-empty list of Debian package names",
    "package": "a Debian package name (a-z 0-9 + . -, at least 2 characters)",
    "kernel_flavours": "a non-empty list of kernel flavours out of "
                       + ", ".join(KNOWN_FLAVOURS),
    "overlays": "a list of folder names under the overlays directory",
    "root_image": "a mapping with keys " + ", ".join(_ROOT_IMAGE_KEYS),
    "initramfs": "a mapping with keys " + ", ".join(_INITRAMFS_KEYS),
    "label": "an ext4 volume label: 1-16 characters of A-Z a-z 0-9 _ -",
    "headroom_percent": f"an integer from 0 to {MAX_HEADROOM_PERCENT}",
    "headroom_mib": "a non-negative integer",
    "source_date_epoch": "a non-negative integer (seconds since 1970-01-01 UTC)",
    "description": "a string",
    "mirror_check_valid_until": "true or false (false for a snapshot mirror, whose "
                                "Release files have expired)",
    "lock": "a manifest of an earlier build (a .manifest.json file, relative to the recipe), "
            "or a list of them",
}
_VERSION_RE = re.compile(r"[0-9][A-Za-z0-9.+~:-]*")


@dataclass(frozen=True)
class RootImage:
    label: str = DEFAULT_LABEL
    headroom_percent: int = DEFAULT_HEADROOM_PERCENT
    headroom_mib: int = DEFAULT_HEADROOM_MIB


@dataclass(frozen=True)
class Initramfs:
    compression: str = DEFAULT_COMPRESSION
    modules: str = DEFAULT_MODULES


@dataclass(frozen=True)
class Recipe:
    path: Path
    image: str
    suite: str
    mirror: str  # never ends in "/"
    bootstrapper: str
    packages: tuple[str, ...]
    kernel_flavours: tuple[str, ...]
    overlays: tuple[str, ...]  # folder names, in the order they are applied
    root_image: RootImage
    initramfs: Initramfs
    source_date_epoch: int
    description: str
    mirror_check_valid_until: bool = True
    # (package, version) pairs from the lock's manifests, sorted; empty: no lock.
    lock: tuple[tuple[str, str], ...] = ()
    lock_files: tuple[str, ...] = ()   # as written in the recipe

    @property
    def digest(self) -> str:
        """sha256 of every field except ``path``: same content, same digest.

        Overlay *contents* are not part of it, only their names.
        """
        return _digest(self, ("path",))

    @property
    def triple_digest(self) -> str:
        """sha256 of what shapes the bytes of a triple, and nothing else.

        Left out: where packages come from and how their versions are held
        (``mirror``, ``mirror_check_valid_until``, ``lock``: the manifest lists
        the versions that went in), which other triples the recipe makes
        (``kernel_flavours``: each triple is one flavour, and its manifest
        names it), the description and the file's path.  So a locked
        rebuild from a snapshot mirror, or one flavour built alone, can be
        the same bytes as the build it repeats.  The root's UUID and hash seed
        are derived from it.
        """
        return _digest(self, ("path", "mirror", "mirror_check_valid_until", "lock",
                              "lock_files", "kernel_flavours", "description"))

    @property
    def locked_versions(self) -> dict[str, str]:
        return dict(self.lock)

    def bootstrap_identity(self) -> dict[str, Any]:
        """The fields that determine the bootstrap output (JSON-ready)."""
        identity: dict[str, Any] = {
            "suite": self.suite,
            "mirror": self.mirror,
            "bootstrapper": self.bootstrapper,
            "packages": list(self.packages),
            "source_date_epoch": self.source_date_epoch,
        }
        if not self.mirror_check_valid_until:
            identity["mirror_check_valid_until"] = False
        if self.lock:
            identity["lock"] = hashlib.sha256(json.dumps(self.lock).encode()).hexdigest()
        return identity


def _digest(recipe: Recipe, leave_out: tuple[str, ...]) -> str:
    data = dataclasses.asdict(recipe)
    for name in leave_out:
        del data[name]
    blob = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def load_recipe(
    path: Path, overlays_dir: Path, apt_dir: Path = Path("/etc/apt")
) -> Recipe:
    """Read and validate one recipe; ConfigError lists all its problems."""
    check = Checker(path)
    data = check.read()
    recipe = None if check.problems else _build(path, data, overlays_dir, apt_dir, check)
    if recipe is None:  # _build returns None only with problems
        raise ConfigError(check.problems)
    return recipe


def load_recipes(
    recipes_dir: Path, overlays_dir: Path, apt_dir: Path = Path("/etc/apt")
) -> list[Recipe]:
    """Load every ``*.yaml`` in recipes_dir; one ConfigError for all problems.

    Returns the recipes sorted by image name.
    """
    problems: list[str] = []
    if not recipes_dir.is_dir():
        raise ConfigError([escape(f"{recipes_dir}: recipe directory does not exist")])
    files = sorted(recipes_dir.glob("*.yaml"), key=lambda p: p.name)
    # A ".yml" recipe would otherwise be silently skipped.
    for stray in sorted(recipes_dir.glob("*.yml"), key=lambda p: p.name):
        problems.append(problem_line(stray, TOP, "recipe files must be named *.yaml; rename it"))
    if not files:
        problems.append(escape(f"{recipes_dir}: no recipe files (*.yaml) found; add at least one"))

    by_image: dict[str, Recipe] = {}
    for path in files:
        try:
            recipe = load_recipe(path, overlays_dir, apt_dir)
        except ConfigError as exc:
            problems.extend(exc.problems)
            continue
        first = by_image.setdefault(recipe.image, recipe)
        if first is not recipe:
            problems.append(problem_line(
                path, "image", f"{recipe.image!r} is already the image of {first.path}; "
                               "image names must be unique"))
    if problems:
        raise ConfigError(problems)
    return sorted(by_image.values(), key=lambda r: r.image)


def _build(
    path: Path, data: Any, overlays_dir: Path, apt_dir: Path, check: Checker
) -> Recipe | None:
    if not isinstance(data, dict):
        expect = f"expected a mapping with at least the keys {', '.join(_REQUIRED)}"
        check.add(TOP, f"the file is empty; {expect}" if data is None
                  else f"{expect}, {got(data)}")
        return None
    check.unknown_keys("", data, _TOP_KEYS)
    check.required("", data, _REQUIRED, _EXPECT)

    # Missing required keys were reported above; their fields stay placeholders.
    image = _image(check, data["image"]) if "image" in data else ""
    suite = _suite(check, data["suite"]) if "suite" in data else ""
    bootstrapper = check.choice(
        "bootstrapper", data.get("bootstrapper", DEFAULT_BOOTSTRAPPER), BOOTSTRAPPERS)
    mirror = _mirror(check, data, apt_dir, bootstrapper)
    packages = _packages(check, data["packages"]) if "packages" in data else []
    flavours = _flavours(check, data["kernel_flavours"]) if "kernel_flavours" in data else []
    overlays = _overlays(check, data.get("overlays", []), overlays_dir)
    root_image = _root_image(check, data.get("root_image", {}))
    initramfs = _initramfs(check, data.get("initramfs", {}))
    epoch = 0
    if "source_date_epoch" in data:
        epoch = check.integer("source_date_epoch", data["source_date_epoch"],
                              _EXPECT["source_date_epoch"], 0)
    description = check.string(
        "description", data.get("description", ""), _EXPECT["description"]) or ""
    valid_until = check.boolean("mirror_check_valid_until", data.get("mirror_check_valid_until", True),
                                _EXPECT["mirror_check_valid_until"], True)
    lock_files, lock = _lock(check, data.get("lock"), path.parent, bootstrapper)

    if check.problems:
        return None
    return Recipe(
        path=path, image=image, suite=suite, mirror=mirror, bootstrapper=bootstrapper,
        packages=tuple(packages), kernel_flavours=tuple(flavours), overlays=tuple(overlays),
        root_image=root_image, initramfs=initramfs, source_date_epoch=epoch,
        description=description, mirror_check_valid_until=valid_until,
        lock=lock, lock_files=lock_files,
    )


def _suite(check: Checker, value: Any) -> str:
    suite = check.string("suite", value, _EXPECT["suite"])
    if suite is None:
        return ""
    check.valid("suite", suite, _SUITE_RE.fullmatch(suite) is not None, _EXPECT["suite"])
    return suite


def _packages(check: Checker, value: Any) -> list[str]:
    return [
        name for key, name in check.name_list("packages", value, _EXPECT["packages"], True)
        if check.valid(key, name, _PACKAGE_RE.fullmatch(name) is not None, _EXPECT["package"])
        # Each flavour's kernel is installed by its own step into a copy of
        # the shared base: a kernel in the base would end up in every triple.
        and check.valid(key, name, not _KERNEL_RE.fullmatch(name),
                        "no kernel package (kernels come from kernel_flavours)")
    ]


def _flavours(check: Checker, value: Any) -> list[str]:
    return [
        name for key, name in check.name_list(
            "kernel_flavours", value, _EXPECT["kernel_flavours"], True)
        if check.valid(key, name, name in KNOWN_FLAVOURS, "one of " + ", ".join(KNOWN_FLAVOURS))
    ]


def _root_image(check: Checker, value: Any) -> RootImage:
    section = check.mapping("root_image", value, _ROOT_IMAGE_KEYS, _EXPECT["root_image"])
    label = check.string("root_image.label", section.get("label", DEFAULT_LABEL),
                         _EXPECT["label"])
    if label is not None and not _LABEL_RE.fullmatch(label):
        check.add("root_image.label",
                  f"{label!r} ({len(label)} characters) is not valid; expected {_EXPECT['label']}")
    return RootImage(
        label=label or "",
        headroom_percent=check.integer(
            "root_image.headroom_percent",
            section.get("headroom_percent", DEFAULT_HEADROOM_PERCENT),
            _EXPECT["headroom_percent"], 0, MAX_HEADROOM_PERCENT),
        headroom_mib=check.integer(
            "root_image.headroom_mib", section.get("headroom_mib", DEFAULT_HEADROOM_MIB),
            _EXPECT["headroom_mib"], 0),
    )


def _initramfs(check: Checker, value: Any) -> Initramfs:
    section = check.mapping("initramfs", value, _INITRAMFS_KEYS, _EXPECT["initramfs"])
    return Initramfs(
        compression=check.choice(
            "initramfs.compression", section.get("compression", DEFAULT_COMPRESSION),
            COMPRESSIONS),
        modules=check.choice(
            "initramfs.modules", section.get("modules", DEFAULT_MODULES), MODULES_POLICIES),
    )


def _image(check: Checker, value: Any) -> str:
    name = check.string("image", value, _EXPECT["image"])
    if name is None:
        return ""
    # The image name becomes part of file names, hence the specific messages.
    if "/" in name or "\\" in name:
        check.add("image", f"{name!r} contains a path separator; expected {_EXPECT['image']}")
    elif ".." in name:
        check.add("image", f"{name!r} contains '..'; expected {_EXPECT['image']}")
    elif not _IMAGE_RE.fullmatch(name):
        hint = " (upper-case letters are not allowed)" if name != name.lower() else ""
        check.add("image", f"{name!r} is not a valid image name{hint}; expected {_EXPECT['image']}")
    return name


def _mirror(check: Checker, data: dict[Any, Any], apt_dir: Path, bootstrapper: str) -> str:
    if "mirror" in data:
        given = check.string("mirror", data["mirror"], _EXPECT["mirror"])
        if given is None:
            return ""
        bad = f"{given!r} is not a valid mirror; expected {_EXPECT['mirror']}"
    else:
        given = host_mirror(apt_dir)
        if given is None:
            check.add("mirror", f"no mirror found in the host's apt sources ({apt_dir}); "
                                "set `mirror:` in the recipe, e.g. http://<mirror host>/debian")
            return ""
        bad = (f"the host's apt mirror {given!r} (from {apt_dir}) is not usable, expected "
               f"{_EXPECT['mirror']}; set `mirror:` in the recipe")
    mirror = given.rstrip("/")
    if not _MIRROR_RE.fullmatch(mirror):
        check.add("mirror", bad)
    elif mirror.startswith("copy://") and bootstrapper != "mmdebstrap":
        # debootstrap fetches by itself and knows only http(s)/ftp/file/ssh.
        check.add("mirror", f"copy:// mirrors need bootstrapper mmdebstrap, not {bootstrapper}")
    return mirror


def _overlays(check: Checker, value: Any, overlays_dir: Path) -> list[str]:
    names: list[str] = []
    for key, name in check.name_list("overlays", value, _EXPECT["overlays"], required=False):
        if not name or "/" in name or "\\" in name or ".." in name or name == ".":
            check.add(key, f"{name!r} is not a plain folder name (no '/', '\\', '..'); "
                           f"expected a folder directly under {overlays_dir}")
        elif not (overlays_dir / name).is_dir():
            check.add(key, f"missing overlay folder {overlays_dir / name}")
        else:
            names.append(name)
    return names


def _lock(check: Checker, value: Any, recipe_dir: Path,
          bootstrapper: str) -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
    """The lock's files and the (package, version) pairs they hold.

    A lock is one or more manifests of earlier builds (one per flavour, so
    that every flavour's kernel is in it); their package lists are merged,
    and a package they disagree on is an error.
    """
    if value is None:
        return (), ()
    if bootstrapper not in ("mmdebstrap", "mkosi"):
        check.add("lock", f"needs bootstrapper mmdebstrap or mkosi (debootstrap cannot hold "
                          f"package versions), not {bootstrapper}")
        return (), ()
    if isinstance(value, str):
        items = [("lock", value)]
    else:  # name_list reports anything but a non-empty list of strings
        items = check.name_list("lock", value, _EXPECT["lock"], True)
    merged: dict[str, tuple[str, str]] = {}
    for key, name in items:
        if not name:
            check.add(key, f"expected {_EXPECT['lock']}, got an empty string")
            continue
        lock_path = (recipe_dir / name) if not Path(name).is_absolute() else Path(name)
        packages = _lock_packages(check, key, lock_path)
        for package, version in packages.items():
            first = merged.setdefault(package, (version, str(lock_path)))
            if first[0] != version:
                check.add(key, f"{lock_path}: package {package!r} is {version!r}, but "
                               f"{first[0]!r} in {first[1]}; a lock must agree on every package")
    return (tuple(name for _key, name in items),
            tuple(sorted((package, version) for package, (version, _f) in merged.items())))


def _lock_packages(check: Checker, key: str, path: Path) -> dict[str, str]:
    """The packages of one lock manifest; its problems go to the recipe's ``key``."""
    expect = _EXPECT["lock"]
    try:
        data, problems = load(path, "json")
    except Unreadable as exc:
        check.add(key, f"{path}: no such file; expected {expect}" if exc.missing
                  else f"{path}: cannot read it ({exc}); expected {expect}")
        return {}
    for problem in problems:
        if problem.path:
            check.add(key, f"{path}: {key_path(problem.path)}: {problem.what}")
        else:
            check.add(key, f"{path}: {problem.what}; expected {expect}")
    if problems:
        return {}
    packages = data.get("packages") if isinstance(data, dict) else None
    if not isinstance(packages, dict) or not packages:
        check.add(key, f"{path}: has no 'packages' mapping of package names to versions; "
                       f"expected {expect}")
        return {}
    good = {}
    for package, version in packages.items():
        name = package.split(":", 1)[0]
        if not _PACKAGE_RE.fullmatch(name) or not isinstance(version, str) \
                or not _VERSION_RE.fullmatch(version):
            check.add(key, f"{path}: {join('packages', package)}: expected a Debian package name "
                           f"and version, got {version!r}")
            continue
        good[package] = version
    return good
