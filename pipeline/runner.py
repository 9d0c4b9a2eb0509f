"""The one place that runs external commands.

Every tool is started the same way: argv as a list (never a shell string), a
rebuilt environment (``LANG=C.UTF-8``, ``TZ=UTC``, a fixed ``PATH``, and
``SOURCE_DATE_EPOCH`` when the caller or the host sets it), stdin from
/dev/null.  On failure the user sees one message: the command line and the
tail of what it printed.  No other module imports :mod:`subprocess`.
"""

from __future__ import annotations

import collections
import os
import shlex
import shutil
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from typing import Iterator, Mapping, Sequence

from pipeline.errors import PipelineError

# Enough lines to see why a tool failed, few enough to read.
TAIL_LINES = 25

PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Variables passed through from the caller's environment when set: proxies
# for apt, and the terminal width for tools that format tables.
PASS_THROUGH = ("http_proxy", "https_proxy", "no_proxy", "COLUMNS", "TERM")


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment every command gets."""
    env = {"LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "TZ": "UTC", "PATH": PATH,
           "HOME": "/root" if os.geteuid() == 0 else os.environ.get("HOME", "/")}
    for name in PASS_THROUGH:
        if name in os.environ:
            env[name] = os.environ[name]
    if "SOURCE_DATE_EPOCH" in os.environ:
        env["SOURCE_DATE_EPOCH"] = os.environ["SOURCE_DATE_EPOCH"]
    if extra:
        env.update(extra)
    return env


class CommandError(PipelineError):
    """A command exited non-zero (or could not be started)."""

    def __init__(self, argv: Sequence[str], returncode: int, tail: str) -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.tail = tail
        message = f"command failed (exit status {returncode}): {shlex.join(self.argv)}"
        if tail.strip():
            message += "\n" + "\n".join("  | " + line for line in tail.rstrip("\n").splitlines())
        super().__init__(message)


def _argv(argv: Sequence[str | os.PathLike[str]], path: str | None = None) -> list[str]:
    """argv as strings; a tool that is not installed is a user error naming its package."""
    args = [os.fspath(a) for a in argv]
    if not os.path.isabs(args[0]) and shutil.which(args[0], path=path or PATH) is None:
        raise missing_tool(args[0])
    return args


def run(argv: Sequence[str | os.PathLike[str]], *, env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None, echo: bool = False,
        check: bool = True, timeout: float | None = None) -> str:
    """Run ``argv`` and return its combined stdout+stderr as text.

    ``echo`` streams the output, line by line, to our stdout while it runs:
    that is the progress shown for long steps (mmdebstrap, apt, mkinitramfs).
    Without it the output is only kept for the error message.
    """
    return run_status(argv, env=env, cwd=cwd, echo=echo, check=check, timeout=timeout)[1]


def run_status(argv: Sequence[str | os.PathLike[str]], *, env: Mapping[str, str] | None = None,
               cwd: str | os.PathLike[str] | None = None, echo: bool = False,
               check: bool = False, timeout: float | None = None) -> tuple[int, str]:
    """Like :func:`run`, for tools whose exit status is an answer (diffoscope:
    1 means "different"): return (status, output); raise only with ``check``."""
    args = _argv(argv, (env or {}).get("PATH"))
    full_env = clean_env(env)
    lines: list[str] = []
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    try:
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, env=full_env, cwd=cwd,
                                text=True, errors="replace")
    except OSError as exc:
        raise CommandError(args, 127, str(exc)) from None
    # A timer, not a check between lines: a silent command must time out too.
    timed_out = threading.Event()

    def expire() -> None:
        timed_out.set()
        proc.kill()
    timer = threading.Timer(timeout, expire) if timeout is not None else None
    if timer:
        timer.start()
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            lines.append(line)
            tail.append(line)
            if echo:
                sys.stdout.write("    " + line)
                sys.stdout.flush()
        returncode = proc.wait()
    except BaseException:
        # Ctrl-C or an error while reading: do not leave the child behind.
        proc.kill()
        proc.wait()
        raise
    finally:
        if timer:
            timer.cancel()
    if timed_out.is_set():
        raise CommandError(args, returncode, "".join(tail) + f"(timed out after {timeout:g} s)\n")
    if check and returncode != 0:
        raise CommandError(args, returncode, "".join(tail))
    return returncode, "".join(lines)


def output(argv: Sequence[str | os.PathLike[str]], **kwargs) -> str:
    """Run a command that prints a result on stdout; return it stripped.

    Stderr is kept apart so that warnings do not end up in the value.
    """
    args = _argv(argv)
    try:
        proc = subprocess.run(args, stdin=subprocess.DEVNULL, capture_output=True,
                              env=clean_env(kwargs.get("env")), cwd=kwargs.get("cwd"),
                              text=True, errors="replace", timeout=kwargs.get("timeout"))
    except OSError as exc:
        raise CommandError(args, 127, str(exc)) from None
    if proc.returncode != 0 and kwargs.get("check", True):
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-TAIL_LINES:])
        raise CommandError(args, proc.returncode, tail)
    return proc.stdout.strip()


def output_bytes(argv: Sequence[str | os.PathLike[str]], *, env: Mapping[str, str] | None = None,
                 input: bytes | None = None) -> bytes:
    """Like :func:`output` for binary results; ``input`` is fed on stdin."""
    args = _argv(argv)
    try:
        proc = subprocess.run(args, capture_output=True, env=clean_env(env), input=input,
                              stdin=subprocess.DEVNULL if input is None else None)
    except OSError as exc:
        raise CommandError(args, 127, str(exc)) from None
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.decode(errors="replace").splitlines()[-TAIL_LINES:])
        raise CommandError(args, proc.returncode, tail)
    return proc.stdout


# Which Debian package provides each host tool the pipeline runs.
TOOL_PACKAGES = {
    "mmdebstrap": "mmdebstrap",
    "debootstrap": "debootstrap",
    "mkosi": "mkosi",
    "rbd": "ceph-common",
    "ceph": "ceph-common",
    "ceph-authtool": "ceph-common",
    "ceph-mon": "ceph-mon",
    "ceph-osd": "ceph-osd",
    "rbd-fuse": "rbd-fuse",
    "mkfs.ext4": "e2fsprogs",
    "debugfs": "e2fsprogs",
    "e2fsck": "e2fsprogs",
    "tune2fs": "e2fsprogs",
    "lsinitramfs": "initramfs-tools-core",
    "unmkinitramfs": "initramfs-tools-core",
    "dpkg-buildpackage": "dpkg-dev",
    "dpkg-deb": "dpkg",
    "chroot": "coreutils",
    "mount": "mount",
    "umount": "mount",
    "zstd": "zstd",
    "lz4": "lz4",
    "lzop": "lzop",
    "cpio": "cpio",
    "tgtd": "tgt",
    "tgtadm": "tgt",
    "tgt-admin": "tgt",
    "dumpe2fs": "e2fsprogs",
    "cp": "coreutils",
    "dnsmasq": "dnsmasq-base",
    "qemu-system-x86_64": "qemu-system-x86",
    "iscsiadm": "open-iscsi",
    "shellcheck": "shellcheck",
    "diffoscope": "diffoscope-minimal",
    "unshare": "util-linux",
    "ip": "iproute2",
}


def missing_tool(tool: str) -> PipelineError:
    package = TOOL_PACKAGES.get(tool)
    hint = f"install it with: apt-get install {package}" if package else None
    return PipelineError(f"required tool not found: {tool}", hint=hint)


def require_tools(tools: Sequence[str]) -> None:
    """Fail with one message listing every missing tool and its package."""
    missing = [t for t in tools if shutil.which(t, path=PATH) is None]
    if not missing:
        return
    packages = sorted({TOOL_PACKAGES.get(t, t) for t in missing})
    raise PipelineError("required tools not found: " + ", ".join(missing),
                        hint="install them with: apt-get install " + " ".join(packages))


@contextmanager
def step(name: str) -> Iterator[None]:
    """Print when a step starts and ends, with its duration."""
    start = time.monotonic()
    print(f"==> {name}: start", flush=True)
    try:
        yield
    except BaseException:
        print(f"==> {name}: FAILED after {time.monotonic() - start:.1f}s", flush=True)
        raise
    print(f"==> {name}: done in {time.monotonic() - start:.1f}s", flush=True)


def tool_version(argv: Sequence[str]) -> str:
    """First line a tool prints for its version, or 'unknown'."""
    try:
        text = run(argv, check=False)  # some tools (mke2fs) print it on stderr
    except PipelineError:
        return "unknown"
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return "unknown"


class Background:
    """A long-running tool (dnsmasq, tgtd, qemu) started by us, output to a log.

    It runs in its own session so that stopping it reaches its children too,
    and it is stopped by its own process id, never by name.
    """

    def __init__(self, argv: Sequence[str | os.PathLike[str]], log: os.PathLike[str],
                 *, env: Mapping[str, str] | None = None) -> None:
        self.argv = _argv(argv)
        self.log = log
        with open(log, "ab") as handle:
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=handle,
                                         stderr=subprocess.STDOUT, env=clean_env(env),
                                         start_new_session=True)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait(self, timeout: float) -> int | None:
        """Exit status, or None if still running after ``timeout`` seconds."""
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM its process group, then SIGKILL what is left after ``grace``."""
        if self.proc.poll() is None:
            for sig in (15, 9):
                try:
                    os.killpg(self.proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    self.proc.wait(timeout=grace)
                    break
                except subprocess.TimeoutExpired:
                    continue
        self.proc.wait()
