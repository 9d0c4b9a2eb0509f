"""Package locks: install exactly the versions an earlier build had.

A build's manifest lists every package of its root with its version
(``packages``).  A recipe that names such a manifest under ``lock:`` gets
those versions again: every apt run of the build (mmdebstrap's, the kernel
step's, the boot package's ``apt-get install -f``) sees an apt preferences
file that pins each package to its locked version at priority 1001, which
also allows a downgrade.  Apt silently ignores a pin to a version that the
mirror no longer has, so after each step the tree is checked against the
lock, and any package that is not at its locked version, or not in the lock
at all, fails the build with its name and both versions.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Mapping

from pipeline.errors import PipelineError
from pipeline.build.manifest import packages

# Where the pins live while apt runs; never in a finished tree.
PREFERENCES = "etc/apt/preferences.d/image-pipeline-lock.pref"
PRIORITY = 1001


def preferences(lock: Mapping[str, str]) -> str:
    """apt_preferences(5) text pinning every package to its version."""
    stanzas = ["# Written by the image pipeline from the recipe's lock; removed after each step.\n"]
    # dpkg names Multi-Arch: same packages with their architecture
    # (libc6:amd64); an image has one architecture, so pin the plain name.
    plain = {name.split(":", 1)[0]: version for name, version in lock.items()}
    for name, version in sorted(plain.items()):
        stanzas.append(f"Package: {name}\nPin: version {version}\nPin-Priority: {PRIORITY}\n")
    return "\n".join(stanzas)


@contextmanager
def pinned(tree: Path, lock: Mapping[str, str]) -> Iterator[None]:
    """Pin the tree's apt to the lock while the block runs (nothing without a lock)."""
    if not lock:
        yield
        return
    path = tree / PREFERENCES
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(preferences(lock), encoding="utf-8")
    try:
        yield
    finally:
        path.unlink(missing_ok=True)


def mmdebstrap_options(lock: Mapping[str, str], pref_file: Path) -> list[str]:
    """mmdebstrap options that pin its apt runs and leave no pin behind.

    ``pref_file`` is written here, outside the tree; a setup hook copies it
    in before the first package is chosen, a customize hook removes it.
    """
    if not lock:
        return []
    pref_file.write_text(preferences(lock), encoding="utf-8")
    target = '"$1"/' + PREFERENCES
    return [f'--setup-hook=mkdir -p "$(dirname {target})" && cp {_quote(str(pref_file))} {target}',
            f"--customize-hook=rm -f {target}"]


def _quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def problems(installed: Mapping[str, str], lock: Mapping[str, str],
             exempt: frozenset[str] = frozenset()) -> list[str]:
    """How ``installed`` (name -> version) differs from the lock."""
    found = []
    for name, version in sorted(installed.items()):
        if name in exempt:
            continue
        base = name.split(":", 1)[0]
        locked = lock.get(name, lock.get(base))
        if locked is None:
            found.append(f"{name} {version} is installed but not in the lock")
        elif locked != version:
            found.append(f"{name} is {version}, the lock says {locked}")
    return found


def check(step: str, tree: Path, lock: Mapping[str, str],
          exempt: frozenset[str] = frozenset()) -> None:
    """Fail the step unless every package in ``tree`` is at its locked version."""
    if not lock:
        return
    found = problems(packages(tree), lock, exempt)
    if found:
        raise PipelineError(
            f"{step}: the tree does not match the recipe's lock:\n"
            + "\n".join("  " + line for line in found),
            hint="the mirror no longer has a locked version (use a snapshot mirror: "
                 "`mirror:` and `mirror_check_valid_until: false` in the recipe), or the "
                 "recipe's packages changed since the lock was made (make a new lock from "
                 "a new build's manifest)")
