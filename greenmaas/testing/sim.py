"""A simulated data-centre GPU whose true power is known, for testing measurement and attribution.

:class:`SimulatedGPU` is a :class:`~greenmaas.testing.nvml.FakeGPU` that answers NVML the way an
A100, H100 or H200 does (see FIELD.md): an energy counter that publishes on its own ~100 ms grid
in whole mJ, restarts when the driver reloads and can be read stale; power fields that are
instantaneous, a trailing 1 s average, or "part-time" (a 25 ms window every 100 ms). Behind the
readings sits a power function of time, so a test can compare what greenmaas measured with the
truth (:meth:`SimulatedGPU.true_energy_j`)::

    clock = FakeClock()
    trace = PowerTrace.from_bursts(80.0, [(1.0, 1.03, 400.0)])  # a 30 ms burst over 80 W idle
    gpu = SimulatedGPU(trace, counter_phase_s=0.037)
    source = NvmlSource(nvml=FakeNVML([gpu], clock=clock), visible_devices=None)
    ...
    truth_j = gpu.true_energy_j(1.0, 1.03)

:class:`PowerTrace` is piecewise-constant power whose energies are exact (prefix sums).
"""

from __future__ import annotations

import bisect
import math
import random
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from .nvml import NVML_DEVICE_ARCH_HOPPER, FakeGPU

__all__ = ["PowerTrace", "LivePower", "SimulatedGPU"]

#: Kinds of power reading a simulated GPU can give (None: the call answers NOT_SUPPORTED).
POWER_KINDS = ("instant", "average_1s", "part_time", None)

# A time within this of an update or refresh instant counts as at-or-after it, so a FakeClock
# advanced by 0.1 ten times (0.9999999999999999) has seen the update at 1.0.
_TIME_TOL_S = 1e-9
# Added before flooring true mJ, so 300 W * 0.1 s computed as 29999.999999999996 mJ counts as 30000.
_MJ_TOL = 1e-6

_M64 = 0xFFFFFFFFFFFFFFFF


def _mix64(x: int) -> int:
    """splitmix64's finaliser: a well-spread 64-bit hash of a 64-bit integer."""
    x = (x + 0x9E3779B97F4A7C15) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def _uniform(seed: int, stream: int, k: int) -> float:
    """A uniform number in [0, 1) fixed by (seed, stream, k): the same whatever the call order."""
    h = _mix64(_mix64(_mix64(seed & _M64) ^ stream) ^ (k & _M64))
    return (h >> 11) / float(1 << 53)


_JITTER, _MISSED = 1, 2  # hash streams


def _scalar_or_array(values: np.ndarray, like: Any) -> Any:
    return float(values) if np.ndim(like) == 0 else values


