"""select stops at FD_SETSIZE: past it, new clients get "server full", nobody crashes."""

from __future__ import annotations

import resource
import socket

from csce513msg.protocol import Error, ErrorCode, FrameDecoder, Message, Welcome, decode
from tests.conformance.wire import connect
from tests.fixtures import Names
from tests.servers import ServerProcess

BACKENDS = ["select"]


def first_message(sock: socket.socket) -> Message | None:
    decoder = FrameDecoder(1 << 16)
    sock.settimeout(10)
    while True:
        data = sock.recv(4096)
        if not data:
            return None
        frames = list(decoder.feed(data))
        if frames:
            return decode(frames[0])


def test_select_refuses_past_fd_setsize_and_keeps_serving(server: ServerProcess, names: Names) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < 2400:
        import pytest

        pytest.skip(f"needs about 2,400 open files; the hard limit here is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 2400), hard))
    socks: list[socket.socket] = []
    try:
        for _ in range(1100):  # bounded: just past the ceiling
            socks.append(socket.create_connection((server.host, server.port)))
        first = [first_message(s) for s in socks]
        welcomed = sum(isinstance(m, Welcome) for m in first)
        refused = [m for m in first if isinstance(m, Error)]
        assert 1000 <= welcomed < 1024
        assert refused and all(m.code == ErrorCode.SERVER_FULL for m in refused)
        assert welcomed + len(refused) == 1100
        server.wait_log("FD_SETSIZE")
    finally:
        for s in socks:
            s.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    alice = connect(server, names("alice"))
    assert alice.who()
    alice.close()
