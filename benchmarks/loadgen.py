"""The load generator: a process of its own (pinned to the core the server is not on).

    python -m benchmarks.loadgen dm --port P --clients 100 --rate 5000 --seconds 3
    python -m benchmarks.loadgen idle --port P --connections 1000
    python -m benchmarks.loadgen dm --port P --relay    # the baselines: the minimal relay,
    python -m benchmarks.loadgen dm --port P --redis    # and Redis pub/sub
    python -m benchmarks.loadgen group --port P --members 100 --rate 0 --seconds 3
    python -m benchmarks.loadgen mixed --port P --clients 100 --idle 5000 --rate 1000 --seconds 10

It speaks over stdin/stdout with the orchestrator (``benchmarks/suite.py``): it logs
its clients in, prints ``{"ready": ...}``, waits for ``go`` (so the orchestrator reads
the server's /proc figures around exactly the measured part), runs, prints its
result as one JSON line, and waits for ``quit`` before closing its sockets.

Direct messages are an open loop: message k is due at ``t0 + k / rate``, from client
``k % clients`` to a random other client, and carries its due time, so latency = the
recipient's read time - the due time, on this process's one monotonic clock: a
stalled sender (a full window, a slow loop) cannot hide latency. Each sender keeps at
most ``--window`` messages without a receipt, as a real client would. Every loop is
bounded: the run stops at ``--seconds``, the drain ``--drain`` seconds after it.

The same workload runs against the baselines. The relay (``relay.py``) forwards frames
and sends no receipts: in a closed loop a delivery frees its sender's window. Redis:
each client subscribes to its own channel over RESP3 (``resp.py``), so one connection
both publishes and receives as ours does; a send is ``PUBLISH u<peer> <body>``, and its
reply (the count of subscribers reached) is the receipt that frees the window.

Against the chat server every client says Hello at 1.5 with the ``coalescing`` feature
(``--no-coalescing``: without it, so a 1.5 server sends today's plain frames and the two
can be compared); a Receipts or Delivers frame counts as the receipts and deliveries it
carries, each a sample read at the time its frame was read.

Group fan-out (``group``, workload 3): client 0 is the sender, the others the members.
Against the chat server they also ask for the ``groups`` feature; the sender
creates the group ``bench`` and adds every member in one GroupAdd, and each member reads
(and acknowledges) the "added" event before ``ready``. The sender keeps ``--window``
messages without a stored receipt (``--rate 0``: as fast as that allows) or sends on a
pace; each member, per read of its socket, sends one Ack for the highest position it
read (``--no-ack``: never; the server then needs a window that never fills). Every
delivery is a latency sample (the member's read time - the message's due time), and
each member checks it got every message once and in order (``Member``). The relay:
members join group 1 (a 0x04 frame) and the sender posts to it (0x05), answered by a
0x06 frame; Redis: members SUBSCRIBE to the channel ``g``, the sender PUBLISHes to it.
Neither has acknowledgements: their members only read.

Active among idle (``mixed``, workload 7): ``--clients`` active clients (u0..) run the
direct-message workload above, paced, while ``--idle`` more (the users after them) are
logged in and then send nothing at all: no ping either (the server is given an idle
timeout longer than the run), so every wake-up the server has comes from the active
load and what the idle ones cost is only their being watched. One process holds them
all; only the active ones are in the run's selector. At the end, ``idle_open`` counts
the idle connections the server has not closed: none may be readable (a close or an
error frame would make it so).
"""

from __future__ import annotations

import argparse
import array
import json
import multiprocessing
import os
import random
import resource
import selectors
import socket
import struct
import sys
import threading
import time
from typing import Any

from benchmarks.resp import RespDecoder, RespError, command
from csce513msg.protocol import (
    Ack,
    ContentType,
    Deliver,
    Delivers,
    Feature,
    Frame,
    FrameDecoder,
    GroupAdd,
    GroupCreate,
    GroupInfo,
    Hello,
    Login,
    MsgType,
    Receipt,
    Receipts,
    Register,
    Send,
    TargetKind,
    acks_frames,
    decode,
    encode,
)

