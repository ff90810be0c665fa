"""The store on the loop (docs/design.md): with ``--durability normal`` the loop commits
each batch itself, and it never waits there. A database another process is writing
(here: this test, holding SQLite's write lock, as ``msgsrv user add`` does briefly) sends
the batch to the storage thread, which waits; the loop goes on serving meanwhile, and the
receipt still comes only after the commit. One backend per way a batch reaches the store:
the readiness loops' driver (epoll), asyncio's pass, and the threads backend (its store lane).
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from csce513msg.protocol import Deliver, Ping, Pong, Receipt, ReceiptState
from tests.conformance.wire import connect, next_of
from tests.fixtures import Names
from tests.servers import ServerProcess

BACKENDS = ["epoll", "asyncio", "threads"]
LOCKED_S = 1.0  #: how long the test holds the database's write lock


def test_a_locked_database_waits_on_the_storage_thread_not_the_loop(server: ServerProcess, names: Names) -> None:
    alice, bob = names("alice"), names("bob")
    a, b = connect(server, alice), connect(server, bob)
    try:
        a.session.send_text(bob, "before")  # the conversation exists, both ways warm
        a.flush()
        assert next_of(a, Receipt, timeout=10).state == ReceiptState.STORED
        assert next_of(b, Deliver, timeout=10).body == b"before"

        other = sqlite3.connect(Path(server.data_dir) / "csce513msg.db", isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")  # another process's writer holds the lock
            locked_at = time.monotonic()
            a.session.send_text(bob, "during")
            a.flush()
            pongs = []
            while time.monotonic() - locked_at < LOCKED_S:  # the loop answers at once, every time
                started = time.monotonic()
                assert isinstance(a.call(Ping(), timeout=LOCKED_S), Pong)
                pongs.append(time.monotonic() - started)
                time.sleep(0.1)  # (within the rate limit)
            assert len(pongs) >= 5, pongs
            assert not [m for m in a.inbox if isinstance(m, Receipt)]  # not committed: no receipt yet
            assert not [m for m in b.inbox if isinstance(m, Deliver)]
        finally:
            other.execute("ROLLBACK")
            other.close()
        receipt = next_of(a, Receipt, timeout=30)  # the storage thread had waited: it commits now
        assert receipt.state == ReceiptState.STORED
        assert next_of(b, Deliver, timeout=10).body == b"during"
        for i in range(20):  # and the loop takes the store back: every batch stored, in order
            a.session.send_text(bob, f"after {i}")
        a.flush()
        assert [d.body for d in b.deliveries(20, timeout=30)] == [f"after {i}".encode() for i in range(20)]
        assert "storage error" not in server.log()
    finally:
        a.close()
        b.close()
