"""``msgsrv group`` against a real server process (one backend): ``list`` and ``members``
read the data directory; ``add`` and ``remove`` queue a change that the running server
applies as its instructor's request (or, stopped, once started again)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from csce513msg.client import Client
from csce513msg.protocol import ContentType, Deliver, GroupEvent, GroupEventKind, Ping
from tests.conformance.wire import PASSWORD, connect, next_of
from tests.fixtures import Names
from tests.servers import start

MSGSRV = [sys.executable, "-m", "csce513msg.cli.msgsrv"]
BACKEND = "epoll"
FLAGS = ("--account-poll", "0.2")  # the queue is taken at each accounts poll


def msgsrv(data_dir: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*MSGSRV, *args, "--data-dir", str(data_dir)], input=stdin, capture_output=True, text=True, timeout=60
    )  # fmt: skip


def event_of(client: Client) -> tuple[int, str, tuple[str, ...]]:
    """The next group event ``client`` is delivered: (kind, who acted, users)."""
    d = next_of(client, Deliver, lambda m: m.content_type == ContentType.GROUP_EVENT and not m.request_id, 30)
    event = GroupEvent.decode(d.body)
    return event.kind, d.sender, event.users


def test_msgsrv_group_add_and_remove_go_through_the_server_running_or_not(tmp_path: Path, names: Names) -> None:
    data = tmp_path / "data"
    teach, bob, carol, dan = names("teach"), names("bob"), names("carol"), names("dan")
    lab = names("lab")
    server = start(BACKEND, "--data-dir", str(data), *FLAGS)
    try:
        made = msgsrv(data, "user", "add", teach, "--instructor", "--kdf-cost", "test", stdin=PASSWORD + "\n")
        assert made.returncode == 0, made.stderr
        for user in (carol, dan):
            connect(server, user).close()
        t = connect(server, teach, device_id="t1", groups=True)
        b = connect(server, bob, device_id="b1", groups=True)
        stream = t.group_create(lab).stream
        refused = msgsrv(data, "group", "add", lab, bob, "--as", bob)
        assert refused.returncode == 1 and "not an instructor" in refused.stderr
        unknown = msgsrv(data, "group", "add", lab, "nobody-here", "--as", teach)
        assert unknown.returncode == 1 and "no user nobody-here" in unknown.stderr

        added = msgsrv(data, "group", "add", lab, bob, carol.upper(), "--as", teach, "--wait", "30")
        assert added.returncode == 0, added.stderr
        assert f"queued #1: add to {lab}: {bob}, {carol}" in added.stdout
        assert f"#1 done: {stream} position 2" in added.stdout
        assert event_of(b) == (GroupEventKind.ADDED, teach, (bob, carol))  # "added by teach", to the added
        assert event_of(t) == (GroupEventKind.ADDED, teach, (bob, carol))  # and to the actor's own sessions
        listed = msgsrv(data, "group", "list")
        assert listed.returncode == 0 and lab in listed.stdout and " 3 members" in listed.stdout
        assert "2 groups" in listed.stdout  # and g:0, the announcements
        members = msgsrv(data, "group", "members", stream)
        assert members.returncode == 0
        assert [line.split()[0] for line in members.stdout.splitlines()[:-1]] == sorted((teach, bob, carol))

        removed = msgsrv(data, "group", "remove", lab, carol, "--as", teach, "--wait", "30")
        assert removed.returncode == 0 and f"#2 done: {stream} position 3" in removed.stdout, removed
        assert event_of(b) == (GroupEventKind.REMOVED, teach, (carol,))
        again = msgsrv(data, "group", "remove", lab, carol, "--as", teach, "--wait", "30")
        assert again.returncode == 0 and "#3 done: nothing to change" in again.stdout, again
        assert server.terminate(timeout=20) == 0
        for client in (t, b):
            client.close()
    finally:
        server.stop()

    queued = msgsrv(data, "group", "add", lab, dan, "--as", teach)  # no server: it waits in the queue
    assert queued.returncode == 0 and "queued #4" in queued.stdout and "a stopped one once started" in queued.stdout
    server = start(BACKEND, "--data-dir", str(data), *FLAGS)
    try:
        d = connect(server, dan, device_id="d1", groups=True)  # the first connection: the queue is taken
        assert event_of(d) == (GroupEventKind.ADDED, teach, (dan,))
        assert d.group_list().names == ("announcements", lab)  # every account is in g:0
        d.call(Ping())
        members = msgsrv(data, "group", "members", lab)
        assert [line.split()[0] for line in members.stdout.splitlines()[:-1]] == sorted((teach, bob, dan))
        d.close()
    finally:
        server.stop()
