"""Conformance: the key directory of end-to-end encryption (1.7, docs/protocol.md section 14),
on every backend.

A device publishes its keys and one-time prekeys; anyone fetches every device of a user, each
bundle the published bytes exactly and a one-time prekey handed out once (then another, then,
past an asker's hourly allowance, none); a new identity drops the old prekeys and a rotation
keeps them; bad sizes, a prekey id 0, too many prekeys and an anonymous device are refused with
the connection going on; a device is told when its supply runs low; a device can be forgotten.
The server reads none of the bytes (random bytes stand for keys here: tests/crypto and the
client's tests use real ones)."""

from __future__ import annotations

import os
import time

from csce513msg.protocol import (
    BUNDLE,
    MAX_PREKEYS,
    PREKEY_LOW,
    PUBLISHED,
    VERSION_MAJOR,
    ErrorCode,
    Hello,
    KeyBundles,
    KeyFetch,
    KeyForget,
    KeyPublish,
    KeyState,
    Login,
    Register,
    bundles,
    publish_body,
)
from tests.conformance.wire import PASSWORD, RawConn
from tests.fixtures import Names, Server

NONE = bytes(36)
_made: set[tuple[int, str]] = set()  # (server port, user) registered already


def device(server: Server, user: str, device_id: str, e2e: bool = True, minor: int = 7) -> RawConn:
    """A raw connection registered (or logged in) as ``user`` on ``device_id``, past its KeyState."""
    conn = RawConn(server)
    assert "e2e" in conn.welcome().features
    conn.send(Hello(VERSION_MAJOR, minor, ("e2e",) if e2e else (), request_id=1))
    first = (server.port, user) not in _made
    _made.add((server.port, user))
    conn.send(Register(user, PASSWORD, device_id, request_id=2) if first else Login(user, PASSWORD, device_id, "", 2))
    conn.login_ok()
    if e2e and minor >= 7:
        state = conn.expect(KeyState)
        assert state.request_id == 0
    return conn


def keys(spk_id: int = 1, identity: bytes | None = None) -> bytes:
    """A device's published bytes: ``identity`` (128 bytes) kept, a signed prekey ``spk_id``."""
    ident = identity if identity is not None else os.urandom(128)
    return ident + spk_id.to_bytes(4, "big") + os.urandom(PUBLISHED - 132)


def prekeys(first: int, count: int) -> list[tuple[int, bytes]]:
    return [(first + i, os.urandom(32)) for i in range(count)]


def publish(conn: RawConn, published: bytes, pre: list[tuple[int, bytes]], rid: int = 10) -> KeyState:
    conn.send(KeyPublish(len(pre), publish_body(published, pre), rid))
    state = conn.expect(KeyState)
    assert state.request_id == rid
    return state


def fetch(conn: RawConn, user: str, rid: int = 20, known: tuple[str, ...] = ()) -> dict[str, bytes]:
    conn.send(KeyFetch(user, known, rid))
    answer = conn.expect(KeyBundles)
    assert answer.request_id == rid and answer.user == user
    found = dict(bundles(answer))
    assert len(found) == answer.count and all(len(b) == BUNDLE for b in found.values())
    return found


def test_a_bundle_is_what_was_published_and_each_prekey_is_handed_out_once(server: Server, names: Names) -> None:
    alice, bob, carol = names("alice"), names("bob"), names("carol")
    a, b, c = device(server, alice, "laptop"), device(server, bob, "b1"), device(server, carol, "c1")
    published, pre = keys(spk_id=7), prekeys(1, 10)
    state = publish(a, published, pre)
    assert (state.published, state.spk_id, state.prekeys, state.body) == (1, 7, 10, published)
    assert abs(state.expires_us / 1e6 - (time.time() + 90 * 86400)) < 600  # --key-days 90 from now
    handed = [fetch(b, alice, rid)["laptop"] for rid in (21, 22, 23, 24)]
    assert all(h[:PUBLISHED] == published for h in handed)
    assert [h[PUBLISHED:] for h in handed[:3]] == [k.to_bytes(4, "big") + key for k, key in pre[:3]]
    assert handed[3][PUBLISHED:] == NONE  # bob's allowance of this device for the hour is spent
    assert fetch(c, alice, known=("laptop",))["laptop"][PUBLISHED:] == NONE  # carol has a session: none spent
    assert fetch(c, alice)["laptop"][PUBLISHED:] == pre[3][0].to_bytes(4, "big") + pre[3][1]  # carol's allowance
    a.send(KeyPublish(0, publish_body(published, []), 30))
    assert a.expect(KeyState).prekeys == 10 - 4  # four handed out, none twice
    a.alive()


def test_every_device_of_a_user_and_a_new_identity_drops_its_old_prekeys(server: Server, names: Names) -> None:
    alice, bob = names("alice"), names("bob")
    a1, a2, b = device(server, alice, "d1"), device(server, alice, "d2"), device(server, bob, "b1")
    first = keys(spk_id=1)
    publish(a1, first, prekeys(1, 5))
    publish(a2, keys(spk_id=3), prekeys(1, 5))
    assert list(fetch(b, alice)) == ["d1", "d2"]  # in device id order
    own = fetch(a1, alice)  # a user fetches its own devices too; its own device's comes with no prekey
    assert list(own) == ["d1", "d2"] and own["d1"][PUBLISHED:] == NONE and own["d2"][PUBLISHED:] != NONE
    rotated = keys(spk_id=2, identity=first[:128])  # the same identity, a new signed prekey: kept
    state = publish(a1, rotated, prekeys(6, 1))
    assert (state.spk_id, state.prekeys) == (2, 5 + 1 - 1)  # one handed out above (to bob)
    state = publish(a1, keys(spk_id=1), [])  # a new identity: its old prekeys go
    assert (state.published, state.prekeys) == (1, 0)
    assert fetch(b, alice)["d1"][PUBLISHED:] == NONE  # nothing left to hand out
    assert fetch(b, bob) == {}  # bob published nothing: count 0


