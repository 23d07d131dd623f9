"""Per-request energy for a serving engine's loop: continuous batching, prefill and decode.

A serving engine runs one forward pass (an *iteration*) after another; each pass serves many
requests at different stages: some process (a chunk of) their prompt, *prefill*, others generate
their next token, *decode*. Requests join and leave between passes. This module records each
iteration with the requests it served and the work each did in it, and divides the iteration's
measured energy among them::

    serving = greenmaas.ServingMeter(meter, model="llama-8b")
    req = serving.admit("req-1", prompt_tokens=812, tenant="acme")      # or span=<open request span>
    ...
    with serving.iteration([serving.prefill(req, 512),                   # one forward pass
                            serving.decode(other, context=97)]):
        model.forward(...)
    ...
    serving.finish(req)                                                  # after its last token
    req.energy()   # RequestEnergy: prefill_j, decode_j, energy_j, ttft_s, carbon_g, cost, final

What it is built on: each iteration is one :meth:`greenmaas.Meter.batch` (name ``iteration``,
kind ``batch``) whose members are ``share`` spans linked to the request spans, named
``prefill`` or ``decode`` after the work the request did in that pass. A share's energy is the
iteration's energy times its weight over the iteration's summed weights; a request's energy is
the sum of its shares. So the books close as everywhere: per device, requests + idle = what the
device consumed, exactly. The request span itself takes nothing while it waits in a queue (a
request span with shares is a container; attribution waits at an open request span that has no
share yet, see :mod:`greenmaas.attribution.structure`). A request span that never gets a share
(a request refused before the engine saw it) is an ordinary span: it takes its part of the
device while it is open.

The rule
--------
Default (:class:`TokenRule`): a request's weight in an iteration is the tokens it processed there,
prefill tokens counted ``prefill_cost`` times (default :data:`DEFAULT_PREFILL_COST` = 1.0: in
one forward pass every token goes through the same weights, so a token is a token; attention
over a long context is the part that differs, and a fitted ratio takes it in on average). Pass
``prefill_cost=`` to change the ratio, or ``rule=`` any callable ``rule(work) -> weights``
(one non-negative number per :class:`Work`) for another rule. The ratio can be *calibrated*
from measured iterations: :func:`calibrate` fits ``E = c + a·prefill_tokens + b·decode_tokens``
to the iterations' energy by least squares (non-negative) and returns ``a / b`` with the fit's
R², residual and standard error; :func:`calibrate_ledger` does so offline from a ledger.

What the ledger keeps, per request (no schema change): the request span (``kind='request'``)
with ``tokens_in`` = prompt tokens, ``tokens_out`` = output tokens and ``attrs`` ``ttft_s``
(time to first token: from the request span's start to the end of the pass that finished its
prompt), ``iterations``; its shares (``kind='share'``, name ``prefill`` or ``decode``, ``attrs``
``tokens``) hold its prefill and decode energy, one row per phase whose ``count`` is the passes it
stands for (:class:`greenmaas.aggregate.ShareRows`; a row per pass, with its ``context``, under
``Meter(rollup=False)``); each iteration's batch span
carries ``attrs`` ``prefill_tokens``, ``decode_tokens``, ``requests``, ``context_tokens`` and the
rule, which is what :func:`calibrate_ledger` reads. ``greenmaas report --by request`` sums them
per request; ``--by phase`` shows prefill and decode as rows of their own.

An engine's scheduler, mapped (vLLM v1)
---------------------------------------
An adapter is a thin layer: per scheduler step, one :meth:`ServingMeter.iteration` around the
model runner's ``execute_model(scheduler_output)``. vLLM's ``SchedulerOutput``
(``vllm/v1/core/sched/output.py``) maps as follows:

* ``scheduled_new_reqs``: list of ``NewRequestData`` (``req_id``, ``prompt_token_ids``,
  ``num_computed_tokens``): requests scheduled for the first time. ``admit`` each (its
  ``prompt_tokens`` = ``len(prompt_token_ids)``); its work this step is
  ``prefill(req, num_scheduled_tokens[req_id], context=num_computed_tokens)`` (a prefix-cache
  hit shows as ``num_computed_tokens`` > 0: those tokens are not processed again).
* ``scheduled_cached_reqs``: a ``CachedRequestData`` of parallel lists (``req_ids``,
  ``num_computed_tokens``, ``num_output_tokens``, ``resumed_req_ids``): requests scheduled
  before. While ``num_computed_tokens[i]`` < the prompt's length the request is still in
  (chunked) prefill, else it decodes: ``decode(req, num_scheduled_tokens[req_id],
  context=num_computed_tokens[i])`` (speculative decoding schedules ``1 +
  len(scheduled_spec_decode_tokens[req_id])`` tokens). A request in ``resumed_req_ids`` was
  preempted and is recomputed: its tokens are prefill work again.
* ``num_scheduled_tokens``: ``req_id -> tokens`` processed in this step: the ``tokens`` of each
  :class:`Work`; ``total_num_scheduled_tokens`` is their sum (the rule's denominator with
  ``prefill_cost=1``).
* ``finished_req_ids``: requests finished since the previous step: ``finish`` each, with the
  output token count the engine reports (``num_output_tokens``), which replaces the count this
  module keeps (a rejected speculative token was scheduled but not kept).

SGLang's ``ScheduleBatch`` (``forward_mode`` EXTEND/DECODE/MIXED, ``extend_lens``,
``prefix_lens``) and TGI's prefill/decode batches map the same way: per request, its phase, the
tokens it adds to the KV cache and the context it attends to.

Threads: an engine loop usually runs in a thread or task of its own; open the iteration there,
in a context where no request span is current (a task created at start-up, not from a
request's handler). ``RequestEnergy`` reads may wait up to the meter's ``result_wait_s``: call
:meth:`ServedRequest.energy` from a thread (``asyncio.to_thread``) in async code.
"""

