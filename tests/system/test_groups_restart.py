"""Groups across restarts, on one backend (docs/groups-plan.md step 5): a graceful stop and a
SIGKILL after a receipt, restarted on the same data directory; and a real schema-5 data
directory (no groups yet) that the server migrates when it starts on it."""

from __future__ import annotations

import signal
import sqlite3
from pathlib import Path

import pytest

from csce513msg.client import Client, ServerError
from csce513msg.paths import DATABASE
from csce513msg.protocol import (
    ContentType,
    Deliver,
    ErrorCode,
    GroupEvent,
    GroupEventKind,
    Ping,
    Receipt,
    ReceiptState,
    TargetKind,
)
from csce513msg.store.schema import MIGRATIONS
from tests.conformance.wire import connect, next_of
from tests.fixtures import Names
from tests.servers import ServerProcess, start

BACKEND = "epoll"
GROUP = TargetKind.GROUP


def member(server: ServerProcess, user: str, device: str) -> Client:
    return connect(server, user, device_id=device, groups=True)


def group_texts(delivers: list[Deliver]) -> list[str]:
    """What ``delivers`` say: a post's text, an event's kind and users."""
    said = []
    for d in delivers:
        if d.content_type == ContentType.GROUP_EVENT:
            event = GroupEvent.decode(d.body)
            said.append(f"{GroupEventKind(event.kind).name.lower()} {','.join(event.users)}")
        else:
            said.append(d.body.decode())
    return said


def whole_history(client: Client, group: str) -> list[str]:
    page, end = client.history(group, 100, kind=GROUP)
    assert end.count == len(page) < 100
    return group_texts(page)


def caught_up(client: Client, count: int) -> list[str]:
    """``count`` live group deliveries, then nothing more before a round trip."""
    got = [next_of(client, Deliver, lambda d: d.target_kind == GROUP and not d.request_id, 20) for _ in range(count)]
    client.call(Ping())
    assert not [m for m in client.inbox if isinstance(m, Deliver) and m.target_kind == GROUP], client.inbox
    return group_texts(got)


def test_groups_survive_a_graceful_stop_and_a_sigkill_after_a_receipt(tmp_path: Path, names: Names) -> None:
    data_dir = str(tmp_path / "data")
    alice, bob, carol, dan = names("alice"), names("bob"), names("carol"), names("dan")
    club, lab = names("club"), names("lab")
    server = start(BACKEND, "--data-dir", data_dir)
    try:
        for user, device in ((carol, "c1"), (dan, "d1")):  # accounts, and carol's device, offline
            member(server, user, device).close()
        a, b = member(server, alice, "a1"), member(server, bob, "b1")
        made = a.group_create(club, invite_only=True)
        a.group_add(club, [bob, carol])
        assert a.group_rename(club, lab).name == lab
        for i in range(3):
            a.send_text(lab, f"before {i}", kind=GROUP)
        assert caught_up(b, 5) == [f"added {bob},{carol}", "renamed ", "before 0", "before 1", "before 2"]
        assert server.terminate(timeout=20) == 0  # gracefully
        a.close()
        b.close()
    finally:
        server.stop()

    server = start(BACKEND, "--data-dir", data_dir)  # the same data directory
    try:
        a, b = member(server, alice, "a1"), member(server, bob, "b1")
        mine = a.group_list()
        listed = zip(mine.streams, mine.names, mine.owners, mine.sizes, mine.flags, strict=True)
        # but the announcements (g:0), which every account reads: invite-only, and alice a member
        assert [g for g in listed if g[0] != "g:0"] == [(made.stream, lab, alice, 3, 1 | 2)]
        assert a.group_members(lab).users == tuple(sorted((alice, bob, carol)))
        d = member(server, dan, "d1")
        with pytest.raises(ServerError) as refused:  # still invite-only
            d.group_join(lab)
        assert refused.value.code == ErrorCode.FORBIDDEN
        c = member(server, carol, "c1")  # offline all along: catches up from her add on
        assert caught_up(c, 5) == [f"added {bob},{carol}", "renamed ", "before 0", "before 1", "before 2"]
        assert whole_history(b, lab) == [
            f"added {bob},{carol}", "renamed ", "before 0", "before 1", "before 2",
        ]  # fmt: skip
        assert caught_up(b, 0) == []  # bob acknowledged all before the stop: nothing again
        c.close()
        stored = a.send_text(lab, "after the first restart", kind=GROUP)
        assert stored.state == ReceiptState.STORED
        assert caught_up(b, 1) == ["after the first restart"]
        server.proc.send_signal(signal.SIGKILL)  # right after a receipt: the message is committed
        server.proc.wait(10)
        for client in (a, b, d):
            client.close()
    finally:
        server.stop()

    server = start(BACKEND, "--data-dir", data_dir)
    try:
        c = member(server, carol, "c1")
        assert caught_up(c, 1) == ["after the first restart"]
        assert whole_history(c, lab)[-2:] == ["before 2", "after the first restart"]
        a = member(server, alice, "a1")
        assert a.group_members(lab).users == tuple(sorted((alice, bob, carol)))
        c.send_text(lab, "after the kill", kind=GROUP)
        got = next_of(a, Deliver, lambda d: d.target_kind == GROUP and not d.request_id, 20)
        assert (got.body, got.stream, got.target) == (b"after the kill", made.stream, lab)
        a.close()
        c.close()
    finally:
        server.stop()


