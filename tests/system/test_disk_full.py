"""A full disk under a running server (a real one: a size-limited tmpfs made by the test).

Messages that cannot be stored are refused with STORE_FAILED, the server keeps serving,
and once space comes back the same conversation goes on: no message reported stored is
lost, none reported failed is delivered, positions stay dense. Not a matter of the I/O
strategy: one backend.
"""

from __future__ import annotations

import os
from pathlib import Path

from csce513msg.client import ServerError
from csce513msg.protocol import Deliver, ErrorCode, Receipt, Send
from tests.conformance.wire import connect
from tests.fixtures import Names, SmallDisk
from tests.servers import start

BACKENDS = ["epoll"]


def test_a_conversation_goes_on_after_the_disk_was_full(backend: str, names: Names, small_disk: SmallDisk) -> None:
    disk = small_disk("8m")
    filler = disk / "filler"
    alice, bob = names("alice"), names("bob")
    server = start(backend, "--data-dir", str(disk), "--checkpoint-interval", "0.2")
    try:
        b = connect(server, bob, device_id="bob-1", drop_repeats=False)
        a = connect(server, alice, device_id="alice-1")
        filler.write_bytes(b"\0" * max(0, _free_bytes(disk) - 1_500_000))  # leave about 1.5 MB
        stored: list[Receipt] = []
        refused = 0
        for i in range(2000):  # bounded: 1.5 MB takes a few hundred
            try:
                reply = a.call(Send(1, 0, i + 1, bob, b"%05d" % i + b"." * 8000), timeout=30)
            except ServerError as exc:
                assert exc.code == ErrorCode.STORE_FAILED, exc
                refused += 1
                if refused == 5:
                    break
                continue
            assert isinstance(reply, Receipt)
            stored.append(reply)
        assert refused == 5, "the disk never filled"
        assert a.who()  # everyone is still served
        filler.unlink()  # space comes back
        for i in range(10):
            after = a.call(Send(1, 0, 10_000 + i, bob, b"after %d" % i), timeout=30)
            assert isinstance(after, Receipt), after
            stored.append(after)
        positions = [r.position for r in stored]
        assert positions == list(range(1, len(stored) + 1))  # dense: nothing reported failed took a place
        got = b.deliveries(len(stored), timeout=60)
        assert [d.message_id for d in got] == [r.message_id for r in stored]  # each once, in order
        b.call(Send(1, 0, 0, alice, b"done"))  # a round trip: nothing more was on its way
        assert not [m for m in b.inbox if isinstance(m, Deliver)]
        a.close()
        b.close()
    finally:
        server.stop()


def _free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize
