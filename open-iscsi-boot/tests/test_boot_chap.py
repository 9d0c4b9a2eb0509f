"""open-iscsi-boot: CHAP credentials from the per-machine initrd.

Contract: /etc/open-iscsi-boot/chap, two lines username=<user> and
password=<secret>, values 1..255 of [A-Za-z0-9._:@-].  Checked here:
(a) lib.sh's reader, run by every shell the code meets (good files, every
    kind of bad file, and that no message or trace shows a value);
(b) the iscsiadm call that puts the credentials into a node record;
(c) local-top run for real in a chroot (busybox and klibc's sh, fake
    iscsiadm/iscsid/blkid... recording their argv): the records get CHAP
    before any login, the password is on no console and in no trace, and
    /run/open-iscsi-boot is root-only; without the file nothing changes;
    a bad file stops the boot with a message;
(d) the handover installs the records root-only; iscsi-boot-status never
    shows the password.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from bootsh import (DM_STATUS, INITIATOR, IQN, LIB, LOCAL_TOP, host_path, run_handover, run_sh, run_status,
                    write, write_exec)

USER = "machine-52-54-00-12-34-56"
PASSWORD = "Zq7.v_Pw:42@-k9"          # every special character of the charset
CHAP = f"username={USER}\npassword={PASSWORD}\n"
CHAP_FILE = "/etc/open-iscsi-boot/chap"


def read_chap(shell, path: Path, trace: bool = False) -> tuple[int, str, str, str, subprocess.CompletedProcess]:
    proc = run_sh(shell, ("set -x\n" if trace else "") +
                  'oib_read_chap "$F"; rc=$?\nset +x\n'
                  'printf "%s\\n%s\\n%s\\n%s\\n" "$rc" "$OIB_CHAP_USER" "$OIB_CHAP_PASSWORD" "$OIB_ERROR"',
                  env={"F": str(path)})
    rc, user, password, error = proc.stdout.split("\n")[:4]
    return int(rc), user, password, error, proc


# ---------------------------------------------------------------------------
# (a) reading the file
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("text,user,password", [
    (CHAP, USER, PASSWORD),
    (f"password={PASSWORD}\nusername={USER}\n", USER, PASSWORD),          # either order
    (f"username={USER}\npassword={PASSWORD}", USER, PASSWORD),            # no final newline
    ("username=u\npassword=p\n", "u", "p"),                               # 1 character
    ("username=" + "U" * 255 + "\npassword=" + "p" * 255 + "\n", "U" * 255, "p" * 255),
    ("username=ABCXYZabcxyz0189._:@-\npassword=-@:_.9\n", "ABCXYZabcxyz0189._:@-", "-@:_.9"),
])
def test_read_chap_good(shell, tmp_path, text, user, password):
    path = tmp_path / "chap"
    path.write_text(text)
    rc, got_user, got_password, error, _ = read_chap(shell, path)
    assert (rc, got_user, got_password, error) == (0, user, password, "")


BAD_VALUE = "sEcReT-2"  # must never be printed, whichever line it is on

BAD_FILES = [
    ("", "is empty"),
    ("\n", "line 1 is empty"),
    (f"username={USER}\n", "has no password= line"),
    (f"password={BAD_VALUE}\n", "has no username= line"),
    (f"username={USER}\npassword={BAD_VALUE}\n\n", "line 3 is empty"),
    (f"username={USER}\npassword={BAD_VALUE}\nextra=1\n", "line 3 is neither username= nor password="),
    (f"# credentials\nusername={USER}\npassword={BAD_VALUE}\n", "line 1 is neither"),
    (f"username={USER}\npasword={BAD_VALUE}\n", "line 2 is neither"),
    (f"username={USER}\npassword={BAD_VALUE}\npassword={BAD_VALUE}x\n", "line 3 gives password= a second time"),
    (f"username={USER}\nusername={USER}\npassword={BAD_VALUE}\n", "line 2 gives username= a second time"),
    (f"username={USER}\r\npassword={BAD_VALUE}\r\n", "line 1 ends in a carriage return"),
    (f"username={USER}\npassword={BAD_VALUE}\r\n", "line 2 ends in a carriage return"),
    (f"username={USER}\npassword=\n", "line 2: the password is empty"),
    (f"username=\npassword={BAD_VALUE}\n", "line 1: the username is empty"),
    (f"username={USER}\npassword={BAD_VALUE} x\n", "line 2: the password has characters other than"),
    (f"username={USER}\npassword='{BAD_VALUE}'\n", "the password has characters other than"),
    (f"username={USER}\npassword={BAD_VALUE}$(reboot)\n", "the password has characters other than"),
    (f"username={USER}\npassword={BAD_VALUE}=x\n", "the password has characters other than"),
    (f"username={USER}\npassword={BAD_VALUE}\\\n", "the password has characters other than"),
    (f"username={USER}\npassword={BAD_VALUE}\u00e9\n", "the password has characters other than"),
    (f"username={BAD_VALUE}/x\npassword={PASSWORD}\n", "line 1: the username has characters other than"),
    (f"username={USER}\npassword={BAD_VALUE}{'x' * 248}\n", "line 2: the password is longer than 255"),
    (f" username={USER}\npassword={BAD_VALUE}\n", "line 1 is neither"),
    (f"USERNAME={USER}\npassword={BAD_VALUE}\n", "line 1 is neither"),
]


@pytest.mark.parametrize("text,message", BAD_FILES)
def test_read_chap_bad(shell, tmp_path, text, message):
    path = tmp_path / "chap"
    path.write_text(text)
    rc, user, password, error, proc = read_chap(shell, path)
    assert (rc, user, password) == (1, "", "")
    assert error.startswith(f"{path}")
    assert message in error
    for shown in (error, proc.stdout.split("\n", 3)[3], proc.stderr):
        assert BAD_VALUE not in shown and PASSWORD not in shown


def test_read_chap_not_a_file(shell, tmp_path):
    (tmp_path / "chap").mkdir()
    rc, _, _, error, _ = read_chap(shell, tmp_path / "chap")
    assert rc == 1 and error == f"{tmp_path}/chap: not a readable file; expected exactly two lines, " \
                                 "username=<user> and password=<secret>"
    rc, _, _, error, _ = read_chap(shell, tmp_path / "none")
    assert rc == 1 and "not a readable file" in error


def test_read_chap_is_never_traced(shell, tmp_path):
    path = tmp_path / "chap"
    path.write_text(CHAP)
    rc, user, password, _, proc = read_chap(shell, path, trace=True)
    assert (rc, user, password) == (0, USER, PASSWORD)
    assert PASSWORD not in proc.stderr
    assert "oib_read_chap" in proc.stderr  # tracing was on around it
    # and it is on again afterwards
    proc = run_sh(shell, f'set -x; oib_read_chap "{path}"; : after-marker')
    assert ": after-marker" in proc.stderr.replace("'", "")
    assert PASSWORD not in proc.stderr


def test_read_chap_leaves_no_copy_in_scratch_variables(shell, tmp_path):
    path = tmp_path / "chap"
    path.write_text(CHAP)
    proc = run_sh(shell, f'oib_read_chap "{path}"; OIB_CHAP_PASSWORD=; set')
    assert proc.returncode == 0
    assert PASSWORD not in proc.stdout


# ---------------------------------------------------------------------------
# (b) the iscsiadm call
# ---------------------------------------------------------------------------

FAKE_ISCSIADM_ARGV = """#!/bin/sh
# records its argv: one call per line, each argument followed by "|"
line=
for arg in "$@"; do line="$line$arg|"; done
printf '%s\\n' "$line" >>"$ARGV_LOG"
exit "${FAKE_RC:-0}"
"""


def argv_calls(log: Path) -> list[list[str]]:
    if not log.exists():
        return []
    return [line.split("|")[:-1] for line in log.read_text().splitlines()]


def auth_argv(portal: str, user: str = USER, password: str = PASSWORD) -> list[str]:
    return ["-m", "node", "-T", IQN, "-p", portal, "-o", "update",
            "-n", "node.session.auth.authmethod", "-v", "CHAP",
            "-n", "node.session.auth.username", "-v", user,
            "-n", "node.session.auth.password", "-v", password]


@pytest.mark.parametrize("rc", [0, 7])
def test_node_set_chap(shell, tmp_path, rc):
    bin_dir = tmp_path / "bin"
    write_exec(bin_dir / "iscsiadm", FAKE_ISCSIADM_ARGV)
    log = tmp_path / "argv"
    proc = run_sh(shell, f'OIB_CHAP_USER={USER}; OIB_CHAP_PASSWORD={PASSWORD}\n'
                         f'set -x\noib_node_set_chap "{IQN}" 192.0.2.1:3260; echo "rc=$?"',
                  env={"PATH": f"{bin_dir}:{host_path()}",
                       "ARGV_LOG": str(log), "FAKE_RC": str(rc)})
    assert proc.stdout.strip() == f"rc={rc}"
    assert argv_calls(log) == [auth_argv("192.0.2.1:3260")]
    # the caller's trace shows the call, never the value
    assert "oib_node_set_chap" in proc.stderr and PASSWORD not in proc.stderr


# ---------------------------------------------------------------------------
# (c) local-top in a chroot that looks like the initramfs
# ---------------------------------------------------------------------------

def _shell_kinds() -> list[pytest.param]:
    kinds = []
    if shutil.which("busybox"):
        kinds.append(pytest.param("busybox", id="busybox"))
    if os.access("/usr/lib/klibc/bin/sh", os.X_OK):
        kinds.append(pytest.param("klibc", id="klibc"))
    return kinds


def _copy_file(root: Path, path: str) -> None:
    dest = root / path.lstrip("/")
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(os.path.realpath(path), dest)


def _install_busybox(root: Path) -> None:
    busybox = shutil.which("busybox")
    _copy_file(root, busybox)
    shutil.move(root / busybox.lstrip("/"), root / "bin/busybox")
    ldd = subprocess.run(["ldd", busybox], capture_output=True, text=True, check=False).stdout
    for line in ldd.splitlines():
        words = line.split()
        lib = words[2] if "=>" in words and len(words) > 2 else words[0]
        if lib.startswith("/"):
            _copy_file(root, lib)
    for applet in ("sh", "cat", "mkdir", "mv", "readlink", "sleep", "kill"):
        (root / "bin" / applet).symlink_to("busybox")


def _install_klibc(root: Path) -> None:
    for tool in Path("/usr/lib/klibc/bin").iterdir():
        shutil.copy2(tool, root / "bin" / tool.name)
    interp = subprocess.run(["readelf", "-l", "/usr/lib/klibc/bin/sh"], capture_output=True, text=True,
                            check=True).stdout.split("interpreter: ", 1)[1].split("]", 1)[0]
    _copy_file(root, interp)


# Stand-ins for the initramfs tools.  iscsiadm keeps a node database in
# /etc/iscsi/nodes as open-iscsi does (one file per record, "name = value").
FAKES = {
    "iscsiadm": """#!/bin/sh
