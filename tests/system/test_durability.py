"""Durability on every backend: SIGKILL and restart on the same data directory, resends,
and a returning client's backlog many times the outbound limit."""

from __future__ import annotations

import signal
import sqlite3
import tempfile
import time
from pathlib import Path

from csce513msg.protocol import Deliver, Receipt, Send
from tests.conformance.wire import connect, next_of, wait_gone
from tests.fixtures import Names
from tests.servers import start

TIGHT = (
    "--max-frame", "4096", "--max-text", "1024", "--window", "8",
    "--high-water", "4096", "--low-water", "1024", "--hard-limit", "40960", "--sndbuf", "4096",
    "--rate", "100000", "--burst", "100000", "--close-timeout", "1",
)  # fmt: skip


def test_sigkill_restart_and_resend_lose_nothing_and_duplicate_nothing(backend: str, names: Names) -> None:
    data_dir = tempfile.mkdtemp(prefix="msgsrv-kill-")
    alice, bob = names("alice"), names("bob")
    server = start(backend, "--data-dir", data_dir, *TIGHT)
    try:
        connect(server, bob, device_id="bob-laptop").close()  # bob exists, offline
        a = connect(server, alice, device_id="alice-laptop")
        count = 200
        for i in range(count):
            a.session.send_text(bob, f"message {i:03d}")
        a.flush()  # all 200 on their way; the server dies after the first receipts
        acknowledged = [next_of(a, Receipt, lambda m: m.request_id != 0, 30) for _ in range(20)]
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait(10)
        unsent = [m for m in a.session.pending.values() if isinstance(m, Send)]
        a.close()
    finally:
        server.stop()
    server = start(backend, "--data-dir", data_dir, *TIGHT)  # same data directory, new port
    try:
        again = connect(server, alice, device_id="alice-laptop")
        for send in unsent:  # the client resends what was not acknowledged, same client ids
            reply = again.call(Send(send.target_kind, send.content_type, send.client_msg_id, send.target, send.body))
            assert isinstance(reply, Receipt)
        b = connect(server, bob, device_id="bob-laptop", drop_repeats=False)
        got = b.deliveries(count, timeout=60)
        bodies = [d.body.decode() for d in got]
        assert sorted(bodies) == [f"message {i:03d}" for i in range(count)]  # each exactly once
        assert len({d.message_id for d in got}) == count
        assert {r.message_id for r in acknowledged} <= {d.message_id for d in got}  # acknowledged = kept
        assert [d.position for d in got] == sorted(d.position for d in got)  # in stream order
        b.call(Send(1, 0, 0, alice, b"thanks"))  # a round trip: nothing more was on its way
        assert not [m for m in b.inbox if isinstance(m, Deliver)]
        again.close()
        b.close()
    finally:
        server.stop()


def test_a_backlog_many_times_the_outbound_limit_reaches_a_returning_client(backend: str, names: Names) -> None:
    server = start(backend, *TIGHT)
    try:
        alice, bob = names("alice"), names("bob")
        connect(server, bob).close()
        a = connect(server, alice)
        wait_gone(a, bob)
        count = 400  # 400 kB waiting: ten times the 40 kB hard limit
        for i in range(count):
            a.session.send_text(bob, f"{i:04d}" + "y" * 996)
        a.flush()
        for _ in range(count):
            a.next_message(Receipt, timeout=30)
        b = connect(server, bob, rcvbuf=4096, drop_repeats=False)
        got = b.deliveries(count, timeout=60)
        assert [d.body[:4].decode() for d in got] == [f"{i:04d}" for i in range(count)]
        assert "outbound limit" not in server.log()
        a.close()
        b.close()
    finally:
        server.stop()


def test_a_graceful_stop_commits_the_last_acknowledgements(backend: str, names: Names) -> None:
    """SIGTERM while an acknowledgement waits to be stored (here --ack-delay 30 s, so it would
    wait the whole time): the server stores it before it exits, so the message is not
    delivered again after the restart."""
    data_dir = tempfile.mkdtemp(prefix="msgsrv-stop-")
    alice, bob = names("alice"), names("bob")
    # no account poll meanwhile: it would take the acknowledgement along in its batch
    flags = ("--ack-delay", "30", "--close-timeout", "1", "--account-poll", "3600")
    server = start(backend, "--data-dir", data_dir, *flags)
    try:
        a = connect(server, alice, device_id="alice-laptop")
        b = connect(server, bob, device_id="bob-laptop")
        a.send_text(bob, "read before the restart")
        assert [d.body for d in b.deliveries(1, timeout=10)] == [b"read before the restart"]
        b.who()  # a round trip: the server has read bob's Ack, which now waits for company
        assert server.terminate(timeout=20) == 0
        a.close()
        b.close()
    finally:
        server.stop()
    server = start(backend, "--data-dir", data_dir)
    try:
        again = connect(server, bob, device_id="bob-laptop")
        assert again.login_reply is not None and again.login_reply.waiting == 0
        again.call(Send(1, 0, 0, alice, b"a round trip"))
        assert not [m for m in again.inbox if isinstance(m, Deliver)]  # nothing delivered twice
        again.close()
    finally:
        server.stop()


def test_a_graceful_stop_waits_for_the_batch_queued_behind_a_slow_one(backend: str, names: Names) -> None:
    """The database is locked (as a long commit would hold it) while a batch is in flight;
    bob's acknowledgement waits in the next batch, behind it. SIGTERM, everyone leaves, the
    lock goes: the server must hear the first batch's result, then store the second, and
    only then exit. Else "one", acknowledged, would come to bob again after the restart."""
    data_dir = tempfile.mkdtemp(prefix="msgsrv-stop-")
    alice, bob = names("alice"), names("bob")
    server = start(backend, "--data-dir", data_dir, "--close-timeout", "1")
    try:
        a = connect(server, alice, device_id="alice-laptop")
        b = connect(server, bob, device_id="bob-laptop")
        numbers = [server.connection_number(c.sock) for c in (a, b)]
        a.send_text(bob, "one")  # stored and sent to bob, who has not read it yet
        lock = sqlite3.connect(Path(data_dir) / "csce513msg.db", isolation_level=None, check_same_thread=False)
        lock.execute("BEGIN IMMEDIATE")
        a.session.send_text(bob, "two")
        a.flush()
        a.who()  # its reply follows the pass that submitted "two": that batch now waits for the lock
        assert [d.body for d in b.deliveries(1, timeout=10)] == [b"one"]
        b.who()  # bob's Ack of "one" is in the server's next batch, behind the locked one
        server.proc.send_signal(signal.SIGTERM)
        a.close()
        b.close()
        deadline = time.monotonic() + 20  # well within the 30 s the server waits for a locked database
        for line in ("shutting down", *(rf"disconnect #{n}$" for n in numbers)):  # everyone is gone...
            server.wait_line(line, timeout=deadline - time.monotonic())
        assert server.proc.poll() is None, "the server exited with a batch still to store"  # ...the batches wait
        lock.execute("COMMIT")
        lock.close()
        assert server.proc.wait(30) == 0
    finally:
        server.stop()
    server = start(backend, "--data-dir", data_dir)
    try:
        again = connect(server, bob, device_id="bob-laptop")
        assert again.login_reply is not None and again.login_reply.waiting == 1
        assert [d.body for d in again.deliveries(1, timeout=10)] == [b"two"]  # and not "one" again
        again.close()
    finally:
        server.stop()