class PowerTrace:
    """Piecewise-constant power: ``watts[i]`` holds on ``[times_s[i], times_s[i+1])``, the last
    value holds for ever after and ``watts[0]`` holds before ``times_s[0]``.

    Energies (J) are exact, from prefix sums. Methods take a time (s) or an array of times.
    ``times_s`` must be strictly increasing and finite, ``watts`` finite and >= 0, one per time.
    """

    def __init__(self, times_s: Sequence[float] | np.ndarray, watts: Sequence[float] | np.ndarray) -> None:
        t = np.asarray(times_s, dtype=float).reshape(-1)
        w = np.asarray(watts, dtype=float).reshape(-1)
        if t.size == 0 or t.size != w.size:
            raise ValueError("PowerTrace needs as many watts as times, and at least one")
        if not (np.all(np.isfinite(t)) and np.all(np.isfinite(w))):
            raise ValueError("PowerTrace times and watts must be finite")
        if np.any(np.diff(t) <= 0):
            raise ValueError("PowerTrace times must be strictly increasing")
        if np.any(w < 0):
            raise ValueError("PowerTrace watts must be >= 0")
        self.times_s = t
        self.watts = w
        # _prefix_j[i]: energy from times_s[0] to times_s[i].
        self._prefix_j = np.concatenate(([0.0], np.cumsum(w[:-1] * np.diff(t))))

    @classmethod
    def constant(cls, watts: float) -> "PowerTrace":
        """``watts`` at all times."""
        return cls([0.0], [watts])

    @classmethod
    def from_bursts(cls, idle_w: float, bursts: Iterable[tuple[float, float, float]]) -> "PowerTrace":
        """``idle_w`` plus, for each ``(t0_s, t1_s, extra_w)``, ``extra_w`` on ``[t0_s, t1_s)``.

        Overlapping bursts add. A burst with ``t1_s == t0_s`` adds nothing; ``t1_s < t0_s`` is a
        ValueError, as is a level below 0 W.
        """
        rows = [(float(a), float(b), float(x)) for a, b, x in bursts]
        for a, b, _x in rows:
            if b < a:
                raise ValueError(f"burst ends before it starts: ({a}, {b})")
        rows = [r for r in rows if r[1] > r[0]]
        if not rows:
            return cls.constant(idle_w)
        starts = np.array([r[0] for r in rows])
        ends = np.array([r[1] for r in rows])
        extra = np.array([r[2] for r in rows])
        edges = np.unique(np.concatenate((starts, ends)))
        # The idle level before the first burst, at 0 s (or 1 s before a burst that starts earlier).
        first = float(edges[0])
        edges = np.concatenate(([0.0 if first > 0 else first - 1.0], edges))
        active = (starts[:, None] <= edges[None, :]) & (edges[None, :] < ends[:, None])
        levels = float(idle_w) + (active * extra[:, None]).sum(axis=0)
        return cls(edges, levels)

    def _antiderivative_j(self, t: np.ndarray) -> np.ndarray:
        """Energy from ``times_s[0]`` to ``t`` (negative before it)."""
        i = np.clip(np.searchsorted(self.times_s, t, side="right") - 1, 0, None)
        return self._prefix_j[i] + self.watts[i] * (t - self.times_s[i])

    def power_w(self, t: Any) -> Any:
        """Power (W) at ``t`` (s)."""
        ta = np.asarray(t, dtype=float)
        i = np.clip(np.searchsorted(self.times_s, ta, side="right") - 1, 0, None)
        return _scalar_or_array(self.watts[i], t)

    __call__ = power_w

    def energy_j(self, t0: Any, t1: Any) -> Any:
        """Energy (J) drawn between ``t0`` and ``t1`` (s); negative when ``t1 < t0``."""
        a = np.asarray(t0, dtype=float)
        b = np.asarray(t1, dtype=float)
        out = self._antiderivative_j(b) - self._antiderivative_j(a)
        return float(out) if a.ndim == 0 and b.ndim == 0 else out

    def cumulative_j(self, t: Any) -> Any:
        """Energy (J) drawn since ``t = 0``."""
        return self.energy_j(0.0, t)

    def __repr__(self) -> str:
        return f"PowerTrace({self.times_s.size} steps, {self.watts.min():g}-{self.watts.max():g} W)"


class LivePower(PowerTrace):
    """A :class:`PowerTrace` that a test builds as its workload runs, for simulations on real
    threads: ``power.change(t, +300.0)`` when work that draws 300 W starts at ``t``, ``-300.0``
    when it ends. Levels hold until the next change (the future is the present level, as a real
    device's readings only ever cover the past). Thread-safe; changes must come in time order
    (a change earlier than the last one is applied at the last one's time).
    """

    def __init__(self, idle_w: float, start_s: float = 0.0) -> None:
        import threading

        self._lock = threading.Lock()
        self._t: list[float] = [float(start_s)]
        self._w: list[float] = [float(idle_w)]
        self._built = -1
        super().__init__([start_s], [idle_w])

    def change(self, t: float, delta_w: float) -> None:
        with self._lock:
            t = max(float(t), self._t[-1])
            level = self._w[-1] + float(delta_w)
            if level < -1e-9:
                raise ValueError(f"power would go below 0 W at {t}")
            if t == self._t[-1]:
                self._w[-1] = max(level, 0.0)
            else:
                self._t.append(t)
                self._w.append(max(level, 0.0))

    def _sync(self) -> None:
        with self._lock:
            if self._built == len(self._t) and self.watts[-1] == self._w[-1]:
                return
            t = np.asarray(self._t)
            w = np.asarray(self._w)
            self._built = len(self._t)
        self.times_s, self.watts = t, w
        self._prefix_j = np.concatenate(([0.0], np.cumsum(w[:-1] * np.diff(t))))

    def _antiderivative_j(self, t: np.ndarray) -> np.ndarray:
        self._sync()
        return super()._antiderivative_j(t)

    def power_w(self, t: Any) -> Any:
        self._sync()
        return super().power_w(t)

    __call__ = power_w


