"""Moved to :mod:`greenmaas.reporting.frames`; this name stays for code that imports it."""

import sys as _sys

from .reporting import frames as _module

_sys.modules[__name__] = _module
