"""Moved to :mod:`greenmaas.reporting.listings`; this name stays for code that imports it."""

import sys as _sys

from .reporting import listings as _module

_sys.modules[__name__] = _module
