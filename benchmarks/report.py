"""RESULTS.md and results/summary.png, generated from a run's pytest-benchmark JSON.

    python benchmarks/report.py [--out FILE.md] [RUN.json]
        (default: the newest results/bench-*.json, into RESULTS.md; with --out, into
        FILE.md and its chart beside it as FILE.png: a partial run, `make bench-tls`)

Refuses results from a dirty tree unless BENCH_ALLOW_DIRTY=1."""

from __future__ import annotations

import math
import sys
from pathlib import Path

from bench_config import RESULTS_DIR
from bench_headline import headline_lines
from bench_summary import (
    METRICS,
    OURS,
    Case,
    haproxy_splice_note,
    latest,
    load,
    paired,
    ratio,
    refuse_dirty,
    stamp,
    verdict,
)
from targets import rows as target_rows
from tls_report import section as tls_section

REPORT = RESULTS_DIR.parent / "RESULTS.md"
CHART = RESULTS_DIR / "summary.png"

METHOD = """\
## Method

- Every figure is the median of the rounds with its [min-max] spread; the contenders
  take turns (each round runs every contender once, in the same order), so a drift in
  the machine's speed spreads over all of them. Each contender in each case is a
  benchmark of pytest-benchmark (`case[contender]` in the JSON): its rounds are the real
  loads, its timing the wall time of each (fixed bytes for bulk, fixed seconds
  otherwise); the figures below are from its `extra_info`.
- Peers: HAProxy 2.6 (splice forced, `splice-auto`, no splice), nginx `stream`, asyncio
  and uvloop proxies. **Best peer**: on each metric, the peer with the best median
  (never a chosen one). A difference whose spreads overlap is written **tie**; next to
  it, **paired rounds**: each round of fastproxy against the same round of that peer
  (they ran in the same turn), how many it won and the range of the per-round ratios,
  which shows a consistent difference ("better in 5 of 5 rounds, 1.04-1.09×") that the
  min-max test calls a tie.
- CPU per GB or per request, two ways: *proxy*: utime+stime of the proxy's processes
  (/proc/PID/stat of the one started and of every process below it, a master's workers
  included; children reaped during the run through cutime+cstime); *shared*: all busy
  time of the CPU the proxy shares with the server (/proc/stat), which also counts the
  kernel work the proxy causes there (the robust one on loopback, where receive work is
  charged to whoever runs); for bulk also *all CPUs*: busy time of both CPUs (client and
  server included, the same for everyone), which also sees kernel work that moves off
  the shared CPU (the sockmap relay's redirects run in the sender's softirq and in
  kernel worker threads). /proc counts CPU time in clock ticks (10 ms): a round that
  cost less than one tick has no CPU figure (left out, and said so in its raw output),
  not a figure of 0.
- Bulk Gb/s and CPU per GB count the bytes the iperf3 server received: with `-n` the
  client ends the test once it has written them all, and what is still in the path's
  buffers then is not counted (up to tens of MB per stream: a few % of 2 GB, most of a
  smoke run's 20 MB). A round in which the server counted no byte is an error, not a
  figure.
- `fastproxy-sockmap` (`Relay: sockmap`, in runs up to e885a6a): the kernel relaying.
  From 941ce88 the mode was refused unless FASTPROXY_UNSAFE_SOCKMAP=1 (the benchmarks
  set it), because this kernel's sk_skb redirect sometimes sends a segment twice (`make
  sockmap-duplicates`); then it was taken out (benchmarks/sockmap/README.md). Its
  figures show what the kernel path costs, not a mode to run.
- Layout: load generators on CPU 0; servers and the proxy on CPU 1; one proxy thread
  (fastproxy --workers 1, HAProxy nbthread 1, nginx worker_processes 1, one event loop),
  except in the workers case. All in a network namespace of its own (`make bench`).
- Load generators: wrk (`-t1`: the client has one CPU in this layout) for churn,
  keep-alive and the one-connection latency; `benchmarks/openloop.c` for the fixed
  offered rates and, as a closed loop (one request in flight per connection), for the
  100- and 8,000-connection cases: every connection is open before its clock starts and
  a warm-up is left out of the counted window (wrk counts from its first connect, so the
  connect storm of 8,000 fell in its window). Each round records its load generator's
  CPU share (its own CPU time over the run's length); where it nears 1 the client, not
  the contender, may set the figure, and the list above says so.
- Many ports (ports-startup, ports-spread, reload-adding-ports), the case fastproxy's
  bpf steering is for: one socket (sk_lookup) against 10,000 listening sockets
  (fastproxy `Steering: ports`, HAProxy's bind on the range, nginx `stream` with a
  `listen` per port), each started fresh per round on ports 10000-19999.
  Memory: the process's RSS, and the kernel's live slab objects it added (listening
  sockets, files, epoll entries: machine-wide, so other work blurs it a little).
  `benchmarks/portspread.c` opens every request's connection (`Connection: close`) on
  the next port in turn, so all ports carry traffic ("ports answered" counts them) and
  counts every error by kind (refused, reset, short or non-2xx answer). The reload adds
  1,000 ports under that load: fastproxy `POST /reload`; HAProxy's seamless reload (a
  new process taking the listeners over the stats socket, `-x`, and `-sf`); nginx HUP to
  its master (a master-less nginx cannot open new ports). Each process has the
  machine's open-file limit (20,000): 11,000 listeners and the case's connections fit
  in every contender.
- The HTTP server behind every contender is nginx; it serves the size sweep's files
  with sendfile and without `tcp_nopush`: with it, nginx on Linux turns Nagle on and a
  64 KiB answer now and then stalled 40 ms on the reader's delayed ACK, direct as well
  (`results/profiles/response_64k_stall.md`).
- TLS termination (`tls-*`): `benchmarks/tlsload.c` (OpenSSL, closed loop, 16
  connections in flight) makes full handshakes (no session offered) or resumed ones
  (each connection offers the ticket its slot got last, used once, as TLS 1.3 clients
  do; counting starts once every slot holds one; a round under 99 % resumed is an
  error), timed from connect() to the end of the
  handshake, then closes with close_notify; or downloads 1 MiB answers on one
  keep-alive connection (bulk). It does the handshake's own crypto (key exchange,
  checking the server's signature) but verifies no certificate chain; the harness
  checks once, verified, that every contender serves the same certificate file. wrk
  over https for the keep-alive rate. What each handshake negotiated is recorded, and
  a case fails when the contenders differ.
- Peers' limits follow the case: HAProxy's `maxconn` (global and per frontend) and
  nginx's `worker_connections` are set above the most connections the case holds.
- *Added µs over direct* (http-latency, openloop): a proxy's p50 or p99 minus the
  direct connection's in the same round, one value per round. In the open-loop cases
  each runs at its share of its own maximum, direct at a share of its (higher) one; on
  a noisy machine a round can come out below 0.
- Raw outputs (iperf3 summaries, wrk and openloop outputs) of the run:
  `results/raw/<case>.jsonl.gz`."""


