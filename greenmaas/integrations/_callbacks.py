"""Spans opened and closed by a framework's callbacks, in pairs of events.

Trainer callbacks announce a begin and an end (epoch begin, epoch end) as separate calls on the
training thread. :class:`SpanStack` opens a span at the first and closes it at the second, keeping
the spans in the order they opened so that they close innermost first, as ``with`` blocks would:
a span opened in a callback becomes the current span (:func:`greenmaas.current_span`) for the
code that runs until its end event, so the user's own spans and the PyTorch hooks nest under it.

An end event that never comes (the loop raised, or broke out early) leaves a span open; the next
end event of an enclosing span, or :meth:`SpanStack.close_all`, closes it with status ``error``.
Measuring never raises into the framework: failures are logged once to ``greenmaas`` and the
work runs unmeasured.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping

from ..meter import Meter, get_meter
from ..spans import Span

__all__ = ["SpanStack"]

log = logging.getLogger("greenmaas")


class SpanStack:
    """The spans a callback object has open, innermost last, each under a key (``"epoch"``)."""

    def __init__(self, owner: str, meter: Meter | None = None) -> None:
        self.owner = owner
        self.meter = meter
        self._frames: list[tuple[str, Span]] = []
        self._warned = False
        #: The most recent span closed under each key (tests and users read results from these).
        self.last: dict[str, Span] = {}

    def open(
        self,
        key: str,
        name: str,
        *,
        kind: str,
        phase: str | None,
        model: str | None,
        attrs: Mapping[str, Any] | None = None,
    ) -> Span | None:
        """Open a span and make it current; None (and a warning) when it could not be opened."""
        try:
            span = Span(name, meter=self.meter or get_meter(), kind=kind, model=model, phase=phase, attrs=attrs)
            span.__enter__()
        except Exception as exc:  # measuring never stops training
            self.warn(f"{kind} span {name!r} not recorded: {exc}")
            return None
        self._frames.append((key, span))
        return span

    def is_open(self, key: str) -> bool:
        return any(k == key for k, _ in self._frames)

    def top(self, key: str) -> Span | None:
        """The innermost open span under ``key``."""
        for k, span in reversed(self._frames):
            if k == key:
                return span
        return None

    def close(self, key: str, *, status: str | None = None) -> Span | None:
        """Close the innermost span opened under ``key``, first closing (status ``error``) any
        opened after it whose end event never came. None when no such span is open."""
        keys = [k for k, _ in self._frames]
        if key not in keys:
            return None
        index = len(keys) - 1 - keys[::-1].index(key)
        while len(self._frames) > index + 1:
            self._exit(*self._frames.pop(), status="error")
        return self._exit(*self._frames.pop(), status=status)

    def close_all(self, status: str = "error") -> None:
        """Close every open span, innermost first, with ``status``."""
        while self._frames:
            self._exit(*self._frames.pop(), status=status)

    def _exit(self, key: str, span: Span, *, status: str | None) -> Span:
        if status is not None and status != "ok":
            span.status = status
        try:
            span.__exit__(None, None, None)
        except Exception as exc:
            self.warn(f"{span.kind} span {span.name!r} not closed: {exc}")
        self.last[key] = span
        return span

    def warn(self, message: str) -> None:
        """Log ``message`` as a warning the first time, at debug level afterwards."""
        if not self._warned:
            self._warned = True
            log.warning("greenmaas (%s): %s", self.owner, message)
        else:
            log.debug("greenmaas (%s): %s", self.owner, message)

    def __len__(self) -> int:
        return len(self._frames)
