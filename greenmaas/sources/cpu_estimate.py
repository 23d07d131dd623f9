"""A CPU power *estimate* for machines without RAPL: TDP scaled by utilisation.

This is a model, not a measurement, and every figure it produces is labelled ``estimate``::

    P = TDP × packages × (IDLE_SHARE + (1 − IDLE_SHARE) × utilisation)

* TDP comes from codecarbon's CPU table (``codecarbon/data/hardware/cpu_power.csv``), found with
  ``importlib.util.find_spec`` and read by path: importing codecarbon would initialise NVML, start
  subprocesses and install a log handler. The CPU model is matched by its model number (see
  :func:`match_cpu_model`); with no match, :data:`DEFAULT_TDP_W` is assumed and the device's note
  says so.
* :data:`IDLE_SHARE` = 0.2: an idle package still draws power (uncore, caches, memory controller);
  on recent Xeon and EPYC parts that is roughly 10–30% of TDP with C-states enabled. 0.2 sits in
  that range; the estimate's stated uncertainty (50%, ``METHOD_UNCERTAINTY``) covers the spread.
* Utilisation is system-wide busy time from ``/proc/stat`` between consecutive reads, in [0, 1].
"""

from __future__ import annotations

import csv
import difflib
import functools
import importlib.util
import os
import re
from dataclasses import dataclass
from typing import Callable

from ..errors import DeviceReadError, SourceUnavailable
from .base import ESTIMATE, Device, Reading, Source

__all__ = [
    "CpuEstimateSource",
    "ProcStatUtilisation",
    "match_cpu_model",
    "load_cpu_tdp_table",
    "read_cpu_model",
    "DEFAULT_TDP_W",
    "IDLE_SHARE",
]

#: TDP per package assumed when the model is unknown. 85 W is the fallback codecarbon itself uses,
#: and sits between the median TDP of its table's desktop parts (65 W) and server parts (120 W).
DEFAULT_TDP_W = 85.0
#: Share of TDP drawn at 0% utilisation (see the module docstring for the reasoning).
IDLE_SHARE = 0.2

_CODECARBON_TABLE = ("data", "hardware", "cpu_power.csv")
_VENDORS = {"intel", "amd", "apple"}
_NOISE = re.compile(
    r"\((?:r|tm|c)\)|®|™|@\s*[\d.]+\s*[gm]hz|\b[\d.]+\s*[gm]hz\b|\b\d+-core\b|\bcpu\b|\bprocessor\b"
    r"|\bwith\b.*$"
)


# ---------------------------------------------------------------------- TDP table and matching


def _codecarbon_table_path() -> str | None:
    """Path of codecarbon's CPU table, without importing codecarbon."""
    try:
        spec = importlib.util.find_spec("codecarbon")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for base in spec.submodule_search_locations:
        path = os.path.join(base, *_CODECARBON_TABLE)
        if os.path.isfile(path):
            return path
    return None


@functools.lru_cache(maxsize=4)
def load_cpu_tdp_table(path: str | None = None) -> tuple[tuple[str, float], ...]:
    """(CPU name, TDP in W) rows from a CSV with columns ``Name,TDP`` (default: codecarbon's).

    Rows whose TDP is not a positive number are skipped (the shipped table has a few such as
    ``27.29.5``). Returns an empty tuple when there is no table.
    """
    path = path or _codecarbon_table_path()
    if path is None:
        return ()
    rows: list[tuple[str, float]] = []
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            name = (row.get("Name") or "").strip()
            try:
                tdp_w = float(row.get("TDP") or "")
            except ValueError:
                continue
            if name and tdp_w > 0:
                rows.append((name, tdp_w))
    return tuple(rows)


def _tokens(name: str) -> list[str]:
    text = _NOISE.sub(" ", name.lower())
    return [t for t in re.split(r"[^a-z0-9]+", text) if t]


def _has_digit(token: str) -> bool:
    return any(c.isdigit() for c in token)


def _similarity(a: str, b: str) -> float:
    """String similarity in [0, 1]: rapidfuzz when installed (a codecarbon dependency), difflib
    otherwise. Only breaks ties between candidates that already share the model number."""
    try:
        from rapidfuzz import fuzz  # noqa: PLC0415 - optional, imported when first needed
    except ImportError:
        return difflib.SequenceMatcher(None, a, b).ratio()
    return fuzz.token_sort_ratio(a, b) / 100.0


