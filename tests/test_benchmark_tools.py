"""The benchmark's own parts that a wrong answer would hide in a table: the RESP3 decoder
of the Redis baseline, and what counts as a sustained load."""

from __future__ import annotations

from benchmarks.resp import RespDecoder, RespError, command
from benchmarks.suite import sustained

REPLIES = (
    b"%2\r\n+server\r\n+redis\r\n+proto\r\n:3\r\n"  # HELLO 3's map
    b">3\r\n$9\r\nsubscribe\r\n$2\r\nu1\r\n:1\r\n"  # the subscription, as a push
    b">3\r\n$7\r\nmessage\r\n$2\r\nu1\r\n$5\r\na\r\nbc\r\n"  # a body holding CRLF
    b":1\r\n-ERR wrong\r\n$-1\r\n"  # PUBLISH's count, an error, a null
)
EXPECTED = [
    [b"server", b"redis", b"proto", 3],
    [b"subscribe", b"u1", 1],
    [b"message", b"u1", b"a\r\nbc"],
    1,
]


def test_resp_replies_come_whole_however_the_bytes_are_split() -> None:
    for size in (1, 2, 7, len(REPLIES)):
        decoder = RespDecoder()
        got = [v for i in range(0, len(REPLIES), size) for v in decoder.feed(REPLIES[i : i + size])]
        assert got[:4] == EXPECTED
        assert isinstance(got[4], RespError) and got[4].args == (b"ERR wrong",)
        assert got[5] is None and len(got) == 6 and decoder.buf == b""


def test_a_resp_command_is_an_array_of_bulk_strings() -> None:
    assert command(b"PUBLISH", b"u7", b"x\r\n") == b"*3\r\n$7\r\nPUBLISH\r\n$2\r\nu7\r\n$3\r\nx\r\n\r\n"


def test_sustained_means_95_percent_delivered_with_the_generator_not_the_limit() -> None:
    point = {"offered_rate": 10000.0, "delivered_per_s": 9600.0, "generator_limited": False}
    assert sustained(point)
    assert not sustained({**point, "delivered_per_s": 9400.0})
    assert not sustained({**point, "generator_limited": True})