def case_table(case: Case) -> list[str]:
    metrics = case.metrics()
    key = [m for m in case.key_metrics() if m in case.figures.get("direct", {})]
    head = ["contender"] + [METRICS[m][0] + (" ↑" if METRICS[m][1] else " ↓") for m in metrics]
    head += [f"{METRICS[m][0]} × direct" for m in key]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for name, values in case.figures.items():
        cells = [name]
        cells += [values[m].show(METRICS[m][2]) if m in values else "-" for m in metrics]
        cells += [ratio(case, name, m, "direct") for m in key]
        lines.append("| " + " | ".join(cells) + " |")
    info = ", ".join(f"{k}: {v}" for k, v in case.info.items())
    return [f"### {case.name}", "", *([f"({info})", ""] if info else []), *lines, ""]


def headline(cases: list[Case]) -> list[str]:
    """Each fastproxy contender against the best peer on each key metric, and direct."""
    head = ["case", "metric", "fastproxy", "median [min-max]", "× direct", "best peer", "verdict"]
    head.append("paired rounds")
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for case in cases:
        for metric in case.key_metrics():
            best = case.best_peer(metric)
            if best is None:
                continue
            digits = METRICS[metric][2]
            theirs = f"{best} {case.figures[best][metric].show(digits)}"
            for name, values in case.figures.items():
                if not name.startswith(OURS) or metric not in values:
                    continue
                cells = [case.name, METRICS[metric][0], name, values[metric].show(digits)]
                cells += [ratio(case, name, metric, "direct"), theirs]
                cells.append(verdict(case, name, metric, best))
                cells.append(paired(case, name, metric, best))
                lines.append("| " + " | ".join(cells) + " |")
    return lines


def losses(cases: list[Case]) -> list[str]:
    found = []
    for case in cases:
        for metric in case.key_metrics():
            best = case.best_peer(metric)
            for name in case.figures:
                if best and name.startswith(OURS) and metric in case.figures[name]:
                    judged = verdict(case, name, metric, best)
                    if judged.endswith("worse"):
                        found.append(
                            f"- {case.name}, {METRICS[metric][0]}: {name} {judged} than {best}"
                            f" ({paired(case, name, metric, best)})"
                        )
    return found or ["- nowhere outside the spreads"]


UNTIMED = ("idle-memory", "ports-startup", "cluster-push")  # no load run for a time


def durations(cases: list[Case]) -> list[str]:
    """How long each case's load really ran per round: from what the run recorded in its
    JSON (never written by hand), cases with the same run grouped."""
    groups: dict[str, list[str]] = {}
    for case in cases:
        info = case.info
        if "seconds" in info:
            text = f"{info.get('load', 'load')}, {info['seconds']:g} s per round"
            if info.get("warmup_seconds"):
                text += f", counted after a {info['warmup_seconds']:g} s warm-up"
        elif info.get("load") == "iperf3" or case.name.startswith("bulk-"):
            text = f"iperf3, a fixed {info.get('bytes', '?')} per round (timed by the transfer)"
        elif "load" in info and case.name not in UNTIMED:
            text = info["load"]  # a load around an event, as long as it lasts
        elif case.name in UNTIMED:
            text = "no timed load (start-ups, config pushes, connections held)"
        else:
            text = "not recorded in this run's JSON (a run from before it recorded them)"
        groups.setdefault(text, []).append(case.name)
    return [f"- {', '.join(names)}: {text}" for text, names in groups.items()]