class _GridIntegral:
    """Cumulative energy of a power callable by the midpoint rule on a grid of ``grid_s``,
    computed lazily outwards from 0 in both directions and cached."""

    def __init__(self, fn: Callable[[Any], Any], grid_s: float) -> None:
        self.fn = fn
        self.grid_s = float(grid_s)
        self._pos = np.zeros(1)  # energy from 0 to n * grid_s
        self._neg = np.zeros(1)  # energy from -n * grid_s to 0

    def _power(self, t: np.ndarray) -> np.ndarray:
        try:
            p = np.asarray(self.fn(t), dtype=float)
            if p.shape == ():
                return np.full(t.shape, float(p))
            if p.shape == t.shape:
                return p
        except (TypeError, ValueError):
            pass  # a function of a scalar only (e.g. ``if t < 1``): evaluate point by point
        return np.fromiter((float(self.fn(float(x))) for x in t), dtype=float, count=t.size)

    def _extend(self, table: np.ndarray, cells: int, sign: float) -> np.ndarray:
        have = table.size - 1
        if cells <= have:
            return table
        new = max(cells, 2 * have, have + 10_000)
        mids = sign * (np.arange(have, new) + 0.5) * self.grid_s
        added = table[-1] + np.cumsum(self._power(mids) * self.grid_s)
        return np.concatenate((table, added))

    def cumulative_j(self, t: np.ndarray) -> np.ndarray:
        t = np.asarray(t, dtype=float)
        x = np.abs(t) / self.grid_s
        cells = int(math.ceil(float(x.max()))) + 1 if x.size else 0
        if np.any(t >= 0):
            self._pos = self._extend(self._pos, cells, 1.0)
        if np.any(t < 0):
            self._neg = self._extend(self._neg, cells, -1.0)
        i = np.floor(x).astype(np.int64)
        frac = x - i
        out = np.empty(t.shape)
        for table, mask, sign in ((self._pos, t >= 0, 1.0), (self._neg, t < 0, -1.0)):
            j = i[mask]
            out[mask] = sign * (table[j] + frac[mask] * (table[j + 1] - table[j]))
        return out