def match_cpu_model(model: str, table: tuple[tuple[str, float], ...]) -> tuple[str, float] | None:
    """The table row for a CPU model string such as ``/proc/cpuinfo``'s "model name".

    Names are normalised (case, punctuation, ``(R)``, ``(TM)``, ``CPU``, ``Processor``,
    ``@ 2.20GHz``, ``64-Core``) and split into tokens. A row qualifies only if every token of its
    name that contains a digit (model number, series) is among the model's tokens, one such token
    has at least 2 characters (the lone "9" of "Ryzen 9" is no model number), and any vendor it
    names is the model's vendor: a Xeon Gold
    6248R is never given the TDP of a 6248. Among qualifying rows, the most shared model-number
    tokens win, then token overlap, then string similarity. None when nothing qualifies.
    """
    model_tokens = _tokens(model)
    have = set(model_tokens)
    scored: list[tuple[tuple[int, float], str, float, str]] = []
    for name, tdp_w in table:
        cand = _tokens(name)
        digits = {t for t in cand if _has_digit(t)}
        if not digits or not digits <= have or max(len(t) for t in digits) < 2:
            continue
        vendors = _VENDORS.intersection(cand)
        if vendors and not vendors <= have:
            continue
        cset = set(cand)
        overlap = len(cset & have) / len(cset | have)
        scored.append(((len(digits), overlap), name, tdp_w, " ".join(cand)))
    if not scored:
        return None
    top = max(s[0] for s in scored)
    tied = [s for s in scored if s[0] == top]
    norm_model = " ".join(model_tokens)
    best = max(tied, key=lambda s: _similarity(norm_model, s[3])) if len(tied) > 1 else tied[0]
    return best[1], best[2]


# ---------------------------------------------------------------------- host facts


def read_cpu_model(cpuinfo_path: str = "/proc/cpuinfo") -> str | None:
    """The first "model name" in ``/proc/cpuinfo``, or None (e.g. on many ARM hosts)."""
    try:
        with open(cpuinfo_path, encoding="utf-8", errors="replace") as f:
            for line in f:
                key, sep, value = line.partition(":")
                if sep and key.strip().lower() == "model name":
                    return value.strip() or None
    except OSError:
        return None
    return None


def _count_packages(cpuinfo_path: str = "/proc/cpuinfo") -> int:
    """Distinct "physical id" values in /proc/cpuinfo (CPU packages/sockets); 1 when absent."""
    ids: set[str] = set()
    try:
        with open(cpuinfo_path, encoding="utf-8", errors="replace") as f:
            for line in f:
                key, sep, value = line.partition(":")
                if sep and key.strip() == "physical id":
                    ids.add(value.strip())
    except OSError:
        return 1
    return max(1, len(ids))


class ProcStatUtilisation:
    """System-wide CPU utilisation in [0, 1] from ``/proc/stat``, between consecutive calls.

    The first call measures from construction. A call too soon after the previous one (no clock
    tick in between) repeats the previous value, and before any such interval the average since
    boot stands in. Raises OSError when the file cannot be read.
    """

    def __init__(self, path: str = "/proc/stat") -> None:
        self.path = path
        self._last = self._sample()
        busy, total = self._last
        self._value = min(1.0, max(0.0, busy / total)) if total > 0 else 0.0

    def _sample(self) -> tuple[int, int]:
        with open(self.path, encoding="ascii", errors="replace") as f:
            first = f.readline().split()
        if not first or first[0] != "cpu":
            raise OSError(f"{self.path} has no aggregate 'cpu' line")
        fields = [int(x) for x in first[1:]]
        # user nice system idle iowait irq softirq steal [guest guest_nice: already in user/nice]
        total = sum(fields[:8])
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        return total - idle, total

    def __call__(self) -> float:
        busy, total = self._sample()
        d_busy, d_total = busy - self._last[0], total - self._last[1]
        if d_total > 0:
            self._value = min(1.0, max(0.0, d_busy / d_total))
            self._last = (busy, total)
        return self._value


# ---------------------------------------------------------------------- the source


