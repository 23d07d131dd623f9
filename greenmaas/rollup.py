"""Moved to :mod:`greenmaas.reporting.rollup`; this name stays for code that imports it."""

import sys as _sys

from .reporting import rollup as _module

_sys.modules[__name__] = _module
