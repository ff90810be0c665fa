"""Logins under pressure: counted when admitted to hashing, queued fairly by address,
device tokens that keep a device out of the lock-out, a bounded queue that makes the
longest line pay. Jobs run when the test says, so every ordering can be reached."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from csce513msg.hub.admission import HASH_SLOTS
from csce513msg.hub.gate import TOKEN_LIFETIME_US
from csce513msg.protocol import Error, ErrorCode, Hello, Login, LoginOk, encode
from csce513msg.store.accounts import AccountBook
from csce513msg.store.sqlite import SqliteStore
from tests.hub.harness import PASSWORD, PASSWORDS, Harness, Peer


def codes(peer: Peer) -> list[int]:
    return [e.code for e in peer.of(Error)]  # type: ignore[attr-defined]


def attempt(h: Harness, user: str, password: str, host: str, token: str = "") -> Peer:
    """A raw connection that says Hello and sends one Login (not yet answered: no jobs run)."""
    peer = h.connect(raw=True, host=host)
    h.send_raw(peer, encode(Hello(request_id=1)) + encode(Login(user, password, "dev", token, request_id=2)))
    return peer


def hashes(h: Harness) -> int:
    return sum(job.lane == "hash" for job in h.jobs)


def run_stores(h: Harness) -> None:
    """Run storage batches (the accounts polls the logins wait for) until none is left;
    leave the hashes waiting."""
    while stores := [job for job in h.jobs if job.lane == "store"]:
        h.jobs = [job for job in h.jobs if job.lane != "store"]
        for job in stores:
            h.apply(h.engine.job_done(job.job_id, job.job(), h.now))
        h.pump()


def token_of(h: Harness, user: str, host: str = "10.0.0.9", token: str = "") -> str:
    peer = attempt(h, user, PASSWORD, host, token)
    h.settle()
    (ok,) = peer.of(LoginOk)
    h.drop(peer)
    return ok.device_token  # type: ignore[attr-defined]


def test_concurrent_guesses_are_counted_when_admitted_not_when_hashed() -> None:
    """64 guesses at once once passed a limit of 5: they were counted only once hashed."""
    h = Harness(auto_jobs=False, login_failures_per_account=5)
    h.account("alice")
    guesses = [attempt(h, "alice", f"guess{i}", f"10.1.0.{i}") for i in range(20)]
    run_stores(h)
    hashed = hashes(h)
    assert hashed == min(HASH_SLOTS, 5)
    h.settle()  # each failure frees a slot: the limit, not the slots, stops the rest
    outcomes = [codes(g) for g in guesses]
    assert outcomes.count([ErrorCode.AUTH_FAILED]) == 5  # exactly the limit was checked
    assert outcomes.count([ErrorCode.AUTH_THROTTLED]) == 15  # the rest refused without a hash


def test_a_device_token_gets_its_owner_past_a_locked_account() -> None:
    h = Harness(login_failures_per_account=3)
    h.account("alice")
    h.account("bob")
    token = token_of(h, "alice")
    assert len(token) == 32  # 128 random bits, hex
    for i in range(3):  # someone guesses alice's password, from anywhere
        attempt(h, "alice", f"guess{i}", f"10.2.0.{i}")
    h.settle()
    assert codes(attempt(h, "alice", PASSWORD, "10.0.0.9")) == [ErrorCode.AUTH_THROTTLED]  # no token: locked
    owner = attempt(h, "alice", PASSWORD, "10.0.0.9", token)
    h.settle()
    assert owner.of(LoginOk)[0].device_token == token  # type: ignore[attr-defined]  # kept, not replaced
    bobs = token_of(h, "bob")
    assert codes(attempt(h, "alice", PASSWORD, "10.0.0.9", bobs)) == [ErrorCode.AUTH_THROTTLED]  # bob's: no help
    for i in range(3):  # a stolen token gets its own few guesses, and no more
        attempt(h, "alice", f"again{i}", "10.3.0.1", token)
    h.settle()
    assert codes(attempt(h, "alice", PASSWORD, "10.0.0.9", token)) == [ErrorCode.AUTH_THROTTLED]


def test_an_expired_token_is_an_ordinary_login() -> None:
    h = Harness(login_failures_per_account=1, login_failure_window=10 * TOKEN_LIFETIME_US / 1e6)
    h.account("alice")
    token = token_of(h, "alice")
    h.now += TOKEN_LIFETIME_US / 1e6 + 1
    attempt(h, "alice", "guess", "10.2.0.1")
    h.settle()
    assert codes(attempt(h, "alice", PASSWORD, "10.0.0.9", token)) == [ErrorCode.AUTH_THROTTLED]


def test_addresses_take_turns_so_a_flood_cannot_starve_a_real_login() -> None:
    """A guessing flood from 10 addresses, then one student: the student's login is among
    the next few hashed, not behind the 200 guesses."""
    h = Harness(auto_jobs=False, login_failures_per_address=1000, login_failures_per_account=1000)
    h.account("alice")
    for i in range(200):
        attempt(h, f"victim{i % 7}", "guess", f"10.9.0.{i % 10}")
    student = attempt(h, "alice", PASSWORD, "192.168.1.20")
    run_stores(h)
    order: list[str] = []
    while not student.of(LoginOk) and len(order) < 30:
        job = next(j for j in h.jobs if j.lane == "hash")
        h.jobs.remove(job)
        login = h.engine._hashing[job.job_id][0]
        order.append(login.host)
        h.apply(h.engine.job_done(job.job_id, job.job(), h.now))
        h.pump()
        run_stores(h)
    assert student.of(LoginOk), order
    assert order.index("192.168.1.20") <= HASH_SLOTS + 10  # one turn of the 10 addresses at most


def test_a_full_queue_makes_the_longest_line_pay() -> None:
    h = Harness(auto_jobs=False, max_pending_logins=10, login_failures_per_address=1000)
    h.account("alice")
    flood = [attempt(h, "nobody", "guess", "10.9.9.9") for _ in range(10)]
    assert not any(codes(p) for p in flood)  # ten wait
    refused = attempt(h, "nobody", "guess", "10.9.9.9")
    assert codes(refused) == [ErrorCode.RATE_LIMITED]  # its own line is the longest: it pays
    student = attempt(h, "alice", PASSWORD, "192.168.1.20")
    assert not codes(student)  # it took the place of the flood's newest
    assert codes(flood[-1]) == [ErrorCode.RATE_LIMITED]
    h.settle()
    assert student.of(LoginOk)


def test_tokens_survive_a_restart_and_a_new_password_revokes_them(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    book = AccountBook(path)
    book.add("alice", PASSWORDS.hash(PASSWORD))
    h = Harness(store=SqliteStore(path, checkpoint_interval=0), login_failures_per_account=1)
    token = token_of(h, "alice")
    again = Harness(store=SqliteStore(path, checkpoint_interval=0), login_failures_per_account=1)  # a restart
    attempt(again, "alice", "guess", "10.2.0.1")
    again.settle()
    owner = attempt(again, "alice", PASSWORD, "10.0.0.9", token)
    again.settle()
    assert owner.of(LoginOk)
    book.set_password("alice", PASSWORDS.hash(PASSWORD))  # the same password, set again: a new start
    book.close()
    again.advance(3)  # the accounts poll sees it
    third = Harness(store=SqliteStore(path, checkpoint_interval=0), login_failures_per_account=1)
    assert not third.engine.tokens  # gone from the database too
    attempt(again, "alice", "guess", "10.2.0.2")
    again.settle()
    assert codes(attempt(again, "alice", PASSWORD, "10.0.0.9", token)) == [ErrorCode.AUTH_THROTTLED]


def test_an_account_without_a_password_is_an_auth_failure_not_a_bug() -> None:
    """A version-1 user has no password until `msgsrv user passwd`: an empty hash, which
    once made the check look like a registration and answer INTERNAL (telling an attacker
    the account exists)."""
    h = Harness()
    h.account("old")
    h.engine.accounts["old"] = dataclasses.replace(h.engine.accounts["old"], password_hash="")
    peer = attempt(h, "old", "anything", "10.0.0.1")
    h.settle()
    assert codes(peer) == codes(attempt(h, "nobody", "anything", "10.0.0.2")) == [ErrorCode.AUTH_FAILED]


def test_expired_tokens_are_forgotten_by_the_hub_and_deleted_by_the_store(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    book = AccountBook(path)
    book.add("alice", PASSWORDS.hash(PASSWORD))
    book.add("bob", PASSWORDS.hash(PASSWORD))
    book.close()
    store = SqliteStore(path, checkpoint_interval=0)
    h = Harness(store=store)
    token_of(h, "alice")
    assert len(h.engine.tokens) == 1 and store.load_device_tokens()
    h.connect("bob")  # someone online: the timers run
    h.now += TOKEN_LIFETIME_US / 1e6 + 1  # past the lifetime (and the next 10-minute expiry)
    h.advance(1)
    assert not h.engine.tokens and not store.load_device_tokens()
