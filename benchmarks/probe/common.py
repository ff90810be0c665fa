"""What every probe needs: a real ``msgsrv`` from a chosen source tree, and /proc figures."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks import proc

BANNER = re.compile(r"listening on (\S+):(\d+), pid (\d+)")
HERE = Path(__file__).resolve().parents[2]  # this source tree


class Server:
    """One ``msgsrv`` process on 127.0.0.1 and an ephemeral port, from ``tree``.

    Args:
        tree: the source tree to run the server from (default: this one).
        backend: the I/O strategy.
        flags: more ``msgsrv serve`` flags. By default the server registers users over
            the wire at the test KDF cost, in a fresh data directory.
        data_dir: reuse this data directory (e.g. for a restart).
        preexec: run in the child before exec (e.g. to lower RLIMIT_NOFILE).
    """

    def __init__(
        self, tree: Path | None = None, backend: str = "epoll", *flags: str, data_dir: str | None = None,
        preexec: Callable[[], None] | None = None,
    ) -> None:  # fmt: skip
        self.tree = (tree or HERE).resolve()
        self.backend = backend
        self.data_dir = data_dir or tempfile.mkdtemp(prefix=f"probe-{backend}-")
        self.log_path = Path(tempfile.mkstemp(prefix=f"probe-{backend}-", suffix=".log")[1])
        cmd = [
            sys.executable, "-m", "csce513msg.cli.msgsrv", "serve", "--backend", backend, "--port", "0",
            "--kdf-cost", "test", "--self-register", "--registrations-per-address", "1000000",
            "--data-dir", self.data_dir, *flags,
        ]  # fmt: skip
        env = {**os.environ, "PYTHONPATH": str(self.tree)}
        with self.log_path.open("w") as log:
            self.proc = subprocess.Popen(
                cmd, cwd=self.tree, env=env, stdout=subprocess.PIPE, stderr=log, text=True, preexec_fn=preexec
            )
        assert self.proc.stdout is not None
        banner = ""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            banner += line
            if line.startswith("limits:"):
                break
        match = BANNER.search(banner)
        if not match:
            self.stop()
            raise RuntimeError(f"msgsrv did not start: {banner}\n{self.log()}")
        self.host, self.port, self.pid = "127.0.0.1", int(match.group(2)), self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def sample(self) -> proc.Sample:
        return proc.sample(self.pid)

    def terminate(self, timeout: float = 300.0) -> float:
        """SIGTERM; return the seconds until the process exited (killed past ``timeout``)."""
        start = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return time.monotonic() - start

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout:
            self.proc.stdout.close()