def _downgrade_to_v5(source: Path, target: Path) -> None:
    """A data directory whose database has schema 5 (``MIGRATIONS[:5]``, as docs/storage.md's
    versions made it) and the rows of ``source``'s direct-message traffic."""
    target.mkdir(mode=0o700)
    new = sqlite3.connect(target / DATABASE)
    for statement in [s for version in MIGRATIONS[:5] for s in version]:
        new.execute(statement)
    new.execute("PRAGMA user_version=5")
    old = sqlite3.connect(source / DATABASE)
    assert old.execute("SELECT count(*) FROM groups WHERE id").fetchone() == (0,)  # but g:0, the announcements
    for table in ("users", "streams", "messages", "cursors", "devices", "notified", "device_tokens"):
        rows = old.execute(f"SELECT * FROM {table}").fetchall()
        if rows:
            new.executemany(f"INSERT INTO {table} VALUES ({', '.join('?' * len(rows[0]))})", rows)
    direct = old.execute("SELECT user, stream FROM members WHERE stream NOT LIKE 'g:%'")  # v5 had no groups
    new.executemany("INSERT INTO members VALUES (?, ?)", direct)
    new.commit()
    new.close()
    old.close()


def test_a_schema_5_data_directory_migrates_at_start_and_its_direct_messages_still_arrive(
    tmp_path: Path, names: Names
) -> None:  # fmt: skip
    alice, bob = names("alice"), names("bob")
    made = tmp_path / "made"
    server = start(BACKEND, "--data-dir", str(made))
    try:
        a, b = connect(server, alice, device_id="a1"), connect(server, bob, device_id="b1")
        for i in range(2):
            a.send_text(bob, f"read {i}")
        assert [d.body for d in b.deliveries(2, timeout=10)] == [b"read 0", b"read 1"]
        b.who()  # a round trip: bob's Ack is read
        b.close()
        unread = [a.send_text(bob, f"unread {i}") for i in range(3)]
        assert server.terminate(timeout=20) == 0  # the acknowledgements are stored (graceful)
        a.close()
    finally:
        server.stop()
    v5 = tmp_path / "v5"
    _downgrade_to_v5(made, v5)

    server = start(BACKEND, "--data-dir", str(v5))
    try:
        version = sqlite3.connect(f"file:{v5 / DATABASE}?mode=ro", uri=True)
        assert version.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)  # migrated at start
        version.close()
        b = connect(server, bob, device_id="b1", drop_repeats=False)  # catches up what it had not read
        got = b.deliveries(3, timeout=20)
        assert [(d.body, d.message_id) for d in got] == [(f"unread {i}".encode(), r.message_id)
                                                         for i, r in enumerate(unread)]  # fmt: skip
        b.call(Ping())
        assert not [m for m in b.inbox if isinstance(m, Deliver)]  # nothing read before comes again
        page, _ = b.history(alice, 10)
        assert [d.body for d in page] == [b"read 0", b"read 1", b"unread 0", b"unread 1", b"unread 2"]
        a = connect(server, alice, device_id="a1")  # her delivered receipts, missed while away
        delivered = [next_of(a, Receipt, lambda r: r.state == ReceiptState.DELIVERED, 20) for _ in range(3)]
        assert {r.message_id for r in delivered} == {r.message_id for r in unread}
        a.send_text(bob, "after the migration")
        assert next_of(b, Deliver, timeout=10).body == b"after the migration"
        g = member(server, alice, "a2")  # and groups work on it
        assert g.group_create(names("club")).position == 1
        for client in (a, b, g):
            client.close()
    finally:
        server.stop()
