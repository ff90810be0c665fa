"""Wire one engine to several pure client sessions in memory, with a fixed clock."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, TypeVar

from csce513msg.client import ClientSession
from csce513msg.crypto.passwords import COSTS, Scrypt
from csce513msg.hub import Abort, Action, Close, Engine, HubConfig, Lane, Submit, Write
from csce513msg.protocol import (
    VERSION_MINOR,
    Error,
    FrameDecoder,
    Message,
    decode,
)
from csce513msg.store import Account, Batch, MemoryStore, Store
from csce513msg.store.files import FileShelf

WALL_OFFSET = 1_700_000_000.0
PASSWORD = "correct horse"  #: every harness account's password
PASSWORDS = Scrypt(COSTS["test"])  # real scrypt, at the cost that takes microseconds

M = TypeVar("M", bound=Message)


@dataclass
class Peer:
    """One simulated connection and what it has seen."""

    conn: int
    session: ClientSession
    events: list[Message] = field(default_factory=list)
    closed: str | None = None  # the reason of a Close/Abort the engine issued
    raw: bool = False  # a raw peer decodes frames itself (no session logic)
    decoder: FrameDecoder = field(default_factory=lambda: FrameDecoder(1 << 24))

    def of(self, kind: type[M]) -> list[M]:
        """The events of type ``kind``, in order."""
        return [e for e in self.events if isinstance(e, kind)]


def codes(peer: Peer) -> list[int]:
    """The error codes ``peer`` was sent, in order."""
    return [e.code for e in peer.of(Error)]


def batch_of(job: Submit) -> Batch:
    """The storage batch a job of the store or loop lane would apply (``store.apply`` bound to it)."""
    assert job.lane in (Lane.STORE, Lane.LOOP) and isinstance(job.job, functools.partial), job
    batch = job.job.args[0]
    assert isinstance(batch, Batch), batch
    return batch


class Harness:
    """Runs the engine the way a backend would, without sockets or threads."""

    def __init__(
        self, store: Store | None = None, auto_jobs: bool = True, shelf: FileShelf | None = None, **config: Any
    ) -> None:
        """``config``: HubConfig's fields (``window=4``, ``idle_timeout=30.0``...); ``shelf``: the
        server keeps files there (1.6)."""
        config.setdefault("ack_delay", 0.0)  # acks commit at once here, unless a test asks otherwise
        self.store: Store = store or MemoryStore()
        accounts = self.store.load_accounts()
        tokens = self.store.load_device_tokens()
        groups = self.store.load_groups()
        classroom = self.store.load_classroom()
        uploads = shelf.load() if shelf is not None else None
        self.engine = Engine(
            self.store, HubConfig(**config), WALL_OFFSET, PASSWORDS, accounts, tokens, groups, classroom, shelf,
            uploads, self.store.load_keys(),
        )  # fmt: skip
        self.auto_jobs = auto_jobs  # False: jobs wait for run_jobs(), to test every ordering
        self.now = 1000.0
        self.peers: dict[int, Peer] = {}
        self.jobs: list[Submit] = []
        self._next = 0

    def account(self, name: str, role: str = "student") -> Account:
        """Make an account (as `msgsrv user add` would, with the server not running)."""
        account = Account(name, role, PASSWORDS.hash(PASSWORD))
        self.engine.gate.accounts[name] = account
        assert isinstance(self.store, MemoryStore), "accounts are made this way in a MemoryStore only"
        self.store.accounts[name] = account
        self.engine.groups.accounts_changed({name: account})  # as a poll of `msgsrv user add` tells it
        return account

    def connect(
        self, user: str | None = None, presence: bool = False, raw: bool = False, password: str = PASSWORD,
        host: str | None = None, device: str = "", groups: bool = False, minor: int = VERSION_MINOR,
        coalescing: bool = True, files: bool = True, e2e: bool = False,
    ) -> Peer:  # fmt: skip
        """A connection that logs in as ``user`` (made an account first if it has none);
        ``groups``: it asks for groups (1.4, and shows repeated deliveries); ``minor``: the
        protocol minor it announces (3: a client from before groups); ``coalescing``: it asks
        for coalesced frames (1.5; its session unpacks them, as the shipped client does)."""
        if user is not None and user.lower() not in self.engine.gate.accounts:
            self.account(user.lower())
        self._next += 1
        session = ClientSession(
            user, password=password, presence=presence, device_id=device, groups=groups, minor=minor,
            drop_repeats=not groups, coalescing=coalescing, files=files, e2e=e2e,
        )  # fmt: skip
        peer = Peer(self._next, session, raw=raw)
        self.peers[peer.conn] = peer
        self.apply(self.engine.connection_made(peer.conn, f"{host or f'10.0.0.{peer.conn}'}:5000", self.now))
        self.pump()
        return peer

    def apply(self, actions: list[Action]) -> None:
        for action in actions:
            peer = self.peers[action.conn] if not isinstance(action, Submit) else None
            if isinstance(action, Write):
                assert peer is not None and peer.closed is None, "write after close"
                if peer.raw:
                    peer.events.extend(decode(f) for f in peer.decoder.feed(action.data))
                else:
                    peer.events.extend(peer.session.receive_data(action.data))
            elif isinstance(action, (Close, Abort)):
                assert peer is not None
                peer.closed = action.reason
            else:
                self.jobs.append(action)

    def pump(self) -> None:
        """Move bytes both ways, flush and (with auto_jobs) run jobs, until all is quiet."""
        while True:
            busy = False
            for peer in list(self.peers.values()):
                data = peer.session.data_to_send()
                if data and peer.closed is None:
                    busy = True
                    self.apply(self.engine.data_received(peer.conn, data, self.now))
            self.apply(self.engine.flush(self.now))  # the end of a loop pass
            if self.auto_jobs and self.jobs:
                self.run_jobs()
                continue
            if not busy:
                return

    def run_jobs(self) -> None:
        """Run the submitted jobs now, as a backend's worker would, and report them."""
        jobs, self.jobs = self.jobs, []
        for job in jobs:
            try:
                result = job.job()
            except Exception as exc:  # noqa: BLE001 - as backends/jobs.py: a failed job is a result
                result = exc
            self.apply(self.engine.job_done(job.job_id, result, self.now))

    def settle(self) -> None:
        """Run jobs (and what they lead to) until none is left: e.g. logins, hash then store."""
        while self.jobs:
            self.run_jobs()
            self.pump()

    def send_raw(self, peer: Peer, data: bytes) -> None:
        self.apply(self.engine.data_received(peer.conn, data, self.now))
        self.pump()

    def drop(self, peer: Peer) -> None:
        """The connection is lost (a backend calls this exactly once)."""
        del self.peers[peer.conn]
        self.apply(self.engine.connection_lost(peer.conn, self.now))
        self.pump()

    def advance(self, seconds: float) -> None:
        """Let time pass, running the timer at every deadline on the way."""
        end = self.now + seconds
        while (deadline := self.engine.next_deadline()) is not None and deadline <= end:
            self.now = max(self.now, deadline)
            self.apply(self.engine.handle_timer(self.now))
            self.pump()  # a backend flushes after the timer, as after any event
        self.now = end
        self.pump()