line=
for arg in "$@"; do line="$line$arg|"; done
printf '%s\\n' "$line" >>/tmp/iscsiadm.argv
target= portal= op=show login=n
while [ "$#" -gt 0 ]; do
    case "$1" in
    -T) target=$2; shift ;;
    -p) portal=$2; shift ;;
    -o) op=$2; shift ;;
    --login) login=y ;;
    -n) name=$2; shift ;;
    -v) printf '%s = %s\\n' "$name" "$2" >>"/etc/iscsi/nodes/$target/$rec"; shift ;;
    -m) shift ;;
    esac
    shift
    rec="${portal%:*},${portal##*:}"
done
rec="${portal%:*},${portal##*:}"
[ "$login" = y ] && exit 0
case "$op" in
new) mkdir -p "/etc/iscsi/nodes/$target"; echo "node.name = $target" >"/etc/iscsi/nodes/$target/$rec" ;;
*) [ -e "/etc/iscsi/nodes/$target/$rec" ] || exit 21 ;;
esac
exit 0
""",
    "iscsid": "#!/bin/sh\necho 4242 >/run/iscsid.pid\n",
    "blkid": "#!/bin/sh\ncase \"$*\" in *LABEL*/dev/dm-0) echo root ;; *TYPE*/dev/dm-0) echo ext4 ;; esac\n",
    "dmsetup": f"#!/bin/sh\necho '{DM_STATUS}'\n",
    "ipconfig": "#!/bin/sh\necho ipconfig must not run: net-eth0.conf exists; exit 1\n",
    "modprobe": "#!/bin/sh\n", "multipath": "#!/bin/sh\n", "kpartx": "#!/bin/sh\n", "udevadm": "#!/bin/sh\n",
}

FUNCTIONS = """# stand-in for initramfs-tools' /scripts/functions
panic() { echo "PANIC: $*"; echo "$*" >/tmp/panic; }
wait_for_udev() { :; }
log_begin_msg() { echo "Begin: $*"; }
log_end_msg() { echo "done."; }
log_failure_msg() { echo "Failure: $*"; }
log_warning_msg() { echo "Warning: $*"; }
"""

NET_CONF = ("DEVICE='eth0'\nPROTO='dhcp'\nIPV4ADDR='192.0.2.10'\nIPV4BROADCAST='192.0.2.255'\n"
            "IPV4NETMASK='255.255.255.0'\nIPV4GATEWAY='0.0.0.0'\n")


def initramfs_root(tmp_path: Path, fake_root: Path, kind: str, chap: str | None,
                   local_top: str | None = None) -> Path:
    root = tmp_path / "initramfs"
    for d in ("bin", "sbin", "scripts/local-top", "conf/conf.d", "run", "etc/iscsi", "tmp", "var/lib",
              "dev/disk/by-label", "proc", "fakeproc", "usr/share/open-iscsi-boot"):
        (root / d).mkdir(parents=True)
    (root / "etc/open-iscsi-boot").mkdir(mode=0o700)
    (_install_busybox if kind == "busybox" else _install_klibc)(root)
    for name, text in FAKES.items():
        write_exec(root / "sbin" / name, text)
    write(root / "scripts/functions", FUNCTIONS)
    shutil.copy(LIB, root / "usr/share/open-iscsi-boot/lib.sh")
    (root / "scripts/local-top/open-iscsi-boot").write_text(local_top or LOCAL_TOP.read_text())
    shutil.copytree(fake_root / "sys", root / "sys", symlinks=True)
    write(root / "sys/class/net/eth0/type", "1")
    (root / "sys/class/net/eth0/device").mkdir()
    write(root / "fakeproc/cmdline", f"root=LABEL=root iscsitarget={IQN},192.0.2.1,[2001:db8::1] "
                                     f"iscsi_initiator={INITIATOR} ro")
    write(root / "fakeproc/uptime", "100.00 150.00")
    (root / "run/net-eth0.conf").write_text(NET_CONF)
    (root / "dev/dm-0").write_text("")
    (root / "dev/disk/by-label/root").symlink_to("../../dm-0")
    if chap is not None:
        (root / CHAP_FILE.lstrip("/")).write_text(chap)
        (root / CHAP_FILE.lstrip("/")).chmod(0o600)
    return root


def run_local_top(root: Path) -> subprocess.CompletedProcess:
    """local-top as init runs it, but traced (sh -x), as with init's "debug".

    In a private mount namespace with a real /proc (klibc's readlink -f
    needs it); the kernel command line and uptime come from /fakeproc.
    """
    return subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c",
         'mount -t proc proc "$1/proc" && exec chroot "$1" /bin/sh -x /scripts/local-top/open-iscsi-boot',
         "sh", str(root)],
        capture_output=True, text=True, timeout=120, check=False,
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "quiet": "n", "ROOT": "LABEL=root",
             "OIB_CMDLINE": "/fakeproc/cmdline", "OIB_PROC": "/fakeproc"})


def files_holding(root: Path, secret: str) -> set[str]:
    found = set()
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink() and secret.encode() in path.read_bytes():
            found.add(str(path.relative_to(root)))
    return found


needs_chroot = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("chroot") or not shutil.which("unshare"),
                                  reason="needs root, chroot and unshare")
STATUS_LINE = (f"open-iscsi-boot: root /dev/dm-0 (mpatha) paths 1/2 active portals "
               f"192.0.2.1:3260,[2001:db8::1]:3260 initiator {INITIATOR}")


@needs_chroot
@pytest.mark.parametrize("kind", _shell_kinds())
@pytest.mark.parametrize("traced", ["as-shipped", "fully-traced"])
def test_local_top_logs_in_with_chap(tmp_path, fake_root, kind, traced):
    script = LOCAL_TOP.read_text()
    if traced == "fully-traced":
        # without the script's own "set +x": lib.sh's CHAP functions must
        # still keep the password out of a trace of everything else
        assert script.count("\nset +x\n") == 1
        script = script.replace("\nset +x\n", "\n: tracing stays on\n")
    root = initramfs_root(tmp_path, fake_root, kind, CHAP, local_top=script)
    proc = run_local_top(root)
    console = proc.stdout + proc.stderr
    assert proc.returncode == 0, console
    assert f"initiator {INITIATOR}, CHAP user {USER}" in proc.stdout
    assert proc.stdout.rstrip().splitlines()[-1] == STATUS_LINE, console
    assert "Warning" not in proc.stdout and "No such file" not in proc.stderr, console

    calls = argv_calls(root / "tmp/iscsiadm.argv")
    portals = ["192.0.2.1:3260", "[2001:db8::1]:3260"]
    auth = [c for c in calls if "node.session.auth.password" in c]
    assert auth == [auth_argv(p) for p in portals]
    first_login = min(i for i, c in enumerate(calls) if "--login" in c)
    assert max(calls.index(a) for a in auth) < first_login

    # the password: nowhere on the console, not even in the trace; only in
    # the credentials file, the node records and the fake's own argv log
    assert PASSWORD not in console
    if traced == "fully-traced":
        assert "oib_node_set_chap" in proc.stderr and "oib_read_chap" in proc.stderr
    else:
        assert "+ set +x" in proc.stderr and "oib_node_set_chap" not in proc.stderr
    assert files_holding(root, PASSWORD) == {
        "etc/open-iscsi-boot/chap", "tmp/iscsiadm.argv",
        "etc/iscsi/nodes/" + IQN + "/192.0.2.1,3260", "etc/iscsi/nodes/" + IQN + "/[2001:db8::1],3260",
        "run/open-iscsi-boot/nodes/" + IQN + "/192.0.2.1,3260",
        "run/open-iscsi-boot/nodes/" + IQN + "/[2001:db8::1],3260"}
    saved = (root / f"run/open-iscsi-boot/nodes/{IQN}/192.0.2.1,3260").read_text().splitlines()
    assert {"node.session.auth.authmethod = CHAP", f"node.session.auth.username = {USER}",
            f"node.session.auth.password = {PASSWORD}", "node.startup = onboot"} <= set(saved)

    # the handover directory is root-only, all of it
    rundir = root / "run/open-iscsi-boot"
    modes = {str(p.relative_to(rundir)): stat.S_IMODE(p.stat().st_mode)
             for p in [rundir, *rundir.rglob("*")]}
    assert {m for p, m in modes.items() if (rundir / p).is_dir()} == {0o700}
    assert {m for p, m in modes.items() if (rundir / p).is_file()} == {0o600}
    assert {"state", "status", "sessions", f"nodes/{IQN}/192.0.2.1,3260"} <= set(modes)
    assert (rundir / "sessions").read_text().split("\n") == [
        "1 192.0.2.1:3260 eth0", "2 [2001:db8::1]:3260 eth0", ""]


@needs_chroot
@pytest.mark.parametrize("kind", _shell_kinds())
def test_local_top_without_chap_file_uses_no_auth(tmp_path, fake_root, kind):
    root = initramfs_root(tmp_path, fake_root, kind, None)
    proc = run_local_top(root)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.rstrip().splitlines()[-1] == STATUS_LINE
    assert "CHAP" not in proc.stdout
    calls = argv_calls(root / "tmp/iscsiadm.argv")
    assert sum("--login" in c for c in calls) >= 2
    assert not [c for c in calls if any(a.startswith("node.session.auth") for a in c)]
    assert "auth" not in (root / f"run/open-iscsi-boot/nodes/{IQN}/192.0.2.1,3260").read_text()


@needs_chroot
@pytest.mark.parametrize("kind", _shell_kinds())
def test_local_top_stops_on_a_bad_chap_file(tmp_path, fake_root, kind):
    root = initramfs_root(tmp_path, fake_root, kind, f"username={USER}\npassword={BAD_VALUE} !\n")
    proc = run_local_top(root)
    console = proc.stdout + proc.stderr
    assert proc.returncode == 1, console
    assert (root / "tmp/panic").read_text().strip() == (
        f"open-iscsi-boot: {CHAP_FILE}: line 2: the password has characters other than A-Z a-z 0-9 . _ : @ -")
    assert "PANIC: open-iscsi-boot: /etc/open-iscsi-boot/chap: line 2" in proc.stdout
    assert BAD_VALUE not in console
    assert not (root / "tmp/iscsiadm.argv").exists()  # stopped before iscsid and any login


# ---------------------------------------------------------------------------
# (d) the booted system
# ---------------------------------------------------------------------------

def test_handover_installs_records_root_only(tmp_path):
    rundir = tmp_path / "run"
    write(rundir / "state", f"OIB_TARGET='{IQN}'\nOIB_INITIATOR='{INITIATOR}'\n"
                            "OIB_PORTALS='192.0.2.1:3260'\nOIB_NETDEVS=''\nOIB_STATUS=''\n")
    record = f"node.startup = onboot\nnode.session.auth.password = {PASSWORD}"
    write(rundir / f"nodes/{IQN}/192.0.2.1,3260", record)                   # old layout
    write(rundir / f"nodes/{IQN}/198.51.100.1,3260,1/default", record)       # new layout
    for path in (rundir / "nodes").rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)   # even if /run had them readable
    etc = tmp_path / "etc-iscsi"
    db = etc / "nodes"
    write(db / f"{IQN}/192.0.2.1,3260", "old record")
    (db / f"{IQN}/192.0.2.1,3260").chmod(0o644)
    proc = run_handover("start", rundir, etc)
    assert proc.returncode == 0, proc.stderr
    assert PASSWORD not in proc.stdout + proc.stderr
    installed = [db / f"{IQN}/192.0.2.1,3260", db / f"{IQN}/198.51.100.1,3260,1/default"]
    for path in installed:
        assert path.read_text().strip() == record
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_IMODE((db / f"{IQN}/198.51.100.1,3260,1").stat().st_mode) == 0o700
    # the initiator name file is written as before (its own umask)
    assert (etc / "initiatorname.iscsi").exists()


def test_iscsi_boot_status_never_shows_the_password(fake_root, tmp_path):
    rundir = tmp_path / "run"
    write(rundir / "state", f"OIB_TARGET='{IQN}'\nOIB_INITIATOR='{INITIATOR}'\n"
                            "OIB_PORTALS='192.0.2.1:3260 [2001:db8::1]:3260'\n")
    write(rundir / f"nodes/{IQN}/192.0.2.1,3260", f"node.session.auth.password = {PASSWORD}")
    proc = run_status(fake_root, rundir, "-v")
    assert proc.stdout.startswith("open-iscsi-boot: root /dev/dm-0"), proc.stderr
    assert PASSWORD not in proc.stdout + proc.stderr
