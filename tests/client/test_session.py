"""The pure client session: handshake, version rule, request ids, coalesced acks."""

from __future__ import annotations

import pytest

from csce513msg.client import ClientSession, ClientState
from csce513msg.crypto.device import E2EError
from csce513msg.protocol import (
    Ack,
    ContentType,
    Deliver,
    ErrorCode,
    FrameDecoder,
    GroupCreate,
    GroupInfo,
    Hello,
    History,
    LocalProtocolError,
    Login,
    LoginOk,
    Message,
    Offer,
    RemoteProtocolError,
    Send,
    TargetKind,
    Welcome,
    decode,
    encode,
)
from csce513msg.protocol.transfer import STREAM_V1

WELCOME = Welcome(1, 3, 65536, 16384, 64, 90000, ("presence",), "test")


def sent(session: ClientSession) -> list[Message]:
    return [decode(f) for f in FrameDecoder(1 << 20).feed(session.data_to_send())]


def test_waits_for_welcome_then_says_hello_and_logs_in() -> None:
    session = ClientSession("alice", presence=True)
    with pytest.raises(LocalProtocolError):
        session.who()  # nothing may be sent before the Welcome
    session.receive_data(encode(WELCOME))
    hello, login = sent(session)
    assert isinstance(hello, Hello) and hello.features == ("presence",) and hello.version_major == 1
    assert isinstance(login, Login) and login.user == "alice"
    assert list(session.pending) == [login.request_id]  # Hello has no reply to wait for
    session.receive_data(encode(LoginOk(1, "alice", request_id=login.request_id)))
    assert session.state is ClientState.READY and not session.pending


def test_refuses_a_server_of_another_major_version() -> None:
    session = ClientSession("alice")
    with pytest.raises(RemoteProtocolError) as err:
        session.receive_data(encode(Welcome(2, 0, 65536, 16384, 64, 90000, (), "future")))
    assert err.value.code == ErrorCode.VERSION_MISMATCH and err.value.fatal


def test_request_ids_are_unique_and_never_zero() -> None:
    session = ClientSession()
    session.receive_data(encode(WELCOME))
    ids = [session.ping() for _ in range(1000)]
    assert 0 not in ids and len(set(ids)) == 1000


def test_deliveries_are_acknowledged_once_per_stream_per_batch() -> None:
    session = ClientSession()
    session.receive_data(encode(WELCOME))
    session.data_to_send()

    def deliver(stream: str, position: int) -> bytes:
        return encode(Deliver(1, 0, position, 0, position, "x", "y", stream, b"."))

    session.receive_data(deliver("dm:a,b", 1) + deliver("dm:a,b", 2) + deliver("dm:a,c", 7) + deliver("dm:a,b", 3))
    acks = sent(session)
    assert sorted((a.stream, a.position) for a in acks if isinstance(a, Ack)) == [("dm:a,b", 3), ("dm:a,c", 7)]


def test_a_repeated_delivery_is_acknowledged_but_not_shown_twice() -> None:
    session = ClientSession()
    session.receive_data(encode(WELCOME))
    session.data_to_send()
    deliver = encode(Deliver(1, 0, 99, 0, 1, "x", "y", "dm:x,y", b"once"))
    assert len(session.receive_data(deliver)) == 1
    session.data_to_send()
    assert session.receive_data(deliver) == []  # e.g. re-sent after a lost Ack
    (ack,) = sent(session)
    assert isinstance(ack, Ack) and ack.position == 1


def test_groups_are_asked_for_in_hello_and_sent_only_to_a_server_of_1_4() -> None:
    session = ClientSession("alice", groups=True)
    session.receive_data(encode(Welcome(1, 4, 65536, 16384, 64, 90000, ("presence", "groups"), "test")))
    hello, _login = sent(session)
    assert isinstance(hello, Hello) and (hello.version_minor, hello.features) == (4, ("groups",))
    assert session.has_groups and session.minor == 4
    rid = session.group_create("lab-1", invite_only=True)
    (create,) = sent(session)
    assert create == GroupCreate("lab-1", 1, request_id=rid) and rid in session.pending
    session.receive_data(encode(GroupInfo("g:1", "lab-1", "alice", 1, 1, 1, 1, request_id=rid)))
    assert rid not in session.pending  # GroupInfo answers it
    session.send_text("lab-1", "hi", kind=TargetKind.GROUP)
    session.history("g:1", 5, kind=TargetKind.GROUP)
    send, history = sent(session)
    assert isinstance(send, Send) and send.target_kind == TargetKind.GROUP and send.target == "lab-1"
    assert isinstance(history, History) and (history.target_kind, history.target) == (TargetKind.GROUP, "g:1")
    old_server = ClientSession("alice", groups=True)
    old_server.receive_data(encode(WELCOME))  # a server of 1.3: nothing of groups
    assert old_server.minor == 3 and not old_server.has_groups
    with pytest.raises(LocalProtocolError):
        old_server.group_list()
    assert old_server.pending.keys() == {1 + 1}  # only the Login
    old_client = ClientSession(minor=3)
    old_client.receive_data(encode(WELCOME))
    (hello,) = sent(old_client)
    assert isinstance(hello, Hello) and hello.version_minor == 3 and hello.features == ()


def test_an_encrypted_file_s_offer_never_goes_in_clear() -> None:
    """Its body carries the file's key: without an end-to-end conversation to seal it in, it is
    refused and nothing is queued (a plaintext offer goes as it always did)."""
    session = ClientSession("alice")
    session.receive_data(encode(WELCOME))
    sent(session)
    waiting = dict(session.pending)  # the Login
    digest = "ab" * 32
    offer = Offer("q8Vn0x1cTtGm4kQe5W2aYA", "a.txt", 37, digest, STREAM_V1, bytes(32), 5, digest)
    with pytest.raises(E2EError, match="end-to-end only"):
        session.send_offer("bob", offer)
    assert sent(session) == [] and session.pending == waiting
    session.send_offer("bob", Offer("q8Vn0x1cTtGm4kQe5W2aYA", "a.txt", 5, digest))
    (send,) = sent(session)
    assert isinstance(send, Send) and send.content_type == ContentType.FILE_OFFER
