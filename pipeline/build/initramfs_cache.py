"""Reuse of an initramfs made earlier from the same inputs.

``update-initramfs`` is most of the root step (about 9 s of 13).  What it
makes depends on the kernel tree (its packages), the injected boot packages,
the initramfs settings and fstab the root step writes, the pipeline's code,
and the files its hooks read.  Overlays are the input that changes most
often, and most of their files are never read by any initramfs-tools hook:
the initramfs of initramfs-tools runs no systemd, no sshd, no login.

The key is a digest of all of these.  An overlay file counts unless it lies
under one of :data:`IRRELEVANT`'s prefixes; a path not on that short list
counts, and so does every symlink (a hook that follows one, ``find -L``,
reads wherever it points).  A prefix stops being irrelevant as soon as a
hook script in the tree names it (other than the mentions listed with it),
so a recipe that adds a package whose hook reads, say, /etc/ssh gets a fresh
initramfs for every change there.  The scan reads the hooks and the files
mkinitramfs sources, not the programs a hook runs (plymouth's
populate-initrd, say): that is why the list holds only paths that belong to
the booted system alone.  When in doubt a file counts: an unneeded rebuild
costs seconds, a stale initramfs boots the wrong thing.

The audit and the fit check read the finished initramfs either way; what
they cannot see is staleness, which is why the key errs towards rebuilding.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from pipeline.fsutil import copy_file, sha256_file
from pipeline.naming import PARTIAL, Layout

# Bump when what goes into the key changes meaning.
KEY_FORMAT = 1

# How many initramfs files to keep per flavour: the current one and the one
# before, so that undoing an overlay change is also a reuse.
KEEP = 2


@dataclass(frozen=True)
class Irrelevant:
    """Overlay paths that no initramfs-tools hook reads."""

    prefix: str     # relative to the root; a trailing '/' means everything below
    why: str
    # Paths below the prefix that count all the same (fnmatch, '*' crosses '/').
    still: tuple[str, ...] = ()
    # Mentions of the prefix in hook scripts that are accounted for (by
    # ``still``, or because they do not read the build's file): text that
    # starts where the mention starts.
    known: tuple[str, ...] = ()


IRRELEVANT: tuple[Irrelevant, ...] = (
    Irrelevant("etc/systemd/", "systemd's units and settings: the initramfs runs no systemd. "
               "The one reader is udev's hook, which copies etc/systemd/network/*.link* "
               "(interface names): those count",
               still=("etc/systemd/network/*.link*",),
               known=("/etc/systemd/network ]", "/etc/systemd/network -name '*.link")),
    Irrelevant("etc/ssh/", "the booted system's sshd (an initramfs SSH server, dropbear or "
               "tinyssh, has its own folders under etc/)"),
    Irrelevant("etc/network/", "ifupdown of the booted system; the initramfs configures the "
               "network from ip= and DHCP"),
    Irrelevant("etc/motd", "login banner"),
    Irrelevant("etc/issue", "login banners (issue, issue.net, issue.d/)"),
    Irrelevant("root/", "root's home on the booted system",
               known=("/root:/bin/sh",)),  # open-iscsi-boot writes a passwd line
    Irrelevant("home/", "users' homes"),
    Irrelevant("srv/", "data the booted system serves"),
)

# Hook scripts and what mkinitramfs sources: scanned for mentions of the
# irrelevant prefixes.  Folders: every file in them.
HOOK_FOLDERS = ("usr/share/initramfs-tools/hooks", "etc/initramfs-tools/hooks",
                "usr/share/initramfs-tools/conf-hooks.d", "etc/initramfs-tools/conf-hooks.d",
                "usr/share/initramfs-tools/conf.d", "etc/initramfs-tools/conf.d")
HOOK_FILES = ("usr/sbin/mkinitramfs", "usr/sbin/update-initramfs",
              "usr/share/initramfs-tools/hook-functions", "etc/initramfs-tools/initramfs.conf",
              "etc/initramfs-tools/update-initramfs.conf")

# Older initramfs-tools kept the sha1 of each initramfs here and compared it
# on ``update-initramfs -u``; 0.148 (trixie) keeps nothing besides the file.
STATE_DIR = "var/lib/initramfs-tools"
UPDATE_INITRAMFS = "usr/sbin/update-initramfs"
POST_UPDATE_DIR = "etc/initramfs/post-update.d"


@dataclass(frozen=True)
class Cache:
    """Where one flavour's initramfs files are kept, and the inputs the tree does not show."""

    layout: Layout
    image: str
    flavour: str
    inputs: Mapping[str, str]   # kernel stamp digest, code digest, …

    @property
    def folder(self) -> Path:
        return self.layout.initramfs_cache(self.image, self.flavour)

    def path(self, key: str) -> Path:
        return self.layout.initramfs_cache(self.image, self.flavour, key)


