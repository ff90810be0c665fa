"""File transfer (protocol 1.6) against the raw socket copy, with chat beside it:
``python -m benchmarks.transfer``.

    python -m benchmarks.transfer [--backends epoll,uvloop] [--size 100] [--repeats 3]
                                  [--out transfer.json] [--dir DIR] [--quick]

In each repeat, on 127.0.0.1 only:

1. **The ceiling**: a plain copy of the same file over a loopback TCP connection, one
   side ``socket.sendfile()``, the other ``recv_into`` a 1 MiB buffer (pinned to core 0, as
   the server is; the sender to core 1, as the clients are); and the same copy with the
   receiver writing what it gets to a file and fsyncing it at the end (the server and the
   client both write, and fsync, a file they receive), the "disk copy"; and that with a
   SHA-256 of the bytes too, the "verifying copy" (the server checks an upload's hash and
   the client a download's: what one core can do that does only that). The first is
   "the ceiling".
2. **Each backend**: a ``msgsrv`` (``--durability normal``, its data directory on a real
   disk) pinned to core 0. A transfer process (core 1) uploads the file with
   ``Client.send_file`` (u0 to u1), then u1 downloads it with ``Client.download``; the
   server's CPU (user + system, every thread, from /proc) is read around each half. A chat
   process (core 1) sends u3 a message from u2 every 5 ms, from just before the upload to
   just after the download; latency is from each message's send time (in its body) to
   its arrival, on that process's one clock. Then, with the transfer done, the same chat
   alone on the same server, for as many messages: p99 with the transfer against p99
   without it.

MB is 10^6 bytes and MB/s 10^6 bytes a second throughout. Every repeat makes a fresh
server; the figures are the medians of the repeats, each one computed per run first (a
run's % of ceiling is against the ceiling of its own repeat).
"""

from __future__ import annotations

import argparse
import json
import os
import select
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import proc, suite
from benchmarks.loadgen import percentiles

MB = 1_000_000
BACKENDS = "epoll,uvloop"
SERVER_CORE, CLIENT_CORE = 0, 1
CHAT_INTERVAL = 0.005  #: seconds between chat messages
CHAT_BOUND = 600.0  #: seconds the chat beside a transfer may last at most (it is stopped at the transfer's end)
CHAT_LEAST = 200  #: messages the chat alone sends at least (a second: a p99 of 200 samples)
TARGETS = {"must": (0.30, 2.0), "aim": (0.60, 1.2)}  #: share of the ceiling (each way), chat p99 ratio at most
FILE_FLAGS = ("--durability", "normal", "--self-register", "--disk-reserve", "0", "--file-quota", "4G")
TMPFS = {"tmpfs", "ramfs"}


def fs_type(path: Path) -> str:
    """The file system type of the mount that holds ``path`` (the longest mount point above it)."""
    path, best, kind = path.resolve(), "", "unknown"
    for line in Path("/proc/self/mounts").read_text().splitlines():
        fields = line.split()
        point = fields[1].replace("\\040", " ")
        if (path == Path(point) or Path(point) in path.parents) and len(point) > len(best):
            best, kind = point, fields[2]
    return kind


def disk_root(asked: Path | None) -> Path:
    """Where the files go: ``asked``, else the first of /tmp, /var/tmp and the working
    directory that is not in memory (the server's and the client's fsyncs must reach a disk)."""
    if asked is not None:
        asked.mkdir(parents=True, exist_ok=True)
        return asked
    for candidate in (Path(tempfile.gettempdir()), Path("/var/tmp"), Path.cwd()):
        if candidate.is_dir() and fs_type(candidate) not in TMPFS:
            return candidate
    return Path.cwd()


