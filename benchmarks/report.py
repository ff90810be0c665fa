"""The report: a table in the terminal (rich) and PNG plots (matplotlib, if installed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table


def table(report: dict[str, Any]) -> None:
    console = Console()
    relay = report["relay"]
    if relay is not None:
        direct_table(console, report, relay)
    if report["latency_by_load"]:
        lat = Table(title=f"Latency at a fixed offered load ({relay['clients']} clients; median of "
                          f"{report['repeats']} runs by p99)")  # fmt: skip
        for column in ("backend", "offered/s", "delivered/s", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "server CPU"):
            lat.add_column(column, justify="left" if column == "backend" else "right")
        for p in report["latency_by_load"]:
            got = f"{p['delivered_per_s']:.0f}" + ("" if p["sustained"] else " (not sustained)")
            lat.add_row(p["backend"], f"{p['offered_rate']:.0f}", got, _ms(p["latency"]["p50_ms"]),
                        _ms(p["latency"]["p90_ms"]), _ms(p["latency"]["p99_ms"]), _ms(p["latency"]["p999_ms"]),
                        f"{p['server_cpu_utilisation']:.0%}")  # fmt: skip
        console.print(lat)
    if report.get("highest_sustained"):
        h = Table(title="The highest paced load each backend sustains (100 clients; 90 % of its closed loop, "
                        "then 20 % less until sustained)")  # fmt: skip
        for column in ("backend", "sustained/s", "p50 ms", "p99 ms", "µs CPU/msg", "server CPU", "tried"):
            h.add_column(column, justify="left" if column in ("backend", "tried") else "right")
        for p in report["highest_sustained"]:
            tried = ", ".join(f"{t['offered_rate']:.0f}" + ("" if t["sustained"] else " no") for t in p["tried"])
            got = f"{p['offered_rate']:.0f}" if p["sustained"] else "none tried"
            h.add_row(p["backend"], got, _ms(p["latency"]["p50_ms"]), _ms(p["latency"]["p99_ms"]),
                      f"{p['server_cpu_us_per_message']:.1f}", f"{p['server_cpu_utilisation']:.0%}", tried)  # fmt: skip
        console.print(h)
    if report.get("durability"):
        d = Table(title="Durability: the same paced load with --durability full, normal, memory")
        for column in ("backend", "durability", "µs CPU/msg", "p50 ms", "p99 ms", "server CPU"):
            d.add_column(column, justify="left" if column in ("backend", "durability") else "right")
        for p in report["durability"]:
            cpu, share = f"{p['server_cpu_us_per_message']:.1f}", f"{p['server_cpu_utilisation']:.0%}"
            d.add_row(
                p["backend"], p["durability"], cpu, _ms(p["latency"]["p50_ms"]), _ms(p["latency"]["p99_ms"]), share
            )
        console.print(d)
    if report.get("login_burst"):
        b = Table(title="Chat latency during a login burst (production KDF)")
        for column in ("backend", "chat msg/s", "p99 before ms", "p99 during ms", "ratio", "login median ms (done)"):
            b.add_column(column, justify="left" if column == "backend" else "right")
        for p in report["login_burst"]:
            burst, ratio = p["burst"], p["p99_ratio"]
            b.add_row(p["backend"], f"{p['offered_rate']:.0f}", _ms(burst["before"]["p99_ms"]),
                      _ms(burst["during"]["p99_ms"]), "-" if ratio is None else f"{ratio:.2f}",
                      f"{burst['logins']['median_ms'] or 0:.0f} ({burst['logins']['completed']} of "
                      f"{burst['logins']['asked']})")  # fmt: skip
        console.print(b)
    if report["group_fanout"]["points"]:
        group_table(console, report["group_fanout"])
    c = Table(title="Idle logged-in connections (no presence subscriptions)")
    for column in ("backend", "asked", "held", "bytes RSS/conn", "idle CPU", "threads", "probe p50 ms", "probe p99 ms"):
        c.add_column(column, justify="left" if column == "backend" else "right")
    for p in report["connections"]:
        held = str(p["held"]) + (f" ({p['refused']} refused)" if p["refused"] else "")
        c.add_row(p["backend"], str(p["asked"]), held, str(p["rss_per_connection_bytes"]),
                  f"{p['idle_cpu_utilisation']:.1%}", str(p["server_threads"]),
                  _ms(p["probe_latency"].get("p50_ms")), _ms(p["probe_latency"].get("p99_ms")))  # fmt: skip
    if report["connections"]:
        console.print(c)
    if report.get("active_among_idle"):
        mixed_table(console, report["active_among_idle"])
    for name, why in report["not_run"].items():
        console.print(f"{name}: {why}")
    console.print("wall time by workload: " + ", ".join(f"{k} {v:.0f} s" for k, v in report["timings_s"].items()))


def direct_table(console: Console, report: dict[str, Any], relay: dict[str, Any]) -> None:
    """Workload 1, beside its baselines."""
    load = "as fast as 8 in flight per client allow" if not relay["offered_rate"] else f"{relay['offered_rate']:.0f}/s"
    t = Table(title=f"Direct messages to random peers, {load}, "
                    f"{report['settings']['message_body_bytes']}-byte bodies ({report['mode']} run)")  # fmt: skip
    for column in ("backend", "clients", "µs CPU/msg", "vs relay", "msgs/s", "p50 ms", "p99 ms", "server", "generator"):
        t.add_column(column, justify="left" if column == "backend" else "right")
    baselines = {"relay": " (baseline)", "redis": " (baseline, C)"}
    for p in [relay, *([report["redis"]] if "redis" in report else []), *report["throughput"]]:
        rate = "(generator-bound)" if p["generator_limited"] else f"{p['delivered_per_s']:.0f}"
        ratio = p.get("vs_relay")
        t.add_row(
            p["backend"] + baselines.get(p["backend"], ""),
            str(p["clients"]),
            f"{p['server_cpu_us_per_message']:.1f}",
            "-" if p["backend"] in baselines else ("withheld" if ratio is None else f"{ratio:.1f}x"),
            rate,
            _ms(p["latency"]["p50_ms"]),
            _ms(p["latency"]["p99_ms"]),
            f"{p['server_cpu_utilisation']:.0%}",
            f"{p['generator_cpu_utilisation']:.0%}",
        )
    console.print(t)
    console.print(f"relay: {relay['server_cpu_us_per_message']:.2f} µs/message here; "
                  f"reference {report['relay_reference_us']} µs (ratios withheld above 3.2)")  # fmt: skip


def group_table(console: Console, groups: dict[str, Any]) -> None:
    """Workload 3: µs of server CPU per delivery (a message reaching one member), by backend
    and group size, beside the relay and Redis; then what the members' acks cost."""
    t = Table(title="Group fan-out: 1 sender (8 without a receipt), N members acking once per read")
    for column in ("backend", "members", "load", "acks", "µs CPU/delivery", "vs relay", "msgs/s", "deliveries/s",
                   "p50 ms", "p99 ms", "server", "generator"):  # fmt: skip
        t.add_column(column, justify="left" if column in ("backend", "load", "acks") else "right")
    baselines = {"relay": " (baseline)", "redis": " (baseline, C)"}
    for p in groups["points"]:
        members = f"{p['members']}" + (f" ({p['refused']} refused)" if p["refused"] else "")
        rate = "(generator-bound)" if p["generator_limited"] else f"{p['messages_per_s']:.0f}"
        ratio = p.get("vs_relay")
        t.add_row(
            p["backend"] + baselines.get(p["backend"], ""),
            members,
            f"{p['offered_rate']:.0f}/s" if p["offered_rate"] else "closed loop",
            "-" if p["backend"] in baselines else "yes" if p["acks"] else "no",
            f"{p['server_cpu_us_per_delivery']:.2f}",
            "-" if ratio is None else f"{ratio:.1f}x",
            rate,
            f"{p['deliveries_per_s']:.0f}",
            _ms(p["latency"]["p50_ms"]),
            _ms(p["latency"]["p99_ms"]),
            f"{p['server_cpu_utilisation']:.0%}",
            f"{p['generator_cpu_utilisation']:.0%}",
        )
    console.print(t)
    if groups["ack_cost"]:
        a = Table(title="What the members' acks cost: closed loop with acks - without (µs of server CPU per delivery)")
        for column in ("backend", "members", "with acks", "without", "the acks", "share", "deliveries per ack"):
            a.add_column(column, justify="left" if column == "backend" else "right")
        for c in groups["ack_cost"]:
            share = "-" if c["ack_share"] is None else f"{c['ack_share']:.0%}"
            a.add_row(c["backend"], str(c["members"]), f"{c['us_per_delivery_acks']:.2f}",
                      f"{c['us_per_delivery_no_acks']:.2f}", f"{c['ack_us_per_delivery']:.2f}", share,
                      "-" if c["deliveries_per_ack"] is None else f"{c['deliveries_per_ack']:.1f}")  # fmt: skip
        console.print(a)