from __future__ import annotations

import contextvars
import math
import collections
import threading
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

from .errors import ConfigError
from .spans import Span

if TYPE_CHECKING:
    import os

    from .batch import Batch
    from .ledger import Ledger
    from .meter import Meter

__all__ = [
    "PREFILL",
    "DECODE",
    "DEFAULT_PREFILL_COST",
    "Work",
    "TokenRule",
    "ServingMeter",
    "ServedRequest",
    "Iteration",
    "RequestEnergy",
    "Calibration",
    "calibrate",
    "calibrate_ledger",
]

PREFILL = "prefill"
DECODE = "decode"
PHASES = (PREFILL, DECODE)
#: Cost of one prefill token relative to one decode token in the default rule.
DEFAULT_PREFILL_COST = 1.0
#: Name of each iteration's batch span.
ITERATION = "iteration"


@dataclass(frozen=True)
class Work:
    """What one request did in one iteration: its ``phase`` (``prefill`` or ``decode``), the
    ``tokens`` it processed (prompt tokens, or tokens decoded: 1, more with speculative
    decoding) and its ``context``: tokens already in its KV cache before this pass."""

    request: "ServedRequest"
    phase: str
    tokens: int
    context: int = 0


class TokenRule:
    """Weight = tokens processed, prefill tokens counted ``prefill_cost`` times."""

    def __init__(self, prefill_cost: float = DEFAULT_PREFILL_COST) -> None:
        if not (isinstance(prefill_cost, (int, float)) and math.isfinite(prefill_cost) and prefill_cost >= 0):
            raise ConfigError(f"prefill_cost must be a finite non-negative number, not {prefill_cost!r}")
        self.prefill_cost = float(prefill_cost)

    def __call__(self, work: Sequence[Work]) -> list[float]:
        return [w.tokens * (self.prefill_cost if w.phase == PREFILL else 1.0) for w in work]

    def describe(self) -> dict[str, Any]:
        return {"rule": "tokens", "prefill_cost": self.prefill_cost}

    def __repr__(self) -> str:
        return f"TokenRule(prefill_cost={self.prefill_cost:g})"


