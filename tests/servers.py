"""Start and stop real ``msgsrv`` processes on 127.0.0.1 for the tests."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from csce513msg.backends import BACKENDS, BackendUnavailable, load

BANNER = re.compile(r"listening on (\S+):(\d+), pid (\d+)")


def fingerprint_of(server: ServerProcess) -> str:
    """The certificate fingerprint a ``--tls`` server printed in its banner."""
    match = re.search(r"fingerprint ([0-9A-F:]{95})", server.banner)
    assert match, server.banner
    return match.group(1)


class ServerProcess:
    """One ``msgsrv`` process; its log (stderr) goes to a file the test can read.
    ``preexec`` runs in the child before exec (e.g. to lower RLIMIT_NOFILE)."""

    def __init__(self, backend: str, *flags: str, preexec: Callable[[], None] | None = None) -> None:
        self.backend = backend
        self.log_path = Path(tempfile.mkstemp(prefix=f"msgsrv-{backend}-", suffix=".log")[1])
        self._log = self.log_path.open("w")
        if "--kdf-cost" not in flags:  # tests log in many clients: hashes that take microseconds
            flags = (*flags, "--kdf-cost", "test")
        if "--no-self-register" not in flags and "--self-register" not in flags:  # tests register over the wire
            flags = (*flags, "--self-register", "--registrations-per-address", "1000000")
        if "--data-dir" not in flags:  # a fresh database for every server, never the user's own
            self.data_dir = tempfile.mkdtemp(prefix=f"msgsrv-{backend}-data-")
            flags = (*flags, "--data-dir", self.data_dir)
        cmd = [sys.executable, "-m", "csce513msg.cli.msgsrv", "serve", "--backend", backend, "--port", "0", *flags]
        # MSGSRV_TREE=DIR runs the servers from another source tree (e.g. a worktree of the commit
        # before a fix), to see a test fail there: the tests and clients stay this tree's
        tree = os.environ.get("MSGSRV_TREE") or None
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=self._log, text=True, cwd=tree, preexec_fn=preexec
        )
        assert self.proc.stdout is not None
        self.banner = ""
        match = None
        while not self.banner.endswith("\n") or not self.banner.splitlines()[-1].startswith("limits:"):
            line = self.proc.stdout.readline()  # blocks until the banner (or exit)
            if not line:
                break
            self.banner += line
            match = match or BANNER.search(line)
        if not match:
            log = self.log()  # before stop(), which closes it
            self.stop()
            raise RuntimeError(f"msgsrv --backend {backend} did not start: {self.banner!r}\n{log}")
        self.host, self.port, self.pid = "127.0.0.1", int(match.group(2)), self.proc.pid

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text()

    def wait_log(self, text: str, timeout: float = 10.0) -> str:
        """Wait until ``text`` appears in the server log; return the log."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            log = self.log()
            if text in log:
                return log
            time.sleep(0.05)
        raise AssertionError(f"{text!r} not in the {self.backend} log:\n{self.log()[-3000:]}")

    def wait_line(self, pattern: str, timeout: float = 10.0) -> re.Match[str]:
        """Wait until a line of the server log matches the regular expression ``pattern``
        (``^`` and ``$`` are a line's ends); return the first match."""
        deadline = time.monotonic() + timeout
        while not (match := re.search(pattern, self.log(), re.MULTILINE)):
            if time.monotonic() > deadline:
                raise AssertionError(f"no line matches {pattern!r} in the {self.backend} log:\n{self.log()[-3000:]}")
            time.sleep(0.05)
        return match

    def connection_number(self, sock: socket.socket, timeout: float = 10.0) -> int:
        """The server's number for our connection ``sock`` (the N its log says "#N" for),
        read from its line "connect #N from HOST:PORT", our socket's address."""
        host, port = sock.getsockname()[:2]
        return int(self.wait_line(rf"connect #(\d+) from {re.escape(host)}:{port}$", timeout).group(1))

    def terminate(self, timeout: float = 15.0) -> int:
        """SIGTERM, then wait for the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    def stop(self) -> None:
        """Stop the process whatever state it is in (fixtures call this)."""
        if self.proc.poll() is None:
            try:
                self.terminate(10)
            except subprocess.TimeoutExpired:
                pass
        if self.proc.stdout:
            self.proc.stdout.close()
        self._log.close()
        self.log_path.unlink(missing_ok=True)


class External:
    """A server someone else runs (``--server HOST:PORT``): only its address is known."""

    def __init__(self, address: str) -> None:
        host, _, port = address.rpartition(":")
        self.host, self.port = host, int(port)
        self.backend = "external"


def require_backend(name: str) -> None:
    """Skip a backend this machine cannot run, except in CI, where it fails the run."""
    try:
        load(name)
    except BackendUnavailable as exc:
        if os.environ.get("CI"):
            pytest.fail(f"backend {name} must run in CI: {exc}")
        pytest.skip(str(exc))


def start(backend: str, *flags: str, preexec: Callable[[], None] | None = None) -> ServerProcess:
    require_backend(backend)
    return ServerProcess(backend, *flags, preexec=preexec)


ALL_BACKENDS = list(BACKENDS)
IS_LINUX = sys.platform.startswith("linux")