def mixed_table(console: Console, points: list[dict[str, Any]]) -> None:
    """Workload 7: by backend and idle connections, what a message and a wake-up cost."""
    rate = next((p["offered_rate"] for p in points if p["skipped"] is None), 0.0)
    t = Table(title=f"Active among idle: 100 clients at {rate:.0f} messages/s among N idle logged-in connections")
    for column in ("backend", "idle", "µs CPU/msg", "wake-ups/msg", "µs CPU/wake-up", "µs CPU/wait call",
                   "syscalls/msg", "p50 ms", "p99 ms", "server", "threads"):  # fmt: skip
        t.add_column(column, justify="left" if column == "backend" else "right")
    for p in points:
        if p["skipped"] is not None:
            t.add_row(p["backend"], f"{p['idle']:,}", p["skipped"], *[""] * 8)
            continue
        calls = p["syscalls_per_message"] or {}
        t.add_row(
            p["backend"], f"{p['idle']:,}", f"{p['server_cpu_us_per_message']:.0f}", _num(p["wakeups_per_message"], 2),
            _num(p["server_cpu_us_per_wakeup"], 0), _num(p["wait_cpu_us"], 1), _num(calls.get("all_but_wait_clock"), 1),
            _ms(p["latency"]["p50_ms"]), _ms(p["latency"]["p99_ms"]), f"{p['server_cpu_utilisation']:.0%}",
            str(p["server_threads"]),
        )  # fmt: skip
    console.print(t)
    measured = [p for p in points if p["skipped"] is None and p["syscalls_per_message"]]
    if not measured:
        return
    waits = ("epoll_wait", "epoll_pwait", "epoll_pwait2", "poll", "ppoll", "pselect6", "select")
    names = ("recvfrom", "sendto", "read", "write", "pwrite64", "pread64", "futex", "epoll_ctl")  # uvloop: read, write
    calls_table = Table(title="System calls per message (perf stat; wait: select/poll/epoll_wait; the --stats "
                              "wait clock's clock_gettime left out of all)")  # fmt: skip
    for column in ("backend", "idle", "wait", *names, "all"):
        calls_table.add_column(column, justify="left" if column == "backend" else "right")
    for p in measured:
        calls = p["syscalls_per_message"]
        calls_table.add_row(p["backend"], f"{p['idle']:,}", _num(sum(calls.get(n, 0.0) for n in waits), 2),
                            *[_num(calls.get(n), 2) for n in names], _num(calls["all_but_wait_clock"], 1))  # fmt: skip
    console.print(calls_table)