@dataclass
class RequestEnergy:
    """A request's figures. Joules; ``ttft_s`` seconds (None before its prompt was processed).

    ``energy_j`` is the request's attributed energy (= ``prefill_j + decode_j`` when all of it
    came through iterations); ``final`` False while some of it has not settled (an energy
    counter reveals energy ~100 ms later), when the figures are a lower bound; ``carbon_g``,
    ``cost`` and ``currency`` exist once final, with accounting configured."""

    request_id: str | None
    prompt_tokens: int | None
    output_tokens: int
    prefill_j: float
    decode_j: float
    energy_j: float
    final: bool
    ttft_s: float | None = None
    uncertainty_j: float | None = None
    carbon_g: float | None = None
    cost: float | None = None
    currency: str | None = None
    method: str | None = None

    @property
    def j_per_output_token(self) -> float | None:
        return self.energy_j / self.output_tokens if self.output_tokens else None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["j_per_output_token"] = self.j_per_output_token
        return d


class ServedRequest:
    """One request as the engine sees it: its span, its progress and its energy by phase.

    Made by :meth:`ServingMeter.admit`; the engine reads ``prompt_tokens``, ``prefilled``
    (prompt tokens processed so far), ``output_tokens`` and ``first_token_at`` (monotonic s).
    ``passes`` counts the forward passes it took part in; ``phase_j`` holds the energy of its
    shares of them whose figures are final, by phase (J, NaN where a share was dropped). The
    shares themselves are not kept: a server keeps thousands of recent requests, and holding a
    span and a record per pass of each made the interpreter's full garbage collections, which
    stop every thread, take a tenth of a second."""

    def __init__(self, serving: "ServingMeter", span: Span, prompt_tokens: int,
                 context: contextvars.Context | None = None) -> None:
        self.serving = serving
        self.span = span
        self.prompt_tokens = prompt_tokens
        self.prefilled = 0
        self.output_tokens = 0
        self.first_token_at: float | None = None
        self.finished = False
        self._context = context  # where the span was opened, when admit opened it
        self.passes = 0
        self.phase_j: dict[str, float] = {PREFILL: 0.0, DECODE: 0.0}

    @property
    def request_id(self) -> str | None:
        return self.span.request_id

    @property
    def ttft_s(self) -> float | None:
        if self.first_token_at is None or self.span.start is None:
            return None
        return self.first_token_at - self.span.start

    def energy(self) -> RequestEnergy:
        """The request's figures once its span has closed (see :class:`RequestEnergy`). May wait
        up to the meter's ``result_wait_s`` for them to settle: not on an event loop's thread."""
        r = self.span.result
        final = r.final
        # Shares end before their request, so once the request is final every share's energy
        # is in (the meter hands final shares over before it marks their request final); until
        # then the phases are what is final so far, a lower bound.
        phase = dict(self.phase_j)
        return RequestEnergy(
            request_id=self.request_id,
            prompt_tokens=self.prompt_tokens,
            output_tokens=self.output_tokens,
            prefill_j=phase[PREFILL],
            decode_j=phase[DECODE],
            energy_j=r.energy_j,
            final=final,
            ttft_s=self.ttft_s,
            uncertainty_j=r.uncertainty_j,
            carbon_g=r.carbon_g,
            cost=r.cost,
            currency=r.currency,
            method=r.method,
        )

    def __repr__(self) -> str:
        return (f"ServedRequest({self.request_id!r}, prompt={self.prompt_tokens}, prefilled={self.prefilled}, "
                f"out={self.output_tokens})")


