"""``msg``'s conventions in pipe mode and its config: real processes against a real server
(the client's behaviour, so one backend)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from csce513msg.cli.msg import _address
from tests.conformance.wire import register
from tests.fixtures import Names
from tests.servers import IS_LINUX, ServerProcess
from tests.system.test_cli import msg_cmd

BACKENDS = ["epoll" if IS_LINUX else "select"]
SERVER_FLAGS = ("--max-text", "100")
MSG = [sys.executable, "-m", "csce513msg.cli.msg"]
MSGSRV = [sys.executable, "-m", "csce513msg.cli.msgsrv"]


def run(cmd: list[str], script: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, input=script, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(
    ("given", "address"),
    [
        ("localhost", ("localhost", 5130)),
        ("example.org:80", ("example.org", 80)),
        ("10.1.2.3", ("10.1.2.3", 5130)),
        ("[::1]:7000", ("::1", 7000)),
        ("[::1]", ("::1", 5130)),
        ("::1", ("::1", 5130)),
        (":6000", ("127.0.0.1", 6000)),
    ],
)
def test_server_is_host_and_an_optional_port(given: str, address: tuple[str, int]) -> None:
    assert _address(given) == address


def test_a_message_over_the_servers_limit_is_refused_before_it_is_sent(server: ServerProcess, names: Names) -> None:
    alice, bob = names("alice"), names("bob")
    register(server, bob)
    done = run(msg_cmd(server, alice), f"/msg {bob} {'x' * 150}\n/msg {bob} short\n")
    assert done.returncode == 1
    assert "message too long: 150 bytes; the server takes at most 100" in done.stderr
    assert "short" in done.stdout and "x" * 150 not in done.stdout


def test_history_pages_back_with_more(server: ServerProcess, names: Names) -> None:
    alice, bob = names("alice"), names("bob")
    register(server, bob)
    sent = run(msg_cmd(server, alice), "".join(f"/msg {bob} m{i:02}\n" for i in range(30)))
    assert sent.returncode == 0, sent.stderr
    done = run(msg_cmd(server, alice), f"/history {bob}\n/more\n/more\n")
    assert done.returncode == 0, done.stderr
    shown = [f"m{i:02}" for i in range(30) if f": m{i:02}\n" in done.stdout]
    assert len(shown) == 30  # 20, then the 10 before them
    assert f"(20 earlier messages with {bob}: /more for more)" in done.stdout
    assert f"(10 earlier messages with {bob}: /more for more)" in done.stdout
    assert f"(no earlier messages with {bob})" in done.stdout


def test_a_password_never_goes_in_clear_to_another_machine_unasked(names: Names) -> None:
    """192.0.2.1 (TEST-NET-1) is refused before any connection is tried: no traffic leaves."""
    done = run([*MSG, "--server", "192.0.2.1:5130", "--user", names("alice")], "")
    assert done.returncode == 2
    assert "refusing to send a password in clear to 192.0.2.1:5130" in done.stderr


def test_invite_writes_a_config_that_connects_with_tls(names: Names, tmp_path: Path) -> None:
    server = ServerProcess(BACKENDS[0], "--tls")
    try:
        alice = names("alice")
        config = tmp_path / "msg.toml"
        invited = run([*MSGSRV, "invite", "--host", "127.0.0.1", "--port", str(server.port), "--data-dir",
                       server.data_dir, "--output", str(config)])  # fmt: skip
        assert invited.returncode == 0, invited.stderr
        assert f"msg --server 127.0.0.1:{server.port} --fingerprint " in invited.stdout
        text = config.read_text()
        assert f'server = "127.0.0.1:{server.port}"' in text and "fingerprint = " in text
        done = run([*MSG, "--config", str(config), "--user", alice, "--register"], "/who\n")
        assert done.returncode == 0, done.stderr
        assert "certificate matches the given fingerprint" in done.stdout and f"online: {alice}" in done.stdout
    finally:
        server.stop()