def mixed_plots(points: list[dict[str, Any]], mode: str, out: Path) -> list[Path]:
    """Workload 7's picture for a class: server CPU per message, CPU per wait call and p99
    against the idle connections, a line per backend (select's ends at FD_SETSIZE)."""
    import matplotlib.pyplot as plt

    measured = [p for p in points if p["skipped"] is None]
    if not measured:
        return []
    fig, (cpu, wait, lat) = plt.subplots(1, 3, figsize=(14, 4.8))
    for backend in dict.fromkeys(p["backend"] for p in measured):
        rows = sorted((p for p in measured if p["backend"] == backend), key=lambda p: p["idle"])
        xs = [max(p["idle"], 10) for p in rows]  # 0 idle drawn at 10 on the log axis
        line = cpu.plot(xs, [p["server_cpu_us_per_message"] for p in rows], marker="o", label=backend)
        colour = line[0].get_color()
        if any(p["wait_cpu_us"] is not None for p in rows):
            wait.plot([x for x, p in zip(xs, rows, strict=True) if p["wait_cpu_us"] is not None],
                      [p["wait_cpu_us"] for p in rows if p["wait_cpu_us"] is not None], marker="o", color=colour,
                      label=backend)  # fmt: skip
        lat.plot(xs, [p["latency"]["p99_ms"] for p in rows], marker="o", color=colour, label=backend)
        stopped = [p for p in points if p["backend"] == backend and p["skipped"] is not None]
        if stopped:  # where it stopped: a cross at its last point, and the reason in the legend
            why = f"{backend}: {stopped[0]['skipped']} at {stopped[0]['idle']:,}"
            cpu.plot([xs[-1]], [rows[-1]["server_cpu_us_per_message"]], marker="x", markersize=12, color=colour,
                     linestyle="none", label=why)  # fmt: skip
    for axis in (cpu, wait, lat):
        axis.set_xscale("log")
        axis.set_xlabel("idle logged-in connections (0 drawn at 10)")
    cpu.set_ylabel("server CPU µs per message")
    wait.set_ylabel("CPU µs inside one select/poll/epoll_wait")
    lat.set_ylabel("p99 latency, ms")
    cpu.set_title(f"100 clients at {measured[0]['offered_rate']:.0f} msg/s among N idle")
    wait.set_title("the wait itself (threads, uvloop: none of ours)")
    lat.set_title("latency")
    handles, labels = cpu.get_legend_handles_labels()  # below the three plots: it covers none of them
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize="small", frameon=False)
    fig.tight_layout(rect=(0, 0.14, 1, 1))
    path = out / f"active-among-idle-{mode}.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return [path]


