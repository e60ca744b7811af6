"""The TLS termination section of RESULTS.md (issue 22; issue 25's TLS targets), from a
run's figures: fastproxy against HAProxy `bind ... ssl` and nginx `stream` with `ssl`
per key type, the targets met or missed, what the handshakes negotiated, how many
resumed, and how busy the load generator was."""

from __future__ import annotations

from bench_summary import METRICS, Case, paired, verdict

OURS = ("fastproxy-splice", "fastproxy-copy")  # the default relay mode, and copy
PEERS = ("haproxy", "nginx-stream")
# (case kind, metric, target as text, the factor fastproxy must reach against the best
# peer, turned so that above 1 is better): issue 25's "TLS: handshakes/s ≥ 1.0× and
# bulk CPU per GB ≤ 1.0×"; the other key figures are shown without a target.
TARGETS = {
    ("full", "handshakes_per_s"): "≥ 1.0× best peer",
    ("resumed", "handshakes_per_s"): "≥ 1.0× best peer",
    ("bulk", "proxy_cpu_ms_per_gb"): "≤ 1.0× best peer",
}
KINDS = ("full", "resumed", "bulk", "keepalive")
CLIENT_BOUND = 0.9


def _ours(case: Case, metric: str) -> str | None:
    """fastproxy's best mode on `metric` in `case` (the best median)."""
    mine = [n for n in OURS if metric in case.figures.get(n, {})]
    if not mine:
        return None
    pick = max if METRICS[metric][1] else min
    return pick(mine, key=lambda n: case.figures[n][metric].median)


def _advantage(case: Case, ours: str, metric: str, best: str) -> float | None:
    mine, theirs = case.figures[ours][metric].median, case.figures[best][metric].median
    if not mine or not theirs:
        return None
    return mine / theirs if METRICS[metric][1] else theirs / mine


def section(cases: list[Case]) -> list[str]:
    tls = {c.name: c for c in cases if c.name.startswith("tls-")}
    if not tls:
        return []
    head = ["key", "case", "metric", *OURS, *PEERS, "fastproxy's best mode vs best peer"]
    head += ["paired rounds", "target"]
    lines = [
        "## TLS termination (issue 22)",
        "",
        "fastproxy (`Workers: 1`, `Tls` on the app; its default relay mode, splice, where"
        " a terminated connection copies through `PipeSize` buffers without kTLS, and copy"
        " mode, the same buffers) against HAProxy (`nbthread 1`, `bind ..."
        " ssl crt`) and nginx `stream` (`worker_processes 1`, `listen ... ssl`), the same"
        " certificate files per key type, each relaying plaintext to the same nginx HTTP"
        " backend; tickets on in all three (nginx with its shared session cache, HAProxy"
        " with `tune.ssl.cachesize`), versions, ciphers and groups at their (OpenSSL's)"
        " defaults. Handshakes and bulk by `benchmarks/tlsload.c` (closed loop, several"
        " connections in flight; it does the handshake's own crypto but verifies no chain),"
        " keep-alive by wrk over https. The proxy's CPU per handshake is what an operator"
        " pays whoever the bottleneck was; Gb/s on loopback is bounded by the CPUs the"
        " proxy shares with the client and the backend.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + " --- |" * len(head),
    ]
    notes = []
    for key in ("ecdsa", "rsa"):
        for kind in KINDS:
            case = tls.get(f"tls-{kind}-{key}")
            if case is None or not any(n in case.figures for n in OURS):
                continue
            for metric in case.key_metrics():
                lines.append(_row(case, key, kind, metric))
            notes += _notes(case)
    return [*lines, "", *notes, ""] if notes else [*lines, ""]


def _row(case: Case, key: str, kind: str, metric: str) -> str:
    digits = METRICS[metric][2]
    cells = [key, kind, METRICS[metric][0]]
    for name in (*OURS, *PEERS):
        value = case.figures.get(name, {}).get(metric)
        cells.append(value.show(digits) if value else "-")
    best, ours = case.best_peer(metric), _ours(case, metric)
    if best is None or ours is None:
        return "| " + " | ".join(cells + ["-", "-", "-"]) + " |"
    judged = verdict(case, ours, metric, best)
    cells.append(f"{ours}: {judged} {'with' if judged == 'tie' else 'than'} {best}")
    cells.append(paired(case, ours, metric, best))
    target = TARGETS.get((kind, metric))
    if target is None:
        cells.append("-")
    else:
        advantage = _advantage(case, ours, metric, best)
        met = advantage is not None and advantage >= 1.0
        shown = "no ratio" if advantage is None else f"{advantage:.2f}×"
        cells.append(f"{target}: {'met' if met else 'missed'} ({shown})")
    return "| " + " | ".join(cells) + " |"


def _notes(case: Case) -> list[str]:
    """What the case's handshakes negotiated, how many resumed, and whether its load
    generator may have been the bottleneck."""
    out = []
    if case.info.get("negotiated"):
        out.append(f"- {case.name}: negotiated {case.info['negotiated']}")
    for name, values in case.figures.items():
        share = values.get("resumed_share")
        if share is not None and case.name.startswith("tls-resumed-"):
            out.append(f"- {case.name}, {name}: resumed share {share.show(3)} of the handshakes")
        client = values.get("client_cpu_share")
        if client is not None and client.high >= CLIENT_BOUND:
            out.append(
                f"- {case.name}, {name}: the load generator used {client.show(2)} of its CPU:"
                " the rate may be the client's limit; the proxy's CPU per unit is not"
            )
    return out