class Iteration:
    """One forward pass of the engine over ``work``; a context manager (see
    :meth:`ServingMeter.iteration`). ``batch`` is the underlying :class:`~greenmaas.batch.Batch`."""

    def __init__(self, serving: "ServingMeter", work: Sequence[Work]) -> None:
        seen: set[int] = set()
        for w in work:
            if not isinstance(w, Work):
                raise ConfigError(f"iteration work must be Work items (serving.prefill/decode), not {w!r}")
            if w.phase not in PHASES:
                raise ConfigError(f"work phase must be 'prefill' or 'decode', not {w.phase!r}")
            if not (isinstance(w.tokens, int) and w.tokens >= 0) or not (isinstance(w.context, int) and w.context >= 0):
                raise ConfigError(f"work of request {w.request.request_id!r}: tokens and context must be "
                                  f"non-negative integers, not {w.tokens!r} and {w.context!r}")
            if id(w.request) in seen:
                raise ConfigError(f"request {w.request.request_id!r} appears twice in one iteration")
            if w.request.finished:
                raise ConfigError(f"request {w.request.request_id!r} was finished; it cannot be served again")
            seen.add(id(w.request))
        self.serving = serving
        self.work = list(work)
        weights = [float(x) for x in serving.rule(self.work)]
        if len(weights) != len(self.work) or not all(math.isfinite(x) and x >= 0 for x in weights):
            raise ConfigError(f"the rule {serving.rule!r} must give one finite non-negative weight per request")
        if self.work and sum(weights) <= 0:
            weights = [1.0] * len(self.work)  # no tokens anywhere: share equally rather than drop the pass
        self.weights = weights
        prefill_tokens = sum(w.tokens for w in self.work if w.phase == PREFILL)
        decode_tokens = sum(w.tokens for w in self.work if w.phase == DECODE)
        attrs = {
            "prefill_tokens": prefill_tokens,
            "decode_tokens": decode_tokens,
            "requests": len(self.work),
            "context_tokens": sum(w.context for w in self.work),
            **serving.rule_attrs,
        }
        self.batch: Batch = serving.meter.batch(
            [w.request.span for w in self.work], weights=weights, name=serving.name, model=serving.model,
            attrs=attrs,
        )
        for m, w in zip(self.batch.members, self.work):
            # A share is named after the work it paid for; its tokens stay on the request (a
            # token count here would be counted again by per-token reports).
            m.name = w.phase
            m.tokens_in = m.tokens_out = m.items = None
            m.attrs = {"tokens": w.tokens, "context": w.context}

    def __enter__(self) -> "Iteration":
        self.batch.__enter__()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            # Before the shares close: from then on the meter may finalise them at any moment.
            self.serving._expect(self)
        self.batch.__exit__(exc_type, exc, tb)
        if exc_type is None:
            self.serving._served(self)

    async def __aenter__(self) -> "Iteration":
        return self.__enter__()

    async def __aexit__(self, *exc) -> None:
        self.__exit__(*exc)

    @property
    def span(self) -> Span:
        """The iteration's batch span (its ``result`` is the pass's energy)."""
        return self.batch.span


