"""pipeline/runner.py, exercised with real tiny commands."""

from __future__ import annotations

import os
import re
import shlex
import time

import pytest

from pipeline import runner
from pipeline.errors import PipelineError
from pipeline.runner import CommandError


def env_of(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


@pytest.fixture
def empty_path(tmp_path, monkeypatch):
    """The runner's fixed PATH pointed at an empty folder: no tool is found."""
    d = tmp_path / "bin"
    d.mkdir()
    monkeypatch.setattr(runner, "PATH", str(d))
    return d


# -- run ---------------------------------------------------------------------

def test_run_returns_stdout_and_stderr_combined():
    out = runner.run(["sh", "-c", "echo one; echo two >&2; printf three"])
    assert out == "one\ntwo\nthree"


def test_run_true_returns_empty():
    assert runner.run(["true"]) == ""


def test_run_accepts_path_objects(tmp_path):
    f = tmp_path / "x.txt"
    f.write_text("content\n")
    assert runner.run(["cat", f]) == "content\n"


def test_run_cwd(tmp_path):
    assert runner.run(["pwd"], cwd=tmp_path).strip() == str(tmp_path)


def test_failure_raises_command_error_with_command_line():
    argv = ["sh", "-c", "echo 'it went wrong' >&2; exit 3"]
    with pytest.raises(CommandError) as info:
        runner.run(argv)
    exc = info.value
    assert isinstance(exc, PipelineError)
    assert exc.returncode == 3
    assert exc.argv == argv
    message = str(exc)
    assert "exit status 3" in message
    assert shlex.join(argv) in message
    assert "  | it went wrong" in message


def test_false_raises():
    with pytest.raises(CommandError) as info:
        runner.run(["false"])
    assert info.value.returncode == 1
    assert "false" in str(info.value)


def test_failure_message_has_only_the_tail():
    script = "for i in $(seq 1 40); do echo line$i; done; exit 4"
    with pytest.raises(CommandError) as info:
        runner.run(["sh", "-c", script])
    shown = [line[4:] for line in str(info.value).splitlines() if line.startswith("  | ")]
    assert shown == [f"line{i}" for i in range(41 - runner.TAIL_LINES, 41)]
    assert info.value.tail.splitlines()[0] == f"line{41 - runner.TAIL_LINES}"


def test_check_false_returns_output_of_failing_command():
    assert runner.run(["sh", "-c", "echo partial; exit 5"], check=False) == "partial\n"


def test_environment_is_clean(monkeypatch):
    monkeypatch.setenv("PIPELINE_TEST_LEAK", "must-not-pass")
    monkeypatch.setenv("LANG", "de_DE.ISO-8859-1")
    monkeypatch.setenv("TZ", "Europe/Berlin")
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    env = env_of(runner.run(["env"]))
    assert env["LANG"] == "C.UTF-8"
    assert env["LC_ALL"] == "C.UTF-8"
    assert env["TZ"] == "UTC"
    assert env["PATH"] == runner.PATH
    assert "PIPELINE_TEST_LEAK" not in env
    assert "SOURCE_DATE_EPOCH" not in env


def test_source_date_epoch_passed_when_set(monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    env = env_of(runner.run(["env"]))
    assert env["SOURCE_DATE_EPOCH"] == "1700000000"


def test_proxy_passed_through(monkeypatch):
    monkeypatch.setenv("http_proxy", "http://proxy.example:3128")
    assert env_of(runner.run(["env"]))["http_proxy"] == "http://proxy.example:3128"


def test_extra_env_merged(monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    env = env_of(runner.run(["env"], env={"FOO": "bar", "SOURCE_DATE_EPOCH": "42"}))
    assert env["FOO"] == "bar"
    assert env["SOURCE_DATE_EPOCH"] == "42"   # the caller's value wins
    assert env["TZ"] == "UTC"                 # and the clean base is kept


def test_output_and_output_bytes_get_the_clean_environment(monkeypatch):
    monkeypatch.setenv("PIPELINE_TEST_LEAK", "x")
    env = env_of(runner.output(["env"], env={"FOO": "bar"}))
    assert env["TZ"] == "UTC" and env["FOO"] == "bar" and "PIPELINE_TEST_LEAK" not in env
    env = env_of(runner.output_bytes(["env"], env={"FOO": "baz"}).decode())
    assert env["TZ"] == "UTC" and env["FOO"] == "baz" and "PIPELINE_TEST_LEAK" not in env


def test_stdin_is_dev_null():
    assert runner.run(["readlink", "/proc/self/fd/0"]).strip() == "/dev/null"
    # a command reading stdin gets EOF at once (bounded, in case it does not)
    start = time.monotonic()
    out = runner.run(["sh", "-c", "timeout 5 cat; echo rc=$?"])
    assert out == "rc=0\n"
    assert time.monotonic() - start < 4


def test_output_stdin_is_dev_null():
    assert runner.output(["readlink", "/proc/self/fd/0"]) == "/dev/null"
    assert runner.output_bytes(["readlink", "/proc/self/fd/0"]) == b"/dev/null\n"


def test_echo_streams_lines(capsys):
    out = runner.run(["sh", "-c", "echo alpha; echo beta >&2"], echo=True)
    assert out == "alpha\nbeta\n"
    assert capsys.readouterr().out == "    alpha\n    beta\n"


def test_no_echo_prints_nothing(capsys):
    runner.run(["sh", "-c", "echo alpha"])
    assert capsys.readouterr().out == ""


# -- missing tools -----------------------------------------------------------

def test_missing_tool_names_debian_package(empty_path):
    with pytest.raises(PipelineError) as info:
        runner.run(["mmdebstrap", "--version"])
    assert not isinstance(info.value, CommandError)
    assert "required tool not found: mmdebstrap" in str(info.value)
    assert info.value.hint == "install it with: apt-get install mmdebstrap"


@pytest.mark.parametrize("call", [runner.run, runner.output, runner.output_bytes])
def test_missing_tool_package_differs_from_tool(empty_path, call):
    with pytest.raises(PipelineError) as info:
        call(["mkfs.ext4", "-V"])
    assert "mkfs.ext4" in str(info.value)
    assert "apt-get install e2fsprogs" in str(info.value)


def test_missing_unknown_tool_has_no_hint(empty_path):
    with pytest.raises(PipelineError) as info:
        runner.run(["no-such-tool-xyz"])
    assert info.value.hint is None
    assert "no-such-tool-xyz" in str(info.value)


def test_absolute_path_that_does_not_exist(tmp_path):
    with pytest.raises(CommandError) as info:
        runner.run([str(tmp_path / "nope")])
    assert info.value.returncode == 127


def test_require_tools_lists_all_missing(empty_path):
    fake = empty_path / "cpio"
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    with pytest.raises(PipelineError) as info:
        runner.require_tools(["mkfs.ext4", "cpio", "debugfs", "dnsmasq", "mmdebstrap"])
    exc = info.value
    assert exc.message == "required tools not found: mkfs.ext4, debugfs, dnsmasq, mmdebstrap"
    assert exc.hint == "install them with: apt-get install dnsmasq-base e2fsprogs mmdebstrap"
    assert "cpio" not in str(exc)


def test_require_tools_all_present():
    assert runner.require_tools(["sh", "true", "cpio"]) is None


def test_tool_version_of_missing_tool(empty_path):
    assert runner.tool_version(["mmdebstrap", "--version"]) == "unknown"


def test_tool_version_first_nonblank_line():
    assert runner.tool_version(["sh", "-c", "echo; echo '  tool 1.2 ' >&2; echo more"]) == "tool 1.2"


# -- output, output_bytes ----------------------------------------------------

def test_output_keeps_stderr_out():
    assert runner.output(["sh", "-c", "echo warning >&2; echo '  value  '"]) == "value"


def test_output_failure_includes_stderr():
    with pytest.raises(CommandError) as info:
        runner.output(["sh", "-c", "echo out; echo bad thing >&2; exit 2"])
    assert info.value.returncode == 2
    assert "bad thing" in str(info.value)


def test_output_check_false():
    assert runner.output(["sh", "-c", "echo x; exit 1"], check=False) == "x"


def test_output_bytes_with_input():
    data = bytes(range(256)) * 3
    assert runner.output_bytes(["cat"], input=data) == data
    assert runner.output_bytes(["tr", "a-z", "A-Z"], input=b"abc\n") == b"ABC\n"


def test_output_bytes_keeps_stderr_out_and_fails_with_it():
    assert runner.output_bytes(["sh", "-c", "printf '\\001\\002'; echo noise >&2"]) == b"\x01\x02"
    with pytest.raises(CommandError) as info:
        runner.output_bytes(["sh", "-c", "echo broken stream >&2; exit 1"], input=b"x")
    assert "broken stream" in str(info.value)


# -- step --------------------------------------------------------------------

DURATION = re.compile(r"^==> (.+): (done in|FAILED after) (\d+\.\d)s$")


def test_step_prints_start_and_done(capsys):
    with runner.step("bootstrap trixie"):
        print("working")
        time.sleep(0.15)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "==> bootstrap trixie: start"
    assert lines[1] == "working"
    m = DURATION.match(lines[2])
    assert m and m[1] == "bootstrap trixie" and m[2] == "done in"
    assert 0.1 <= float(m[3]) < 5
    assert len(lines) == 3


def test_step_prints_failed_and_reraises(capsys):
    with pytest.raises(KeyError):
        with runner.step("kernel x"):
            raise KeyError("boom")
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "==> kernel x: start"
    m = DURATION.match(lines[1])
    assert m and m[2] == "FAILED after"
    assert not any("done in" in line for line in lines)


def test_clean_env_does_not_modify_os_environ(monkeypatch):
    monkeypatch.delenv("PIPELINE_TEST_EXTRA", raising=False)
    env = runner.clean_env({"PIPELINE_TEST_EXTRA": "1"})
    assert env["PIPELINE_TEST_EXTRA"] == "1"
    assert "PIPELINE_TEST_EXTRA" not in os.environ


def test_timeout_stops_a_silent_command():
    start = time.monotonic()
    with pytest.raises(PipelineError):
        runner.run(["sleep", "1.5"], timeout=0.2)
    assert time.monotonic() - start < 1.0