# -- which overlay files count ----------------------------------------------

def _needle(rule: Irrelevant) -> re.Pattern[str]:
    """A mention of the rule's path in a shell script (not the tail of a longer path).

    ``${DESTDIR}/root/…`` counts as a mention too: better a needless rebuild
    than a missed reader.
    """
    path = "/" + rule.prefix.rstrip("/")
    after = r"(?![\w.+-])" if rule.prefix.endswith("/") else ""
    return re.compile(r"(?<![\w./-])" + re.escape(path) + after)


def _under(rel: str, prefix: str) -> bool:
    """``etc/issue`` covers etc/issue, etc/issue.net and etc/issue.d/…, not etc/issues."""
    if prefix.endswith("/"):
        return rel.startswith(prefix)
    return rel == prefix or rel.startswith((prefix + ".", prefix + "/"))


def _read_in_tree(tree: Path, rel: str, depth: int = 0) -> bytes | None:
    """A file of the tree, symlinks resolved inside the tree (never the host's)."""
    path = tree / rel
    if depth > 8:
        raise OSError(f"{path}: too many levels of symbolic links")
    if path.is_symlink():
        target = os.readlink(path)
        base = "" if target.startswith("/") else os.path.dirname(rel)
        resolved = os.path.normpath(os.path.join(base, target.lstrip("/")))
        if resolved.startswith(".."):
            raise OSError(f"{path}: points out of the tree")
        return _read_in_tree(tree, resolved, depth + 1)
    # A folder on the way may be a symlink too; it must not lead to the host.
    if not os.path.realpath(path).startswith(os.path.realpath(tree) + "/"):
        raise OSError(f"{path}: points out of the tree")
    if not path.exists():
        return None
    return path.read_bytes()


def hook_scripts(tree: Path) -> dict[str, bytes]:
    """The hook scripts and sourced settings of the tree's initramfs-tools."""
    found: dict[str, bytes] = {}
    rels = list(HOOK_FILES)
    for folder in HOOK_FOLDERS:
        if (tree / folder).is_dir() and not (tree / folder).is_symlink():
            rels += [f"{folder}/{name}" for name in sorted(os.listdir(tree / folder))]
    for rel in rels:
        if (tree / rel).is_dir() and not (tree / rel).is_symlink():
            continue
        data = _read_in_tree(tree, rel)
        if data is not None:
            found[rel] = data
    return found


def active_rules(tree: Path) -> tuple[Irrelevant, ...]:
    """The rules no hook script of the tree contradicts.

    A script that cannot be read voids them all: rebuilding is the safe side.
    """
    try:
        scripts = hook_scripts(tree)
    except OSError:
        return ()
    lines = [line for data in scripts.values()
             for line in data.decode(errors="replace").splitlines()
             if not line.lstrip().startswith("#")]
    active = []
    for rule in IRRELEVANT:
        mentions = [(line, match.start()) for line in lines
                    for match in _needle(rule).finditer(line)]
        if all(rule.known and line.startswith(rule.known, at) for line, at in mentions):
            active.append(rule)
    return tuple(active)


def counts(rel: str, is_link: bool, rules: Sequence[Irrelevant] = IRRELEVANT) -> bool:
    """Whether an overlay path (relative to the root) goes into the key."""
    if is_link:
        return True
    for rule in rules:
        if _under(rel, rule.prefix):
            return any(fnmatch.fnmatchcase(rel, pattern) for pattern in rule.still)
    return True


def overlay_entries(overlays: Sequence[Path], rules: Sequence[Irrelevant]) -> list[list[str]]:
    """(path, what is there, mode) of every overlay entry that counts, in overlay order.

    Walked as :func:`rootfs.apply_overlay` copies: files, symlinks (also to
    folders) and folders.  A later overlay's entry shadows an earlier one's in
    the tree; both stay in the list, which only makes the key stricter.
    """
    entries: list[list[str]] = []
    for overlay in overlays:
        for dirpath, dirnames, filenames in os.walk(overlay):
            dirnames.sort()
            rel_dir = Path(dirpath).relative_to(overlay)
            links = [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]
            for name in sorted(filenames) + links:
                src = Path(dirpath) / name
                rel = str(rel_dir / name)
                if src.is_symlink():
                    entries.append([rel, "symlink:" + os.readlink(src), ""])
                elif counts(rel, False, rules):
                    entries.append([rel, sha256_file(src), oct(src.stat().st_mode & 0o7777)])
            for name in dirnames:
                rel = str(rel_dir / name) + "/"
                if name not in links and counts(rel, False, rules):
                    entries.append([rel, "folder", ""])
    return entries


