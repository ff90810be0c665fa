"""What end-to-end encryption (protocol 1.7) costs a client and the server: ``python -m benchmarks.e2e``.

    python -m benchmarks.e2e [--quick] [--parts client,stream,paths,callgrind,server] [--backends epoll,uvloop]
                             [--repeats 3] [--clients 30] [--count 2000] [--rate 100] [--out e2e.json]
                             [--dir DIR] [--vaults-on-disk]

**The client** (in this process, pinned to core 1; each figure the median of its samples,
every loop bounded by a count and a time):

- ``SecureDevice.encrypt`` and ``decrypt`` of a direct message (a 100-byte text), for a
  recipient with one device, and for a recipient with 3 devices while the sender has 2 other
  devices of its own (5 wrapped keys); the first message of a session (the sender's
  ``accept_directory``, which verifies the bundles and runs X3DH, then the envelope that
  carries the starts, then the recipient's X3DH answer) apart from steady ones: the same
  sender again (a chain step) and a reply after a turn (a DH ratchet step, on decrypt);
- ``Secure.seal`` and ``Secure.open`` with a real vault (``cost="test"``) on a disk, and the
  vault's save alone, in its parts: ``to_dict``, the JSON, ChaCha20-Poly1305, the atomic write
  (fsync, rename, fsync of the directory); the save again on tmpfs (no fsync to wait for), and
  on the disk with sessions with 29 classmates (a class of 30);
- the STREAM file encryption (``crypto/stream.py``), in memory and file to file, per MB,
  against raw ChaCha20-Poly1305 and SHA-256 on 64 KiB chunks (the ceilings) and a plain file
  copy (read, write, fsync, rename: the ceiling of file to file).

**The server's paths, in process** (those of ``benchmarks/test_e2e_paths.py``): the hub routing
one direct message (its batch stored in memory), and SQLite storing a batch of ten, with a
100-byte text and with envelopes of 326 and 850 bytes as the body, the bodies taking turns
round after round: the hub never reads an envelope, so only its size can cost the server
anything, and these medians show it without a live server's noise. **Callgrind** (where
valgrind is installed; not with ``--quick``): the same paths' instructions per message by
body, from runs of 100 and 300 messages (the collector off, ``PYTHONHASHSEED=0``), which no
noise moves.

**The server, live**: a fresh ``msgsrv`` per backend and repeat (pinned to core 0, accounts made
with ``--kdf-cost test``, ``--durability normal``) and one ``benchmarks.e2eload`` process (core 1)
with two sets of N clients, plain ones (``Client``) and ones with ``Secure``, each set sending
the same paced load (the same seeded sequence) of 100-byte texts to random peers of its own
set. The sets take turns in blocks (A B B A ...; which goes first alternates by repeat); the
server's CPU (user + system, all threads, /proc/PID/stat; and, finer, the sum of its threads'
schedstat in ns) is read before and after each block and summed per set, then divided by
its messages. The ratio is encrypted / plain on the same server, then the median over the
repeats. The encrypted clients' vaults are on tmpfs (/dev/shm) unless ``--vaults-on-disk``:
their fsyncs (4 a message, sender's and recipient's saves) are the client's cost, measured
above, and on a shared disk they stall the one client process for up to hundreds of ms, when
the two sets must offer the server the same load.

MB is 10^6 bytes.
"""

from __future__ import annotations

import argparse
import base64
import gc
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from benchmarks import proc, suite
from benchmarks.test_e2e_paths import BODIES, batcher, router
from benchmarks.transfer import TMPFS, Worker, disk_root, fs_type
from csce513msg.client.secure import Secure
from csce513msg.crypto import envelope as ev
from csce513msg.crypto import primitives as p
from csce513msg.crypto import stream
from csce513msg.crypto import vault as vault_module
from csce513msg.crypto.device import SecureDevice
from csce513msg.protocol import ContentType, Deliver, Receipt, Send, TargetKind
from csce513msg.protocol.names import direct_stream

T = TypeVar("T")
MB = 1_000_000
NOW_US = 1_700_000_000_000_000
TEXT = b"x" * 100  #: the direct message: a 100-byte text
PASSPHRASE = "bench passphrase"
CLIENT_CORE = 1
PARTS = ("client", "stream", "paths", "callgrind", "server")
CALLGRIND = 100  #: messages in the first callgrind run of each body (three times as many in the second)
ROUTES, BATCHES = 200, 10  #: the server's paths: routings, and batches of ten, timed together in each round
CLASS = 30  #: students in a class: the vault's save is measured again with a session with each other one
SHAPES = {"1 device": (1, 0), "3 devices + 2 own": (3, 2)}  #: recipient's devices, sender's other devices
Budget = tuple[int, float]  #: at most this many samples, and (past 3) at most this many seconds
#: each measured loop's budget (samples, seconds); the STREAM data's MB and passes; the server paths' rounds
FULL: dict[str, Any] = {"messages": (1000, 10.0), "starts": (200, 10.0), "vault": (500, 10.0), "stream_mb": 32,
                        "stream_repeats": 7, "path_rounds": 60}  # fmt: skip
