"""The processes of the file-transfer benchmark (``benchmarks/transfer.py`` drives them).

Each is a subcommand, started pinned to a core, that speaks one JSON line per result on
its standard output and takes one-word commands on its standard input:

- ``raw-recv [--to-file F] [--hash]``: listens on 127.0.0.1, says its port, takes one connection
  and ``recv_into`` a 1 MiB buffer until the peer closes (with ``--hash``: feeds each
  buffer to a SHA-256, as a server that checks an upload does; with ``--to-file``: writes each
  buffer to F and fsyncs it at the end, as the server and the client do a file); says
  the bytes, the seconds from the accept to the last byte, and its CPU seconds;
- ``raw-send --port P --file F``: connects and ``socket.sendfile``s F, then closes;
- ``transfer``: logs in a sender and a receiver; ``upload``: the sender's
  ``Client.send_file`` of the file to the receiver (upload, then its offer), saying when
  the server answered its FileUpload (the chunks start) and when all is done;
  ``download``: the receiver's ``Client.download`` of that offer; ``quit``;
- ``chat``: logs in a sender and a receiver; ``go``: the sender sends the receiver a
  message every ``--interval`` seconds (paced: message k is due at start + k x interval)
  carrying its send time, until ``--count`` are sent or ``stop`` comes; then it waits for
  the last ones (at most ``--drain`` seconds) and says each message's latency, from its
  send time to its arrival, both on this process's monotonic clock. It runs at nice -10
  when it may (root): the transfer client shares its core here, not in a class.

Every loop is bounded: by a byte count, a message count, and a deadline.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import selectors
import socket
import time
from pathlib import Path
from typing import Any

from benchmarks.loadgen import PASSWORD, percentiles
from csce513msg.client import Client
from csce513msg.protocol import ContentType, Deliver, Message, parse_offer

HOST = "127.0.0.1"
RAW_BUFFER = 1 << 20  #: bytes the raw receiver asks for at a time
RAW_TIMEOUT = 60.0  #: seconds the raw sides wait for a connection, or for the next bytes
CHAT_NICE = -10  #: the chat process's priority (root only; see ``chat``)
CLIENT_TIMEOUT = 60.0  #: seconds a transfer's client waits for its next reply


class Commands:
    """Lines from standard input, read without a buffer that select cannot see."""

    def __init__(self) -> None:
        self.buf = b""

    def take(self) -> str | None:
        """A whole line already read, if there is one."""
        line, sep, rest = self.buf.partition(b"\n")
        if not sep:
            return None
        self.buf = rest
        return line.decode().strip()

    def read(self) -> str:
        """The next line (waits for it); "" once standard input is closed."""
        while (line := self.take()) is None:
            data = os.read(0, 4096)
            if not data:
                return ""
            self.buf += data
        return line


def say(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def raw_recv(to_file: Path | None, hashed: bool = False) -> None:
    with socket.create_server((HOST, 0)) as server:
        say(port=server.getsockname()[1])
        server.settimeout(RAW_TIMEOUT)
        conn, _ = server.accept()
    cpu0, t0 = cpu_seconds(), time.monotonic()
    fd = os.open(to_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600) if to_file else -1
    buf = bytearray(RAW_BUFFER)
    view = memoryview(buf)
    digest = hashlib.sha256() if hashed else None
    got = 0
    with conn:
        conn.settimeout(RAW_TIMEOUT)
        while n := conn.recv_into(buf):
            got += n
            if digest is not None:
                digest.update(view[:n])
            if fd >= 0:
                part = view[:n]
                while part:
                    part = part[os.write(fd, part) :]
    if fd >= 0:
        os.fsync(fd)
        os.close(fd)
    say(bytes=got, seconds=time.monotonic() - t0, cpu_s=cpu_seconds() - cpu0)


def raw_send(port: int, path: Path) -> None:
    cpu0, t0 = cpu_seconds(), time.monotonic()
    with socket.create_connection((HOST, port), timeout=RAW_TIMEOUT) as sock, path.open("rb") as f:
        sent = sock.sendfile(f)
        sock.shutdown(socket.SHUT_WR)
        sock.recv(1)  # the receiver closes once it has read everything
    say(bytes=sent, seconds=time.monotonic() - t0, cpu_s=cpu_seconds() - cpu0)


class Answers:
    """A progress callback: when the upload's first answer came (said at once, so the
    orchestrator reads the server's CPU there: the chunks start), and its last."""

    def __init__(self) -> None:
        self.first = self.last = 0.0

    def __call__(self, _done: int, _size: int) -> None:
        self.last = time.monotonic()
        if not self.first:
            self.first = self.last
            say(started=True)


def is_offer(msg: Message) -> bool:
    return isinstance(msg, Deliver) and msg.content_type == ContentType.FILE_OFFER