class SimulatedGPU(FakeGPU):
    """A data-centre GPU (default an H200, Hopper) driven by a known power function of time.

    Pass it to :class:`~greenmaas.testing.nvml.FakeNVML` like any :class:`FakeGPU`; every
    reading is a function of the fake clock's time ``t`` (s).

    **Truth.** ``power_w`` is the true power: a :class:`PowerTrace` (energies exact), a number
    (constant watts), or a callable ``t_s -> W``. A callable may take numpy arrays (faster) or
    only scalars; it is integrated by the midpoint rule on a grid of ``grid_s`` (default 0.1 ms),
    built lazily outwards from ``t = 0`` and cached (8 bytes per cell: 80 kB per simulated
    second), and it is also evaluated before ``t = 0`` because averaged fields look back 1 s.
    :meth:`true_power_w`, :meth:`true_energy_j` and :meth:`true_cumulative_j` give the truth and
    accept arrays.

    **Energy counter** (``nvmlDeviceGetTotalEnergyConsumption``, int mJ). The counter publishes
    at update instants ``u_k = counter_phase_s + k * counter_period_s + d_k`` (any integer ``k``),
    with ``d_k`` uniform in ``±counter_jitter_s`` (must be below half the period, so updates stay
    in order). An update publishes ``start_mj + floor(true cumulative mJ since t = 0 at u_k)``;
    an update at or before ``t = 0`` publishes ``start_mj``. A read at ``t`` returns what the last
    update at or before ``t`` published (within 1 ns, absorbing float drift of a stepped clock).

    * ``missed_updates`` — probability that update ``k`` does not happen, so the previous value
      stays until the next one (must be below 1).
    * ``stale_reads`` — probability, per read call, that the read returns the value published
      one update earlier than it should (so it can go one step backwards relative to the read
      before it). Within one driver epoch only: a stale read never shows a pre-reload value.
    * ``resets_at`` — times (s) at which the driver reloads: at each the counter drops to 0 and
      from then on publishes ``floor(true mJ since the reset)``. The update grid is unchanged.
    * ``counter=False`` — the call answers NOT_SUPPORTED, as on a GPU without a counter.

    Jitter and missed updates are fixed per ``k`` by ``seed`` (the same whatever the read
    pattern); stale reads and power noise are drawn from generators owned by the instance, so
    they are deterministic given ``seed`` and the sequence of calls. :meth:`counter_mj` and
    :meth:`update_times_s` give the counter's own truth (no stale reads, no randomness used).

    **Power** (mW, rounded to an int like NVML). ``power_field`` is what the
    ``NVML_FI_DEV_POWER_INSTANT`` field gives, ``power_usage`` what ``nvmlDeviceGetPowerUsage``
    and the ``NVML_FI_DEV_POWER_AVERAGE`` field give. Each is one of:

    * ``"instant"`` — the true power at ``t``, times ``1 + power_bias + power_noise * N(0, 1)``
      with a fresh gaussian draw per read.
    * ``"average_1s"`` — the mean true power over ``[r - 1 s, r]``, where ``r = t`` (recomputed
      at every read) or, with ``power_refresh_s`` set, the last instant at or before ``t`` of the
      grid ``power_phase_s + k * power_refresh_s`` (the value is held in between).
    * ``"part_time"`` — refreshed at ``power_phase_s + k * part_time_period_s`` (default 100 ms),
      each refresh holding the mean true power of the ``part_time_window_s`` (default 25 ms) just
      before it: 75% of the run time is never seen (Yang et al., arXiv 2312.02741).
    * ``None`` — NOT_SUPPORTED.

    ``power_bias`` (relative) scales every power kind; ``power_noise`` (relative standard
    deviation) applies to ``"instant"`` reads only, as averaged values average their noise out.
    :meth:`reported_power_w` gives what a kind reports at ``t`` (W, noise-free).

    ``uuid``, ``name``, ``arch``, ``migs``, ``mig_name`` and the ``fail(t)`` hook (return an NVML
    error code to fail a call) are :class:`FakeGPU`'s.
    """

    def __init__(
        self,
        power_w: PowerTrace | Callable[[Any], Any] | float,
        *,
        uuid: str = "GPU-00000000-0000-0000-0000-000000000000",
        name: str = "NVIDIA H200",
        arch: int = NVML_DEVICE_ARCH_HOPPER,
        counter: bool = True,
        counter_period_s: float = 0.1,
        counter_phase_s: float = 0.0,
        counter_jitter_s: float = 0.0,
        missed_updates: float = 0.0,
        stale_reads: float = 0.0,
        resets_at: Sequence[float] = (),
        start_mj: int = 0,
        power_field: str | None = "instant",
        power_usage: str | None = "average_1s",
        power_noise: float = 0.0,
        power_bias: float = 0.0,
        power_phase_s: float = 0.0,
        power_refresh_s: float | None = None,
        part_time_period_s: float = 0.1,
        part_time_window_s: float = 0.025,
        grid_s: float = 1e-4,
        seed: int = 0,
        migs: Sequence[str] = (),
        fail: Callable[[float], int | None] | None = None,
        mig_name: str | None = None,
    ) -> None:
        if counter_period_s <= 0:
            raise ValueError("counter_period_s must be > 0")
        if not 0 <= counter_jitter_s < counter_period_s / 2:
            raise ValueError("counter_jitter_s must be in [0, counter_period_s / 2)")
        if not 0 <= missed_updates < 1:
            raise ValueError("missed_updates must be in [0, 1)")
        if not 0 <= stale_reads <= 1:
            raise ValueError("stale_reads must be in [0, 1]")
        for label, kind in (("power_field", power_field), ("power_usage", power_usage)):
            if kind not in POWER_KINDS:
                raise ValueError(f"{label} must be one of {POWER_KINDS}, not {kind!r}")
        if power_refresh_s is not None and power_refresh_s <= 0:
            raise ValueError("power_refresh_s must be > 0")
        if not 0 < part_time_window_s <= part_time_period_s:
            raise ValueError("part_time_window_s must be in (0, part_time_period_s]")
        if grid_s <= 0:
            raise ValueError("grid_s must be > 0")

        if isinstance(power_w, (int, float)):
            power_w = PowerTrace.constant(float(power_w))
        self.truth = power_w
        self._grid: _GridIntegral | None = None
        if not isinstance(power_w, PowerTrace):
            if not callable(power_w):
                raise TypeError("power_w must be a PowerTrace, a number or a callable of time")
            self._grid = _GridIntegral(power_w, grid_s)

        self.counter_period_s = float(counter_period_s)
        self.counter_phase_s = float(counter_phase_s)
        self.counter_jitter_s = float(counter_jitter_s)
        self.missed_updates = float(missed_updates)
        self.stale_reads = float(stale_reads)
        self.resets_at = tuple(sorted(float(r) for r in resets_at))
        self.start_mj = int(start_mj)
        self.power_field = power_field
        self.power_usage = power_usage
        self.power_noise = float(power_noise)
        self.power_bias = float(power_bias)
        self.power_phase_s = float(power_phase_s)
        self.power_refresh_s = None if power_refresh_s is None else float(power_refresh_s)
        self.part_time_period_s = float(part_time_period_s)
        self.part_time_window_s = float(part_time_window_s)
        self.seed = int(seed)
        self._stale_rng = random.Random(self.seed)
        self._noise_rng = random.Random(f"greenmaas.sim.power_noise:{self.seed}")

        super().__init__(
            uuid=uuid,
            name=name,
            arch=arch,
            energy_mj=self._read_counter_mj if counter else None,
            power_mw=self._power_reader(power_usage),
            instant_power_mw=self._power_reader(power_field),
            migs=migs,
            fail=fail,
            mig_name=mig_name,
        )

    def __repr__(self) -> str:
        return f"SimulatedGPU({self.uuid!r}, {self.name!r})"

    # ------------------------------------------------------------------ truth

    def true_power_w(self, t: Any) -> Any:
        """True power (W) at ``t`` (s)."""
        if isinstance(self.truth, PowerTrace):
            return self.truth.power_w(t)
        if np.ndim(t) == 0:
            return float(self.truth(float(t)))
        ta = np.asarray(t, dtype=float)
        assert self._grid is not None  # set whenever the truth is a callable
        return self._grid._power(ta.reshape(-1)).reshape(ta.shape)

    def true_cumulative_j(self, t: Any) -> Any:
        """True energy (J) drawn since ``t = 0``, at ``t`` (s)."""
        return self.true_energy_j(0.0, t)

    def true_energy_j(self, t0: Any, t1: Any) -> Any:
        """True energy (J) drawn between ``t0`` and ``t1`` (s)."""
        if isinstance(self.truth, PowerTrace):
            return self.truth.energy_j(t0, t1)
        a, b = np.broadcast_arrays(np.asarray(t0, dtype=float), np.asarray(t1, dtype=float))
        assert self._grid is not None  # set whenever the truth is a callable
        both = self._grid.cumulative_j(np.concatenate((a.reshape(-1), b.reshape(-1))))
        out = (both[a.size :] - both[: a.size]).reshape(a.shape)
        return _scalar_or_array(out, a)

    def _mean_power_w(self, t0: float, t1: float) -> float:
        return float(self.true_energy_j(t0, t1)) / (t1 - t0)

    # ------------------------------------------------------------------ the energy counter

    def _update_instant_s(self, k: int) -> float:
        u = self.counter_phase_s + k * self.counter_period_s
        if self.counter_jitter_s:
            u += self.counter_jitter_s * (2.0 * _uniform(self.seed, _JITTER, k) - 1.0)
        return u

    def _missed(self, k: int) -> bool:
        return bool(self.missed_updates) and _uniform(self.seed, _MISSED, k) < self.missed_updates

    def _last_update(self, t: float, below: int | None = None) -> tuple[int, float] | None:
        """(k, u_k) of the last update that happened at or before ``t`` (and has ``k < below``),
        or None when it is at or before ``t = 0`` (the counter then holds ``start_mj``)."""
        k = math.floor((t - self.counter_phase_s) / self.counter_period_s) + 2
        if below is not None:
            k = min(k, below - 1)
        while True:
            u = self._update_instant_s(k)
            if u <= 0.0:
                return None
            if u <= t + _TIME_TOL_S and not self._missed(k):
                return k, u
            k -= 1

    def _epoch_start_s(self, t: float) -> float | None:
        """The last driver reload at or before ``t``, or None."""
        i = bisect.bisect_right(self.resets_at, t + _TIME_TOL_S)
        return self.resets_at[i - 1] if i else None

    def _published_mj(self, u: float | None, reset_s: float | None) -> int:
        """What an update at ``u`` (None: at t = 0) publishes, in the epoch begun at ``reset_s``."""
        if reset_s is not None:
            if u is None or u <= reset_s:
                return 0
            return int(math.floor(1000.0 * float(self.true_energy_j(reset_s, u)) + _MJ_TOL))
        if u is None:
            return self.start_mj
        return self.start_mj + int(math.floor(1000.0 * float(self.true_cumulative_j(u)) + _MJ_TOL))

    def counter_mj(self, t: float, *, stale: bool = False) -> int:
        """What the counter holds at ``t`` (s); ``stale=True``: what a stale read there returns.
        Uses no randomness."""
        t = float(t)
        reset_s = self._epoch_start_s(t)
        last = self._last_update(t)
        if reset_s is not None and (last is None or last[1] < reset_s):
            return 0  # reloaded, nothing published since: nothing older to be stale with
        if stale and last is not None:
            last = self._last_update(t, below=last[0])
            if reset_s is not None and (last is None or last[1] < reset_s):
                return 0  # the reload's 0 is the value one update earlier
        return self._published_mj(None if last is None else last[1], reset_s)

    def update_times_s(self, t0: float, t1: float) -> np.ndarray:
        """The instants (s) in ``[t0, t1]`` at which the counter published (missed ones left out)."""
        p, phase = self.counter_period_s, self.counter_phase_s
        ks = range(math.floor((t0 - phase) / p) - 1, math.floor((t1 - phase) / p) + 2)
        out = [self._update_instant_s(k) for k in ks if not self._missed(k)]
        return np.array([u for u in out if t0 <= u <= t1])

    def _read_counter_mj(self, t: float) -> int:
        stale = bool(self.stale_reads) and self._stale_rng.random() < self.stale_reads
        return self.counter_mj(t, stale=stale)

    # ------------------------------------------------------------------ power

    def _last_refresh_s(self, t: float, period_s: float) -> float:
        k = math.floor((t - self.power_phase_s) / period_s + _TIME_TOL_S / period_s)
        return self.power_phase_s + k * period_s

    def reported_power_w(self, kind: str, t: float) -> float:
        """The power (W) a reading of ``kind`` reports at ``t`` (s), before noise and rounding to mW
        but with ``power_bias``."""
        t = float(t)
        if kind == "instant":
            p = float(self.true_power_w(t))
        elif kind == "average_1s":
            r = t if self.power_refresh_s is None else self._last_refresh_s(t, self.power_refresh_s)
            p = self._mean_power_w(r - 1.0, r)
        elif kind == "part_time":
            r = self._last_refresh_s(t, self.part_time_period_s)
            p = self._mean_power_w(r - self.part_time_window_s, r)
        else:
            raise ValueError(f"no power reading of kind {kind!r}")
        return p * (1.0 + self.power_bias)

    def _power_reader(self, kind: str | None) -> Callable[[float], int] | None:
        if kind is None:
            return None

        def read_mw(t: float) -> int:
            w = self.reported_power_w(kind, t)
            if kind == "instant" and self.power_noise:
                w += float(self.true_power_w(t)) * self.power_noise * self._noise_rng.gauss(0.0, 1.0)
            return max(0, int(round(w * 1000.0)))

        return read_mw