# A load generator busy this share of its CPU (or more) may be what sets the figure.
CLIENT_BOUND = 0.9


def client_bound(cases: list[Case]) -> list[str]:
    """The contenders whose load generator was busy at least CLIENT_BOUND of its CPU in
    some round: there the client may be the bottleneck, not the contender."""
    found = []
    for case in cases:
        for name, values in case.figures.items():
            share = values.get("client_cpu_share")
            if share is not None and share.high >= CLIENT_BOUND:
                found.append(
                    f"- {case.name}, {name}: the load generator used {share.show(2)} of its"
                    " CPU: the figure may be the client's limit, not the contender's"
                )
    return found or [
        f"- nowhere: every load generator stayed below {CLIENT_BOUND:.0%} of its CPU in every round"
    ]


def chart(cases: list[Case], subtitle: str, path: Path = CHART) -> bool:
    """Each fastproxy mode's advantage over the best peer per key metric (log scale,
    above 1 is better; ties drawn hatched)."""
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [(c, m) for c in cases for m in c.key_metrics() if c.best_peer(m)]
    ours = sorted({n for c in cases for n in c.figures if n.startswith(OURS)})
    if not rows or not ours:
        return False
    fig, ax = plt.subplots(figsize=(max(10, len(rows) * 0.45), 6), dpi=100)
    labelled: set[str] = set()
    for x, (case, metric) in enumerate(rows):
        best = case.best_peer(metric)
        theirs = case.figures[best][metric]  # type: ignore[index]
        present = [n for n in ours if metric in case.figures.get(n, {})]
        width = 0.8 / max(len(present), 1)
        for i, name in enumerate(present):
            mine = case.figures[name][metric]
            if not mine.median or not theirs.median:
                continue
            adv = mine.median / theirs.median
            adv = adv if METRICS[metric][1] else 1 / adv
            tie = mine.overlaps(theirs)
            ax.bar(
                x - 0.4 + width * (i + 0.5),
                adv - 1,
                width,
                bottom=1,
                color=f"C{ours.index(name) % 10}",
                hatch="//" if tie else None,
                alpha=0.5 if tie else 1,
                label=None if name in labelled else name,
            )
            labelled.add(name)
    ax.set_yscale("log", base=2)
    ax.axhline(1.0, color="black", linewidth=1)
    ax.set_xticks(
        range(len(rows)), [f"{c.name}\n{METRICS[m][0]}" for c, m in rows], fontsize=7, rotation=90
    )
    ax.set_ylabel("relative to the best peer on that metric (above 1: better)")
    ax.set_title(f"fastproxy against the best peer, per metric (hatched: tie)\n{subtitle}")
    ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}×"))
    ax.set_ylim(2 ** math.floor(math.log2(min(ax.get_ylim()[0], 0.5))), None)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return True


def main(argv: list[str]) -> None:
    report, picture, link = REPORT, CHART, "results/summary.png"
    if argv[:1] == ["--out"] and len(argv) > 1:
        report = Path(argv[1])
        picture = report.with_suffix(".png")
        link = picture.name
        argv = argv[2:]
    path = Path(argv[0]) if argv else latest(RESULTS_DIR)
    data, cases = load(path)
    refuse_dirty(data)
    run = data.get("run", {})
    drawn = chart(cases, stamp(data), picture)
    sections = [
        "# fastproxy benchmarks",
        "",
        f"Generated by `benchmarks/report.py` from `{path.name}`: {stamp(data)}.",
        *[f"- {k}: {v}" for k, v in run.items()],
        "",
        "## What an operator pays",
        "",
        *headline_lines(data, cases),
        "",
        "## Against the best peer on each metric",
        "",
        f"![summary]({link})" if drawn else "(no chart: matplotlib missing)",
        "",
        *headline(cases),
        "",
        "Where fastproxy loses (outside the spreads):",
        "",
        *losses(cases),
        "",
        "HAProxy's splice modes:",
        "",
        *(haproxy_splice_note(cases) or ["(no 1-stream bulk figures of HAProxy in this run)"]),
        "",
        "Where the load generator may be the bottleneck (its CPU share, wrk's and"
        " openloop's own rusage over the run):",
        "",
        *client_bound(cases),
        "",
        "## Issue 12's targets",
        "",
        *target_rows(cases),
        "",
        *tls_section(cases),
        "## Durations",
        "",
        "What each case's load ran per round, as the run recorded it:",
        "",
        *durations(cases),
        "",
        METHOD,
        "",
        "## Every case",
        "",
    ]
    for case in cases:
        sections += case_table(case)
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text("\n".join(sections) + "\n")
    print(f"written {report}" + (f" and {picture}" if drawn else ""))


if __name__ == "__main__":
    main(sys.argv[1:])