def key(tree: Path, overlays: Sequence[Path], debs: Sequence[Path],
        settings: Mapping[str, str]) -> str:
    """Digest of everything the initramfs about to be made in ``tree`` is made from.

    ``settings``: the inputs the tree does not show by itself (kernel stamp,
    code digest) and the text the root step wrote (initramfs conf, fstab).
    The installed package set is read from the tree as it is now, after the
    boot packages went in.
    """
    rules = active_rules(tree)
    document = {
        "format": KEY_FORMAT,
        "settings": dict(sorted(settings.items())),
        "debs": [[deb.name, sha256_file(deb)] for deb in debs],
        "dpkg_status": sha256_file(tree / "var/lib/dpkg/status"),
        "ignored": [rule.prefix for rule in rules],
        "overlays": overlay_entries(overlays, rules),
    }
    return hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()


# -- reuse -----------------------------------------------------------------

def not_reusable(tree: Path, modules: str) -> str | None:
    """Why an initramfs for this tree must be made and not kept (None: it may be)."""
    if modules == "dep":
        # mkinitramfs then picks modules by the build host's /sys: an input
        # the key does not capture.
        return "MODULES=dep depends on the build host's hardware"
    post = tree / POST_UPDATE_DIR
    if post.is_dir() and os.listdir(post):
        # update-initramfs runs these after making the file; a reuse would not.
        return f"/{POST_UPDATE_DIR} has hooks that update-initramfs runs"
    return None


def keeps_state(tree: Path) -> bool:
    """Whether this tree's update-initramfs records a sha1 in /var/lib/initramfs-tools."""
    script = tree / UPDATE_INITRAMFS
    return script.is_file() and b"STATEDIR=" in script.read_bytes()


def state_text(initrd: Path, release: str) -> str:
    """What update-initramfs writes there: ``sha1sum /boot/initrd.img-<release>``."""
    digest = hashlib.sha1()
    with open(initrd, "rb") as handle:
        while block := handle.read(4 << 20):
            digest.update(block)
    return f"{digest.hexdigest()}  /boot/initrd.img-{release}\n"


def initrd_in(tree: Path, release: str) -> Path:
    return tree / "boot" / f"initrd.img-{release}"


def state_matches(tree: Path, release: str) -> bool:
    """Whether what update-initramfs left besides the file is what :func:`install` writes."""
    state = tree / STATE_DIR / release
    if not keeps_state(tree):
        return not os.path.lexists(state)
    return state.is_file() and state.read_text() == state_text(initrd_in(tree, release), release)


def install(cache: Cache, key_: str, tree: Path, release: str) -> None:
    """Put a kept initramfs into the tree as ``update-initramfs -c`` would leave it."""
    cached = cache.path(key_)
    target = initrd_in(tree, release)
    copy_file(cached, target)  # under a temporary name, then renamed: mode 0644, as made
    if keeps_state(tree):
        state = tree / STATE_DIR
        state.mkdir(parents=True, exist_ok=True)
        (state / release).write_text(state_text(target, release))
    # Now the most recently used: pruning keeps it.
    os.utime(cached)
    prune(cache.folder, cached)


def store(cache: Cache, key_: str, tree: Path, release: str) -> None:
    """Keep the initramfs just made in ``tree``; drop all but the latest :data:`KEEP`."""
    dest = cache.path(key_)
    dest.parent.mkdir(parents=True, exist_ok=True)
    copy_file(initrd_in(tree, release), dest)
    prune(cache.folder, dest)


def prune(folder: Path, keep: Path) -> None:
    """Remove older files (and leftovers of interrupted writes) from a cache folder."""
    files = []
    for path in folder.iterdir():
        if path.name.endswith(PARTIAL):
            path.unlink()
        elif path != keep and path.is_file():
            files.append(path)
    files.sort(key=lambda p: p.stat().st_mtime_ns, reverse=True)
    for path in files[KEEP - 1:]:
        path.unlink()