class ServingMeter:
    """Iteration-level attribution for a serving engine on ``meter`` (see the module doc).

    ``model``: tagged on iterations and the requests this opens. ``prefill_cost``: the default
    rule's prefill/decode cost ratio; ``rule``: another rule (``rule(work) -> weights``), not
    with ``prefill_cost``. ``name``: the iteration spans' name. ``keep``: how many recent
    iterations :attr:`recent` keeps for :meth:`calibrate`; ``keep_requests``: how many requests
    :meth:`served_request` finds.
    """

    def __init__(
        self,
        meter: "Meter",
        *,
        model: str | None = None,
        prefill_cost: float | None = None,
        rule: Callable[[Sequence[Work]], Sequence[float]] | None = None,
        name: str = ITERATION,
        keep: int = 2048,
        keep_requests: int = 10_000,
    ) -> None:
        if rule is not None and prefill_cost is not None:
            raise ConfigError("give either rule= or prefill_cost=, not both")
        self.meter = meter
        self.model = model
        self.rule = rule if rule is not None else TokenRule(DEFAULT_PREFILL_COST if prefill_cost is None else prefill_cost)
        describe = getattr(self.rule, "describe", None)
        self.rule_attrs = describe() if callable(describe) else {"rule": getattr(self.rule, "__name__", repr(self.rule))}
        self.name = name
        self.keep = keep
        self.recent: list[tuple[Span, int, int]] = []  # (iteration span, prefill tokens, decode tokens)
        self.iterations = 0
        self._lock = threading.Lock()
        # The last requests admitted, by span, for whoever holds only the span (the ASGI
        # middleware's figures endpoint); bounded.
        self._by_span: collections.OrderedDict[Span, ServedRequest] = collections.OrderedDict()
        self.keep_requests = keep_requests
        # Shares served and not yet final, by id() of their span (alive until final: the meter's
        # attributor holds them): the request and phase their energy goes to.
        self._shares: dict[int, tuple[ServedRequest, str]] = {}
        meter.on_final(self._finalised)

    # ------------------------------------------------------------------ requests

    def admit(
        self,
        request_id: str | None = None,
        *,
        prompt_tokens: int,
        span: Span | None = None,
        tenant: str | None = None,
        **tags: Any,
    ) -> ServedRequest:
        """A request entering the engine with ``prompt_tokens`` to process.

        ``span``: the request's open span (e.g. the ASGI middleware's, :func:`greenmaas.current_span`
        in its handler), which the caller closes; without it a request span is opened here
        (``request_id`` required) and closed by :meth:`finish`.
        """
        if not (isinstance(prompt_tokens, int) and prompt_tokens >= 0):
            raise ConfigError(f"prompt_tokens must be a non-negative integer, not {prompt_tokens!r}")
        ctx = None
        if span is None:
            if request_id is None:
                raise ConfigError("admit needs a request_id or an open request span")
            span = self.meter.request(str(request_id), tenant=tenant, model=self.model, **tags)
            # Opened and closed in a context of its own: it stays open across iterations without
            # becoming the current span of whichever thread admitted it.
            ctx = contextvars.Context()
            ctx.run(span.__enter__)
        else:
            if span.kind != "request":
                raise ConfigError(f"span {span.name!r} is a {span.kind!r} span, not a request span")
            if span.start is None or span.end is not None:
                raise ConfigError(f"request span {span.name!r} must be open when admitted")
            if span.model is None and self.model is not None:
                span.model = self.model
        span.tokens_in = prompt_tokens
        served = ServedRequest(self, span, prompt_tokens, ctx)
        with self._lock:
            self._by_span[span] = served
            while len(self._by_span) > self.keep_requests:
                self._by_span.popitem(last=False)
        return served

    def served_request(self, span: Span) -> ServedRequest | None:
        """The :class:`ServedRequest` admitted with ``span`` (one of the last ``keep_requests``)."""
        with self._lock:
            return self._by_span.get(span)

    def prefill(self, request: ServedRequest, tokens: int | None = None, *, context: int | None = None) -> Work:
        """Prefill work: ``tokens`` prompt tokens (default: the rest of the prompt) after
        ``context`` already cached (default: what was prefilled so far)."""
        if tokens is None:
            tokens = request.prompt_tokens - request.prefilled
        return Work(request, PREFILL, tokens, request.prefilled if context is None else context)

    def decode(self, request: ServedRequest, tokens: int = 1, *, context: int | None = None) -> Work:
        """Decode work: ``tokens`` generated (1; more with speculative decoding) attending to
        ``context`` tokens (default: prompt plus output so far)."""
        ctx = request.prefilled + request.output_tokens if context is None else context
        return Work(request, DECODE, tokens, ctx)

    def iteration(self, work: Iterable[Work]) -> Iteration:
        """One forward pass over ``work``: ``with serving.iteration([...]): model(...)``."""
        return Iteration(self, list(work))

    def finish(self, request: ServedRequest, *, output_tokens: int | None = None, error: bool = False) -> None:
        """The request is done: record its output tokens (the count kept here unless given)
        and time to first token on its span, and close the span if :meth:`admit` opened it."""
        if request.finished:
            return
        request.finished = True
        if output_tokens is not None:
            request.output_tokens = int(output_tokens)
        span = request.span
        span.tokens_out = request.output_tokens
        attrs = dict(span.attrs)
        attrs["iterations"] = request.passes
        if request.ttft_s is not None:
            attrs["ttft_s"] = request.ttft_s
        span.attrs = attrs
        if request._context is not None and span.end is None:
            request._context.run(span.__exit__, RuntimeError if error else None, None, None)

    # ------------------------------------------------------------------ bookkeeping

    def _expect(self, it: Iteration) -> None:
        """Note where the energy of ``it``'s shares goes once final (see :meth:`_finalised`)."""
        pending = self._shares
        for w, share in zip(it.work, it.batch.members):
            if share.dropped:  # never measured: the phase's energy is unknown
                w.request.phase_j[w.phase] = math.nan
            else:
                pending[id(share)] = (w.request, w.phase)

    def _served(self, it: Iteration) -> None:
        end = it.batch.span.end
        for w, share in zip(it.work, it.batch.members):
            req = w.request
            req.passes += 1
            if w.phase == PREFILL:
                # Tokens found in a prefix cache count as processed (context past what this
                # request prefilled itself): the pass that reaches the prompt's end yields a token.
                req.prefilled = max(req.prefilled + w.tokens, w.context + w.tokens)
                if req.first_token_at is None and req.prefilled >= req.prompt_tokens:
                    req.first_token_at = share.end if share.end is not None else end
                    req.output_tokens += 1  # the pass that finishes the prompt yields the first token
            else:
                req.output_tokens += w.tokens
        p = sum(w.tokens for w in it.work if w.phase == PREFILL)
        d = sum(w.tokens for w in it.work if w.phase == DECODE)
        with self._lock:
            self.iterations += 1
            self.recent.append((it.batch.span, p, d))
            if len(self.recent) > self.keep:
                del self.recent[: len(self.recent) - self.keep]

    def _finalised(self, spans: list[Span], records: list[Any]) -> None:
        """The meter finalised ``spans`` (with their ``records``): add each share's energy to
        its request's phase (on the meter's flush thread, before their figures read as final)."""
        pending = self._shares
        if not pending:
            return
        for span, record in zip(spans, records):
            if span.kind != "share":
                continue
            got = pending.pop(id(span), None)
            if got is None:
                continue
            req, phase = got
            req.phase_j[phase] += record.energy_j  # what span.result.energy_j reads once final

    def calibrate(self) -> "Calibration":
        """:func:`calibrate` over the recent iterations whose energy is final (reading their
        results may wait; not on an event loop's thread)."""
        with self._lock:
            recent = list(self.recent)
        rows = []
        for span, p, d in recent:
            r = span.result
            if r.final:
                rows.append((r.energy_j, p, d))
        return calibrate(rows)