@dataclass(frozen=True)
class _Tdp:
    tdp_w: float  # per package
    matched: str | None
    note: str


class CpuEstimateSource(Source):
    """Estimated CPU power (W) for ``cpu:0``, labelled ``estimate``.

    ``cpu_model`` — the CPU's name (default: /proc/cpuinfo "model name"). ``tdp_w`` — TDP per
    package in W, skipping the table. ``utilisation`` — a callable returning system-wide CPU
    utilisation in [0, 1] (default: :class:`ProcStatUtilisation`). ``cpu_count`` — the number of
    CPU *packages* (sockets) the TDP applies to (default: distinct "physical id" in /proc/cpuinfo).
    Raises :class:`SourceUnavailable` when utilisation cannot be read (no /proc/stat).
    """

    name = "cpu-estimate"
    #: 500 ms: utilisation from /proc/stat has 10 ms ticks; shorter periods are mostly noise.
    default_period_s = 0.5

    def __init__(
        self,
        cpu_model: str | None = None,
        tdp_w: float | None = None,
        utilisation: Callable[[], float] | None = None,
        cpu_count: int | None = None,
        *,
        tdp_table: tuple[tuple[str, float], ...] | None = None,
    ) -> None:
        if utilisation is None:
            try:
                utilisation = ProcStatUtilisation()
            except (OSError, ValueError) as exc:
                raise SourceUnavailable(f"CPU estimate: cannot read CPU utilisation from /proc/stat ({exc})") from exc
        self._utilisation = utilisation
        self.cpu_model = cpu_model if cpu_model is not None else read_cpu_model()
        self.packages = int(cpu_count) if cpu_count is not None else _count_packages()
        if self.packages < 1:
            raise ValueError("cpu_count must be at least 1")
        tdp = self._tdp(tdp_w, tdp_table)
        self.tdp_w = tdp.tdp_w * self.packages
        label = self.cpu_model or "unknown CPU"
        sockets = f"{self.packages} × " if self.packages > 1 else ""
        self._device = Device(
            id="cpu:0",
            kind="cpu",
            name=f"{label} (estimate, TDP {sockets}{tdp.tdp_w:g} W)",
            method=ESTIMATE,
            note=tdp.note,
            tdp_w=self.tdp_w,
        )

    def _tdp(self, tdp_w: float | None, table: tuple[tuple[str, float], ...] | None) -> _Tdp:
        idle = f"P = TDP × ({IDLE_SHARE:g} + {1 - IDLE_SHARE:g} × system-wide CPU utilisation)"
        if tdp_w is not None:
            if not tdp_w > 0:
                raise ValueError("tdp_w must be positive")
            return _Tdp(float(tdp_w), None, f"TDP {tdp_w:g} W given; {idle}")
        if table is None:
            table = load_cpu_tdp_table()
        if not table:
            why = "codecarbon's CPU table not found"
            return _Tdp(DEFAULT_TDP_W, None, f"TDP {DEFAULT_TDP_W:g} W assumed: {why}; {idle}")
        if not self.cpu_model:
            return _Tdp(DEFAULT_TDP_W, None, f"TDP {DEFAULT_TDP_W:g} W assumed: CPU model unknown; {idle}")
        found = match_cpu_model(self.cpu_model, table)
        if found is None:
            return _Tdp(
                DEFAULT_TDP_W,
                None,
                f"TDP {DEFAULT_TDP_W:g} W assumed: no match for '{self.cpu_model}' in codecarbon's CPU table; {idle}",
            )
        name, value = found
        return _Tdp(value, name, f"TDP {value:g} W from codecarbon's CPU table ('{name}'); {idle}")

    def devices(self) -> list[Device]:
        return [self._device]

    def read(self, device_id: str) -> Reading:
        """Estimated power in W (no energy counter)."""
        if device_id != self._device.id:
            raise DeviceReadError(f"{device_id}: no such device in the CPU estimate")
        try:
            u = float(self._utilisation())
        except (OSError, ValueError) as exc:
            raise DeviceReadError(f"{device_id}: cannot read CPU utilisation: {exc}") from exc
        u = min(1.0, max(0.0, u))
        return Reading(power_w=self.tdp_w * (IDLE_SHARE + (1.0 - IDLE_SHARE) * u))
