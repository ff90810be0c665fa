"""The door, every backend: a cap on connections, and accept() out of descriptors.

- Past ``--max-connections`` a new client is accepted, told SERVER_FULL and closed;
  the ones inside keep working, and the log says so once, not once per refusal.
- Out of file descriptors (the server's RLIMIT_NOFILE lowered to ``LIMIT``, the cap far
  above it), ``accept`` fails with EMFILE and the connection stays in the backlog, so
  the listener stays readable: the server must back off, not spin at 100 % CPU, and
  log once per stretch, not once per attempt. When clients leave, it accepts again.

Each test starts its own server (the flags differ from every other module's).
"""

from __future__ import annotations

import os
import resource
import socket
import time

from benchmarks.proc import sample
from csce513msg.protocol import ErrorCode, Welcome
from tests.conformance.wire import RawConn
from tests.servers import ServerProcess, start

CAP = 5
LIMIT = 64  #: the server's open-file limit in the EMFILE test (an idle server holds 12-18)


def admitted(server: ServerProcess, timeout: float = 10.0) -> RawConn:
    """A new client the server serves (a Welcome); refused ones retry until ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        conn = RawConn(server)
        try:
            first = conn.recv()
        except (EOFError, OSError):
            first = None
        if isinstance(first, Welcome):
            return conn
        conn.close()
        assert time.monotonic() < deadline, f"no new client admitted within {timeout} s: {first}"
        time.sleep(0.05)


def test_past_the_cap_a_client_is_told_server_full_and_the_others_keep_working(backend: str) -> None:
    server = start(backend, "--max-connections", str(CAP), "--close-timeout", "1")
    try:
        assert f"at most {CAP} (--max-connections)" in server.banner
        inside = [RawConn(server) for _ in range(CAP)]
        for conn in inside:
            conn.welcome()
        for _ in range(3):  # over the cap: each is told why, then closed
            extra = RawConn(server)
            extra.expect_error(ErrorCode.SERVER_FULL)
            extra.expect_closed()
            extra.close()
        for i, conn in enumerate(inside):
            conn.alive(request_id=100 + i)  # the five inside are still served
        log = server.wait_log("server full")
        assert log.count("server full") == 1, log  # one line per stretch of refusals
        for conn in inside[:2]:
            conn.close()
        again = admitted(server)  # once the server has seen two go, two get in
        again.alive()
        admitted(server).close()
        again.close()
        for conn in inside[2:]:
            conn.close()
    finally:
        server.stop()


def test_out_of_descriptors_the_server_backs_off_and_recovers(backend: str) -> None:
    def low_limit() -> None:  # msgsrv raises soft to hard: lower both
        resource.setrlimit(resource.RLIMIT_NOFILE, (LIMIT, LIMIT))

    server = start(backend, "--max-connections", "1000", "--close-timeout", "1", preexec=low_limit)
    socks: list[socket.socket] = []
    try:
        assert "accept may fail (EMFILE)" in server.banner
        for _ in range(LIMIT + 30):  # more than it can hold: the rest wait in its backlog
            socks.append(socket.create_connection(server.address))
        deadline = time.monotonic() + 10
        while len(os.listdir(f"/proc/{server.pid}/fd")) < LIMIT - 2:  # until it runs out
            assert time.monotonic() < deadline, "the server never reached its open-file limit"
            time.sleep(0.05)
        cpu, log_size, start_time = sample(server.pid).cpu, len(server.log()), time.monotonic()
        time.sleep(1.0)  # the measured window, while clients wait in the backlog
        elapsed = time.monotonic() - start_time
        cpu_share = (sample(server.pid).cpu - cpu) / elapsed
        news = server.log()[log_size:].splitlines()  # "connect #" lines of ones just accepted do not count:
        log_rate = sum(len(line) + 1 for line in news if " INFO " not in line) / elapsed  # a line per attempt would
        assert cpu_share < 0.5, f"{cpu_share:.0%} of a core: accept is spinning"
        assert log_rate < 2000, f"the log grows {log_rate:.0f} B/s"
        for s in socks:
            s.close()
        admitted(server).alive()  # the clients left: a new one gets in
        log = server.log()
        assert log.count("Traceback") == 0, log[max(0, log.find("Traceback") - 500) :]
    finally:
        for s in socks:
            s.close()
        server.stop()