def plots(report: dict[str, Any], out: Path) -> list[Path]:
    """CPU per message by backend, latency (p50, p99) by offered load, memory and idle CPU by
    connection count, as PNGs; [] without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    made = []
    if report["relay"] is not None:
        points = [report["relay"], *([report["redis"]] if "redis" in report else []), *report["throughput"]]
        fig, ax = plt.subplots(figsize=(7, 3.5))
        points = [p for p in points if p["clients"] == points[0]["clients"]]
        ax.bar([p["backend"] for p in points], [p["server_cpu_us_per_message"] for p in points], color="#4c72b0")
        ax.set_ylabel("server CPU µs per delivered message")
        load = f"{points[0]['offered_rate']:.0f}/s offered" if points[0]["offered_rate"] else "closed loop"
        ax.set_title(f"Direct messages, {points[0]['clients']} clients, {load} ({report['mode']} run)")
        fig.tight_layout()
        made.append(out / f"cpu-per-message-{report['mode']}.png")
        fig.savefig(made[-1], dpi=120)
        plt.close(fig)
    made += mixed_plots(report.get("active_among_idle", []), report["mode"], out)
    closed = [p for p in report["group_fanout"]["points"] if not p["offered_rate"]]
    if closed:  # workload 3: µs per delivery by backend, a bar per group size, with acks and without
        fig, ax = plt.subplots(figsize=(9, 3.8))
        backends = list(dict.fromkeys(p["backend"] for p in closed))
        series = [(size, acks) for size in dict.fromkeys(p["asked_members"] for p in closed) for acks in (True, False)]
        series = [(s, a) for s, a in series if any(p["asked_members"] == s and p["acks"] == a for p in closed)]
        width = 0.8 / len(series)
        for k, (size, acks) in enumerate(series):
            values = [next((p["server_cpu_us_per_delivery"] for p in closed if p["backend"] == b
                            and p["asked_members"] == size and p["acks"] == acks), 0.0) for b in backends]  # fmt: skip
            label = f"{size} members" + ("" if acks else ", no acks (baselines: none)")
            ax.bar([i + k * width for i in range(len(backends))], values, width, label=label)
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(backends))], backends)
        ax.set_ylabel("server CPU µs per delivery")
        ax.set_title(f"Group fan-out, 1 sender, closed loop ({report['mode']} run)")
        ax.legend(fontsize="small")
        fig.tight_layout()
        made.append(out / f"group-fanout-{report['mode']}.png")
        fig.savefig(made[-1], dpi=120)
        plt.close(fig)
    if not report["connections"]:
        return made
    if report["latency_by_load"]:
        fig, ax = plt.subplots(figsize=(9.5, 3.8))
        found = [p for p in report.get("highest_sustained", []) if p["sustained"]]
        for backend in dict.fromkeys(p["backend"] for p in report["latency_by_load"]):
            rows = [p for p in [*report["latency_by_load"], *found] if p["backend"] == backend]
            rows.sort(key=lambda p: p["offered_rate"])
            line = ax.plot([p["offered_rate"] for p in rows], [p["latency"]["p99_ms"] for p in rows], marker="o",
                           label=f"{backend} p99")  # fmt: skip
            ax.plot([p["offered_rate"] for p in rows], [p["latency"]["p50_ms"] for p in rows], linestyle="--",
                    marker=".", color=line[0].get_color(), label=f"{backend} p50")  # fmt: skip
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("offered direct messages/s")
        ax.set_ylabel("latency, ms")
        ax.legend(fontsize="small", ncol=2, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        fig.tight_layout()
        made.append(out / f"latency-by-load-{report['mode']}.png")
        fig.savefig(made[-1], dpi=120)
        plt.close(fig)
    fig, (ax, cpu) = plt.subplots(1, 2, figsize=(10, 3.5))
    for backend in dict.fromkeys(p["backend"] for p in report["connections"]):
        rows = [p for p in report["connections"] if p["backend"] == backend and p["held"]]
        ax.plot([p["held"] for p in rows], [p["rss_per_connection_bytes"] / 1024 for p in rows], marker="o",
                label=backend)  # fmt: skip
        cpu.plot([p["held"] for p in rows], [p["idle_cpu_utilisation"] * 100 for p in rows], marker="o",
                 label=backend)  # fmt: skip
    for axis in (ax, cpu):
        axis.set_xscale("log")
        axis.set_xlabel("idle logged-in connections")
    ax.set_ylabel("server RSS per connection, kB")
    cpu.set_ylabel("server CPU while idle, %")
    ax.legend()
    fig.tight_layout()
    made.append(out / f"memory-per-connection-{report['mode']}.png")
    fig.savefig(made[-1], dpi=120)
    plt.close(fig)
    return made


def _num(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"
