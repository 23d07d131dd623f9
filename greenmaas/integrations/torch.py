"""PyTorch integration: spans for forward calls, optimizer steps and epochs.

::

    from greenmaas.integrations.torch import epochs, track_module, track_optimizer

    with track_module(model, name="resnet50"), track_optimizer(opt, model="resnet50"):
        for epoch in epochs(3, model="resnet50"):
            for x, y in loader:
                loss = loss_fn(model(x), y)      # one "forward" span per call
                loss.backward()
                opt.step()                       # one "step" span per call

Forward spans take their phase from the call: ``training`` when the module is in training mode
and autograd is on, else ``inference`` (``model.eval()``, ``torch.no_grad()``,
``torch.inference_mode()``). Tracked modules inside tracked modules nest; a module that calls
itself gets one span per call. Hooks never change inputs, outputs or gradients, and measuring
never raises into the caller: a failure to open a span is logged and the forward runs unmeasured.

GPU timing (``sync=``): ``"none"`` stamps spans with host time, which for CUDA work is when it
was *enqueued*; ``"sync"`` calls ``torch.cuda.synchronize`` before each boundary (exact, stalls
the caller); ``"events"`` records CUDA events and resolves them to host time on a background
thread (exact, never stalls the caller; a span stays open until its events complete, so read
its result after :meth:`TrackHandle.wait`). For modules on the CPU every mode is host time.
"""

from __future__ import annotations

import logging
import sys
import threading
import weakref
from typing import Any, Callable, Iterator, Sequence

import torch

from ..errors import ConfigError
from ..meter import Meter, get_meter
from ..spans import Span
from ._cuda import EventResolver, default_resolver

__all__ = [
    "TrackHandle",
    "track_module",
    "track_optimizer",
    "epochs",
    "step",
    "epoch",
    "SYNC_MODES",
]

log = logging.getLogger("greenmaas")

SYNC_MODES = ("none", "sync", "events")
#: A tracked module without parameters is scanned for them again every this many calls.
_RESCAN_EVERY = 1000


# ---------------------------------------------------------------------- handles


class TrackHandle:
    """What :func:`track_module` and :func:`track_optimizer` return: removes the hooks.

    ``remove()`` is safe to call twice; the handle is also a context manager that removes them
    on exit. ``last_span`` is the most recent span the hooks opened (any thread).
    """

    def __init__(self, tracker: "_Tracker", handles: Sequence[Any]) -> None:
        self._tracker = tracker
        self._handles = list(handles)

    @property
    def last_span(self) -> Span | None:
        return self._tracker.last_span

    @property
    def active(self) -> bool:
        return bool(self._handles)

    def wait(self, timeout: float | None = None) -> bool:
        """In ``events`` mode, wait until every span recorded so far has its CUDA times (and is
        closed). True when done; returns at once in the other modes."""
        resolver = self._tracker._resolver_if_used
        if resolver is None:
            return True
        return resolver.wait(timeout)

    def remove(self) -> None:
        handles, self._handles = self._handles, []
        for h in handles:
            h.remove()
        if handles:
            self._tracker.close_stale()

    def __enter__(self) -> "TrackHandle":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.remove()

    def __repr__(self) -> str:
        state = "active" if self._handles else "removed"
        return f"<TrackHandle {self._tracker.name!r} {self._tracker.kind} {state}>"


# ---------------------------------------------------------------------- the shared machinery


# ``Span(name, **kw)`` is ``Span.__new__(Span)`` then ``__init__(span, name, **kw)``; calling the
# two directly skips the keyword dict that ``type.__call__`` builds for a Python ``__init__``,
# a good part of the cost of building a span (it is built on every tracked call).
_new_span = Span.__new__
_init_span = Span.__init__

