"""The baseline: a minimal relay on the same framing, with no chat logic.

    python -m benchmarks.relay [--port 0]

epoll, one recv per readable socket, writes batched per loop pass (one send per
connection per pass), and only the 12-byte frame prefix decoded. A client's first
frame (type 0x01) carries its index in the request id; after that, each frame is
forwarded whole to the client whose index is in its request id. Groups (workload 3),
as minimal: a frame of type 0x04 joins the group numbered by its request id; one of
type 0x05 is forwarded whole to every other member of the group its request id names
(the same bytes to each), and its sender gets a 12-byte frame of type 0x06 back (so a
closed loop has a reply to wait for, as PUBLISH's count is for Redis). No acks, receipts,
storage or checks: what is left is the cost of moving bytes through Python and the
kernel, the floor under any chat server written this way. It is fixed, not tuned to
flatter anyone; the report compares the servers to it, measured in the same run.
"""

from __future__ import annotations

import argparse
import select
import signal
import socket
import struct

PREFIX = struct.Struct("!IBBHI")  # length, type, flags, header length, request id


def serve(port: int) -> None:
    listener = socket.create_server(("127.0.0.1", port), backlog=4096)
    listener.setblocking(False)
    ep = select.epoll()
    ep.register(listener.fileno(), select.EPOLLIN)
    conns: dict[int, socket.socket] = {}
    inbuf: dict[int, bytes] = {}
    out: dict[int, list[bytes]] = {}  # fd -> frames to send this pass
    index: dict[int, int] = {}  # client index -> fd
    groups: dict[int, list[int]] = {}  # group number -> its members' fds
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    print(f"relay listening on 127.0.0.1:{listener.getsockname()[1]}", flush=True)
    while not stopping:
        try:
            events = ep.poll(0.5)
        except InterruptedError:
            continue
        dirty: set[int] = set()
        for fd, _mask in events:
            if fd == listener.fileno():
                while True:
                    try:
                        sock, _ = listener.accept()
                    except BlockingIOError:
                        break
                    sock.setblocking(False)
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    conns[sock.fileno()] = sock
                    inbuf[sock.fileno()] = b""
                    ep.register(sock.fileno(), select.EPOLLIN)
                continue
            try:
                data = conns[fd].recv(65536)
            except (BlockingIOError, ConnectionError):
                data = None
            if not data:
                if data is None:
                    continue
                ep.unregister(fd)
                conns.pop(fd).close()
                for members in groups.values():
                    if fd in members:
                        members.remove(fd)
                continue
            buf = inbuf[fd] + data
            off = 0
            while len(buf) - off >= 12:
                length, ftype, _flags, _hlen, rid = PREFIX.unpack_from(buf, off)
                end = off + 12 + length
                if end > len(buf):
                    break
                if ftype == 0x01:
                    index[rid] = fd
                elif ftype == 0x04:
                    groups.setdefault(rid, []).append(fd)
                elif ftype == 0x05:
                    frame = buf[off:end]
                    for member in groups.get(rid, ()):
                        if member != fd:
                            out.setdefault(member, []).append(frame)
                            dirty.add(member)
                    out.setdefault(fd, []).append(PREFIX.pack(0, 0x06, 0, 0, rid))
                    dirty.add(fd)
                elif (dest := index.get(rid)) is not None:
                    out.setdefault(dest, []).append(buf[off:end])
                    dirty.add(dest)
                off = end
            inbuf[fd] = buf[off:]
        for fd in dirty:  # one send per connection per pass
            peer = conns.get(fd)
            if peer is None:
                continue
            data = b"".join(out.pop(fd))
            peer.setblocking(True)  # the baseline keeps it simple: loopback, small bursts
            peer.sendall(data)
            peer.setblocking(False)
    for sock in conns.values():
        sock.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    serve(parser.parse_args().port)


if __name__ == "__main__":
    main()
