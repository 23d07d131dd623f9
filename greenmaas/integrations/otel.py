"""OpenTelemetry: a request's energy as attributes of the current trace span.

::

    from greenmaas.integrations.otel import annotate
    annotate(figures)                    # on the current OpenTelemetry span, if one records

The ASGI middleware (``trace=True``, the default) does it for every request: the request id at once
(``greenmaas.request_id``), and the figures (``greenmaas.energy_j``, ``greenmaas.final``,
``greenmaas.carbon_g``, ``greenmaas.cost``, ``greenmaas.prefill_j``, ``greenmaas.decode_j``,
``greenmaas.ttft_s``, ...) on the trace span that was current during the request, if that span is
still recording when they are known. A server span usually ends with the response, before the
energy has settled (about 110 ms later on an NVIDIA counter): then only the id is there, and the
figures are found by it (the middleware's endpoint, the ledger). With ``final_wait_s`` on the
middleware, a complete response's final figures are known before it goes out.

OpenTelemetry is optional: without ``opentelemetry-api`` installed these functions do nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .asgi import RequestFigures

__all__ = ["annotate", "current_trace_span", "PREFIX"]

PREFIX = "greenmaas."
_FIELDS = ("energy_j", "uncertainty_j", "carbon_g", "cost", "currency", "method", "prefill_j", "decode_j",
           "ttft_s", "prompt_tokens", "output_tokens", "lag_s")


_missing: list[bool] = []  # set once opentelemetry is found not to be installed


def current_trace_span() -> Any:
    """The current OpenTelemetry span if one is recording, else None (also without OpenTelemetry)."""
    if _missing:
        return None
    try:
        from opentelemetry import trace
    except ImportError:
        _missing.append(True)
        return None
    span = trace.get_current_span()
    return span if span is not None and span.is_recording() else None


def annotate(figures: "RequestFigures", span: Any = None) -> bool:
    """Set ``figures`` as ``greenmaas.*`` attributes on ``span`` (default: the current trace span).
    Returns whether a recording span took them."""
    target = span if span is not None else current_trace_span()
    if target is None or not target.is_recording():
        return False
    attrs: dict[str, Any] = {PREFIX + "request_id": figures.request_id, PREFIX + "final": bool(figures.final)}
    for k in _FIELDS:
        v = getattr(figures, k, None)
        if v is not None:
            attrs[PREFIX + k] = v
    if figures.tenant is not None:
        attrs[PREFIX + "tenant"] = figures.tenant  # the pseudonym
    target.set_attributes(attrs)
    return True