# A frame on a tracker's per-thread stack is a plain tuple ``(span, exc, cuda, starts)`` (a tuple
# is the cheapest thing to build twice per tracked call): ``exc`` is the exception being handled
# when the span opened, ``cuda`` the devices timed with CUDA (empty: host time) and ``starts``
# their start events in ``events`` mode, else None. None stands for a span that was not opened.
_Frame = tuple


class _Tracker:
    """Opens and closes spans at the boundaries torch's hooks report, with the chosen timing.

    Frames are kept on a per-thread stack: a forward is synchronous code, so its pre- and
    post-hook run on one thread, and a module that calls itself pushes one frame per call.
    """

    def __init__(
        self,
        *,
        kind: str,
        name: str,
        model: str | None,
        default_model: str | None,
        meter: Meter | None,
        sync: str,
        devices: Sequence[str] | None,
        resolver: EventResolver | None,
        params: Callable[[], Iterator[torch.Tensor]],
        phase: Callable[[], str],
    ) -> None:
        if sync not in SYNC_MODES:
            raise ConfigError(f"sync must be one of {', '.join(SYNC_MODES)}, not {sync!r}")
        self.kind = kind
        self.name = name
        self.model = model
        self.default_model = default_model
        self.meter = meter
        self.sync = sync
        self.devices = tuple(devices) if devices is not None else None
        self._resolver = resolver
        self._params = params
        self._phase = phase
        self._local = threading.local()
        self.last_span: Span | None = None
        self._dev_key: Any = None
        self._probe: weakref.ref | None = None
        self._torch_devices: tuple[torch.device, ...] = ()
        self._bare_calls = 0  # calls left before a module with no tensors is scanned again
        self._ids: dict[int, str] = {}
        self._ids_meter: Any = None
        # What the devices imply, recomputed only when torch_devices() returns a new tuple (the
        # module moved) or the resolver changed; one tuple, so that threads read it whole:
        # (tdevs, resolver, timed devices, device ids fixed?, the device ids if fixed).
        self._plan: tuple = (None, None, (), False, None)
        self._warned = False

    # -------------------------------------------------------------- per-call plumbing

    @property
    def _resolver_if_used(self) -> EventResolver | None:
        return self._resolver if self.sync == "events" else None

    def resolver(self) -> EventResolver:
        if self._resolver is None:
            self._resolver = default_resolver()
        return self._resolver

    def torch_devices(self) -> tuple[torch.device, ...]:
        """The devices the tracked tensors live on. Scanning them every call costs more than the
        span itself, so one tensor is watched: ``module.to(...)`` moves it along with the rest."""
        probe = self._probe() if self._probe is not None else None
        if probe is not None and probe.device == self._dev_key:
            return self._torch_devices
        if self._probe is None and self._bare_calls:  # no tensors last time: look again later
            self._bare_calls -= 1
            return self._torch_devices
        devs: set[torch.device] = set()
        self._probe = None
        for t in self._params():
            if self._probe is None:
                self._probe = weakref.ref(t)
                self._dev_key = t.device
            devs.add(t.device)
        self._torch_devices = tuple(sorted(devs, key=str))
        if self._probe is None:  # a module without parameters (or not yet materialised)
            self._bare_calls = _RESCAN_EVERY
        return self._torch_devices

    def _timed(self, tdevs: tuple[torch.device, ...]) -> list:
        """The devices whose boundaries need CUDA timing in this mode."""
        if self.sync == "none" or not tdevs:
            return []
        if self._resolver is None and not (torch.cuda.is_available() and any(d.type == "cuda" for d in tdevs)):
            return []  # CPU-only: host time is the time the work ran
        backend = self.resolver().backend
        return [d for d in tdevs if backend.accepts(d)]

    def device_ids(self, tdevs: tuple[torch.device, ...], meter: Meter) -> tuple[str, ...] | None:
        """Greenmaas device ids for the span: the GPUs when all parameters are on CUDA, else
        None (every device: CPU work, or a mix, shows on the host's devices)."""
        if self.devices is not None:
            return self.devices
        if not tdevs or any(d.type != "cuda" for d in tdevs):
            return None
        if self._ids_meter is None or self._ids_meter() is not meter:
            self._ids = {}
            self._ids_meter = weakref.ref(meter)
        out = []
        for d in tdevs:
            idx = d.index if d.index is not None else torch.cuda.current_device()
            dev_id = self._ids.get(idx)
            if dev_id is None:
                dev_id = self._ids[idx] = _gpu_id(idx, meter)
            out.append(dev_id)
        return tuple(out)

    def _replan(self, tdevs: tuple[torch.device, ...]) -> tuple:
        """Cache what ``tdevs`` imply (:meth:`_timed`, and :meth:`device_ids` where it does not
        depend on the meter), so that a call on unchanged devices asks torch nothing (no
        ``torch.cuda.is_available()``, no device scan)."""
        timed = tuple(self._timed(tdevs))
        if self.devices is not None:
            fixed, ids = True, self.devices
        elif not tdevs or any(d.type != "cuda" for d in tdevs):
            fixed, ids = True, None
        else:  # GPU ids: per meter, looked up by device_ids (cached there)
            fixed, ids = False, None
        plan = self._plan = (tdevs, self._resolver, timed, fixed, ids)  # _timed may set _resolver
        return plan

    # -------------------------------------------------------------- boundaries

    def open(self, phase: str | None = None) -> None:
        """Start a span (pre-hook). Always pushes a frame, None when no span could be opened,
        so the matching :meth:`close` pops the right one. ``phase``: the call's phase where the
        hook knows it, else the tracker's ``phase()`` is asked."""
        # Runs on every tracked call: kept flat (no helper calls on the host-time path), as the
        # span itself is what should cost.
        try:
            stack = self._local.stack
        except AttributeError:
            stack = self._local.stack = []
        frame = None
        try:
            meter = self.meter or get_meter()
            # torch_devices(), its common case inline: the probe tensor has not moved.
            probe = self._probe() if self._probe is not None else None
            if probe is not None and probe.device == self._dev_key:
                tdevs = self._torch_devices
            else:
                tdevs = self.torch_devices()
            plan = self._plan
            if plan[0] is not tdevs or plan[1] is not self._resolver:
                plan = self._replan(tdevs)
            _, _, timed, ids_fixed, ids = plan
            # A CUDA graph capture: nothing runs now, so nothing to measure (frame None).
            if not timed or not any(self.resolver().backend.capturing(d) for d in timed):
                span = _new_span(Span)  # Span(...), without type.__call__'s keyword repacking
                _init_span(
                    span,
                    self.name,
                    meter=meter,
                    kind=self.kind,
                    model=self.model,
                    phase=self._phase() if phase is None else phase,
                    devices=ids if ids_fixed else self.device_ids(tdevs, meter),
                )
                if timed and self.sync == "sync":
                    for d in timed:
                        self.resolver().backend.synchronize(d)
                try:  # _enter(span), inline
                    span.__enter__()
                except BaseException:
                    _detach(span)
                    raise
                if span.model is None:
                    span.model = self.default_model
                self.last_span = span
                if timed and self.sync == "events":
                    frame = self._record_starts(span, meter, sys.exc_info()[1], timed)
                else:
                    frame = (span, sys.exc_info()[1], timed, None)
        except Exception as exc:
            self._warn(f"{self.kind} span for {self.name!r} not recorded: {exc}")
        stack.append(frame)

    def _record_starts(self, span: Span, meter: Meter, exc: BaseException | None, timed: tuple) -> _Frame:
        """The frame of a span just opened in ``events`` mode: its start events recorded."""
        try:
            starts = [self.resolver().record(d) for d in timed]
            # Hold attribution at the host start until the GPU times are known, so the
            # start can move to when the GPU actually began.
            meter.hold(span)
            if not getattr(meter, "_greenmaas_events_hook", False):
                # A flag on the meter itself: every hook on this meter shares one stop-time wait.
                meter._greenmaas_events_hook = True  # type: ignore[attr-defined]
                meter.on_stop(lambda: self.resolver().wait(self.resolver().stop_wait_s))
        except Exception as err:  # keep the span, on host time
            self._warn(f"CUDA events unavailable, {self.name!r} uses host time: {err}")
            return (span, exc, (), None)
        return (span, exc, timed, starts)

    def close(self, *, error: bool | None = None) -> None:
        """End the innermost span of this tracker on this thread (post-hook)."""
        try:
            stack = self._local.stack
        except AttributeError:
            return
        if not stack:
            return
        frame = stack.pop()
        if frame is None:
            return
        if error is None:
            # The always-call post-hook runs inside torch's ``except`` block when forward raised:
            # an exception being handled now that was not being handled at the pre-hook.
            exc = sys.exc_info()[1]
            error = exc is not None and exc is not frame[1]
        if frame[2]:  # CUDA timing
            self._finish(frame, error)
            return
        span = frame[0]  # _finish(frame, error), its host-time case inline
        if error:
            span.status = "error"
        try:
            span.__exit__(None, None, None)
        except Exception as err:
            self._warn(f"{self.kind} span for {self.name!r} not closed: {err}")

    def _finish(self, frame: _Frame, error: bool, status: str = "error") -> None:
        span, _, cuda, starts = frame
        if error:
            span.status = status
        if cuda:
            try:
                if self.sync == "sync":
                    for d in cuda:
                        self.resolver().backend.synchronize(d)
                elif self.sync == "events" and starts is not None:
                    ends = [self.resolver().record(d) for d in cuda]
                    _detach(span)
                    span.attrs.setdefault("timing", "cuda-events")
                    host_end = span._meter.clock.monotonic()  # type: ignore[union-attr]
                    self.resolver().submit(starts, ends, _Applier(span, host_end))
                    return
            except Exception as exc:  # CUDA failed (a sticky error, say): close on host time
                self._warn(f"CUDA timing for {self.name!r} failed, host time used: {exc}")
        try:
            span.__exit__(None, None, None)
        except Exception as exc:
            self._warn(f"{self.kind} span for {self.name!r} not closed: {exc}")

    def close_stale(self, status: str = "error") -> None:
        """Close frames left open on this thread (a step that raised has no post-hook)."""
        try:
            stack = self._local.stack
        except AttributeError:
            return
        while stack:
            frame = stack.pop()
            if frame is not None:
                self._finish(frame, True, status)

    def _warn(self, message: str) -> None:
        if not self._warned:
            self._warned = True
            log.warning("greenmaas: %s", message)
        else:
            log.debug("greenmaas: %s", message)


