"""Moved to :mod:`greenmaas.reporting.pricing`; this name stays for code that imports it."""

import sys as _sys

from .reporting import pricing as _module

_sys.modules[__name__] = _module