QUICK: dict[str, Any] = {"messages": (60, 1.0), "starts": (15, 1.5), "vault": (40, 1.0), "stream_mb": 4,
                         "stream_repeats": 2, "path_rounds": 5}  # fmt: skip
#: the server part: clients in each set, messages each set sends, their rate (a second), fresh servers per
#: backend, the load's blocks (the sets take turns), seconds of the idle window measured before the load
SERVER_FULL: dict[str, Any] = {"clients": 30, "count": 2000, "rate": 100.0, "repeats": 3, "backends": "epoll,uvloop",
                               "blocks": 4, "idle": 2.0}  # fmt: skip
SERVER_QUICK: dict[str, Any] = {"clients": 4, "count": 200, "rate": 100.0, "repeats": 1, "backends": "epoll",
                                "blocks": 2, "idle": 0.5}  # fmt: skip


# ---- timing ----------------------------------------------------------------------------


class Samples:
    """Timings by name, in seconds; ``summary`` gives the median and quartiles in µs."""

    def __init__(self) -> None:
        self.by_name: dict[str, list[float]] = {}

    def time(self, name: str, run: Callable[..., T], *args: Any) -> T:
        """``run(*args)``, timed under ``name``."""
        start = time.perf_counter_ns()
        result = run(*args)
        self.by_name.setdefault(name, []).append((time.perf_counter_ns() - start) / 1e9)
        return result

    def summary(self) -> dict[str, dict[str, float | int]]:
        return {name: summarise(values) for name, values in self.by_name.items()}


def summarise(values: list[float]) -> dict[str, float | int]:
    """Median, quartiles (µs) and count of ``values`` (seconds)."""
    q = statistics.quantiles(values, n=4) if len(values) >= 2 else [values[0]] * 3
    return {"n": len(values), "median_us": round(statistics.median(values) * 1e6, 2),
            "p25_us": round(q[0] * 1e6, 2), "p75_us": round(q[2] * 1e6, 2)}  # fmt: skip


def bounded(budget: Budget) -> Iterator[int]:
    """Iterations of a measured loop: stop at ``budget``'s count, or at its time once 3 are done."""
    count, seconds = budget
    deadline = time.monotonic() + seconds
    for i in range(count):
        if i >= 3 and time.monotonic() > deadline:
            return
        yield i


# ---- the client: devices and a key directory in memory ---------------------------------


class Directory:
    """The key directory as the server keeps it, in memory: every bundle it serves carries a
    fresh one-time prekey, except for a device the asker already has a session with."""

    def __init__(self) -> None:
        self.devices: dict[str, dict[str, SecureDevice]] = {}

    def add(self, dev: SecureDevice) -> SecureDevice:
        self.devices.setdefault(dev.user, {})[dev.device] = dev
        return dev

    def fetch(self, user: str, known: tuple[str, ...] = ()) -> list[tuple[str, bytes]]:
        found = []
        for name, dev in sorted(self.devices.get(user, {}).items()):
            one_time = None if name in known else dev.keys.new_one_time(1)[0]
            found.append((name, dev.keys.bundle(one_time).to_bytes()))
        return found

    def meet(self, dev: SecureDevice, user: str) -> None:
        """``dev`` reads the devices of ``user`` and its own, as the client does before sending."""
        for who in (user, dev.user):
            warnings = dev.accept_directory(who, self.fetch(who, dev.known(who)))
            assert not warnings, warnings


def meet(dev: SecureDevice, user: str, theirs: list[tuple[str, bytes]], ours: list[tuple[str, bytes]]) -> None:
    """What the client does with the directory's answers before a first message: ``user``'s
    devices, then its own user's (sessions started with each: bundles verified, X3DH)."""
    dev.accept_directory(user, theirs)
    dev.accept_directory(dev.user, ours)


