"""``msgsrv``'s command line as a typer user expects it: help, version, bad values,
environment variables, one source for every default, the banner, and ``user add``
asking only what it must."""

from __future__ import annotations

import dataclasses
import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest
import typer.main

from csce513msg.backends.common import BackendConfig
from csce513msg.cli import msgsrv
from csce513msg.cli.banner import client_command, reachable
from csce513msg.hub import HubConfig
from csce513msg.protocol import VERSION_MAJOR, VERSION_MINOR

MSGSRV = [sys.executable, "-m", "csce513msg.cli.msgsrv"]
ROOT = Path(__file__).resolve().parents[2]


def run(*args: str, env: dict[str, str] | None = None, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*MSGSRV, *args], input=stdin, capture_output=True, text=True, timeout=60, env=env,
        cwd=ROOT,
    )  # fmt: skip


def test_help_shows_the_server_options_in_panels_and_the_commands() -> None:
    for flag in ("--help", "-h"):
        done = run(flag)
        assert done.returncode == 0, done.stderr
        for expected in ("--backend", "--max-frame", "--durability", "Network", "Limits", "TLS", "user", "serve"):
            assert expected in done.stdout, expected
        assert "MSGSRV_PORT" in done.stdout  # the environment variable a deployment sets


def test_version_names_the_package_and_the_protocol() -> None:
    done = run("--version")
    assert done.returncode == 0
    assert re.fullmatch(rf"msgsrv \d+\.\d+\.\d+\S* \(protocol {VERSION_MAJOR}\.{VERSION_MINOR}\)\n", done.stdout)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("--port", "99999"), "--port"),
        (("--backend", "nope"), "'nope' is not one of"),
        (("--durability", "sideways"), "--durability"),
        (("--log-level", "loud"), "--log-level"),
        (("--max-frame", "10"), "--max-frame"),
        (("--window", "0"), "--window"),
    ],
)
def test_a_bad_value_is_a_usage_error_not_a_traceback(args: tuple[str, ...], says: str) -> None:
    done = run(*args, "--durability", "memory") if "--durability" not in args else run(*args)
    assert done.returncode == 2
    assert says in done.stderr
    assert "Traceback" not in done.stderr


def test_limits_that_cannot_work_together_exit_2_with_the_reason() -> None:
    done = run("--durability", "memory", "--low-water", "10", "--high-water", "5")
    assert done.returncode == 2
    assert "low-water mark" in done.stderr


def test_options_come_from_the_environment(tmp_path: Path) -> None:
    env = {**os.environ, "MSGSRV_PORT": "0", "MSGSRV_BACKEND": "poll", "MSGSRV_DURABILITY": "memory"}
    env["MSGSRV_DATA_DIR"] = str(tmp_path)
    proc = subprocess.Popen([*MSGSRV, "--kdf-cost", "test"], env=env, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        lines = _read_until(proc, "connect: ")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    banner = "".join(lines)
    assert "backend poll" in banner
    port = re.search(r"listening on 127\.0\.0\.1:(\d+)", banner)
    assert port and port.group(1) != "5130"
    assert f"connect: msg --server 127.0.0.1:{port.group(1)} --user NAME" in banner
    assert proc.returncode == 0  # SIGTERM: goodbye, exit 0


def test_the_tls_banner_gives_the_client_command_with_the_fingerprint(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [*MSGSRV, "--port", "0", "--tls", "--data-dir", str(tmp_path), "--kdf-cost", "test", "--durability", "memory"],
        stdout=subprocess.PIPE, text=True, cwd=ROOT,
    )  # fmt: skip
    try:
        banner = "".join(_read_until(proc, "connect: "))
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    fingerprint = re.search(r"fingerprint ((?:[0-9A-F]{2}:){31}[0-9A-F]{2})", banner)
    assert fingerprint
    command = rf"connect: msg --server 127\.0\.0\.1:\d+ --user NAME --fingerprint {fingerprint.group(1)}"
    assert re.search(command, banner)


def test_a_wildcard_address_lists_addresses_a_client_can_dial() -> None:
    addresses = reachable("0.0.0.0")
    assert addresses[-1] == "127.0.0.1"  # loopback last: the LAN ones are what students need
    assert "0.0.0.0" not in addresses
    assert all(":" not in a for a in addresses)  # 0.0.0.0 is IPv4 only
    assert reachable("10.1.2.3") == ["10.1.2.3"]
    assert client_command("fe80::1", 5130, None) == "msg --server [fe80::1]:5130 --user NAME"


def test_every_flag_s_default_is_the_config_s() -> None:
    """One source: a flag named like a config field defaults to that field's default."""
    command = typer.main.get_command(msgsrv.app)
    defaults = {f.name: f.default for kind in (BackendConfig, HubConfig) for f in dataclasses.fields(kind)}
    checked = 0
    for param in command.params:
        if param.name in defaults:
            assert param.default == defaults[param.name], param.name
            checked += 1
    assert checked >= 25


def test_the_readme_flags_table_lists_every_server_flag() -> None:
    command = typer.main.get_command(msgsrv.app)
    flags = {opt for p in command.params for opt in p.opts if opt.startswith("--")}
    flags -= {"--help", "--install-completion", "--show-completion"}
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("## Server flags") :]
    listed = set(re.findall(r"`(--[a-z-]+)`", table[: table.index("\n## ", 5)]))
    assert flags - listed == set(), "README's flags table lacks these"
    assert listed - flags == set(), "README's flags table lists flags msgsrv does not have"


