"""The classroom survives a restart: the queue of raised hands (in its order, a taken hand
gone) and the confirmations, stopped and started as a real server process on the same data
directory (one backend: it is the store's and the engine's load at start, not the I/O)."""

from __future__ import annotations

import subprocess
import sys
import tempfile

from csce513msg.client import Client
from tests.conformance.wire import PASSWORD, connect
from tests.fixtures import Names
from tests.servers import ServerProcess, start

BACKENDS = ["epoll"]


def instructor(server: ServerProcess, name: str) -> Client:
    return Client.connect(server.host, server.port, user=name, password=PASSWORD, groups=True, device_id="prof")


def test_the_queue_and_the_confirmations_survive_a_restart(names: Names) -> None:
    data_dir = tempfile.mkdtemp(prefix="msgsrv-classroom-")
    prof, ann, ben, cy = names("prof"), names("ann"), names("ben"), names("cy")
    cmd = [sys.executable, "-m", "csce513msg.cli.msgsrv", "user", "add", prof, "--instructor",
           "--data-dir", data_dir, "--kdf-cost", "test"]  # fmt: skip
    assert subprocess.run(cmd, input=PASSWORD + "\n", capture_output=True, text=True, timeout=60).returncode == 0
    server = start("epoll", "--data-dir", data_dir)
    try:
        staff = instructor(server, prof)
        asks = staff.announce("bring a laptop", confirm=True)
        students = {u: connect(server, u, device_id="d", groups=True) for u in (ann, ben, cy)}
        students[ann].confirm(asks.position)
        for user in (ann, ben, cy):
            students[user].raise_hand(f"{user}'s question")
        assert staff.take_next().taken == ann
        for client in (staff, *students.values()):
            client.close()
    finally:
        code = server.terminate()  # a graceful stop (SIGTERM)
        server.stop()
    assert code == 0
    server = start("epoll", "--data-dir", data_dir)
    try:
        staff = instructor(server, prof)
        queue = staff.hand_queue()
        assert (queue.users, queue.questions) == ((ben, cy), (f"{ben}'s question", f"{cy}'s question"))
        listed = staff.confirmed(0)
        assert (listed.position, listed.confirmed) == (asks.position, (ann,))
        assert ben in listed.pending and cy in listed.pending
        cy_again = connect(server, cy, device_id="d2", groups=True)
        assert (cy_again.lower_hand().place, staff.hand_queue().users) == (0, (ben,))
        cy_again.close()
        staff.close()
    finally:
        server.stop()