STAMP = struct.Struct("!dII")  # due time, sender index, sequence number (per sender)
BODY = 60  #: bytes of each message body, as in the reference figures
PASSWORD = "bench password"
LOGIN_WAVE = 50  #: logins in flight at once (the server queues the rest fairly; a short queue is enough)
GROUP = "bench"  #: workload 3's group on the chat server
GROUP_STAMP = struct.Struct("!dI")  # due time, sequence number (the one sender's)
RELAY_PREFIX = struct.Struct("!IBBHI")  # the relay's frames: length, type, flags, header length, request id
RELAY_JOIN, RELAY_POST, RELAY_REPLY = 0x04, 0x05, 0x06  #: the relay's group frames; request id = group 1
REDIS_CHANNEL = b"g"  #: the Redis baseline's group
#: an Acks frame's limits: the server's defaults (--max-frame, --window), which the benchmarks keep
ACKS_MAX_FRAME, ACKS_MAX_ENTRIES = 65536, 64
SETUP_SECONDS = 60.0  #: bound on creating the group and every member reading its first frame


def user(i: int) -> str:
    return f"u{i}"


class Conn:
    """One client connection of the generator."""

    def __init__(self, index: int, sock: socket.socket, redis: bool = False) -> None:
        self.index = index
        self.sock = sock
        self.decoder: FrameDecoder | RespDecoder = RespDecoder() if redis else FrameDecoder(1 << 24)
        self.out: list[bytes] = []
        self.in_flight = 0  # sends without a receipt
        self.backlog: list[bytes] = []  # due, but the window was full
        self.seq = 0
        self.coalescing = False  # it asked for 1.5's coalescing: its acks of several streams go as one Acks


def connect_all(
    port: int, count: int, target: str, register: bool = False, group: bool = False, coalescing: bool = True
) -> tuple[list[Conn], int]:
    """``count`` logged-in connections (relay: announced; Redis: subscribed to their channel);
    returns them and how many were refused. ``target``: "chat", "relay" or "redis".
    ``group`` (workload 3): chat clients ask for groups (the ``groups`` feature);
    Redis clients but the first (the sender) subscribe to the group's channel instead.
    ``coalescing``: chat clients ask for coalesced receipts and deliveries (1.5)."""
    features: tuple[str, ...] = (Feature.GROUPS.value,) if group else ()
    features += (Feature.COALESCING.value,) if coalescing else ()
    hello = encode(Hello(version_minor=5, features=features))
    conns: list[Conn] = []
    refused = 0
    for start in range(0, count, LOGIN_WAVE):
        wave = []
        for i in range(start, min(count, start + LOGIN_WAVE)):
            sock = socket.create_connection(("127.0.0.1", port), timeout=30)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = Conn(i, sock, target == "redis")
            conn.coalescing = coalescing and target == "chat"
            if target == "relay":
                sock.sendall(struct.pack("!IBBHI", 0, 0x01, 0, 0, i))
                conns.append(conn)
                continue
            if target == "redis":
                channel = REDIS_CHANNEL if group and i else user(i).encode()
                sock.sendall(command(b"HELLO", b"3") + command(b"SUBSCRIBE", channel))
                wave.append(conn)
                continue
            kind = Register if register else Login  # Register: a server without accounts (durability memory)
            sock.sendall(hello + encode(kind(user(i), PASSWORD, f"bench-{i}", request_id=1)))
            wave.append(conn)
        for conn in wave:  # Welcome, then LoginOk (or an error: e.g. select's SERVER_FULL)
            ok = None
            while ok is None:
                data = conn.sock.recv(65536)
                if not data:
                    ok = False
                if isinstance(conn.decoder, RespDecoder):  # HELLO's map, then the subscribe push
                    replies = conn.decoder.feed(data)
                    ok = False if any(isinstance(r, RespError) for r in replies) else None
                    ok = True if any(isinstance(r, list) and r[:1] == [b"subscribe"] for r in replies) else ok
                    continue
                for frame in conn.decoder.feed(data):
                    if frame.type == MsgType.LOGIN_OK:
                        ok = True
                    elif frame.type == MsgType.ERROR:
                        ok = False
            if ok:
                conns.append(conn)
            else:
                refused += 1
                conn.sock.close()
    for conn in conns:
        conn.sock.setblocking(False)
    return conns, refused


