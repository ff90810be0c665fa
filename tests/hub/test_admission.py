"""Logins under pressure: counted when admitted to hashing, queued fairly by address,
device tokens that keep a device out of the lock-out, a bounded queue that makes the
longest line pay. Jobs run when the test says, so every ordering can be reached."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from csce513msg.hub import HubConfig, Lane
from csce513msg.hub.gate import TOKEN_LIFETIME_US, _digest, _host
from csce513msg.protocol import ErrorCode, Hello, Login, LoginOk, Ping, Pong, Register, encode
from csce513msg.store import TOKENS_PER_USER
from csce513msg.store.accounts import AccountBook
from csce513msg.store.sqlite import SqliteStore
from tests.hub.harness import PASSWORD, PASSWORDS, Harness, Peer, codes


def attempt(h: Harness, user: str, password: str, host: str, token: str = "") -> Peer:
    """A raw connection that says Hello and sends one Login (not yet answered: no jobs run)."""
    peer = h.connect(raw=True, host=host)
    h.send_raw(peer, encode(Hello(request_id=1)) + encode(Login(user, password, "dev", token, request_id=2)))
    return peer


def hashes(h: Harness) -> int:
    return sum(job.lane is Lane.HASH for job in h.jobs)


def run_stores(h: Harness) -> None:
    """Run storage batches (the accounts polls the logins wait for) until none is left;
    leave the hashes waiting."""
    while stores := [job for job in h.jobs if job.lane in (Lane.STORE, Lane.LOOP)]:
        h.jobs = [job for job in h.jobs if job.lane not in (Lane.STORE, Lane.LOOP)]
        for job in stores:
            h.apply(h.engine.job_done(job.job_id, job.job(), h.now))
        h.pump()


def token_of(h: Harness, user: str, host: str = "10.0.0.9", token: str = "") -> str:
    peer = attempt(h, user, PASSWORD, host, token)
    h.settle()
    (ok,) = peer.of(LoginOk)
    h.drop(peer)
    return ok.device_token


def test_concurrent_guesses_are_counted_when_admitted_not_when_hashed() -> None:
    """64 guesses at once once passed a limit of 5: they were counted only once hashed."""
    h = Harness(auto_jobs=False, login_failures_per_account=5)
    h.account("alice")
    guesses = [attempt(h, "alice", f"guess{i}", f"10.1.0.{i}") for i in range(20)]
    run_stores(h)
    hashed = hashes(h)
    assert hashed == min(HubConfig().hash_slots, 5)
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
    assert owner.of(LoginOk)[0].device_token == token  # kept, not replaced
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
        job = next(j for j in h.jobs if j.lane is Lane.HASH)
        h.jobs.remove(job)
        login = h.engine.gate.checking[job.job_id][0]
        order.append(login.host)
        h.apply(h.engine.job_done(job.job_id, job.job(), h.now))
        h.pump()
        run_stores(h)
    assert student.of(LoginOk), order
    assert order.index("192.168.1.20") <= HubConfig().hash_slots + 10  # one turn of the 10 addresses at most


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
    assert not third.engine.gate.device_tokens  # gone from the database too
    attempt(again, "alice", "guess", "10.2.0.2")
    again.settle()
    assert codes(attempt(again, "alice", PASSWORD, "10.0.0.9", token)) == [ErrorCode.AUTH_THROTTLED]


def test_an_account_without_a_password_is_an_auth_failure_not_a_bug() -> None:
    """A version-1 user has no password until `msgsrv user passwd`: an empty hash, which
    once made the check look like a registration and answer INTERNAL (telling an attacker
    the account exists)."""
    h = Harness()
    h.account("old")
    h.engine.gate.accounts["old"] = dataclasses.replace(h.engine.gate.accounts["old"], password_hash="")
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
    assert len(h.engine.gate.device_tokens) == 1 and store.load_device_tokens()
    h.connect("bob")  # someone online: the timers run
    h.now += TOKEN_LIFETIME_US / 1e6 + 1  # past the lifetime (and the next 10-minute expiry)
    h.advance(1)
    assert not h.engine.gate.device_tokens and not store.load_device_tokens()


def test_a_password_changed_while_a_login_was_checked_keeps_no_token(tmp_path: Path) -> None:
    """The login's hash was right, then `msgsrv user passwd` deleted the account's tokens,
    then the login's batch came: it must not store a token that outlives the new password."""
    path = tmp_path / "db.sqlite"
    book = AccountBook(path)
    book.add("alice", PASSWORDS.hash(PASSWORD))
    h = Harness(store=SqliteStore(path, checkpoint_interval=0), auto_jobs=False)
    peer = attempt(h, "alice", PASSWORD, "10.0.0.9")
    run_stores(h)
    h.run_jobs()  # the hash: right
    h.pump()  # the login's batch, with its token, is submitted
    book.set_password("alice", PASSWORDS.hash("a new password"))
    book.close()
    h.settle()
    assert peer.of(LoginOk)  # answered as it stood; the accounts poll ends this session soon after
    assert not SqliteStore(path, checkpoint_interval=0).load_device_tokens()  # not stored: not after a restart
    h.auto_jobs = True
    h.advance(3)  # the poll: the new password ends the session and the hub forgets the account's tokens
    assert not h.engine.gate.device_tokens and peer.closed == "account changed"


def test_a_token_revoked_while_its_login_waits_makes_an_ordinary_login() -> None:
    h = Harness(auto_jobs=False)
    h.account("alice")
    h.auto_jobs = True
    token = token_of(h, "alice")
    h.auto_jobs = False
    peer = attempt(h, "alice", PASSWORD, "10.0.0.9", token)
    h.engine.gate.forget_tokens("alice")  # as a new password would, while it waits
    h.settle()
    (ok,) = peer.of(LoginOk)
    assert ok.device_token != token and len(h.engine.gate.device_tokens) == 1