class Worker:
    """A ``benchmarks.transferload`` process (or ``module``'s) on one core, read a JSON line at a time."""

    def __init__(self, core: int, *args: str, module: str = "benchmarks.transferload") -> None:
        cmd = [sys.executable, "-m", module, *args]
        self.name = " ".join(args[:1])
        self.proc = subprocess.Popen(suite.pinned(core, cmd), stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.pid = self.proc.pid  # taskset execs the command: the same process
        self.buf = b""

    def read(self, timeout: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        fd, deadline = self.proc.stdout.fileno(), time.monotonic() + timeout
        while b"\n" not in self.buf:
            if not select.select([fd], [], [], max(0.0, deadline - time.monotonic()))[0]:
                raise TimeoutError(f"transferload {self.name}: no answer within {timeout:.0f} s")
            data = os.read(fd, 65536)
            if not data:
                raise RuntimeError(f"transferload {self.name} stopped (exit {self.proc.wait()})")
            self.buf += data
        line, _, self.buf = self.buf.partition(b"\n")
        return dict(json.loads(line))

    def say(self, word: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(word.encode() + b"\n")
        self.proc.stdin.flush()

    def close(self) -> None:
        """Tell it to quit and close its input; stop it (this process, by its PID) if it has
        not ended within 10 s (a transfer in the middle of a file finishes it first)."""
        if self.proc.poll() is None:
            try:
                self.say("quit")
            except BrokenPipeError:
                pass
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def server_flags(size: int, extra: tuple[str, ...] = ()) -> tuple[str, ...]:
    """msgsrv's flags besides ``--kdf-cost test`` (``suite.Server``): files up to 512 MiB, or
    ``size``; then ``extra`` (``--server-flags``: e.g. ``--max-chunk 63K``, 1.7's chunk size)."""
    return (*FILE_FLAGS, "--max-file", str(max(512 << 20, size)), *extra)


def make_file(path: Path, size: int) -> None:
    with path.open("wb") as f:
        for offset in range(0, size, MB):
            f.write(os.urandom(min(MB, size - offset)))


def per_100mb(cpu_s: float, size: int) -> float:
    return round(cpu_s / size * 100 * MB, 4)


def ceiling(source: Path, sink: Path | None, timeout: float, hashed: bool = False) -> dict[str, Any]:
    """The raw copy of ``source``: sendfile on core 1 to recv_into on core 0 (into ``sink``;
    ``hashed``: through a SHA-256 too, as the server checks an upload)."""
    args = [*(["--to-file", str(sink)] if sink else []), *(["--hash"] if hashed else [])]
    receiver = Worker(SERVER_CORE, "raw-recv", *args)
    try:
        port = receiver.read(30)["port"]
        sender = Worker(CLIENT_CORE, "raw-send", "--port", str(port), "--file", str(source))
        try:
            sent, got = sender.read(timeout), receiver.read(timeout)
        finally:
            sender.close()
    finally:
        receiver.close()
        if sink is not None:
            sink.unlink(missing_ok=True)
    size = source.stat().st_size
    if got["bytes"] != size or sent["bytes"] != size:
        raise RuntimeError(f"raw copy: {sent['bytes']} sent, {got['bytes']} received of {size}")
    return {"bytes": size, "seconds": round(got["seconds"], 4), "mb_s": round(size / got["seconds"] / MB, 1),
            "receiver_cpu_s_per_100mb": per_100mb(got["cpu_s"], size),
            "sender_cpu_s_per_100mb": per_100mb(sent["cpu_s"], size)}  # fmt: skip


Mark = tuple[proc.Sample, proc.Sample, float]  #: the server's /proc sample, the transfer client's, the time


def mark(server: int, client: int) -> Mark:
    return proc.sample(server), proc.sample(client), time.monotonic()


def half(seconds: float, size: int, raw: dict[str, Any], start: Mark, moving: Mark, end: Mark) -> dict[str, Any]:
    """One direction's figures: MB/s, its share of the ceiling and of the raw copy to a file
    (``raw``: this repeat's); the server's CPU from ``start`` to ``end``; the server's and the
    client's CPU use (CPU seconds a second) while the bytes moved, from ``moving`` to ``end``."""
    cpu, mb_s, wall = end[0].cpu - start[0].cpu, size / seconds / MB, end[2] - moving[2]
    return {"seconds": round(seconds, 4), "mb_s": round(mb_s, 1),
            "of_ceiling": round(mb_s / raw["recv"]["mb_s"], 4),
            "of_disk_copy": round(mb_s / raw["recv_to_file"]["mb_s"], 4),
            "of_verifying_copy": round(mb_s / raw["recv_hash_to_file"]["mb_s"], 4),
            "server_cpu_s": round(cpu, 3), "server_cpu_s_per_100mb": per_100mb(cpu, size),
            "server_cpu_utilisation": round((end[0].cpu - moving[0].cpu) / wall, 3),
            "client_cpu_utilisation": round((end[1].cpu - moving[1].cpu) / wall, 3)}  # fmt: skip


def chat_worker(port: int, count: int) -> Worker:
    worker = Worker(CLIENT_CORE, "chat", "--port", str(port), "--sender", "u2", "--receiver", "u3",
                    "--count", str(count), "--interval", str(CHAT_INTERVAL))  # fmt: skip
    worker.read(60)
    return worker


def chat_figures(result: dict[str, Any]) -> dict[str, Any]:
    keep = ("sent", "delivered", "seconds", "p50_ms", "p99_ms", "max_ms", "late_p99_ms", "nice", "latencies_ms")
    return {k: round(result[k], 4) if isinstance(result[k], float) else result[k] for k in keep}


def backend_run(
    backend: str, source: Path, root: Path, raw: dict[str, Any], timeout: float, extra: tuple[str, ...] = ()
) -> dict[str, Any]:
    """One fresh server: the transfer with chat beside it, then the chat alone."""
    size = source.stat().st_size
    server = suite.Server(backend, 4, *server_flags(size, extra), root=root)  # u0 uploads to u1; u2 chats to u3
    downloads = Path(server.data_dir) / "downloads"
    workers: list[Worker] = []
    try:
        xfer = Worker(CLIENT_CORE, "transfer", "--port", str(server.port), "--file", str(source),
                      "--downloads", str(downloads))  # fmt: skip
        workers.append(xfer)
        xfer.read(60)
        os.sync()  # the source file and the last run's pages on disk: each run starts alike
        workers.append(chat := chat_worker(server.port, int(CHAT_BOUND / CHAT_INTERVAL)))
        chat.say("go")
        marks = [mark(server.pid, xfer.pid)]
        xfer.say("upload")
        xfer.read(timeout)  # the server answered the FileUpload: the chunks start
        marks.append(mark(server.pid, xfer.pid))
        up = xfer.read(timeout)
        marks.append(mark(server.pid, xfer.pid))
        xfer.say("download")
        down = xfer.read(timeout)
        marks.append(mark(server.pid, xfer.pid))
        chat.say("stop")
        with_transfer = chat.read(60)
        if up["bytes"] != size or down["bytes"] != size:
            raise RuntimeError(f"{backend}: {up['bytes']} uploaded, {down['bytes']} downloaded of {size}")
        os.sync()  # the transfer's dirty pages (200 MB) written back first: else the chat alone
        # is measured during their writeback, its commits queued behind it (p99 2-18 ms seen)
        workers.append(alone := chat_worker(server.port, max(CHAT_LEAST, with_transfer["sent"])))
        alone.say("go")
        without = alone.read(CHAT_BOUND + 60)
    finally:
        for worker in workers:
            worker.close()
        server.stop()
    start, moving, uploaded, downloaded = marks
    total = up["prepare_s"] + up["upload_s"] + up["offer_s"] + down["download_s"]
    p99_with, p99_without = with_transfer["p99_ms"], without["p99_ms"]
    return {
        "backend": backend,
        "bytes": size,
        "upload": {**half(up["upload_s"], size, raw, start, moving, uploaded),
                   "prepare_s": round(up["prepare_s"], 4), "offer_s": round(up["offer_s"], 4)},
        "download": half(down["download_s"], size, raw, uploaded, uploaded, downloaded),
        "end_to_end": {"seconds": round(total, 4), "mb_s": round(size / total / MB, 1)},
        "chat_without": chat_figures(without),
        "chat_with": chat_figures(with_transfer),
        "chat_p99_ratio": round(p99_with / p99_without, 3) if p99_with and p99_without else None,
    }  # fmt: skip


def median_tree(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The median of every number in ``runs`` (same shape each), key by key; the rest as in the first."""
    out: dict[str, Any] = {}
    for key, first in runs[0].items():
        values = [run[key] for run in runs]
        if isinstance(first, dict):
            out[key] = median_tree(values)
        elif all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            out[key] = round(statistics.median(values), 4)
        else:
            out[key] = first
    return out


def verdicts(point: dict[str, Any], pooled: dict[str, Any]) -> dict[str, bool]:
    """Each target: both directions at least the share of the ceiling (medians), chat p99 ratio
    (pooled over the repeats) at most."""
    share = min(point["upload"]["of_ceiling"], point["download"]["of_ceiling"])
    ratio = pooled["p99_ratio"]
    return {name: share >= least and ratio is not None and ratio <= most for name, (least, most) in TARGETS.items()}


def measure(backends: list[str], size: int, repeats: int, root: Path, extra: tuple[str, ...] = ()) -> dict[str, Any]:
    """Every repeat: the two raw copies, then each backend once (backends interleaved, so a
    drift of the machine's speed spreads over all of them)."""
    timeout = 120.0 + size / MB  # at least 1 MB/s, and two minutes for the rest
    runs: dict[str, Any] = {"ceiling": [], "backends": {b: [] for b in backends}}
    work = Path(tempfile.mkdtemp(prefix="csce513msg-transfer-", dir=root))
    try:
        source = work / "source.bin"
        make_file(source, size)
        for repeat in range(repeats):
            raw = {"recv": ceiling(source, None, timeout), "recv_to_file": ceiling(source, work / "sink.bin", timeout),
                   "recv_hash_to_file": ceiling(source, work / "sink.bin", timeout, hashed=True)}  # fmt: skip
            runs["ceiling"].append(raw)
            for backend in backends:
                run = backend_run(backend, source, work, raw, timeout, extra)
                runs["backends"][backend].append({**run, "repeat": repeat})
                print(f"{backend} run {repeat + 1} of {repeats} done", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    medians = {"ceiling": median_tree(runs["ceiling"]),
               "backends": {b: median_tree(r) for b, r in runs["backends"].items()}}  # fmt: skip
    for point in medians["backends"].values():  # the samples are pooled below, not a median
        point["chat_with"].pop("latencies_ms"), point["chat_without"].pop("latencies_ms")
    pooled = {b: pooled_chat(r) for b, r in runs["backends"].items()}
    return {"runs": runs, "medians": medians, "pooled_chat": pooled,
            "verdicts": {b: verdicts(p, pooled[b]) for b, p in medians["backends"].items()}}  # fmt: skip


def pooled_chat(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Chat latency over every repeat's samples at once: a p99 of 200 samples is their second
    largest, and one repeat's stall moves it by 5x; pooled, 3 repeats give 600 and more."""
    out: dict[str, Any] = {}
    for phase in ("chat_without", "chat_with"):
        samples = [ms / 1e3 for run in runs for ms in run[phase]["latencies_ms"]]
        out[phase] = {"samples": len(samples), **percentiles(samples)}
    p99_with, p99_without = out["chat_with"]["p99_ms"], out["chat_without"]["p99_ms"]
    out["p99_ratio"] = round(p99_with / p99_without, 3) if p99_with and p99_without else None
    return out


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def table(report: dict[str, Any]) -> str:
    """The markdown tables: throughput against the ceiling, server CPU, chat p99; the verdicts."""
    med, size = report["medians"], report["size_bytes"]
    raw, disk, check = med["ceiling"]["recv"], med["ceiling"]["recv_to_file"], med["ceiling"]["recv_hash_to_file"]
    lines = [
        f"File transfer of {size / MB:g} MB (MB = 10^6 bytes), median of {report['repeats']} run(s). "
        "The ceiling: sendfile -> recv_into over loopback, in the same run.",
        "",
        "| backend | upload MB/s | download MB/s | end-to-end MB/s | % of ceiling, up / down (of the disk copy; "
        "of the verifying copy) "
        "| server CPU s/100MB, up / down | chat p99 ms, without / with (every repeat's samples) | ratio | must | aim |",
        "|---|---|---|---|---|---|---|---|---|---|",
        f"| ceiling: sendfile -> recv_into | {raw['mb_s']:,.0f} | {raw['mb_s']:,.0f} | - | 100% | "
        f"(receiver {raw['receiver_cpu_s_per_100mb']:.3f}, sender {raw['sender_cpu_s_per_100mb']:.3f}) | - | - | | |",
        f"| disk copy: recv_into + write + fsync | {disk['mb_s']:,.0f} | {disk['mb_s']:,.0f} | - | "
        f"{disk['mb_s'] / raw['mb_s']:.0%} | (receiver {disk['receiver_cpu_s_per_100mb']:.3f}) | - | - | | |",
        f"| verifying copy: recv_into + SHA-256 + write + fsync | {check['mb_s']:,.0f} | {check['mb_s']:,.0f} | - | "
        f"{check['mb_s'] / raw['mb_s']:.0%} | (receiver {check['receiver_cpu_s_per_100mb']:.3f}) | - | - | | |",
    ]
    for backend, p in med["backends"].items():
        up, down, ok = p["upload"], p["download"], report["verdicts"][backend]
        chat = report["pooled_chat"][backend]
        ratio = f"{chat['p99_ratio']:.2f}x" if chat["p99_ratio"] is not None else "-"
        without, with_ = chat["chat_without"], chat["chat_with"]
        lines.append(
            f"| {backend} | {up['mb_s']:,.1f} | {down['mb_s']:,.1f} | {p['end_to_end']['mb_s']:,.1f} | "
            f"{up['of_ceiling']:.0%} / {down['of_ceiling']:.0%} "
            f"({up['of_disk_copy']:.0%} / {down['of_disk_copy']:.0%}; "
            f"{up['of_verifying_copy']:.0%} / {down['of_verifying_copy']:.0%}) | "
            f"{up['server_cpu_s_per_100mb']:.3f} / {down['server_cpu_s_per_100mb']:.3f} | "
            f"{ms(without['p99_ms'])} / {ms(with_['p99_ms'])} ({without['samples']} / {with_['samples']}) | {ratio} | "
            f"{'met' if ok['must'] else 'MISSED'} | {'met' if ok['aim'] else 'missed'} |"
        )
    lines += ["", "| backend | chat without: p50 / p99 / max ms (messages) | with the transfer | sender late, p99 ms "
              "(without / with) | CPU use during the upload: server / client | the download: server / client |",
              "|---|---|---|---|---|---|"]  # fmt: skip
    for backend, p in med["backends"].items():
        a, w, up, down = p["chat_without"], p["chat_with"], p["upload"], p["download"]
        lines.append(
            f"| {backend} | {ms(a['p50_ms'])} / {ms(a['p99_ms'])} / {ms(a['max_ms'])} ({a['delivered']}) | "
            f"{ms(w['p50_ms'])} / {ms(w['p99_ms'])} / {ms(w['max_ms'])} ({w['delivered']}) | "
            f"{ms(a['late_p99_ms'])} / {ms(w['late_p99_ms'])} | "
            f"{up['server_cpu_utilisation']:.0%} / {up['client_cpu_utilisation']:.0%} | "
            f"{down['server_cpu_utilisation']:.0%} / {down['client_cpu_utilisation']:.0%} |"
        )
    (must_share, must_ratio), (aim_share, aim_ratio) = TARGETS["must"], TARGETS["aim"]
    lines += ["", f"Targets: must >= {must_share:.0%} of the ceiling each way and chat p99 <= {must_ratio}x "
              f"its value without the transfer; aim >= {aim_share:.0%} and <= {aim_ratio}x."]  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default=BACKENDS, help=f"any of {','.join(suite.ALL_BACKENDS)}")
    parser.add_argument("--size", type=float, default=None, help="MB (10^6 bytes) to transfer (default 100)")
    parser.add_argument("--repeats", type=int, default=None, help="runs of everything; medians (default 3)")
    parser.add_argument("--quick", action="store_true", help="10 MB, 1 repeat: a check that it works, not figures")
    parser.add_argument("--out", type=Path, default=None, help="the JSON report: every run and the medians")
    parser.add_argument("--dir", type=Path, default=None, help="where the files go (default: a disk, not tmpfs)")
    parser.add_argument("--server-flags", default="", help="more msgsrv flags, e.g. '--max-chunk 63K'")
    args = parser.parse_args()
    extra = tuple(shlex.split(args.server_flags))
    backends = args.backends.split(",")
    if unknown := set(backends) - set(suite.ALL_BACKENDS):
        parser.error(f"unknown backends: {', '.join(sorted(unknown))}")
    size = int((args.size if args.size is not None else 10 if args.quick else 100) * MB)
    repeats = args.repeats if args.repeats is not None else 1 if args.quick else 3
    root = disk_root(args.dir)
    if (kind := fs_type(root)) in TMPFS:
        print(f"warning: {root} is {kind}: the fsyncs reach no disk", file=sys.stderr)
    if shutil.disk_usage(root).free < 4 * size:
        raise SystemExit(f"{root}: less than {4 * size / MB:,.0f} MB free (the file, the server's, two copies)")
    report: dict[str, Any] = {
        "schema": "csce513msg-transfer/1", "mode": "quick" if args.quick else "full",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": proc.machine(),
        "settings": {"server": f"msgsrv {shlex.join(server_flags(size, extra))} --kdf-cost test, core {SERVER_CORE}",
                     "clients": f"benchmarks.transferload processes pinned to core {CLIENT_CORE}",
                     "chat_interval_s": CHAT_INTERVAL, "mb": MB, "dir": str(root), "fs_type": kind},
        "size_bytes": size, "repeats": repeats, "backends": backends,
    }  # fmt: skip
    report.update(measure(backends, size, repeats, root, extra))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(table(report))


if __name__ == "__main__":
    main()
