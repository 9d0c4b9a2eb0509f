"""Running commands inside an image tree.

Only fresh kernel file systems are mounted (proc, sysfs, devpts): the tree
has its own device nodes from the bootstrapper, so the host's /dev is never
bind-mounted where a recursive delete could reach it.  Services are kept
from starting with a policy-rc.d for the duration.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Mapping, Sequence

from pipeline import runner
from pipeline.fsutil import data_file, mounts_under

# Keeps services from starting (exit 101: "action forbidden") while we work in the tree.
POLICY_RC_D = data_file("pipeline.build", "policy-rc.d")

# (file system type, mount point inside the tree, options)
MOUNTS = (
    ("proc", "proc", "nosuid,nodev,noexec"),
    ("sysfs", "sys", "ro,nosuid,nodev,noexec"),
    ("devpts", "dev/pts", "newinstance,ptmxmode=0666,nosuid,noexec"),
)


@contextmanager
def mounted(root: Path) -> Iterator[None]:
    """Mount what chrooted tools need; always unmount and clean up."""
    done: list[Path] = []
    policy = root / "usr/sbin/policy-rc.d"
    had_policy = policy.exists()
    try:
        for fstype, where, options in MOUNTS:
            point = root / where
            point.mkdir(parents=True, exist_ok=True)
            runner.run(["mount", "-t", fstype, "-o", options, fstype, str(point)])
            done.append(point)
        if not had_policy:
            policy.write_bytes(POLICY_RC_D.read_bytes())
            policy.chmod(0o755)
        yield
    finally:
        if not had_policy and policy.exists():
            policy.unlink()
        for point in reversed(done):
            runner.run(["umount", "--lazy", str(point)], check=False)
        left = mounts_under(root)
        if left:
            raise RuntimeError(f"mounts left in {root}: {left}")


def run(root: Path, argv: Sequence[str], *, env: Mapping[str, str] | None = None,
        echo: bool = False) -> str:
    """Run ``argv`` inside ``root`` (which must be mounted)."""
    return runner.run(["chroot", str(root), *argv], env=env, echo=echo)