def percentiles(samples: list[float]) -> dict[str, float | None]:
    ordered = sorted(samples)

    def at(q: float) -> float | None:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e3, 4) if ordered else None

    result = {"p50_ms": at(0.50), "p90_ms": at(0.90), "p99_ms": at(0.99)}
    result["p999_ms"] = at(0.999) if len(ordered) >= 10_000 else None  # only with enough samples
    return result


def run_dm(
    conns: list[Conn], rate: float, seconds: float, window: int, drain: float, target: str, seed: int,
    burst: Burst | None = None,
) -> dict[str, Any]:  # fmt: skip
    """The direct-message workload over ``conns`` (``target``: "chat", "relay", "redis"); with
    ``burst``, a burst of logins starts halfway (after a second of warm-up), and latency is
    also given for the half before it and the half with it."""
    rng = random.Random(seed)
    n = len(conns)
    sel = selectors.DefaultSelector()
    for conn in conns:
        sel.register(conn.sock, selectors.EVENT_READ, conn)
    pad = b"x" * (BODY - STAMP.size)
    latencies: list[float] = []
    dues: list[float] = []  # each sample's due time, from t0 (to split the run into windows)
    seen_ids: set[int] = set()
    duplicates = order_violations = errors = delivered = sent = 0
    last_seq: dict[tuple[int, int], int] = {}  # (sender, recipient) -> last seq delivered
    cpu0, t0 = time.process_time(), time.monotonic() + 0.05
    closed = rate <= 0  # closed loop: every client keeps `window` messages in flight, as fast as it can
    total = 0 if closed else int(rate * seconds)
    due_count = 0
    end = t0 + seconds
    deadline = end + drain

    def make(sender: Conn, due: float) -> None:
        peer = rng.randrange(n - 1)
        peer += peer >= sender.index
        sender.seq += 1
        body = STAMP.pack(due, sender.index, sender.seq) + pad
        if target == "relay":
            frame = struct.pack("!IBBHI", len(body), 0x03, 0, 0, peer) + body
        elif target == "redis":
            frame = command(b"PUBLISH", user(peer).encode(), body)
        else:
            frame = encode(Send(1, 0, 0, user(peer), body, request_id=1))
        sender.backlog.append(frame)

    by_index = {c.index: c for c in conns}
    paced_relay = target == "relay" and not closed  # a paced relay client sends when due (there are no receipts)
    while time.monotonic() < deadline and (
        (closed and time.monotonic() < end) or due_count < total or delivered < sent or any(c.backlog for c in conns)
    ):
        now = time.monotonic()
        if burst is not None and not burst.started and now >= t0 + (seconds + 1) / 2:
            burst.start()
        now_due = min(total, int((now - t0) * rate) + 1) if now >= t0 and not closed else 0
        while due_count < now_due:  # messages now due: stamped with their due time, not the send time
            make(conns[due_count % n], t0 + due_count / rate)
            due_count += 1
        if closed and t0 <= now < end:
            for conn in conns:
                while conn.in_flight + len(conn.backlog) < window:
                    make(conn, now)
        for conn in conns:
            if conn.backlog and (paced_relay or conn.in_flight < window):
                room = len(conn.backlog) if paced_relay else window - conn.in_flight
                batch, conn.backlog = conn.backlog[:room], conn.backlog[room:]
                conn.in_flight += 0 if paced_relay else len(batch)
                conn.out += batch
                sent += len(batch)
            if conn.out:
                data, conn.out = b"".join(conn.out), []
                conn.sock.setblocking(True)
                conn.sock.sendall(data)
                conn.sock.setblocking(False)
        wait = (
            0.001
            if closed
            else 0.0
            if due_count < now_due
            else max(0.0, min(0.001, t0 + due_count / rate - time.monotonic()))
        )
        for key, _ in sel.select(wait):
            conn = key.data
            try:
                data = conn.sock.recv(1 << 20)
            except BlockingIOError:
                continue
            if not data:
                errors += 1
                sel.unregister(conn.sock)
                continue
            read_at = time.monotonic()
            bodies, failed, repeated = read_bodies(conn, data, target, seen_ids)
            errors += failed
            duplicates += repeated
            for body in bodies:
                due, sender_index, seq = STAMP.unpack_from(body)
                latencies.append(read_at - due)
                dues.append(due - t0)
                delivered += 1
                if target == "relay" and closed:  # no receipts from a relay: a delivery frees the window
                    by_index[sender_index].in_flight -= 1
                pair = (sender_index, conn.index)
                order_violations += seq <= last_seq.get(pair, 0)
                last_seq[pair] = seq
    elapsed = time.monotonic() - t0
    if burst is not None:  # after a second of warm-up, two windows: before the burst, and with it
        half = (seconds + 1) / 2
        windows = {"before": (1.0, half), "during": (half, seconds)}
        burst_result: dict[str, Any] = {
            name: percentiles([lat for lat, due in zip(latencies, dues, strict=True) if lo <= due < hi])
            for name, (lo, hi) in windows.items()
        }
        burst_result["logins"] = burst.result()
    return {
        **({"burst": burst_result} if burst is not None else {}),
        "sent": sent,
        "delivered": delivered,
        "duplicates": duplicates,
        "order_violations": order_violations,
        "errors": errors,
        "latency_samples": len(latencies),
        "latency": percentiles(latencies),
        "elapsed_s": round(elapsed, 3),
        "delivered_per_s": round(delivered / elapsed, 1),
        "generator_cpu_utilisation": round((time.process_time() - cpu0) / elapsed, 3),
    }


