"""The ``msg`` client's own behaviour as a process: it does not depend on the
server's I/O strategy, so it runs against one backend (the default), not six."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
from pathlib import Path

import pytest

from tests.fixtures import Names
from tests.servers import IS_LINUX, ServerProcess
from tests.system.test_cli import MSG, MSGSRV, listener, msg_cmd, read_events

BACKENDS = ["epoll" if IS_LINUX else "select"]


def test_script_exit_status_and_human_output(server: ServerProcess, names: Names) -> None:
    alice, bob = names("alice"), names("bob")
    bob_proc = listener(server, bob)
    try:
        done = subprocess.run(
            msg_cmd(server, alice),
            input=f"/msg {bob} one\ntwo\n/who\n/quit\n",
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode == 0, done.stdout
        assert re.search(rf"^ ✓ \[\d\d:\d\d\] you -> {bob} 🔒: one$", done.stdout, re.M)  # one line, when stored
        assert re.search(rf"^ ✓ \[\d\d:\d\d\] you -> {bob} 🔒: two$", done.stdout, re.M)  # to the conversation
        assert "online: " in done.stdout
        texts = [read_events(bob_proc, "deliver")[-1]["text"] for _ in range(2)]
        assert texts == ["one", "two"]
    finally:
        assert bob_proc.stdin is not None
        bob_proc.stdin.close()
        assert bob_proc.wait(timeout=15) == 0  # end of input, nothing pending: success


@pytest.mark.parametrize("mux", ["select", "poll", "epoll"] if IS_LINUX else ["select", "poll"])
def test_every_mux_reads_commands_from_a_regular_file(
    server: ServerProcess, names: Names, tmp_path: Path, mux: str
) -> None:
    """epoll refuses regular files (EPERM); the client must still read them."""
    bob = names("bob")
    bob_proc = listener(server, bob)
    try:
        script = tmp_path / "script.txt"
        script.write_text(f"/msg {bob} via {mux}\n/help\n")
        with script.open() as stdin:
            done = subprocess.run(
                msg_cmd(server, names("alice"), "--mux", mux),
                stdin=stdin,
                capture_output=True,
                text=True,
                timeout=30,
            )
        assert done.returncode == 0, done.stdout + done.stderr
        assert "/msg USER TEXT" in done.stdout  # the help text
        assert read_events(bob_proc, "deliver")[-1]["text"] == f"via {mux}"
    finally:
        assert bob_proc.stdin is not None
        bob_proc.stdin.close()
        bob_proc.wait(timeout=15)


def test_bad_commands_and_login_refusal(server: ServerProcess, names: Names) -> None:
    alice = names("alice")
    done = subprocess.run(
        msg_cmd(server, alice), input="/nope\nhello nobody\n/msg\n", capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 1
    assert "! unknown command /nope" in done.stderr
    assert "! no conversation yet" in done.stderr
    assert "! usage: /msg USER TEXT" in done.stderr
    bad = subprocess.run(
        msg_cmd(server, "bad name!", account=False), input="", capture_output=True, text=True, timeout=30
    )
    assert bad.returncode == 2 and "invalid user name 'bad name!'" in bad.stderr  # checked before connecting
    wrong = subprocess.run(
        msg_cmd(server, alice), input="", capture_output=True, text=True, timeout=30,
        env={**os.environ, "MSG_PASSWORD": "not the password"},
    )  # fmt: skip
    assert wrong.returncode == 1 and "auth_failed: auth failed" in wrong.stderr


def test_msg_register_then_login_and_the_password_from_the_environment(server: ServerProcess, names: Names) -> None:
    carol = names("carol")
    new = subprocess.run(
        msg_cmd(server, carol, "--register", account=False), input="/who\n", capture_output=True, text=True, timeout=30
    )
    assert new.returncode == 0 and f"logged in as {carol} (student)" in new.stdout, new.stdout
    taken = subprocess.run(
        msg_cmd(server, carol, "--register", account=False), input="", capture_output=True, text=True, timeout=30
    )
    assert taken.returncode == 1 and "name_taken" in taken.stderr
    env = {k: v for k, v in os.environ.items() if k != "MSG_PASSWORD"}
    no_password = subprocess.run(msg_cmd(server, carol), input="", capture_output=True, text=True, timeout=30, env=env)
    assert no_password.returncode == 2 and "MSG_PASSWORD" in no_password.stderr  # no terminal to ask on


def test_cli_reports_an_unreachable_server(names: Names) -> None:
    done = subprocess.run(
        [*MSG, "--server", "127.0.0.1:1", "--user", "alice"], input="", capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 1 and "cannot connect" in done.stderr


def test_msgsrv_refuses_bad_choices_with_status_2() -> None:
    env = dict(os.environ)
    for args, reason in [  # typer checks the choices (in a box it wraps: compared without the box)
        (["--backend", "carrier-pigeon"], "'carrier-pigeon' is not one of 'threads', 'select'"),
        (["--hard-limit", "100"], "hard limit"),
        (["--max-chunk", "2M"], "the max chunk must be 2048 to 1048576 bytes"),
        (["--max-chunk", "2047"], "the max chunk must be 2048 to 1048576 bytes"),
        (["--log-level", "loud"], "'loud' is not one of 'debug', 'info'"),
    ]:
        done = subprocess.run([*MSGSRV, *args, "--port", "0"], capture_output=True, text=True, timeout=30, env=env)
        said = " ".join(done.stderr.replace("│", " ").split())
        assert done.returncode == 2 and reason in said, (args, done.stderr)


def test_msgsrv_help_lists_every_backend() -> None:
    out = subprocess.run([*MSGSRV, "--help"], capture_output=True, text=True, timeout=30).stdout
    for name in ("threads", "select", "poll", "epoll", "asyncio", "uvloop"):
        assert name in out


def test_tls_client_to_a_plaintext_port_fails_clearly(server: ServerProcess, names: Names) -> None:
    done = subprocess.run(
        [*msg_cmd(server, names("alice"), "--tls")],
        input="",
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "MSG_CONFIG_DIR": "/nonexistent-not-needed"},
    )
    assert done.returncode == 1
    assert "TLS handshake" in done.stderr and "--tls" in done.stderr
    server.wait_log("a TLS client on a plaintext port?")


def test_msg_reconnects_and_resends_what_was_not_acknowledged(names: Names, tmp_path: Path) -> None:
    """The server restarts (same port, same data): both clients come back by themselves, and
    a message typed while it was down is sent once it is up, and delivered once."""
    from tests.servers import start

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    flags = ("--port", str(port), "--data-dir", str(tmp_path))
    first = start(BACKENDS[0], *flags)
    alice, bob = names("alice"), names("bob")
    bob_proc, alice_proc = listener(first, bob), listener(first, alice)
    try:
        assert first.terminate() == 0
        read_events(alice_proc, "reconnecting")
        read_events(bob_proc, "reconnecting")
        assert alice_proc.stdin is not None
        alice_proc.stdin.write(f"/msg {bob} sent while the server was down\n")
        alice_proc.stdin.flush()
        second = start(BACKENDS[0], *flags)
        try:
            read_events(alice_proc, "reconnected", timeout=30)
            receipt = read_events(alice_proc, "receipt", timeout=30)[-1]
            assert receipt["state"] == "stored"
            delivered = read_events(bob_proc, "deliver", timeout=30)[-1]
            assert delivered["text"] == "sent while the server was down"
        finally:
            for proc in (alice_proc, bob_proc):
                assert proc.stdin is not None
                proc.stdin.close()
            assert alice_proc.wait(timeout=30) == 0 and bob_proc.wait(timeout=30) == 0
            second.stop()
    finally:
        for proc in (alice_proc, bob_proc):
            if proc.poll() is None:
                proc.kill()
        first.stop()


def test_history_command_shows_the_conversation(server: ServerProcess, names: Names) -> None:
    alice, bob = names("alice"), names("bob")
    bob_proc = listener(server, bob)
    try:
        script = f"/msg {bob} first\n/msg {bob} second\n/history {bob} 5\n"
        done = subprocess.run(
            msg_cmd(server, alice, "--json"), input=script, capture_output=True, text=True, timeout=30
        )
        assert done.returncode == 0, done.stdout
        events = [json.loads(line) for line in done.stdout.splitlines()]
        page = [e["text"] for e in events if e["event"] == "deliver" and e["history"]]
        assert page[-2:] == ["first", "second"]
        assert next(e for e in events if e["event"] == "history_end")["count"] == len(page)
    finally:
        assert bob_proc.stdin is not None
        bob_proc.stdin.close()
        bob_proc.wait(timeout=15)


def test_msg_keeps_its_device_token_and_logs_in_while_guesses_lock_the_account(
    server: ServerProcess, names: Names, tmp_path: Path
) -> None:
    """Five wrong guesses a minute used to lock the real user out for good; msg now keeps the
    device token of its first LoginOk (mode 0600) and its logins are throttled apart."""
    from csce513msg.client import Client, ServerError
    from csce513msg.protocol import ErrorCode
    from tests.conformance.wire import PASSWORD

    alice = names("alice")
    env = {**os.environ, "MSG_CONFIG_DIR": str(tmp_path)}
    first = subprocess.run(msg_cmd(server, alice), input="/who\n", capture_output=True, text=True, timeout=30, env=env)
    assert first.returncode == 0, first.stdout + first.stderr
    tokens = tmp_path / "tokens.json"
    assert tokens.stat().st_mode & 0o777 == 0o600
    (token,) = json.loads(tokens.read_text())[f"{server.host}:{server.port}"].values()
    assert len(token) == 32 and int(token, 16) >= 0
    for i in range(5):  # someone guesses alice's password
        with pytest.raises(ServerError):
            Client.connect(server.host, server.port, user=alice, password=f"guess {i}")
    with pytest.raises(ServerError) as locked:
        Client.connect(server.host, server.port, user=alice, password=PASSWORD)
    assert locked.value.code == ErrorCode.AUTH_THROTTLED  # without the token: locked out
    again = subprocess.run(
        msg_cmd(server, alice, account=False), input="/who\n", capture_output=True, text=True, timeout=30, env=env
    )
    assert again.returncode == 0 and "logged in as" in again.stdout, again.stdout + again.stderr
    assert json.loads(tokens.read_text())[f"{server.host}:{server.port}"][alice] == token


def test_msg_waits_for_a_full_server_and_keeps_what_was_typed(names: Names) -> None:
    """A server at its connection cap answers SERVER_FULL (a busy one, RATE_LIMITED to a
    login): msg tries again after a random, growing pause instead of exiting, and the
    line typed meanwhile is sent once it is in."""
    from tests.conformance.wire import RawConn, register
    from tests.servers import start

    server = start(BACKENDS[0], "--max-connections", "1")
    alice, bob = names("alice"), names("bob")
    try:
        register(server, alice)
        register(server, bob)
        holder = RawConn(server)  # takes the one place
        holder.welcome()
        proc = subprocess.Popen(
            msg_cmd(server, alice, "--json", account=False), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert proc.stdin is not None
        proc.stdin.write(f"/msg {bob} typed while the server was full\n")
        proc.stdin.flush()
        read_events(proc, "busy")
        holder.close()  # a place frees up
        receipt = read_events(proc, "receipt", timeout=30)[-1]
        assert receipt["state"] == "stored"
        proc.stdin.close()
        assert proc.wait(timeout=30) == 0  # the refusals were not failures
    finally:
        server.stop()
