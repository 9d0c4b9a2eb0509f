"""CHAP passwords: random per machine, made once, kept in a private file.

The file (``site.secrets``, default ``<store>/secrets.yaml``) maps each
machine's MAC address to its password.  It is created with mode 0600 and
replaced atomically (never readable by others, not even while it is being
written); it lies outside the TFTP tree (the inventory refuses anything else)
and belongs in no git repository.  Passwords are never printed or logged.

The CHAP user name is not stored: it is derived (see :mod:`pipeline.derive`).
"""

from __future__ import annotations

import os
import secrets
import stat
import string
from pathlib import Path
from typing import Callable, Iterable

from pipeline.config import TOP, Checker
from pipeline.fsutil import write_if_changed
from pipeline.fleet.inventory import canonical_mac

# Letters and digits only: the password travels through tgt-admin (which
# hands it to a shell) and a key=value file in the initramfs.
ALPHABET = string.ascii_letters + string.digits
LENGTH = 24          # about 143 bits; tgt and open-iscsi take up to 255
MIN_LENGTH = 12      # RFC 7143 asks for at least 96 bits of secret
MODE = 0o600

HEADER = ("# CHAP passwords of the iSCSI fleet, one per machine (MAC address: password).\n"
          "# Made by publish; keep this file private (mode 0600) and out of git.\n")


def new_password() -> str:
    return "".join(secrets.choice(ALPHABET) for _ in range(LENGTH))


def load(path: Path) -> dict[str, str]:
    """The stored passwords by canonical MAC; an absent file is empty."""
    check = Checker(path)
    data = check.read(missing_ok=True)
    check.raise_problems()
    if data is None:
        return {}
    if not isinstance(data, dict):
        check.add(TOP, "expected a mapping of MAC address to password")
        check.raise_problems()
    result: dict[str, str] = {}
    for key, value in data.items():
        mac = canonical_mac(key)
        # The value is never quoted in a message: it is a secret.
        if mac is None:
            check.add(key, "not a MAC address")
        elif not isinstance(value, str) or len(value) < MIN_LENGTH \
                or any(c not in ALPHABET for c in value):
            check.add(key, f"expected a password of at least {MIN_LENGTH} letters and digits")
        else:
            result[mac] = value
    check.raise_problems()
    return result


def render(passwords: dict[str, str]) -> bytes:
    lines = [HEADER] + [f'"{mac}": {passwords[mac]}\n' for mac in sorted(passwords)]
    return "".join(lines).encode("utf-8")


def ensure(path: Path, macs: Iterable[str], log: Callable[[str], None] = print) -> dict[str, str]:
    """Passwords for ``macs``: the stored ones, plus new ones saved for the rest.

    Passwords of machines no longer in the inventory stay in the file: a
    machine that comes back keeps its password.
    """
    passwords = load(path)
    missing = [mac for mac in macs if mac not in passwords]
    for mac in missing:
        passwords[mac] = new_password()
    if not path.parent.exists():
        path.parent.mkdir(mode=0o700, parents=True)
    if path.exists() and stat.S_IMODE(path.stat().st_mode) != MODE:
        log(f"secrets file {path} had mode {stat.S_IMODE(path.stat().st_mode):04o}; set to 0600")
        os.chmod(path, MODE)
    if missing or not path.exists():
        write_if_changed(path, render(passwords), MODE)
        if missing:
            log(f"made CHAP passwords for {len(missing)} machine(s) in {path}")
    return passwords