def read_bodies(conn: Conn, data: bytes, target: str, seen_ids: set[int]) -> tuple[list[bytes], int, int]:
    """What ``data`` brings ``conn``: the bodies delivered, errors and duplicate message ids.
    An answer to a send (a receipt, PUBLISH's count, an error) makes room in the window;
    deliveries are acknowledged, as the shipped client does."""
    bodies: list[bytes] = []
    errors = duplicates = 0
    if isinstance(conn.decoder, RespDecoder):
        for reply in conn.decoder.feed(data):
            if isinstance(reply, list) and reply[:1] == [b"message"]:
                bodies.append(reply[2])
            elif isinstance(reply, (int, RespError)):  # PUBLISH's count of subscribers reached
                conn.in_flight -= 1
                errors += isinstance(reply, RespError)
        return bodies, errors, duplicates
    acks: dict[str, int] = {}
    for frame in conn.decoder.feed(data):
        if frame.type in (MsgType.RECEIPT, MsgType.ERROR):
            if frame.request_id:  # the answer to a Send: room in the window
                conn.in_flight -= 1
            errors += frame.type == MsgType.ERROR
        elif frame.type == MsgType.RECEIPTS:  # several receipts in one frame (1.5)
            conn.in_flight -= sum(1 for r in _receipts(frame) if r.request_id)
        elif target == "relay" and frame.type == 0x03:
            bodies.append(frame.body)
        elif frame.type in (MsgType.DELIVER, MsgType.DELIVERS):
            for msg in _delivers(frame):
                duplicates += msg.message_id in seen_ids
                seen_ids.add(msg.message_id)
                acks[msg.stream] = max(acks.get(msg.stream, 0), msg.position)
                bodies.append(msg.body)
    if len(acks) > 1 and conn.coalescing:  # as the shipped client: several streams, Acks (1.5)
        conn.out += acks_frames(acks, ACKS_MAX_FRAME, ACKS_MAX_ENTRIES)
    elif acks:
        conn.out.append(b"".join(encode(Ack(p, s)) for s, p in acks.items()))
    return bodies, errors, duplicates


def _receipts(frame: Frame) -> tuple[Receipt, ...]:
    """The receipts of a Receipts frame (1.5)."""
    msg = decode(frame)
    assert isinstance(msg, Receipts)
    return msg.receipts


def _delivers(frame: Frame) -> tuple[Deliver, ...]:
    """The deliveries of a Deliver or a Delivers frame (1.5)."""
    msg = decode(frame)
    if isinstance(msg, Delivers):
        return msg.delivers
    assert isinstance(msg, Deliver)
    return (msg,)


