"""Serving benchmark: throughput and latency with and without greenmaas, energy by batch size,
prefill vs decode, and the calibrated prefill/decode cost ratio.

Writes ``reports/serving.md``. Regenerate with::

    python examples/bench_serving.py

Two copies of ``examples/serve_llm.py`` run side by side on 127.0.0.1, one measured by greenmaas
(middleware, ServingMeter, Prometheus exporter, SQLite ledger) and one plain (``--no-greenmaas``).
``examples/load_llm.py``'s client drives them in turn, alternating which goes first, at a
concurrency above the engine's batch so both run saturated: throughput and latency are compared
within the same run, round by round. The measured server's ledger then gives energy per output
token by batch size, prefill vs decode, and the fitted cost ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import load_llm  # noqa: E402  (the load generator, run in this process)

#: Batch-size bins of the energy-per-token table.
BINS = ((1, 1), (2, 4), (5, 8), (9, 16), (17, 32), (33, 64), (65, 10**9))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5, help="alternating rounds [5]")
    ap.add_argument("--requests", type=int, default=300, help="requests per server per round [300]")
    ap.add_argument("--concurrency", type=int, default=96, help="concurrent requests [96]")
    ap.add_argument("--max-batch", type=int, default=64, help="the engine's largest batch [64]")
    ap.add_argument("--rate-fraction", type=float, default=0.6,
                    help="the fixed-rate rounds send at this fraction of the slower server's saturation "
                         "throughput [0.6]")
    ap.add_argument("--out", default=str(HERE.parent / "reports" / "serving.md"))
    return ap.parse_args(argv)


def _spread(values: list[float]) -> float:
    return (max(values) - min(values)) / statistics.median(values) if values else float("nan")


def _fixed_verdict(fixed: dict[str, list[dict]]) -> str:
    """What the fixed-rate rounds say about the CPU greenmaas adds per request."""
    cpu = {k: [x["server_cpu_ms_per_request"] for x in v] for k, v in fixed.items()}
    med = {k: statistics.median(v) for k, v in cpu.items()}
    added = med["greenmaas"] / med["plain"] - 1
    paired = [g / p - 1 for p, g in zip(cpu["plain"], cpu["greenmaas"])]
    noise = max(_spread(v) for v in cpu.values())
    text = (f"Difference in server CPU per request: {added:+.1%} (paired per round: "
            + ", ".join(f"{x:+.1%}" for x in paired) + f"; rounds of one server spread by up to {noise:.0%}). ")
    if abs(added) <= noise:
        return text + "Within the rounds' own spread: not resolved on this run."
    if added > 0.02:
        return text + "Against the ≤ 2% target (in CPU, the cost at equal load): not met."
    return text + "Against the ≤ 2% target (in CPU, the cost at equal load): met."


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(args: argparse.Namespace, ledger: Path, measured: bool) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [sys.executable, str(HERE / "serve_llm.py"), "--host", "127.0.0.1", "--port", str(port),
           "--ledger", str(ledger), "--max-batch", str(args.max_batch)]
    if not measured:
        cmd.append("--no-greenmaas")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            httpx.post(url + "/v1/completions", json={"prompt": "warm", "max_tokens": 2}, timeout=5)
            return proc, url
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"server did not start: {proc.stderr.read() if proc.stderr else ''}")


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


def cpu_s(pid: int) -> float:
    """CPU time (user + system, s) the process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def drive(url: str, proc: subprocess.Popen, args: argparse.Namespace, seed: int, rate: float = 0.0) -> dict:
    la = load_llm.parse_args(["--url", url, "--requests", str(args.requests), "--concurrency",
                              str(args.concurrency), "--tenants", "4", "--min-tokens", "2", "--seed", str(seed),
                              "--rate", str(rate)])
    c0 = cpu_s(proc.pid)
    res = asyncio.run(load_llm.run(la))
    res["server_cpu_ms_per_request"] = 1e3 * (cpu_s(proc.pid) - c0) / max(res["completed"], 1)
    return res


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from greenmaas.analysis import opened, read_ledger
    from greenmaas.ledger import query
    from greenmaas.report import summary
    from greenmaas.serving import calibrate_ledger

    tmp = Path(tempfile.mkdtemp(prefix="greenmaas-bench-serving-"))
    os.environ.setdefault("GREENMAAS_TENANT_KEY", "bench")
    db = tmp / "measured.db"
    measured, murl = start(args, db, True)
    plain, purl = start(args, tmp / "plain.db", False)
    rounds: dict[str, list[dict]] = {"plain": [], "greenmaas": []}
    fixed: dict[str, list[dict]] = {"plain": [], "greenmaas": []}
    rate = 0.0
    try:
        for r in range(args.rounds):
            order = [("plain", purl, plain), ("greenmaas", murl, measured)]
            if r % 2:
                order.reverse()
            for name, url, proc in order:
                res = drive(url, proc, args, seed=r)
                if res["errors"]:
                    raise SystemExit(f"{name} round {r}: {res['errors']} errors")
                rounds[name].append(res)
                print(f"round {r + 1} {name:9s} {res['requests_per_s']:7.1f} req/s  "
                      f"p50 {res['p50_latency_s'] * 1e3:6.1f} ms  p99 {res['p99_latency_s'] * 1e3:6.1f} ms  "
                      f"server CPU {res['server_cpu_ms_per_request']:.2f} ms/request",
                      flush=True)
        # The same load on both: requests sent at a fixed rate below either server's saturation, so
        # both form alike batches and their CPU per request compares.
        rate = args.rate_fraction * min(statistics.median(x["requests_per_s"] for x in rounds[k]) for k in rounds)
        for r in range(args.rounds):
            order = [("plain", purl, plain), ("greenmaas", murl, measured)]
            if r % 2:
                order.reverse()
            for name, url, proc in order:
                res = drive(url, proc, args, seed=100 + r, rate=rate)
                if res["errors"]:
                    raise SystemExit(f"{name} fixed-rate round {r}: {res['errors']} errors")
                fixed[name].append(res)
                print(f"fixed rate {rate:.0f}/s round {r + 1} {name:9s} {res['requests_per_s']:7.1f} req/s  "
                      f"p50 {res['p50_latency_s'] * 1e3:6.1f} ms  p99 {res['p99_latency_s'] * 1e3:6.1f} ms  "
                      f"server CPU {res['server_cpu_ms_per_request']:.2f} ms/request", flush=True)
    finally:
        stop(plain)
        stop(measured)

    def med(name: str, key: str) -> float:
        return statistics.median(x[key] for x in rounds[name])

    rps_p, rps_g = med("plain", "requests_per_s"), med("greenmaas", "requests_per_s")
    p50_p, p50_g = med("plain", "p50_latency_s"), med("greenmaas", "p50_latency_s")
    p99_p, p99_g = med("plain", "p99_latency_s"), med("greenmaas", "p99_latency_s")
    paired = [g["requests_per_s"] / p["requests_per_s"] - 1 for p, g in zip(rounds["plain"], rounds["greenmaas"])]
    cpu_p, cpu_g = med("plain", "server_cpu_ms_per_request"), med("greenmaas", "server_cpu_ms_per_request")
    spread = max(statistics.pstdev(x["requests_per_s"] for x in rounds[k]) / med(k, "requests_per_s")
                 for k in rounds)
    cpu_added = cpu_g / cpu_p - 1
    # Per-request CPU varies with the batches a round happened to form (a busier round batches
    # more): a difference inside that spread says nothing either way.
    cpu_spread = max(statistics.pstdev(x["server_cpu_ms_per_request"] for x in rounds[k])
                     / med(k, "server_cpu_ms_per_request") for k in rounds)
    # What greenmaas adds shows only as more CPU per request than the rounds' own spread; less
    # (a measured server that batched more at saturation) says nothing about its cost.
    resolved = cpu_added > cpu_spread

    with opened(str(db)) as ledger, ledger.read() as conn:
        iterations = query.serving_iterations(conn, "iteration")
        run_id = query.latest_run(conn)
        methods = sorted({d.get("method") for d in query.run_devices(conn, run_id)} - {None}) if run_id else []
    by_bin: dict[tuple[int, int], list[tuple[float, int]]] = {b: [] for b in BINS}
    for energy_j, attrs in iterations:
        if energy_j is None or not attrs or attrs.get("prefill_tokens") or not attrs.get("decode_tokens"):
            continue  # decode-only passes: the cost of a generated token without prompts mixed in
        n = int(attrs["requests"])
        for b in BINS:
            if b[0] <= n <= b[1]:
                by_bin[b].append((float(energy_j), int(attrs["decode_tokens"])))
    phases = {r["group"]: r for r in summary(str(db), by="phase", accounting=False).rows}
    stored = read_ledger(str(db))
    kinds = stored["kind"]
    n_rows, n_requests = len(kinds), int((kinds == "request").sum())
    n_spans = int(stored["count"].fillna(1).sum())  # spans attributed: a share row stands for its passes
    try:
        cal = calibrate_ledger(str(db))
    except Exception as exc:  # reported, not fatal
        cal, cal_error = None, str(exc)

    import torch

    lines = [
        "# Serving: throughput, latency and energy per request",
        "",
        "Regenerate with `python examples/bench_serving.py` (about four minutes).",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, torch "
        f"{torch.__version__}; {datetime.now(timezone.utc):%Y-%m-%d}. Energy method: {', '.join(methods) or '?'}"
        + (" (no GPU or RAPL here: CPU TDP × utilisation, ±50%; the split and the books are what this shows, "
           "not the watts)" if methods == ["estimate"] else "") + ".",
        "",
        "Server: `examples/serve_llm.py` (a 2-layer, 64-wide byte-level transformer with a KV cache, greedy "
        f"decoding, continuous batching up to {args.max_batch} requests a pass, FastAPI + uvicorn, 1 torch thread). "
        f"Load: `examples/load_llm.py`, {args.requests} requests per server per round at concurrency "
        f"{args.concurrency}, prompts 4-96 bytes, 2-24 output tokens, 4 tenants.",
        "",
        "## 1. Throughput and latency at saturation, plain vs measured",
        "",
        f"Both servers run at once; {args.rounds} rounds drive one then the other (order alternating). Measured = "
        "ASGI middleware (request span, `Greenmaas-Request-Id` header, no wait for final figures), ServingMeter "
        "(one batch per forward pass, shares named prefill/decode), Prometheus exporter, SQLite ledger, devices "
        "read at each source's own period. Medians over rounds.",
        "",
        "| | requests/s | p50 latency (ms) | p99 latency (ms) | server CPU (ms/request) | rounds (requests/s) |",
        "|---|---:|---:|---:|---:|---|",
        f"| plain | {rps_p:.1f} | {p50_p * 1e3:.1f} | {p99_p * 1e3:.1f} | {cpu_p:.2f} | "
        + ", ".join(f"{x['requests_per_s']:.0f}" for x in rounds["plain"]) + " |",
        f"| greenmaas | {rps_g:.1f} | {p50_g * 1e3:.1f} | {p99_g * 1e3:.1f} | {cpu_g:.2f} | "
        + ", ".join(f"{x['requests_per_s']:.0f}" for x in rounds["greenmaas"]) + " |",
        f"| difference | {100 * (rps_g / rps_p - 1):+.1f}% | {1e3 * (p50_g - p50_p):+.2f} | {1e3 * (p99_g - p99_p):+.2f} | "
        f"{cpu_g - cpu_p:+.2f} ({100 * (cpu_g / cpu_p - 1):+.1f}%) | paired per round: "
        + ", ".join(f"{100 * x:+.1f}%" for x in paired) + " |",
        "",
        "Server CPU is the server process's own CPU time (all its threads: engine, event loop, greenmaas's "
        "sampler, attribution and ledger writer) per completed request, the steadier figure on a shared "
        "machine; throughput and latency also carry the client's and other processes' load. "
        f"Targets: ≤ 2% lower throughput, ≤ 1 ms p99 added. Throughput varied by up to "
        f"{100 * spread:.0f}% between rounds of one server (standard deviation over the median) on this run, "
        + ("so a 2% difference cannot be resolved here from throughput."
           if spread > 0.02 else
           ("met." if rps_g >= 0.98 * rps_p and p99_g - p99_p <= 1e-3 else "not met.")),
        "",
        f"What the measured server recorded: {n_spans / max(n_requests, 1):.1f} spans attributed per request "
        "(the request, one share per forward pass it took part in, its part of the passes' batch spans) and "
        f"{n_rows / max(n_requests, 1):.1f} ledger rows written per request (a request's shares are one row per "
        "phase). "
        + (f"At saturation the measured server spent {100 * -cpu_added:.0f}% less CPU per request than the plain "
           "one: the servers batched differently (a round that batched more spent less per request), so these "
           "rounds do not show what greenmaas adds; the fixed-rate rounds below do."
           if cpu_added < -cpu_spread else
           f"Server CPU per request varied by up to {100 * cpu_spread:.0f}% between rounds of one server on this "
           "run (a round that batched more spent less per request), more than the difference between the servers "
           f"({100 * cpu_added:+.0f}%): this run does not resolve what greenmaas adds, in throughput or in CPU."
           if not resolved else
           "Everything greenmaas adds (middleware, metrics, and per span: opening and closing it, attributing "
           "it; per row: pricing and writing it to SQLite, on background threads) comes to about "
           f"{1e3 * (cpu_g - cpu_p) / max(n_spans / max(n_requests, 1), 1):.0f} µs of CPU per span attributed. "
           f"This toy model spends only {cpu_p:.1f} ms of CPU on a whole request (HTTP included), so greenmaas "
           f"adds {100 * cpu_added:.0f}% to it; against a real model's forward passes (milliseconds each, on a "
           "GPU) the same per-span cost is a small fraction. "
           + ("On this CPU-bound server the ≤ 2% throughput target is not met: the cost per span would have "
              f"to fall about {cpu_added / 0.02:.0f}-fold." if cpu_added > 0.02 else
              "The CPU it adds is within the 2% target.")),
        "",
        "### At a fixed rate",
        "",
        f"The same servers, {args.rounds} more alternating rounds of {args.requests} requests sent at "
        f"{rate:.0f} requests/s ({100 * args.rate_fraction:.0f}% of the slower server's median throughput above) "
        "whatever the answers, so both see the same load and form alike batches. Medians over rounds; spread: "
        "(max − min) / median of the rounds.",
        "",
        "| | server CPU (ms/request) | spread | p50 latency (ms) | p99 latency (ms) |",
        "|---|---:|---:|---:|---:|",
        *(f"| {k} | {statistics.median(x['server_cpu_ms_per_request'] for x in fixed[k]):.2f} | "
          f"{100 * _spread([x['server_cpu_ms_per_request'] for x in fixed[k]]):.0f}% | "
          f"{statistics.median(x['p50_latency_s'] for x in fixed[k]) * 1e3:.1f} | "
          f"{statistics.median(x['p99_latency_s'] for x in fixed[k]) * 1e3:.1f} |" for k in fixed),
        "",
        _fixed_verdict(fixed),
        "",
        "## 2. Energy per output token by batch size",
        "",
        "Decode-only forward passes of the measured server (no prompt mixed in), grouped by how many requests "
        "the pass served: the pass's energy over the tokens it generated.",
        "",
        "| requests in the pass | passes | tokens | energy (J) | J per output token |",
        "|---|---:|---:|---:|---:|",
    ]
    for b, items in by_bin.items():
        if not items:
            continue
        j = sum(e for e, _ in items)
        t = sum(n for _, n in items)
        label = str(b[0]) if b[0] == b[1] else f"{b[0]}-{b[1]}" if b[1] < 10**9 else f"{b[0]}+"
        lines.append(f"| {label} | {len(items)} | {t} | {j:.2f} | {j / t:.4f} |")
    total_phase = sum(phases[p]["energy_j"] or 0.0 for p in ("prefill", "decode") if p in phases)
    lines += [
        "",
        "## 3. Prefill vs decode",
        "",
        "`greenmaas report --by phase` on the measured server's ledger (every round, warm-up included): shares "
        "named prefill and decode, with the default rule (tokens processed, prefill/decode cost ratio 1.0).",
        "",
        "| phase | shares | energy (J) | share of request energy |",
        "|---|---:|---:|---:|",
    ]
    for p in ("prefill", "decode"):
        if p in phases:
            e = phases[p]["energy_j"] or 0.0
            lines.append(f"| {p} | {phases[p]['spans']} | {e:.2f} | {100 * e / total_phase:.1f}% |")
    if "(idle)" in phases:
        lines.append(f"| (idle, no request) | | {phases['(idle)']['energy_j']:.2f} | |")
    lines += ["", "## 4. Calibrated prefill/decode cost ratio", ""]
    if cal is not None:
        se = f" ± {cal.prefill_cost_se:.3f}" if cal.prefill_cost_se is not None else ""
        lines += [
            "`greenmaas.serving.calibrate_ledger(ledger)`: non-negative least squares of each pass's energy on "
            "its prefill and decode tokens plus a per-pass base, over every measured pass.",
            "",
            "| | value |",
            "|---|---:|",
            f"| prefill/decode cost ratio | {cal.prefill_cost:.3f}{se} |",
            f"| J per prefill token | {cal.prefill_token_j:.5f} |",
            f"| J per decode token | {cal.decode_token_j:.5f} |",
            f"| J per pass (base) | {cal.per_iteration_j:.5f} |",
            f"| R² | {cal.r2:.3f} |",
            f"| residual (J per pass, relative) | {cal.rmse_j:.4f} ({100 * cal.relative_rmse:.1f}%) |",
            f"| passes (with prefill, with decode) | {cal.iterations} ({cal.prefill_iterations}, "
            f"{cal.decode_iterations}) |",
            "",
            *(["The fit is poor (R² < 0.5): the energy of single passes is not resolved well enough here to "
               "fix the ratio (an estimate source models power from CPU utilisation read every 500 ms, and a pass "
               "lasts milliseconds), so the default ratio 1.0 stays in use; the figure is shown, not trusted.",
               ""] if cal.r2 < 0.5 else []),
            "With an estimate source the energy of a pass follows its duration (CPU TDP × utilisation), so the "
            "ratio says what a prompt token costs in time on this CPU relative to a generated one; on a GPU with "
            "an energy counter it is measured energy. Pass it back as `ServingMeter(prefill_cost=...)` to divide "
            "passes by it.",
        ]
    else:
        lines.append(f"Not calibrated: {cal_error}")
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