# ---------------------------------------------------------------------------- calibration


@dataclass
class Calibration:
    """A fitted prefill/decode cost ratio: ``E = per_iteration_j + prefill_token_j·P +
    decode_token_j·D`` over ``iterations`` measured passes.

    ``prefill_cost`` = ``prefill_token_j / decode_token_j`` (what :class:`TokenRule` takes),
    ``prefill_cost_se`` its standard error (delta method; None where the fit pinned a
    coefficient to 0); ``r2`` the share of the iterations' energy variance the fit explains,
    ``rmse_j`` its residual (J per iteration), ``relative_rmse`` that over the mean energy."""

    prefill_cost: float
    prefill_token_j: float
    decode_token_j: float
    per_iteration_j: float
    r2: float
    rmse_j: float
    relative_rmse: float
    iterations: int
    prefill_iterations: int
    decode_iterations: int
    prefill_cost_se: float | None = None

    def rule(self) -> TokenRule:
        return TokenRule(self.prefill_cost)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def calibrate(iterations: Iterable[Sequence[float]], *, intercept: bool = True) -> Calibration:
    """Fit the prefill/decode cost ratio from measured iterations: ``(energy_j, prefill_tokens,
    decode_tokens)`` each. Non-negative least squares; ``intercept`` fits a per-pass base energy
    (weights read once per pass) beside the per-token costs.

    Raises :class:`~greenmaas.errors.ConfigError` where the iterations cannot tell the two costs
    apart: fewer than 3 (4 with ``intercept``), none with prefill or none with decode tokens, or
    prefill and decode tokens in fixed proportion."""
    import numpy as np

    rows = [(float(e), float(p), float(d)) for e, p, d in iterations]
    arr = np.asarray(rows, dtype=np.float64).reshape(-1, 3)
    arr = arr[np.isfinite(arr).all(axis=1)]
    e, p, d = arr[:, 0], arr[:, 1], arr[:, 2]
    n = e.size
    n_p, n_d = int((p > 0).sum()), int((d > 0).sum())
    need = 4 if intercept else 3
    if n < need:
        raise ConfigError(f"calibration needs at least {need} measured iterations, got {n}")
    if not n_p or not n_d:
        raise ConfigError(f"calibration needs iterations with prefill and with decode tokens "
                          f"(got {n_p} with prefill, {n_d} with decode)")
    cols = [p, d] + ([np.ones(n)] if intercept else [])
    x = np.column_stack(cols)
    if np.linalg.matrix_rank(x) < x.shape[1]:
        raise ConfigError("calibration cannot separate prefill from decode cost: their tokens vary together "
                          "in these iterations")
    from scipy.optimize import nnls

    # Scale columns so the solver sees numbers of one size (tokens may be thousands, the base 1).
    scale = np.maximum(np.abs(x).max(axis=0), 1e-12)
    coef, _ = nnls(x / scale, e)
    coef = coef / scale
    a, b = float(coef[0]), float(coef[1])
    c = float(coef[2]) if intercept else 0.0
    if b <= 0:
        raise ConfigError("calibration found no energy per decode token (the fit pinned it to 0): "
                          "the iterations do not say what a decode token costs")
    fit = x @ coef
    resid = e - fit
    ss_res = float((resid**2).sum())
    ss_tot = float(((e - e.mean()) ** 2).sum())
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else (1.0 if ss_res == 0 else 0.0)
    dof = n - x.shape[1]
    rmse = math.sqrt(ss_res / n)
    se = None
    if dof > 0 and a > 0 and (not intercept or c > 0):
        sigma2 = ss_res / dof
        try:
            cov = sigma2 * np.linalg.inv(x.T @ x)
            ratio = a / b
            var = ratio**2 * (cov[0, 0] / a**2 + cov[1, 1] / b**2 - 2 * cov[0, 1] / (a * b))
            se = math.sqrt(var) if var >= 0 else None
        except np.linalg.LinAlgError:
            se = None
    mean = float(e.mean())
    return Calibration(
        prefill_cost=a / b,
        prefill_token_j=a,
        decode_token_j=b,
        per_iteration_j=c,
        r2=r2,
        rmse_j=rmse,
        relative_rmse=rmse / mean if mean > 0 else math.inf,
        iterations=n,
        prefill_iterations=n_p,
        decode_iterations=n_d,
        prefill_cost_se=se,
    )


