"""Moved to :mod:`greenmaas.reporting.modelcard`; this name stays for code that imports it."""

import sys as _sys

from .reporting import modelcard as _module

_sys.modules[__name__] = _module
