"""The one loader and checker of configuration files.

Recipes, the site inventory, the CHAP secrets file (YAML) and the lock
manifests a recipe names (JSON) are all read here, with one policy:

- Reading: only a regular file (not a FIFO, a device or a folder: those
  could block or never end) of at most MAX_BYTES, decoded as UTF-8.
- Structure: the text becomes plain data (dict, list, str, int, float,
  bool, None, dates); mapping keys stay the text as written (YAML 1.1 would
  read the key 52:54:00:12:34:01 as a base-60 integer).  A key that arrives
  twice, written twice or brought in again by a merge key (``<<``), is a
  problem with its key path, never silently dropped.  Anchors, aliases and
  merge keys are allowed (they are standard YAML and harmless once bounded),
  but every alias counts as often as it is used: more than MAX_VALUES
  values after expansion ("billion laughs") is one problem, found while the
  events arrive and without expanding anything (aliases share one object).
  A value that contains an alias to itself is refused: data is never cyclic.  Nesting deeper than MAX_DEPTH is one problem,
  never a RecursionError.  The YAML text is turned into data event by event
  (not by PyYAML's recursive composer), so neither depth nor aliases can
  make it run long: PyYAML's pure-Python scanner takes 4-7 s for a
  MAX_BYTES file, milliseconds for a real one.  (Its C parser would be
  faster, but its messages and corner cases differ; one parser everywhere.)
- Messages: one line per problem, ``<file>: <key path>: <what was expected>``
  (``<file>:<line>:<column>: ...`` for a YAML syntax error), with control
  characters escaped.  :class:`Checker` collects all problems of a file.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml
import yaml.reader

from pipeline.errors import ConfigError

TOP = "(top level)"

# A recipe is about 1 KiB, an inventory of 10 000 machines about 500 KiB, a
# manifest (about 200 packages) 7 KiB: 1 MiB leaves room and bounds the time.
MAX_BYTES = 1 << 20
# Recipes and inventories nest three levels deep, manifests four.
MAX_DEPTH = 32
# Values (scalars, mappings, lists) after alias expansion: an inventory of
# 10 000 machines has about 70 000.
MAX_VALUES = 200_000


class Unreadable(Exception):
    """The file's text could not be had: missing, not a regular file, too
    large, not UTF-8.  ``missing`` tells an absent file apart."""

    def __init__(self, reason: str, missing: bool = False) -> None:
        super().__init__(reason)
        self.missing = missing


@dataclass(frozen=True)
class Problem:
    """One problem found while parsing: at a key path, or at a position."""

    what: str
    path: tuple[str | int, ...] = ()   # () is the top level
    line: int | None = None            # 1-based; set for YAML syntax errors
    column: int | None = None


# -- reading -----------------------------------------------------------------

_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def read_text(path: Path, limit: int = MAX_BYTES) -> str:
    """The UTF-8 text of a regular file of at most ``limit`` bytes."""
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        raise Unreadable(exc.strerror or str(exc), missing=exc.errno == errno.ENOENT) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = next((name for test, name in _KINDS if test(info.st_mode)), "not a file")
            raise Unreadable(f"it is {kind}, not a regular file")
        if info.st_size > limit:
            raise Unreadable(f"it has {info.st_size} bytes, more than the {limit} a "
                             "configuration file may have")
        with os.fdopen(os.dup(fd), "rb") as handle:
            data = handle.read(limit + 1)   # the file may grow meanwhile
    except OSError as exc:
        raise Unreadable(exc.strerror or str(exc)) from None
    finally:
        os.close(fd)
    if len(data) > limit:
        raise Unreadable(f"it has more than the {limit} bytes a configuration file may have")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Unreadable(f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def load(path: Path, kind: str = "yaml") -> tuple[Any, list[Problem]]:
    """Read and parse ``path`` (``kind`` yaml or json): data and problems.

    Raises Unreadable; the data is None when there are problems.
    """
    text = read_text(path)
    return parse_json(text) if kind == "json" else parse_yaml(text)


# -- YAML --------------------------------------------------------------------

class _Stop(Exception):
    """Parsing cannot go on; the reason is in the problems."""


_NO_KEY, _MERGE, _BAD_KEY = object(), object(), object()
_STANDARD_TAGS = (None, "!", "tag:yaml.org,2002:map", "tag:yaml.org,2002:seq")


class _Open:
    """A mapping or list whose end event has not come yet."""

    __slots__ = ("value", "path", "anchor", "start", "as_key", "key", "key_line", "lines")

    def __init__(self, value: Any, path: tuple[str | int, ...], anchor: str | None, start: int,
                 as_key: bool) -> None:
        self.value = value
        self.path = path
        self.anchor = anchor
        self.start = start            # values counted before this one
        self.as_key = as_key          # a mapping or list used as a key: dropped
        self.key: Any = _NO_KEY       # mappings: the key waiting for its value
        self.key_line = 0
        self.lines: dict[str, tuple[int, int | None]] = {}  # key: (line, line of its `<<`)


class _YamlBuilder:
    def __init__(self, loader: yaml.SafeLoader) -> None:
        self.loader = loader
        self.problems: list[Problem] = []
        self.stack: list[_Open] = []
        self.count = 0
        self.root: Any = None
        # anchor: (value, values it expands to, scalar text or None)
        self.anchors: dict[str, tuple[Any, int, str | None]] = {}
        self.open_anchors: set[str] = set()
        # id of each mapping built: (the mapping, its keys' lines), for merges.
        self.key_lines: dict[int, tuple[dict[str, Any], dict[str, int]]] = {}

    def stop(self, what: str, mark: Any) -> None:
        self.problems.append(Problem(what, line=mark.line + 1, column=mark.column + 1))
        raise _Stop

    def run(self) -> Any:
        documents = 0
        while self.loader.check_event():
            event = self.loader.get_event()
            if isinstance(event, yaml.DocumentStartEvent):
                documents += 1
                if documents > 1:
                    self.stop("expected one YAML document, found a second one", event.start_mark)
            elif isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
                self.start(event)
            elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
                self.end()
            elif isinstance(event, yaml.ScalarEvent):
                self.scalar(event)
            elif isinstance(event, yaml.AliasEvent):
                self.alias(event)
        return self.root

    def counted(self, values: int, mark: Any) -> None:
        self.count += values
        if self.count > MAX_VALUES:
            self.stop(f"more than {MAX_VALUES} values, counting each alias (*name) as often as "
                      "it is used; expected a much smaller file", mark)

    def expecting_key(self) -> _Open | None:
        top = self.stack[-1] if self.stack else None
        return top if top is not None and isinstance(top.value, dict) and top.key is _NO_KEY else None

    def set_key(self, parent: _Open, key: Any, mark: Any) -> None:
        parent.key, parent.key_line = key, mark.line + 1

    def start(self, event: Any) -> None:
        self.counted(1, event.start_mark)
        if len(self.stack) >= MAX_DEPTH:
            self.stop(f"nested more than {MAX_DEPTH} levels deep; expected a few levels of "
                      "mappings and lists", event.start_mark)
        is_map = isinstance(event, yaml.MappingStartEvent)
        if event.tag not in _STANDARD_TAGS:
            self.stop(f"YAML tag {event.tag} is not supported here; expected a plain "
                      f"{'mapping' if is_map else 'list'}", event.start_mark)
        parent = self.expecting_key()
        if parent is not None:
            self.problems.append(Problem(f"expected a plain key, got a {'mapping' if is_map else 'list'}",
                                         parent.path, event.start_mark.line + 1,
                                         event.start_mark.column + 1))
        path = self.child_path()
        if event.anchor is not None:
            self.anchor_opened(event.anchor, event.start_mark)
        self.stack.append(_Open({} if is_map else [], path, event.anchor, self.count - 1,
                                as_key=parent is not None))

    def end(self) -> None:
        done = self.stack.pop()
        if isinstance(done.value, dict):
            self.key_lines[id(done.value)] = (done.value, {k: line for k, (line, _m) in done.lines.items()})
        if done.anchor is not None:
            self.open_anchors.discard(done.anchor)
            self.anchors[done.anchor] = (done.value, self.count - done.start, None)
        if done.as_key:
            self.stack[-1].key = _BAD_KEY
        else:
            self.deliver(done.value)

    def scalar(self, event: yaml.ScalarEvent) -> None:
        self.counted(1, event.start_mark)
        parent = self.expecting_key()
        if event.anchor is not None:
            self.anchor_opened(event.anchor, event.start_mark)
            self.open_anchors.discard(event.anchor)
        if parent is not None:
            # A plain << is a merge key; a quoted one is the text "<<".
            merge = event.value == "<<" and event.implicit[0] and event.tag is None
            self.set_key(parent, _MERGE if merge else event.value, event.start_mark)
            if event.anchor is not None:
                self.anchors[event.anchor] = (event.value, 1, event.value)
            return
        tag = event.tag
        if tag is None or tag == "!":
            tag = self.loader.resolve(yaml.ScalarNode, event.value, event.implicit)
        node = yaml.ScalarNode(tag, event.value, event.start_mark, event.end_mark, event.style)
        try:
            value = self.loader.construct_object(node, deep=True)
        except (ValueError, OverflowError) as exc:  # e.g. the date 2025-13-01, !!int abc
            # The value is not quoted: it may be a secret.
            self.problems.append(Problem(f"YAML syntax error: not a valid {tag.rsplit(':', 1)[-1]} "
                                         f"({exc})", line=event.start_mark.line + 1,
                                         column=event.start_mark.column + 1))
            value = None
        if event.anchor is not None:
            self.anchors[event.anchor] = (value, 1, event.value)
        self.deliver(value)

    def alias(self, event: yaml.AliasEvent) -> None:
        name = event.anchor
        if name in self.open_anchors:
            self.stop(f"alias *{name} is inside the value it names; expected no cycle", event.start_mark)
        if name not in self.anchors:
            self.stop(f"alias *{name} names no anchor (&{name}) before it", event.start_mark)
        value, size, text = self.anchors[name]
        self.counted(size, event.start_mark)
        parent = self.expecting_key()
        if parent is None:
            self.deliver(value)
        elif text is None:
            self.problems.append(Problem("expected a plain key, got an alias to a mapping or list",
                                         parent.path, event.start_mark.line + 1,
                                         event.start_mark.column + 1))
            parent.key = _BAD_KEY
        else:
            self.set_key(parent, text, event.start_mark)

    def anchor_opened(self, name: str, mark: Any) -> None:
        if name in self.anchors or name in self.open_anchors:
            self.stop(f"anchor &{name} is defined twice; expected unique anchor names", mark)
        self.open_anchors.add(name)

    def child_path(self) -> tuple[str | int, ...]:
        if not self.stack:
            return ()
        top = self.stack[-1]
        if isinstance(top.value, list):
            return top.path + (len(top.value),)
        if isinstance(top.key, str):
            return top.path + (top.key,)
        return top.path + ("<<",) if top.key is _MERGE else top.path

    def deliver(self, value: Any) -> None:
        if not self.stack:
            self.root = value
            return
        top = self.stack[-1]
        if isinstance(top.value, list):
            top.value.append(value)
            return
        key, top.key = top.key, _NO_KEY
        if key is _MERGE:
            self.merge(top, value)
        elif key is not _BAD_KEY:
            self.put(top, key, value, top.key_line, None)

    def merge(self, into: _Open, value: Any) -> None:
        sources = value if isinstance(value, list) else [value]
        if not all(isinstance(source, dict) for source in sources):
            self.problems.append(Problem(f"expected a mapping or a list of mappings to merge, {got(value)}",
                                         into.path + ("<<",)))
            return
        for source in sources:
            _mapping, lines = self.key_lines[id(source)]
            for key, item in source.items():
                self.put(into, key, item, lines[key], into.key_line)

    def put(self, into: _Open, key: str, value: Any, line: int, merge_line: int | None) -> None:
        first = into.lines.get(key)
        if first is None:
            into.lines[key] = (line, merge_line)
            into.value[key] = value
            return
        if first[1] is None and merge_line is None:
            where = f"lines {first[0]} and {line}"
        else:
            where = ", and ".join(
                f"merged in from line {at} by `<<` on line {via}" if via else f"written on line {at}"
                for at, via in (first, (line, merge_line)))
        self.problems.append(Problem(f"duplicate key ({where}); keep only one", into.path + (key,)))


def parse_yaml(text: str) -> tuple[Any, list[Problem]]:
    """Plain data from YAML text, and the problems found (data None if any)."""
    builder: _YamlBuilder | None = None
    try:
        loader = yaml.SafeLoader(text)   # checks for unprintable characters first
        try:
            builder = _YamlBuilder(loader)
            data = builder.run()
        finally:
            loader.dispose()
    except _Stop:
        data = None
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        column = exc.position - (text.rfind("\n", 0, exc.position) + 1) + 1
        return None, [Problem(f"YAML syntax error: character U+{exc.character:04X} is not allowed in "
                              "YAML text (write it as an escape in a double-quoted string)",
                              line=line, column=column)]
    except yaml.MarkedYAMLError as exc:
        return None, (builder.problems if builder else []) + [_marked(exc)]
    except yaml.YAMLError as exc:
        return None, [Problem(f"YAML syntax error: {exc}")]
    problems = builder.problems if builder else []
    return (None if problems else data), problems


def _marked(exc: yaml.MarkedYAMLError) -> Problem:
    mark = exc.problem_mark or exc.context_mark
    what = exc.problem or str(exc)
    if exc.context and exc.context_mark:
        what += (f" ({exc.context} started at line {exc.context_mark.line + 1},"
                 f" column {exc.context_mark.column + 1})")
    if mark is None:
        return Problem(f"YAML syntax error: {what}")
    return Problem(f"YAML syntax error: {what}", line=mark.line + 1, column=mark.column + 1)


# -- JSON --------------------------------------------------------------------

def parse_json(text: str) -> tuple[Any, list[Problem]]:
    """Plain data from JSON text, and the problems found (data None if any).

    The same policy as YAML: duplicate keys, depth and size are problems.
    """
    duplicates: dict[int, tuple[dict[str, Any], list[str]]] = {}

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for key, value in items:
            if key in result:
                duplicates.setdefault(id(result), (result, []))[1].append(key)
            else:
                result[key] = value
        return result

    try:
        data = json.loads(text, object_pairs_hook=pairs)
    except json.JSONDecodeError as exc:
        return None, [Problem(f"not JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})")]
    except RecursionError:  # json's decoder nests by recursion, bounded by Python's limit
        return None, [Problem(f"nested more than {MAX_DEPTH} levels deep")]
    problems: list[Problem] = []
    count = 0
    todo: list[tuple[Any, tuple[str | int, ...]]] = [(data, ())]
    while todo:   # no recursion: the depth is checked here
        value, path = todo.pop()
        count += 1
        if len(path) >= MAX_DEPTH or count > MAX_VALUES:
            limit = (f"nested more than {MAX_DEPTH} levels deep" if len(path) >= MAX_DEPTH
                     else f"more than {MAX_VALUES} values")
            return None, [Problem(f"{limit}; expected a much smaller file")]
        if isinstance(value, dict):
            for key in duplicates.get(id(value), (None, []))[1]:
                problems.append(Problem("duplicate key; keep only one", path + (key,)))
            todo.extend((item, path + (key,)) for key, item in value.items())
        elif isinstance(value, list):
            todo.extend((item, path + (i,)) for i, item in enumerate(value))
    return (None if problems else data), problems


# -- messages ----------------------------------------------------------------

def escape(text: str) -> str:
    """``text`` on one printable line: control characters become escapes."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def problem_line(file: str | Path, key: str, what: str) -> str:
    """``<file>: <key path>: <what>`` as one printable line."""
    return escape(f"{file}: {key}: {what}")