def calibrate_ledger(
    ledger_or_url: "Ledger | str | os.PathLike | None" = None,
    *,
    run: str | None = None,
    model: str | None = None,
    name: str = ITERATION,
    intercept: bool = True,
) -> Calibration:
    """:func:`calibrate` from the iterations a ledger recorded (batch spans named ``name`` with
    ``prefill_tokens``/``decode_tokens`` in their attrs), of one ``run`` (``"latest"`` for the
    last) and ``model`` if given. Raises ConfigError (see :func:`calibrate`), LedgerError."""
    from .reporting.frames import opened
    from .ledger import query

    with opened(ledger_or_url) as ledger, ledger.read() as conn:
        run_id = query.latest_run(conn) if run == "latest" else run
        if run == "latest" and run_id is None:
            raise ConfigError("the ledger holds no run")
        rows = query.serving_iterations(conn, name, run_id=run_id, model=model)
    data = []
    for energy_j, attrs in rows:
        if energy_j is None or not isinstance(attrs, dict):
            continue
        try:
            data.append((float(energy_j), float(attrs["prefill_tokens"]), float(attrs["decode_tokens"])))
        except (KeyError, TypeError, ValueError):
            continue
    if not data:
        where = f" of run {run_id}" if run_id else ""
        raise ConfigError(f"the ledger holds no measured serving iterations (batch spans named {name!r}){where}")
    return calibrate(data, intercept=intercept)

