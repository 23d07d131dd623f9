"""The greenmaas command line: ``greenmaas devices | runs | report | ...``.

Commands are thin: parse, call the library, render. Any :class:`~greenmaas.errors.GreenmaasError`
(no ledger, corrupt ledger, bad input) becomes one ``Error: ...`` line on stderr and exit status 1,
in one place, :meth:`GreenmaasGroup.invoke`. Commands from other modules are added with
``cli.add_command(...)`` at the bottom of this file.
"""

from __future__ import annotations

import logging

import click

from greenmaas.errors import GreenmaasError

from .devices import devices
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
            raise click.ClickException(message) from exc


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

try:
    from .attribute import attribute
except ModuleNotFoundError as exc:  # until cli/attribute.py exists
    if exc.name != f"{__package__}.attribute":
        raise
else:
    cli.add_command(attribute)
