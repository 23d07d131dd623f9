"""Plain records passed between the meter, the ledger and the reports.

These are the contract between layers: the meter produces them, the ledger stores them, and
``read_ledger`` gives them back as DataFrame rows. Units are in the field names; times are
timezone-aware UTC ``datetime`` objects.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

__all__ = ["DeviceEnergy", "SpanRecord", "RunRecord", "SampleRecord", "ReadRecord", "DeviceTotals"]

PHASES = ("training", "inference", "other")
RUN_STATUSES = ("running", "finished", "interrupted", "failed")


@dataclass
class DeviceEnergy:
    """Energy attributed to one span on one device, and the method behind it."""

    device: str
    energy_j: float  # attributed to the span and its descendants (inclusive)
    method: str
    self_j: float = 0.0  # attributed to the span alone, excluding children (sums without double counting)
    self_device_s: float = 0.0  # device time shared by the same rules as energy (hardware cost)
    gap_s: float = 0.0  # seconds of the span during which the device could not be read
    # ± J: how far the attributed figure may be from the truth. From the counter grid's timing
    # uncertainty and the shape fit's residual for measured devices; the method's stated
    # relative uncertainty for estimates. None where nothing can be said (replay of a file).
    uncertainty_j: float | None = None


@dataclass
class SpanRecord:
    """One finished span: what ran, when, on which devices, and the energy attributed to it.

    ``energy_j`` is the span's attributed energy summed over devices (for a parent: its subtree's).
    ``tenant`` is already pseudonymised when it reaches the ledger.
    """

    span_id: str
    run_id: str
    name: str
    start: datetime
    end: datetime
    duration_s: float
    parent_id: str | None = None
    kind: str = "span"  # span, request, batch, forward, step, epoch
    model: str | None = None
    phase: str | None = None
    request_id: str | None = None
    tenant: str | None = None
    weight: float = 1.0
    tokens_in: int | None = None
    tokens_out: int | None = None
    items: int | None = None
    status: str = "ok"  # ok, error
    attrs: dict[str, Any] = field(default_factory=dict)
    devices: list[DeviceEnergy] = field(default_factory=list)

    # Monotonic seconds on the recording process's clock (the clock of the run's raw reads), so
    # an offline re-attribution of the run's trace sees exactly the times the live meter saw.
    start_mono: float | None = None
    end_mono: float | None = None
    link_id: str | None = None  # a batch share's request span
    # Spans this record stands for: 1, or a rollup's count (many short spans of one kind, name,
    # model and parent recorded as one row per interval; see :mod:`greenmaas.aggregate`).
    count: int = 1

    carbon_g: float | None = None  # location-based, as configured when recorded
    carbon_market_g: float | None = None  # market-based, only where configured
    cost: float | None = None  # electricity + hardware share, in ``currency``
    currency: str | None = None

    @property
    def energy_j(self) -> float:
        return sum(d.energy_j for d in self.devices)

    @property
    def self_energy_j(self) -> float:
        return sum(d.self_j for d in self.devices)

    @property
    def uncertainty_j(self) -> float | None:
        """± J over devices (summed: devices' errors are not assumed to cancel); None when no
        device states one."""
        us = [d.uncertainty_j for d in self.devices if d.uncertainty_j is not None]
        return sum(us) if us else None

    @property
    def method(self) -> str:
        """The weakest method among devices (estimate < power < counter)."""
        from .sources.base import weakest_method

        return weakest_method(d.method for d in self.devices)


@dataclass
class RunRecord:
    """A process session: every span of one Meter's life."""

    run_id: str
    host: str
    pid: int
    start: datetime
    end: datetime | None = None
    status: str = "running"
    config: dict[str, Any] = field(default_factory=dict)
    devices: list[dict[str, Any]] = field(default_factory=list)  # id, kind, name, method, uuid, note


@dataclass
class SampleRecord:
    """One point of a device's cumulative-energy curve as stored in the ledger."""

    run_id: str
    device: str
    t: datetime
    energy_j: float  # cumulative since the run started
    power_w: float | None
    method: str


@dataclass
class ReadRecord:
    """One raw read of one device, exactly as the sampler recorded it: the trace that an offline
    re-attribution (``greenmaas export`` then ``greenmaas attribute``) replays.

    ``t_mono`` is the sampler's monotonic stamp (s) when the read returned, ``t_start_mono`` when
    it began. ``energy_j`` is the raw cumulative counter
    as read (before wrap/reset correction), ``max_energy_j`` where the counter wraps (RAPL).
    A failed read has both values None and ``error`` set: the device was failing from then until
    its next good read.
    """

    run_id: str
    device: str
    t_mono: float
    energy_j: float | None = None
    power_w: float | None = None
    max_energy_j: float | None = None
    error: str | None = None
    t_start_mono: float | None = None  # when the read began (the value was taken in between)


@dataclass
class DeviceTotals:
    """Per run and device: what the device consumed, what spans got, and idle.

    ``total_j == attributed_j + idle_j`` (the conservation invariant).
    """

    run_id: str
    device: str
    method: str
    total_j: float
    attributed_j: float
    idle_j: float
    gap_s: float = 0.0
    start: datetime | None = None
    idle_s: float = 0.0  # device time with no span running (the operator's hardware cost)
    end: datetime | None = None
    uncertainty_j: float | None = None  # ± J of idle_j (attributed_j carries the same, mirrored)
