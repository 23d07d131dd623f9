"""Prometheus metrics: energy, carbon and cost per model and tenant, device power, attribution lag.

::

    exporter = PrometheusExporter(meter)                 # a private CollectorRegistry
    exporter.watch(middleware)                           # per-request figures, once final
    app.mount("/metrics", exporter.asgi_app())           # or exporter.serve(9464, "127.0.0.1")

Metrics (``prometheus_client`` adds ``_total`` to counters):

* ``greenmaas_request_energy_joules{model,tenant}``, ``greenmaas_request_carbon_grams{model,tenant}``,
  ``greenmaas_request_cost{model,tenant,currency}``: counters of the requests' final figures
  (carbon and cost where accounting is configured), added when a request's figure becomes final
  (about 110 ms after it ends on an NVIDIA counter), so they trail the request counters slightly.
* ``greenmaas_request_phase_energy_joules{model,tenant,phase}``: prefill and decode energy of
  requests an engine served through :class:`greenmaas.ServingMeter`.
* ``greenmaas_requests{model,tenant,final}``: requests counted, ``final="false"`` for those whose
  figure had not settled when greenmaas gave up waiting (their energy is counted as it stood).
* ``greenmaas_request_output_tokens{model,tenant}``: output tokens of served requests.
* ``greenmaas_attribution_lag_seconds``: histogram of the time from a request's end to its final
  figure.
* ``greenmaas_device_power_watts{device,method}``: each device's mean power over its last second
  of reads; ``greenmaas_device_energy_joules{device,method,part}``: attributed and idle energy
  so far (``part`` = ``attributed`` | ``idle``), read at scrape time.

``tenant`` is always the keyed pseudonym the ledger stores, never the raw tenant. The registry is
the one passed in or a private one (never the process-global default unless you pass it), so
tests and several meters in a process do not collide. ``prometheus_client`` is imported here
only (``pip install greenmaas[prometheus]``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from ..errors import ConfigError

if TYPE_CHECKING:
    from ..meter import Meter
    from .asgi import GreenmaasMiddleware, RequestFigures

__all__ = ["PrometheusExporter"]

#: Buckets of the attribution lag histogram (s): a counter period is ~0.1 s.
LAG_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0, 10.0)


def _client():
    try:
        import prometheus_client
    except ImportError as exc:
        raise ConfigError(
            "Prometheus metrics need prometheus_client: pip install 'greenmaas[prometheus]'"
        ) from exc
    return prometheus_client


class PrometheusExporter:
    """greenmaas metrics for ``meter`` in ``registry`` (default: a new private one)."""

    def __init__(self, meter: "Meter", *, registry: Any = None, namespace: str = "greenmaas") -> None:
        pc = _client()
        self.meter = meter
        self.registry = registry if registry is not None else pc.CollectorRegistry(auto_describe=True)
        ns = namespace
        self.energy = pc.Counter(f"{ns}_request_energy_joules", "Energy attributed to requests (J).",
                                 ["model", "tenant"], registry=self.registry)
        self.carbon = pc.Counter(f"{ns}_request_carbon_grams", "Location-based carbon of requests (gCO2e).",
                                 ["model", "tenant"], registry=self.registry)
        self.cost = pc.Counter(f"{ns}_request_cost", "Cost of requests (electricity and hardware share).",
                               ["model", "tenant", "currency"], registry=self.registry)
        self.phase_energy = pc.Counter(f"{ns}_request_phase_energy_joules",
                                       "Prefill and decode energy of served requests (J).",
                                       ["model", "tenant", "phase"], registry=self.registry)
        self.requests = pc.Counter(f"{ns}_requests", "Requests measured; final=false: counted before settling.",
                                   ["model", "tenant", "final"], registry=self.registry)
        self.output_tokens = pc.Counter(f"{ns}_request_output_tokens", "Output tokens of served requests.",
                                        ["model", "tenant"], registry=self.registry)
        self.lag = pc.Histogram(f"{ns}_attribution_lag_seconds",
                                "Time from a request's end to its final energy figure (s).",
                                buckets=LAG_BUCKETS, registry=self.registry)
        self.registry.register(_DeviceCollector(meter, ns))

    def observe(self, f: "RequestFigures") -> None:
        """Count one request's figures (a :meth:`GreenmaasMiddleware.add_listener` listener)."""
        model, tenant = f.model or "", f.tenant or ""
        self.requests.labels(model, tenant, "true" if f.final else "false").inc()
        if f.energy_j is not None and f.energy_j >= 0:
            self.energy.labels(model, tenant).inc(f.energy_j)
        if f.carbon_g is not None and f.carbon_g >= 0:
            self.carbon.labels(model, tenant).inc(f.carbon_g)
        if f.cost is not None and f.cost >= 0:
            self.cost.labels(model, tenant, f.currency or "").inc(f.cost)
        for phase, j in (("prefill", f.prefill_j), ("decode", f.decode_j)):
            if j is not None and j >= 0:
                self.phase_energy.labels(model, tenant, phase).inc(j)
        if f.output_tokens:
            self.output_tokens.labels(model, tenant).inc(f.output_tokens)
        if f.lag_s is not None:
            self.lag.observe(f.lag_s)

    def watch(self, middleware: "GreenmaasMiddleware") -> "PrometheusExporter":
        """Count every request ``middleware`` measures, once its figure is final."""
        middleware.add_listener(self.observe)
        return self

    def render(self) -> bytes:
        """The metrics in the Prometheus text format."""
        return _client().generate_latest(self.registry)

    def asgi_app(self) -> Callable:
        """An ASGI app serving the metrics (mount it at ``/metrics``)."""
        return _client().make_asgi_app(registry=self.registry)

    def serve(self, port: int, addr: str = "127.0.0.1") -> Any:
        """Serve the metrics on ``addr:port`` from a thread; returns the server (``shutdown()``)."""
        server, _thread = _client().start_http_server(port, addr=addr, registry=self.registry)
        return server


class _DeviceCollector:
    """Device power and energy, read from the meter at scrape time."""

    def __init__(self, meter: "Meter", ns: str) -> None:
        self.meter = meter
        self.ns = ns

    def describe(self):
        return []

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        power = GaugeMetricFamily(f"{self.ns}_device_power_watts",
                                  "Mean power of each device over its last second of reads (W).",
                                  labels=["device", "method"])
        energy = CounterMetricFamily(f"{self.ns}_device_energy_joules",
                                     "Device energy attributed so far, to spans or idle (J).",
                                     labels=["device", "method", "part"])
        meter = self.meter
        methods = {d.id: d.method for d in meter.sampler.devices}
        for dev, tl in list(meter.sampler.timelines.items()):
            first, last = tl.t_first, tl.t_last
            if first is None or last is None or last <= first:
                continue
            window = min(1.0, last - first)
            power.add_metric([dev, methods.get(dev, tl.method)], tl.energy_between(last - window, last) / window)
        for dev, t in list(meter.totals.items()):
            m = methods.get(dev, "")
            energy.add_metric([dev, m, "attributed"], t.get("attributed_j", 0.0))
            energy.add_metric([dev, m, "idle"], t.get("idle_j", 0.0))
        yield power
        yield energy