def test_registrations_sent_together_are_counted_as_admitted() -> None:
    h = Harness(auto_jobs=False, self_register=True, registrations_per_address=2)
    peers = []
    for i in range(10):
        peer = h.connect(raw=True, host="10.7.7.7")
        h.send_raw(peer, encode(Hello(request_id=1)) + encode(Register(f"bot{i}", PASSWORD, request_id=2)))
        peers.append(peer)
    h.settle()
    assert sum(bool(p.of(LoginOk)) for p in peers) == 2
    assert sum(codes(p) == [ErrorCode.AUTH_THROTTLED] for p in peers) == 8


def test_one_token_per_device_and_a_few_per_account() -> None:
    h = Harness()
    h.account("alice")
    first = token_of(h, "alice")
    again = token_of(h, "alice")  # the same device, no token shown: a new one replaces the first
    assert first != again and set(h.engine.gate.device_tokens) == {_digest(again)}
    for i in range(TOKENS_PER_USER + 5):  # many devices: the newest few are kept
        peer = h.connect(raw=True, host="10.0.0.9")
        h.send_raw(peer, encode(Hello(request_id=1)) + encode(Login("alice", PASSWORD, f"dev{i}", request_id=2)))
        h.settle()
        h.drop(peer)
    assert len(h.engine.gate.device_tokens) == TOKENS_PER_USER
    assert set(h.engine.gate.device_tokens) == set(h.store.load_device_tokens())


def test_a_connection_gone_while_its_login_waits_leaves_the_queue() -> None:
    h = Harness(auto_jobs=False, self_register=True)
    peer = h.connect(raw=True, host="10.0.0.1")
    h.send_raw(peer, encode(Hello(request_id=1)) + encode(Register("carol", PASSWORD, request_id=2)))
    assert len(h.engine.gate.queue) == 1
    h.drop(peer)
    assert len(h.engine.gate.queue) == 0  # its password is not kept
    other = h.connect(raw=True, host="10.0.0.2")
    h.send_raw(other, encode(Hello(request_id=1)) + encode(Register("carol", PASSWORD, request_id=2)))
    h.settle()
    assert other.of(LoginOk)  # the name was free again


def test_a_replayed_token_goes_first_only_once_and_evicts_no_single_login() -> None:
    h = Harness(max_pending_logins=4, login_failures_per_account=1000)
    h.account("alice")
    h.account("bob")
    token = token_of(h, "alice")
    h.auto_jobs = False
    students = [attempt(h, "bob", PASSWORD, f"10.3.0.{i}") for i in range(2)]
    replays = [attempt(h, "alice", PASSWORD, "10.9.9.9", token) for _ in range(6)]
    assert not any(codes(s) for s in students)  # two addresses with one login each: nobody takes their place
    assert sum(codes(r) == [ErrorCode.RATE_LIMITED] for r in replays) == 4
    assert sum(login.trusted for login in h.engine.gate.queue.by_conn.values()) == 1
    h.settle()
    assert all(s.of(LoginOk) for s in students)


def test_a_token_used_for_too_many_wrong_passwords_is_revoked() -> None:
    h = Harness(login_failures_per_account=3)
    h.account("alice")
    token = token_of(h, "alice")
    for i in range(3):  # a stolen laptop, and guesses
        attempt(h, "alice", f"guess{i}", "10.6.0.1", token)
    h.settle()
    assert not h.engine.gate.device_tokens and not h.store.load_device_tokens()


def test_a_token_past_half_its_life_is_renewed() -> None:
    h = Harness(login_failure_window=60)
    h.account("alice")
    token = token_of(h, "alice")
    h.now += TOKEN_LIFETIME_US / 2e6 + 1
    renewed = token_of(h, "alice", token=token)
    assert renewed != token and set(h.engine.gate.device_tokens) == {_digest(renewed)}


def test_a_token_just_before_its_expiry_still_works() -> None:
    h = Harness(login_failures_per_account=1, login_failure_window=10 * TOKEN_LIFETIME_US / 1e6)
    h.account("alice")
    token = token_of(h, "alice")
    h.now += TOKEN_LIFETIME_US / 1e6 - 60
    attempt(h, "alice", "guess", "10.2.0.1")
    h.settle()
    assert codes(attempt(h, "alice", PASSWORD, "10.0.0.9")) == [ErrorCode.AUTH_THROTTLED]
    assert token_of(h, "alice", token=token)  # the control for the expired case above


def test_requests_held_behind_a_login_take_their_rate_tokens() -> None:
    h = Harness(auto_jobs=False, rate=1.0, burst=5)
    h.account("alice")
    peer = h.connect(raw=True)
    flood = b"".join(encode(Ping(request_id=10 + i)) for i in range(20))
    h.send_raw(peer, encode(Hello(request_id=1)) + encode(Login("alice", PASSWORD, request_id=2)) + flood)
    assert codes(peer).count(ErrorCode.RATE_LIMITED) == 17  # 5 tokens: Hello, Login, three Pings held
    h.settle()
    assert len(peer.of(Pong)) == 3


def test_addresses_are_taken_per_ipv4_address_and_per_ipv6_64() -> None:
    assert _host("10.1.2.3:5000") == "10.1.2.3"
    assert _host("[2001:db8:1:2:aaaa::1]:5000") == _host("[2001:db8:1:2:bbbb::9]:6000") == "2001:db8:1:2::/64"
    assert _host("[::ffff:10.1.2.3]:5000") == "10.1.2.3"
