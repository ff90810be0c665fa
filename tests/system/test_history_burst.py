"""A burst of History requests from a client that does not read: the server's memory stays
bounded and everyone else is served (a probe's 1,000 requests in one 22 kB write once
took a server from 49 MB to 3.2 GB and stalled everyone for 7 s). On every backend: the
pacing rides on each backend's pause_writing."""

from __future__ import annotations

from benchmarks import proc
from csce513msg.hub.delivery import HISTORY_QUEUE
from csce513msg.protocol import Error, ErrorCode, History, HistoryEnd, Login, LoginOk, Receipt, TargetKind
from tests.conformance.wire import PASSWORD, RawConn, connect
from tests.servers import start

BODY = b"h" * 16_000  # near the default text limit: a page of 100 is 1.6 MB
REQUESTS = 1000


def test_a_history_burst_stays_within_bounds_and_others_are_served(backend: str, names: object) -> None:
    alice, bob, carol = names("alice"), names("bob"), names("carol")  # type: ignore[operator]
    server = start(backend, "--rate", "100000", "--burst", "100000")
    try:
        connect(server, bob).close()
        a = connect(server, alice)
        for _ in range(120):
            a.session.send_text(bob, BODY.decode())
        a.flush()
        for _ in range(120):
            assert isinstance(a.next_message(lambda m: m.request_id != 0, timeout=30), Receipt)
        before = proc.sample(server.proc.pid).hwm_kib
        greedy = RawConn(server)  # alice again: asks for 1.6 GB of pages, and does not read
        greedy.handshake()
        greedy.send(Login(alice, PASSWORD, "greedy", request_id=2))
        assert isinstance(greedy.recv(), LoginOk)
        greedy.send(*[History(0, 100, TargetKind.USER, bob, request_id=10 + i) for i in range(REQUESTS)])
        c = connect(server, carol)
        assert c.who()  # served meanwhile, whatever the greedy one asked for
        receipt = c.send_text(alice, "still here")
        assert receipt.position == 1
        grown_mib = (proc.sample(server.proc.pid).hwm_kib - before) / 1024
        assert grown_mib < 100, f"the server grew by {grown_mib:.0f} MiB"  # unbounded: about 1,600
        ends = refused = 0
        while ends + refused < REQUESTS:  # now read everything: each request got its answer
            msg = greedy.recv(timeout=30)
            if isinstance(msg, HistoryEnd):
                ends += 1
            elif isinstance(msg, Error):
                assert msg.code == ErrorCode.RATE_LIMITED, msg
                refused += 1
        # one read at a time and HISTORY_QUEUE waiting (or all waiting, if the device's catch-up
        # backed its output up first): the rest refused at once, never produced
        assert HISTORY_QUEUE <= ends <= HISTORY_QUEUE + 1
        greedy.close()
        a.close()
        c.close()
    finally:
        server.stop()
