"""Drive ``examples/serve_llm.py`` with requests of random prompt and output lengths.

Sends ``--requests`` completions, ``--concurrency`` at a time, each from one of ``--tenants``
tenants (header ``x-tenant``), and prints a JSON summary: requests sent, completed, errors,
p50/p99 latency (s), requests/s, and how many responses carried greenmaas figures (headers, or
a streamed response's last ``greenmaas`` event). ``--record FILE`` writes one
JSON line per response (request id, tenant, status, latency, tokens, greenmaas headers).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from typing import Any


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", required=True, help="the server, e.g. http://127.0.0.1:8000")
    p.add_argument("--requests", type=int, default=100)
    p.add_argument("--concurrency", type=int, default=10)
    p.add_argument("--rate", type=float, default=0.0,
                   help="send this many requests per second whatever the answers (open loop; at most "
                        "--concurrency in flight); 0: each of --concurrency clients sends its next as soon as "
                        "it has its answer [0]")
    p.add_argument("--tenants", type=int, default=3)
    p.add_argument("--min-prompt", type=int, default=4, help="shortest prompt, bytes [4]")
    p.add_argument("--max-prompt", type=int, default=96, help="longest prompt, bytes [96]")
    p.add_argument("--min-tokens", type=int, default=1, help="fewest output tokens [1]")
    p.add_argument("--max-tokens", type=int, default=24, help="most output tokens [24]")
    p.add_argument("--stream", type=float, default=0.0, help="fraction of streamed requests [0]")
    p.add_argument("--timeout", type=float, default=60.0, help="per request, s [60]")
    p.add_argument("--record", help="write one JSON line per response to this file")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    for name in ("requests", "concurrency", "tenants"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1")
    if not (1 <= args.min_prompt <= args.max_prompt) or not (1 <= args.min_tokens <= args.max_tokens):
        p.error("--min-prompt/--max-prompt and --min-tokens/--max-tokens must be 1 <= min <= max")
    return args


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    v = sorted(values)
    k = (len(v) - 1) * q / 100.0
    lo, hi = int(k), min(int(k) + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    import httpx

    rng = random.Random(args.seed)
    plans = []
    for i in range(args.requests):
        n = rng.randint(args.min_prompt, args.max_prompt)
        prompt = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz ") for _ in range(n))
        plans.append({"i": i, "tenant": f"tenant-{rng.randrange(args.tenants)}", "prompt": prompt,
                      "max_tokens": rng.randint(args.min_tokens, args.max_tokens),
                      "stream": rng.random() < args.stream})
    todo: asyncio.Queue = asyncio.Queue()
    for p in plans:
        todo.put_nowait(p)
    results: list[dict[str, Any]] = []
    # Idle connections are dropped after 2 s: before a server's keep-alive timeout closes them.
    limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=args.concurrency,
                          keepalive_expiry=2.0)
    url = args.url.rstrip("/") + "/v1/completions"

    async def worker(client: httpx.AsyncClient) -> None:
        while True:
            try:
                p = todo.get_nowait()
            except asyncio.QueueEmpty:
                return
            await send(client, p)

    async def paced(client: httpx.AsyncClient) -> None:
        """Open loop: request i leaves at i / rate s, in flight with at most ``concurrency`` others."""
        gate = asyncio.Semaphore(args.concurrency)
        start = time.perf_counter()

        async def one(p: dict) -> None:
            async with gate:
                await send(client, p)

        tasks = []
        for k, p in enumerate(plans):
            delay = start + k / args.rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(p)))
        await asyncio.gather(*tasks)

    async def send(client: httpx.AsyncClient, p: dict) -> None:
        body = {"prompt": p["prompt"], "max_tokens": p["max_tokens"], "stream": p["stream"]}
        rec: dict[str, Any] = {"i": p["i"], "tenant": p["tenant"], "prompt_bytes": len(p["prompt"].encode()),
                               "max_tokens": p["max_tokens"], "stream": p["stream"]}
        t0 = time.perf_counter()
        try:
            if p["stream"]:
                async with client.stream("POST", url, json=body, headers={"x-tenant": p["tenant"]}) as r:
                    rec["status"], headers = r.status_code, r.headers
                    rec["tokens"], event = 0, None
                    async for line in r.aiter_lines():
                        if line.startswith("event: "):
                            event = line[7:].strip()
                        elif line.startswith("data: "):
                            if event == "greenmaas":  # the server's last word: the request's energy
                                rec["greenmaas_event"] = json.loads(line[6:])
                            elif line.startswith('data: {"token"'):
                                rec["tokens"] += 1
                        elif not line:
                            event = None
            else:
                r = await client.post(url, json=body, headers={"x-tenant": p["tenant"]})
                rec["status"], headers = r.status_code, r.headers
                if r.status_code == 200:
                    rec["tokens"] = r.json()["usage"]["completion_tokens"]
                else:
                    rec["error"] = r.text[:300]
            rec["latency_s"] = time.perf_counter() - t0
            rec["greenmaas"] = {k.lower(): v for k, v in headers.items() if k.lower().startswith("greenmaas-")}
        except Exception as exc:  # a failed request is counted, not fatal
            rec["status"], rec["error"] = None, f"{type(exc).__name__}: {exc}"
            rec["latency_s"] = time.perf_counter() - t0
        results.append(rec)

    t0 = time.perf_counter()
    async with httpx.AsyncClient(limits=limits, timeout=args.timeout) as client:
        if args.rate > 0:
            await paced(client)
        else:
            await asyncio.gather(*(worker(client) for _ in range(args.concurrency)))
    wall = time.perf_counter() - t0
    ok = [r for r in results if r.get("status") == 200]
    lat = [r["latency_s"] for r in ok]
    if args.record:
        with open(args.record, "w") as f:
            for r in sorted(results, key=lambda r: r["i"]):
                f.write(json.dumps(r) + "\n")
    return {
        "sent": len(results),
        "completed": len(ok),
        "errors": len(results) - len(ok),
        "p50_latency_s": percentile(lat, 50),
        "p99_latency_s": percentile(lat, 99),
        "requests_per_s": len(ok) / wall if wall > 0 else None,
        "wall_s": wall,
        "output_tokens": sum(r.get("tokens", 0) for r in ok),
        "with_request_id": sum(1 for r in ok if "greenmaas-request-id" in r.get("greenmaas", {})),
        "with_energy": sum(1 for r in ok if "greenmaas-energy-j" in r.get("greenmaas", {})),
        "with_final_event": sum(1 for r in ok if (r.get("greenmaas_event") or {}).get("final")),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    summary = asyncio.run(run(args))
    print(json.dumps(summary, indent=2))
    return 0 if summary["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
