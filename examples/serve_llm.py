"""A small language model served over HTTP with continuous batching, measured per request.

A decoder-only transformer written with PyTorch (random weights, nothing downloaded; a KV cache
per request; greedy decoding over a byte vocabulary) behind FastAPI and uvicorn. One engine
thread runs forward passes back to back; between passes it admits waiting requests, so every
pass mixes the prompts of new requests (prefill) with the next token of running ones (decode).
greenmaas measures it through :class:`greenmaas.ServingMeter` (each pass one iteration, divided
among its requests by tokens processed) and the ASGI middleware (a request span per HTTP request,
``Greenmaas-Request-Id`` on every response).

Endpoints::

    POST /v1/completions      {"prompt": "...", "max_tokens": 16, "stream": false}
    GET  /metrics             Prometheus metrics (energy, carbon, cost by model and tenant, ...)
    GET  /greenmaas/requests/<id>   a request's figures (final or provisional)

Run ``python examples/serve_llm.py --host 127.0.0.1 --port 8000 --ledger serve.db``, drive it
with ``examples/load_llm.py``, then ``greenmaas report --ledger serve.db --by request``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import math
import queue
import signal
import sys
import threading
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import BaseModel

import greenmaas
from greenmaas.ledger.store import resolve_target
from greenmaas.integrations.asgi import GreenmaasMiddleware
from greenmaas.integrations.prometheus import PrometheusExporter
from greenmaas.serving import ServedRequest, ServingMeter

MODEL = "tiny-transformer"


class Completion(BaseModel):
    """The body of ``POST /v1/completions``."""

    prompt: str
    max_tokens: int = 16
    stream: bool = False


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--ledger", default=None, help="ledger file or SQLAlchemy URL [$GREENMAAS_LEDGER, else greenmaas.db]")
    p.add_argument("--no-greenmaas", action="store_true", help="serve without measuring (for comparisons)")
    p.add_argument("--max-batch", type=int, default=64, help="most requests in one forward pass [64]")
    p.add_argument("--prefill-chunk", type=int, default=256, help="most prompt tokens one pass takes in [256]")
    p.add_argument("--max-prompt", type=int, default=192, help="prompt bytes kept (the rest is cut) [192]")
    p.add_argument("--max-tokens", type=int, default=64, help="largest max_tokens accepted [64]")
    p.add_argument("--dim", type=int, default=64, help="model width [64]")
    p.add_argument("--layers", type=int, default=2, help="transformer layers [2]")
    p.add_argument("--heads", type=int, default=4, help="attention heads [4]")
    p.add_argument("--prefill-cost", type=float, default=None, help="prefill/decode cost ratio [1.0]")
    p.add_argument("--final-wait-ms", type=float, default=0.0,
                   help="hold a complete response up to this long for its final energy headers [0]")
    p.add_argument("--period-ms", type=float, default=None,
                   help="device read period (default: each source's own; 20 ms NVML)")
    p.add_argument("--tenant-header", default="x-tenant")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads [1]")
    p.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1 ... [cpu]")
    args = p.parse_args(argv)
    args.ledger = str(resolve_target(args.ledger))  # as the CLI: --ledger, $GREENMAAS_LEDGER, greenmaas.db
    return args


# ---------------------------------------------------------------------------------------- model


class TinyTransformer(torch.nn.Module):
    """A pre-norm decoder-only transformer over bytes. :meth:`step` runs one forward pass over
    the new tokens of several sequences, each with its own KV cache."""

    def __init__(self, vocab: int = 256, dim: int = 64, layers: int = 2, heads: int = 4, context: int = 512):
        super().__init__()
        self.heads, self.dim, self.context = heads, dim, context
        self.device = torch.device("cpu")
        self.embed = torch.nn.Embedding(vocab, dim)
        self.pos = torch.nn.Embedding(context, dim)
        self.blocks = torch.nn.ModuleList()
        for _ in range(layers):
            self.blocks.append(torch.nn.ModuleDict({
                "ln1": torch.nn.LayerNorm(dim), "qkv": torch.nn.Linear(dim, 3 * dim), "proj": torch.nn.Linear(dim, dim),
                "ln2": torch.nn.LayerNorm(dim), "up": torch.nn.Linear(dim, 4 * dim), "down": torch.nn.Linear(4 * dim, dim),
            }))
        self.ln = torch.nn.LayerNorm(dim)
        self.head = torch.nn.Linear(dim, vocab, bias=False)

    @torch.no_grad()
    def step(self, seqs: list[tuple[list[int], list[list[torch.Tensor]]]]) -> list[int]:
        """One pass: ``seqs`` holds, per sequence, its new tokens and its KV cache (per layer
        ``[k, v]``, each ``heads × length × head_dim``, grown in place). Returns each sequence's
        next token (greedy)."""
        lengths = [len(toks) for toks, _ in seqs]
        starts = [cache[0][0].shape[1] if cache else 0 for _, cache in seqs]
        dev = self.device
        tokens = torch.tensor([t for toks, _ in seqs for t in toks], dtype=torch.long, device=dev)
        positions = torch.cat([torch.arange(s, s + n, device=dev) for s, n in zip(starts, lengths)])
        positions.clamp_(max=self.context - 1)
        x = self.embed(tokens) + self.pos(positions)  # all sequences' new tokens, one matrix
        hd = self.dim // self.heads
        for li, b in enumerate(self.blocks):
            qkv = b["qkv"](b["ln1"](x))
            outs, at = [], 0
            for (toks, cache), n, s in zip(seqs, lengths, starts):
                q, k, v = qkv[at:at + n].view(n, 3, self.heads, hd).permute(1, 2, 0, 3)
                at += n
                layer = cache[li] if li < len(cache) else None
                if layer:
                    k = torch.cat([layer[0], k], dim=1)
                    v = torch.cat([layer[1], v], dim=1)
                if li < len(cache):
                    cache[li] = [k, v]
                else:
                    cache.append([k, v])
                mask = None
                if n > 1:  # prompt tokens see the cache and the tokens before them
                    mask = torch.ones(n, s + n, dtype=torch.bool, device=dev).tril(diagonal=s)
                a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
                outs.append(a.permute(1, 0, 2).reshape(n, self.dim))
            x = x + b["proj"](torch.cat(outs))
            x = x + b["down"](F.gelu(b["up"](b["ln2"](x))))
        last = torch.tensor([sum(lengths[: i + 1]) - 1 for i in range(len(lengths))], device=dev)
        # .tolist() waits for the device: the pass (and its iteration span) ends when its work is done.
        return self.head(self.ln(x[last])).argmax(-1).tolist()


# ---------------------------------------------------------------------------------------- engine


@dataclass
class Job:
    """One request inside the engine."""

    prompt: list[int]
    max_tokens: int
    loop: asyncio.AbstractEventLoop
    out: asyncio.Queue  # tokens as they come, then None
    served: ServedRequest | None = None
    cache: list = field(default_factory=list)
    fed: int = 0  # prompt tokens processed
    generated: list[int] = field(default_factory=list)


class Engine:
    """Continuous batching on one thread: each pass takes the next prompt chunk of new requests
    and one token of running ones; new requests are admitted between passes."""

    def __init__(self, model: TinyTransformer, serving: ServingMeter | None, max_batch: int, prefill_chunk: int):
        self.model, self.serving = model, serving
        self.max_batch, self.prefill_chunk = max_batch, prefill_chunk
        self.waiting: queue.Queue[Job | None] = queue.Queue()
        self.running: list[Job] = []
        self.passes = 0
        self.batch_sizes: dict[int, int] = {}
        self._thread = threading.Thread(target=self._loop, name="engine", daemon=True)
        self._stop = False

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop = True
        self.waiting.put(None)
        self._thread.join(10)

    def submit(self, job: Job) -> None:
        self.waiting.put(job)

    def _admit(self, block: bool) -> None:
        while len(self.running) < self.max_batch:
            try:
                job = self.waiting.get(block=block and not self.running, timeout=0.5)
            except queue.Empty:
                return
            if job is None:
                return
            self.running.append(job)
            block = False

    def _loop(self) -> None:
        while not self._stop:
            self._admit(block=True)
            if not self.running:
                continue
            try:
                self._pass()
            except Exception as exc:  # a broken pass fails its requests, not the server
                for job in self.running:
                    if job.served is not None and self.serving is not None:
                        self.serving.finish(job.served, error=True)
                    job.loop.call_soon_threadsafe(job.out.put_nowait, exc)
                self.running = []

    def _pass(self) -> None:
        budget = self.prefill_chunk
        seqs, jobs, work = [], [], []
        for job in self.running:
            measured = self.serving is not None and job.served is not None
            if job.fed < len(job.prompt):
                if budget <= 0:
                    continue  # this pass's prompt budget is spent: its prompt waits a pass
                n = min(len(job.prompt) - job.fed, budget)
                budget -= n
                seqs.append((job.prompt[job.fed:job.fed + n], job.cache))
                if measured:
                    work.append(self.serving.prefill(job.served, n))  # type: ignore[union-attr]
            else:
                seqs.append(([job.generated[-1]], job.cache))
                if measured:
                    work.append(self.serving.decode(job.served))  # type: ignore[union-attr]
            jobs.append(job)
        if self.serving is not None:
            with self.serving.iteration(work):
                nxt = self.model.step(seqs)
        else:
            nxt = self.model.step(seqs)
        self.passes += 1
        self.batch_sizes[len(jobs)] = self.batch_sizes.get(len(jobs), 0) + 1
        done = []
        for job, (toks, _), tok in zip(jobs, seqs, nxt):
            if job.fed < len(job.prompt):
                job.fed += len(toks)
                if job.fed < len(job.prompt):
                    continue  # a chunk of the prompt: no token yet
            job.generated.append(tok)
            job.loop.call_soon_threadsafe(job.out.put_nowait, tok)
            if len(job.generated) >= job.max_tokens:
                done.append(job)
        for job in done:
            self.running.remove(job)
            if self.serving is not None and job.served is not None:
                self.serving.finish(job.served, output_tokens=len(job.generated))
            job.loop.call_soon_threadsafe(job.out.put_nowait, None)


# ---------------------------------------------------------------------------------------- app


def build_app(args: argparse.Namespace) -> tuple[Any, Engine, Any]:
    """The ASGI app (FastAPI wrapped in the greenmaas middleware), the engine and the meter."""
    from fastapi import FastAPI, HTTPException
    from fastapi.responses import JSONResponse, Response, StreamingResponse

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    model = TinyTransformer(dim=args.dim, layers=args.layers, heads=args.heads,
                            context=args.max_prompt + args.max_tokens + 1).eval()
    model.device = torch.device(args.device)
    model.to(model.device)
    meter = serving = None
    if not args.no_greenmaas:
        period = args.period_ms / 1000.0 if args.period_ms else None
        meter = greenmaas.Meter(ledger=args.ledger, period_s=period, handle_signals=False)
        serving = ServingMeter(meter, model=MODEL, prefill_cost=args.prefill_cost)
    engine = Engine(model, serving, args.max_batch, args.prefill_chunk)

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        if meter is not None:
            meter.start()
        engine.start()
        try:
            yield
        finally:
            engine.stop()

    api = FastAPI(lifespan=lifespan)

    @api.post("/v1/completions")
    async def completions(body: Completion):
        if not 1 <= body.max_tokens <= args.max_tokens:
            raise HTTPException(422, f"max_tokens must be between 1 and {args.max_tokens}")
        ids = list(body.prompt.encode("utf-8"))[: args.max_prompt] or [0]
        loop = asyncio.get_running_loop()
        job = Job(ids, body.max_tokens, loop, asyncio.Queue())
        span = greenmaas.current_span()
        if serving is not None and span is not None:
            job.served = serving.admit(span=span, prompt_tokens=len(ids))
        engine.submit(job)
        rid = span.request_id if span is not None else None

        async def tokens():
            while True:
                tok = await job.out.get()
                if tok is None:
                    return
                if isinstance(tok, Exception):
                    raise tok
                yield tok

        usage = {"prompt_tokens": len(ids)}
        if body.stream:
            async def events():
                async for tok in tokens():
                    yield f"data: {{\"token\": {tok}}}\n\n"
                yield "data: [DONE]\n\n"

            return StreamingResponse(events(), media_type="text/event-stream")
        out = [t async for t in tokens()]
        usage["completion_tokens"] = len(out)
        text = bytes(out).decode("latin-1")
        return JSONResponse({"id": rid, "model": MODEL, "text": text, "usage": usage})

    app: Any = api
    if meter is not None:
        mw = GreenmaasMiddleware(api, meter=meter, model=MODEL, serving=serving, tenant_header=args.tenant_header,
                                 final_wait_s=args.final_wait_ms / 1000.0, exclude=("/metrics", "/greenmaas/"))
        exporter = PrometheusExporter(meter).watch(mw)

        @api.get("/metrics")
        async def metrics():
            from prometheus_client import CONTENT_TYPE_LATEST

            return Response(exporter.render(), media_type=CONTENT_TYPE_LATEST)

        api.mount("/greenmaas/requests", mw.endpoint())
        app = mw
    return app, engine, meter


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import uvicorn

    app, engine, meter = build_app(args)
    # What a server does once its model is loaded: move everything loaded so far (torch, the
    # web stack, the weights' Python objects) out of the collector's reach. Python's full
    # collections stop every thread for as long as they scan every live object (a tenth of a
    # second with torch imported, on this example's machines); a server that keeps objects a
    # little while per request (greenmaas does, until a request's energy settles) triggers them
    # every few seconds, and its slowest responses wait for them.
    gc.collect()
    gc.freeze()
    # Idle connections are kept well past a client's own keep-alive (httpx: 5 s), so a client
    # never sends on a connection the server is closing at that very moment.
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level="warning", access_log=False,
                            lifespan="on", timeout_keep_alive=30)
    server = uvicorn.Server(config)
    # uvicorn shuts down gracefully on SIGINT/SIGTERM, then raises the signal again: end here
    # quietly, so the meter below records the last requests and ends its run.
    signal.signal(signal.SIGTERM, _exit_quietly)
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        if meter is not None:
            meter.stop()
    return 0


def _exit_quietly(signum: int, frame: Any) -> None:
    raise SystemExit(0)


if __name__ == "__main__":
    sys.exit(main())
