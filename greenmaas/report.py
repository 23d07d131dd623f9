"""Moved to :mod:`greenmaas.reporting.summary`; this name stays for code that imports it."""

import sys as _sys

from .reporting import summary as _module

_sys.modules[__name__] = _module
