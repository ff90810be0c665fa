"""``msg``'s files (1.6) as processes: ``/sendfile`` from a script, an offer fetched by
itself (``--auto-download``) or by ``/get``, hostile names kept inside the downloads
directory. The client's behaviour, not the server's I/O strategy: one backend."""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

from csce513msg.client.transfer import sha256_of
from csce513msg.protocol import ContentType, Deliver, Offer, Receipt, parse_offer
from tests.conformance.wire import connect, next_of
from tests.fixtures import Names
from tests.servers import IS_LINUX, ServerProcess
from tests.system.test_cli import msg_cmd, read_events

BACKENDS = ["epoll" if IS_LINUX else "select"]


def receiver(server: ServerProcess, user: str, downloads: Path, auto: str) -> subprocess.Popen[str]:
    cmd = msg_cmd(server, user, "--json", "--downloads", str(downloads), "--auto-download", auto)
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    read_events(proc, "login")
    return proc


def test_sendfile_from_a_script_then_auto_download_and_get(server: ServerProcess, names: Names, tmp_path: Path) -> None:
    alice, bob = names("alice"), names("bob")
    small, large = tmp_path / "hw3.py", tmp_path / "slides.pdf"
    small.write_bytes(b"print('hello')\n")
    large.write_bytes(os.urandom(300_000))
    bob_proc = receiver(server, bob, tmp_path / "dl", "1k")
    try:
        script = f"/sendfile {bob} {small}\n/sendfile {bob} {large}\n/msg {bob} both sent\n/files\n/quit\n"
        done = subprocess.run(msg_cmd(server, alice), input=script, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
        assert re.search(r"^file 1 hw3\.py: sent \[#{20}\] 15 B/15 B$", done.stdout, re.M), done.stdout
        assert re.search(rf"you -> {bob} 🔒: \[file 2\] slides\.pdf \(293\.0 KiB\)$", done.stdout, re.M)
        events = read_events(bob_proc, "saved")  # the small one came by itself
        assert Path(str(events[-1]["path"])).read_bytes() == small.read_bytes()
        offers = [e for e in events if e["event"] == "offer" and e["number"] == 2]  # it may come first
        offer = offers[0] if offers else read_events(bob_proc, "offer")[-1]  # the large one waits
        assert offer["name"] == "slides.pdf" and offer["number"] == 2
        assert bob_proc.stdin is not None
        bob_proc.stdin.write("/get 2\n")
        bob_proc.stdin.flush()
        saved = read_events(bob_proc, "saved")[-1]
        assert saved["path"] == str(tmp_path / "dl" / "slides.pdf")
        assert Path(str(saved["path"])).read_bytes() == large.read_bytes()
    finally:
        assert bob_proc.stdin is not None
        bob_proc.stdin.close()
        assert bob_proc.wait(timeout=30) == 0


def test_hostile_names_land_inside_the_downloads_directory(server: ServerProcess, names: Names, tmp_path: Path) -> None:
    alice, bob = names("alice"), names("bob")
    downloads = tmp_path / "dl"
    bob_proc = receiver(server, bob, downloads, "10M")
    hostile = ["../../../../etc/passwd", ".bashrc", "a/b\\c.txt", "\x1b]0;pwned\x07\x1b[31mred.txt", "CON", "x" * 900]
    try:
        with connect(server, alice) as a:
            for name in hostile:  # a file of its own for each: the client fetches each upload once
                path = tmp_path / "payload"
                path.write_bytes(name.encode())
                upload = a.upload_file(path, bob)
                offer = Offer(upload.upload_id, name, upload.size, upload.sha256)
                a.request(a.session.send_offer(bob, offer), Receipt)
        paths = [Path(str(read_events(bob_proc, "saved")[-1]["path"])) for _ in hostile]
        assert [p.read_bytes().decode() for p in paths] == hostile
        assert all(p.parent == downloads for p in paths)
        assert [p.name for p in paths[:5]] == ["passwd", "bashrc", "c.txt", "]0;pwned[31mred.txt", "_CON"]
        assert len(paths[5].name.encode()) <= 200
    finally:
        assert bob_proc.stdin is not None
        bob_proc.stdin.close()
        bob_proc.wait(timeout=30)


def test_an_upload_cut_by_killing_msg_goes_on_in_the_next_run(names: Names, tmp_path: Path) -> None:
    """msg killed (SIGKILL) in the middle of a 300 MB upload: the next run finds it in its
    transfers file, resumes it by its id (the server re-hashes what it has) and offers it."""
    from tests.servers import start  # a server of its own: its limits allow the file

    server = start(BACKENDS[0], "--max-file", "512M", "--file-quota", "2G", "--disk-reserve", "0")
    alice, bob = names("alice"), names("bob")
    big = tmp_path / "lecture.mp4"
    with big.open("wb") as out:
        for _ in range(300):
            out.write(os.urandom(1 << 20))
    try:
        with connect(server, bob) as b:
            first = subprocess.Popen(msg_cmd(server, alice), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            assert first.stdin is not None and first.stdout is not None
            first.stdin.write(f"/sendfile {bob} {big}\n")
            first.stdin.flush()
            while "lecture.mp4: sending" not in (line := first.stdout.readline()):
                assert line, "msg ended before sending"
            time.sleep(0.3)  # part of the way
            first.kill()
            first.wait(10)
            again = subprocess.run(msg_cmd(server, alice), input="", capture_output=True, text=True, timeout=120)
            assert again.returncode == 0, again.stdout + again.stderr
            assert "unfinished last time, going on" in again.stdout
            assert re.search(r"lecture\.mp4: sent \[#{20}\]", again.stdout), again.stdout
            deliver = next_of(b, Deliver, lambda d: d.content_type == ContentType.FILE_OFFER, timeout=60)
            got = b.download(parse_offer(deliver.body), tmp_path / "bob")
            assert got.stat().st_size == big.stat().st_size and sha256_of(got) == sha256_of(big)
    finally:
        server.stop()
