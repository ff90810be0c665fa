"""The benchmark's own parts that a wrong answer would hide in a table: the RESP3 decoder
of the Redis baseline, what counts as a sustained load, and workload 3's member (once and
in order, one ack per read), its checks and what the acks cost; workload 7's plan, its reading
of perf and of the stats line, and its checks; the direct-message client's count of what
a coalesced frame (1.5) carries; the file-transfer benchmark's report (1.6); the warm windows on one server."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

from benchmarks.loadgen import BODY, GROUP_STAMP, STAMP, Conn, Member, group_post, read_bodies
from benchmarks.resp import RespDecoder, RespError, command
from benchmarks.suite import (
    ack_cost,
    check_groups,
    check_mixed,
    mixed_plan,
    most_idle,
    perf_counts,
    stats_rates,
    sustained,
)
from csce513msg.protocol import (
    Ack,
    ContentType,
    Deliver,
    Delivers,
    Receipt,
    Receipts,
    ReceiptState,
    TargetKind,
    encode,
)

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


def _deliver(seq: int, position: int, kind: int = ContentType.TEXT) -> bytes:
    body = GROUP_STAMP.pack(100.0 + seq, seq) + b"x" * (BODY - GROUP_STAMP.size)
    return encode(Deliver(TargetKind.GROUP, kind, 1000 + position, 0, position, "u0", "bench", "g:7", body))


def test_a_member_acks_once_per_read_the_highest_position_it_read() -> None:
    cache: dict[bytes, Deliver] = {}
    member, other = Member("chat", cache=cache), Member("chat", cache=cache)
    stamps, ack = member.feed(_deliver(0, 1, ContentType.GROUP_EVENT))  # the setup's "added" event
    assert stamps == [] and ack == encode(Ack(1, "g:7")) and member.events == 1
    member.reset()
    wire = b"".join(_deliver(seq, seq + 1) for seq in (1, 2, 3))
    cut = len(wire) // 3 + 10
    stamps, ack = member.feed(wire[:cut])  # message 1 and part of 2: one ack, for position 2
    assert [seq for _due, seq in stamps] == [1] and ack == encode(Ack(2, "g:7"))
    stamps, ack = member.feed(wire[cut:])  # the rest: one ack for the highest, position 4
    assert [seq for _due, seq in stamps] == [2, 3] and ack == encode(Ack(4, "g:7"))
    assert (member.received, member.reads, member.acks_sent, member.duplicates, member.gaps) == (3, 2, 2, 0, 0)
    assert len(cache) == 4  # decoded once each, whichever member reads them next
    other.reset()
    other.feed(wire)
    assert other.received == 3 and len(cache) == 4


def test_a_member_counts_duplicates_and_gaps_and_need_not_ack() -> None:
    member = Member("chat", acks=False)
    member.reset()
    stamps, ack = member.feed(_deliver(1, 2) + _deliver(1, 2) + _deliver(4, 5))
    assert ack == b"" and member.acks_sent == 0 and len(stamps) == 3
    assert (member.received, member.duplicates, member.gaps, member.last_seq) == (2, 1, 2, 4)


def test_a_baseline_member_reads_the_relays_posts_and_redis_pushes() -> None:
    relay, redis = Member("relay"), Member("redis")
    for member, seq0, seq1 in ((relay, group_post("relay", 0, 1.0), group_post("relay", 1, 2.0)),
                               (redis, b">3\r\n$7\r\nmessage\r\n$1\r\ng\r\n$60\r\n" + GROUP_STAMP.pack(1.0, 0)
                                + b"x" * 48 + b"\r\n", None)):  # fmt: skip
        stamps, ack = member.feed(seq0)
        assert stamps == [(1.0, 0)] and ack == b"" and member.last_seq == 0 and member.received == 0
        member.reset()
        if seq1 is not None:
            assert member.feed(seq1)[0] == [(2.0, 1)] and member.received == 1


def test_the_group_checks_catch_a_member_short_of_a_message() -> None:
    point = {
        "backend": "epoll", "asked_members": 2, "members": 2, "refused": 0, "offered_rate": 0.0, "acks": True,
        "sent": 3, "answered": 3, "errors": 0, "deliveries": 6, "expected_deliveries": 6, "members_complete": 2,
        "duplicates": 0, "gaps": 0, "latency_samples": 6, "acks_sent": 4, "member_reads": 4, "server_cpu_s": 0.1,
    }  # fmt: skip
    assert check_groups([point]) == []
    short = {**point, "deliveries": 5, "members_complete": 1, "latency_samples": 5}
    assert [p.split(":")[1].split(",")[0] for p in check_groups([short])] == [
        " 5 deliveries of 6 (1 of 2 members got every message)"
    ]
    assert check_groups([{**point, "acks_sent": 0}]) == ["group of 2 on epoll at 0/s: 0 acks for 4 reads"]
    # paced at 100/s: a server that stored only 43/s is overloaded, and its window's last messages
    # may be on their way when the drain ends; one that kept up must deliver everything
    unfinished = {**short, "offered_rate": 100.0, "sent": 4, "answered": 3}
    assert check_groups([{**unfinished, "messages_per_s": 43.0}]) == []
    assert len(check_groups([{**unfinished, "messages_per_s": 99.0}])) == 2  # answered, and deliveries
    assert check_groups([{**unfinished, "messages_per_s": 43.0, "duplicates": 1}]) != []  # once, always


def test_ack_cost_is_the_difference_with_acks_and_without() -> None:
    common = {"backend": "epoll", "asked_members": 100, "members": 100, "offered_rate": 0.0}
    points = [
        {**common, "acks": True, "server_cpu_us_per_delivery": 10.0, "deliveries_per_read": 8.0},
        {**common, "acks": False, "server_cpu_us_per_delivery": 6.0, "deliveries_per_read": 9.0},
        {**common, "acks": True, "offered_rate": 100.0, "server_cpu_us_per_delivery": 30.0},
    ]
    assert ack_cost(points) == [{
        "backend": "epoll", "members": 100, "us_per_delivery_acks": 10.0, "us_per_delivery_no_acks": 6.0,
        "ack_us_per_delivery": 4.0, "ack_share": 0.4, "deliveries_per_ack": 8.0,
    }]  # fmt: skip


def test_the_mixed_plan_stops_select_at_fd_setsize_and_threads_at_the_thread_limit() -> None:
    plan = mixed_plan(["select", "threads", "epoll"], [0, 500, 1000, 10000], 15000, "pid_max 32,768")
    skipped = {(p["backend"], p["idle"]): p["skipped"] for p in plan}
    assert skipped[("select", 500)] is None and skipped[("select", 1000)] == "n/a (FD_SETSIZE)"
    assert skipped[("threads", 1000)] is None  # 2,200 threads
    assert skipped[("threads", 10000)] == "stopped: 20,200 threads would pass pid_max 32,768"
    assert all(skipped[("epoll", n)] is None for n in (0, 500, 1000, 10000))
    assert most_idle(20000) == 19500  # less the server's reserve of 64, a margin of 200, the 100 active


def test_perf_counts_read_perf_stat_csv() -> None:
    text = (
        "# started on Wed Dec  2 03:36:59 2026\n\n"
        "457,,raw_syscalls:sys_enter,11477435,100.00,,\n"
        "12,,syscalls:sys_enter_poll,11477435,100.00,,\n"
        "<not counted>,,syscalls:sys_enter_select,0,100.00,,\n"
        "Events disabled\n"
    )
    assert perf_counts(text) == {"all": 457, "poll": 12}


def test_stats_rates_average_the_lines_inside_the_window_weighted_by_wake_ups() -> None:
    line = "stats: poll | 2 connections, 2 users online | 0 msg/s, 0 deliveries/s | CPU 3% | RSS 40.1 MB"
    lines = [
        (10.2, line + " | 9,000 wake-ups/s, 99.0 µs CPU per wait"),  # covers 9.7-10.2: before the start
        (10.7, line + " | 1,000 wake-ups/s, 10.0 µs CPU per wait"),
        (11.2, line + " | 3,000 wake-ups/s, 30.0 µs CPU per wait"),
        (12.4, line + " | 9,000 wake-ups/s, 99.0 µs CPU per wait"),  # after the end
        (11.0, line),  # threads, uvloop: no wait part
    ]
    woke, per_wait = stats_rates(lines, 10.0, 12.0, 0.5) or (0.0, 0.0)
    assert woke == 2000.0 and per_wait == 25.0  # (1000 x 10 + 3000 x 30) / 4000
    assert stats_rates(lines[4:], 10.0, 12.0, 0.5) is None


def test_the_mixed_checks_want_every_idle_connection_open_and_skips_only_where_expected() -> None:
    point = {
        "backend": "poll", "idle": 500, "skipped": None, "refused": 0, "sent": 2000, "delivered": 2000, "errors": 0,
        "duplicates": 0, "order_violations": 0, "latency_samples": 2000, "idle_logged_in": 500, "idle_open": 500,
        "server_cpu_s": 0.9, "wakeups": 3500, "wakeups_source": "perf", "wait_cpu_us": 140.0,
        "syscalls_per_message": {"all": 33.0},
    }  # fmt: skip
    assert check_mixed([point], perf=True) == []
    assert check_mixed([{**point, "idle_open": 499}], perf=True) == [
        "active among 500 idle on poll: 500 idle logged in, 499 still open at the end"
    ]
    assert len(check_mixed([{**point, "wait_cpu_us": None, "syscalls_per_message": None}], perf=True)) == 2
    assert check_mixed([{**point, "syscalls_per_message": None}], perf=False) == []
    select = {"backend": "select", "idle": 1000, "skipped": "n/a (FD_SETSIZE)"}
    assert check_mixed([select], perf=True) == []
    assert check_mixed([{**select, "backend": "epoll"}], perf=True) != []  # epoll has no such ceiling


def test_a_dm_client_counts_every_receipt_and_delivery_a_coalesced_frame_carries() -> None:
    with socket.socket() as sock:
        conn = Conn(0, sock)
        conn.in_flight = 8
        stored = [Receipt(ReceiptState.STORED, i, 0, i, "dm:u0,u1", "", 1) for i in range(1, 7)]
        delivered = Receipt(ReceiptState.DELIVERED, 9, 0, 9, "dm:u0,u1", "", 0)  # frees nothing
        bodies = [STAMP.pack(1.0, 1, seq) + b"x" * (BODY - STAMP.size) for seq in (1, 2, 3)]
        delivers = tuple(Deliver(1, 0, 20 + i, 0, 4 + i, "u1", "u0", "dm:u0,u1", b) for i, b in enumerate(bodies))
        wire = encode(Receipts((*stored, delivered))) + encode(Delivers(delivers))
        got, errors, duplicates = read_bodies(conn, wire, "chat", set())
        assert (got, errors, duplicates, conn.in_flight) == (bodies, 0, 0, 2)
        assert conn.out == [encode(Ack(6, "dm:u0,u1"))]  # one Ack, for the highest position


def test_the_targets_table_has_every_row_of_the_issue_with_ratios_to_the_relay() -> None:
    """benchmarks.targets: one column a backend, the issue's ten rows and the paced 5k/s on a
    warm server after its row, the CPU row as a
    ratio to the relay of the same run, the baselines under the table."""
    from benchmarks.targets import table

    point = {
        "backend": "epoll", "cpu_us_per_message": 40.0, "memory_cpu_us_per_message": 30.0,
        "group_cpu_us_per_delivery": 2.5, "paced_5k_cpu_utilisation": 0.5, "paced_5k_p99_ms": 3.2,
        "paced_5k_p50_ms": 1.0, "paced_5k_warm_p99_ms": 2.5, "paced_5k_warm_p50_ms": 0.9,
        "paced_5k_warm_cpu_us_per_message": 99.6, "paced_10k_p99_ms": 9.0, "paced_10k_delivered_per_s": 9990.0,
        "highest_sustained": {"rate": 12000.0}, "paced_5k_full_p99_ms": 4.0, "login_median_ms": 250.0,
        "login_chat_p99_ratio": 1.2, "rss_bytes_per_idle_connection": 2070,
    }  # fmt: skip
    base = {"cpu_us_per_message": 4.0, "group_cpu_us_per_delivery": 1.0, "paced_5k_cpu_utilisation": 0.12}
    text = table({"baselines": {"relay": base, "redis": base}, "backends": [point, {**point, "backend": "uvloop"}]})
    lines = text.splitlines()
    assert lines[0] == "| figure | epoll | uvloop |"
    rows = [line for line in lines[2:] if line.startswith("| ")]
    assert len(rows) == 11
    assert "40.0 µs (10.0x relay)" in rows[0] and "12,000/s" in rows[7] and "2.07 kB" in rows[10]
    assert "2.5 ms (p50 0.9; 100 µs/msg)" in rows[5]
    assert lines[-1].startswith("Baselines: relay 4.0 µs/msg") and "redis" in lines[-1]


def test_the_transfer_benchmark_reports_every_figure_of_a_quick_run(tmp_path: Path) -> None:
    """benchmarks.transfer --quick on epoll with a 4 MB file (about 6 s): the JSON holds the
    run and the medians, every figure there and positive: the raw copies, both directions,
    the server's CPU, the chat beside the transfer and alone (every message delivered).
    Never a speed: the machine is shared."""
    out, size = tmp_path / "transfer.json", 4_000_000
    cmd = [sys.executable, "-m", "benchmarks.transfer", "--quick", "--size", "4", "--backends", "epoll",
           "--out", str(out), "--dir", str(tmp_path)]  # fmt: skip
    done = subprocess.run(cmd, cwd=Path(__file__).parent.parent, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.read_text())
    assert (report["size_bytes"], report["repeats"], report["backends"]) == (size, 1, ["epoll"])
    assert len(report["runs"]["ceiling"]) == 1 and len(report["runs"]["backends"]["epoll"]) == 1
    assert set(report["medians"]["ceiling"]) == {"recv", "recv_to_file", "recv_hash_to_file"}
    for raw in report["medians"]["ceiling"].values():
        assert raw["bytes"] == size and raw["mb_s"] > 0 and raw["seconds"] > 0
    point = report["medians"]["backends"]["epoll"]
    assert point["bytes"] == size and point["end_to_end"]["mb_s"] > 0
    for way in ("upload", "download"):
        assert point[way]["mb_s"] > 0 and point[way]["of_ceiling"] > 0 and point[way]["of_disk_copy"] > 0
        assert point[way]["of_verifying_copy"] > 0
    assert point["upload"]["server_cpu_s"] + point["download"]["server_cpu_s"] > 0  # /proc counts 10 ms ticks
    for chat in (point["chat_with"], point["chat_without"]):
        assert chat["delivered"] == chat["sent"] > 0 and chat["p99_ms"] > 0 and chat["max_ms"] >= chat["p99_ms"]
    assert point["chat_without"]["sent"] >= 200 and point["chat_p99_ratio"] > 0
    pooled = report["pooled_chat"]["epoll"]  # every repeat's samples at once (one repeat here)
    assert pooled["chat_without"]["samples"] == point["chat_without"]["delivered"]
    assert abs(pooled["chat_with"]["p99_ms"] - point["chat_with"]["p99_ms"]) < 0.01 and pooled["p99_ratio"] > 0
    assert set(report["verdicts"]["epoll"]) == {"must", "aim"}
    assert "| epoll | " in done.stdout and "| ceiling: sendfile -> recv_into | " in done.stdout
    assert not [p for p in tmp_path.iterdir() if p != out]  # the file, the server's and the copies: removed


def test_the_e2e_load_plan_never_sends_to_the_sender_and_repeats_with_its_seed() -> None:
    from benchmarks.e2eload import make_plan, text

    plan = make_plan(400, 5, seed=3)
    assert plan == make_plan(400, 5, seed=3) and plan != make_plan(400, 5, seed=4)
    assert all(sender == k % 5 and 0 <= peer < 5 and peer != sender for k, (sender, peer) in enumerate(plan))
    assert {peer for _sender, peer in plan} == set(range(5))
    assert len(text(7).encode()) == 100 and text(7).startswith("000000007 ")


def test_the_e2e_benchmark_reports_every_figure_of_a_quick_run(tmp_path: Path) -> None:
    """benchmarks.e2e --quick with a small server load (about 10 s): every client figure there and
    positive, the server's paths by body; live, both sets' messages all stored and delivered once, the encrypted
    ones opened (none left as ciphertext), the encrypted bodies larger, the server's CPU read.
    Never a speed: the machine is shared."""
    out = tmp_path / "e2e.json"
    cmd = [sys.executable, "-m", "benchmarks.e2e", "--quick", "--clients", "3", "--count", "60", "--rate", "60",
           "--dir", str(tmp_path), "--vaults-on-disk", "--out", str(out)]  # fmt: skip
    done = subprocess.run(cmd, cwd=Path(__file__).parent.parent, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["schema"] == "csce513msg-e2e/1" and report["parts"] == ["client", "stream", "paths", "server"]
    for shape in report["messages"].values():
        assert len(shape["timings"]) == 6 and all(t["median_us"] > 0 and t["n"] >= 3 for t in shape["timings"].values())
        sizes = shape["envelope_bytes"]
        assert sizes["first"] > sizes["steady"] > sizes["text"] == 100
    fan_out = report["messages"]["3 devices + 2 own"]
    assert fan_out["wrapped_keys"] == 5 and fan_out["envelope_bytes"]["steady"] > report["messages"]["1 device"][
        "envelope_bytes"]["steady"]  # fmt: skip
    vault = report["vault"]
    assert 0 < vault["vault_bytes"] < vault["class_vault_bytes"] and all(
        t["median_us"] > 0 for t in vault["timings"].values()
    )
    assert {"Secure.seal (encrypt + save)", "Secure.open (decrypt + save + archive)"} <= set(vault["timings"])
    assert all(w["mb_s"] > 0 for w in report["stream"]["ways"].values()) and len(report["stream"]["ways"]) == 8
    for bodies in report["paths"].values():  # the hub's routing and the store's batch, by body
        assert list(bodies) == ["text 100", "envelope 326", "envelope 850"] and bodies["text 100"]["x_text"] == 1
        assert all(b["median_us"] > 0 and b["n"] == 5 for b in bodies.values())
    (run,) = report["server"]["runs"]["epoll"]
    for mode, phase in run["phases"].items():
        assert phase["sent"] == phase["stored"] == phase["delivered"] == 60, (mode, phase)
        assert phase["wrong"] == phase["duplicates"] == phase["errors"] == phase["notices"] == 0, (mode, phase)
        assert phase["server_cpu_ns_s"] > 0 and phase["wire_up_bytes_per_message"] > 0
    plain, secure = run["phases"]["plain"], run["phases"]["secure"]
    assert plain["body_bytes_median"] == 100 < secure["body_bytes_median"] < secure["warm_up_body_bytes_max"]
    assert run["ratio"]["server_cpu_ns_us_per_message"] > 0
    assert "| epoll | encrypted | " in done.stdout and "| Secure.seal (encrypt + save) | " in done.stdout
    assert [p.name for p in tmp_path.iterdir()] == ["e2e.json"]  # the vaults, files and server's data: removed


def test_the_warm_windows_run_one_server_and_report_each_window() -> None:
    found = subprocess.run(
        [sys.executable, "-m", "benchmarks.warm", "--backend", "epoll", "--clients", "10", "--rate", "300",
         "--seconds", "1", "--windows", "2"],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout.splitlines()  # fmt: skip
    windows = [json.loads(line) for line in found]
    assert [w["window"] for w in windows] == [1, 2]
    for w in windows:
        # every message of the window arrived; at a re-login a client may be sent again the last of
        # the window before, whose ack its generator quit without (at least once: the server's rule)
        assert 0 < w["sent"] <= w["delivered"] <= w["sent"] + 10
        assert w["server_cpu_us_per_message"] > 0 and w["p99_ms"] >= w["p50_ms"] > 0
        assert w["wal_mib"] > 0  # the one server's database: its WAL is there after each window


def test_session_memory_counts_what_the_hub_holds_per_login() -> None:
    """benchmarks.session_memory: bytes per logged-in session, the Session object itself
    the largest site (a slotted dataclass of some thirty fields), the memory store's own
    copies left out (the SQLite store keeps those on disk)."""
    from benchmarks.session_memory import measure

    report = measure(200, top=40)
    assert report["sessions"] == 200
    assert 500 < report["bytes_per_session"] < 5000  # 1.26 kB on 2026-12-03
    sites = report["sites"]
    assert sites[0]["where"].startswith("engine.py:") and sites[0]["bytes_per_session"] >= 200
    assert not any(frame.startswith("memory.py:") for site in sites for frame in site["where"].split(" < "))
    assert sum(site["bytes_per_session"] for site in sites) <= report["bytes_per_session"] + 1