def transfer(port: int, sender: str, receiver: str, path: Path, downloads: Path) -> None:
    """The upload's seconds run from the server's answer to FileUpload (the sender's hash of
    the file done) to its FileState "complete"; ``prepare_s`` is the time before (the hash
    and that round trip), ``offer_s`` the offer's post after. The download's run from the
    call to the file checked (size, SHA-256), fsynced and named on the receiver's disk."""
    commands = Commands()
    with (
        Client.connect(HOST, port, user=sender, password=PASSWORD, timeout=CLIENT_TIMEOUT) as a,
        Client.connect(HOST, port, user=receiver, password=PASSWORD, timeout=CLIENT_TIMEOUT) as b,
    ):
        say(ready=True)
        if commands.read() != "upload":
            return
        answers = Answers()
        t0 = time.monotonic()
        upload, _receipt = a.send_file(receiver, path, progress=answers)
        t1 = time.monotonic()
        first, last = answers.first, answers.last
        say(prepare_s=first - t0, upload_s=last - first, offer_s=t1 - last, bytes=upload.size)
        if commands.read() != "download":
            return
        deliver = b.next_message(is_offer)
        if not isinstance(deliver, Deliver):  # cannot be: is_offer takes only a Deliver
            raise TypeError(f"expected the offer, got {deliver!r}")
        offer = parse_offer(deliver.body)
        t2 = time.monotonic()
        got = b.download(offer, downloads)
        t3 = time.monotonic()
        size = got.stat().st_size
        got.unlink()
        say(download_s=t3 - t2, bytes=size)
        commands.read()  # "quit"


def chat(port: int, sender: str, receiver: str, count: int, interval: float, drain: float) -> None:
    """u2 writes to u3 every ``interval``; latency from each message's send time to its arrival.
    This process shares core 1 with the transfer client, which in a class runs on another
    student's machine: it asks for ``CHAT_NICE`` (as root) so the client's own CPU does not
    enter the latency it measures; the nice value it got is reported."""
    try:
        os.setpriority(os.PRIO_PROCESS, 0, CHAT_NICE)
    except PermissionError:
        pass  # not root: the default priority, and the report says so
    nice = os.getpriority(os.PRIO_PROCESS, 0)
    commands = Commands()
    a = Client.connect(HOST, port, user=sender, password=PASSWORD)
    b = Client.connect(HOST, port, user=receiver, password=PASSWORD)
    say(ready=True)
    if commands.read() != "go":
        return
    latencies: list[float] = []
    late: list[float] = []  # how long after its due time each message was sent
    sent = 0
    t0 = time.monotonic()
    stop_sending = t0 + count * interval  # the count bounds the time too ...
    deadline = stop_sending + drain  # ... and the drain after it
    with selectors.DefaultSelector() as sel:
        sel.register(0, selectors.EVENT_READ, None)
        for client in (a, b):
            sel.register(client.sock, selectors.EVENT_READ, client)
        while True:
            now = time.monotonic()
            if sent < count and now < stop_sending and now >= t0 + sent * interval:
                a.session.send_text(receiver, f"{sent} {now!r}")
                a.flush()
                late.append(now - (t0 + sent * interval))
                sent += 1
                continue
            if (now >= stop_sending and len(latencies) >= sent) or now >= deadline:
                break
            wake = t0 + sent * interval if now < stop_sending else deadline
            for key, _ in sel.select(max(0.0, wake - now)):
                if key.data is None:  # "stop", or any word, or the end of the input: stop sending
                    commands.read()
                    sel.unregister(0)
                    stop_sending, deadline = now, now + drain
                    continue
                data = key.data.sock.recv(65536)
                if not data:
                    raise ConnectionError("the server closed a chat connection")
                arrived = time.monotonic()
                for msg in key.data.session.receive_data(data):
                    if key.data is b and isinstance(msg, Deliver):
                        latencies.append(arrived - float(msg.body.split()[1]))
                key.data.flush()  # acknowledgements
    seconds = time.monotonic() - t0
    a.close()
    b.close()
    say(sent=sent, delivered=len(latencies), seconds=seconds, nice=nice,
        max_ms=round(max(latencies, default=0.0) * 1e3, 4), late_p99_ms=percentiles(late)["p99_ms"],
        latencies_ms=[round(x * 1e3, 4) for x in latencies], **percentiles(latencies))  # fmt: skip
    commands.read()  # "quit"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["raw-recv", "raw-send", "transfer", "chat"])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--file", type=Path)
    parser.add_argument("--to-file", type=Path)
    parser.add_argument("--hash", action="store_true", help="raw-recv: a SHA-256 of what arrives")
    parser.add_argument("--downloads", type=Path)
    parser.add_argument("--sender", default="u0")
    parser.add_argument("--receiver", default="u1")
    parser.add_argument("--count", type=int, default=1000, help="chat: messages at most")
    parser.add_argument("--interval", type=float, default=0.005, help="chat: seconds between messages")
    parser.add_argument("--drain", type=float, default=10.0, help="chat: seconds to wait for the last ones")
    args = parser.parse_args()
    if args.mode == "raw-recv":
        raw_recv(args.to_file, args.hash)
    elif args.mode == "raw-send":
        raw_send(args.port, args.file)
    elif args.mode == "transfer":
        transfer(args.port, args.sender, args.receiver, args.file, args.downloads)
    else:
        chat(args.port, args.sender, args.receiver, args.count, args.interval, args.drain)


if __name__ == "__main__":
    main()