class _Applier:
    """Sets an events-mode span's start and end once its CUDA events have completed.

    The span stayed open (``end`` None) and provisional meanwhile, so the attributor attributed
    no window past its host start: :meth:`Meter.retime` moves its start to the GPU's start and
    sets its end, under the meter's lock.
    """

    __slots__ = ("span", "host_end")

    def __init__(self, span: Span, host_end: float) -> None:
        self.span = span
        self.host_end = host_end

    def __call__(self, start: float | None, end: float | None, error: str | None) -> None:
        span = self.span
        meter = span._meter
        if span.end is not None:  # the meter stopped and closed it
            return
        if error is not None or start is None or end is None:
            span.attrs["timing"] = "host"
            span.attrs["timing_error"] = error
            meter.retime(span, None, self.host_end)  # type: ignore[union-attr]
            return
        meter.retime(span, start, end)  # type: ignore[union-attr]


def _enter(span: Span) -> None:
    """``span.__enter__()``, leaving the context as it was if opening fails."""
    try:
        span.__enter__()
    except BaseException:
        _detach(span)
        raise


def _detach(span: Span) -> None:
    """Leave a span's context without closing it (events mode: it closes when resolved)."""
    span._detach()


def _gpu_id(index: int, meter: Meter) -> str:
    """The meter's id for CUDA device ``index``: matched by UUID (torch and NVML may order GPUs
    differently unless ``CUDA_DEVICE_ORDER=PCI_BUS_ID``), else ``gpu:<index>``."""
    try:
        uuid = _norm_uuid(str(torch.cuda.get_device_properties(index).uuid))
    except Exception:
        uuid = None
    if uuid:
        for dev in getattr(meter.sampler, "devices", ()):
            if dev.kind == "gpu" and dev.uuid and _norm_uuid(dev.uuid) == uuid:
                return dev.id
    return f"gpu:{index}"


