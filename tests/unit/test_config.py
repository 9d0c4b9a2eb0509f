"""pipeline/config.py: one reading and structure policy for every configuration file.

Each bad input of BAD goes through every loader it applies to (recipe,
inventory, CHAP secrets, a recipe's lock manifest) and must give the same
kind of answer: a ConfigError whose problems are single printable lines
naming the file, one of them saying what the row expects; never another
exception.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import pytest

from pipeline import config
from pipeline.build.recipe import Initramfs, Recipe, RootImage, load_recipe
from pipeline.errors import ConfigError
from pipeline.fleet import chap
from pipeline.fleet.inventory import load_inventory

MAC = "52:54:00:12:34:01"
RECIPE = ("image: demo\nsuite: trixie\nmirror: http://mirror.example/debian\npackages: [systemd]\n"
          "kernel_flavours: [amd64]\nsource_date_epoch: 0\n")
RECIPES = {"trixie": Recipe(path=Path("/recipes/trixie.yaml"), image="trixie", suite="trixie",
                            mirror="http://mirror.example/debian", bootstrapper="mmdebstrap",
                            packages=("systemd",), kernel_flavours=("amd64",), overlays=(),
                            root_image=RootImage(), initramfs=Initramfs(), source_date_epoch=0,
                            description="")}
SITE = "site: {authority: 2025-01.org.example, portals: [192.0.2.1], tftp_root: t, store: s}\n"

# Nine levels of ten aliases each: 10**9 values if expanded.
ALIAS_BOMB = "a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]\n" for i in range(1, 9))
MERGED_MAC = (f"machines:\n  {MAC}: {{name: a, image: trixie}}\n"
              f"  <<: {{{MAC}: {{name: b, image: trixie}}}}\n")

LOADERS = ("recipe", "inventory", "secrets", "lock")
YAML_LOADERS = LOADERS[:3]
DUP_MERGE = "duplicate key (written on line 2, and merged in from line 3 by `<<` on line 3)"

# (id, YAML text or bytes, JSON text or bytes (None: the row is YAML only),
#  {loader: what one problem must contain}).  A text of "<fifo>", "<dir>"
# or "/dev/..." is that kind of path instead of a file with that content.
BAD: list[tuple[str, str | bytes, str | bytes | None, dict[str, str]]] = [
    ("duplicate-key", "a: 1\na: 2\n", '{"a": 1, "a": 2}',
     {"yaml": ": a: duplicate key (lines 1 and 2); keep only one",
      "lock": ": a: duplicate key; keep only one"}),
    ("duplicate-mac-through-merge", MERGED_MAC, None,
     {"yaml": f": machines.{MAC}: {DUP_MERGE}", "inventory": f": machines[{MAC}]: {DUP_MERGE}"}),
    ("duplicate-secret-mac", f"{MAC}: abcdefghijklmnop\n'{MAC}': abcdefghijklmnop\n", None,
     {"yaml": f": {MAC}: duplicate key (lines 1 and 2)"}),
    ("alias-bomb", ALIAS_BOMB, None,
     {"yaml": f"more than {config.MAX_VALUES} values, counting each alias"}),
    ("alias-cycle", "a: &a [1, *a]\n", None, {"yaml": ":1:11: alias *a is inside the value it names"}),
    ("undefined-alias", "a: *nothing\n", None, {"yaml": ":1:4: alias *nothing names no anchor"}),
    ("deep-10000", "[" * 10000 + "]" * 10000, "[" * 10000 + "]" * 10000,
     {"yaml": f":1:{config.MAX_DEPTH + 1}: nested more than {config.MAX_DEPTH} levels deep",
      "lock": f"nested more than {config.MAX_DEPTH} levels deep"}),
    ("deep-100", "[" * 100 + "]" * 100, "[" * 100 + "]" * 100,
     {"yaml": f"nested more than {config.MAX_DEPTH} levels deep",
      "lock": f"nested more than {config.MAX_DEPTH} levels deep"}),
    ("dev-zero", "/dev/zero", "/dev/zero",
     {"yaml": ": (top level): cannot read file: it is a character device, not a regular file",
      "lock": ": cannot read it (it is a character device, not a regular file)"}),
    ("fifo", "<fifo>", "<fifo>",
     {"yaml": ": (top level): cannot read file: it is a FIFO, not a regular file",
      "lock": ": cannot read it (it is a FIFO, not a regular file)"}),
    ("folder", "<dir>", "<dir>", {"yaml": "it is a folder, not a regular file",
                                  "lock": "it is a folder, not a regular file"}),
    ("not-utf8", b"a: \xff\n", b'{"a": "\xff"}',
     {"yaml": ": (top level): cannot read file: not UTF-8 text (invalid start byte at byte 3)",
      "lock": ": cannot read it (not UTF-8 text (invalid start byte at byte 7))"}),
    ("too-large", b"#" * (config.MAX_BYTES + 1), b" " * (config.MAX_BYTES + 1),
     {"yaml": f"cannot read file: it has {config.MAX_BYTES + 1} bytes, more than the "
              f"{config.MAX_BYTES}", "lock": f"it has {config.MAX_BYTES + 1} bytes"}),
    ("syntax-error", "a: [1, 2\nb: 3\n", '{"packages": [1, 2\n',
     {"yaml": ":2:2: YAML syntax error: expected ',' or ']'", "lock": ": not JSON (line 2, column 1"}),
    ("two-documents", "a: 1\n---\nb: 2\n", None, {"yaml": ":2:1: expected one YAML document"}),
    ("raw-control-character", "a: b\x01c\n", '{"a": "b\x01c"}',
     {"yaml": ":1:5: YAML syntax error: character U+0001 is not allowed",
      "lock": ": not JSON (line 1, column 9: Invalid control character"}),
    ("escaped-control-characters-in-key", '"bad\\x01key\\nline": 1\n',
     '{"packages": {"bad\\u0001key\\nline": "1.0"}}',
     {"recipe": ": bad\\x01key\\nline: unknown key", "inventory": ": bad\\x01key\\nline: unknown key",
      "secrets": ": bad\\x01key\\nline: not a MAC address",
      "lock": ": packages.bad\\x01key\\nline: expected a Debian package name"}),
    ("bad-date", "a: 2025-13-01\n", None, {"yaml": ":1:4: YAML syntax error: not a valid timestamp"}),
    ("python-tag", "a: !!python/object:os.system x\n", None,
     {"yaml": ":1:4: YAML syntax error: could not determine a constructor"}),
]


def make(tmp_path: Path, name: str, content: str | bytes) -> Path:
    if content == "<fifo>":
        path = tmp_path / name
        os.mkfifo(path)
        return path
    if content == "<dir>":
        (tmp_path / name).mkdir()
        return tmp_path / name
    if isinstance(content, str) and content.startswith("/dev/"):
        return Path(content)
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


def run(loader: str, path: Path, tmp_path: Path) -> tuple[Callable[[], object], str]:
    """The call that loads ``path`` with ``loader``, and how its lines start."""
    if loader == "recipe":
        return lambda: load_recipe(path, tmp_path), f"{path}"
    if loader == "inventory":
        return lambda: load_inventory(path, RECIPES), f"{path}"
    if loader == "secrets":
        return lambda: chap.load(path), f"{path}"
    recipe = tmp_path / "locked.yaml"
    recipe.write_text(RECIPE + f"lock: {path}\n")
    return lambda: load_recipe(recipe, tmp_path), f"{recipe}: lock: {path}"


CASES = [(row[0], loader) for row in BAD for loader in LOADERS
         if loader != "lock" or row[2] is not None]


@pytest.mark.parametrize("row_id, loader", CASES, ids=[f"{r}-{l}" for r, l in CASES])
def test_bad_input_is_one_line_per_problem_in_every_loader(tmp_path: Path, row_id: str,
                                                           loader: str) -> None:
    _id, yaml_input, json_input, expect = next(row for row in BAD if row[0] == row_id)
    content = json_input if loader == "lock" else yaml_input
    assert content is not None
    path = make(tmp_path, "input.json" if loader == "lock" else "input.yaml", content)
    call, start = run(loader, path, tmp_path)
    with pytest.raises(ConfigError) as info:
        call()
    problems = info.value.problems
    assert problems
    for line in problems:
        assert line.startswith(start) and line.isprintable(), line
    fragment = expect.get(loader) or expect["yaml"]
    wanted = (start + fragment) if fragment.startswith((":", " ")) else fragment
    assert any(wanted in line for line in problems), (wanted, problems)
    assert str(info.value) == "\n".join(problems)


def test_alias_bomb_is_refused_before_it_is_built() -> None:
    # The bound is on values counted as the events arrive: the parse stops at
    # the alias that crosses it (line 6: 10**5 values each), long before 10**9.
    data, [problem] = config.parse_yaml(ALIAS_BOMB)
    assert data is None and problem.line == 6 and "more than" in problem.what


@pytest.mark.parametrize("text, data", [
    # Aliases and merge keys work when no key arrives twice.
    (f"machines:\n  {MAC}: {{<<: &trixie {{image: trixie}}, name: a}}\n"
     "  52:54:00:12:34:02: {<<: *trixie, name: b}\n",
     {"machines": {MAC: {"image": "trixie", "name": "a"},
                   "52:54:00:12:34:02": {"image": "trixie", "name": "b"}}}),
    ("a: &m {x: 1}\nb: &n {y: 2}\nc: {<<: [*m, *n], z: 3}\n",
     {"a": {"x": 1}, "b": {"y": 2}, "c": {"x": 1, "y": 2, "z": 3}}),
    # Keys stay text: no base-60 integers, no booleans, a quoted << is a key.
    ("10:20:30:40:50:02: 1\nyes: 2\n'<<': 3\n", {"10:20:30:40:50:02": 1, "yes": 2, "<<": 3}),
    ("", None),
])
def test_good_yaml(text: str, data: object) -> None:
    assert config.parse_yaml(text) == (data, [])


@pytest.mark.parametrize("text, problem", [
    ("a: {<<: 3}\n", config.Problem("expected a mapping or a list of mappings to merge, got int 3",
                                    ("a", "<<"))),
    ("a: &m {x: 1}\nb: {<<: [*m, *m]}\n", config.Problem(
        "duplicate key (merged in from line 1 by `<<` on line 2, and merged in from line 1 by "
        "`<<` on line 2); keep only one", ("b", "x"))),
    ("? [a]\n: 1\n", config.Problem("expected a plain key, got a list", (), 1, 3)),
    ("a: &x 1\nb: &x 2\n", config.Problem("anchor &x is defined twice; expected unique anchor names",
                                          (), 2, 4)),
    ("!!set {a, b}\n", config.Problem("YAML tag tag:yaml.org,2002:set is not supported here; "
                                      "expected a plain mapping", (), 1, 1)),
])
def test_bad_yaml_structure(text: str, problem: config.Problem) -> None:
    assert config.parse_yaml(text) == (None, [problem])


def test_key_paths_and_escaping() -> None:
    assert config.key_path(()) == config.TOP
    assert config.key_path(("packages", 0)) == "packages[0]"
    assert config.key_path(("machines", MAC, "name"), keyed=("machines",)) == f"machines[{MAC}].name"
    assert config.problem_line("f\n.yaml", "a\tb", "got '\u202e'") == "f\\n.yaml: a\\tb: got '\\u202e'"


def test_missing_secrets_file_is_empty_but_other_loaders_say_so(tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    assert chap.load(missing) == {}
    with pytest.raises(ConfigError) as info:
        load_inventory(missing, RECIPES)
    assert info.value.problems == [f"{missing}: (top level): cannot read file: No such file or directory"]
