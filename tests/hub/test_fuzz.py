"""Hypothesis over the engine and the SQLite store together.

The decoder's own fuzzing could not find what broke storage: a well-formed request
whose value SQLite cannot hold (a u64 of 2^63 or more) failed inside the batch, left
its transaction open and lost other people's messages. Here random requests, values
at the edges, reconnects and every ordering of jobs run through the real engine on a
real SQLite file, and the store's own rules are checked afterwards: positions dense
from 1 in each stream, both members recorded, and every message the server stored
delivered to its recipient (live, or by catch-up after a reconnect).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from csce513msg.protocol import (
    MAX_REQUEST_U64,
    Ack,
    ContentType,
    Deliver,
    Error,
    ErrorCode,
    History,
    Receipt,
    ReceiptState,
    Send,
    TargetKind,
)
from csce513msg.store.accounts import AccountBook
from csce513msg.store.sqlite import SqliteStore
from tests.hub.harness import PASSWORD, PASSWORDS, Harness, Peer

USERS = ("ann", "ben", "cat")
EDGE = st.one_of(st.just(0), st.integers(1, 40), st.integers(MAX_REQUEST_U64 - 1, 2**64 - 1))
OPS = st.lists(
    st.one_of(
        st.tuples(st.just("send"), st.integers(0, 2), st.integers(0, 2), EDGE, st.binary(max_size=8)),
        st.tuples(st.just("history"), st.integers(0, 2), st.integers(0, 2), EDGE, st.integers(0, 300)),
        st.tuples(st.just("ack"), st.integers(0, 2), st.integers(0, 2), EDGE),
        st.tuples(st.just("reconnect"), st.integers(0, 2)),
        st.tuples(
            st.just("jobs"),
        ),
    ),
    max_size=40,
)


@settings(max_examples=60)
@given(OPS)
def test_random_requests_never_lose_a_stored_message(ops: list[tuple[object, ...]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "db.sqlite"
        book = AccountBook(path)
        for name in USERS:
            book.add(name, PASSWORDS.hash(PASSWORD))
        book.close()
        store = SqliteStore(path, checkpoint_interval=0)
        try:
            _run(Harness(store=store, auto_jobs=False), store, ops)
        finally:
            store.close()


def _run(h: Harness, store: SqliteStore, ops: list[tuple[object, ...]]) -> None:
    peers = {name: h.connect(name, device="d1") for name in USERS}
    h.settle()
    history: list[Peer] = []  # the peers replaced by a reconnect, for what they saw
    for op in ops:
        match op:
            case ("send", int(a), int(b), int(cid), bytes(body)):
                peers[USERS[a]].session.request(Send(TargetKind.USER, ContentType.TEXT, cid, USERS[b], body))
            case ("history", int(a), int(b), int(before), int(limit)):
                peers[USERS[a]].session.request(History(before, limit, TargetKind.USER, USERS[b]))
            case ("ack", int(a), int(b), int(position)):
                stream = "dm:" + ",".join(sorted({USERS[a], USERS[b]}))
                peers[USERS[a]].session.request(Ack(position, stream))
            case ("reconnect", int(a)):
                name = USERS[a]
                history.append(peers[name])
                h.drop(peers[name])
                peers[name] = h.connect(name, device="d1")
            case ("jobs",):
                h.run_jobs()
            case _:
                raise AssertionError(f"an operation OPS does not make: {op!r}")
        h.pump()
    h.settle()
    for peer in [*history, *peers.values()]:
        errors = [e.code for e in peer.of(Error)]
        assert ErrorCode.STORE_FAILED not in errors and ErrorCode.INTERNAL not in errors, errors
        assert peer.closed is None, peer.closed  # nothing here is a reason to close
    history.extend(peers.values())
    for name in USERS:  # everyone reconnects: the catch-up brings whatever was not live
        h.drop(peers[name])
        history.append(h.connect(name, device="d1"))
    h.settle()
    _check_store(store, history)


def _check_store(store: SqliteStore, peers: list[Peer]) -> None:
    db = store.db
    for stream, count, low, high in db.execute(
        "SELECT stream, count(*), min(position), max(position) FROM messages GROUP BY stream"
    ):
        assert (low, high) == (1, count), f"{stream}: positions {low}..{high} for {count} messages"
        members = {u for (u,) in db.execute("SELECT user FROM members WHERE stream = ?", (stream,))}
        assert members == set(stream[3:].split(",")), (stream, members)
    stored = {r.message_id for p in peers for r in p.of(Receipt) if r.state == ReceiptState.STORED}
    in_db = {mid: (sender, target) for mid, sender, target in db.execute("SELECT id, sender, target FROM messages")}
    assert stored <= in_db.keys()  # a receipt promises the message is stored
    seen: dict[str, set[int]] = {}
    for p in peers:
        user = p.session.user or ""
        seen.setdefault(user, set()).update(d.message_id for d in p.of(Deliver) if not d.request_id)
    for mid, (sender, target) in in_db.items():
        if sender != target:  # to oneself from one's only device: nothing to deliver
            assert mid in seen.get(target, set()), f"message {mid} from {sender} never reached {target}"