def _norm_uuid(u: str) -> str:
    u = u.strip().lower()
    return u[4:] if u.startswith("gpu-") else u


def _compiling() -> bool:
    try:
        return bool(torch.compiler.is_compiling())
    except Exception:
        return False


try:  # what _compiling() asks, without its wrapper frame: the hooks call it twice per call
    _is_compiling: Callable[[], bool] = torch.compiler.is_compiling
except AttributeError:  # a torch without torch.compiler
    _is_compiling = _compiling


# ---------------------------------------------------------------------- public API


def track_module(
    model: torch.nn.Module,
    *,
    name: str | None = None,
    meter: Meter | None = None,
    sync: str = "none",
    devices: Sequence[str] | None = None,
    resolver: EventResolver | None = None,
) -> TrackHandle:
    """Record every forward call of ``model`` as a span (kind ``forward``).

    ``name`` names the spans and tags them with ``model=name``; without it spans are named after
    the class and take the enclosing span's model tag (or the class name). ``meter``: default the
    current one (:func:`greenmaas.meter.get_meter`), looked up at each call. ``sync``: ``"none"``,
    ``"sync"`` or ``"events"`` (see the module docstring). ``devices``: greenmaas device ids the
    spans compete on; default the GPUs holding the parameters, or every device for a model on
    the CPU. ``resolver``: the :class:`~greenmaas.integrations._cuda.EventResolver` for
    ``sync``/``events`` (default one per process over ``torch.cuda``; tests pass fakes).
    """
    if not isinstance(model, torch.nn.Module):
        raise ConfigError(f"track_module needs a torch.nn.Module, not {type(model).__name__}")
    cls_name = type(model).__name__

    def params() -> Iterator[torch.Tensor]:
        yield from model.parameters()
        yield from model.buffers()

    def phase() -> str:
        return "training" if model.training and torch.is_grad_enabled() else "inference"

    tracker = _Tracker(
        kind="forward",
        name=name or cls_name,
        model=name,
        default_model=cls_name,
        meter=meter,
        sync=sync,
        devices=devices,
        resolver=resolver,
        params=params,
        phase=phase,
    )
    _prepare(tracker)

    open_, close = tracker.open, tracker.close

    def pre_hook(module: torch.nn.Module, args: Any) -> None:
        if not _is_compiling():
            open_("training" if module.training and torch.is_grad_enabled() else "inference")  # phase()

    def post_hook(module: torch.nn.Module, args: Any, output: Any) -> None:
        if not _is_compiling():
            close()

    # The pre-hook goes first so that a later pre-hook raising still finds our frame pushed
    # (the always-call post-hook will pop it).
    h1 = model.register_forward_pre_hook(pre_hook, prepend=True)
    h2 = model.register_forward_hook(post_hook, always_call=True)
    return TrackHandle(tracker, [h1, h2])


