"""The non-Python files the pipeline installs into images (pipeline/*/data/).

Each is a shell script (POSIX sh, shellcheck-clean) or a systemd unit
(``systemd-analyze verify``), and holds exactly the bytes images were built
with: they go into root images and the lab's LUN copies, so a change is a
change of every image built from them.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
from pathlib import Path

import pytest

PIPELINE = Path(__file__).resolve().parents[2] / "pipeline"
PAYLOADS = sorted(path for path in PIPELINE.glob("*/data/*") if path.is_file())
SHELL = [path for path in PAYLOADS if path.read_bytes().startswith(b"#!")]
UNIT_SUFFIXES = (".service", ".socket", ".timer", ".target", ".path", ".mount")
UNITS = [path for path in PAYLOADS if path.suffix in UNIT_SUFFIXES]

# The sha256 of each payload as the images were built before the payloads
# moved out of Python strings.  A deliberate edit updates the digest here.
DIGESTS = {
    "build/data/policy-rc.d":
        "a68fae65f4c53d7c4afc1bcc663db99f49214296cd92894301e1ec53aa8b67b0",
    "build/data/ssh-host-keys.service":
        "6454cc69e372c8e0181215f86f0ea8317114133526039326f42fecb5d5733ccb",
    "lab/data/lab-agent":
        "3ff79a70da45513e6ba1c4420108593a964cc8dad9973fe2593423fb58a8c05b",
    "lab/data/lab-agent.service":
        "1078369d406b2219b2b0ce733d0e09f0b3d301decd2c6b555bfbe40acc5a9993",
    "lab/data/lab-io":
        "032e73197735631dfd10e99f027d94500e6d037f56d511abfdbe8e583df9c5e6",
}

# Sections and keys the units here may use.  Checked even without
# systemd-analyze: systemd only warns about an unknown key and ignores it,
# so a misspelt key would silently do nothing.
UNIT_KEYS = {
    "Unit": {"Description", "After", "Before", "Requires", "Wants", "ConditionPathExists",
             "ConditionPathExistsGlob", "DefaultDependencies"},
    "Service": {"Type", "ExecStart", "ExecStartPre", "Restart", "RestartSec",
                "RemainAfterExit", "StandardOutput", "StandardError"},
    "Install": {"WantedBy", "RequiredBy"},
}


def rel(path: Path) -> str:
    return str(path.relative_to(PIPELINE))


def test_every_payload_is_a_shell_script_or_a_unit():
    assert PAYLOADS, f"no payloads under {PIPELINE}/*/data/"
    assert sorted(map(rel, SHELL + UNITS)) == sorted(map(rel, PAYLOADS))


def test_payloads_hold_the_bytes_images_were_built_with():
    assert {rel(path): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in PAYLOADS} == DIGESTS


@pytest.mark.parametrize("path", SHELL, ids=rel)
def test_shell_payload_is_posix_sh_and_shellcheck_clean(path):
    shebang = path.read_text().splitlines()[0]
    # They run in images and guests, where only a POSIX sh is certain.
    assert shebang == "#!/bin/sh", f"{rel(path)}: shebang {shebang!r}, expected #!/bin/sh"
    if not shutil.which("shellcheck"):
        pytest.skip("shellcheck is not installed (Debian package shellcheck)")
    proc = subprocess.run(["shellcheck", "--shell=sh", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def unit_sections(path: Path) -> dict[str, list[tuple[str, str]]]:
    """The unit's sections, each a list of (key, value), in file order."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current = None
    for number, line in enumerate(path.read_text().splitlines(), 1):
        where = f"{rel(path)}:{number}"
        if not line.strip() or line.startswith(("#", ";")):
            continue
        header = re.fullmatch(r"\[([A-Za-z]+)\]", line)
        if header:
            current = header.group(1)
            assert current not in sections, f"{where}: section [{current}] twice"
            sections[current] = []
            continue
        assert current is not None, f"{where}: a key before the first section"
        key, equals, value = line.partition("=")
        assert equals and key and key == key.strip(), f"{where}: expected Key=value: {line!r}"
        sections[current].append((key, value))
    return sections


@pytest.mark.parametrize("path", UNITS, ids=rel)
def test_unit_payload_has_known_sections_and_keys(path):
    sections = unit_sections(path)
    assert set(sections) <= set(UNIT_KEYS), f"{rel(path)}: sections {sorted(sections)}"
    assert {"Unit", "Install"} <= set(sections), f"{rel(path)}: needs [Unit] and [Install]"
    for name, entries in sections.items():
        for key, _value in entries:
            assert key in UNIT_KEYS[name], f"{rel(path)}: [{name}] {key}: not a key used here"
    commands = [value for key, value in sections.get("Service", []) if key.startswith("Exec")]
    assert commands and all(command.startswith("/") for command in commands), commands


# systemd-analyze verify needs no running systemd (it loads the unit files
# itself; seen here in a container without one).  It checks the executables
# too, but they are in the image, not on this host: a missing one is the
# only complaint let through.
MISSING_EXECUTABLE = re.compile(r"^\S+: Command /\S+ is not executable: No such file or directory$")


@pytest.mark.parametrize("path", UNITS, ids=rel)
def test_unit_payload_passes_systemd_analyze_verify(path):
    if not shutil.which("systemd-analyze"):
        pytest.skip("systemd-analyze is not installed (Debian package systemd)")
    proc = subprocess.run(["systemd-analyze", "verify", "--man=no", str(path)],
                          capture_output=True, text=True)
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    complaints = [line for line in lines if not MISSING_EXECUTABLE.match(line)]
    assert complaints == [], "\n".join(complaints)
    # A failing status is fine only when a missing executable is all it says.
    assert proc.returncode == 0 or lines, proc