def join(parent: str, key: str) -> str:
    """The key path of ``key`` inside the mapping at ``parent``."""
    return f"{parent}.{key}" if parent else key


def key_path(parts: Iterable[str | int], keyed: tuple[str, ...] = ()) -> str:
    """``a.b[0].c`` from parts; the keys of a mapping at a path in ``keyed``
    (keyed by data, such as MAC addresses) are shown as ``machines[<key>]``."""
    text = ""
    for part in parts:
        text = f"{text}[{part}]" if isinstance(part, int) or text in keyed else join(text, part)
    return text or TOP


def got(value: Any) -> str:
    """Describe a wrong value for "expected X, got Y" messages."""
    if value is None:
        return "got an empty value"
    if isinstance(value, bool):
        return f"got boolean {str(value).lower()}"
    if isinstance(value, str):
        return f"got string {value!r}"
    if isinstance(value, list):
        return "got a list"
    if isinstance(value, dict):
        return "got a mapping"
    return f"got {type(value).__name__} {value!r}"


# -- checking ----------------------------------------------------------------

class Checker:
    """Reads one file and collects its problems, one line each.

    The check methods return a placeholder of the right type when the value
    is bad; the caller raises (``raise_problems``) before any can escape.
    ``keyed``: key paths of mappings keyed by data (see :func:`key_path`).
    """

    def __init__(self, path: Path, keyed: tuple[str, ...] = ()) -> None:
        self.path = path
        self.file = str(path)
        self.keyed = keyed
        self.problems: list[str] = []

    def add(self, key: str, what: str) -> None:
        self.problems.append(problem_line(self.file, key, what))

    def report(self, problem: Problem) -> None:
        if problem.line is not None:
            self.problems.append(escape(f"{self.file}:{problem.line}:{problem.column}: {problem.what}"))
        else:
            self.add(key_path(problem.path, self.keyed), problem.what)

    def raise_problems(self) -> None:
        if self.problems:
            raise ConfigError(self.problems)

    def read(self, kind: str = "yaml", missing_ok: bool = False) -> Any:
        """The file's data; None (and problems) if it cannot be had.

        An absent file is None without a problem if ``missing_ok``.
        """
        try:
            data, problems = load(self.path, kind)
        except Unreadable as exc:
            if not (exc.missing and missing_ok):
                self.add(TOP, f"cannot read file: {exc}")
            return None
        for problem in problems:
            self.report(problem)
        return data

    def string(self, key: str, value: Any, expect: str) -> str | None:
        if isinstance(value, str):
            return value
        self.add(key, f"expected {expect}, {got(value)}")
        return None

    def integer(self, key: str, value: Any, expect: str, lo: int, hi: int | None = None) -> int:
        # bool is a subclass of int; "true" is not a number here.
        if isinstance(value, bool) or not isinstance(value, int):
            self.add(key, f"expected {expect}, {got(value)}")
        elif value < lo or (hi is not None and value > hi):
            self.add(key, f"expected {expect}, got {value}")
        else:
            return value
        return 0

    def boolean(self, key: str, value: Any, expect: str, default: bool) -> bool:
        if isinstance(value, bool):
            return value
        self.add(key, f"expected {expect}, {got(value)}")
        return default

    def valid(self, key: str, value: str, ok: bool, expect: str) -> bool:
        """Report value as invalid unless ok; return ok (for filtering)."""
        if not ok:
            self.add(key, f"{value!r} is not valid; expected {expect}")
        return ok

    def choice(self, key: str, value: Any, choices: tuple[str, ...]) -> str:
        expect = "one of " + ", ".join(choices)
        text = self.string(key, value, expect)
        if text is not None and text not in choices:
            self.add(key, f"unknown value {text!r}; expected {expect}")
        return text or ""

    def mapping(self, key: str, value: Any, allowed: tuple[str, ...], expect: str) -> dict[Any, Any]:
        if not isinstance(value, dict):
            self.add(key, f"expected {expect}, {got(value)}")
            return {}
        self.unknown_keys(key, value, allowed)
        return value

    def unknown_keys(self, key: str, data: Mapping[Any, Any], allowed: tuple[str, ...]) -> None:
        for name in data:
            if name not in allowed:
                self.add(join(key, str(name)), "unknown key; expected one of " + ", ".join(allowed))

    def required(self, key: str, data: Mapping[Any, Any], names: Iterable[str],
                 expect: Mapping[str, str] | None = None) -> None:
        """Report each of ``names`` missing from ``data`` (with what it expects)."""
        for name in names:
            if name not in data:
                detail = f"; expected {expect[name]}" if expect is not None else ""
                self.add(join(key, name), f"missing required key{detail}")

    def name_list(self, key: str, value: Any, expect: str, required: bool) -> list[tuple[str, str]]:
        """Check a list of unique strings; return (key path, item) of the good ones."""
        if not isinstance(value, list):
            self.add(key, f"expected {expect}, {got(value)}")
            return []
        if required and not value:
            self.add(key, f"expected {expect}, got an empty list")
        good: list[tuple[str, str]] = []
        seen: dict[str, str] = {}
        for i, item in enumerate(value):
            item_key = f"{key}[{i}]"
            if not isinstance(item, str):
                self.add(item_key, f"expected a string, {got(item)}")
            elif item in seen:
                self.add(item_key, f"{item!r} is listed twice (first at {seen[item]})")
            else:
                seen[item] = item_key
                good.append((item_key, item))
        return good
