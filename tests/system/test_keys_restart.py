"""The key directory across a SIGKILL of the server (protocol 1.7): one backend, since none of
it depends on the I/O strategy. What a device published is served the same after the restart,
and a one-time prekey handed out before the kill is never handed out again: it was deleted in
the commit that answered."""

from __future__ import annotations

import signal
from pathlib import Path

from csce513msg.protocol import PUBLISHED
from tests.conformance.test_keys import device, fetch, keys, prekeys, publish
from tests.fixtures import Names
from tests.servers import start

BACKENDS = ["epoll"]


def test_the_directory_survives_a_sigkill_and_no_prekey_is_served_twice(
    backend: str, names: Names, tmp_path: Path
) -> None:
    alice, bob, carol = names("alice"), names("bob"), names("carol")
    data_dir = str(tmp_path / "data")
    server = start(backend, "--data-dir", data_dir)
    try:
        a, b = device(server, alice, "d1"), device(server, bob, "b1")
        published, pre = keys(spk_id=4), prekeys(1, 5)
        publish(a, published, pre)
        first = fetch(b, alice)["d1"]
        assert first[PUBLISHED:] == (1).to_bytes(4, "big") + pre[0][1]
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait(10)
        server = start(backend, "--data-dir", data_dir)
        c = device(server, carol, "c1")
        after = fetch(c, alice)["d1"]
        assert after[:PUBLISHED] == published
        assert after[PUBLISHED:] == (2).to_bytes(4, "big") + pre[1][1]  # not prekey 1 again
    finally:
        server.stop()