# ---- msgsrv user add asks only what it must ---------------------------------------------


def _pty_run(args: list[str], answers: list[str], timeout: float = 30.0) -> tuple[int, str]:
    """Run ``msgsrv`` on a terminal, typing each answer when a prompt (ending in ': ') appears."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: msgsrv on the terminal
        os.chdir(ROOT)
        os.execv(sys.executable, [*MSGSRV, *args])
    output, answered, deadline = b"", 0, time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.5)
            if not ready:
                continue
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            output += chunk
            if output[answered:].rstrip().endswith(b":") and answers:  # a new prompt
                os.write(fd, answers.pop(0).encode() + b"\n")
                answered = len(output)
    finally:
        os.close(fd)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), output.decode(errors="replace")


def test_user_add_checks_the_name_before_asking_for_a_password(tmp_path: Path) -> None:
    first = run("user", "add", "alice", "--data-dir", str(tmp_path), "--kdf-cost", "test", stdin="longenough1\n")
    assert first.returncode == 0, first.stderr
    status, output = _pty_run(["user", "add", "alice", "--data-dir", str(tmp_path), "--kdf-cost", "test"], [])
    assert status == 1
    assert "exists already" in output
    assert "password" not in output.lower().replace("exists already", "")


def test_user_add_refuses_a_short_password_before_asking_again(tmp_path: Path) -> None:
    status, output = _pty_run(
        ["user", "add", "bob", "--data-dir", str(tmp_path), "--kdf-cost", "test"], ["short", "short"]
    )
    assert status == 1
    assert "at least 8 characters" in output
    assert "again" not in output


def test_user_add_on_a_terminal_asks_twice_and_adds(tmp_path: Path) -> None:
    status, output = _pty_run(
        ["user", "add", "carol", "--data-dir", str(tmp_path), "--kdf-cost", "test"], ["longenough1", "longenough1"]
    )
    assert status == 0, output
    assert "again" in output and "added carol (student)" in output


def _read_until(proc: subprocess.Popen[str], marker: str, timeout: float = 30.0) -> list[str]:
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if line.startswith(marker):
            return lines
    raise AssertionError(f"no {marker!r} line in {lines!r}")


def test_a_server_option_before_a_command_is_refused_not_ignored(tmp_path: Path) -> None:
    done = run("--data-dir", str(tmp_path), "user", "list")
    assert done.returncode == 2
    assert "--data-dir before `user` would be ignored" in done.stderr
    assert not (tmp_path / "csce513msg.db").exists()
