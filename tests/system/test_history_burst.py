"""A burst of History requests from a client that does not read: the server's memory stays
bounded and everyone else is served (a probe's 1,000 requests in one 22 kB write once
took a server from 49 MB to 3.2 GB and stalled everyone for 7 s). On every backend: the
pacing rides on each backend's pause_writing."""

from __future__ import annotations

from benchmarks import proc
from csce513msg.protocol import Error, ErrorCode, History, HistoryEnd, Login, LoginOk, Receipt, TargetKind
from tests.conformance.wire import PASSWORD, RawConn, connect
from tests.fixtures import Names
from tests.servers import start

BODY = b"h" * 16_000  # near the default text limit: a page of 100 is 1.6 MB
REQUESTS = 1000


def test_a_history_burst_stays_within_bounds_and_others_are_served(backend: str, names: Names) -> None:
    alice, bob, carol = names("alice"), names("bob"), names("carol")
    server = start(backend, "--rate", "100000", "--burst", "100000", "--sndbuf", "4096")
    try:
        connect(server, bob).close()
        a = connect(server, alice)
        for _ in range(120):
            a.session.send_text(bob, BODY.decode())
        a.flush()
        for _ in range(120):
            assert isinstance(a.next_message(lambda m: m.request_id != 0, timeout=30), Receipt)
        before = proc.sample(server.proc.pid).hwm_kib
        greedy = RawConn(server, rcvbuf=4096)  # alice again: asks for 1.6 GB of pages, and does not read
        greedy.handshake()
        greedy.send(Login(alice, PASSWORD, "greedy", request_id=2))
        assert isinstance(greedy.recv(), LoginOk)
        greedy.send(*[History(0, 100, TargetKind.USER, bob, request_id=10 + i) for i in range(REQUESTS)])
        c = connect(server, carol)
        assert c.who()  # served meanwhile, whatever the greedy one asked for
        receipt = c.send_text(alice, "still here")
        assert receipt.position == 1
        grown_mib = (proc.sample(server.proc.pid).hwm_kib - before) / 1024
        # paced: a page is read only while the output is below the high-water mark (1.6 MB each;
        # the 17 allowed to wait would be 27 MB unpaced; unbounded, the 1,000 were 3 GB)
        assert grown_mib < 15, f"the server grew by {grown_mib:.0f} MiB"
        while not isinstance(msg := greedy.recv(timeout=30), HistoryEnd):  # its first page is on its way
            assert not isinstance(msg, Error) or msg.code == ErrorCode.RATE_LIMITED, msg
        greedy.close()
        a.close()
        c.close()
    finally:
        server.stop()
