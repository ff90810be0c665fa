"""Conformance: the classroom (protocol 1.4, docs/protocol.md section 11): the
announcements ``g:0``, their confirmations, office hours' queue; every backend.

Staff cannot register over the wire: the module's instructor is made as an admin makes one,
``msgsrv user add --instructor`` on the server's data directory (the server picks it up at
the login, which waits for a poll of the accounts). Against ``--server HOST:PORT`` give the
instructor's name and password as MSG_INSTRUCTOR and MSG_INSTRUCTOR_PASSWORD.

The module's server is shared by its tests, so the announcements and the queue hold what
earlier tests left: each test names its own users and asserts about them.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from csce513msg.client import Client, ServerError
from csce513msg.protocol import (
    ContentType,
    Deliver,
    ErrorCode,
    HandPlace,
    HandQueueReply,
    Receipt,
    Send,
    TargetKind,
)
from tests.conformance.wire import PASSWORD, connect, next_of
from tests.fixtures import Names, Server
from tests.servers import ServerProcess

_devices = itertools.count(1)
TAKES = 100  #: at most this many takes empty the queue an earlier test left


@pytest.fixture(scope="module")
def staff_account(server: Server) -> tuple[str, str]:
    """(name, password) of an instructor of ``server``."""
    if not isinstance(server, ServerProcess):
        name = os.environ.get("MSG_INSTRUCTOR")
        if not name:
            pytest.skip("an external server: set MSG_INSTRUCTOR and MSG_INSTRUCTOR_PASSWORD")
        return name, os.environ.get("MSG_INSTRUCTOR_PASSWORD", "")
    name = f"prof{server.port}"
    cmd = [sys.executable, "-m", "csce513msg.cli.msgsrv", "user", "add", name, "--instructor",
           "--data-dir", server.data_dir, "--kdf-cost", "test"]  # fmt: skip
    done = subprocess.run(cmd, input=PASSWORD + "\n", capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return name, PASSWORD


@pytest.fixture
def staff(server: Server, staff_account: tuple[str, str]) -> Iterator[Client]:
    name, password = staff_account
    client = Client.connect(server.host, server.port, user=name, password=password, groups=True,
                            device_id=f"staff-{next(_devices)}", drop_repeats=False)  # fmt: skip
    assert client.login_reply is not None and client.login_reply.role == "instructor"
    yield client
    client.close()


def student(server: Server, user: str) -> Client:
    return connect(server, user, device_id=f"dev-{next(_devices)}", groups=True)


def me(client: Client) -> str:
    assert client.login_reply is not None
    return client.login_reply.user


def at(place: HandPlace) -> tuple[int, int]:
    return (place.place, place.size)


def announcement(client: Client, position: int) -> Deliver:
    return next_of(client, Deliver, lambda d: d.stream == "g:0" and d.position == position and not d.request_id)


def test_an_announcement_reaches_an_account_made_after_it(server: Server, staff: Client, names: Names) -> None:
    """Catch-up from the first announcement on (a new account's new device) and History."""
    first = staff.announce("welcome to the course", confirm=True)
    second = staff.announce("office hours: tuesdays")
    assert (first.stream, second.position) == ("g:0", first.position + 1)
    late = student(server, names("late"))
    try:
        got = announcement(late, first.position), announcement(late, second.position)
        assert [(d.content_type, d.body, d.sender) for d in got] == [
            (ContentType.ASKS_CONFIRMATION, b"welcome to the course", me(staff)),
            (ContentType.TEXT, b"office hours: tuesdays", me(staff)),
        ]
        assert got[0].target_kind == TargetKind.GROUP and got[0].target == "announcements"
        page, end = late.history("announcements", limit=100, kind=TargetKind.GROUP)
        assert end.stream == "g:0" and [d.position for d in page][-2:] == [first.position, second.position]
        assert next(d for d in page if d.position == 1).position == 1  # every one, from the first
    finally:
        late.close()


def test_confirmations_and_the_staff_list_of_confirmed_and_pending(
    server: Server, staff: Client, names: Names
) -> None:  # fmt: skip
    ann, ben = student(server, names("ann")), student(server, names("ben"))
    try:
        plain = staff.announce("no need to confirm")
        asks = staff.announce("read the syllabus", confirm=True)
        mine = ann.confirm(asks.position)
        assert (mine.position, mine.confirmed, mine.pending) == (asks.position, (me(ann),), ())
        assert ann.confirm(asks.position).confirmed == (me(ann),)  # again: the same answer
        with pytest.raises(ServerError) as refused:
            ben.confirm(plain.position)
        assert refused.value.code == ErrorCode.NO_SUCH_MESSAGE
        for answer in (staff.confirmed(asks.position), staff.confirmed(0)):  # 0: the newest that asks
            assert answer.position == asks.position
            assert me(ann) in answer.confirmed and me(ben) not in answer.confirmed
            assert me(ben) in answer.pending and me(ann) not in answer.pending
            assert me(staff) not in answer.pending  # staff are not asked
    finally:
        ann.close()
        ben.close()


def test_students_may_not_announce_see_confirmations_or_the_queue(server: Server, names: Names) -> None:
    cid = student(server, names("cid"))
    try:
        with pytest.raises(ServerError) as posted:
            cid.announce("free pizza")
        assert posted.value.code == ErrorCode.FORBIDDEN
        with pytest.raises(ServerError) as plain_send:
            cid.send_text("announcements", "free pizza", TargetKind.GROUP)
        assert plain_send.value.code == ErrorCode.FORBIDDEN
        for call in (cid.confirmed, cid.hand_queue, cid.take_next, lambda: cid.group_leave("announcements")):
            with pytest.raises(ServerError) as refused:
                call()
            assert refused.value.code == ErrorCode.FORBIDDEN, call
    finally:
        cid.close()


def test_the_queue_in_order_places_pushed_and_a_take(server: Server, staff: Client, names: Names) -> None:
    for _ in range(TAKES):  # what earlier tests (or runs) left
        if not staff.take_next().taken:
            break
    assert staff.hand_queue().users == ()
    dee, eve, fay = (student(server, names(n)) for n in ("dee", "eve", "fay"))
    try:
        assert at(dee.raise_hand("what is a socket?")) == (1, 1)
        assert at(eve.raise_hand("why epoll?")) == (2, 2)
        assert at(fay.raise_hand("is the exam open book?")) == (3, 3)
        assert at(eve.raise_hand("why epoll, not select?")) == (2, 3)  # again: the same place
        pushed = next_of(
            staff, HandQueueReply, lambda q: not q.request_id and len(q.users) == 3 and "not" in q.questions[1]
        )
        assert pushed.users == (me(dee), me(eve), me(fay))
        assert at(dee.lower_hand()) == (0, 2)
        assert next_of(eve, HandPlace, lambda p: not p.request_id).place == 1  # moved up: told
        assert next_of(fay, HandPlace, lambda p: not p.request_id).place == 2
        taken = staff.take_next()
        assert (taken.taken, taken.users) == (me(eve), (me(fay),))
        told = next_of(eve, HandPlace, lambda p: bool(p.taken_by))
        assert (told.place, told.taken_by, told.question) == (0, me(staff), "why epoll, not select?")
        assert next_of(fay, HandPlace, lambda p: not p.request_id and p.place == 1).size == 1
        queue = staff.hand_queue()
        assert (queue.taken, queue.users, queue.questions) == ("", (me(fay),), ("is the exam open book?",))
        with pytest.raises(ServerError) as raised:
            staff.raise_hand("may I?")
        assert raised.value.code == ErrorCode.FORBIDDEN
    finally:
        for client in (dee, eve, fay):
            client.close()


def test_content_type_4_is_for_the_announcements_only(server: Server, staff: Client, names: Names) -> None:
    gus = student(server, names("gus"))
    club = names("club")
    try:
        staff.group_create(club)
        for target_kind, target in ((TargetKind.USER, me(gus)), (TargetKind.GROUP, club)):
            with pytest.raises(ServerError) as refused:
                staff.call(Send(target_kind, ContentType.ASKS_CONFIRMATION, 0, target, b"x"))
            assert refused.value.code == ErrorCode.BAD_REQUEST, target
        receipt = staff.call(Send(TargetKind.GROUP, ContentType.ASKS_CONFIRMATION, 0, "g:0", b"please confirm"))
        assert isinstance(receipt, Receipt) and receipt.stream == "g:0"  # by its stream too
        assert announcement(gus, receipt.position).content_type == ContentType.ASKS_CONFIRMATION
    finally:
        gus.close()
