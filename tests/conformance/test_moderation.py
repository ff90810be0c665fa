"""Conformance: the classroom's moderation (protocol 1.4, docs/protocol.md section 11):
delete a group, mute, slow mode, remove a message, and who may. Over the wire the
accounts are registered students, so the group's owner moderates here; staff (instructor,
assistant) are the hub tests' (tests/hub/test_groups.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from csce513msg.client import Client, ServerError
from csce513msg.protocol import (
    ContentType,
    Deliver,
    ErrorCode,
    GroupEvent,
    GroupEventKind,
    GroupMute,
    GroupSlow,
    Message,
    Redact,
    TargetKind,
)
from tests.conformance import test_groups
from tests.conformance.wire import next_of
from tests.fixtures import Names, Server

GROUP = TargetKind.GROUP
_open: list[Client] = []


def member(server: Server, user: str, device: str) -> Client:
    """A member's client (``test_groups.member``), closed when the test ends."""
    client = test_groups.member(server, user, device)
    _open.append(client)
    return client


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    """Close what each test opened: a server stopped with clients still connected waits
    its close period for them (5 s a backend of this module's teardown)."""
    yield
    while _open:
        _open.pop().close()


def refused(call: object, code: ErrorCode) -> ServerError:
    assert isinstance(call, ServerError), call
    assert call.code == code, call
    return call


def attempt(client: Client, request: Message) -> ServerError:
    with pytest.raises(ServerError) as caught:
        client.call(request)
    return caught.value


def event_of(client: Client, kind: GroupEventKind) -> tuple[Deliver, GroupEvent]:
    """The next live group event of ``kind`` ``client`` is sent."""
    found = next_of(client, Deliver, lambda d: d.content_type == ContentType.GROUP_EVENT
                    and not d.request_id and GroupEvent.decode(d.body).kind == kind)  # fmt: skip
    return found, GroupEvent.decode(found.body)


def test_a_student_attempting_each_moderation_action_is_forbidden(server: Server, names: Names) -> None:
    alice, bob, carol, club = names("alice"), names("bob"), names("carol"), names("club")
    a, b, c = member(server, alice, "a1"), member(server, bob, "b1"), member(server, carol, "c1")
    a.group_create(club)
    b.group_join(club)
    c.group_join(club)
    position = a.send_text(club, "alice's", kind=GROUP).position
    attempts: list[Message] = [
        GroupMute(club, (carol,), 60),
        GroupMute(club, (carol,), 0),
        GroupSlow(club, 30),
        Redact(club, position),  # another's message
    ]
    for request in attempts:
        refused(attempt(b, request), ErrorCode.FORBIDDEN)
    calls: list[Callable[[], object]] = [lambda: b.group_delete(club), lambda: b.group_rename(club, names("mine"))]
    for call in calls:
        with pytest.raises(ServerError) as caught:
            call()
        refused(caught.value, ErrorCode.FORBIDDEN)
    assert b.group_members(club).users == tuple(sorted((alice, bob, carol)))


def test_mute_refuses_a_post_with_the_time_left_and_unmute_lets_it_through(server: Server, names: Names) -> None:
    alice, bob, club = names("alice"), names("bob"), names("club")
    a, b = member(server, alice, "a1"), member(server, bob, "b1")
    a.group_create(club)
    b.group_join(club)
    muted = a.group_mute(club, [bob], 600)
    _, event = event_of(b, GroupEventKind.MUTED)
    assert (event.users, event.value) == ((bob,), 600) and muted.position > 0
    with pytest.raises(ServerError) as caught:
        b.send_text(club, "let me speak", kind=GROUP)
    error = refused(caught.value, ErrorCode.MUTED)
    assert 0 < error.retry_after_ms <= 600_000
    with pytest.raises(ServerError) as owner:
        a.group_mute(club, [alice], 60)
    refused(owner.value, ErrorCode.FORBIDDEN)  # the owner cannot be muted
    a.group_mute(club, [bob], 0)
    _, event = event_of(b, GroupEventKind.UNMUTED)
    assert event.users == (bob,)
    assert b.send_text(club, "thank you", kind=GROUP).stream == muted.stream


def test_slow_mode_refuses_a_second_post_with_the_wait(server: Server, names: Names) -> None:
    alice, bob, club = names("alice"), names("bob"), names("club")
    a, b = member(server, alice, "a1"), member(server, bob, "b1")
    a.group_create(club)
    b.group_join(club)
    a.group_slow(club, 600)
    _, event = event_of(b, GroupEventKind.SLOW)
    assert event.value == 600
    b.send_text(club, "first", kind=GROUP)
    with pytest.raises(ServerError) as caught:
        b.send_text(club, "second", kind=GROUP)
    error = refused(caught.value, ErrorCode.SLOW_MODE)
    assert 0 < error.retry_after_ms <= 600_000
    a.send_text(club, "the owner is exempt", kind=GROUP)
    a.send_text(club, "twice", kind=GROUP)


def test_a_removed_message_is_a_tombstone_for_every_member(server: Server, names: Names) -> None:
    alice, bob, carol, club = names("alice"), names("bob"), names("carol"), names("club")
    a, b, c = member(server, alice, "a1"), member(server, bob, "b1"), member(server, carol, "c1")
    a.group_create(club)
    b.group_join(club)
    c.group_join(club)
    oops = b.send_text(club, "oops, my password", kind=GROUP).position
    kept = c.send_text(club, "kept", kind=GROUP).position
    removal = a.redact(club, oops)  # the owner
    deliver, event = event_of(c, GroupEventKind.REMOVED_MESSAGE)
    assert (deliver.sender, deliver.position, event.users, event.value) == (alice, removal.position, (bob,), oops)
    with pytest.raises(ServerError) as again:
        b.redact(club, oops)
    refused(again.value, ErrorCode.NO_SUCH_MESSAGE)
    page, _ = c.history(club, 20, kind=GROUP)
    by_position = {d.position: d for d in page}
    tomb = by_position[oops]
    assert (tomb.sender, tomb.content_type) == (bob, ContentType.GROUP_EVENT)
    assert GroupEvent.decode(tomb.body) == event
    assert by_position[kept].body == b"kept" and b"password" not in b"".join(d.body for d in page)
    with pytest.raises(ServerError) as others:
        b.redact(club, kept)
    refused(others.value, ErrorCode.FORBIDDEN)  # a member removes only their own
    assert c.redact(club, kept).position > removal.position


def test_a_deleted_group_is_not_found_and_its_name_is_free(server: Server, names: Names) -> None:
    alice, bob, club = names("alice"), names("bob"), names("club")
    a, b = member(server, alice, "a1"), member(server, bob, "b1")
    made = a.group_create(club)
    b.group_join(club)
    gone = a.group_delete(club)
    assert (gone.stream, gone.member, gone.members) == (made.stream, 0, 0)
    deliver, event = event_of(b, GroupEventKind.DELETED)
    assert (deliver.sender, deliver.position, event.name) == (alice, gone.position, club)
    calls: list[Callable[[], object]] = [
        lambda: b.send_text(club, "anyone?", kind=GROUP),
        lambda: b.group_join(club),
        lambda: b.history(club, 5, kind=GROUP),
        lambda: b.group_join(made.stream),
    ]
    for call in calls:
        with pytest.raises(ServerError) as caught:
            call()
        refused(caught.value, ErrorCode.GROUP_NOT_FOUND)
    again = b.group_create(club)
    assert again.stream != made.stream and again.owner == bob
