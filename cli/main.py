"""The greenmaas command line: ``greenmaas devices | runs | report | ...``.

Commands are thin: parse, call the library, render. Any :class:`~greenmaas.errors.GreenmaasError`
(no ledger, corrupt ledger, bad input) becomes one ``Error: ...`` line on stderr and exit status 2,
in one place, :meth:`GreenmaasGroup.invoke`. Commands from other modules are added with
``cli.add_command(...)`` at the bottom of this file.
"""

from __future__ import annotations

import logging

import click

from greenmaas.errors import GreenmaasError

from .attribute import attribute
from .devices import devices
from .export import export
from .migrate import migrate
from .options import UserError
from .report import report
from .runs import runs

__all__ = ["cli", "GreenmaasGroup"]


def _version() -> str:
    try:
        from greenmaas import __version__

        return __version__
    except ImportError:  # pragma: no cover - a broken install still answers --version
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("greenmaas")
        except PackageNotFoundError:
            return "unknown"


class GreenmaasGroup(click.Group):
    """A click group that turns library errors into one-line messages, never tracebacks."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except GreenmaasError as exc:
            message = " ".join(str(exc).split()) or type(exc).__name__
            raise UserError(message) from exc
        except BrokenPipeError:
            # `greenmaas report ... | head`: the reader left; stop quietly, as cat does.
            _silence_stdout()
            ctx.exit(141)


def _silence_stdout() -> None:
    """Point stdout at devnull so the interpreter's final flush cannot raise again."""
    import os
    import sys

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # no real file descriptor (a test runner's buffer)
        pass


@click.group(cls=GreenmaasGroup)
@click.version_option(_version(), "--version", prog_name="greenmaas", help="Show the version and exit.")
@click.option("-v", "--verbose", count=True, help="Log more (-v: info, -vv: debug).")
def cli(verbose: int) -> None:
    """Measured energy per model and per request for ML training and serving."""
    level = logging.WARNING if not verbose else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="greenmaas: %(levelname)s: %(message)s")
    logging.getLogger("greenmaas").setLevel(level)


cli.add_command(devices)
cli.add_command(runs)
cli.add_command(report)
cli.add_command(attribute)
cli.add_command(export)
cli.add_command(migrate)
