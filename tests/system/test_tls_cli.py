"""``msg --tls`` as a process: trust on first use, then a changed certificate refused.

The CLI's trust handling does not depend on the server's I/O strategy: one backend.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path

from tests.fixtures import Names
from tests.servers import IS_LINUX, ServerProcess
from tests.system.test_cli import msg_cmd

BACKENDS = ["epoll" if IS_LINUX else "select"]
SERVER_FLAGS = ("--tls", "--data-dir", tempfile.mkdtemp(prefix="msgsrv-tlscli-"))


def run_msg(server: ServerProcess, user: str, config: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MSG_CONFIG_DIR": str(config)}
    cmd = msg_cmd(server, user, *extra)
    return subprocess.run(cmd, input="/who\n", capture_output=True, text=True, timeout=30, env=env)


def test_msg_tls_pins_on_first_use_and_refuses_a_changed_certificate(
    server: ServerProcess, names: Names, tmp_path: Path
) -> None:
    user = names("alice")
    first = run_msg(server, user, tmp_path, "--tls")
    assert first.returncode == 0, first.stdout
    assert "pinned certificate" in first.stdout and f"online: {user}" in first.stdout
    pins = json.loads((tmp_path / "known_servers.json").read_text())
    address = f"{server.host}:{server.port}"
    fingerprint = pins[address]
    assert fingerprint in server.banner  # the one the server window shows
    again = run_msg(server, user, tmp_path, "--tls")
    assert again.returncode == 0 and "matches the pinned fingerprint" in again.stdout
    (tmp_path / "known_servers.json").write_text(json.dumps({address: "11:" * 31 + "11"}))
    changed = run_msg(server, user, tmp_path, "--tls")
    assert changed.returncode == 1
    assert "REFUSED" in changed.stderr and "CHANGED" in changed.stderr
    assert "logged in" not in changed.stdout  # nothing was sent to the impostor
    explicit = run_msg(server, user, tmp_path, "--fingerprint", fingerprint)
    assert explicit.returncode == 0 and "matches the given fingerprint" in explicit.stdout