def track_optimizer(
    optimizer: torch.optim.Optimizer,
    *,
    name: str = "step",
    model: str | None = None,
    meter: Meter | None = None,
    sync: str = "none",
    devices: Sequence[str] | None = None,
    resolver: EventResolver | None = None,
) -> TrackHandle:
    """Record every ``optimizer.step()`` as a span (kind ``step``, phase ``training``).

    ``model`` tags the spans (default: the enclosing span's model). Other arguments as in
    :func:`track_module`. torch has no post-hook for a step that raises: such a span is closed
    with status ``error`` at the next step or when the handle is removed.
    """
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise ConfigError(f"track_optimizer needs a torch.optim.Optimizer, not {type(optimizer).__name__}")

    def params() -> Iterator[torch.Tensor]:
        for group in optimizer.param_groups:
            yield from group["params"]

    tracker = _Tracker(
        kind="step",
        name=name,
        model=model,
        default_model=None,
        meter=meter,
        sync=sync,
        devices=devices,
        resolver=resolver,
        params=params,
        phase=lambda: "training",
    )
    _prepare(tracker)

    local = tracker._local

    def pre_hook(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if _is_compiling():
            return
        if getattr(local, "stack", None):
            tracker.close_stale()  # the previous step raised
        tracker.open("training")

    def post_hook(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if not _is_compiling():
            tracker.close(error=False)

    h1 = optimizer.register_step_pre_hook(pre_hook)
    h2 = optimizer.register_step_post_hook(post_hook)
    return TrackHandle(tracker, [h1, h2])


def _prepare(tracker: _Tracker) -> None:
    """Anchor CUDA events now, once, so that no forward call pays for it."""
    if tracker.sync != "events":
        return
    try:
        for d in tracker._timed(tracker.torch_devices()):
            tracker.resolver().current_anchor(d)
    except Exception as exc:
        tracker._warn(f"CUDA events could not be anchored yet: {exc}")


def epochs(
    n: int,
    *,
    model: str | None = None,
    meter: Meter | None = None,
    name: str = "epoch-{i}",
) -> Iterator[int]:
    """Yield ``0 .. n-1``, each iteration inside a span (kind ``epoch``, phase ``training``,
    named ``epoch-<i>``). Inside the loop, :func:`greenmaas.spans.current_span` is the epoch's
    span (unless another span is open).

    Leaving the loop early with ``break`` closes the open epoch's span when the generator is
    dropped, at once in CPython (``contextlib.closing(epochs(n))`` makes it explicit elsewhere).
    """
    for i in range(int(n)):
        span = Span(name.format(i=i), meter=meter, kind="epoch", model=model, phase="training", attrs={"epoch": i})
        try:
            _enter(span)
        except Exception as exc:  # measuring never stops training
            log.warning("greenmaas: epoch span %r not recorded: %s", span.name, exc)
            yield i
            continue
        try:
            yield i
        except GeneratorExit:  # break, or the generator dropped: a normal end
            span.__exit__(None, None, None)
            raise
        except BaseException:
            span.__exit__(*sys.exc_info())
            raise
        else:
            span.__exit__(None, None, None)


def step(
    name: str | Callable | None = "step",
    *,
    model: str | None = None,
    meter: Meter | None = None,
    **tags: Any,
) -> Any:
    """A training step span (kind ``step``, phase ``training``): a decorator, or a context
    manager. ``@step(model="mlp")`` and bare ``@step`` both work; each call is a new span."""
    return _phase_span("step", name, model=model, meter=meter, **tags)


def epoch(
    name: str | Callable | None = "epoch",
    *,
    model: str | None = None,
    meter: Meter | None = None,
    **tags: Any,
) -> Any:
    """A training epoch span (kind ``epoch``, phase ``training``); like :func:`step`."""
    return _phase_span("epoch", name, model=model, meter=meter, **tags)


def _phase_span(kind: str, name: Any, **tags: Any) -> Any:
    if callable(name):  # bare decorator
        return Span(kind, kind=kind, phase="training", **tags)(name)
    return Span(name or kind, kind=kind, phase=tags.pop("phase", "training"), **tags)