def to_json(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


def encrypt(dev: SecureDevice, to: str, msg_id: int) -> bytes:
    return dev.encrypt([to], TargetKind.USER, direct_stream(dev.user, to), msg_id, ev.TEXT, TEXT)


def decrypt(dev: SecureDevice, sender: str, data: bytes, to: str = "") -> None:
    """``dev`` opens what ``sender`` sent (to ``to``: by default ``dev``'s user)."""
    stream_name = direct_stream(sender, to or dev.user)
    kind, payload, warnings = dev.decrypt(sender, TargetKind.USER, stream_name, data)
    assert (kind, payload, warnings) == (ev.TEXT, TEXT, []), (kind, warnings)


class World:
    """alice's device a1 (and ``own`` others), bob's ``devices``, every session set up and
    answered: each device sends once in turn and every other decrypts it."""

    def __init__(self, devices: int, own: int) -> None:
        self.directory = Directory()
        new = self.directory.add
        self.alice = [new(SecureDevice.create("alice", f"a{i + 1}", NOW_US)) for i in range(own + 1)]
        self.bob = [new(SecureDevice.create("bob", f"b{i + 1}", NOW_US)) for i in range(devices)]
        self.a1, self.b1 = self.alice[0], self.bob[0]
        order = [self.a1, self.b1, *self.bob[1:], *self.alice[1:]]
        for msg_id, dev in enumerate(order, 1):
            other = "bob" if dev.user == "alice" else "alice"
            self.directory.meet(dev, other)
            data = encrypt(dev, other, msg_id)
            for reader in order:
                if reader is not dev:
                    decrypt(reader, dev.user, data, other)


def session_starts(devices: int, own: int, budget: Budget) -> tuple[Samples, int]:
    """The first message of new sessions: a new sender (with ``own`` new devices besides) each
    time, to bob's ``devices`` (kept). Returns the samples and the first envelope's size."""
    samples, size = Samples(), 0
    directory = Directory()
    bob = [directory.add(SecureDevice.create("bob", f"b{i + 1}", NOW_US)) for i in range(devices)]
    for k in bounded(budget):
        user = f"s{k}"  # a new user each time: a first contact, no identity to compare
        sender = [directory.add(SecureDevice.create(user, f"d{i + 1}", NOW_US)) for i in range(own + 1)][0]  # noqa: RUF015 - all made, the first kept
        theirs, ours = directory.fetch("bob"), directory.fetch(user, (sender.device,))
        samples.time("session start (accept_directory: verify, X3DH)", meet, sender, "bob", theirs, ours)
        data = samples.time("encrypt, first message (X3DH starts in it)", encrypt, sender, "bob", 1)
        samples.time("decrypt, first message (X3DH answer, DH ratchet step)", decrypt, bob[0], user, data)
        size = size or len(data)
    return samples, size


def steady(devices: int, own: int, budget: Budget) -> tuple[Samples, int]:
    """Steady messages in a conversation whose sessions are all answered: a turn (alice, then
    bob, each decrypting the other's: a DH ratchet step), then alice alone several times (chain
    steps). Returns the samples and a steady envelope's size."""
    world, samples = World(devices, own), Samples()
    a1, b1, msg_id, size = world.a1, world.b1, 100, 0
    for _ in bounded(budget):
        msg_id += 2
        data = samples.time("encrypt, steady", encrypt, a1, "bob", msg_id)
        samples.time("decrypt, steady, after a turn (DH ratchet step)", decrypt, b1, "alice", data)
        decrypt(a1, "bob", encrypt(b1, "alice", msg_id + 1))  # bob answers: the next is a turn again
        size = len(data)
    decrypt(b1, "alice", encrypt(a1, "bob", msg_id + 1))  # a turn, then the same sender again and again
    for k in bounded(budget):
        data = encrypt(a1, "bob", msg_id + 2 + k)
        samples.time("decrypt, steady, same sender again (chain step)", decrypt, b1, "alice", data)
    return samples, size


def client_messages(budget: Budget, starts: Budget) -> dict[str, Any]:
    """Every shape: the session starts and the steady messages."""
    out: dict[str, Any] = {}
    for shape, (devices, own) in SHAPES.items():
        first, first_size = session_starts(devices, own, starts)
        later, steady_size = steady(devices, own, budget)
        out[shape] = {"recipient_devices": devices, "own_other_devices": own, "wrapped_keys": devices + own,
                      "envelope_bytes": {"first": first_size, "steady": steady_size, "text": len(TEXT)},
                      "timings": {**first.summary(), **later.summary()}}  # fmt: skip
    return out


# ---- the client: Secure.seal and open, with the vault ----------------------------------


def secure_pair(directory: Directory, where: Path) -> tuple[Secure, Secure]:
    """alice and bob, each a ``Secure`` with a vault in ``where`` holding 100 one-time prekeys
    (as after a first login), each having read the other's devices."""
    pair = []
    for user, device in (("alice", "a1"), ("bob", "b1")):
        secure = Secure.from_vault(where / f"{user}.vault", PASSPHRASE, user, device, cost="test")
        secure.device.publication(b"", 0, NOW_US)  # its keys made, as after the first KeyState
        secure.save()
        directory.add(secure.device)
        pair.append(secure)
    for secure, other in zip(pair, ("bob", "alice"), strict=True):
        directory.meet(secure.device, other)
        secure.save()
    return pair[0], pair[1]


def deliver(sender: str, to: str, message_id: int, body: bytes) -> Deliver:
    stream_name = direct_stream(sender, to)
    return Deliver(TargetKind.USER, ContentType.ENVELOPE, message_id, 0, message_id, sender, to, stream_name, body)


def save_parts(secure: Secure, where: Path, samples: Samples, budget: Budget, prefix: str) -> None:
    """The vault's save (``Secure.save``), whole and in its parts as ``Secure.save`` and
    ``Vault.save`` make them: the device's ``to_dict``, the document's JSON, its encryption,
    the atomic write."""
    key, ad = p.random_bytes(p.KEY), b"x" * 45  # the same sizes as the vault's key and header
    target = where / "parts.vault"
    for _ in bounded(budget):
        samples.time(f"{prefix}save, whole (Secure.save)", secure.save)
        state = samples.time(f"{prefix}  to_dict", secure.device.to_dict)
        doc = {"device": state, "archive_key": base64.b64encode(key).decode()}  # Secure.save's document
        plain = samples.time(f"{prefix}  JSON", to_json, doc)
        sealed = samples.time(f"{prefix}  ChaCha20-Poly1305", p.seal, key, p.random_bytes(p.NONCE), plain, ad)
        record = json.dumps({"nonce": "x" * 16, "data": base64.b64encode(sealed).decode()}).encode() + b"\n"
        samples.time(f"{prefix}  atomic write (fsync, rename, fsync dir)", vault_module._write_atomic, target, record)


def client_vault(budget: Budget, disk: Path) -> dict[str, Any]:
    """``Secure.seal`` and ``open`` (each with its save; open also appends to the device's
    archive), and ``stored`` (the Receipt came: the sent message to the archive), a
    conversation taking turns, the vault on a disk; then the save alone, on the disk, on tmpfs
    (/dev/shm) and with 29 contacts, in its parts."""
    samples = Samples()
    out: dict[str, Any] = {}
    work = Path(tempfile.mkdtemp(prefix="csce513msg-e2e-", dir=disk))
    try:
        alice, bob = secure_pair(Directory(), work)
        msg_id = 1
        for _ in bounded(budget):
            body = samples.time("Secure.seal (encrypt + save)", alice.seal, "bob", msg_id, ev.TEXT, TEXT)
            sent = Send(TargetKind.USER, ContentType.ENVELOPE, msg_id, "bob", body)
            receipt = Receipt(2, msg_id, 0, msg_id, "dm:alice,bob", request_id=1)
            samples.time("Secure.stored (the sent text to the archive)", alice.stored, sent, receipt)
            got = samples.time(
                "Secure.open (decrypt + save + archive)", bob.open, deliver("alice", "bob", msg_id, body)
            )
            assert got is not None and got.body == TEXT and got.content_type == ContentType.TEXT
            reply = bob.seal("alice", msg_id + 1, ev.TEXT, TEXT)
            bob.stored(
                Send(TargetKind.USER, ContentType.ENVELOPE, msg_id + 1, "alice", reply),
                Receipt(2, msg_id + 1, 0, msg_id + 1, "dm:alice,bob", request_id=1),
            )
            back = alice.open(deliver("bob", "alice", msg_id + 1, reply))
            assert back is not None and back.body == TEXT
            msg_id += 2
        out["vault_bytes"] = (work / "alice.vault").stat().st_size
        out["vault_fs"] = fs_type(work)
        save_parts(alice, work, samples, budget, "")
        shm = Path("/dev/shm")
        if shm.is_dir() and fs_type(shm) in TMPFS:
            memory = Path(tempfile.mkdtemp(prefix="csce513msg-e2e-", dir=shm))
            try:
                shutil.copy(work / "alice.vault", memory / "alice.vault")
                on_tmpfs = Secure.from_vault(memory / "alice.vault", PASSPHRASE, "alice", "a1", cost="test")
                save_parts(on_tmpfs, memory, samples, budget, "tmpfs: ")
                on_tmpfs.close()
            finally:
                shutil.rmtree(memory, ignore_errors=True)
        classmates = Directory()  # a class of 30: alice has started sessions with 28 more classmates
        for i in range(CLASS - 2):
            mate = classmates.add(SecureDevice.create(f"c{i}", "d1", NOW_US))
            alice.device.accept_directory(mate.user, classmates.fetch(mate.user))
        alice.save()
        out["class_vault_bytes"] = (work / "alice.vault").stat().st_size
        save_parts(alice, work, samples, budget, f"{CLASS - 1} contacts: ")
        alice.close()
        bob.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out["timings"] = samples.summary()
    return out


# ---- the client: files (STREAM) ---------------------------------------------------------


def copy_file(src: Path, dst: Path) -> None:
    """The plain copy, written as ``encrypt_file`` writes (a temporary file, fsync, rename, fsync
    of the directory): the ceiling of file to file."""
    temp = dst.with_name(dst.name + ".part")
    with src.open("rb") as source, temp.open("wb") as out:
        while block := source.read(stream.CHUNK):
            out.write(block)
        out.flush()
        os.fsync(out.fileno())
    os.replace(temp, dst)
    directory = os.open(dst.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def stream_figures(size: int, repeats: int, disk: Path) -> dict[str, Any]:
    """Seconds per MB of each way of handling ``size`` bytes, the median of ``repeats`` runs
    (each one pass over the whole data, in 64 KiB chunks)."""
    data = os.urandom(size)
    chunks = [data[i : i + stream.CHUNK] for i in range(0, size, stream.CHUNK)]
    file_key, key = stream.new_file_key(), p.random_bytes(p.KEY)
    aead, nonce = ChaCha20Poly1305(key), bytes(p.NONCE)

    def raw_chacha() -> None:
        for chunk in chunks:
            aead.encrypt(nonce, chunk, None)

    raw_sealed = [aead.encrypt(nonce, chunk, None) for chunk in chunks]

    def raw_chacha_open() -> None:
        for piece in raw_sealed:
            aead.decrypt(nonce, piece, None)

    def sha256() -> None:
        h = hashlib.sha256()
        for chunk in chunks:
            h.update(chunk)
        h.digest()

    last = len(chunks) - 1
    maker = stream.Encryptor(file_key)  # the ciphertext the decryptor reads, made once
    header, sealed = maker.header(), [maker.seal_chunk(c, i == last) for i, c in enumerate(chunks)]

    def stream_encrypt() -> None:  # the output dropped chunk by chunk, as raw_chacha's is
        enc = stream.Encryptor(file_key)
        enc.header()
        for i, chunk in enumerate(chunks):
            enc.seal_chunk(chunk, i == last)

    def stream_decrypt() -> None:
        dec = stream.Decryptor(file_key, header)
        for piece in sealed:
            dec.open_chunk(piece)
        assert dec.finished

    work = Path(tempfile.mkdtemp(prefix="csce513msg-e2e-", dir=disk))
    try:
        plain, cipher, back, copied = work / "plain.bin", work / "cipher.bin", work / "back.bin", work / "copy.bin"
        plain.write_bytes(data)
        ways: dict[str, Callable[[], None]] = {
            "SHA-256 (hashlib)": sha256,
            "raw ChaCha20-Poly1305 (cryptography)": raw_chacha,
            "raw ChaCha20-Poly1305, decrypt": raw_chacha_open,
            "STREAM encrypt, in memory (Encryptor)": stream_encrypt,
            "STREAM decrypt, in memory (Decryptor)": stream_decrypt,
            "file copy (read, write, fsync, rename)": lambda: copy_file(plain, copied),
            "STREAM encrypt_file, file to file": lambda: stream.encrypt_file(plain, cipher, file_key),
            "STREAM decrypt_file, file to file": lambda: stream.decrypt_file(cipher, back, file_key),
        }
        runs: dict[str, list[float]] = {name: [] for name in ways}
        for _ in range(repeats):  # the ways interleaved, so a drift of the machine spreads over all
            for name, run in ways.items():
                if "file" in name:
                    os.sync()  # the last way's dirty pages written back first: each file way starts alike
                start = time.perf_counter()
                run()
                runs[name].append(time.perf_counter() - start)
        assert back.read_bytes() == data
    finally:
        shutil.rmtree(work, ignore_errors=True)
    raw = statistics.median(runs["raw ChaCha20-Poly1305 (cryptography)"])
    out: dict[str, Any] = {"bytes": size, "repeats": repeats, "chunk": stream.CHUNK, "fs": fs_type(disk), "ways": {}}
    for name, seconds in runs.items():
        med = statistics.median(seconds)
        out["ways"][name] = {"ms_per_mb": round(med / size * MB * 1e3, 3), "mb_s": round(size / med / MB, 1),
                             "x_raw_chacha": round(med / raw, 2), "runs_s": [round(s, 5) for s in seconds]}  # fmt: skip
    return out


# ---- the server ---------------------------------------------------------------------------


def server_paths(rounds: int, work: Path) -> dict[str, Any]:
    """The hub routing one direct message, and SQLite storing a batch of ten (``benchmarks/
    test_e2e_paths.py``), with a text or an envelope as the body: in each of ``rounds`` rounds,
    every body in turn (the order turning each round) times ``ROUTES`` routings and ``BATCHES``
    batches; the median over the rounds of each body's time per operation (µs), and over the text's."""
    routes = {body: router(body) for body in BODIES}
    batches = {body: batcher(body, work / f"{i}.db") for i, body in enumerate(BODIES)}
    times: dict[str, dict[str, list[float]]] = {"hub routes one direct message": {b: [] for b in BODIES},
                                                 "sqlite stores a batch of ten": {b: [] for b in BODIES}}  # fmt: skip
    try:
        order = list(BODIES)
        for r in range(rounds):
            for body in order[r % len(order) :] + order[: r % len(order)]:
                for path, run, n in (("hub routes one direct message", routes[body], ROUTES),
                                     ("sqlite stores a batch of ten", batches[body][0], BATCHES)):  # fmt: skip
                    start = time.perf_counter()
                    for _ in range(n):
                        run()
                    times[path][body].append((time.perf_counter() - start) / n)
    finally:
        for _, store in batches.values():
            store.close()
    found: dict[str, Any] = {}
    for path, by_body in times.items():
        text = statistics.median(by_body["text 100"])
        found[path] = {body: {**summarise(t), "x_text": round(statistics.median(t) / text, 3)}
                       for body, t in by_body.items()}  # fmt: skip
    return found


def callgrind_work(body: str, count: int, where: str) -> None:
    """What one callgrind run executes: ``count`` routings of a Send with ``body`` and
    ``count`` / 10 batches of ten stored (after one of each untimed), the collector off."""
    route = router(body)
    batch, store = batcher(body, Path(where) / "callgrind.db")
    route(), batch()
    gc.disable()
    for _ in range(count):
        route()
    for _ in range(count // 10):
        batch()
    store.close()


def callgrind_instructions(body: str, count: int, work: Path) -> int:
    """Instructions (callgrind's total) of a process that runs ``callgrind_work(body, count)``."""
    out = work / f"callgrind.{count}.out"
    code = f"from benchmarks.e2e import callgrind_work; callgrind_work({body!r}, {count}, {str(work)!r})"
    cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, "-c", code]
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONHASHSEED": "0", "PYTHONPATH": str(root)}
    subprocess.run(suite.pinned(CLIENT_CORE, cmd), cwd=root, env=env, check=True, capture_output=True, timeout=900)
    for db in work.glob("callgrind.db*"):  # a fresh store for every run
        db.unlink()
    totals = [line for line in out.read_text().splitlines() if line.startswith("totals:")]
    return int(totals[0].split()[1])


def server_instructions(work: Path) -> dict[str, Any]:
    """Callgrind, as CONTRIBUTING.md measures the per-message path (the collector off,
    ``PYTHONHASHSEED=0``): for each body, a run of ``CALLGRIND`` messages and one of three times
    as many; the difference over the difference in messages is the instructions per message
    (a routing and a tenth of a batch of ten), which a shared machine's noise does not move."""
    found: dict[str, Any] = {}
    for body in BODIES:
        small, large = (callgrind_instructions(body, n, work) for n in (CALLGRIND, 3 * CALLGRIND))
        found[body] = {"instructions_per_message": round((large - small) / (2 * CALLGRIND)), "runs": [small, large]}
    text = found["text 100"]["instructions_per_message"]
    for figures in found.values():
        figures["x_text"] = round(figures["instructions_per_message"] / text, 4)
    return found


def server_run(backend: str, repeat: int, settings: dict[str, Any], root: Path) -> dict[str, Any]:
    """One fresh server: the plain set's load and the encrypted set's (in the order of the repeat)."""
    n = settings["clients"]
    server = suite.Server(backend, 2 * n, root=root)
    vaults = Path(tempfile.mkdtemp(prefix="csce513msg-e2e-vaults-", dir=settings["vaults_dir"]))
    order = "plain,secure" if repeat % 2 == 0 else "secure,plain"
    bound = 120.0 + 4 * settings["count"] / settings["rate"]
    try:
        worker = Worker(CLIENT_CORE, "--port", str(server.port), "--server-pid", str(server.pid),
                        "--clients", str(n), "--count", str(settings["count"]), "--rate", str(settings["rate"]),
                        "--vaults", str(vaults), "--order", order, "--seed", str(repeat),
                        "--blocks", str(settings["blocks"]), "--idle", str(settings["idle"]),
                        "--bound", str(bound), module="benchmarks.e2eload")  # fmt: skip
        try:
            result = worker.read(2 * bound + 60)
        finally:
            worker.close()
    finally:
        server.stop()
        shutil.rmtree(vaults, ignore_errors=True)
    phases = result["phases"]
    plain, secure = phases["plain"], phases["secure"]
    ratio = {key: round(secure[key] / plain[key], 3) if plain[key] else None
             for key in ("server_cpu_us_per_message", "server_cpu_ns_us_per_message")}  # fmt: skip
    idle = result["idle_server_cpu_per_s"]
    rate = settings["rate"]  # the two sets offered the server the same load only if each kept the pace
    kept = all(x["messages_per_s"] >= 0.95 * rate and x["late_p99_ms"] <= 5e3 / rate for x in phases.values())
    return {"backend": backend, "repeat": repeat, "order": order, "phases": phases, "ratio": ratio, "idle": idle,
            "kept_pace": kept}  # fmt: skip


def server_part(settings: dict[str, Any], root: Path) -> dict[str, Any]:
    backends = settings["backends"].split(",")
    runs: dict[str, list[dict[str, Any]]] = {b: [] for b in backends}
    for repeat in range(settings["repeats"]):
        for backend in backends:
            runs[backend].append(server_run(backend, repeat, settings, root))
            print(f"server: {backend} run {repeat + 1} of {settings['repeats']} done", file=sys.stderr, flush=True)
    medians: dict[str, dict[str, Any]] = {}
    for backend, every in runs.items():
        points = [pt for pt in every if pt["kept_pace"]] or every  # a run whose sets fell behind compares nothing
        medians[backend] = {"runs_used": len(points), "all_kept_pace": all(pt["kept_pace"] for pt in every)}
        medians[backend] |= {
            mode: {key: round(statistics.median(pt["phases"][mode][key] for pt in points), 3)
                   for key, value in points[0]["phases"][mode].items() if isinstance(value, (int, float))}
            for mode in ("plain", "secure")
        } | {"ratio": {key: round(statistics.median(pt["ratio"][key] for pt in points if pt["ratio"][key]), 3)
                       for key in points[0]["ratio"]}}  # fmt: skip
    return {"settings": settings, "runs": runs, "medians": medians}


# ---- the report ------------------------------------------------------------------------------


def us(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:,.1f}"


def tables(report: dict[str, Any]) -> str:
    lines: list[str] = []
    if "messages" in report:
        shapes = list(report["messages"])
        names = list(report["messages"][shapes[0]]["timings"])
        lines += ["Client, per direct message of 100 bytes (median µs; the recipient's first device decrypts):", "",
                  f"| operation | {' | '.join(shapes)} |", "|---|" + "---|" * len(shapes)]  # fmt: skip
        for name in names:
            cells = [us(report["messages"][s]["timings"][name]["median_us"]) for s in shapes]
            lines.append(f"| {name} | {' | '.join(cells)} |")
        for which in ("first", "steady"):
            cells = [str(report["messages"][s]["envelope_bytes"][which]) for s in shapes]
            lines.append(f"| envelope bytes, {which} (the text: 100) | {' | '.join(cells)} |")
        lines.append("")
    if "vault" in report:
        v = report["vault"]
        lines += [f"Secure.seal / open with the vault (cost test, on {v['vault_fs']}: {v['vault_bytes']:,} bytes; "
                  f"{v['class_vault_bytes']:,} with {CLASS - 1} contacts; median µs):", "",
                  "| step | median µs | p25-p75 |", "|---|---|---|"]  # fmt: skip
        for name, t in v["timings"].items():
            lines.append(f"| {name} | {us(t['median_us'])} | {us(t['p25_us'])}-{us(t['p75_us'])} |")
        lines.append("")
    if "stream" in report:
        s = report["stream"]
        lines += [f"Files, {s['bytes'] / MB:g} MB in 64 KiB chunks (median of {s['repeats']}; files on {s['fs']}):", "",
                  "| way | ms per MB | MB/s | x raw ChaCha20-Poly1305 |", "|---|---|---|---|"]  # fmt: skip
        for name, w in s["ways"].items():
            lines.append(f"| {name} | {w['ms_per_mb']:.3f} | {w['mb_s']:,.0f} | {w['x_raw_chacha']:.2f} |")
        lines.append("")
    if "paths" in report:
        bodies = list(next(iter(report["paths"].values())))
        lines += ["The server's paths in process, the bodies taking turns (median µs, and over the text's):", "",
                  f"| path | {' | '.join(bodies)} |", "|---|" + "---|" * len(bodies)]  # fmt: skip
        for path, by_body in report["paths"].items():
            cells = [f"{us(by_body[b]['median_us'])} ({by_body[b]['x_text']:.2f}x)" for b in bodies]
            lines.append(f"| {path} | {' | '.join(cells)} |")
        lines.append("")
    if "callgrind" in report:
        cg = report["callgrind"]
        lines += [f"Callgrind, instructions per message (a routing and a tenth of a batch of ten; runs of "
                  f"{CALLGRIND} and {3 * CALLGRIND} messages):", "", f"| {' | '.join(cg)} |", "|---" * len(cg) + "|",
                  "| " + " | ".join(f"{b['instructions_per_message']:,} ({b['x_text']:.3f}x)" for b in cg.values())
                  + " |", ""]  # fmt: skip
    if "server" in report:
        srv = report["server"]
        st = srv["settings"]
        lines += [f"Server, {st['clients']} clients a set, {st['count']:,} messages paced at {st['rate']:g}/s, "
                  f"medians of {st['repeats']} fresh server(s) (of those whose sets kept the pace):", "",
                  "| backend | messages | body bytes | wire bytes / message (up / down) | server CPU µs / message "
                  "(/proc stat; schedstat) | encrypted / plain | clients' CPU µs / message | vault bytes |",
                  "|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for backend, m in srv["medians"].items():
            backend = f"{backend} ({m['runs_used']} runs)" if m["runs_used"] != st["repeats"] else backend
            for mode in ("plain", "secure"):
                x = m[mode]
                ratio = m["ratio"] if mode == "secure" else None
                ratio_text = (f"{ratio['server_cpu_us_per_message']:.2f}x; {ratio['server_cpu_ns_us_per_message']:.2f}x"
                              if ratio else "")  # fmt: skip
                vault = f"{x['vault_bytes_median']:,.0f}" if x["vault_bytes_median"] else "-"
                lines.append(
                    f"| {backend} | {'encrypted' if mode == 'secure' else 'plain'} | {x['body_bytes_median']:,.0f} | "
                    f"{x['wire_up_bytes_per_message']:,.0f} / {x['wire_down_bytes_per_message']:,.0f} | "
                    f"{x['server_cpu_us_per_message']:.1f}; {x['server_cpu_ns_us_per_message']:.1f} | {ratio_text} | "
                    f"{x['client_cpu_us_per_message']:,.0f} | {vault} |"
                )
        slow = [
            f"{r['backend']} run {r['repeat'] + 1}" for runs in srv["runs"].values() for r in runs if not r["kept_pace"]
        ]
        if slow:
            lines += ["", "Left out of the medians (unless no run of the backend kept it): a set fell behind the pace "
                      f"(under 95 % of it, or late p99 over 5 intervals) in {', '.join(slow)}"]  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a check that it works (about a minute), not figures")
    parser.add_argument(
        "--parts",
        default=None,
        help=f"any of {','.join(PARTS)} (default: all; callgrind only "
        "where valgrind is installed, and not with --quick)",
    )
    parser.add_argument("--backends", default=None, help=f"the server part's (default {SERVER_FULL['backends']})")
    parser.add_argument(
        "--repeats", type=int, default=None, help=f"fresh servers per backend (default {SERVER_FULL['repeats']})"
    )
    parser.add_argument(
        "--clients", type=int, default=None, help=f"clients in each set (default {SERVER_FULL['clients']})"
    )
    parser.add_argument(
        "--count", type=int, default=None, help=f"messages each set sends (default {SERVER_FULL['count']})"
    )
    parser.add_argument(
        "--rate", type=float, default=None, help=f"messages/s each set sends (default {SERVER_FULL['rate']:g})"
    )
    parser.add_argument("--dir", type=Path, default=None, help="where vaults and files go (default: a disk)")
    parser.add_argument("--vaults-on-disk", action="store_true", help="the server part's vaults on --dir, not tmpfs")
    parser.add_argument("--out", type=Path, default=None, help="the JSON report")
    args = parser.parse_args()
    default = [p for p in PARTS if p != "callgrind" or (shutil.which("valgrind") and not args.quick)]
    parts = args.parts.split(",") if args.parts else default
    if unknown := set(parts) - set(PARTS):
        parser.error(f"unknown parts: {', '.join(sorted(unknown))}")
    budgets = QUICK if args.quick else FULL
    settings = dict(SERVER_QUICK if args.quick else SERVER_FULL)
    for key in ("backends", "repeats", "clients", "count", "rate"):
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    if unknown := set(str(settings["backends"]).split(",")) - set(suite.ALL_BACKENDS):
        parser.error(f"unknown backends: {', '.join(sorted(unknown))}")
    root = disk_root(args.dir)
    shm = Path("/dev/shm")
    on_tmpfs = not args.vaults_on_disk and shm.is_dir() and fs_type(shm) in TMPFS
    settings["vaults_dir"] = str(shm if on_tmpfs else root)
    settings["vaults_fs"] = fs_type(Path(settings["vaults_dir"]))
    report: dict[str, Any] = {
        "schema": "csce513msg-e2e/1", "mode": "quick" if args.quick else "full",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": proc.machine(),
        "settings": {"client": f"in one process pinned to core {CLIENT_CORE}", "dir": str(root),
                     "fs_type": fs_type(root), "budgets": budgets, "mb": MB, "text_bytes": len(TEXT)},
        "parts": parts,
    }  # fmt: skip
    started = time.monotonic()
    if "client" in parts or "stream" in parts:
        pinned = (os.cpu_count() or 1) >= 2
        if pinned:
            os.sched_setaffinity(0, {CLIENT_CORE})
        if "client" in parts:
            report["messages"] = client_messages(budgets["messages"], budgets["starts"])
            report["vault"] = client_vault(budgets["vault"], root)
        if "stream" in parts:
            report["stream"] = stream_figures(int(budgets["stream_mb"] * MB), int(budgets["stream_repeats"]), root)
        if pinned:
            os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
    if "paths" in parts:
        work = Path(tempfile.mkdtemp(prefix="csce513msg-e2e-", dir=root))
        try:
            report["paths"] = server_paths(int(budgets["path_rounds"]), work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    if "callgrind" in parts:
        work = Path(tempfile.mkdtemp(prefix="csce513msg-e2e-", dir=root))
        try:
            report["callgrind"] = server_instructions(work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    if "server" in parts:
        report["server"] = server_part(settings, root)
    report["seconds"] = round(time.monotonic() - started, 1)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(tables(report))


if __name__ == "__main__":
    main()
