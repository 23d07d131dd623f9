"""The PyTorch integration: forward, step and epoch spans, timing modes, the events resolver."""

from __future__ import annotations

import copy
import subprocess
import sys
import threading

import pytest

torch = pytest.importorskip("torch")

from greenmaas.errors import ConfigError  # noqa: E402
from greenmaas.integrations._cuda import EventResolver  # noqa: E402
from greenmaas.integrations.torch import (  # noqa: E402
    epoch,
    epochs,
    step,
    track_module,
    track_optimizer,
)
from greenmaas.meter import Meter  # noqa: E402
from greenmaas.spans import current_span  # noqa: E402
from greenmaas.testing import FakeClock, StaticSource  # noqa: E402

POWER_W = 300.0


class RecordingMeter(Meter):
    """A meter that keeps every span it opens, so tests can look at them."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.opened = []

    def start(self):
        super().start()
        intake = self._intake

        def record(span):
            self.opened.append(span)
            intake(span)

        self._intake = record
        return self

    def of_kind(self, kind):
        return [s for s in self.opened if s.kind == kind]


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def meter(clock):
    src = StaticSource(clock, {"gpu:0": {"energy_j": lambda t: POWER_W * t}})
    m = RecordingMeter(sources=[src], ledger=False, clock=clock, background=False, accounting=False)
    m.start()
    yield m
    m.stop()


class Timed(torch.nn.Module):
    """A linear layer whose forward takes ``dt`` seconds of fake time."""

    def __init__(self, clock, dt=0.1, n=4):
        super().__init__()
        self.clock = clock
        self.dt = dt
        self.lin = torch.nn.Linear(n, n)

    def forward(self, x):
        self.clock.advance(self.dt)
        return self.lin(x)


class Outer(torch.nn.Module):
    def __init__(self, clock):
        super().__init__()
        self.clock = clock
        self.inner = Timed(clock, dt=0.2)

    def forward(self, x):
        self.clock.advance(0.1)
        return self.inner(x)


def _mlp(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Dropout(0.0), torch.nn.Linear(16, 3))


# ---------------------------------------------------------------------- forward spans


def test_hooks_change_neither_outputs_nor_gradients(meter):
    plain = _mlp()
    tracked = copy.deepcopy(plain)
    handles = [track_module(tracked, name="mlp", meter=meter)]
    handles += [track_module(m, meter=meter) for m in tracked]  # every layer too: nested spans
    x = torch.randn(5, 8, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 2, 1, 0])
    outs = []
    for model in (plain, tracked):
        out = model(x)
        torch.nn.functional.cross_entropy(out, y).backward()
        outs.append(out)
    assert torch.equal(outs[0], outs[1])
    for p, q in zip(plain.parameters(), tracked.parameters()):
        assert torch.equal(p.grad, q.grad)
    assert len(meter.of_kind("forward")) == 1 + len(tracked)
    for h in handles:
        h.remove()


def test_one_span_per_forward_with_phase_from_the_call(meter, clock):
    model = Timed(clock)
    with track_module(model, name="lin", meter=meter) as handle:
        x = torch.randn(2, 4)
        model.train()
        model(x)
        with torch.no_grad():
            model(x)
        model.eval()
        model(x)
        with torch.inference_mode():
            model(x)
        assert handle.last_span is meter.opened[-1]
    spans = meter.of_kind("forward")
    assert [s.phase for s in spans] == ["training", "inference", "inference", "inference"]
    assert {s.name for s in spans} == {"lin"} and {s.model for s in spans} == {"lin"}
    assert all(s.end is not None and s.status == "ok" for s in spans)
    clock.advance(0.5)
    meter.tick()
    for s in spans:
        assert s.result.duration_s == pytest.approx(0.1)
        assert s.result.energy_j == pytest.approx(POWER_W * 0.1)


def test_nested_modules_nest_and_inherit_the_model_tag(meter, clock):
    model = Outer(clock)
    with track_module(model, name="outer-model", meter=meter), track_module(model.inner, meter=meter):
        model(torch.randn(1, 4))
    outer, inner = meter.of_kind("forward")
    assert inner.parent is outer
    assert inner.name == "Timed" and inner.model == "outer-model"
    clock.advance(1.0)
    meter.tick()
    assert outer.result.energy_j == pytest.approx(POWER_W * 0.3)
    assert inner.result.energy_j == pytest.approx(POWER_W * 0.2)
    assert outer.result.self_energy_j == pytest.approx(POWER_W * 0.1)


def test_untagged_module_without_parent_is_tagged_with_its_class(meter, clock):
    model = Timed(clock)
    with track_module(model, meter=meter):
        model(torch.randn(1, 4))
    (span,) = meter.of_kind("forward")
    assert span.name == "Timed" and span.model == "Timed"


def test_a_module_calling_itself_gets_one_span_per_call(meter, clock):
    class Recursive(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(3, 3)

        def forward(self, x, depth):
            clock.advance(0.1)
            x = self.lin(x)
            return self(x, depth - 1) if depth > 0 else x

    model = Recursive()
    with track_module(model, name="rec", meter=meter):
        model(torch.randn(1, 3), 2)
    a, b, c = meter.of_kind("forward")
    assert b.parent is a and c.parent is b
    assert a.end >= b.end >= c.end
    assert current_span() is None


def test_forward_that_raises_closes_its_span_as_error_and_reraises(meter, clock):
    class Boom(Exception):
        pass

    class Failing(torch.nn.Module):
        def forward(self, x):
            clock.advance(0.1)
            raise Boom("no")

    model = Failing()
    with track_module(model, name="failing", meter=meter):
        with pytest.raises(Boom) as info:
            model(torch.randn(1))
        assert str(info.value) == "no"
        assert current_span() is None
        # The failure of one call does not leak into the next, even one made from an except block.
        try:
            raise ValueError("handled")
        except ValueError:
            with pytest.raises(Boom):
                model(torch.randn(1))
    first, second = meter.of_kind("forward")
    assert first.status == "error" and first.end is not None
    assert second.status == "error" and second.parent is None


def test_forward_called_inside_an_except_block_is_not_an_error(meter, clock):
    model = Timed(clock)
    with track_module(model, meter=meter):
        try:
            raise KeyError("outer")
        except KeyError:
            model(torch.randn(1, 4))
    (span,) = meter.of_kind("forward")
    assert span.status == "ok"


def test_remove_is_safe_twice_and_the_context_manager_removes(meter, clock):
    model = Timed(clock)
    handle = track_module(model, meter=meter)
    model(torch.randn(1, 4))
    handle.remove()
    handle.remove()
    assert not handle.active
    model(torch.randn(1, 4))
    assert len(meter.of_kind("forward")) == 1
    with track_module(model, meter=meter) as h2:
        model(torch.randn(1, 4))
    h2.remove()
    model(torch.randn(1, 4))
    assert len(meter.of_kind("forward")) == 2
    assert not model._forward_hooks and not model._forward_pre_hooks


def test_bad_arguments(meter):
    with pytest.raises(ConfigError):
        track_module(torch.nn.Linear(1, 1), meter=meter, sync="cuda")
    with pytest.raises(ConfigError):
        track_module(object(), meter=meter)  # type: ignore[arg-type]


def test_cpu_module_competes_on_every_device_and_explicit_devices_win(meter, clock):
    model = Timed(clock)
    with track_module(model, meter=meter):
        model(torch.randn(1, 4))
    with track_module(model, meter=meter, devices=["gpu:0"]):
        model(torch.randn(1, 4))
    a, b = meter.of_kind("forward")
    assert a.devices is None and b.devices == ("gpu:0",)


def test_gpu_ids_are_matched_by_uuid(monkeypatch):
    from types import SimpleNamespace

    from greenmaas.sources.base import Device

    uuids = {0: "aaaa-1111", 1: "bbbb-2222", 2: "cccc-3333"}
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: SimpleNamespace(uuid=uuids[i]))
    class FakeMeter:
        sampler = SimpleNamespace(
            devices=[
                Device("gpu:0", "gpu", "x", "counter", uuid="GPU-BBBB-2222"),  # NVML orders by PCI bus
                Device("gpu:1", "gpu", "y", "counter", uuid="GPU-aaaa-1111"),
                Device("cpu:0", "cpu", "z", "counter"),
            ]
        )

    fake_meter = FakeMeter()
    handle = track_module(torch.nn.Linear(1, 1), meter=fake_meter)  # type: ignore[arg-type]
    cuda = (torch.device("cuda", 0), torch.device("cuda", 1), torch.device("cuda", 2))
    assert handle._tracker.device_ids(cuda, fake_meter) == ("gpu:1", "gpu:0", "gpu:2")
    mixed = (torch.device("cpu"), torch.device("cuda", 0))
    assert handle._tracker.device_ids(mixed, fake_meter) is None
    handle.remove()


def test_devices_follow_the_module_when_it_moves(meter):
    model = torch.nn.Linear(2, 2)
    with track_module(model, meter=meter) as handle:
        model(torch.randn(1, 2))
        assert handle._tracker.torch_devices() == (torch.device("cpu"),)
        model.to("meta")
        model(torch.randn(1, 2, device="meta"))
        assert handle._tracker.torch_devices() == (torch.device("meta"),)
    assert all(s.devices is None for s in meter.of_kind("forward"))


def test_steady_calls_ask_torch_about_devices_once_per_move(meter, clock, monkeypatch):
    asked = []
    real = torch.cuda.is_available
    monkeypatch.setattr(torch.cuda, "is_available", lambda: asked.append(1) or real())
    model = torch.nn.Linear(2, 2)
    with track_module(model, meter=meter, sync="sync") as handle:  # no resolver: asks CUDA
        for _ in range(5):
            model(torch.randn(1, 2))
        assert len(asked) == 1
        model.to("meta")
        for _ in range(3):
            model(torch.randn(1, 2, device="meta"))
        assert len(asked) == 2
        assert handle._tracker.torch_devices() == (torch.device("meta"),)
    spans = meter.of_kind("forward")
    assert len(spans) == 8 and all(s.devices is None and s.end is not None for s in spans)


def test_gpu_device_ids_are_looked_up_per_meter_through_the_hooks(meter, clock, monkeypatch):
    from types import SimpleNamespace

    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: SimpleNamespace(uuid=""))
    model = torch.nn.Linear(2, 2)
    cuda = (torch.device("cuda", 0), torch.device("cuda", 1))
    with track_module(model, meter=meter) as handle:
        handle._tracker.torch_devices = lambda: cuda  # type: ignore[method-assign]
        model(torch.randn(1, 2))
        model(torch.randn(1, 2))
        other = type(meter)(sources=[], ledger=False, clock=clock, background=False, accounting=False)
        with other:
            handle._tracker.meter = other
            model(torch.randn(1, 2))
    a, b = meter.of_kind("forward")
    (c,) = other.of_kind("forward")
    assert a.devices == b.devices == c.devices == ("gpu:0", "gpu:1")
    assert handle._tracker._ids_meter() is other


def test_nothing_is_recorded_while_torch_compiles(meter, clock, monkeypatch):
    import greenmaas.integrations.torch as integration

    model = Timed(clock)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with track_module(model, meter=meter) as h1, track_optimizer(opt, meter=meter) as h2:
        monkeypatch.setattr(integration, "_is_compiling", lambda: True)
        model(torch.randn(1, 4)).sum().backward()
        opt.step()
        assert meter.opened == []
        assert not getattr(h1._tracker._local, "stack", []) and not getattr(h2._tracker._local, "stack", [])
        monkeypatch.undo()
        model(torch.randn(1, 4)).sum().backward()
        opt.step()
    assert [s.kind for s in meter.opened] == ["forward", "step"]
    assert all(s.end is not None for s in meter.opened)


def test_every_mode_is_host_time_on_the_cpu(meter, clock):
    model = Timed(clock)
    for mode in ("none", "sync", "events"):
        with track_module(model, meter=meter, sync=mode) as h:
            model(torch.randn(1, 4))
            assert h.wait(0)
    spans = meter.of_kind("forward")
    assert len(spans) == 3 and all(s.end - s.start == pytest.approx(0.1) for s in spans)


def test_measuring_failures_never_reach_the_caller(meter, clock, caplog):
    model = Timed(clock)

    class BrokenClock(FakeClock):
        armed = False

        def monotonic(self):
            if self.armed:
                raise RuntimeError("meter broke")
            return super().monotonic()

    broken = BrokenClock()
    stopped = Meter(sources=[], ledger=False, clock=broken, background=False, accounting=False)
    stopped.start()
    broken.armed = True
    with track_module(model, meter=stopped):
        out = model(torch.ones(1, 4))
    assert out.shape == (1, 4)
    assert "meter broke" in caplog.text


def test_importing_integrations_does_not_import_torch():
    code = "import sys, greenmaas.integrations; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------------- optimizer, epochs, decorators


def test_optimizer_steps_are_training_step_spans(meter, clock):
    model = Timed(clock)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with track_module(model, name="m", meter=meter), track_optimizer(opt, model="m", meter=meter):
        for _ in range(3):
            opt.zero_grad()
            model(torch.randn(2, 4)).sum().backward()
            clock.advance(0.05)
            opt.step()
    steps = meter.of_kind("step")
    assert len(steps) == 3
    assert all(s.phase == "training" and s.model == "m" and s.name == "step" and s.end is not None for s in steps)
    assert current_span() is None


def test_a_step_that_raises_is_closed_as_error(meter, clock):
    model = Timed(clock)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model(torch.randn(2, 4)).sum().backward()

    def bad_closure():
        raise RuntimeError("closure failed")

    handle = track_optimizer(opt, meter=meter)
    with pytest.raises(RuntimeError):
        opt.step(bad_closure)
    opt.step()
    first, second = meter.of_kind("step")
    assert first.status == "error" and first.end is not None
    assert second.status == "ok" and second.parent is None
    with pytest.raises(RuntimeError):
        opt.step(bad_closure)
    handle.remove()  # closes the one left open
    assert meter.of_kind("step")[-1].status == "error"
    assert current_span() is None


def test_epochs_yield_indices_inside_epoch_spans_and_survive_break(meter, clock):
    seen = []
    for i in epochs(5, model="m", meter=meter):
        span = current_span()
        assert span.kind == "epoch" and span.name == f"epoch-{i}" and span.phase == "training"
        clock.advance(1.0 + i)
        seen.append(i)
        if i == 2:
            break
    assert seen == [0, 1, 2]
    assert current_span() is None
    spans = meter.of_kind("epoch")
    assert len(spans) == 3 and all(s.end is not None and s.status == "ok" for s in spans)
    clock.advance(0.5)
    meter.tick()
    assert [s.result.energy_j for s in spans] == pytest.approx([POWER_W * 1, POWER_W * 2, POWER_W * 3])


def test_an_error_inside_an_epoch_loop_does_not_leave_the_span_open(meter, clock):
    with pytest.raises(KeyError):
        for _ in epochs(3, meter=meter):
            clock.advance(0.1)
            raise KeyError("x")
    (span,) = meter.of_kind("epoch")
    assert span.end is not None
    assert current_span() is None


def test_step_and_epoch_decorators(meter, clock):
    @step(model="m", meter=meter)
    def train_step(x):
        clock.advance(0.1)
        assert current_span().kind == "step"
        return x * 2

    @epoch(meter=meter)
    def train_epoch():
        return [train_step(i) for i in range(2)]

    assert train_epoch() == [0, 2]
    ep = meter.of_kind("epoch")
    steps = meter.of_kind("step")
    assert len(ep) == 1 and len(steps) == 2
    assert all(s.parent is ep[0] and s.phase == "training" and s.model == "m" for s in steps)
    with step("custom", meter=meter) as s:
        clock.advance(0.1)
    assert s.name == "custom" and s.kind == "step"


# ---------------------------------------------------------------------- CUDA timing with fakes


class FakeEvent:
    """A timing event whose completion and GPU time the test sets."""

    def __init__(self, t=None, done=False):
        self.t = t
        self.done = done

    def query(self):
        return self.done

    def synchronize(self):
        assert self.done, "a fake event cannot be waited for"

    def elapsed_time(self, other):
        assert self.done and other.done, "elapsed_time of an incomplete event"
        return (other.t - self.t) * 1000.0

    def complete(self, t):
        self.t = t
        self.done = True


class FakeBackend:
    """CUDA as the timing code sees it, for modules on the CPU."""

    def __init__(self, clock):
        self.clock = clock
        self.events = []
        self.syncs = []
        self.capture = False

    def accepts(self, device):
        return device.type == "cpu"

    def synchronize(self, device):
        self.syncs.append(self.clock.monotonic())

    def capturing(self, device):
        return self.capture

    def record(self, device):
        ev = FakeEvent()
        self.events.append(ev)
        return ev

    def record_reference(self, device):
        return FakeEvent(self.clock.monotonic(), done=True)


def test_sync_mode_synchronizes_before_each_boundary(meter, clock):
    backend = FakeBackend(clock)
    resolver = EventResolver(backend=backend, clock=clock, thread=False)
    model = Timed(clock)
    with track_module(model, meter=meter, sync="sync", resolver=resolver):
        model(torch.randn(1, 4))
    (span,) = meter.of_kind("forward")
    assert backend.syncs == [span.start, span.end]


def test_cuda_graph_capture_is_not_measured(meter, clock):
    backend = FakeBackend(clock)
    backend.capture = True
    model = Timed(clock)
    with track_module(model, meter=meter, sync="events", resolver=EventResolver(backend=backend, clock=clock)):
        model(torch.randn(1, 4))
    assert meter.of_kind("forward") == []


def test_events_mode_keeps_the_span_open_until_its_events_resolve(meter, clock):
    backend = FakeBackend(clock)
    resolver = EventResolver(backend=backend, clock=clock, thread=False)
    model = Timed(clock, dt=0.1)
    clock.set(1.0)
    with track_module(model, name="gpu-model", meter=meter, sync="events", resolver=resolver) as handle:
        model(torch.randn(1, 4))  # host: enqueued during [1.0, 1.1]
        (span,) = meter.of_kind("forward")
        assert span.end is None and current_span() is None
        with pytest.raises(ConfigError):
            span.result  # noqa: B018 - still open
        start_ev, end_ev = backend.events
        assert resolver.poll() == 0  # nothing completed yet
        start_ev.complete(1.5)  # the GPU ran it during [1.5, 2.0]
        clock.set(1.8)
        assert resolver.poll() == 0 and span.end is None
        end_ev.complete(2.0)
        clock.set(2.5)
        assert resolver.poll() == 1
        assert handle.wait(0)
    assert (span.start, span.end) == (1.5, 2.0)
    assert span.attrs["timing"] == "cuda-events"
    clock.advance(0.5)
    meter.tick()
    assert span.result.energy_j == pytest.approx(POWER_W * 0.5)
    assert span.result.duration_s == pytest.approx(0.5)


def test_events_mode_never_blocks_the_caller(meter, clock):
    backend = FakeBackend(clock)
    resolver = EventResolver(backend=backend, clock=clock, poll_s=0.001)
    model = Timed(clock)
    handle = track_module(model, meter=meter, sync="events", resolver=resolver)
    done = threading.Event()

    def call():
        for _ in range(3):
            model(torch.randn(1, 4))
        done.set()

    t = threading.Thread(target=call)
    t.start()
    assert done.wait(5.0), "the forward waited for its events"
    t.join()
    spans = meter.of_kind("forward")
    assert len(spans) == 3 and all(s.end is None for s in spans)
    assert resolver.pending == 3
    for i, ev in enumerate(backend.events):
        ev.complete(10.0 + i)
    assert handle.wait(5.0)
    assert [(s.start, s.end) for s in spans] == [(10.0, 11.0), (12.0, 13.0), (14.0, 15.0)]
    handle.remove()
    resolver.close()
    resolver.close()


def test_events_mode_holds_attribution_until_gpu_times_are_known(meter, clock):
    backend = FakeBackend(clock)
    resolver = EventResolver(backend=backend, clock=clock, thread=False)
    model = Timed(clock, dt=0.1)
    with track_module(model, meter=meter, sync="events", resolver=resolver):
        model(torch.randn(1, 4))  # host [0.0, 0.1]
    (span,) = meter.of_kind("forward")
    assert span.provisional
    clock.set(1.0)
    meter.tick()  # no window passes the provisional span's host start
    assert meter._attr.watermark <= 0.0
    for ev, t in zip(backend.events, (0.5, 0.8)):
        ev.complete(t)
    resolver.poll()
    assert not span.provisional
    assert (span.start, span.end) == (0.5, 0.8)  # the GPU's interval, not the launch's
    clock.advance(0.5)
    meter.tick()
    assert span.result.energy_j == pytest.approx(POWER_W * 0.3)
    tot = meter.totals["gpu:0"]
    assert tot["attributed_j"] + tot["idle_j"] == pytest.approx(tot["total_j"])


def test_unreadable_events_fall_back_to_host_time(meter, clock):
    backend = FakeBackend(clock)
    resolver = EventResolver(backend=backend, clock=clock, thread=False, timeout_s=5.0)
    model = Timed(clock, dt=0.1)
    with track_module(model, meter=meter, sync="events", resolver=resolver):
        model(torch.randn(1, 4))
    (span,) = meter.of_kind("forward")
    clock.advance(10.0)
    assert resolver.poll() == 1 and resolver.failed == 1
    assert span.end == pytest.approx(0.1) and span.attrs["timing"] == "host"
    assert "incomplete" in span.attrs["timing_error"]


def test_meter_stop_before_resolution_closes_the_span(meter, clock):
    backend = FakeBackend(clock)
    resolver = EventResolver(backend=backend, clock=clock, thread=False, stop_wait_s=0.05)
    model = Timed(clock)
    with track_module(model, meter=meter, sync="events", resolver=resolver):
        model(torch.randn(1, 4))
    (span,) = meter.of_kind("forward")
    clock.advance(1.0)
    meter.stop()
    assert span.status == "interrupted" and span.end == pytest.approx(1.1)
    for ev in backend.events:
        ev.complete(0.5)
    resolver.poll()
    assert span.end == pytest.approx(1.1)  # the meter's close stands


def test_anchor_converts_event_times(clock):
    backend = FakeBackend(clock)
    clock.set(3.0)
    resolver = EventResolver(backend=backend, clock=clock, thread=False)
    a = resolver.anchor("dev")
    assert a.host_s == 3.0 and a.uncertainty_s == 0.0
    assert a.host_time(FakeEvent(3.25, done=True)) == pytest.approx(3.25)
    ran = []
    ev0, ev1 = resolver.record("dev"), resolver.record("dev")
    resolver.submit([ev0], [ev1], lambda s, e, err: ran.append((s, e, err)))
    ev0[1].complete(4.0)
    ev1[1].complete(4.5)
    assert resolver.poll() == 1 and ran == [(4.0, 4.5, None)]


# ---------------------------------------------------------------------- real CUDA (GPU machines only)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs torch with CUDA")
@pytest.mark.parametrize("mode", ["sync", "events"])
def test_cuda_modes_time_the_gpu_work(mode):
    from greenmaas.clock import SystemClock

    clk = SystemClock()
    src = StaticSource(clk, {"gpu:0": {"energy_j": lambda t: POWER_W * t}})
    m = RecordingMeter(sources=[src], ledger=False, clock=clk, background=False, accounting=False)
    m.start()
    model = torch.nn.Sequential(*[torch.nn.Linear(2048, 2048) for _ in range(8)]).cuda()
    x = torch.randn(4096, 2048, device="cuda")
    with torch.no_grad(), track_module(model, name="big", meter=m, sync=mode) as h:
        for _ in range(5):
            model(x)
        t_host = clk.monotonic()
        assert h.wait(30.0)
    torch.cuda.synchronize()
    t_done = clk.monotonic()
    spans = m.of_kind("forward")
    assert len(spans) == 5 and all(s.end is not None and s.devices == ("gpu:0",) for s in spans)
    for a, b in zip(spans, spans[1:]):
        assert a.end <= b.start + 1e-4  # GPU work of consecutive calls does not overlap
    assert spans[-1].end <= t_done + 1e-3
    if mode == "events":
        assert spans[-1].end > t_host - 1e-3  # the last call finished on the GPU after the host moved on
    m.stop()