class Burst:
    """A burst of logins, from a process of its own (so the generator's loop is not slowed):
    ``count`` logins at ``per_second``, each on a new connection, as users burst0..burstN."""

    def __init__(self, port: int, count: int, per_second: float) -> None:
        self.results: multiprocessing.Queue[list[float]] = multiprocessing.Queue()
        self.process = multiprocessing.Process(target=_logins, args=(port, count, per_second, self.results))
        self.started = False
        self.count = count

    def start(self) -> None:
        self.process.start()
        self.started = True

    def result(self) -> dict[str, Any]:
        """Each login's time to LoginOk, summarised (waits at most 60 s for the process)."""
        times = sorted(self.results.get(timeout=60)) if self.started else []
        self.process.join(30)
        median_ms = round(times[len(times) // 2] * 1e3, 1) if times else None
        max_ms = round(times[-1] * 1e3, 1) if times else None
        return {"asked": self.count, "completed": len(times), "median_ms": median_ms, "max_ms": max_ms}


def _logins(port: int, count: int, per_second: float, out: multiprocessing.Queue[list[float]]) -> None:
    times: list[float] = []

    def one(i: int) -> None:
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(encode(Hello()) + encode(Login(f"burst{i}", PASSWORD, f"burst-{i}", request_id=1)))
            decoder = FrameDecoder(1 << 20)
            while data := sock.recv(65536):
                types = [frame.type for frame in decoder.feed(data)]
                if MsgType.LOGIN_OK in types:
                    times.append(time.monotonic() - started)
                    return
                if MsgType.ERROR in types:
                    return  # not completed: counted as such

    threads = []
    t0 = time.monotonic()
    for i in range(count):
        time.sleep(max(0.0, t0 + i / per_second - time.monotonic()))
        threads.append(threading.Thread(target=one, args=(i,), daemon=True))
        threads[-1].start()
    for thread in threads:
        thread.join(30)
    out.put(times)


class Member:
    """One group member's side of workload 3: it reads what arrives, checks that every
    message comes once and in order (the sender numbers them 1, 2, ...; 0 is the setup's),
    and, against the chat server, answers each read with one Ack for the highest position
    in the group's stream that read brought (none with ``acks`` False).

    ``feed(data)`` returns the stamps (due time, sequence number) of the messages ``data``
    completed and the Ack's bytes (b"" when there is nothing to acknowledge). Delivers are
    decoded once per message, not per member: they are the same bytes for every member,
    so a ``cache`` shared by the members keeps the generator's own cost down.
    """

    def __init__(self, target: str, acks: bool = True, cache: dict[bytes, Deliver] | None = None) -> None:
        self.target = target
        self.acks = acks
        self.cache = {} if cache is None else cache
        self.decoder: FrameDecoder | RespDecoder = RespDecoder() if target == "redis" else FrameDecoder(1 << 24)
        self.stream = ""  #: the group's stream, from the first Deliver (chat)
        self.events = 0  #: group events read (content type 3: the setup's "added")
        self.last_seq = -1  #: the last sequence number read (the baselines' setup sends message 0)
        self.received = self.duplicates = self.gaps = self.reads = self.acks_sent = self.errors = 0

    def reset(self) -> None:
        """Forget the setup: the counts start again at ``go``, with message 1 next."""
        self.last_seq = 0
        self.received = self.duplicates = self.gaps = self.reads = self.acks_sent = self.errors = 0

    def feed(self, data: bytes) -> tuple[list[tuple[float, int]], bytes]:
        self.reads += 1
        bodies: list[bytes] = []
        position = 0
        if isinstance(self.decoder, RespDecoder):
            for reply in self.decoder.feed(data):
                if isinstance(reply, list) and reply[:1] == [b"message"]:
                    bodies.append(reply[2])
        else:
            for frame in self.decoder.feed(data):
                if self.target == "relay":
                    if frame.type == RELAY_POST:
                        bodies.append(frame.body)
                    continue
                if frame.type == MsgType.DELIVERS:  # never a group's (encoded once for all), but in case
                    delivers = _delivers(frame)
                elif frame.type != MsgType.DELIVER:
                    self.errors += frame.type == MsgType.ERROR
                    continue
                else:
                    msg = self.cache.get(frame.header)
                    if msg is None:
                        if len(self.cache) >= 4096:  # bounded: a message decoded again is only slower
                            self.cache.clear()
                        decoded = decode(frame)
                        assert isinstance(decoded, Deliver)
                        msg = self.cache[frame.header] = decoded
                    delivers = (msg,)
                for msg in delivers:
                    self.stream = msg.stream
                    position = max(position, msg.position)
                    if msg.content_type == ContentType.GROUP_EVENT:
                        self.events += 1
                    else:
                        bodies.append(msg.body)
        stamps = []
        for body in bodies:
            due, seq = GROUP_STAMP.unpack_from(body)
            stamps.append((due, seq))
            if seq <= self.last_seq:
                self.duplicates += 1
                continue
            self.gaps += seq - self.last_seq - 1
            self.last_seq = seq
            self.received += seq > 0
        if position and self.acks:
            self.acks_sent += 1
            return stamps, encode(Ack(position, self.stream))
        return stamps, b""


def group_post(target: str, seq: int, due: float) -> bytes:
    """The sender's message ``seq`` to the group, stamped with its due time."""
    body = GROUP_STAMP.pack(due, seq) + b"x" * (BODY - GROUP_STAMP.size)
    if target == "relay":
        return RELAY_PREFIX.pack(len(body), RELAY_POST, 0, 0, 1) + body
    if target == "redis":
        return command(b"PUBLISH", REDIS_CHANNEL, body)
    return encode(Send(TargetKind.GROUP, ContentType.TEXT, 0, GROUP, body, request_id=1))


def _pump(conns: dict[int, Conn], handle: Any, deadline: float, done: Any) -> None:
    """Read every readable connection into ``handle(conn, data)`` until ``done()`` or the deadline."""
    with selectors.DefaultSelector() as sel:
        for conn in conns.values():
            sel.register(conn.sock, selectors.EVENT_READ, conn)
        while not done():
            if time.monotonic() > deadline:
                raise RuntimeError("group setup did not finish in time")
            for key, _ in sel.select(0.05):
                try:
                    data = key.data.sock.recv(1 << 20)
                except BlockingIOError:
                    continue
                if not data:
                    raise RuntimeError(f"connection {key.data.index} closed during the group setup")
                handle(key.data, data)


def setup_group(conns: list[Conn], target: str, acks: bool) -> dict[int, Member]:
    """Make the group of every connection but the first (the sender) and return its
    members, each having read the group's first frame: the chat's "added" event
    (acknowledged unless ``acks`` is False), or the baselines' message 0 (sent here)."""
    sender, cache = conns[0], dict[bytes, Deliver]()
    members = {c.index: Member(target, acks, cache) for c in conns[1:]}
    deadline = time.monotonic() + SETUP_SECONDS
    if target == "chat":
        replies: list[GroupInfo] = []

        def answered(conn: Conn, data: bytes) -> None:
            assert isinstance(conn.decoder, FrameDecoder)
            for frame in conn.decoder.feed(data):
                if frame.type == MsgType.ERROR:
                    raise RuntimeError(f"group setup refused: {decode(frame)}")
                if frame.type == MsgType.GROUP_INFO:
                    info = decode(frame)
                    assert isinstance(info, GroupInfo)
                    replies.append(info)

        sender.sock.sendall(encode(GroupCreate(GROUP, 0, request_id=2)))
        _pump({0: sender}, answered, deadline, lambda: len(replies) == 1)
        names = tuple(user(c.index) for c in conns[1:])
        sender.sock.sendall(encode(GroupAdd(GROUP, names, request_id=3)))
        _pump({0: sender}, answered, deadline, lambda: len(replies) == 2)
        if replies[1].members != len(conns):
            raise RuntimeError(f"the group has {replies[1].members} members, not {len(conns)}")
    else:
        if target == "relay":
            for conn in conns[1:]:
                conn.sock.sendall(RELAY_PREFIX.pack(0, RELAY_JOIN, 0, 0, 1))
            time.sleep(0.2)  # the joins and message 0 come on different sockets: let the joins land first
        sender.sock.sendall(group_post(target, 0, time.monotonic()))

    def first(conn: Conn, data: bytes) -> None:
        member = members[conn.index]
        _stamps, ack = member.feed(data)
        if ack:
            conn.sock.sendall(ack)

    def everyone() -> bool:
        return all(m.events if target == "chat" else m.last_seq == 0 for m in members.values())

    by_index = {c.index: c for c in conns[1:]}
    _pump(by_index, first, deadline, everyone)
    if target != "chat":  # and the sender has the answer to message 0 (PUBLISH's count, the relay's 0x06)
        replies_0: list[object] = []
        _pump({0: sender}, lambda conn, data: replies_0.extend(conn.decoder.feed(data)), deadline, lambda: replies_0)
    for member in members.values():
        member.reset()
    return members


def run_group(
    conns: list[Conn], members: dict[int, Member], rate: float, seconds: float, window: int, drain: float,
    target: str,
) -> dict[str, Any]:  # fmt: skip
    """Workload 3 over ``conns`` (the sender first) and their ``members`` (see ``Member``)."""
    sender = conns[0]
    sel = selectors.DefaultSelector()
    for conn in conns:
        sel.register(conn.sock, selectors.EVENT_READ, conn)
    latencies = array.array("d")
    errors = sent = answered = delivered_receipts = received = 0
    cpu0, t0 = time.process_time(), time.monotonic() + 0.05
    closed = rate <= 0
    total = 0 if closed else int(rate * seconds)
    end, due_count = t0 + seconds, 0
    deadline = end + drain
    others = len(members)

    def pending() -> bool:  # something sent is not yet everywhere
        return bool(sender.backlog or sender.in_flight or received < (sent - errors) * others)

    while time.monotonic() < deadline and ((closed and time.monotonic() < end) or due_count < total or pending()):
        now = time.monotonic()
        if closed and t0 <= now < end:
            while sender.in_flight + len(sender.backlog) < window:
                sender.seq += 1
                sender.backlog.append(group_post(target, sender.seq, now))
        elif not closed and now >= t0:
            for k in range(due_count, min(total, int((now - t0) * rate) + 1)):  # stamped with the due time
                sender.seq += 1
                sender.backlog.append(group_post(target, sender.seq, t0 + k / rate))
                due_count += 1
        if sender.backlog and sender.in_flight < window:
            room = window - sender.in_flight
            batch, sender.backlog = sender.backlog[:room], sender.backlog[room:]
            sender.in_flight += len(batch)
            sent += len(batch)
            sender.out += batch
        for conn in conns:
            if conn.out:
                data, conn.out = b"".join(conn.out), []
                conn.sock.setblocking(True)
                conn.sock.sendall(data)
                conn.sock.setblocking(False)
        wait = 0.001 if closed or due_count >= total else max(0.0, min(0.001, t0 + due_count / rate - time.monotonic()))
        for key, _ in sel.select(wait):
            conn = key.data
            try:
                data = conn.sock.recv(1 << 20)
            except BlockingIOError:
                continue
            if not data:
                errors += 1
                sel.unregister(conn.sock)
                continue
            read_at = time.monotonic()
            if conn is sender:  # the answers that free the window
                if isinstance(conn.decoder, RespDecoder):
                    for reply in conn.decoder.feed(data):
                        if isinstance(reply, (int, RespError)):
                            conn.in_flight -= 1
                            answered += 1
                            errors += isinstance(reply, RespError)
                    continue
                for frame in conn.decoder.feed(data):
                    if frame.type in (MsgType.RECEIPT, MsgType.ERROR, RELAY_REPLY) and frame.request_id:
                        conn.in_flight -= 1
                        answered += 1
                        errors += frame.type == MsgType.ERROR and target == "chat"
                    elif frame.type == MsgType.RECEIPT:
                        delivered_receipts += 1  # Receipt{delivered}: every member acknowledged it
                    elif frame.type == MsgType.RECEIPTS and target == "chat":  # several of both kinds (1.5)
                        stored = sum(1 for r in _receipts(frame) if r.request_id)
                        conn.in_flight -= stored
                        answered += stored
                        delivered_receipts += len(_receipts(frame)) - stored
                continue
            member = members[conn.index]
            stamps, ack = member.feed(data)
            received += len(stamps)
            for due, _seq in stamps:
                latencies.append(read_at - due)
            if ack:
                try:
                    if (n := conn.sock.send(ack)) < len(ack):
                        conn.out.append(ack[n:])
                except BlockingIOError:
                    conn.out.append(ack)
    elapsed = time.monotonic() - t0
    stored = sent - errors
    complete = sum(m.received == stored and not m.duplicates and not m.gaps for m in members.values())
    reads = sum(m.reads for m in members.values())
    return {
        "members": others,
        "sent": sent,
        "answered": answered,
        "stored": stored,
        "expected_deliveries": stored * others,
        "deliveries": received,
        "members_complete": complete,
        "duplicates": sum(m.duplicates for m in members.values()),
        "gaps": sum(m.gaps for m in members.values()),
        "errors": errors + sum(m.errors for m in members.values()),
        "member_reads": reads,
        "acks_sent": sum(m.acks_sent for m in members.values()),
        "deliveries_per_read": round(received / reads, 2) if reads else None,
        "delivered_receipts": delivered_receipts,
        "latency_samples": len(latencies),
        "latency": percentiles(list(latencies)),
        "elapsed_s": round(elapsed, 3),
        "messages_per_s": round(stored / elapsed, 1),
        "deliveries_per_s": round(received / elapsed, 1),
        "generator_cpu_utilisation": round((time.process_time() - cpu0) / elapsed, 3),
    }


def idle_still_open(conns: list[Conn]) -> int:
    """How many of ``conns`` (idle: they sent nothing since their login) the server has not
    closed or written to: a socket with nothing to read. One epoll over all, no wait."""
    with selectors.DefaultSelector() as sel:
        for conn in conns:
            sel.register(conn.sock, selectors.EVENT_READ)
        readable = len(sel.select(0))
    return len(conns) - readable


def run_probe(conns: list[Conn], count: int, rate: float) -> dict[str, Any]:
    """Latency of a few messages between two connections among many idle ones."""
    return run_dm(conns[:2], rate, count / rate, 8, 5.0, "chat", seed=1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["dm", "idle", "group", "mixed"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--relay", action="store_true", help="the target is benchmarks.relay")
    parser.add_argument("--redis", action="store_true", help="the target is redis-server (pub/sub)")
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--rate", type=float, default=5000.0)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--window", type=int, default=8)
    parser.add_argument("--drain", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--members", type=int, default=100, help="group: members besides the sender")
    parser.add_argument("--idle", type=int, default=0, help="mixed: idle logged-in connections beside the clients")
    parser.add_argument("--no-ack", action="store_true", help="group: members read and never acknowledge")
    parser.add_argument("--seed", type=int, default=513)
    parser.add_argument("--register", action="store_true", help="register the clients instead of logging in")
    parser.add_argument("--burst", type=int, default=0, help="logins (users burst0..) to start halfway")
    parser.add_argument("--burst-rate", type=float, default=12.0, help="logins per second in the burst")
    parser.add_argument(
        "--no-coalescing", action="store_true", help="chat clients do not ask for coalesced frames (1.5)"
    )
    args = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    count = {"dm": args.clients, "idle": args.connections, "group": args.members + 1,
             "mixed": args.clients + args.idle}[args.mode]  # fmt: skip
    target = "relay" if args.relay else "redis" if args.redis else "chat"
    conns, refused = connect_all(
        args.port, count, target, args.register, group=args.mode == "group", coalescing=not args.no_coalescing
    )
    if args.mode == "group":
        started = time.monotonic()
        members = setup_group(conns, target, not args.no_ack)
        setup_s = round(time.monotonic() - started, 2)
    print(json.dumps({"ready": len(conns), "refused": refused}), flush=True)
    if sys.stdin.readline().strip() != "go":
        return
    if args.mode == "mixed":  # the active ones first (u0..), then the idle
        active, idle = conns[: args.clients], conns[args.clients :]
        result = run_dm(active, args.rate, args.seconds, args.window, args.drain, target, args.seed)
        result.update(idle_logged_in=len(idle), idle_open=idle_still_open(idle), active=len(active))
    elif args.mode == "dm":
        burst = Burst(args.port, args.burst, args.burst_rate) if args.burst else None
        result = run_dm(conns, args.rate, args.seconds, args.window, args.drain, target, args.seed, burst)
    elif args.mode == "group":
        result = run_group(conns, members, args.rate, args.seconds, args.window, args.drain, target)
        result["setup_s"] = setup_s
    else:
        result = run_probe(conns, 200, 100.0) if len(conns) >= 2 else {}
    result.update(connected=len(conns), refused=refused)
    print(json.dumps(result), flush=True)
    sys.stdin.readline()  # "quit": the orchestrator has read the server's figures
    for conn in conns:
        conn.sock.close()


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