def test_bad_publications_are_refused_and_nothing_of_them_is_applied(server: Server, names: Names) -> None:
    alice = names("alice")
    a = device(server, alice, "d1")
    published = keys()
    a.send(KeyPublish(2, publish_body(published, prekeys(1, 1)), 40))  # the body holds one, not two
    a.expect_error(ErrorCode.BAD_REQUEST, 40)
    a.send(KeyPublish(1, publish_body(published, [(0, os.urandom(32))]), 41))
    a.expect_error(ErrorCode.BAD_REQUEST, 41)
    a.send(KeyPublish(101, publish_body(published, prekeys(1, 101)), 42))  # over 100 a frame
    a.expect_error(ErrorCode.BAD_REQUEST, 42)
    a.send(KeyPublish(0, publish_body(keys(spk_id=0), []), 43))  # a signed prekey id 0
    a.expect_error(ErrorCode.BAD_REQUEST, 43)
    a.send(KeyFetch(alice, (), 44))
    assert a.expect(KeyBundles).count == 0  # none of it was applied
    assert publish(a, published, prekeys(1, 100)).prekeys == 100
    assert publish(a, published, prekeys(101, 100)).prekeys == MAX_PREKEYS
    a.send(KeyPublish(1, publish_body(published, prekeys(201, 1)), 45))
    a.expect_error(ErrorCode.KEYS_FULL, 45)
    a.send(KeyPublish(1, publish_body(published, prekeys(1, 1)), 46))  # an id it holds: ignored, not over
    assert a.expect(KeyState).prekeys == MAX_PREKEYS
    a.send(KeyFetch("no-such-user-here", (), 47))
    a.expect_error(ErrorCode.USER_NOT_FOUND, 47)
    a.alive()


def test_an_anonymous_device_or_a_session_that_did_not_ask_has_no_keys(server: Server, names: Names) -> None:
    alice, bob = names("alice"), names("bob")
    anonymous = device(server, alice, "")
    anonymous.send(KeyPublish(0, publish_body(keys(), []), 50))
    anonymous.expect_error(ErrorCode.DEVICE_REQUIRED, 50)
    assert fetch(anonymous, alice) == {}  # fetching needs no device
    plain = device(server, bob, "b1", e2e=False)
    plain.send(KeyFetch(alice, (), 51))
    plain.expect_error(ErrorCode.UNSUPPORTED, 51)
    older = device(server, bob, "b2", minor=6)  # a 1.6 peer does not know the frame at all
    older.send(KeyFetch(alice, (), 52))
    older.expect_error(ErrorCode.UNSUPPORTED, 52)
    for conn in (anonymous, plain, older):
        conn.alive()


def test_a_device_is_told_when_its_supply_runs_low_and_sees_its_state_at_login(server: Server, names: Names) -> None:
    alice = names("alice")
    a = device(server, alice, "d1")
    publish(a, keys(spk_id=9), prekeys(1, PREKEY_LOW + 1))
    askers = [device(server, names(f"asker{i}"), "x") for i in range(2)]
    fetch(askers[0], alice)  # one handed out: PREKEY_LOW left, so alice's device is told
    pushed = a.expect(KeyState)
    assert (pushed.request_id, pushed.published, pushed.prekeys) == (0, 1, PREKEY_LOW)
    fetch(askers[1], alice)  # below the mark and above 0: not told again
    a.alive()
    again = RawConn(server)  # a later login of the device hears where it stands
    again.welcome()
    again.send(Hello(VERSION_MAJOR, 7, ("e2e",), request_id=1), Login(alice, PASSWORD, "d1", "", 2))
    again.login_ok()
    state = again.expect(KeyState)
    assert (state.published, state.spk_id, state.prekeys) == (1, 9, PREKEY_LOW - 1)


def test_a_forgotten_device_is_no_longer_served(server: Server, names: Names) -> None:
    alice, bob = names("alice"), names("bob")
    a1, a2, b = device(server, alice, "d1"), device(server, alice, "d2"), device(server, bob, "b1")
    publish(a1, keys(), prekeys(1, 3))
    publish(a2, keys(), prekeys(1, 3))
    a1.send(KeyForget("d2", 60))  # a user's other device (a lost laptop)
    assert a1.expect(KeyState) == KeyState(0, 0, 0, 0, request_id=60)
    assert list(fetch(b, alice)) == ["d1"]
    a1.send(KeyForget("", 61))  # this one
    assert a1.expect(KeyState).published == 0
    assert fetch(b, alice) == {}
    a1.send(KeyForget("never-published", 62))  # nothing to forget: the same answer
    assert a1.expect(KeyState) == KeyState(0, 0, 0, 0, request_id=62)
    b.send(KeyForget("d1", 63))  # bob's own device d1, not alice's: alice's are not his to forget
    assert b.expect(KeyState).published == 0
    a2.alive()
