"""Debian's version order (as ``dpkg --compare-versions``), without dpkg.

Used to pick the newest kernel release of a flavour: 6.1.0-28-amd64 is newer
than 6.1.0-9-amd64, and 6.12.57+deb13-amd64 newer than 6.12.9+deb13-amd64,
which plain string order gets wrong.  The rule (deb-version(7)): compare
alternately a run of non-digits, character by character with letters before
other characters and '~' before everything, even the end; then a run of
digits as a number.  A release is compared as one string, as dpkg compares
the upstream part of a version (kernel releases have no epoch).
"""

from __future__ import annotations

import functools


def _order(char: str) -> int:
    if char == "~":
        return -1
    if "a" <= char.lower() <= "z":
        return ord(char)
    return ord(char) + 256


def _is_digit(text: str, i: int) -> bool:
    return i < len(text) and "0" <= text[i] <= "9"


def compare_part(a: str, b: str) -> int:
    """dpkg's verrevcmp: <0, 0 or >0 as ``a`` sorts before, with or after ``b``."""
    i = j = 0
    while i < len(a) or j < len(b):
        # The non-digit run; the end of a string sorts as 0 (after '~').
        while (i < len(a) and not _is_digit(a, i)) or (j < len(b) and not _is_digit(b, j)):
            ac = _order(a[i]) if i < len(a) and not _is_digit(a, i) else 0
            bc = _order(b[j]) if j < len(b) and not _is_digit(b, j) else 0
            if ac != bc:
                return ac - bc
            i, j = i + 1, j + 1
        # The digit run, as a number.
        while i < len(a) and a[i] == "0":
            i += 1
        while j < len(b) and b[j] == "0":
            j += 1
        first_diff = 0
        while _is_digit(a, i) and _is_digit(b, j):
            first_diff = first_diff or ord(a[i]) - ord(b[j])
            i, j = i + 1, j + 1
        if _is_digit(a, i):
            return 1
        if _is_digit(b, j):
            return -1
        if first_diff:
            return first_diff
    return 0


def newest(releases: list[str]) -> str:
    """The newest of kernel releases of one flavour (compared as whole strings)."""
    return max(releases, key=functools.cmp_to_key(compare_part))
