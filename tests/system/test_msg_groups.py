"""``msg``'s group commands in pipe mode: real processes against a real server (the
client's behaviour, so one backend). The other member is the blocking client."""

from __future__ import annotations

import re
import subprocess

from csce513msg.protocol import ContentType, GroupEvent, GroupEventKind, Receipt, ReceiptState, TargetKind
from tests.conformance.wire import connect, register
from tests.fixtures import Names
from tests.servers import IS_LINUX, ServerProcess
from tests.system.test_cli import msg_cmd

BACKENDS = ["epoll" if IS_LINUX else "select"]


def run(cmd: list[str], script: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, input=script, capture_output=True, text=True, timeout=60)


def test_create_add_post_and_the_member_receives(server: ServerProcess, names: Names) -> None:
    alice, bob, lab = names("alice"), names("bob"), names("lab")
    bob_client = connect(server, bob, device_id="bob-device", groups=True)
    try:
        # the server checks a request against what is committed when it arrives: msg holds the lines
        # after a change (/create, /add) until its answer, so the /add finds the group
        script = (
            f"/create {lab}\n/add #{lab} {bob}\n#{lab} hello group\n/to #{lab}\nplain line\n/members #{lab}\n/groups\n"
        )
        done = run(msg_cmd(server, alice), script)
        assert done.returncode == 0, done.stderr
        assert f"created #{lab} (g:" in done.stdout
        assert f"added: #{lab} has 2 members" in done.stdout
        assert f"you -> #{lab}/3: hello group" in done.stdout  # its number once stored (1 created, 2 added)
        assert f"talking to #{lab}" in done.stdout
        assert f"you -> #{lab}/4: plain line" in done.stdout
        assert f"members of #{lab}: " in done.stdout and bob in done.stdout.split("members of")[1]
        assert "groups: #announcements (" in done.stdout  # every account reads them, listed first by name
        assert f"; #{lab} (2 members, owner {alice})" in done.stdout
        got = bob_client.deliveries(3, timeout=15)
        event = GroupEvent.decode(got[0].body)
        assert (got[0].content_type, event.kind, event.users, got[0].sender) == (
            ContentType.GROUP_EVENT, GroupEventKind.ADDED, (bob,), alice
        )  # fmt: skip
        assert [(d.target_kind, d.target, d.body) for d in got[1:]] == [
            (TargetKind.GROUP, lab, b"hello group"),
            (TargetKind.GROUP, lab, b"plain line"),
        ]
        bob_client.send_text(lab, "hi alice", kind=TargetKind.GROUP)
        history = run(msg_cmd(server, alice), f"/history #{lab}\n")
        assert history.returncode == 0, history.stderr
        assert f"* {alice} created #{lab}\n" in history.stdout or f"* you created #{lab}\n" in history.stdout
        assert f"* you added {bob} to #{lab}\n" in history.stdout
        assert re.search(rf"\] #{lab}/\d+ {bob}: hi alice\n", history.stdout)  # the number /delete takes
        assert f"earlier messages with #{lab}: /more for more)" in history.stdout
    finally:
        bob_client.close()


def test_a_joiner_sees_the_event_and_live_posts(server: ServerProcess, names: Names) -> None:
    alice, carol, lab = names("alice"), names("carol"), names("lab")
    alice_client = connect(server, alice, device_id="alice-device", groups=True)
    try:
        alice_client.group_create(lab)
        carol_msg = subprocess.Popen(msg_cmd(server, carol), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)  # fmt: skip
        assert carol_msg.stdin is not None
        carol_msg.stdin.write(f"/join #{lab}\n")
        carol_msg.stdin.flush()
        joined = alice_client.deliveries(1, timeout=15)[0]
        assert GroupEvent.decode(joined.body).kind == GroupEventKind.JOINED
        alice_client.send_text(lab, "welcome", kind=TargetKind.GROUP)
        # carol's msg has it once alice hears it was delivered: a /quit sooner could end carol's
        # run before the Deliver was read (input ended and every request of hers was answered)
        alice_client.next_message(lambda m: isinstance(m, Receipt) and m.state == ReceiptState.DELIVERED, 15)
        carol_msg.stdin.write("/quit\n")
        out, err = carol_msg.communicate(timeout=30)
        assert carol_msg.returncode == 0, err
        assert f"joined #{lab} (2 members)" in out
        assert f"] #{lab}/3 {alice}: welcome\n" in out  # 1 created, 2 joined
    finally:
        alice_client.close()


def test_errors_go_to_stderr(server: ServerProcess, names: Names) -> None:
    alice = names("alice")
    done = run(msg_cmd(server, alice), "/join #nosuch-group-x\n/add #x\n#bad!name hi\n")
    assert done.returncode == 1
    assert "group_not_found" in done.stderr
    assert "usage: /add #GROUP USER..." in done.stderr
    assert "invalid group name" in done.stderr


def test_the_prompt_shows_the_group_after_to(server: ServerProcess, names: Names) -> None:
    """On a terminal (a pty rendered by pyte): Tab completes a #group seen, /to makes it the prompt."""
    from tests.system.test_interactive import Terminal, env

    alice, lab = names("alice"), names("lab")
    register(server, alice)
    term = Terminal(msg_cmd(server, alice, account=False)[3:], env())
    try:
        term.wait_for(r"logged in as")
        term.type(f"/create {lab}\r")
        term.wait_for(rf"^created #{lab} \(g:\d+\)$")
        term.type(f"/to #{lab[:2]}\t")  # Tab completes the group's name
        term.wait_for(rf"> /to #{lab}$")
        term.type("\r")
        term.wait_for(rf"^talking to #{lab}$")
        term.wait_for(rf"^#{lab}>$")
    finally:
        term.close()
