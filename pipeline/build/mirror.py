"""Find the Debian mirror the build host itself uses.

Recipes may leave out ``mirror``; they then bootstrap from whatever mirror the
host's apt is configured with.  Only the files apt itself reads are looked at:
``sources.list`` (one-line format) and ``sources.list.d/*.list`` /
``sources.list.d/*.sources`` (deb822 format).  Everything else in
``sources.list.d`` (``*.disabled``, ``*.save``, ...) is ignored, as apt does.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

# Debian release codenames, oldest first.  A suite counts as a "plain release"
# only if it is one of these or one of the moving aliases below; anything else
# (``bookworm-security``, ``bookworm-updates``, ``bookworm-backports``,
# ``nodistro``, ``cloud-sdk-bookworm``, Ubuntu codenames...) is some other
# repository, not the Debian archive a root file system is bootstrapped from.
# Extend this tuple when Debian names a new release.
DEBIAN_CODENAMES = (
    "buzz", "rex", "bo", "hamm", "slink", "potato", "woody", "sarge", "etch",
    "lenny", "squeeze", "wheezy", "jessie", "stretch", "buster", "bullseye",
    "bookworm", "trixie", "forky", "duke", "sid",
)
SUITE_ALIASES = ("oldoldstable", "oldstable", "stable", "testing", "unstable")
RELEASE_SUITES = frozenset(DEBIAN_CODENAMES + SUITE_ALIASES)


def is_release_suite(suite: str) -> bool:
    """True for a plain Debian release suite (codename or alias)."""
    return suite in RELEASE_SUITES


def host_mirror(apt_dir: Path = Path("/etc/apt")) -> str | None:
    """Return the URI of the host's Debian mirror, or None if there is none.

    The first ``deb`` entry (``sources.list`` first, then ``sources.list.d`` in
    sorted file-name order, as apt reads them) that lists a plain Debian release
    suite wins.  The URI is returned without a trailing slash.  Unreadable
    files are skipped: the caller reports "no mirror found" if nothing is left.
    """
    for uris, suites in _deb_entries(apt_dir):
        if any(is_release_suite(s) for s in suites):
            return uris[0].rstrip("/")
    return None


def _source_files(apt_dir: Path) -> list[Path]:
    files = [apt_dir / "sources.list"]
    parts = apt_dir / "sources.list.d"
    if parts.is_dir():
        files += sorted(
            (p for p in parts.iterdir() if p.suffix in (".list", ".sources")),
            key=lambda p: p.name,
        )
    return [f for f in files if f.is_file()]


def _deb_entries(apt_dir: Path) -> Iterator[tuple[list[str], list[str]]]:
    """Yield (URIs, suites) of every enabled ``deb`` (binary) entry, in order."""
    for path in _source_files(apt_dir):
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        if path.suffix == ".sources":
            yield from _deb822_entries(text)
        else:
            yield from _one_line_entries(text)


def _one_line_entries(text: str) -> Iterator[tuple[list[str], list[str]]]:
    # deb [ option=value ... ] URI SUITE [COMPONENT ...]
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        kind, *tail = line.split(None, 1)
        if kind != "deb" or not tail:  # deb-src, garbage
            continue
        rest = tail[0]
        if rest.startswith("["):
            # Options may contain spaces ("[ arch=amd64 ]"), so cut at "]".
            end = rest.find("]")
            if end < 0:
                continue
            rest = rest[end + 1:]
        fields = rest.split()
        if len(fields) >= 2:
            yield [fields[0]], [fields[1]]


def _deb822_entries(text: str) -> Iterator[tuple[list[str], list[str]]]:
    for para in _deb822_paragraphs(text):
        if "deb" not in para.get("types", "").split():
            continue
        if para.get("enabled", "yes").strip().lower() in ("no", "false", "0"):
            continue
        uris = para.get("uris", "").split()
        suites = para.get("suites", "").split()
        if uris and suites:
            yield uris, suites


def _deb822_paragraphs(text: str) -> Iterator[dict[str, str]]:
    """Split deb822 text into paragraphs of {lower-case field: value}.

    Blank lines separate paragraphs; ``#`` lines are comments (they do not end
    a paragraph); lines starting with white space continue the previous field.
    """
    para: dict[str, str] = {}
    last: str | None = None
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        if not line.strip():
            if para:
                yield para
            para, last = {}, None
            continue
        if line[0] in " \t":
            if last is not None:
                para[last] += " " + line.strip()
            continue
        name, sep, value = line.partition(":")
        if not sep:
            continue
        last = name.strip().lower()
        para[last] = value.strip()
    if para:
        yield para
