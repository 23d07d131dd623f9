"""The exceptions greenmaas raises.

One root, a subclass per layer. Vendor errors (NVML, SQLAlchemy, OS) are translated at the
boundary where they occur and re-raised ``from`` the original::

    GreenmaasError
    ├── ConfigError          bad argument, environment variable or setting
    ├── SourceError          an energy source could not be opened or read
    │   ├── SourceUnavailable    the source does not exist here (no library, no sysfs tree)
    │   └── DeviceReadError      one device failed to answer a read
    ├── InputError           a malformed input file (trace, spans, tariff, intensity CSV)
    ├── LedgerError          the ledger cannot be opened, is not a ledger or has a newer schema
    ├── AttributionError     spans and timelines that cannot be attributed
    └── AccountingError      carbon or cost: unknown location, malformed tariff
"""

from __future__ import annotations

__all__ = [
    "GreenmaasError",
    "ConfigError",
    "SourceError",
    "SourceUnavailable",
    "DeviceReadError",
    "InputError",
    "LedgerError",
    "AttributionError",
    "AccountingError",
]


class GreenmaasError(Exception):
    """Root of every error greenmaas raises on purpose."""


class ConfigError(GreenmaasError):
    """A setting, argument or environment variable has a value greenmaas cannot use."""


class SourceError(GreenmaasError):
    """An energy source failed."""


class SourceUnavailable(SourceError):
    """The source cannot be used on this machine; the message says why and how to fix it."""


class DeviceReadError(SourceError):
    """A single device failed to answer a read; other devices may go on."""


class InputError(GreenmaasError):
    """A malformed input file. The message names the file, the line and the problem."""

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None):
        where = ""
        if path is not None:
            where = f"{path}"
            if line is not None:
                where += f", line {line}"
            where += ": "
        super().__init__(where + message)
        self.path = path
        self.line = line
        self.problem = message


class LedgerError(GreenmaasError):
    """The ledger cannot be opened, read or written."""


class AttributionError(GreenmaasError):
    """Spans or timelines that cannot be attributed."""


class AccountingError(GreenmaasError):
    """Carbon or cost accounting failed: unknown location, malformed tariff or price."""
